//! The `--trust-bundle` file: the roots the agent starts with, and where it looks again when
//! the server's certificate does not verify.
//!
//! Once connected, the agent trusts the server's bundle, which replaces the file's roots. An
//! agent that was away during a root rotation (its connection down, or the agent stopped
//! while its server-fed bundle was older than the file) may find the server already signing
//! under a root its last bundle lacks. In Kubernetes the file is the bundle ConfigMap, which
//! kubelet keeps current, so it already holds the new root: [`BundleFile::merge_into`] adds
//! the file's roots to those of the TLS store (nothing is removed) and the handshake is
//! retried. The server's next bundle then replaces the merged set as usual.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lanyard_svid::bundle::certificates_from_pem;
use lanyard_svid::tls::SvidStore;
use lanyard_svid::{BundleSet, TrustBundle, TrustDomain};
use rustls_pki_types::CertificateDer;

/// Largest bundle file read (a few hundred roots).
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Why the bundle file could not be read (the caller names the file).
#[derive(Debug, thiserror::Error)]
pub enum BundleFileError {
    #[error("{0}")]
    Read(std::io::Error),
    #[error("larger than {MAX_FILE_BYTES} bytes; is it the bundle?")]
    TooLarge,
    #[error("{0}")]
    Parse(String),
}

/// Reads the PEM roots of a bundle file (at least one).
pub fn read_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, BundleFileError> {
    let len = std::fs::metadata(path)
        .map_err(BundleFileError::Read)?
        .len();
    if len > MAX_FILE_BYTES {
        return Err(BundleFileError::TooLarge);
    }
    let pem = std::fs::read(path).map_err(BundleFileError::Read)?;
    certificates_from_pem(&pem).map_err(|e| BundleFileError::Parse(e.to_string()))
}

/// The agent's `--trust-bundle` file, for its trust domain.
#[derive(Debug, Clone)]
pub struct BundleFile {
    pub path: PathBuf,
    pub trust_domain: TrustDomain,
}

impl BundleFile {
    /// Re-reads the file and adds the roots `store` lacks to its bundle of our trust domain.
    /// True when a root was added (a handshake that failed may now succeed).
    pub fn merge_into(&self, store: &Arc<SvidStore>) -> bool {
        let roots = match read_roots(&self.path) {
            Ok(roots) => roots,
            Err(e) => {
                tracing::warn!(
                    path = %self.path.display(),
                    "the server's certificate did not verify, and the trust bundle file cannot be read to look for a newer root: {e}"
                );
                return false;
            }
        };
        let current = store.bundles();
        match merged(&current, &self.trust_domain, roots) {
            Some((set, added)) => {
                tracing::info!(
                    added,
                    path = %self.path.display(),
                    "the server's certificate did not verify; trusting the roots of the trust bundle file as well and retrying"
                );
                store.update_bundles(set);
                true
            }
            None => false,
        }
    }
}

/// `current` with `roots` added to its bundle of `trust_domain` (JWT authorities and other
/// trust domains kept), and how many were new; `None` when every root is already there.
pub fn merged(
    current: &BundleSet,
    trust_domain: &TrustDomain,
    roots: Vec<CertificateDer<'static>>,
) -> Option<(BundleSet, usize)> {
    let mut bundle = current
        .get(trust_domain)
        .cloned()
        .unwrap_or_else(|| TrustBundle::new(trust_domain.clone()));
    let before = bundle.x509_authorities().len();
    for root in roots {
        bundle.add_x509_authority(root);
    }
    let added = bundle.x509_authorities().len() - before;
    if added == 0 {
        return None;
    }
    let mut set = current.clone();
    set.insert(bundle);
    Some((set, added))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use lanyard_svid::ca::RootCa;

    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn root() -> RootCa {
        RootCa::generate(&td(), Duration::from_secs(86_400), SystemTime::now()).unwrap()
    }

    #[test]
    fn merging_adds_missing_roots_and_keeps_everything_else() {
        let (a, b) = (root(), root());
        let mut ours = TrustBundle::from_x509_authorities(td(), [a.cert_der().clone()]);
        ours.add_jwt_authority(lanyard_svid::bundle::JwtAuthority {
            key_id: "k1".into(),
            public_key: vec![1, 2, 3],
            expires_at: None,
        });
        let other_td = TrustDomain::new("other.org").unwrap();
        let federated =
            TrustBundle::from_x509_authorities(other_td.clone(), [b.cert_der().clone()]);
        let mut current = BundleSet::from(ours.clone());
        current.insert(federated.clone());

        let file = vec![a.cert_der().clone(), b.cert_der().clone()];
        let (set, added) = merged(&current, &td(), file.clone()).unwrap();
        assert_eq!(added, 1);
        let mine = set.get(&td()).unwrap();
        assert_eq!(mine.x509_authorities(), file.as_slice());
        assert_eq!(mine.jwt_authorities(), ours.jwt_authorities());
        assert_eq!(set.get(&other_td), Some(&federated));

        // Nothing new: nothing to do.
        assert!(merged(&set, &td(), vec![b.cert_der().clone()]).is_none());
    }

    #[test]
    fn the_file_is_merged_into_the_store_once() {
        let (a, b) = (root(), root());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.pem");
        std::fs::write(&path, format!("{}{}", a.cert_pem(), b.cert_pem())).unwrap();
        let store = Arc::new(SvidStore::new(BundleSet::from(
            TrustBundle::from_x509_authorities(td(), [a.cert_der().clone()]),
        )));
        let file = BundleFile {
            path: path.clone(),
            trust_domain: td(),
        };
        assert!(file.merge_into(&store));
        let roots = store
            .bundles()
            .get(&td())
            .unwrap()
            .x509_authorities()
            .to_vec();
        assert_eq!(roots, vec![a.cert_der().clone(), b.cert_der().clone()]);
        assert!(!file.merge_into(&store), "nothing new the second time");

        // An unreadable file changes nothing.
        std::fs::write(&path, "not a bundle").unwrap();
        assert!(!file.merge_into(&store));
        assert!(matches!(read_roots(&path), Err(BundleFileError::Parse(_))));
    }
}
