//! Evicted nodes (data-dir mode): `lanyard-server agent evict NODE` ends a join-token agent's
//! ability to renew or mint. Node SVIDs issued before the eviction are refused from then on;
//! a node attested again later (with a new join token) gets a fresh SVID that is accepted.
//! The list is persisted in the data dir so a restart does not forgive an evicted node.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lanyard_daemon::private_file::write_private_atomic;

const FILE_NAME: &str = "evictions.json";

#[derive(Debug, thiserror::Error)]
pub enum EvictionError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "{path} is missing, but this data dir's CA is not new: every eviction would be forgotten. Restore the file from a backup; to really forgive every evicted node, create it containing {{}}"
    )]
    Missing { path: PathBuf },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Node name -> Unix seconds of its eviction.
#[derive(Debug)]
pub struct Evictions {
    path: PathBuf,
    evicted: RwLock<BTreeMap<String, u64>>,
    /// Bumped at every eviction, so open feeds can end.
    changed: tokio::sync::watch::Sender<u64>,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

impl Evictions {
    /// Loads the list from `data_dir`. The file is written (empty) when the data dir's CA is
    /// created (`new_ca`), so from then on its absence is an error, not "nobody evicted".
    pub fn load(data_dir: &std::path::Path, new_ca: bool) -> Result<Self, EvictionError> {
        let path = data_dir.join(FILE_NAME);
        if new_ca && !path.exists() {
            write_private_atomic(&path, b"{}").map_err(|source| EvictionError::Write {
                path: path.clone(),
                source,
            })?;
        }
        let evicted = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| EvictionError::Corrupt {
                    path: path.clone(),
                    source,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(EvictionError::Missing { path });
            }
            Err(source) => return Err(EvictionError::Read { path, source }),
        };
        Ok(Self {
            path,
            evicted: RwLock::new(evicted),
            changed: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Resolves once a node SVID for `node` issued at `issued_at` is evicted (never, if it is
    /// not).
    pub async fn evicted(self: std::sync::Arc<Self>, node: String, issued_at: SystemTime) {
        let mut changes = self.changed.subscribe();
        loop {
            if self.is_evicted(&node, issued_at) {
                return;
            }
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Records that `node` is evicted as of `now`, durably, before returning.
    pub fn evict(&self, node: &str, now: SystemTime) -> Result<(), EvictionError> {
        let mut evicted = self.evicted.write().expect("evictions lock");
        let mut next = evicted.clone();
        next.insert(node.to_owned(), unix_secs(now));
        let json = serde_json::to_vec_pretty(&next).expect("map serialises");
        write_private_atomic(&self.path, &json).map_err(|source| EvictionError::Write {
            path: self.path.clone(),
            source,
        })?;
        *evicted = next;
        drop(evicted);
        self.changed.send_modify(|n| *n += 1);
        Ok(())
    }

    /// True when a node SVID for `node` issued at `issued_at` predates the node's eviction.
    /// Certificate times have one-second resolution, so "at or before" counts as before.
    pub fn is_evicted(&self, node: &str, issued_at: SystemTime) -> bool {
        self.evicted
            .read()
            .expect("evictions lock")
            .get(node)
            .is_some_and(|&at| unix_secs(issued_at) <= at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_persists_and_spares_later_svids() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let e = Evictions::load(dir.path(), true).unwrap();
        assert!(!e.is_evicted("n1", now));
        e.evict("n1", now).unwrap();
        assert!(e.is_evicted("n1", now - Duration::from_secs(60)));
        assert!(!e.is_evicted("n2", now));
        let reloaded = Evictions::load(dir.path(), false).unwrap();
        assert!(reloaded.is_evicted("n1", now));
        assert!(!reloaded.is_evicted("n1", now + Duration::from_secs(5)));
        assert_eq!(
            lanyard_daemon::private_file::mode_of(&dir.path().join(FILE_NAME)).unwrap(),
            0o600
        );
    }

    #[test]
    fn corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), b"{not json").unwrap();
        assert!(matches!(
            Evictions::load(dir.path(), false),
            Err(EvictionError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_deleted_file_is_refused_once_the_ca_exists() {
        let dir = tempfile::tempdir().unwrap();
        Evictions::load(dir.path(), true).unwrap();
        std::fs::remove_file(dir.path().join(FILE_NAME)).unwrap();
        assert!(matches!(
            Evictions::load(dir.path(), false),
            Err(EvictionError::Missing { .. })
        ));
    }
}
