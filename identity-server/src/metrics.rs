//! The server's Prometheus metrics.
//!
//! Label sets that follow the CA (certificate fingerprints, bundle versions) are replaced as
//! a whole on every update, so a certificate or version that leaves takes its series with it:
//! their number stays that of the roots in the bundle plus one intermediate, and at most
//! [`MAX_VERSION_LABELS`] versions (+ `other`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::discovery::resolver::AnswerKind;

type Labels = Vec<(&'static str, String)>;

/// Most bundle versions labelled one by one in `bundle_version_agents`; the agents on any
/// further version are summed under `version="other"`.
pub const MAX_VERSION_LABELS: usize = 8;

/// Which CA certificate an expiry is of. `Display` is the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    /// A trust anchor in the bundle.
    Root,
    /// The intermediate that signs.
    Intermediate,
}

impl std::fmt::Display for CertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Root => "root",
            Self::Intermediate => "intermediate",
        })
    }
}

/// Where an agent connected to this replica is. `Display` is the `state` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentBundleState {
    /// Acknowledged the bundle version this replica serves.
    Current,
    /// Acknowledged another version (an older one, or one another replica serves).
    Lagging,
    /// On `WatchBundle`, or on `SyncBundle` without an acknowledgement yet.
    Unacknowledging,
}

impl AgentBundleState {
    pub const ALL: [Self; 3] = [Self::Current, Self::Lagging, Self::Unacknowledging];
}

impl std::fmt::Display for AgentBundleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Current => "current",
            Self::Lagging => "lagging",
            Self::Unacknowledging => "unacknowledging",
        })
    }
}

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
    /// Unix seconds at which each CA certificate in use expires, by `kind` ([`CertKind`]) and
    /// `fingerprint` (its first 16 hex digits): every root in the bundle, the intermediate.
    pub cert_expiry: Family<Labels, Gauge>,
    /// Agents connected to this replica, by `state` ([`AgentBundleState`]).
    pub bundle_agents: Family<Labels, Gauge>,
    /// Agents connected to this replica, by the bundle `version` they acknowledged.
    pub bundle_version_agents: Family<Labels, Gauge>,
    /// 1, labelled with the `version` of the bundle this replica serves.
    pub bundle_served: Family<Labels, Gauge>,
    /// The label sets last set in the families above that follow the CA, to remove those that
    /// leave.
    followed: std::sync::Mutex<FollowedLabels>,
    /// Destinations followed on `DiscoveryFeed` streams now, summed over streams.
    pub discovery_followed: Gauge,
    /// Discovery answers sent to agents, by `kind`
    /// ([`crate::discovery::resolver::AnswerKind`]).
    pub discovery_answers: Family<Labels, Counter>,
    /// Destination lookups made by discovery feeds (work per follow request and index
    /// change, whether or not an answer was sent).
    pub discovery_resolves: Counter,
    /// 1 while this replica holds the `lanyard-identity-status` Lease (it writes the
    /// LanyardIdentity statuses), else 0.
    pub identity_status_lease_held: Gauge,
    /// Fetches of federated bundles, by `trust_domain` and `result`
    /// ([`crate::federation::fetch::FetchOutcome`]).
    pub federation_fetches: Family<Labels, Counter>,
    /// The `spiffe_sequence` of each federated bundle held, by `trust_domain`.
    pub federation_bundle_sequence: Family<Labels, Gauge>,
    /// Unix seconds of the last good fetch of each federated bundle, by `trust_domain`.
    pub federation_bundle_fetched: Family<Labels, Gauge>,
}

#[derive(Default)]
struct FollowedLabels {
    certs: Vec<Labels>,
    versions: Vec<Labels>,
    served: Vec<Labels>,
}

