//! Authorisation of a verified peer's SPIFFE ID: who, among the identities we trust, may talk
//! to us (server side) or may be the server we meant to reach (client side).
//!
//! Verification (is this chain a genuine SVID of its trust domain?) always runs first; an
//! [`Authorizer`] only ever sees IDs of verified peers. Holding a bundle makes a domain's
//! peers verifiable, not allowed: [`AllowPolicy`] (the proxy's `--allow`) reads `any` as our
//! own trust domain, so a federated domain's workloads need a rule naming them.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use super::store::SvidStore;
use crate::id::{IdError, SpiffeId, TrustDomain};

/// Why a verified peer ID is not allowed. `Display` is the metric label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthzError {
    /// Not the one ID we expected (e.g. the server we dialled).
    UnexpectedId { expected: SpiffeId, got: SpiffeId },
    /// Outside the allowed prefix or set.
    NotAllowed { id: SpiffeId },
    /// From a trust domain we do not accept here.
    OtherTrustDomain { id: SpiffeId },
    /// Refused by a custom policy, with its own label.
    Denied { id: SpiffeId, reason: &'static str },
}

impl AuthzError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::UnexpectedId { .. } => "unexpected_id",
            Self::NotAllowed { .. } => "id_not_allowed",
            Self::OtherTrustDomain { .. } => "other_trust_domain",
            Self::Denied { reason, .. } => reason,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::UnexpectedId { expected, got } => {
                format!("peer is {got}, expected {expected}")
            }
            Self::NotAllowed { id } => format!("peer {id} is not allowed by the policy"),
            Self::OtherTrustDomain { id } => {
                format!("peer {id} is not in an accepted trust domain")
            }
            Self::Denied { id, reason } => format!("peer {id} denied: {reason}"),
        }
    }

    /// The refused peer ID.
    pub fn peer(&self) -> &SpiffeId {
        match self {
            Self::UnexpectedId { got, .. } => got,
            Self::NotAllowed { id } | Self::OtherTrustDomain { id } | Self::Denied { id, .. } => id,
        }
    }
}

impl fmt::Display for AuthzError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl std::error::Error for AuthzError {}

/// A policy on verified peer IDs.
pub trait Authorizer: Send + Sync {
    fn authorize(&self, id: &SpiffeId) -> Result<(), AuthzError>;
}

/// Any verified ID from any trusted trust domain.
#[derive(Debug, Clone, Copy, Default)]
pub struct AnyId;

impl Authorizer for AnyId {
    fn authorize(&self, _id: &SpiffeId) -> Result<(), AuthzError> {
        Ok(())
    }
}

/// Exactly one ID: what a client expects of the server it dials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExactId(pub SpiffeId);

impl Authorizer for ExactId {
    fn authorize(&self, id: &SpiffeId) -> Result<(), AuthzError> {
        if *id == self.0 {
            Ok(())
        } else {
            Err(AuthzError::UnexpectedId {
                expected: self.0.clone(),
                got: id.clone(),
            })
        }
    }
}

/// Any of several IDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneOf(pub Vec<SpiffeId>);

impl Authorizer for OneOf {
    fn authorize(&self, id: &SpiffeId) -> Result<(), AuthzError> {
        if self.0.contains(id) {
            Ok(())
        } else {
            Err(AuthzError::NotAllowed { id: id.clone() })
        }
    }
}

/// Every workload of one trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberOf(pub TrustDomain);

impl Authorizer for MemberOf {
    fn authorize(&self, id: &SpiffeId) -> Result<(), AuthzError> {
        if *id.trust_domain() == self.0 {
            Ok(())
        } else {
            Err(AuthzError::OtherTrustDomain { id: id.clone() })
        }
    }
}

/// IDs starting with a prefix, written `spiffe://td/ns/*` (everything under `/ns/`) or
/// `spiffe://td/ns/web-*` (a segment prefix). The trust domain always matches exactly, so
/// `spiffe://td*` cannot be written to reach `td.evil.org`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPrefix {
    trust_domain: TrustDomain,
    /// The ID string before the `*`, normalised (lowercase scheme and trust domain).
    prefix: String,
}

