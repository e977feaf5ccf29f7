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
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

impl Evictions {
    /// Loads the list from `data_dir` (empty if the file does not exist yet).
    pub fn load(data_dir: &std::path::Path) -> Result<Self, EvictionError> {
        let path = data_dir.join(FILE_NAME);
        let evicted = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| EvictionError::Corrupt {
                    path: path.clone(),
                    source,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(EvictionError::Read { path, source }),
        };
        Ok(Self {
            path,
            evicted: RwLock::new(evicted),
        })
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
        let e = Evictions::load(dir.path()).unwrap();
        assert!(!e.is_evicted("n1", now));
        e.evict("n1", now).unwrap();
        assert!(e.is_evicted("n1", now - Duration::from_secs(60)));
        assert!(!e.is_evicted("n2", now));
        let reloaded = Evictions::load(dir.path()).unwrap();
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
            Evictions::load(dir.path()),
            Err(EvictionError::Corrupt { .. })
        ));
    }
}
