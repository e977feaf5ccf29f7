//! The proxy's Workload API client: [`lanyard_client::x509_watcher`] keeping the proxy's
//! [`SvidStore`] current, counted in the proxy's metrics (`svid_updates`, and
//! `workload_api_errors` by the watcher's error label).

use std::path::PathBuf;
use std::sync::Arc;

use lanyard_client::x509_watcher::{self, WatchError, WatchObserver};
use lanyard_svid::SpiffeId;
use lanyard_svid::tls::SvidStore;

use crate::metrics::ProxyMetrics;

struct Counted(Arc<ProxyMetrics>);

impl WatchObserver for Counted {
    fn applied(&self, _id: &SpiffeId) {
        self.0.svid_updates.inc();
    }

    fn failed(&self, error: &WatchError) {
        self.0.workload_api_error(error.label());
    }
}

/// Follows the Workload API at `socket` forever, keeping `store` current.
pub async fn follow(socket: PathBuf, store: Arc<SvidStore>, metrics: Arc<ProxyMetrics>) {
    x509_watcher::watch(socket, store, Arc::new(Counted(metrics))).await
}