impl IdPrefix {
    /// Parses `PREFIX*`; the part before `*` must be a valid ID, optionally followed by `/`.
    pub fn parse(pattern: &str) -> Result<Self, IdError> {
        let Some(before) = pattern.strip_suffix('*') else {
            return Err(IdError::BadPathChar(pattern.chars().last().unwrap_or('*')));
        };
        let (id_part, slash) = match before.strip_suffix('/') {
            Some(id_part) => (id_part, "/"),
            None => (before, ""),
        };
        let id = SpiffeId::parse(id_part)?;
        if slash.is_empty() && id.is_trust_domain_id() {
            // `spiffe://td*` would be a trust domain name prefix: never meaningful.
            return Err(IdError::Authority);
        }
        Ok(Self {
            trust_domain: id.trust_domain().clone(),
            prefix: format!("{id}{slash}"),
        })
    }
}

impl fmt::Display for IdPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}*", self.prefix)
    }
}

impl IdPrefix {
    /// In the prefix's trust domain (exactly) and under the prefix.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        *id.trust_domain() == self.trust_domain && id.to_string().starts_with(&self.prefix)
    }
}

impl Authorizer for IdPrefix {
    fn authorize(&self, id: &SpiffeId) -> Result<(), AuthzError> {
        if self.matches(id) {
            Ok(())
        } else {
            Err(AuthzError::NotAllowed { id: id.clone() })
        }
    }
}

/// A closure as a policy.
pub struct AuthorizeFn<F>(pub F);

impl<F> Authorizer for AuthorizeFn<F>
where
    F: Fn(&SpiffeId) -> Result<(), AuthzError> + Send + Sync,
{
    fn authorize(&self, id: &SpiffeId) -> Result<(), AuthzError> {
        (self.0)(id)
    }
}

/// One rule of the proxy's `--allow` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowRule {
    /// `any`: every workload of our *own* trust domain (that of our current SVID). Never a
    /// peer of a federated domain: those are named one rule at a time.
    Any,
    /// One ID, of any trust domain we hold a bundle for.
    Exact(SpiffeId),
    /// IDs under a prefix, in the prefix's trust domain only.
    Prefix(IdPrefix),
}

impl AllowRule {
    fn matches(&self, own: Option<&TrustDomain>, id: &SpiffeId) -> bool {
        match self {
            Self::Any => own == Some(id.trust_domain()),
            Self::Exact(expected) => expected == id,
            Self::Prefix(p) => p.matches(id),
        }
    }
}

impl FromStr for AllowRule {
    type Err = AllowParseError;
    fn from_str(s: &str) -> Result<Self, AllowParseError> {
        let bad = |reason| AllowParseError::BadRule {
            rule: s.to_owned(),
            reason,
        };
        if s == "any" {
            Ok(Self::Any)
        } else if s.ends_with('*') {
            IdPrefix::parse(s).map(Self::Prefix).map_err(bad)
        } else {
            let id = SpiffeId::parse(s).map_err(bad)?;
            if id.is_trust_domain_id() {
                // A workload's SVID always has a path: this rule could never match.
                return Err(AllowParseError::TrustDomainOnly { rule: s.to_owned() });
            }
            Ok(Self::Exact(id))
        }
    }
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::Exact(id) => write!(f, "{id}"),
            Self::Prefix(p) => write!(f, "{p}"),
        }
    }
}

/// Why an `--allow` value is refused; each message names the rule at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowParseError {
    #[error("no rule: give `any`, a SPIFFE ID or `PREFIX*`, comma separated")]
    Empty,
    #[error("rule {rule:?} is not `any`, a SPIFFE ID or `PREFIX*`: {reason}")]
    BadRule { rule: String, reason: IdError },
    #[error(
        "rule {rule:?} names a trust domain, which no workload ID equals; write `{rule}/*` for \
         all of its workloads"
    )]
    TrustDomainOnly { rule: String },
}

/// The proxy's `--allow` flag: comma-separated [`AllowRule`]s, a peer being allowed when one
/// of them matches.
///
/// `any` stands for our own trust domain only, so that federated bundles arriving from the
/// Workload API never open a listener to a whole other domain: a peer of another trust domain
/// needs an exact or prefix rule of that domain, else it is refused as
/// [`AuthzError::OtherTrustDomain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowPolicy {
    /// Never empty.
    rules: Vec<AllowRule>,
}

impl Default for AllowPolicy {
    fn default() -> Self {
        Self::any()
    }
}

impl AllowPolicy {
    /// `any`: every workload of our own trust domain.
    pub fn any() -> Self {
        Self {
            rules: vec![AllowRule::Any],
        }
    }

    /// A policy of `rules`; at least one.
    pub fn new(rules: Vec<AllowRule>) -> Result<Self, AllowParseError> {
        if rules.is_empty() {
            return Err(AllowParseError::Empty);
        }
        Ok(Self { rules })
    }

