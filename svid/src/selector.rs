//! Selectors: the facts about a workload that registration entries are matched against.
//!
//! A selector is written `kind:key:value`, e.g. `unix:uid:1001` or `k8s:ns:default`. The agent
//! produces them by attesting a caller; the server reads them from static entries. Both sides
//! parse with this one type, so a selector the agent emits compares equal to the one an
//! operator wrote exactly when they mean the same fact. Values are therefore *canonicalised*
//! on parse (numbers without leading zeros, hex and UUIDs in lowercase) and then compared as
//! strings.
//!
//! Splitting: the kind and key never contain `:`, so the input is split at its first two `:`
//! and everything after them is the value (a path may contain `:`). `k8s:pod-label` values are
//! `LABEL_KEY:LABEL_VALUE`; Kubernetes allows `:` in neither half, so that value holds exactly
//! one `:`.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// The longest value we accept, in bytes: `PATH_MAX`, since a binary path is the longest
/// legitimate value.
pub const MAX_VALUE_LEN: usize = 4096;
/// The longest selector string we look at, in bytes (value plus the longest `kind:key:`).
pub const MAX_SELECTOR_LEN: usize = MAX_VALUE_LEN + 32;
/// The most selectors a [`SelectorSet`] holds; an attested workload has around a dozen.
pub const MAX_SET_LEN: usize = 256;

/// Why a string is not a valid selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("selector is longer than {MAX_SELECTOR_LEN} bytes")]
    TooLong,
    #[error("selector {0:?} is not of the form kind:key:value")]
    Malformed(String),
    #[error("unknown selector kind {0:?}; known kinds are \"unix\" and \"k8s\"")]
    UnknownKind(String),
    #[error("unknown selector key {key:?} for kind {kind}; known keys: {known}")]
    UnknownKey {
        kind: SelectorKind,
        key: String,
        known: &'static str,
    },
    #[error("selector {0} has an empty value")]
    EmptyValue(SelectorKey),
    #[error("selector {key} value is longer than {MAX_VALUE_LEN} bytes")]
    ValueTooLong { key: SelectorKey },
    #[error("selector {key} has an invalid value: {why}")]
    BadValue { key: SelectorKey, why: &'static str },
    #[error("a selector set holds at most {MAX_SET_LEN} selectors")]
    TooManySelectors,
}

/// Who vouches for a selector: the agent's view of the process, or Kubernetes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SelectorKind {
    /// Facts the agent reads from the kernel about the calling process.
    Unix,
    /// Facts about the pod the calling process runs in.
    K8s,
}

impl SelectorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unix => "unix",
            Self::K8s => "k8s",
        }
    }
}

