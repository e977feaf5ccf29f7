//! The resource names an SDS request may carry (Envoy's `DiscoveryRequest.resource_names`),
//! as SPIRE's agent names them, and their bounds.
//!
//! - a SPIFFE ID the caller holds: that X.509-SVID as a `tls_certificate` Secret of that name;
//! - [`DEFAULT_SVID_NAME`] (`default`): the caller's default X.509-SVID, named `default`;
//! - a trust domain ID (`spiffe://example.org`) whose bundle the caller is entitled to (its
//!   own, or one it federates with): that bundle as a `validation_context` of that name;
//! - [`ROOT_CA_NAME`] (`ROOTCA`): the bundle of the caller's own trust domain, named `ROOTCA`;
//! - [`ALL_BUNDLES_NAME`] (`ALL`): every bundle the caller is entitled to, in one
//!   `validation_context` carrying the SPIFFE certificate validator's configuration;
//! - no name at all: every bundle (by trust domain ID) and every X.509-SVID (by SPIFFE ID).
//!
//! Any other name is refused (`InvalidArgument`), as SPIRE does.

use std::collections::BTreeSet;

use lanyard_svid::SpiffeId;

/// The caller's default X.509-SVID (SPIRE's `default_svid_name`).
pub const DEFAULT_SVID_NAME: &str = "default";
/// The bundle of the caller's own trust domain (SPIRE's `default_bundle_name`).
pub const ROOT_CA_NAME: &str = "ROOTCA";
/// Every bundle the caller is entitled to, for the SPIFFE validator (SPIRE's
/// `default_all_bundles_name`).
pub const ALL_BUNDLES_NAME: &str = "ALL";

/// Most resource names one request may carry (Envoy asks for one or two per stream).
pub const MAX_RESOURCE_NAMES: usize = 64;
/// The longest resource name: a SPIFFE ID's limit (2048 bytes).
pub const MAX_RESOURCE_NAME_LEN: usize = 2048;

/// A request's resource names over their bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamesError {
    #[error("too_many_resource_names")]
    TooMany { count: usize },
    #[error("resource_name_too_long")]
    TooLong { index: usize, len: usize },
}

impl NamesError {
    pub fn message(&self) -> String {
        match self {
            Self::TooMany { count } => format!(
                "{count} resource names in one request, more than the {MAX_RESOURCE_NAMES} \
                 allowed"
            ),
            Self::TooLong { index, len } => format!(
                "resource name {index} is {len} bytes, longer than the \
                 {MAX_RESOURCE_NAME_LEN} allowed"
            ),
        }
    }
}

/// What a request asks for: everything, or these names (without duplicates or empty ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    Everything,
    Names(BTreeSet<String>),
}

impl Requested {
    /// The request's names, within bounds. No (non-empty) name: [`Requested::Everything`].
    pub fn parse(names: &[String]) -> Result<Self, NamesError> {
        if names.len() > MAX_RESOURCE_NAMES {
            return Err(NamesError::TooMany { count: names.len() });
        }
        if let Some((index, name)) = names
            .iter()
            .enumerate()
            .find(|(_, n)| n.len() > MAX_RESOURCE_NAME_LEN)
        {
            return Err(NamesError::TooLong {
                index,
                len: name.len(),
            });
        }
        let set: BTreeSet<String> = names.iter().filter(|n| !n.is_empty()).cloned().collect();
        Ok(if set.is_empty() {
            Self::Everything
        } else {
            Self::Names(set)
        })
    }

    /// Whether answering needs the caller's X.509-SVIDs (else only bundles): everything, or
    /// any name that is not a bundle's.
    pub fn wants_certificates(&self) -> bool {
        match self {
            Self::Everything => true,
            Self::Names(names) => names.iter().any(|n| !is_bundle_name(n)),
        }
    }
}

/// `ROOTCA`, `ALL` or a trust domain ID (a SPIFFE ID without a path).
fn is_bundle_name(name: &str) -> bool {
    name == ROOT_CA_NAME
        || name == ALL_BUNDLES_NAME
        || SpiffeId::parse(name).is_ok_and(|id| id.is_trust_domain_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn empty_names_ask_for_everything() {
        assert_eq!(Requested::parse(&[]).unwrap(), Requested::Everything);
        assert_eq!(
            Requested::parse(&names(&["", ""])).unwrap(),
            Requested::Everything
        );
        let Requested::Names(set) = Requested::parse(&names(&["ROOTCA", "", "ROOTCA"])).unwrap()
        else {
            panic!("names expected");
        };
        assert_eq!(set.into_iter().collect::<Vec<_>>(), ["ROOTCA"]);
    }

    #[test]
    fn bounds() {
        let many = vec!["x".to_owned(); MAX_RESOURCE_NAMES + 1];
        assert_eq!(
            Requested::parse(&many).unwrap_err(),
            NamesError::TooMany {
                count: MAX_RESOURCE_NAMES + 1
            }
        );
        assert!(Requested::parse(&many[..MAX_RESOURCE_NAMES]).is_ok());
        let long = names(&["ok", &"x".repeat(MAX_RESOURCE_NAME_LEN + 1)]);
        assert_eq!(
            Requested::parse(&long).unwrap_err(),
            NamesError::TooLong {
                index: 1,
                len: MAX_RESOURCE_NAME_LEN + 1
            }
        );
    }

    #[test]
    fn only_bundle_names_need_no_certificates() {
        let bundles = Requested::parse(&names(&["ROOTCA", "ALL", "spiffe://a.test"])).unwrap();
        assert!(!bundles.wants_certificates());
        for cert in ["default", "spiffe://a.test/web", "unknown"] {
            let mixed = Requested::parse(&names(&["ROOTCA", cert])).unwrap();
            assert!(mixed.wants_certificates(), "{cert}");
        }
        assert!(Requested::Everything.wants_certificates());
    }
}
