//! Authorisation of a verified peer's SPIFFE ID: who, among the identities we trust, may talk
//! to us (server side) or may be the server we meant to reach (client side).
//!
//! Verification (is this chain a genuine SVID of its trust domain?) always runs first; an
//! [`Authorizer`] only ever sees IDs of verified peers.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

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

impl Authorizer for IdPrefix {
    fn authorize(&self, id: &SpiffeId) -> Result<(), AuthzError> {
        if *id.trust_domain() == self.trust_domain && id.to_string().starts_with(&self.prefix) {
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

/// The proxy's `--allow any|ID|PREFIX*` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowPolicy {
    Any,
    Exact(SpiffeId),
    Prefix(IdPrefix),
}

impl AllowPolicy {
    /// True for anything but `any`: such a listener must be strict (DESIGN.md).
    pub fn is_restrictive(&self) -> bool {
        !matches!(self, Self::Any)
    }

    pub fn into_authorizer(self) -> Arc<dyn Authorizer> {
        Arc::new(self)
    }
}

impl FromStr for AllowPolicy {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if s == "any" {
            Ok(Self::Any)
        } else if s.ends_with('*') {
            IdPrefix::parse(s).map(Self::Prefix)
        } else {
            SpiffeId::parse(s).map(Self::Exact)
        }
    }
}

impl fmt::Display for AllowPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::Exact(id) => write!(f, "{id}"),
            Self::Prefix(p) => write!(f, "{p}"),
        }
    }
}

impl Authorizer for AllowPolicy {
    fn authorize(&self, id: &SpiffeId) -> Result<(), AuthzError> {
        match self {
            Self::Any => Ok(()),
            Self::Exact(expected) if expected == id => Ok(()),
            Self::Exact(_) => Err(AuthzError::NotAllowed { id: id.clone() }),
            Self::Prefix(p) => p.authorize(id),
        }
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

    #[test]
    fn allow_policy_parses_the_proxy_flag() {
        assert_eq!("any".parse::<AllowPolicy>().unwrap(), AllowPolicy::Any);
        let exact: AllowPolicy = "spiffe://td/web".parse().unwrap();
        assert!(exact.is_restrictive());
        exact.authorize(&id("spiffe://td/web")).unwrap();
        assert_eq!(
            exact.authorize(&id("spiffe://td/api")).unwrap_err().label(),
            "id_not_allowed"
        );
        let prefix: AllowPolicy = "spiffe://td/ns/prod/*".parse().unwrap();
        prefix.authorize(&id("spiffe://td/ns/prod/sa/x")).unwrap();
        assert!(prefix.authorize(&id("spiffe://td/ns/dev/sa/x")).is_err());
        assert_eq!(prefix.to_string(), "spiffe://td/ns/prod/*");
        assert!("web".parse::<AllowPolicy>().is_err());
        assert!(!AllowPolicy::Any.is_restrictive());
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
