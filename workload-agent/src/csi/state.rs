//! What the plugin has published, kept on the node's disk so a restarted agent serves the
//! same pods again: the kubelet does not publish a volume twice, so a pod whose volume was
//! published before the restart would otherwise be left with a dead socket. The directory is
//! `volumes/` beside the plugin's socket ([`super::state_dir_of`]): a host directory that
//! outlives the agent's container and pod (an upgrade replaces the pod, and with it an
//! emptyDir data dir, while published volumes stay mounted in workload pods).
//!
//! Layout under it (0700):
//! - `<key>/` (0755): the volume's directory, bind-mounted read-only on the target; it holds
//!   the pod's socket `agent.sock` while the agent serves it;
//! - `<key>.json` (0600): the [`Record`] of the publish: volume ID, canonical target and pod.
//!
//! `<key>` is the first 32 hex digits of the SHA-256 of the volume ID: fixed length (the
//! socket's path must fit in the 108 bytes of a Unix socket address, and the kubelet's volume
//! IDs are 68 characters) and free of any character the kubelet might put in an ID.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::socket::SocketPod;

/// The name of the socket in every volume's directory (and so, in the pod, in the volume's
/// mount point: `/run/lanyard/sockets/agent.sock` with the volume at `/run/lanyard/sockets`).
pub const SOCKET_NAME: &str = "agent.sock";

/// The longest record file read back.
const MAX_RECORD_BYTES: u64 = 16 * 1024;
/// The longest Unix socket path (the 108-byte `sun_path`, with its terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;
/// Bytes the state directory's own path may take in a pod socket's path:
/// `<state>/<32 hex>/agent.sock`.
pub const MAX_STATE_DIR_LEN: usize = MAX_SOCKET_PATH - 1 - 32 - 1 - SOCKET_NAME.len();

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("creating the CSI state directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("reading the CSI state directory {path}: {source}")]
    ReadDir { path: PathBuf, source: io::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("removing {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
}

/// One published volume, as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub volume_id: String,
    /// Canonical (as checked by [`super::target`]).
    pub target: PathBuf,
    pub pod: RecordPod,
}

/// The pod a volume was published for, as the kubelet named it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordPod {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub service_account: String,
}

impl From<&SocketPod> for RecordPod {
    fn from(pod: &SocketPod) -> Self {
        Self {
            uid: pod.uid().to_owned(),
            namespace: pod.namespace().to_owned(),
            name: pod.name().to_owned(),
            service_account: pod.service_account().to_owned(),
        }
    }
}

impl RecordPod {
    /// The socket pod, `None` if the saved UID is not a pod UID.
    pub fn socket_pod(&self) -> Option<SocketPod> {
        SocketPod::new(
            &self.uid,
            &self.namespace,
            &self.name,
            &self.service_account,
        )
    }
}

/// The state directory: where volumes' directories and records live.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// `dir` (created 0700 when missing).
    pub fn open(dir: PathBuf) -> Result<Self, StateError> {
        lanyard_daemon::private_file::ensure_dir(&dir, 0o700).map_err(|source| {
            StateError::CreateDir {
                path: dir.clone(),
                source,
            }
        })?;
        Ok(Self { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The key of `volume_id` (see the module docs).
    pub fn key(volume_id: &str) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, volume_id.as_bytes());
        hex_prefix(digest.as_ref(), 16)
    }

    /// The directory of `volume_id`, bind-mounted on its target.
    pub fn volume_dir(&self, volume_id: &str) -> PathBuf {
        self.dir.join(Self::key(volume_id))
    }

    /// The pod socket of `volume_id`.
    pub fn socket(&self, volume_id: &str) -> PathBuf {
        self.volume_dir(volume_id).join(SOCKET_NAME)
    }

    fn record_path(&self, volume_id: &str) -> PathBuf {
        self.dir.join(format!("{}.json", Self::key(volume_id)))
    }

    /// Creates the volume's directory (0755: the pod's users must reach the socket in it).
    pub fn create_volume_dir(&self, volume_id: &str) -> Result<PathBuf, StateError> {
        let dir = self.volume_dir(volume_id);
        lanyard_daemon::private_file::ensure_dir(&dir, 0o755).map_err(|source| {
            StateError::CreateDir {
                path: dir.clone(),
                source,
            }
        })?;
        Ok(dir)
    }

    /// Removes the volume's directory (and a socket file left in it); gone already is fine.
    pub fn remove_volume_dir(&self, volume_id: &str) -> Result<(), StateError> {
        remove_volume_dir(&self.volume_dir(volume_id))
    }

    /// Saves `record` (0600, atomically).
    pub fn save(&self, record: &Record) -> Result<(), StateError> {
        let path = self.record_path(&record.volume_id);
        let json = serde_json::to_vec_pretty(record).map_err(|e| StateError::Write {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        lanyard_daemon::private_file::write_private_atomic(&path, &json)
            .map_err(|source| StateError::Write { path, source })
    }

    /// Forgets `volume_id`'s record; none is fine.
    pub fn forget(&self, volume_id: &str) -> Result<(), StateError> {
        let path = self.record_path(volume_id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Remove { path, source }),
        }
    }

    /// Every saved record. A record that cannot be read back is logged and removed (it cannot
    /// be acted on; its volume's directory goes with it as an orphan, see
    /// [`StateDir::remove_orphans`]).
    pub fn load(&self) -> Result<Vec<Record>, StateError> {
        let mut records = Vec::new();
        for (path, stem) in self.entries(".json")? {
            match read_record(&path) {
                Ok(record) if Self::key(&record.volume_id) == stem => records.push(record),
                Ok(record) => {
                    tracing::warn!(path = %path.display(), volume_id = %record.volume_id, "CSI record under another volume's name; removed");
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable CSI record; removed");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        records.sort_by(|a, b| a.volume_id.cmp(&b.volume_id));
        Ok(records)
    }

    /// Removes volume directories that have no record (left by a crash between creating one
    /// and saving its record, or by a record that was unreadable). Returns how many.
    pub fn remove_orphans(&self) -> Result<usize, StateError> {
        let mut removed = 0;
        for (path, key) in self.entries("")? {
            if !path.is_dir() || self.dir.join(format!("{key}.json")).exists() {
                continue;
            }
            match remove_volume_dir(&path) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(error = %e, "could not remove an orphaned CSI volume directory")
                }
            }
        }
        Ok(removed)
    }

    /// `(path, stem)` of the entries named `<32 hex><suffix>`.
    fn entries(&self, suffix: &str) -> Result<Vec<(PathBuf, String)>, StateError> {
        let read_error = |source| StateError::ReadDir {
            path: self.dir.clone(),
            source,
        };
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(read_error)? {
            let entry = entry.map_err(read_error)?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(suffix)) else {
                continue;
            };
            if stem.len() == 32 && stem.bytes().all(|b| b.is_ascii_hexdigit()) {
                out.push((entry.path(), stem.to_owned()));
            }
        }
        Ok(out)
    }
}

fn remove_volume_dir(dir: &Path) -> Result<(), StateError> {
    let remove_error = |source| StateError::Remove {
        path: dir.to_owned(),
        source,
    };
    match std::fs::remove_file(dir.join(SOCKET_NAME)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(remove_error(e)),
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(remove_error(e)),
    }
}

fn read_record(path: &Path) -> io::Result<Record> {
    use std::io::Read as _;
    let mut text = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_RECORD_BYTES + 1)
        .read_to_end(&mut text)?;
    if text.len() as u64 > MAX_RECORD_BYTES {
        return Err(io::Error::other("larger than a record can be"));
    }
    serde_json::from_slice(&text).map_err(io::Error::other)
}