impl fmt::Display for SelectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a selector states. Each key belongs to exactly one [`SelectorKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SelectorKey {
    /// `unix:uid:N`, the caller's uid from the socket's peer credentials.
    Uid,
    /// `unix:gid:N`.
    Gid,
    /// `unix:user:NAME`, the uid's name on the agent's host.
    User,
    /// `unix:group:NAME`.
    Group,
    /// `unix:path:/abs/path`, the caller's binary.
    Path,
    /// `unix:sha256:HEX`, the digest of the caller's binary.
    Sha256,
    /// `k8s:ns:NAME`.
    Namespace,
    /// `k8s:sa:NAME`.
    ServiceAccount,
    /// `k8s:pod-name:NAME`.
    PodName,
    /// `k8s:pod-uid:UID`.
    PodUid,
    /// `k8s:container-id:HEX`, without a runtime prefix.
    ContainerId,
    /// `k8s:container-name:NAME`, the caller's container as the pod spec names it (a
    /// DNS-1123 label). Not attested: the agent looks its attested container ID up in the
    /// server's view of the pod.
    ContainerName,
    /// `k8s:pod-label:KEY:VALUE`.
    PodLabel,
    /// `k8s:node-name:NAME`.
    NodeName,
}

const UNIX_KEYS: &str = "uid, gid, user, group, path, sha256";
const K8S_KEYS: &str =
    "ns, sa, pod-name, pod-uid, container-id, container-name, pod-label, node-name";

impl SelectorKey {
    pub fn kind(self) -> SelectorKind {
        match self {
            Self::Uid | Self::Gid | Self::User | Self::Group | Self::Path | Self::Sha256 => {
                SelectorKind::Unix
            }
            Self::Namespace
            | Self::ServiceAccount
            | Self::PodName
            | Self::PodUid
            | Self::ContainerId
            | Self::ContainerName
            | Self::PodLabel
            | Self::NodeName => SelectorKind::K8s,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uid => "uid",
            Self::Gid => "gid",
            Self::User => "user",
            Self::Group => "group",
            Self::Path => "path",
            Self::Sha256 => "sha256",
            Self::Namespace => "ns",
            Self::ServiceAccount => "sa",
            Self::PodName => "pod-name",
            Self::PodUid => "pod-uid",
            Self::ContainerId => "container-id",
            Self::ContainerName => "container-name",
            Self::PodLabel => "pod-label",
            Self::NodeName => "node-name",
        }
    }

    fn parse(kind: SelectorKind, key: &str) -> Result<Self, SelectorError> {
        let found = match (kind, key) {
            (SelectorKind::Unix, "uid") => Self::Uid,
            (SelectorKind::Unix, "gid") => Self::Gid,
            (SelectorKind::Unix, "user") => Self::User,
            (SelectorKind::Unix, "group") => Self::Group,
            (SelectorKind::Unix, "path") => Self::Path,
            (SelectorKind::Unix, "sha256") => Self::Sha256,
            (SelectorKind::K8s, "ns") => Self::Namespace,
            (SelectorKind::K8s, "sa") => Self::ServiceAccount,
            (SelectorKind::K8s, "pod-name") => Self::PodName,
            (SelectorKind::K8s, "pod-uid") => Self::PodUid,
            (SelectorKind::K8s, "container-id") => Self::ContainerId,
            (SelectorKind::K8s, "container-name") => Self::ContainerName,
            (SelectorKind::K8s, "pod-label") => Self::PodLabel,
            (SelectorKind::K8s, "node-name") => Self::NodeName,
            _ => {
                return Err(SelectorError::UnknownKey {
                    kind,
                    key: truncated(key),
                    known: match kind {
                        SelectorKind::Unix => UNIX_KEYS,
                        SelectorKind::K8s => K8S_KEYS,
                    },
                });
            }
        };
        Ok(found)
    }
}

impl fmt::Display for SelectorKey {
    /// `kind:key`, e.g. `k8s:pod-uid`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.as_str())
    }
}

/// One fact about a workload, e.g. `unix:uid:1001`. Always valid and canonical.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    key: SelectorKey,
    value: String,
}

impl Selector {
    /// Builds a selector from a key and a value, validating and canonicalising the value
    /// exactly as parsing `kind:key:value` would.
    pub fn new(key: SelectorKey, value: &str) -> Result<Self, SelectorError> {
        let value = canonical_value(key, value)?;
        Ok(Self { key, value })
    }

    /// Parses `kind:key:value`.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        if input.len() > MAX_SELECTOR_LEN {
            return Err(SelectorError::TooLong);
        }
        let mut parts = input.splitn(3, ':');
        let (Some(kind), Some(key), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SelectorError::Malformed(truncated(input)));
        };
        let kind = match kind {
            "unix" => SelectorKind::Unix,
            "k8s" => SelectorKind::K8s,
            other => return Err(SelectorError::UnknownKind(truncated(other))),
        };
        Self::new(SelectorKey::parse(kind, key)?, value)
    }

    /// `unix:uid:N`.
    pub fn uid(uid: u32) -> Self {
        Self {
            key: SelectorKey::Uid,
            value: uid.to_string(),
        }
    }

    /// `unix:gid:N`.
    pub fn gid(gid: u32) -> Self {
        Self {
            key: SelectorKey::Gid,
            value: gid.to_string(),
        }
    }

    /// `unix:sha256:HEX` from a raw digest.
    pub fn sha256(digest: &[u8; 32]) -> Self {
        use fmt::Write;
        let mut value = String::with_capacity(64);
        for byte in digest {
            let _ = write!(value, "{byte:02x}");
        }
        Self {
            key: SelectorKey::Sha256,
            value,
        }
    }

    /// `k8s:pod-label:KEY:VALUE`.
    pub fn pod_label(label_key: &str, label_value: &str) -> Result<Self, SelectorError> {
        Self::new(SelectorKey::PodLabel, &format!("{label_key}:{label_value}"))
    }

    pub fn kind(&self) -> SelectorKind {
        self.key.kind()
    }

    pub fn key(&self) -> SelectorKey {
        self.key
    }

    /// The canonical value (for `pod-label`, `LABEL_KEY:LABEL_VALUE`).
    pub fn value(&self) -> &str {
        &self.value
    }

    /// For a `pod-label` selector, the label's key and value.
    pub fn label(&self) -> Option<(&str, &str)> {
        match self.key {
            SelectorKey::PodLabel => self.value.split_once(':'),
            _ => None,
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.key, self.value)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The selectors of one workload, without duplicates, in a stable order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelectorSet(BTreeSet<Selector>);

impl SelectorSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a selector; refuses to grow past [`MAX_SET_LEN`].
    pub fn insert(&mut self, selector: Selector) -> Result<(), SelectorError> {
        if self.0.len() >= MAX_SET_LEN && !self.0.contains(&selector) {
            return Err(SelectorError::TooManySelectors);
        }
        self.0.insert(selector);
        Ok(())
    }

    pub fn contains(&self, selector: &Selector) -> bool {
        self.0.contains(selector)
    }

    /// True when every selector of `required` (an entry's list) is in this set.
    ///
    /// An empty `required` matches nothing: an entry without selectors would otherwise
    /// name every workload, and that is never what its author meant.
    pub fn matches_all(&self, required: &[Selector]) -> bool {
        !required.is_empty() && required.iter().all(|s| self.0.contains(s))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Selector> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a SelectorSet {
    type Item = &'a Selector;
    type IntoIter = std::collections::btree_set::Iter<'a, Selector>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl TryFrom<Vec<Selector>> for SelectorSet {
    type Error = SelectorError;
    fn try_from(selectors: Vec<Selector>) -> Result<Self, Self::Error> {
        let mut set = Self::new();
        for s in selectors {
            set.insert(s)?;
        }
        Ok(set)
    }
}

impl serde::Serialize for SelectorSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

impl<'de> serde::Deserialize<'de> for SelectorSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Counted while reading, so an oversized list is refused before it is all in memory.
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SelectorSet;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of selector strings")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<SelectorSet, A::Error> {
                let mut set = SelectorSet::new();
                while let Some(s) = seq.next_element::<Selector>()? {
                    set.insert(s).map_err(serde::de::Error::custom)?;
                }
                Ok(set)
            }
        }
        d.deserialize_seq(Visitor)
    }
}

/// Error messages quote at most this much of a bad input.
const QUOTE_LEN: usize = 64;

fn truncated(s: &str) -> String {
    let mut end = s.len().min(QUOTE_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

fn canonical_value(key: SelectorKey, value: &str) -> Result<String, SelectorError> {
    if value.is_empty() {
        return Err(SelectorError::EmptyValue(key));
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(SelectorError::ValueTooLong { key });
    }
    let bad = |why| SelectorError::BadValue { key, why };
    // Control characters would let a value forge log lines or TOML; no real value has one.
    if value.chars().any(char::is_control) {
        return Err(bad("control characters are not allowed"));
    }
    match key {
        SelectorKey::Uid | SelectorKey::Gid => {
            if !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("must be a decimal number"));
            }
            let n: u32 = value.parse().map_err(|_| bad("must fit in 32 bits"))?;
            Ok(n.to_string())
        }
        SelectorKey::User | SelectorKey::Group => Ok(value.to_owned()),
        SelectorKey::Path => {
            if !value.starts_with('/') {
                return Err(bad("must be an absolute path"));
            }
            Ok(value.to_owned())
        }
        SelectorKey::Sha256 => {
            if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("must be 64 hex digits"));
            }
            Ok(value.to_ascii_lowercase())
        }
        SelectorKey::ContainerId => {
            if !is_container_id(value) {
                return Err(bad("must be 64 hex digits, without a runtime prefix"));
            }
            Ok(value.to_ascii_lowercase())
        }
        SelectorKey::ContainerName => {
            if !is_dns_label(value) {
                return Err(bad(
                    "must be a Kubernetes container name: lowercase letters, digits and '-', \
                     starting and ending with a letter or digit, at most 63",
                ));
            }
            Ok(value.to_owned())
        }
        SelectorKey::PodUid => canonical_pod_uid(value)
            .ok_or_else(|| bad("must be a UUID (or a static pod's 32 hex digits)")),
        SelectorKey::Namespace
        | SelectorKey::ServiceAccount
        | SelectorKey::PodName
        | SelectorKey::NodeName => {
            if !is_dns_subdomain(value) {
                return Err(bad(
                    "must be a Kubernetes name: lowercase letters, digits, '-' and '.', at most 253",
                ));
            }
            Ok(value.to_owned())
        }
        SelectorKey::PodLabel => {
            let Some((label_key, label_value)) = value.split_once(':') else {
                return Err(bad("must be LABEL_KEY:LABEL_VALUE"));
            };
            if !is_label_key(label_key) {
                return Err(bad("label key is not a valid Kubernetes label key"));
            }
            if !is_label_value(label_value) {
                return Err(bad("label value is not a valid Kubernetes label value"));
            }
            Ok(value.to_owned())
        }
    }
}

/// True for a runtime container ID as kubelet cgroups and pod statuses carry it: 64 hex.
pub fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Canonical form of a pod UID: a lowercase UUID with dashes, or, for static pods (whose UID
/// is the kubelet's config hash), 32 lowercase hex digits. `None` if it is neither.
pub fn canonical_pod_uid(s: &str) -> Option<String> {
    let lower = s.to_ascii_lowercase();
    let b = lower.as_bytes();
    let is_uuid = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    let is_hash = b.len() == 32 && b.iter().all(u8::is_ascii_hexdigit);
    (is_uuid || is_hash).then_some(lower)
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A DNS-1123 label (what Kubernetes allows as a container name): 1 to 63 of `[a-z0-9-]`,
/// not starting or ending with `-`.
fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// `[prefix/]name`: prefix a DNS subdomain, name as a label value but non-empty.
fn is_label_key(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, s),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

/// Empty, or at most 63 of `[A-Za-z0-9._-]` starting and ending alphanumeric.
fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(s: &str) -> Selector {
        Selector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    const HEX64: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn every_known_selector_round_trips() {
        let inputs = [
            "unix:uid:1001".to_owned(),
            "unix:gid:0".to_owned(),
            "unix:user:www".to_owned(),
            "unix:group:www-data".to_owned(),
            "unix:path:/usr/bin/x".to_owned(),
            format!("unix:sha256:{HEX64}"),
            "k8s:ns:default".to_owned(),
            "k8s:sa:web".to_owned(),
            "k8s:pod-name:web-7d9f-abcde".to_owned(),
            "k8s:pod-uid:1b4e28ba-2fa1-11d2-883f-0016d3cca427".to_owned(),
            format!("k8s:container-id:{HEX64}"),
            "k8s:container-name:app".to_owned(),
            "k8s:container-name:istio-proxy-2".to_owned(),
            format!("k8s:container-name:{}", "a".repeat(63)),
            "k8s:pod-label:app:web".to_owned(),
            "k8s:pod-label:app.kubernetes.io/name:web".to_owned(),
            "k8s:node-name:node-1.example".to_owned(),
        ];
        for input in &inputs {
            let s = sel(input);
            assert_eq!(&s.to_string(), input);
            assert_eq!(sel(&s.to_string()), s);
        }
        assert_eq!(sel("unix:uid:1").kind(), SelectorKind::Unix);
        assert_eq!(sel("k8s:ns:a").kind(), SelectorKind::K8s);
        assert_eq!(sel("k8s:ns:a").key(), SelectorKey::Namespace);
    }

    #[test]
    fn container_name_is_a_k8s_key_holding_a_dns_label() {
        let s = sel("k8s:container-name:app");
        assert_eq!(s.key(), SelectorKey::ContainerName);
        assert_eq!(s.kind(), SelectorKind::K8s);
        assert_eq!(s.value(), "app");
        assert_eq!(Selector::new(SelectorKey::ContainerName, "app").unwrap(), s);
        assert_eq!(SelectorKey::ContainerName.to_string(), "k8s:container-name");
        // Not a unix key.
        assert!(matches!(
            Selector::parse("unix:container-name:app"),
            Err(SelectorError::UnknownKey { .. })
        ));
        // The unknown-key message lists it for k8s.
        let err = Selector::parse("k8s:container:app").unwrap_err();
        assert!(err.to_string().contains("container-name"), "{err}");
        assert_eq!(
            Selector::parse("k8s:container-name:"),
            Err(SelectorError::EmptyValue(SelectorKey::ContainerName))
        );
        // Names are not canonicalised: uppercase is refused rather than folded.
        let err = Selector::parse("k8s:container-name:App").unwrap_err();
        assert!(err.to_string().contains("container name"), "{err}");
        // Distinct from the other name-like keys.
        assert_ne!(sel("k8s:container-name:web"), sel("k8s:pod-name:web"));
    }

    #[test]
    fn value_is_everything_after_the_second_colon() {
        let s = sel("unix:path:/opt/a:b/c");
        assert_eq!(s.key(), SelectorKey::Path);
        assert_eq!(s.value(), "/opt/a:b/c");

        let label = sel("k8s:pod-label:example.com/tier:back-end");
        assert_eq!(label.value(), "example.com/tier:back-end");
        assert_eq!(label.label(), Some(("example.com/tier", "back-end")));
        // An empty label value is a valid Kubernetes label.
        assert_eq!(sel("k8s:pod-label:flag:").label(), Some(("flag", "")));
        assert_eq!(sel("k8s:ns:a").label(), None);
    }

    #[test]
    fn values_are_canonicalised_so_equal_facts_compare_equal() {
        assert_eq!(sel("unix:uid:0001"), Selector::uid(1));
        assert_eq!(sel("unix:gid:0"), Selector::gid(0));
        assert_eq!(
            sel(&format!("unix:sha256:{}", HEX64.to_uppercase())).value(),
            HEX64
        );
        assert_eq!(
            sel("k8s:pod-uid:1B4E28BA-2FA1-11D2-883F-0016D3CCA427").value(),
            "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
        );
        let digest = [0xabu8; 32];
        assert_eq!(Selector::sha256(&digest).value(), "ab".repeat(32));
        assert_eq!(
            Selector::pod_label("app", "web").unwrap(),
            sel("k8s:pod-label:app:web")
        );
    }

    #[test]
    fn refuses_unknown_kinds_and_keys() {
        assert!(matches!(
            Selector::parse("spiffe:uid:1"),
            Err(SelectorError::UnknownKind(k)) if k == "spiffe"
        ));
        let err = Selector::parse("unix:ns:default").unwrap_err();
        assert!(matches!(
            err,
            SelectorError::UnknownKey {
                kind: SelectorKind::Unix,
                ..
            }
        ));
        assert!(err.to_string().contains("uid, gid"), "{err}");
        assert!(matches!(
            Selector::parse("k8s:uid:1"),
            Err(SelectorError::UnknownKey {
                kind: SelectorKind::K8s,
                ..
            })
        ));
        // Keys are case-sensitive, like the kinds.
        assert!(Selector::parse("UNIX:uid:1").is_err());
        assert!(Selector::parse("unix:UID:1").is_err());
    }

    #[test]
    fn refuses_malformed_and_empty() {
        for input in ["", "unix", "unix:uid", "k8s:ns"] {
            assert!(
                matches!(Selector::parse(input), Err(SelectorError::Malformed(_))),
                "{input:?}"
            );
        }
        assert_eq!(
            Selector::parse("unix:uid:"),
            Err(SelectorError::EmptyValue(SelectorKey::Uid))
        );
    }

    #[test]
    fn refuses_bad_values() {
        let bad = [
            "unix:uid:-1",
            "unix:uid:+1",
            "unix:uid:4294967296",
            "unix:uid: 1",
            "unix:gid:x",
            "unix:path:relative/bin",
            "unix:path:/bin/a\nb",
            "unix:user:a\u{7}",
            "unix:sha256:abc",
            &format!("unix:sha256:{}g", &HEX64[..63]),
            "k8s:container-id:containerd://abc",
            &format!("k8s:container-id:{HEX64}0"),
            "k8s:container-name:App",
            "k8s:container-name:-app",
            "k8s:container-name:app-",
            "k8s:container-name:app.v1",
            "k8s:container-name:app_1",
            "k8s:container-name:app:1",
            &format!("k8s:container-name:{}", "a".repeat(64)),
            "k8s:pod-uid:not-a-uid",
            "k8s:pod-uid:1b4e28ba_2fa1_11d2_883f_0016d3cca427",
            "k8s:ns:Default",
            "k8s:ns:-a",
            "k8s:sa:a..b",
            "k8s:node-name:a_b",
            "k8s:pod-label:app",
            "k8s:pod-label::web",
            "k8s:pod-label:app:a:b",
            "k8s:pod-label:app:-web",
            "k8s:pod-label:Bad_Prefix/app:web",
        ];
        for input in bad {
            assert!(
                matches!(Selector::parse(input), Err(SelectorError::BadValue { .. })),
                "{input:?} -> {:?}",
                Selector::parse(input)
            );
        }
    }

    #[test]
    fn length_is_bounded() {
        let long_path = format!("/{}", "a".repeat(MAX_VALUE_LEN - 1));
        assert!(Selector::new(SelectorKey::Path, &long_path).is_ok());
        let too_long = format!("{long_path}a");
        assert_eq!(
            Selector::new(SelectorKey::Path, &too_long),
            Err(SelectorError::ValueTooLong {
                key: SelectorKey::Path
            })
        );
        let huge = format!("unix:path:{}", "/".repeat(MAX_SELECTOR_LEN));
        assert_eq!(Selector::parse(&huge), Err(SelectorError::TooLong));
        // Error messages quote a bounded prefix of the input.
        let err = Selector::parse(&"x".repeat(1000)).unwrap_err();
        assert!(err.to_string().len() < 200, "{err}");
    }

    #[test]
    fn matches_all_needs_every_required_selector() {
        let set = SelectorSet::try_from(vec![
            sel("unix:uid:1001"),
            sel("unix:gid:1001"),
            sel("k8s:ns:default"),
        ])
        .unwrap();
        assert!(set.matches_all(&[sel("unix:uid:1001")]));
        assert!(set.matches_all(&[sel("unix:uid:1001"), sel("k8s:ns:default")]));
        assert!(!set.matches_all(&[sel("unix:uid:1001"), sel("k8s:ns:kube-system")]));
        assert!(!set.matches_all(&[sel("unix:uid:1002")]));
        // An entry with no selectors names nobody.
        assert!(!set.matches_all(&[]));
        assert!(!SelectorSet::new().matches_all(&[sel("unix:uid:1001")]));
    }

    #[test]
    fn set_deduplicates_and_is_bounded() {
        let mut set = SelectorSet::new();
        set.insert(Selector::uid(1)).unwrap();
        set.insert(sel("unix:uid:01")).unwrap();
        assert_eq!(set.len(), 1);
        for gid in 0..(MAX_SET_LEN as u32 - 1) {
            set.insert(Selector::gid(gid)).unwrap();
        }
        assert_eq!(set.len(), MAX_SET_LEN);
        assert_eq!(
            set.insert(Selector::gid(100_000)),
            Err(SelectorError::TooManySelectors)
        );
        // Re-inserting a present selector into a full set is not growth.
        assert_eq!(set.insert(Selector::uid(1)), Ok(()));
    }

    #[test]
    fn serde_uses_strings() {
        let set = SelectorSet::try_from(vec![sel("unix:uid:1001"), sel("k8s:ns:default")]).unwrap();
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(json, r#"["unix:uid:1001","k8s:ns:default"]"#);
        let back: SelectorSet = serde_json::from_str(&json).unwrap();
        assert_eq!(back, set);

        let one: Selector = serde_json::from_str(r#""k8s:pod-label:app:web""#).unwrap();
        assert_eq!(one.label(), Some(("app", "web")));
        let err = serde_json::from_str::<Selector>(r#""k8s:bogus:x""#).unwrap_err();
        assert!(err.to_string().contains("unknown selector key"), "{err}");

        let many: Vec<String> = (0..=MAX_SET_LEN).map(|i| format!("unix:uid:{i}")).collect();
        let err = serde_json::from_str::<SelectorSet>(&serde_json::to_string(&many).unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("at most"), "{err}");
    }
}
