//! Static workload entries from the server's TOML file: an ID, the selectors a workload must
//! show, the nodes allowed to serve it, the DNS names its X.509-SVID carries, and the
//! federated trust domains whose bundles it receives (`federates_with`, checked as a
//! LanyardIdentity's `federatesWith` is).
//!
//! [`validate_entries`] is the one validation of a whole `[[entries]]` list, shared by start-up
//! ([`crate::config`]) and reload ([`crate::entry_reload`]).

use std::collections::BTreeSet;
use std::time::Duration;

use lanyard_registration::federation::{FederatesWithError, check_federates_with};
use lanyard_svid::reserved::is_reserved;
use lanyard_svid::selector::{Selector, SelectorKind};
use lanyard_svid::{SpiffeId, TrustDomain};
use serde::Deserialize;

use crate::duration::parse_duration;

/// Wildcard for `nodes`: every node. It must be written out; there is no default.
pub const ALL_NODES: &str = "*";
const MAX_SELECTORS: usize = 32;
const MAX_NODES: usize = 10_000;
/// Most DNS names on one entry (each becomes a SAN of every SVID minted for it).
pub const MAX_DNS_NAMES: usize = 16;
const MAX_DNS_NAME_LEN: usize = 253;
const MAX_DNS_LABEL_LEN: usize = 63;

/// One `[[entries]]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryConfig {
    pub spiffe_id: String,
    pub selectors: Vec<String>,
    pub nodes: Option<Vec<String>>,
    pub x509_ttl: Option<String>,
    pub jwt_ttl: Option<String>,
    /// DNS SANs for the entry's X.509-SVIDs (lowercase; `*.` allowed as the first label).
    pub dns_names: Option<Vec<String>>,
    /// Federated trust domains (`["partner.example"]`) whose bundles the workload receives.
    pub federates_with: Option<Vec<String>>,
}

/// Why an entry is refused (at start-up or on reload).
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
    #[error("dns_names: at most {MAX_DNS_NAMES}")]
    DnsNameCount,
    #[error(
        "dns_names: {0:?} is not a lowercase DNS name (labels of a-z, 0-9 and '-', at most 63 characters, not starting or ending with '-', at most 253 in all, the last not all digits; \"*.\" only as the first label)"
    )]
    DnsName(String),
    #[error("dns_names: {0:?} is listed twice")]
    DnsNameDuplicate(String),
    #[error("federates_with: {0}")]
    FederatesWith(#[from] FederatesWithError),
}

/// Why a list of entries is refused: the first failing entry, by position and ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("static entry {index} ({spiffe_id}): {reason}")]
pub struct EntriesError {
    /// Position in `[[entries]]`, from 0.
    pub index: usize,
    /// The `spiffe_id` as written.
    pub spiffe_id: String,
    pub reason: EntryError,
}

/// Validates every entry of `configs`; the first refusal names its entry.
pub fn validate_entries(
    configs: Vec<EntryConfig>,
    trust_domain: &TrustDomain,
) -> Result<Vec<StaticEntry>, EntriesError> {
    configs
        .into_iter()
        .enumerate()
        .map(|(index, config)| {
            let spiffe_id = config.spiffe_id.clone();
            config
                .validate(trust_domain)
                .map_err(|reason| EntriesError {
                    index,
                    spiffe_id,
                    reason,
                })
        })
        .collect()
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
    /// Validated DNS names, in the order written (empty: none).
    pub dns_names: Vec<String>,
    /// Federated trust domains whose bundles the workload receives (sorted, each once).
    pub federates_with: Vec<TrustDomain>,
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
            dns_names: validate_dns_names(self.dns_names.unwrap_or_default())?,
            federates_with: check_federates_with(
                self.federates_with.as_deref().unwrap_or_default(),
                trust_domain,
            )?,
        })
    }
}

fn validate_dns_names(names: Vec<String>) -> Result<Vec<String>, EntryError> {
    if names.len() > MAX_DNS_NAMES {
        return Err(EntryError::DnsNameCount);
    }
    let mut seen = BTreeSet::new();
    for name in &names {
        if !is_dns_name(name) {
            return Err(EntryError::DnsName(name.clone()));
        }
        if !seen.insert(name.as_str()) {
            return Err(EntryError::DnsNameDuplicate(name.clone()));
        }
    }
    Ok(names)
}

