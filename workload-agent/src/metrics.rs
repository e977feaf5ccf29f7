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
    /// The trust bundle version last acknowledged to the server on `SyncBundle`: one series,
    /// value 1, label `version`; none while unacknowledged (a server without `SyncBundle`).
    pub bundle_acknowledged: Family<Labels, Gauge>,
    /// `lanyard.discovery.v1.Discovery` on the socket.
    pub discovery: DiscoveryMetrics,
}

/// The discovery cache's metrics. Cloning shares them (prometheus-client metrics are handles),
/// so the cache and the registry see the same values.
#[derive(Clone, Default)]
pub struct DiscoveryMetrics {
    /// `Resolve` calls and `Watch` opens that reached the cache, by `result`
    /// ([`crate::discovery::ResolveResult`]).
    pub resolves: Family<Labels, Counter>,
    /// Destinations held in the cache.
    pub cached: Gauge,
}

impl DiscoveryMetrics {
    pub fn resolved(&self, result: impl ToString) {
        self.resolves
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }

    /// Registers under `registry`'s prefix (`lanyard_agent_discovery_*` in [`AgentMetrics`]).
    fn register(&self, sub: &mut Registry) {
        sub.register(
            "discovery_resolves",
            "Discovery Resolve calls and Watch opens, by result",
            self.resolves.clone(),
        );
        sub.register(
            "discovery_cached_destinations",
            "Destinations held in the discovery cache",
            self.cached.clone(),
        );
    }
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
        sub.register(
            "bundle_acknowledged_info",
            "The trust bundle version last acknowledged to the server (value 1, label version)",
            m.bundle_acknowledged.clone(),
        );
        m.discovery.register(sub);
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

    /// `version` is the one acknowledged bundle version now (a no-op when it already is).
    pub fn bundle_acknowledged(&self, version: &str) {
        let labels = vec![("version", version.to_owned())];
        if self.bundle_acknowledged.get(&labels).is_some() {
            return;
        }
        self.bundle_acknowledged.clear();
        self.bundle_acknowledged.get_or_create(&labels).set(1);
    }

    /// No bundle version is acknowledged (the feed follows `WatchBundle`).
    pub fn bundle_unacknowledged(&self) {
        self.bundle_acknowledged.clear();
    }

    pub fn attestation_failed(&self, reason: impl ToString) {
        self.attestation_failures
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_metrics_are_exported_with_their_labels() {
        let mut registry = Registry::default();
        let metrics = AgentMetrics::register(&mut registry);
        metrics.discovery.resolved("cache_hit");
        metrics.discovery.resolved("cache_hit");
        metrics.discovery.resolved("expired");
        metrics.discovery.cached.set(7);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "lanyard_agent_discovery_resolves_total{result=\"cache_hit\"} 2",
            "lanyard_agent_discovery_resolves_total{result=\"expired\"} 1",
            "lanyard_agent_discovery_cached_destinations 7",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn one_acknowledged_bundle_version_at_a_time() {
        let mut registry = Registry::default();
        let metrics = AgentMetrics::register(&mut registry);
        let encode = || {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            text.lines()
                .filter(|l| l.starts_with("lanyard_agent_bundle_acknowledged_info{"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert!(encode().is_empty());
        metrics.bundle_acknowledged("00aa");
        metrics.bundle_acknowledged("00aa");
        assert_eq!(
            encode(),
            ["lanyard_agent_bundle_acknowledged_info{version=\"00aa\"} 1"]
        );
        metrics.bundle_acknowledged("11bb");
        assert_eq!(
            encode(),
            ["lanyard_agent_bundle_acknowledged_info{version=\"11bb\"} 1"]
        );
        metrics.bundle_unacknowledged();
        assert!(encode().is_empty());
    }
}
