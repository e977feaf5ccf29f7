//! The live certificate source behind every TLS config: our current SVID (ready to serve as a
//! rustls `CertifiedKey`) and the bundles we currently trust.
//!
//! Configs hold an `Arc<SvidStore>` and read it on every handshake, so an update applies to
//! the next handshake at once, without rebuilding configs or touching open connections
//! (those keep the keys they negotiated).

use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::sign::CertifiedKey;

use crate::bundle::BundleSet;
use crate::verify::crypto_provider;
use crate::x509::X509Svid;

/// Why an SVID cannot become our serving identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// The SVID has no private key: a peer's SVID cannot be served.
    NoPrivateKey,
    /// The ring provider refused the key.
    UnusableKey,
}

impl StoreError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoPrivateKey => "no_private_key",
            Self::UnusableKey => "unusable_key",
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            Self::NoPrivateKey => "the SVID has no private key, so it cannot be served",
            Self::UnusableKey => "the SVID's private key cannot be loaded by the ring provider",
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl std::error::Error for StoreError {}

/// Our SVID and the rustls key built from it, swapped together.
struct Current {
    svid: Arc<X509Svid>,
    certified: Arc<CertifiedKey>,
}

/// Our current SVID and trust bundles, shared by all TLS configs of a process.
///
/// Reads take a short `RwLock` read lock and clone an `Arc`; nothing is held across a
/// handshake. It may start without an SVID: handshakes then fail cleanly (see
/// [`super::TlsRefusal::NoSvid`]).
pub struct SvidStore {
    svid: RwLock<Option<Arc<Current>>>,
    bundles: RwLock<Arc<BundleSet>>,
}

impl SvidStore {
    /// A store with no SVID yet and the given bundles.
    pub fn new(bundles: BundleSet) -> Self {
        Self {
            svid: RwLock::new(None),
            bundles: RwLock::new(Arc::new(bundles)),
        }
    }

    /// A store serving `svid` and trusting `bundles`.
    pub fn with_svid(svid: X509Svid, bundles: BundleSet) -> Result<Self, StoreError> {
        let store = Self::new(bundles);
        store.update_svid(svid)?;
        Ok(store)
    }

    /// Replaces our SVID; the next handshake presents it. The rustls key is built here, once.
    pub fn update_svid(&self, svid: X509Svid) -> Result<(), StoreError> {
        let key_der = svid.private_key_der().ok_or(StoreError::NoPrivateKey)?;
        let signing_key = crypto_provider()
            .key_provider
            .load_private_key(key_der.clone_key())
            .map_err(|_| StoreError::UnusableKey)?;
        let certified = CertifiedKey::new(svid.chain().to_vec(), signing_key);
        tracing::info!(spiffe_id = %svid.spiffe_id(), not_after = ?svid.not_after(), "serving a new X.509-SVID");
        let current = Arc::new(Current {
            svid: Arc::new(svid),
            certified: Arc::new(certified),
        });
        *self.svid.write().unwrap_or_else(|e| e.into_inner()) = Some(current);
        Ok(())
    }

    /// Forgets our SVID (e.g. it expired and could not be renewed): handshakes fail until the
    /// next [`SvidStore::update_svid`].
    pub fn clear_svid(&self) {
        *self.svid.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Replaces the trusted bundles; the next peer verification uses them.
    pub fn update_bundles(&self, bundles: BundleSet) {
        *self.bundles.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(bundles);
    }

    /// Our current SVID, if any.
    pub fn svid(&self) -> Option<Arc<X509Svid>> {
        self.current().map(|c| c.svid.clone())
    }

    /// True once an SVID is held: the readiness signal of a proxy.
    pub fn has_svid(&self) -> bool {
        self.svid
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// The rustls key to present in the next handshake.
    pub fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        self.current().map(|c| c.certified.clone())
    }

    /// The bundles to verify the next peer against.
    pub fn bundles(&self) -> Arc<BundleSet> {
        self.bundles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn current(&self) -> Option<Arc<Current>> {
        self.svid.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl fmt::Debug for SvidStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SvidStore")
            .field("svid", &self.svid().map(|s| s.spiffe_id().to_string()))
            .field("bundles", &self.bundles().iter().count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TestCa;

    #[test]
    fn starts_empty_and_swaps() {
        let ca = TestCa::new("example.org");
        let store = SvidStore::new(BundleSet::new());
        assert!(!store.has_svid());
        assert!(store.certified_key().is_none());
        assert!(store.bundles().get(ca.trust_domain()).is_none());

        let first = ca.svid("spiffe://example.org/a");
        store.update_svid(first.clone()).unwrap();
        assert!(store.has_svid());
        assert_eq!(store.certified_key().unwrap().cert, first.chain());
        let second = ca.svid("spiffe://example.org/b");
        store.update_svid(second.clone()).unwrap();
        assert_eq!(store.svid().unwrap().spiffe_id(), second.spiffe_id());
        assert_eq!(store.certified_key().unwrap().cert, second.chain());

        store.update_bundles(ca.bundle_set());
        assert!(store.bundles().get(ca.trust_domain()).is_some());
        store.clear_svid();
        assert!(!store.has_svid());
    }

    #[test]
    fn refuses_an_svid_without_key_and_keeps_the_current_one() {
        let ca = TestCa::new("example.org");
        let svid = ca.svid("spiffe://example.org/a");
        let store = SvidStore::with_svid(svid.clone(), BundleSet::new()).unwrap();
        assert_eq!(
            store.update_svid(ca.svid("spiffe://example.org/b").without_private_key()),
            Err(StoreError::NoPrivateKey)
        );
        assert_eq!(store.svid().unwrap().spiffe_id(), svid.spiffe_id());
        let debug = format!("{store:?}");
        assert!(debug.contains("spiffe://example.org/a"), "{debug}");
        assert!(!debug.contains("private"), "{debug}");
    }
}
