//! TLS client connectors for outbound mTLS, one per expected server ID, built once and shared.
//!
//! A `lanyard_svid::tls::client_config` reads the [`SvidStore`] on every handshake (our
//! certificate from its current SVID, the server verified against its current bundles) and
//! has session resumption off, so a config depends on the expected ID alone: an SVID rotation
//! or a bundle change applies to the next handshake through every cached connector, with
//! nothing to rebuild or invalidate. Building one per connection (a rustls `ClientConfig` and
//! its verifier) is what this replaces.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lanyard_svid::SpiffeId;
use lanyard_svid::tls::{ExactId, LANYARD_ALPN, SvidStore, client_config};
use tokio_rustls::TlsConnector;

/// Cached connectors at most. Discovery can name many destinations, but they share far fewer
/// IDs; past this the cache starts over rather than grow without bound.
pub const MAX_CACHED_CONNECTORS: usize = 1024;

/// Connectors by the server ID they accept.
pub struct Connectors {
    store: Arc<SvidStore>,
    by_id: Mutex<HashMap<SpiffeId, TlsConnector>>,
}

impl Connectors {
    pub fn new(store: Arc<SvidStore>) -> Self {
        Self {
            store,
            by_id: Mutex::default(),
        }
    }

    /// The connector that offers ALPN `lanyard/1`, presents our current SVID and accepts
    /// exactly `expected`.
    pub fn exact(&self, expected: &SpiffeId) -> TlsConnector {
        let mut by_id = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(connector) = by_id.get(expected) {
            return connector.clone();
        }
        if by_id.len() >= MAX_CACHED_CONNECTORS {
            by_id.clear();
        }
        let config = client_config(
            self.store.clone(),
            Arc::new(ExactId(expected.clone())),
            vec![LANYARD_ALPN.to_vec()],
        );
        let connector = TlsConnector::from(Arc::new(config));
        by_id.insert(expected.clone(), connector.clone());
        connector
    }

    /// Connectors built so far (for tests and metrics).
    pub fn len(&self) -> usize {
        self.by_id.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_svid::BundleSet;

    #[test]
    fn one_connector_per_id_shared_and_bounded() {
        let connectors = Connectors::new(Arc::new(SvidStore::new(BundleSet::new())));
        let a = SpiffeId::parse("spiffe://td/a").unwrap();
        let first = connectors.exact(&a);
        let again = connectors.exact(&a);
        // The same rustls config behind both.
        assert!(Arc::ptr_eq(first.config(), again.config()));
        assert_eq!(connectors.len(), 1);
        for i in 0..MAX_CACHED_CONNECTORS + 1 {
            connectors.exact(&SpiffeId::parse(&format!("spiffe://td/{i}")).unwrap());
        }
        assert!(connectors.len() <= MAX_CACHED_CONNECTORS);
    }
}
