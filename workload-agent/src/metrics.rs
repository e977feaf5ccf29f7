//! The agent's Prometheus metrics (the server-facing half; the Workload API registers its own
//! under the same registry). Label values are typed decisions' `Display` labels.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
pub struct AgentMetrics {
    /// Workload X.509-SVIDs held now.
    pub svids_cached: Gauge,
    /// Workload X.509-SVIDs received (first mints and renewals).
    pub rotations: Counter,
    /// Failed workload mints, by `reason`.
    pub renewal_failures: Family<Labels, Counter>,
    /// Failed node attestations (first or renewal), by `reason`.
    pub attestation_failures: Family<Labels, Counter>,
    /// Node SVIDs received.
    pub node_svids: Counter,
    /// Unix seconds at which the node SVID in use expires.
    pub node_svid_expiry: Gauge,
}

impl AgentMetrics {
    /// Creates the metrics and registers them under `lanyard_agent_`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = Arc::new(Self::default());
        let sub = registry.sub_registry_with_prefix("lanyard_agent");
        sub.register(
            "svids_cached",
            "Workload X.509-SVIDs held",
            m.svids_cached.clone(),
        );
        sub.register(
            "svid_rotations",
            "Workload X.509-SVIDs received",
            m.rotations.clone(),
        );
        sub.register(
            "svid_renewal_failures",
            "Failed workload X.509-SVID mints, by reason",
            m.renewal_failures.clone(),
        );
        sub.register(
            "attestation_failures",
            "Failed node attestations, by reason",
            m.attestation_failures.clone(),
        );
        sub.register("node_svids", "Node SVIDs received", m.node_svids.clone());
        sub.register(
            "node_svid_expiry_timestamp_seconds",
            "When the node SVID in use expires",
            m.node_svid_expiry.clone(),
        );
        m
    }

    /// Metrics registered nowhere (tests, tools).
    pub fn unregistered() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn renewal_failed(&self, reason: impl ToString) {
        self.renewal_failures
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    pub fn attestation_failed(&self, reason: impl ToString) {
        self.attestation_failures
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }
}
