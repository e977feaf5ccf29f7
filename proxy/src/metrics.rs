//! The proxy's Prometheus metrics, served on `--metrics` next to `/healthz` and `/readyz`.
//!
//! - `lanyard_proxy_connections_total{direction, tls, reason}`: finished connections;
//!   `reason` is a [`crate::reason::NoTlsReason`] label, or `mtls` when `tls="true"`.
//! - `lanyard_proxy_bytes_total{direction, tls}`: application bytes carried, both ways.
//! - `lanyard_proxy_open_connections{direction}`: connections being handled now.
//! - `lanyard_proxy_tap_dropped_lines_total`: tap lines lost by slow readers.
//! - `lanyard_proxy_svid_updates_total`: SVID messages applied from the Workload API.
//! - `lanyard_proxy_workload_api_errors_total{reason}`: failed Workload API sessions and
//!   refused messages.
//! - `lanyard_proxy_discovery_lookups_total{outcome}`: discovery lookups of transparent
//!   destinations; `outcome` is a [`crate::discovery::LookupOutcome`] label (`cached`,
//!   `resolved`, or a [`crate::discovery::DiscoveryError`] label).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::reason::MTLS_LABEL;
use crate::tap::{ConnRecord, Direction, Outcome};

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
pub struct ProxyMetrics {
    connections: Family<Labels, Counter>,
    bytes: Family<Labels, Counter>,
    open: Family<Labels, Gauge>,
    pub tap_dropped: Counter,
    pub svid_updates: Counter,
    workload_api_errors: Family<Labels, Counter>,
    discovery_lookups: Family<Labels, Counter>,
}

impl ProxyMetrics {
    /// Creates the metrics and registers them under `lanyard_proxy_`.
    pub fn register(registry: &mut Registry) -> std::sync::Arc<Self> {
        let metrics = std::sync::Arc::new(Self::default());
        let sub = registry.sub_registry_with_prefix("lanyard_proxy");
        sub.register(
            "connections",
            "Finished connections, by direction, tls and reason",
            metrics.connections.clone(),
        );
        sub.register(
            "bytes",
            "Application bytes carried, by direction and tls",
            metrics.bytes.clone(),
        );
        sub.register(
            "open_connections",
            "Connections being handled, by direction",
            metrics.open.clone(),
        );
        sub.register(
            "tap_dropped_lines",
            "Tap lines lost because a reader fell behind",
            metrics.tap_dropped.clone(),
        );
        sub.register(
            "svid_updates",
            "X.509-SVID messages applied from the Workload API",
            metrics.svid_updates.clone(),
        );
        sub.register(
            "workload_api_errors",
            "Workload API session failures and refused messages, by reason",
            metrics.workload_api_errors.clone(),
        );
        sub.register(
            "discovery_lookups",
            "Discovery lookups of transparent destinations, by outcome",
            metrics.discovery_lookups.clone(),
        );
        metrics
    }

    /// Counts a finished connection.
    pub fn finished(&self, record: &ConnRecord) {
        let (tls, reason) = match &record.outcome {
            Outcome::Mtls { .. } => ("true", MTLS_LABEL),
            Outcome::NoTls(reason) => ("false", reason.label()),
        };
        let direction = record.direction.label();
        self.connections
            .get_or_create(&vec![
                ("direction", direction.to_owned()),
                ("tls", tls.to_owned()),
                ("reason", reason.to_owned()),
            ])
            .inc();
        self.bytes
            .get_or_create(&vec![
                ("direction", direction.to_owned()),
                ("tls", tls.to_owned()),
            ])
            .inc_by(record.bytes_in + record.bytes_out);
    }

    /// Counts a connection as open until the guard drops.
    pub fn open(&self, direction: Direction) -> OpenGuard {
        let gauge = self
            .open
            .get_or_create(&vec![("direction", direction.label().to_owned())])
            .clone();
        gauge.inc();
        OpenGuard(gauge)
    }

    pub fn workload_api_error(&self, reason: &'static str) {
        self.workload_api_errors
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    /// Counts a discovery lookup by its outcome label.
    pub fn discovery_lookup(&self, outcome: impl std::fmt::Display) {
        self.discovery_lookups
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
    }
}

/// Decrements the open-connections gauge on drop.
pub struct OpenGuard(Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reason::NoTlsReason;
    use std::time::Duration;

    #[test]
    fn discovery_lookups_count_by_outcome() {
        use crate::discovery::{DiscoveryError, LookupOutcome};
        let mut registry = Registry::default();
        let metrics = ProxyMetrics::register(&mut registry);
        metrics.discovery_lookup(LookupOutcome::Resolved);
        metrics.discovery_lookup(LookupOutcome::Cached);
        metrics.discovery_lookup(LookupOutcome::Cached);
        metrics.discovery_lookup(LookupOutcome::Failed(&DiscoveryError::DowngradeRefused));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "lanyard_proxy_discovery_lookups_total{outcome=\"resolved\"} 1",
            "lanyard_proxy_discovery_lookups_total{outcome=\"cached\"} 2",
            "lanyard_proxy_discovery_lookups_total{outcome=\"meshed_downgrade_refused\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn labels_follow_the_outcome() {
        let mut registry = Registry::default();
        let metrics = ProxyMetrics::register(&mut registry);
        let record = ConnRecord {
            direction: Direction::In,
            src: "127.0.0.1:1".parse().unwrap(),
            dst: "127.0.0.1:2".into(),
            outcome: Outcome::NoTls(NoTlsReason::DetectTimeout),
            bytes_in: 3,
            bytes_out: 4,
            duration: Duration::ZERO,
        };
        metrics.finished(&record);
        {
            let _open = metrics.open(Direction::Out);
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            assert!(
                text.contains("lanyard_proxy_open_connections{direction=\"out\"} 1"),
                "{text}"
            );
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                "lanyard_proxy_connections_total{direction=\"in\",tls=\"false\",reason=\"detect_timeout\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("lanyard_proxy_bytes_total{direction=\"in\",tls=\"false\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("lanyard_proxy_open_connections{direction=\"out\"} 0"),
            "{text}"
        );
    }
}