/// Sets `family` to exactly `values`: series not among them are removed.
fn replace_all(family: &Family<Labels, Gauge>, last: &mut Vec<Labels>, values: Vec<(Labels, i64)>) {
    for old in last.iter() {
        if !values.iter().any(|(labels, _)| labels == old) {
            family.remove(old);
        }
    }
    *last = values.iter().map(|(labels, _)| labels.clone()).collect();
    for (labels, value) in values {
        family.get_or_create(&labels).set(value);
    }
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
            "ca_cert_expiry_timestamp_seconds",
            "When each CA certificate in use expires (every root in the bundle, the intermediate), by kind and fingerprint",
            metrics.cert_expiry.clone(),
        );
        sub.register(
            "bundle_agents",
            "Agents connected to this replica: on the bundle version it serves (current), on another (lagging), or not acknowledging",
            metrics.bundle_agents.clone(),
        );
        sub.register(
            "bundle_version_agents",
            "Agents connected to this replica, by the bundle version they acknowledged",
            metrics.bundle_version_agents.clone(),
        );
        sub.register(
            "bundle_served",
            "1, labelled with the version of the bundle this replica serves",
            metrics.bundle_served.clone(),
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
        sub.register(
            "identity_status_lease_held",
            "1 while this replica holds the lease to write LanyardIdentity statuses",
            metrics.identity_status_lease_held.clone(),
        );
        sub.register(
            "federation_fetch",
            "Fetches of federated trust domains' bundles, by trust domain and result",
            metrics.federation_fetches.clone(),
        );
        sub.register(
            "federation_bundle_sequence",
            "spiffe_sequence of the federated bundle held, by trust domain",
            metrics.federation_bundle_sequence.clone(),
        );
        sub.register(
            "federation_bundle_fetched_timestamp_seconds",
            "When the federated bundle held was last fetched successfully, by trust domain",
            metrics.federation_bundle_fetched.clone(),
        );
        metrics
    }

    pub fn federation_fetched(
        &self,
        trust_domain: &lanyard_svid::TrustDomain,
        outcome: crate::federation::fetch::FetchOutcome,
    ) {
        self.federation_fetches
            .get_or_create(&vec![
                ("trust_domain", trust_domain.to_string()),
                ("result", outcome.to_string()),
            ])
            .inc();
    }

    pub fn set_federated_bundle(
        &self,
        trust_domain: &lanyard_svid::TrustDomain,
        sequence: u64,
        fetched: std::time::SystemTime,
    ) {
        let labels = vec![("trust_domain", trust_domain.to_string())];
        self.federation_bundle_sequence
            .get_or_create(&labels)
            .set(i64::try_from(sequence).unwrap_or(i64::MAX));
        self.federation_bundle_fetched
            .get_or_create(&labels)
            .set(lanyard_proto::convert::unix_seconds(fetched));
    }

    /// A federation removed: its series go.
    pub fn forget_federated(&self, trust_domain: &lanyard_svid::TrustDomain) {
        let labels = vec![("trust_domain", trust_domain.to_string())];
        self.federation_bundle_sequence.remove(&labels);
        self.federation_bundle_fetched.remove(&labels);
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

impl ServerMetrics {
    /// The expiry of every CA certificate in use: `(kind, fingerprint, unix seconds)`.
    pub fn set_cert_expiries(&self, certs: impl IntoIterator<Item = (CertKind, String, i64)>) {
        let values = certs
            .into_iter()
            .map(|(kind, fingerprint, at)| {
                let short = lanyard_ca_lifecycle::report::short(&fingerprint).to_owned();
                (vec![("kind", kind.to_string()), ("fingerprint", short)], at)
            })
            .collect();
        let mut followed = self.followed.lock().expect("metrics lock");
        replace_all(&self.cert_expiry, &mut followed.certs, values);
    }

    /// Where this replica's agents are, given the version it serves.
    pub fn set_bundle_agents(&self, served: &str, acks: &crate::bundle_acks::AckCounts) {
        let current = acks.by_version.get(served).copied().unwrap_or(0);
        let acknowledged: u64 = acks.by_version.values().sum();
        for state in AgentBundleState::ALL {
            let n = match state {
                AgentBundleState::Current => current,
                AgentBundleState::Lagging => acknowledged - current,
                AgentBundleState::Unacknowledging => acks.unacknowledging,
            };
            self.bundle_agents
                .get_or_create(&vec![("state", state.to_string())])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        // The most common versions by name (the served one always), the rest as `other`.
        let mut versions: Vec<(&String, u64)> =
            acks.by_version.iter().map(|(v, n)| (v, *n)).collect();
        versions.sort_by_key(|(v, n)| std::cmp::Reverse((*v == served, *n)));
        let other: u64 = versions
            .iter()
            .skip(MAX_VERSION_LABELS)
            .map(|(_, n)| n)
            .sum();
        let mut values: Vec<(Labels, i64)> = versions
            .iter()
            .take(MAX_VERSION_LABELS)
            .map(|(v, n)| (vec![("version", (*v).clone())], *n as i64))
            .collect();
        if other > 0 {
            values.push((vec![("version", "other".to_owned())], other as i64));
        }
        let mut followed = self.followed.lock().expect("metrics lock");
        replace_all(&self.bundle_version_agents, &mut followed.versions, values);
        replace_all(
            &self.bundle_served,
            &mut followed.served,
            vec![(vec![("version", served.to_owned())], 1)],
        );
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

    #[test]
    fn ca_series_follow_the_certificates_and_versions_in_use() {
        use crate::bundle_acks::AckCounts;
        let mut registry = Registry::default();
        let metrics = ServerMetrics::register(&mut registry);
        let fp = |c: char| c.to_string().repeat(64);
        metrics.set_cert_expiries([
            (CertKind::Root, fp('a'), 100),
            (CertKind::Root, fp('b'), 200),
            (CertKind::Intermediate, fp('c'), 50),
        ]);
        let out = text(&registry);
        for line in [
            "lanyard_server_ca_cert_expiry_timestamp_seconds{kind=\"root\",fingerprint=\"aaaaaaaaaaaaaaaa\"} 100",
            "lanyard_server_ca_cert_expiry_timestamp_seconds{kind=\"root\",fingerprint=\"bbbbbbbbbbbbbbbb\"} 200",
            "lanyard_server_ca_cert_expiry_timestamp_seconds{kind=\"intermediate\",fingerprint=\"cccccccccccccccc\"} 50",
        ] {
            assert!(out.contains(line), "{line} missing from:\n{out}");
        }
        // The old root retired, a new intermediate: their series go.
        metrics.set_cert_expiries([
            (CertKind::Root, fp('b'), 200),
            (CertKind::Intermediate, fp('d'), 60),
        ]);
        let out = text(&registry);
        assert!(
            !out.contains("aaaaaaaaaaaaaaaa") && !out.contains("cccccccccccccccc"),
            "{out}"
        );
        assert!(
            out.contains("fingerprint=\"dddddddddddddddd\"} 60"),
            "{out}"
        );

        let counts = AckCounts {
            by_version: (0..12u64).map(|i| (format!("{i:016x}"), i + 1)).collect(),
            unacknowledging: 3,
        };
        let served = format!("{:016x}", 0);
        metrics.set_bundle_agents(&served, &counts);
        let out = text(&registry);
        let total: u64 = (1..=12).sum();
        for line in [
            "lanyard_server_bundle_agents{state=\"current\"} 1".to_owned(),
            format!(
                "lanyard_server_bundle_agents{{state=\"lagging\"}} {}",
                total - 1
            ),
            "lanyard_server_bundle_agents{state=\"unacknowledging\"} 3".to_owned(),
            format!("lanyard_server_bundle_served{{version=\"{served}\"}} 1"),
            // The served version is always named, then the 7 largest; the rest are "other".
            format!("lanyard_server_bundle_version_agents{{version=\"{served}\"}} 1"),
            format!(
                "lanyard_server_bundle_version_agents{{version=\"{:016x}\"}} 12",
                11
            ),
            // Versions 1..=4 (2+3+4+5 agents) are beyond the 8 named.
            "lanyard_server_bundle_version_agents{version=\"other\"} 14".to_owned(),
        ] {
            assert!(out.contains(&line), "{line} missing from:\n{out}");
        }
        assert_eq!(
            out.matches("lanyard_server_bundle_version_agents{").count(),
            9
        );
        // Everyone moved to the served version: the other series go.
        let moved = AckCounts {
            by_version: [(served.clone(), total)].into(),
            unacknowledging: 0,
        };
        metrics.set_bundle_agents(&served, &moved);
        let out = text(&registry);
        assert_eq!(
            out.matches("lanyard_server_bundle_version_agents{").count(),
            1,
            "{out}"
        );
        assert!(out.contains("lanyard_server_bundle_agents{state=\"lagging\"} 0"));
    }
}