/// A lowercase RFC 1123 host name, optionally a wildcard (`*.` as its whole first label). The
/// last label may not be all digits, so an IPv4 address is not taken for a DNS name.
fn is_dns_name(name: &str) -> bool {
    if name.is_empty() || name.len() > MAX_DNS_NAME_LEN {
        return false;
    }
    let rest = name.strip_prefix("*.").unwrap_or(name);
    let labels: Vec<&str> = rest.split('.').collect();
    let label_ok = |label: &&str| {
        !label.is_empty()
            && label.len() <= MAX_DNS_LABEL_LEN
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let last_numeric = labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    labels.iter().all(label_ok) && !last_numeric
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
            dns_names: None,
            federates_with: None,
        }
    }

    fn with_dns(names: &[&str]) -> EntryConfig {
        EntryConfig {
            dns_names: Some(names.iter().map(|s| s.to_string()).collect()),
            ..entry("spiffe://example.org/web", &["unix:uid:1"], Some(&["*"]))
        }
    }

    #[test]
    fn dns_names_valid() {
        let e = with_dns(&["web.example.org", "*.web.svc", "a-1.b2", "x"])
            .validate(&td())
            .unwrap();
        assert_eq!(e.dns_names, ["web.example.org", "*.web.svc", "a-1.b2", "x"]);
        let label63 = "a".repeat(63);
        let long = [label63.as_str(); 3].join(".") + "." + &"b".repeat(61);
        assert_eq!(long.len(), 253);
        assert!(with_dns(&[&long]).validate(&td()).is_ok());
        let none = entry("spiffe://example.org/web", &["unix:uid:1"], Some(&["*"]));
        assert!(none.validate(&td()).unwrap().dns_names.is_empty());
    }

    #[test]
    fn dns_names_refused() {
        let label64 = "a".repeat(64);
        let too_long = ["a".repeat(63).as_str(); 4].join(".");
        assert_eq!(too_long.len(), 255);
        for bad in [
            "",
            "Web.example.org",
            "web..example.org",
            ".web",
            "web.",
            "-web.org",
            "web-.org",
            "web_1.org",
            "*",
            "*.",
            "a.*.org",
            "**.org",
            "*web.org",
            "10.0.0.1",
            "web.123",
            "wéb.org",
            "web .org",
            label64.as_str(),
            too_long.as_str(),
        ] {
            assert_eq!(
                with_dns(&[bad]).validate(&td()).unwrap_err(),
                EntryError::DnsName(bad.into()),
                "{bad:?}"
            );
        }
        assert_eq!(
            with_dns(&["a.org", "b.org", "a.org"])
                .validate(&td())
                .unwrap_err(),
            EntryError::DnsNameDuplicate("a.org".into())
        );
        let many: Vec<String> = (0..=MAX_DNS_NAMES).map(|i| format!("n{i}.org")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            with_dns(&many).validate(&td()).unwrap_err(),
            EntryError::DnsNameCount
        );
        assert!(with_dns(&many[..MAX_DNS_NAMES]).validate(&td()).is_ok());
    }

    #[test]
    fn federates_with() {
        let with = |names: &[&str]| EntryConfig {
            federates_with: Some(names.iter().map(|s| s.to_string()).collect()),
            ..entry("spiffe://example.org/web", &["unix:uid:1"], Some(&["*"]))
        };
        let e = with(&["partner.example", "a.example", "partner.example"])
            .validate(&td())
            .unwrap();
        assert_eq!(
            e.federates_with,
            [
                TrustDomain::new("a.example").unwrap(),
                TrustDomain::new("partner.example").unwrap()
            ]
        );
        for bad in [
            "example.org",
            "Partner.example",
            "spiffe://partner.example",
            "",
        ] {
            let err = with(&[bad]).validate(&td()).unwrap_err();
            assert!(
                matches!(err, EntryError::FederatesWith(_)),
                "{bad:?}: {err:?}"
            );
            assert!(err.to_string().starts_with("federates_with: [0]"), "{err}");
        }
        // As TOML, in a whole list.
        let configs: Vec<EntryConfig> =
            toml::from_str::<std::collections::BTreeMap<String, Vec<EntryConfig>>>(
                r#"
            [[entries]]
            spiffe_id = "spiffe://example.org/web"
            selectors = ["unix:uid:1"]
            nodes = ["*"]
            federates_with = ["partner.example"]
            "#,
            )
            .unwrap()
            .remove("entries")
            .unwrap();
        let entries = validate_entries(configs, &td()).unwrap();
        assert_eq!(entries[0].federates_with[0].name(), "partner.example");
    }

    #[test]
    fn a_list_names_its_first_bad_entry() {
        let good = entry("spiffe://example.org/a", &["unix:uid:1"], Some(&["*"]));
        let bad = entry("spiffe://example.org/b", &["unix:uid:1"], None);
        let entries = validate_entries(vec![good.clone(), good.clone()], &td()).unwrap();
        assert_eq!(entries.len(), 2);
        let err = validate_entries(vec![good, bad.clone(), bad], &td()).unwrap_err();
        assert_eq!(
            err,
            EntriesError {
                index: 1,
                spiffe_id: "spiffe://example.org/b".into(),
                reason: EntryError::NoNodes,
            }
        );
        assert!(
            err.to_string()
                .starts_with("static entry 1 (spiffe://example.org/b): nodes is required"),
            "{err}"
        );
        assert_eq!(validate_entries(Vec::new(), &td()).unwrap(), []);
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
