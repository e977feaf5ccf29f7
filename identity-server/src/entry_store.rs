//! The static entries in force, replaced whole when the entries file is reloaded
//! ([`crate::entry_reload`]); the mint policy and every node feed read the latest set.

use std::sync::Arc;

use tokio::sync::watch;

use crate::entries::StaticEntry;

/// Cheap to clone; every clone sees the same entries.
#[derive(Clone)]
pub struct EntryStore {
    tx: Arc<watch::Sender<Arc<[StaticEntry]>>>,
}

impl EntryStore {
    pub fn new(entries: Vec<StaticEntry>) -> Self {
        let (tx, _) = watch::channel(entries.into());
        Self { tx: Arc::new(tx) }
    }

    /// The entries now.
    pub fn current(&self) -> Arc<[StaticEntry]> {
        self.tx.borrow().clone()
    }

    /// Fires after every [`Self::replace`] that changed the entries.
    pub fn subscribe(&self) -> watch::Receiver<Arc<[StaticEntry]>> {
        self.tx.subscribe()
    }

    /// Puts `entries` in force (already validated); returns false when nothing changed.
    pub fn replace(&self, entries: Vec<StaticEntry>) -> bool {
        self.tx.send_if_modified(|current| {
            if current[..] == entries[..] {
                return false;
            }
            *current = entries.into();
            true
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entries::EntryConfig;
    use lanyard_svid::TrustDomain;

    fn entry(id: &str) -> StaticEntry {
        EntryConfig {
            spiffe_id: id.into(),
            selectors: vec!["unix:uid:1".into()],
            nodes: Some(vec!["*".into()]),
            x509_ttl: None,
            jwt_ttl: None,
            dns_names: None,
            federates_with: None,
        }
        .validate(&TrustDomain::new("example.org").unwrap())
        .unwrap()
    }

    #[tokio::test]
    async fn subscribers_see_changes_only() {
        let store = EntryStore::new(vec![entry("spiffe://example.org/a")]);
        let mut rx = store.subscribe();
        assert!(!store.replace(vec![entry("spiffe://example.org/a")]));
        assert!(!rx.has_changed().unwrap());
        assert!(store.replace(vec![entry("spiffe://example.org/b")]));
        rx.changed().await.unwrap();
        assert_eq!(
            store.current()[0].spiffe_id.to_string(),
            "spiffe://example.org/b"
        );
    }
}