    pub fn rules(&self) -> &[AllowRule] {
        &self.rules
    }

    /// True without an `any` rule: such a listener must be strict (DESIGN.md).
    pub fn is_restrictive(&self) -> bool {
        !self.rules.contains(&AllowRule::Any)
    }

    /// Decides for `id` given our own trust domain (`None` while we hold no SVID: then no
    /// peer is ours, and only exact and prefix rules can allow).
    pub fn authorize_for(
        &self,
        own: Option<&TrustDomain>,
        id: &SpiffeId,
    ) -> Result<(), AuthzError> {
        if self.rules.iter().any(|rule| rule.matches(own, id)) {
            Ok(())
        } else if own == Some(id.trust_domain()) {
            Err(AuthzError::NotAllowed { id: id.clone() })
        } else {
            Err(AuthzError::OtherTrustDomain { id: id.clone() })
        }
    }

    /// The policy as an [`Authorizer`] whose own trust domain is that of `store`'s current
    /// SVID, read at every check.
    pub fn into_authorizer(self, store: Arc<SvidStore>) -> Arc<dyn Authorizer> {
        Arc::new(AllowAuthorizer {
            policy: self,
            store,
        })
    }
}

impl FromStr for AllowPolicy {
    type Err = AllowParseError;
    /// Comma-separated rules; blanks around them and empty items are ignored.
    fn from_str(s: &str) -> Result<Self, AllowParseError> {
        let rules = s
            .split(',')
            .map(str::trim)
            .filter(|rule| !rule.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(rules)
    }
}

impl fmt::Display for AllowPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, rule) in self.rules.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{rule}")?;
        }
        Ok(())
    }
}

/// An [`AllowPolicy`] bound to the store whose SVID says which trust domain is ours.
#[derive(Debug)]
pub struct AllowAuthorizer {
    policy: AllowPolicy,
    store: Arc<SvidStore>,
}

impl AllowAuthorizer {
    pub fn new(policy: AllowPolicy, store: Arc<SvidStore>) -> Self {
        Self { policy, store }
    }
}

