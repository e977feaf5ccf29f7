//! The Workload API's Prometheus metrics.
//!
//! `rpcs` counts each call once, when it is answered: for a streaming RPC that is when the
//! stream is opened (`OK`) or refused, not when it ends. `refusals` names the typed reason
//! of every refusal, including one that ends an open stream.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Every Workload API metric. Cheap to clone: clones share the counters, so an unregistered
/// [`WorkloadApiMetrics::default`] works too (for tests).
#[derive(Clone, Debug, Default)]
pub struct WorkloadApiMetrics {
    /// Calls by `method` and gRPC `code` (e.g. `Ok`, `PermissionDenied`).
    pub rpcs: Family<Labels, Counter>,
    /// Refusals by `method` and `reason` (the refusal's label).
    pub refusals: Family<Labels, Counter>,
    /// Streams open now, by `method`.
    pub streams_open: Family<Labels, Gauge>,
}

impl WorkloadApiMetrics {
    /// Creates the metrics and registers them under `lanyard_agent_workload_api_`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let sub = registry.sub_registry_with_prefix("lanyard_agent_workload_api");
        sub.register(
            "rpcs",
            "Workload API calls by method and gRPC status code",
            metrics.rpcs.clone(),
        );
        sub.register(
            "refusals",
            "Workload API refusals by method and reason",
            metrics.refusals.clone(),
        );
        sub.register(
            "streams_open",
            "Workload API streams open now, by method",
            metrics.streams_open.clone(),
        );
        metrics
    }

    pub(crate) fn answered(&self, method: &'static str, code: tonic::Code) {
        self.rpcs
            .get_or_create(&vec![
                ("method", method.to_owned()),
                ("code", format!("{code:?}")),
            ])
            .inc();
    }

    pub(crate) fn refused(&self, method: &'static str, reason: &str) {
        self.refusals
            .get_or_create(&vec![
                ("method", method.to_owned()),
                ("reason", reason.to_owned()),
            ])
            .inc();
    }

    /// Counts a stream as open until the guard is dropped.
    pub(crate) fn stream_opened(&self, method: &'static str) -> OpenStreamGauge {
        let gauge = self
            .streams_open
            .get_or_create(&vec![("method", method.to_owned())])
            .clone();
        gauge.inc();
        OpenStreamGauge(gauge)
    }

    /// Calls answered so far with `code` (for tests and diagnostics).
    pub fn answered_count(&self, method: &'static str, code: tonic::Code) -> u64 {
        self.rpcs
            .get_or_create(&vec![
                ("method", method.to_owned()),
                ("code", format!("{code:?}")),
            ])
            .get()
    }

    /// Streams of `method` open now.
    pub fn open_streams(&self, method: &'static str) -> i64 {
        self.streams_open
            .get_or_create(&vec![("method", method.to_owned())])
            .get()
    }
}

/// Decrements the open-streams gauge when the stream ends.
#[derive(Debug)]
pub(crate) struct OpenStreamGauge(Gauge);

impl Drop for OpenStreamGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_metrics_are_exported() {
        let mut registry = Registry::default();
        let metrics = WorkloadApiMetrics::register(&mut registry);
        metrics.answered("FetchX509SVID", tonic::Code::PermissionDenied);
        metrics.refused("FetchX509SVID", "no_identity");
        let gauge = metrics.stream_opened("FetchJWTBundles");
        assert_eq!(metrics.open_streams("FetchJWTBundles"), 1);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains(
            r#"lanyard_agent_workload_api_rpcs_total{method="FetchX509SVID",code="PermissionDenied"} 1"#
        ), "{text}");
        assert!(text.contains(
            r#"lanyard_agent_workload_api_refusals_total{method="FetchX509SVID",reason="no_identity"} 1"#
        ), "{text}");
        assert!(
            text.contains(r#"lanyard_agent_workload_api_streams_open{method="FetchJWTBundles"} 1"#),
            "{text}"
        );
        drop(gauge);
        assert_eq!(metrics.open_streams("FetchJWTBundles"), 0);
    }
}