fn hex_prefix(bytes: &[u8], n: usize) -> String {
    bytes.iter().take(n).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(volume_id: &str) -> Record {
        Record {
            volume_id: volume_id.into(),
            target: "/var/lib/kubelet/pods/x/volumes/kubernetes.io~csi/s/mount".into(),
            pod: RecordPod {
                uid: "8f2c0a4e-1b3d-4c5e-9f60-7a8b9c0d1e2f".into(),
                namespace: "web".into(),
                name: "api-0".into(),
                service_account: "api".into(),
            },
        }
    }

    #[test]
    fn keys_are_fixed_length_and_socket_paths_fit() {
        let long = format!("csi-{}", "f".repeat(64));
        for id in ["a", "csi-0123", long.as_str(), "../../etc"] {
            let key = StateDir::key(id);
            assert_eq!(key.len(), 32);
            assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert_ne!(StateDir::key("a"), StateDir::key("b"));
        let state = StateDir {
            dir: PathBuf::from("/".to_owned() + &"d".repeat(MAX_STATE_DIR_LEN - 1)),
        };
        assert_eq!(state.socket(&long).as_os_str().len(), MAX_SOCKET_PATH);
    }

    #[test]
    fn records_are_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path().join("csi")).unwrap();
        assert_eq!(
            lanyard_daemon::private_file::mode_of(state.path()).unwrap(),
            0o700
        );
        let (a, b) = (record("vol-a"), record("vol-b"));
        state.save(&b).unwrap();
        state.save(&a).unwrap();
        let file = state.record_path("vol-a");
        assert_eq!(lanyard_daemon::private_file::mode_of(&file).unwrap(), 0o600);
        assert_eq!(state.load().unwrap(), [a.clone(), b]);

        state.forget("vol-b").unwrap();
        state.forget("vol-b").unwrap();
        assert_eq!(state.load().unwrap(), [a]);
    }

    #[test]
    fn unusable_records_and_orphaned_directories_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path().join("csi")).unwrap();
        std::fs::write(state.record_path("garbage"), "{not json").unwrap();
        // A record saved under another volume's key.
        let moved = serde_json::to_vec(&record("vol-a")).unwrap();
        std::fs::write(state.record_path("vol-b"), moved).unwrap();
        assert!(state.load().unwrap().is_empty());
        assert!(!state.record_path("garbage").exists());

        let kept = record("vol-kept");
        state.save(&kept).unwrap();
        let kept_dir = state.create_volume_dir("vol-kept").unwrap();
        let orphan = state.create_volume_dir("vol-orphan").unwrap();
        std::fs::write(orphan.join(SOCKET_NAME), "").unwrap();
        std::fs::create_dir(state.path().join("not-a-key")).unwrap();
        assert_eq!(state.remove_orphans().unwrap(), 1);
        assert!(!orphan.exists());
        assert!(kept_dir.exists());
        assert!(
            state.path().join("not-a-key").exists(),
            "only our names are touched"
        );
        assert_eq!(
            lanyard_daemon::private_file::mode_of(&kept_dir).unwrap(),
            0o755
        );
    }
}
