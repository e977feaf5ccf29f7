//! Data-dir mode: each federated trust domain's last fetched bundle, kept in
//! `<data-dir>/federation/<td>.json` (the bundle document as fetched, re-encoded), and read
//! back at start. So a server restarted after the foreign root rotated still authenticates the
//! `https_spiffe` endpoint with the bundle it last fetched, not only with the bootstrap one.
//!
//! Cluster mode keeps fetched bundles in memory only: a restarted replica starts again from
//! the bootstrap bundle.

use std::io::Read;
use std::path::{Path, PathBuf};

use lanyard_svid::jwks::MAX_DOCUMENT_LEN;
use lanyard_svid::{TrustBundle, TrustDomain};

/// The directory under the data dir.
pub const DIR: &str = "federation";

/// Why a kept bundle could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}; it is ignored and fetched again")]
    Invalid { path: PathBuf, reason: String },
}

/// `<dir>/<td>.json` (a trust domain name is a safe file name: lowercase letters, digits,
/// `.`, `-`, `_`; never `.` or `..` alone, which [`TrustDomain`] refuses).
pub fn path_of(dir: &Path, trust_domain: &TrustDomain) -> PathBuf {
    dir.join(format!("{}.json", trust_domain.name()))
}

/// Keeps `bundle` as `<dir>/<td>.json`, atomically.
pub fn save(dir: &Path, bundle: &TrustBundle) -> Result<(), PersistError> {
    let path = path_of(dir, bundle.trust_domain());
    let io = |source| PersistError::Io {
        path: path.clone(),
        source,
    };
    let document = bundle.to_jwks().map_err(|e| PersistError::Invalid {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    lanyard_daemon::private_file::ensure_dir(dir, 0o700).map_err(io)?;
    // Public material, but in the data dir like the rest: private to the server.
    lanyard_daemon::private_file::write_private_atomic(&path, document.as_bytes()).map_err(io)
}

/// The bundle kept for `trust_domain`, if any.
pub fn load(dir: &Path, trust_domain: &TrustDomain) -> Result<Option<TrustBundle>, PersistError> {
    let path = path_of(dir, trust_domain);
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(PersistError::Io { path, source }),
    };
    let mut bytes = Vec::new();
    file.take(MAX_DOCUMENT_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| PersistError::Io {
            path: path.clone(),
            source,
        })?;
    super::fetch::check_document(trust_domain, &bytes)
        .map(Some)
        .map_err(|e| PersistError::Invalid {
            path,
            reason: e.to_string(),
        })
}

/// Forgets the bundle kept for `trust_domain` (its federation was removed).
pub fn remove(dir: &Path, trust_domain: &TrustDomain) -> Result<(), PersistError> {
    let path = path_of(dir, trust_domain);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(PersistError::Io { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_bundle_round_trips_and_a_damaged_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().join("federation");
        let td = TrustDomain::new("b.test").unwrap();
        assert!(load(&dir, &td).unwrap().is_none());
        let root =
            lanyard_svid::ca::RootCa::generate(&td, Duration::from_secs(3600), SystemTime::now())
                .unwrap();
        let mut bundle = TrustBundle::from_x509_authorities(td.clone(), [root.cert_der().clone()]);
        bundle.set_sequence(4);
        bundle.set_refresh_hint(Some(Duration::from_secs(60)));
        save(&dir, &bundle).unwrap();
        assert_eq!(load(&dir, &td).unwrap(), Some(bundle));
        assert_eq!(
            lanyard_daemon::private_file::mode_of(&path_of(&dir, &td)).unwrap(),
            0o600
        );
        std::fs::write(path_of(&dir, &td), b"{\"keys\": 3}").unwrap();
        assert!(matches!(load(&dir, &td), Err(PersistError::Invalid { .. })));
        remove(&dir, &td).unwrap();
        remove(&dir, &td).unwrap();
        assert!(load(&dir, &td).unwrap().is_none());
    }
}
