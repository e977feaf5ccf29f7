//! Static workload entries from the server's TOML file: an ID, the selectors a workload must
//! show, and the nodes allowed to serve it.

use std::collections::BTreeSet;
use std::time::Duration;

use lanyard_svid::reserved::is_reserved;
use lanyard_svid::selector::{Selector, SelectorKind};
use lanyard_svid::{SpiffeId, TrustDomain};
use serde::Deserialize;

use crate::duration::parse_duration;

/// Wildcard for `nodes`: every node. It must be written out; there is no default.
pub const ALL_NODES: &str = "*";
const MAX_SELECTORS: usize = 32;
const MAX_NODES: usize = 10_000;

/// One `[[entries]]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryConfig {
    pub spiffe_id: String,
    pub selectors: Vec<String>,
    pub nodes: Option<Vec<String>>,
    pub x509_ttl: Option<String>,
    pub jwt_ttl: Option<String>,
}

/// Why an entry is refused at startup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("spiffe_id: {0}")]
    Id(#[from] lanyard_svid::IdError),
    #[error("spiffe_id must be in trust domain {0}")]
    OtherTrustDomain(String),
    #[error("spiffe_id must have a path")]
    NoPath,
    #[error("spiffe_id is under the reserved /lanyard/ path")]
    Reserved,
    #[error("selectors: at least one is required, at most {MAX_SELECTORS}")]
    SelectorCount,
    #[error("selector {0:?}: {1}")]
    Selector(String, String),
    #[error("nodes is required; write [\"*\"] for every node")]
    NoNodes,
    #[error("nodes: at most {MAX_NODES}, no empty names")]
    BadNodes,
    #[error("{0}")]
    Ttl(String),
}

/// Which nodes may serve an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeSet {
    All,
    Named(BTreeSet<String>),
}

/// A validated static entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticEntry {
    pub spiffe_id: SpiffeId,
    pub selectors: Vec<Selector>,
    pub nodes: NodeSet,
    pub x509_ttl: Option<Duration>,
    pub jwt_ttl: Option<Duration>,
}

impl EntryConfig {
    pub fn validate(self, trust_domain: &TrustDomain) -> Result<StaticEntry, EntryError> {
        let spiffe_id = SpiffeId::parse(&self.spiffe_id)?;
        if spiffe_id.trust_domain() != trust_domain {
            return Err(EntryError::OtherTrustDomain(trust_domain.to_string()));
        }
        if spiffe_id.is_trust_domain_id() {
            return Err(EntryError::NoPath);
        }
        if is_reserved(&spiffe_id) {
            return Err(EntryError::Reserved);
        }
        if self.selectors.is_empty() || self.selectors.len() > MAX_SELECTORS {
            return Err(EntryError::SelectorCount);
        }
        let selectors = self
            .selectors
            .iter()
            .map(|s| {
                s.parse::<Selector>()
                    .map_err(|e| EntryError::Selector(s.clone(), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let nodes = match self.nodes {
            None => return Err(EntryError::NoNodes),
            Some(n) if n.is_empty() => return Err(EntryError::NoNodes),
            Some(n) if n.len() > MAX_NODES || n.iter().any(|s| s.is_empty()) => {
                return Err(EntryError::BadNodes);
            }
            Some(n) if n.iter().any(|s| s == ALL_NODES) => NodeSet::All,
            Some(n) => NodeSet::Named(n.into_iter().collect()),
        };
        let ttl = |t: Option<String>, name: &str| {
            t.map(|t| parse_duration(&t).map_err(|e| EntryError::Ttl(format!("{name}: {e}"))))
                .transpose()
        };
        Ok(StaticEntry {
            spiffe_id,
            selectors,
            nodes,
            x509_ttl: ttl(self.x509_ttl, "x509_ttl")?,
            jwt_ttl: ttl(self.jwt_ttl, "jwt_ttl")?,
        })
    }
}

impl StaticEntry {
    /// True when `node` is listed (or the entry is for every node).
    pub fn assigned_to(&self, node: &str) -> bool {
        match &self.nodes {
            NodeSet::All => true,
            NodeSet::Named(names) => names.contains(node),
        }
    }

    /// True when some selector is of the `k8s:` kind, which entries served on a Kubernetes
    /// node must have (so the server can re-check them against the pod).
    pub fn has_k8s_selector(&self) -> bool {
        self.selectors.iter().any(|s| s.kind() == SelectorKind::K8s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn entry(id: &str, selectors: &[&str], nodes: Option<&[&str]>) -> EntryConfig {
        EntryConfig {
            spiffe_id: id.into(),
            selectors: selectors.iter().map(|s| s.to_string()).collect(),
            nodes: nodes.map(|n| n.iter().map(|s| s.to_string()).collect()),
            x509_ttl: None,
            jwt_ttl: None,
        }
    }

    #[test]
    fn valid_entry() {
        let e = entry(
            "spiffe://example.org/web",
            &["unix:uid:1001"],
            Some(&["node-1"]),
        )
        .validate(&td())
        .unwrap();
        assert!(e.assigned_to("node-1"));
        assert!(!e.assigned_to("node-2"));
        assert!(!e.has_k8s_selector());
        let all = entry(
            "spiffe://example.org/web",
            &["k8s:ns:default"],
            Some(&["*"]),
        )
        .validate(&td())
        .unwrap();
        assert!(all.assigned_to("anything"));
        assert!(all.has_k8s_selector());
    }

    #[test]
    fn refusals() {
        let cases: [(EntryConfig, EntryError); 6] = [
            (
                entry("spiffe://example.org/web", &["unix:uid:1"], None),
                EntryError::NoNodes,
            ),
            (
                entry("spiffe://example.org/web", &["unix:uid:1"], Some(&[])),
                EntryError::NoNodes,
            ),
            (
                entry("spiffe://other.org/web", &["unix:uid:1"], Some(&["*"])),
                EntryError::OtherTrustDomain("example.org".into()),
            ),
            (
                entry("spiffe://example.org", &["unix:uid:1"], Some(&["*"])),
                EntryError::NoPath,
            ),
            (
                entry(
                    "spiffe://example.org/lanyard/server",
                    &["unix:uid:1"],
                    Some(&["*"]),
                ),
                EntryError::Reserved,
            ),
            (
                entry("spiffe://example.org/web", &[], Some(&["*"])),
                EntryError::SelectorCount,
            ),
        ];
        for (config, expected) in cases {
            assert_eq!(config.validate(&td()).unwrap_err(), expected);
        }
        let bad_selector = entry("spiffe://example.org/web", &["nope:x:y"], Some(&["*"]));
        assert!(matches!(
            bad_selector.validate(&td()),
            Err(EntryError::Selector(..))
        ));
    }
}