impl Authorizer for AllowAuthorizer {
    fn authorize(&self, id: &SpiffeId) -> Result<(), AuthzError> {
        let own = self
            .store
            .svid()
            .map(|svid| svid.spiffe_id().trust_domain().clone());
        self.policy.authorize_for(own.as_ref(), id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn exact_id() {
        let a = ExactId(id("spiffe://td/web"));
        a.authorize(&id("spiffe://td/web")).unwrap();
        let err = a.authorize(&id("spiffe://td/api")).unwrap_err();
        assert_eq!(err.to_string(), "unexpected_id");
        assert_eq!(err.peer(), &id("spiffe://td/api"));
        assert!(
            a.authorize(&id("spiffe://td/Web")).is_err(),
            "path is case-sensitive"
        );
    }

    #[test]
    fn member_of_and_one_of() {
        let m = MemberOf(TrustDomain::new("td").unwrap());
        m.authorize(&id("spiffe://td/x")).unwrap();
        assert_eq!(
            m.authorize(&id("spiffe://other/x")).unwrap_err().label(),
            "other_trust_domain"
        );
        let o = OneOf(vec![id("spiffe://td/a"), id("spiffe://td/b")]);
        o.authorize(&id("spiffe://td/b")).unwrap();
        assert_eq!(
            o.authorize(&id("spiffe://td/c")).unwrap_err().label(),
            "id_not_allowed"
        );
    }

    #[test]
    fn prefix_matches_under_the_path_only() {
        let p = IdPrefix::parse("spiffe://td/ns/*").unwrap();
        p.authorize(&id("spiffe://td/ns/default/sa/web")).unwrap();
        for other in [
            "spiffe://td/ns",
            "spiffe://td/nsx/a",
            "spiffe://td/other/ns/a",
            "spiffe://other/ns/a",
        ] {
            assert!(p.authorize(&id(other)).is_err(), "{other}");
        }
        // Segment prefix.
        let p = IdPrefix::parse("spiffe://td/web-*").unwrap();
        p.authorize(&id("spiffe://td/web-1")).unwrap();
        assert!(p.authorize(&id("spiffe://td/api-1")).is_err());
        // The whole trust domain's workloads.
        let p = IdPrefix::parse("SPIFFE://TD/*").unwrap();
        assert_eq!(p.to_string(), "spiffe://td/*");
        p.authorize(&id("spiffe://td/a")).unwrap();
        assert!(p.authorize(&id("spiffe://td.evil/a")).is_err());
    }

    #[test]
    fn prefix_refuses_bad_patterns() {
        for bad in [
            "spiffe://td*",
            "spiffe://td/ns",
            "spiffe://td/ns//*",
            "spiffe://td/../*",
            "http://td/*",
            "*",
        ] {
            assert!(IdPrefix::parse(bad).is_err(), "{bad}");
        }
    }

    fn td(s: &str) -> TrustDomain {
        TrustDomain::new(s).unwrap()
    }

    fn allow(s: &str) -> AllowPolicy {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn allow_policy_parses_the_proxy_flag() {
        assert_eq!(allow("any"), AllowPolicy::any());
        assert_eq!(AllowPolicy::default(), AllowPolicy::any());
        assert!(!AllowPolicy::any().is_restrictive());
        let exact = allow("spiffe://td/web");
        assert!(exact.is_restrictive());
        assert_eq!(exact.rules(), [AllowRule::Exact(id("spiffe://td/web"))]);
        let prefix = allow("spiffe://td/ns/prod/*");
        assert!(prefix.is_restrictive());
        assert_eq!(prefix.to_string(), "spiffe://td/ns/prod/*");
        // A list, with blanks and empty items; `any` anywhere in it makes it permissive.
        let list = allow(" spiffe://partner.example/ns/pay/sa/api , any,,spiffe://td/x/* ");
        assert_eq!(list.rules().len(), 3);
        assert!(!list.is_restrictive());
        assert_eq!(
            list.to_string(),
            "spiffe://partner.example/ns/pay/sa/api,any,spiffe://td/x/*"
        );
        // Display round-trips, normalised (scheme and trust domain lowercase).
        for text in [
            "any",
            "any,spiffe://partner.example/ns/pay/sa/api",
            "spiffe://a/x,spiffe://b/y/*,spiffe://c/z-*",
            "SPIFFE://TD/ns/*,any",
        ] {
            let once = allow(text);
            assert_eq!(allow(&once.to_string()), once, "{text}");
        }
        assert_eq!(
            allow("SPIFFE://TD/ns/*,any").to_string(),
            "spiffe://td/ns/*,any"
        );
    }

    #[test]
    fn allow_parse_errors_name_the_bad_rule() {
        for (text, rule) in [
            ("web", "web"),
            ("any,web", "web"),
            ("spiffe://td/ok, spiffe://td*", "spiffe://td*"),
            ("any,http://td/x", "http://td/x"),
            ("ANY", "ANY"),
            ("spiffe://td/ns//*", "spiffe://td/ns//*"),
        ] {
            let err = text.parse::<AllowPolicy>().unwrap_err();
            assert!(
                matches!(&err, AllowParseError::BadRule { rule: r, .. } if r == rule),
                "{text}: {err:?}"
            );
            assert!(
                err.to_string().starts_with(&format!("rule {rule:?} ")),
                "{err}"
            );
        }
        let err = "any,spiffe://partner.example"
            .parse::<AllowPolicy>()
            .unwrap_err();
        assert_eq!(
            err,
            AllowParseError::TrustDomainOnly {
                rule: "spiffe://partner.example".into()
            }
        );
        assert!(
            err.to_string().contains("spiffe://partner.example/*"),
            "{err}"
        );
        for empty in ["", " ", ",", " , "] {
            assert_eq!(
                empty.parse::<AllowPolicy>(),
                Err(AllowParseError::Empty),
                "{empty:?}"
            );
        }
        assert_eq!(AllowPolicy::new(vec![]), Err(AllowParseError::Empty));
    }

    #[test]
    fn any_is_the_own_trust_domain_only() {
        let own = td("td");
        let any = AllowPolicy::any();
        any.authorize_for(Some(&own), &id("spiffe://td/ns/a/sa/b"))
            .unwrap();
        for foreign in [
            "spiffe://partner.example/ns/pay/sa/api",
            "spiffe://td.evil/x",
        ] {
            let err = any.authorize_for(Some(&own), &id(foreign)).unwrap_err();
            assert_eq!(err.label(), "other_trust_domain", "{foreign}");
            assert_eq!(err.peer(), &id(foreign));
        }
        // No SVID yet: nothing is ours, so `any` allows nobody.
        for peer in ["spiffe://td/a", "spiffe://partner.example/a"] {
            assert_eq!(
                any.authorize_for(None, &id(peer)).unwrap_err().label(),
                "other_trust_domain",
                "{peer}"
            );
        }
    }

    #[test]
    fn foreign_peers_need_a_rule_of_their_own_domain() {
        let own = td("td");
        let policy =
            allow("any,spiffe://partner.example/ns/pay/sa/api,spiffe://other.example/ns/web/*");
        let ok = |peer: &str| policy.authorize_for(Some(&own), &id(peer));
        ok("spiffe://td/anything").unwrap();
        ok("spiffe://partner.example/ns/pay/sa/api").unwrap();
        ok("spiffe://other.example/ns/web/sa/front").unwrap();
        for refused in [
            "spiffe://partner.example/ns/pay/sa/api2",
            "spiffe://partner.example/ns/pay/sa",
            "spiffe://other.example/ns/db/sa/x",
            "spiffe://third.example/ns/pay/sa/api",
        ] {
            assert_eq!(
                ok(refused).unwrap_err().label(),
                "other_trust_domain",
                "{refused}"
            );
        }
        // Explicit rules hold even while our own domain is unknown.
        policy
            .authorize_for(None, &id("spiffe://partner.example/ns/pay/sa/api"))
            .unwrap();
    }

    #[test]
    fn a_prefix_of_one_domain_never_matches_another() {
        let own = td("td");
        let policy = allow("spiffe://partner.example/*,spiffe://partner.example/ns/*");
        policy
            .authorize_for(Some(&own), &id("spiffe://partner.example/ns/x"))
            .unwrap();
        for other in [
            "spiffe://partner.example.evil/ns/x",
            "spiffe://evil.partner.example/ns/x",
            "spiffe://partner.examplex/ns/x",
            "spiffe://td/ns/x",
        ] {
            assert!(
                policy.authorize_for(Some(&own), &id(other)).is_err(),
                "{other}"
            );
        }
        // Nor does an exact ID of one domain match the same path in another.
        let exact = allow("spiffe://partner.example/api");
        assert!(
            exact
                .authorize_for(Some(&own), &id("spiffe://td/api"))
                .is_err()
        );
    }

    #[test]
    fn restrictive_own_domain_refusals_stay_id_not_allowed() {
        let own = td("td");
        let policy = allow("spiffe://td/ns/prod/*,spiffe://td/web");
        policy
            .authorize_for(Some(&own), &id("spiffe://td/ns/prod/sa/x"))
            .unwrap();
        policy
            .authorize_for(Some(&own), &id("spiffe://td/web"))
            .unwrap();
        for (peer, label) in [
            ("spiffe://td/ns/dev/sa/x", "id_not_allowed"),
            ("spiffe://td/Web", "id_not_allowed"),
            ("spiffe://partner.example/web", "other_trust_domain"),
        ] {
            assert_eq!(
                policy
                    .authorize_for(Some(&own), &id(peer))
                    .unwrap_err()
                    .label(),
                label,
                "{peer}"
            );
        }
    }

    #[test]
    fn the_authorizer_reads_the_own_domain_from_the_store() {
        use crate::bundle::BundleSet;
        use crate::test_support::TestCa;
        let store = Arc::new(SvidStore::new(BundleSet::new()));
        let authorizer = allow("any,spiffe://partner.example/api").into_authorizer(store.clone());
        let local = id("spiffe://example.org/web");
        let partner = id("spiffe://partner.example/api");
        // No SVID: our own domain is unknown, so only the explicit foreign rule allows.
        assert_eq!(
            authorizer.authorize(&local).unwrap_err().label(),
            "other_trust_domain"
        );
        authorizer.authorize(&partner).unwrap();
        let ca = TestCa::new("example.org");
        store
            .update_svid(ca.svid("spiffe://example.org/proxy"))
            .unwrap();
        authorizer.authorize(&local).unwrap();
        authorizer.authorize(&partner).unwrap();
        assert_eq!(
            authorizer
                .authorize(&id("spiffe://partner.example/other"))
                .unwrap_err()
                .label(),
            "other_trust_domain"
        );
        // Our SVID gone again: back to unknown.
        store.clear_svid();
        assert!(authorizer.authorize(&local).is_err());
    }

    #[test]
    fn closure_policy() {
        let f = AuthorizeFn(|id: &SpiffeId| {
            if id.path().starts_with("/lanyard/") {
                Err(AuthzError::Denied {
                    id: id.clone(),
                    reason: "reserved_id",
                })
            } else {
                Ok(())
            }
        });
        f.authorize(&id("spiffe://td/web")).unwrap();
        let err = f.authorize(&id("spiffe://td/lanyard/server")).unwrap_err();
        assert_eq!(err.to_string(), "reserved_id");
        AnyId.authorize(&id("spiffe://x/y")).unwrap();
    }
}
