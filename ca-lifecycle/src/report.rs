//! What each server replica reports, in its own ConfigMap
//! ([`crate::names::report_configmap_name`]), rewritten when it changes and at least every
//! [`crate::names::REPORT_HEARTBEAT_SECS`]: the bundle it serves, what it signs with, the
//! longest SVID it issues, and the bundle each agent connected to it acknowledged.
//!
//! Propagation is measured, not assumed: `lanyard ca` reads every live report and refuses to
//! move a rotation on until the reports show the previous step everywhere.

use lanyard_svid::TrustBundle;
use lanyard_svid::bundle::certificate_fingerprint;
use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer, X509Certificate};

/// The largest report read (a replica with 20,000 agents writes about 3 MB; a ConfigMap holds
/// at most 1 MiB, so a replica lists at most [`MAX_AGENTS_LISTED`] agents and counts the rest).
pub const MAX_REPORT_BYTES: usize = 1024 * 1024;
/// The most agents a report lists one by one.
pub const MAX_AGENTS_LISTED: usize = 5000;

/// One replica's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaReport {
    /// The replica's name (its pod name).
    pub replica: String,
    /// Unix seconds when this report was written.
    pub updated_at: i64,
    /// The bundle this replica serves.
    pub bundle: BundleSummary,
    /// What it signs with.
    pub signing: SigningSummary,
    /// The longest lifetime of anything it issues (workload and node X.509-SVIDs, JWT-SVIDs),
    /// in seconds: after a switch, SVIDs under the old root can live this long.
    pub longest_svid_ttl_secs: u64,
    /// Every agent connected to this replica on SyncBundle, with what it acknowledged. Agents
    /// on the older WatchBundle stream are counted in `unacknowledging_agents` instead.
    pub agents: Vec<AgentAck>,
    /// Agents beyond [`MAX_AGENTS_LISTED`] (not listed), and agents that never acknowledge.
    #[serde(default)]
    pub unlisted_agents: u64,
    #[serde(default)]
    pub unacknowledging_agents: u64,
}

/// A bundle, by version, with the roots and JWT keys in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleSummary {
    /// [`TrustBundle::version`].
    pub version: String,
    pub roots: Vec<CertSummary>,
    pub jwt_key_ids: Vec<String>,
}

impl BundleSummary {
    pub fn of(bundle: &TrustBundle) -> Self {
        Self {
            version: bundle.version(),
            roots: bundle
                .x509_authorities()
                .iter()
                .map(|c| CertSummary::of(c.as_ref()))
                .collect(),
            jwt_key_ids: bundle
                .jwt_authorities()
                .iter()
                .map(|a| a.key_id.clone())
                .collect(),
        }
    }

    /// True when `fingerprint` is one of the roots.
    pub fn has_root(&self, fingerprint: &str) -> bool {
        self.roots.iter().any(|r| r.fingerprint == fingerprint)
    }
}

/// A certificate, as a report names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertSummary {
    /// [`certificate_fingerprint`]: hex SHA-256 of the DER.
    pub fingerprint: String,
    /// The subject, as text (for people).
    pub subject: String,
    /// Unix seconds.
    pub not_after: i64,
}

impl CertSummary {
    /// Summarises a DER certificate; one that does not parse keeps its fingerprint, with an
    /// empty subject and a `not_after` of 0 (already expired, so it is noticed).
    pub fn of(der: &[u8]) -> Self {
        let (subject, not_after) = match X509Certificate::from_der(der) {
            Ok((_, cert)) => (
                cert.subject().to_string(),
                cert.validity().not_after.timestamp(),
            ),
            Err(_) => (String::new(), 0),
        };
        Self {
            fingerprint: certificate_fingerprint(der),
            subject,
            not_after,
        }
    }

    /// The first 16 hex digits, how people are shown a fingerprint.
    pub fn short(&self) -> &str {
        short(&self.fingerprint)
    }
}

/// The first 16 characters of a fingerprint.
pub fn short(fingerprint: &str) -> &str {
    fingerprint.get(..16).unwrap_or(fingerprint)
}

/// What a replica signs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningSummary {
    /// The issuing intermediate.
    pub intermediate: CertSummary,
    /// Fingerprint of the root in the served bundle that the intermediate chains to.
    pub root: String,
    /// The key ID JWT-SVIDs are signed with.
    pub jwt_key_id: String,
    /// Unix seconds since when this replica has signed under `root` (not reset by a new
    /// intermediate under the same root).
    pub since: i64,
}

/// One agent's acknowledgement, as a replica reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentAck {
    /// The agent's node name.
    pub node: String,
    /// The bundle version it installed.
    pub version: String,
    /// Fingerprints of the roots the SVIDs it holds chain to.
    pub svid_roots: Vec<String>,
    /// Unix seconds of its latest acknowledgement.
    pub acked_at: i64,
}

/// Why a report could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("report is {0} bytes, over the {MAX_REPORT_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("report is not valid JSON of the expected shape: {0}")]
    Malformed(#[from] serde_json::Error),
}

impl ReplicaReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report always serialises")
    }

    pub fn from_json(text: &str) -> Result<Self, ReportError> {
        if text.len() > MAX_REPORT_BYTES {
            return Err(ReportError::TooLarge(text.len()));
        }
        Ok(serde_json::from_str(text)?)
    }

    /// Whether the report is too old to describe a running replica.
    pub fn is_stale(&self, now: i64) -> bool {
        now - self.updated_at > crate::names::REPORT_STALE_AFTER_SECS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_svid::TrustDomain;
    use lanyard_svid::ca::RootCa;
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_report_round_trips_and_garbage_is_refused() {
        let td = TrustDomain::new("example.org").unwrap();
        let now = SystemTime::now();
        let root = RootCa::generate(&td, Duration::from_secs(3600), now).unwrap();
        let mut bundle = TrustBundle::new(td);
        bundle.add_x509_authority(root.cert_der().clone());
        let summary = BundleSummary::of(&bundle);
        assert_eq!(summary.roots.len(), 1);
        assert!(summary.has_root(&certificate_fingerprint(root.cert_der())));
        assert!(summary.roots[0].not_after > crate::unix_seconds(now));
        let report = ReplicaReport {
            replica: "lanyard-server-0".into(),
            updated_at: 100,
            bundle: summary.clone(),
            signing: SigningSummary {
                intermediate: summary.roots[0].clone(),
                root: summary.roots[0].fingerprint.clone(),
                jwt_key_id: "k".into(),
                since: 50,
            },
            longest_svid_ttl_secs: 3600,
            agents: vec![AgentAck {
                node: "node-1".into(),
                version: summary.version.clone(),
                svid_roots: vec![summary.roots[0].fingerprint.clone()],
                acked_at: 99,
            }],
            unlisted_agents: 0,
            unacknowledging_agents: 0,
        };
        assert_eq!(ReplicaReport::from_json(&report.to_json()).unwrap(), report);
        assert!(!report.is_stale(100 + crate::names::REPORT_STALE_AFTER_SECS));
        assert!(report.is_stale(101 + crate::names::REPORT_STALE_AFTER_SECS));
        assert!(matches!(
            ReplicaReport::from_json("{\"replica\": 3}"),
            Err(ReportError::Malformed(_))
        ));
        let huge = " ".repeat(MAX_REPORT_BYTES + 1);
        assert!(matches!(
            ReplicaReport::from_json(&huge),
            Err(ReportError::TooLarge(_))
        ));
        assert_eq!(CertSummary::of(b"not a certificate").not_after, 0);
    }
}
