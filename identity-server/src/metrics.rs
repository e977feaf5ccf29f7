//! The server's Prometheus metrics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::discovery::resolver::AnswerKind;

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
    /// Destinations followed on `DiscoveryFeed` streams now, summed over streams.
    pub discovery_followed: Gauge,
    /// Discovery answers sent to agents, by `kind`
    /// ([`crate::discovery::resolver::AnswerKind`]).
    pub discovery_answers: Family<Labels, Counter>,
    /// Destination lookups made by discovery feeds (work per follow request and index
    /// change, whether or not an answer was sent).
    pub discovery_resolves: Counter,
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
        sub.register(
            "discovery_followed_destinations",
            "Destinations followed on DiscoveryFeed streams, summed over streams",
            metrics.discovery_followed.clone(),
        );
        sub.register(
            "discovery_answers_sent",
            "Discovery answers sent to agents, by kind",
            metrics.discovery_answers.clone(),
        );
        sub.register(
            "discovery_resolves",
            "Destination lookups made by discovery feeds",
            metrics.discovery_resolves.clone(),
        );
        metrics
    }

    pub fn discovery_answer_sent(&self, kind: AnswerKind) {
        self.discovery_answers
            .get_or_create(&vec![("kind", kind.to_string())])
            .inc();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn text(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn discovery_metrics_are_exported_with_their_labels() {
        let mut registry = Registry::default();
        let metrics = ServerMetrics::register(&mut registry);
        assert!(
            !text(&registry).contains("lanyard_server_discovery_answers_sent_total{"),
            "no answer sent yet"
        );
        metrics.discovery_answer_sent(AnswerKind::MeshedPod);
        metrics.discovery_answer_sent(AnswerKind::MeshedPod);
        metrics.discovery_answer_sent(AnswerKind::UnmeshedPod);
        metrics.discovery_followed.inc_by(3);
        metrics.discovery_resolves.inc_by(5);
        let text = text(&registry);
        for line in [
            "lanyard_server_discovery_answers_sent_total{kind=\"meshed_pod\"} 2",
            "lanyard_server_discovery_answers_sent_total{kind=\"unmeshed_pod\"} 1",
            "lanyard_server_discovery_followed_destinations 3",
            "lanyard_server_discovery_resolves_total 5",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
