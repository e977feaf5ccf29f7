//! The server's Prometheus metrics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Every metric the server exports. Label values are the typed decisions' `Display` texts.
#[derive(Default)]
pub struct ServerMetrics {
    /// SVIDs issued, by `kind` (`x509`, `jwt`, `node`).
    pub issued: Family<Labels, Counter>,
    /// Refused requests, by `rpc` and `reason`.
    pub refusals: Family<Labels, Counter>,
    /// Unix seconds at which a CA certificate expires, by `cert` (`intermediate`, and `anchor`:
    /// the first trust anchor in the bundle to expire).
    pub ca_expiry: Family<Labels, Gauge>,
}

impl ServerMetrics {
    /// Creates the metrics and registers them under `lanyard_server_`.
    pub fn register(registry: &mut Registry) -> std::sync::Arc<Self> {
        let metrics = std::sync::Arc::new(Self::default());
        let sub = registry.sub_registry_with_prefix("lanyard_server");
        sub.register(
            "svids_issued",
            "SVIDs issued, by kind",
            metrics.issued.clone(),
        );
        sub.register(
            "refusals",
            "Refused requests, by RPC and reason",
            metrics.refusals.clone(),
        );
        sub.register(
            "ca_expiry_timestamp_seconds",
            "When each CA certificate in use expires",
            metrics.ca_expiry.clone(),
        );
        metrics
    }

    pub fn issued(&self, kind: &'static str) {
        self.issued
            .get_or_create(&vec![("kind", kind.to_owned())])
            .inc();
    }

    pub fn refused(&self, rpc: &'static str, reason: impl ToString) {
        self.refusals
            .get_or_create(&vec![
                ("rpc", rpc.to_owned()),
                ("reason", reason.to_string()),
            ])
            .inc();
    }

    pub fn set_ca_expiry(&self, cert: &'static str, unix_seconds: i64) {
        self.ca_expiry
            .get_or_create(&vec![("cert", cert.to_owned())])
            .set(unix_seconds);
    }
}
