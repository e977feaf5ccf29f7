//! Federation: the trust domains whose bundles Lanyard fetches from their SPIFFE bundle
//! endpoints, as the cluster-scoped `LanyardFederation` resource (`lanyard.dev/v1alpha1`)
//! stores them and as a data-dir server's `[[federation]]` configuration names them; both are
//! checked into one [`FederatedDomain`], the fetcher's input.
//!
//! The fields follow the SPIFFE Federation standard (and SPIRE's ClusterFederatedTrustDomain):
//! `trustDomain`, `bundleEndpointURL`, `bundleEndpointProfile` (`https_spiffe` with the
//! endpoint's SPIFFE ID, or `https_web`), and for `https_spiffe` the initial
//! `trustDomainBundle` that authenticates the endpoint the first time.
//!
//! `className` works as on `LanyardIdentity`: an installation serves the resources naming its
//! `--identity-class`, and classless ones when it watches classless resources
//! ([`crate::ClassPolicy`]); the caller filters with [`LanyardFederation::served_by`], so a
//! resource of another installation is neither fetched nor reported as invalid.
//!
//! Which workloads receive a federated bundle is said per identity (`federatesWith` on a
//! `LanyardIdentity`, `federates_with` on a static entry), checked by [`check_federates_with`].

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use lanyard_svid::{SpiffeId, TrustBundle, TrustDomain};
use serde::{Deserialize, Serialize};

use crate::registry::ClassPolicy;
use crate::resource::API_VERSION;

pub const KIND: &str = "LanyardFederation";
pub const PLURAL: &str = "lanyardfederations";
pub const SINGULAR: &str = "lanyardfederation";
/// Longest `trustDomainBundle` or `caBundle`, in bytes (the CRD's `maxLength`; PEM of a few
/// dozen CA certificates, well under the API server's object size limit).
pub const MAX_BUNDLE_TEXT_LEN: usize = 262_144;
/// Most trust domains one identity or static entry federates with (the CRD's `maxItems`).
pub const MAX_FEDERATES_WITH: usize = 32;

/// A federated trust domain as the API server stores it (cluster scoped).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LanyardFederation {
    #[serde(rename = "apiVersion", default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: LanyardFederationSpec,
}

/// SPIRE's ClusterFederatedTrustDomain spec, field for field, plus `caBundle`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LanyardFederationSpec {
    /// The federated trust domain's name, e.g. `partner.example`.
    pub trust_domain: String,
    /// Its SPIFFE bundle endpoint, an `https://` URL.
    #[serde(rename = "bundleEndpointURL")]
    pub bundle_endpoint_url: String,
    pub bundle_endpoint_profile: BundleEndpointProfile,
    /// `https_spiffe`: the trust domain's bundle (PEM CA certificates or a SPIFFE bundle
    /// document) that authenticates the endpoint until the first fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain_bundle: Option<String>,
    /// `https_web`: PEM roots the endpoint's Web PKI certificate must chain to; absent, the
    /// system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// Which installation fetches it; absent: see `--watch-classless`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleEndpointProfile {
    /// [`PROFILE_HTTPS_SPIFFE`] or [`PROFILE_HTTPS_WEB`].
    #[serde(rename = "type")]
    pub type_: String,
    /// `https_spiffe`: the SPIFFE ID the endpoint presents.
    #[serde(
        rename = "endpointSPIFFEID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub endpoint_spiffe_id: Option<String>,
}

impl LanyardFederation {
    /// A new resource named `name` (apiVersion and kind filled in).
    pub fn new(name: &str, spec: LanyardFederationSpec) -> Self {
        Self {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            spec,
        }
    }

    /// `metadata.name`, or "" when absent.
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// Whether the installation with this class policy serves it (as for `LanyardIdentity`).
    pub fn served_by(&self, class: &ClassPolicy) -> bool {
        class.serves(self.spec.class_name.as_deref())
    }
}

crate::resource::cluster_resource!(
    LanyardFederation,
    kind: KIND,
    plural: PLURAL,
    list_kind: "LanyardFederationList"
);

/// One federated trust domain, checked: what the server's bundle fetcher works from.
#[derive(Debug, Clone, PartialEq)]
pub struct FederatedDomain {
    pub trust_domain: TrustDomain,
    /// The bundle endpoint, an `https://` URL.
    pub bundle_endpoint_url: String,
    pub profile: EndpointProfile,
    /// Where it was configured, for logs and status: `LanyardFederation/<name>` or
    /// `--config [[federation]] #<n>`.
    pub source: String,
}

/// How the bundle endpoint is authenticated (SPIFFE Federation, "Endpoint Profiles").
#[derive(Debug, Clone, PartialEq)]
pub enum EndpointProfile {
    /// The endpoint presents an X.509-SVID `endpoint_spiffe_id`, validated against the bundle
    /// last fetched from it, or `bootstrap` before the first fetch.
    HttpsSpiffe {
        endpoint_spiffe_id: SpiffeId,
        bootstrap: Option<TrustBundle>,
    },
    /// The endpoint presents a Web PKI certificate for the URL's host, validated against
    /// `ca_roots` (DER), or the system's roots when `None`.
    HttpsWeb { ca_roots: Option<Vec<Vec<u8>>> },
}

/// The profile names of the standard (`bundleEndpointProfile.type`, `bundle_endpoint_profile`).
pub const PROFILE_HTTPS_SPIFFE: &str = "https_spiffe";
pub const PROFILE_HTTPS_WEB: &str = "https_web";

/// Why a federated trust domain is refused. `Display` is actionable; the first word names the
/// field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FederationError {
    #[error("trustDomain: {0}")]
    TrustDomain(String),
    #[error("trustDomain: {0} is this server's own trust domain; federation is with others")]
    OwnTrustDomain(String),
    #[error("bundleEndpointURL: {0:?} is not an https:// URL with a host")]
    Url(String),
    #[error("bundleEndpointProfile: unknown type {0:?}; use \"https_spiffe\" or \"https_web\"")]
    Profile(String),
    #[error("endpointSPIFFEID: {0}")]
    EndpointId(String),
    #[error(
        "endpointSPIFFEID: {id} is not in trust domain {trust_domain} (the bootstrap bundle must authenticate it)"
    )]
    EndpointIdOtherDomain { id: String, trust_domain: String },
    #[error("endpointSPIFFEID: required with the https_spiffe profile")]
    EndpointIdMissing,
    #[error("trustDomainBundle: {0}")]
    Bundle(String),
    #[error("{0}: only meaningful with the {1} profile")]
    NotForProfile(&'static str, &'static str),
    #[error("caBundle: {0}")]
    CaBundle(String),
    #[error("metadata.name: the resource has no name")]
    NoName,
}

impl FederatedDomain {
    /// Checks a `LanyardFederation` for a server of trust domain `own` (its class is the
    /// caller's to check, with [`LanyardFederation::served_by`]).
    pub fn from_resource(
        resource: &LanyardFederation,
        own: &TrustDomain,
    ) -> Result<Self, FederationError> {
        if resource.name().is_empty() {
            return Err(FederationError::NoName);
        }
        Self::from_spec(&resource.spec, own, format!("{KIND}/{}", resource.name()))
    }

    /// Checks one federated trust domain as a `LanyardFederation` spec says it (a server's
    /// `[[federation]]` tables are read into one): `source` names where it came from.
    pub fn from_spec(
        spec: &LanyardFederationSpec,
        own: &TrustDomain,
        source: String,
    ) -> Result<Self, FederationError> {
        let trust_domain = TrustDomain::new(&spec.trust_domain)
            .map_err(|e| FederationError::TrustDomain(format!("{:?}: {e}", spec.trust_domain)))?;
        if &trust_domain == own {
            return Err(FederationError::OwnTrustDomain(spec.trust_domain.clone()));
        }
        check_endpoint_url(&spec.bundle_endpoint_url)?;
        let endpoint_id = spec.bundle_endpoint_profile.endpoint_spiffe_id.as_deref();
        let profile = match spec.bundle_endpoint_profile.type_.as_str() {
            PROFILE_HTTPS_SPIFFE => {
                if spec.ca_bundle.is_some() {
                    return Err(FederationError::NotForProfile(
                        "caBundle",
                        PROFILE_HTTPS_WEB,
                    ));
                }
                let id = endpoint_id.ok_or(FederationError::EndpointIdMissing)?;
                let endpoint_spiffe_id =
                    SpiffeId::parse(id).map_err(|e| FederationError::EndpointId(e.to_string()))?;
                if endpoint_spiffe_id.trust_domain() != &trust_domain {
                    return Err(FederationError::EndpointIdOtherDomain {
                        id: id.to_owned(),
                        trust_domain: trust_domain.to_string(),
                    });
                }
                let bootstrap = match &spec.trust_domain_bundle {
                    Some(text) => {
                        bounded(text).map_err(FederationError::Bundle)?;
                        Some(parse_bundle_text(&trust_domain, text.as_bytes())?)
                    }
                    None => None,
                };
                EndpointProfile::HttpsSpiffe {
                    endpoint_spiffe_id,
                    bootstrap,
                }
            }
            PROFILE_HTTPS_WEB => {
                if endpoint_id.is_some() {
                    return Err(FederationError::NotForProfile(
                        "endpointSPIFFEID",
                        PROFILE_HTTPS_SPIFFE,
                    ));
                }
                if spec.trust_domain_bundle.is_some() {
                    return Err(FederationError::NotForProfile(
                        "trustDomainBundle",
                        PROFILE_HTTPS_SPIFFE,
                    ));
                }
                let ca_roots = match &spec.ca_bundle {
                    Some(text) => {
                        bounded(text).map_err(FederationError::CaBundle)?;
                        let certs = lanyard_svid::bundle::certificates_from_pem(text.as_bytes())
                            .map_err(|e| FederationError::CaBundle(e.to_string()))?;
                        if certs.is_empty() {
                            // An empty set would make every fetch fail; say so now.
                            return Err(FederationError::CaBundle("no PEM certificate".into()));
                        }
                        Some(certs.into_iter().map(|c| c.to_vec()).collect())
                    }
                    None => None,
                };
                EndpointProfile::HttpsWeb { ca_roots }
            }
            other => return Err(FederationError::Profile(other.to_owned())),
        };
        Ok(Self {
            trust_domain,
            bundle_endpoint_url: spec.bundle_endpoint_url.clone(),
            profile,
            source,
        })
    }
}

fn bounded(text: &str) -> Result<(), String> {
    if text.len() > MAX_BUNDLE_TEXT_LEN {
        return Err(format!(
            "{} bytes, more than the {MAX_BUNDLE_TEXT_LEN} allowed",
            text.len()
        ));
    }
    Ok(())
}

/// Why a `federatesWith` list is refused; `Display` starts at the index of the bad name (the
/// caller prefixes the field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FederatesWithError {
    #[error("at most {MAX_FEDERATES_WITH} trust domains")]
    TooMany,
    #[error("[{index}] {name:?} is not a trust domain name: {message}")]
    Invalid {
        index: usize,
        name: String,
        message: String,
    },
    #[error(
        "[{index}] {name} is this server's own trust domain, whose bundle every workload gets; list only federated ones"
    )]
    Own { index: usize, name: String },
}

/// Checks the trust domains an identity or static entry federates with: bare lowercase names
/// (`partner.example`), not `own`, at most [`MAX_FEDERATES_WITH`]. The result is a set (sorted,
/// each once): naming a domain twice changes nothing. A domain no federation configures yet
/// is accepted: its bundle is delivered once one does.
pub fn check_federates_with(
    names: &[String],
    own: &TrustDomain,
) -> Result<Vec<TrustDomain>, FederatesWithError> {
    if names.len() > MAX_FEDERATES_WITH {
        return Err(FederatesWithError::TooMany);
    }
    let mut out = Vec::with_capacity(names.len());
    for (index, name) in names.iter().enumerate() {
        let td = TrustDomain::new(name).map_err(|e| FederatesWithError::Invalid {
            index,
            name: name.clone(),
            message: e.to_string(),
        })?;
        if &td == own {
            return Err(FederatesWithError::Own {
                index,
                name: name.clone(),
            });
        }
        out.push(td);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Checks an `https://host[:port][/path]` URL (no userinfo, query or fragment).
pub fn check_endpoint_url(url: &str) -> Result<(), FederationError> {
    let bad = || FederationError::Url(url.to_owned());
    let rest = url.strip_prefix("https://").ok_or_else(bad)?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty()
        || authority.contains('@')
        || rest.contains('?')
        || rest.contains('#')
        || url.len() > 2048
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad());
    }
    Ok(())
}

/// A trust bundle written as PEM CA certificates or as a SPIFFE bundle document (JWK Set).
pub fn parse_bundle_text(
    trust_domain: &TrustDomain,
    text: &[u8],
) -> Result<TrustBundle, FederationError> {
    let trimmed = text.trim_ascii_start();
    let bundle = if trimmed.starts_with(b"{") {
        TrustBundle::from_jwks(trust_domain.clone(), trimmed)
            .map_err(|e| FederationError::Bundle(e.to_string()))?
    } else {
        TrustBundle::from_pem(trust_domain.clone(), trimmed)
            .map_err(|e| FederationError::Bundle(e.to_string()))?
    };
    if bundle.x509_authorities().is_empty() {
        return Err(FederationError::Bundle(
            "holds no X.509 authority, so it cannot authenticate the endpoint".into(),
        ));
    }
    Ok(bundle)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use lanyard_svid::ca::RootCa;

    use super::*;

    fn own() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn partner() -> TrustDomain {
        TrustDomain::new("partner.example").unwrap()
    }

    fn root_pem(td: &TrustDomain) -> String {
        RootCa::generate(td, Duration::from_secs(86_400), SystemTime::now())
            .unwrap()
            .cert_pem()
    }

    fn spiffe(bundle: Option<String>) -> LanyardFederation {
        LanyardFederation::new(
            "partner",
            LanyardFederationSpec {
                trust_domain: "partner.example".into(),
                bundle_endpoint_url: "https://bundles.partner.example:8443/bundle".into(),
                bundle_endpoint_profile: BundleEndpointProfile {
                    type_: PROFILE_HTTPS_SPIFFE.into(),
                    endpoint_spiffe_id: Some("spiffe://partner.example/lanyard/server".into()),
                },
                trust_domain_bundle: bundle,
                ..Default::default()
            },
        )
    }

    fn web(ca: Option<String>) -> LanyardFederation {
        LanyardFederation::new(
            "partner-web",
            LanyardFederationSpec {
                trust_domain: "partner.example".into(),
                bundle_endpoint_url: "https://partner.example/.well-known/spiffe-bundle".into(),
                bundle_endpoint_profile: BundleEndpointProfile {
                    type_: PROFILE_HTTPS_WEB.into(),
                    endpoint_spiffe_id: None,
                },
                ca_bundle: ca,
                ..Default::default()
            },
        )
    }

    fn check(r: &LanyardFederation) -> Result<FederatedDomain, FederationError> {
        FederatedDomain::from_resource(r, &own())
    }

    #[test]
    fn https_spiffe_with_a_bootstrap_bundle() {
        let pem = root_pem(&partner());
        let d = check(&spiffe(Some(pem))).unwrap();
        assert_eq!(d.trust_domain, partner());
        assert_eq!(
            d.bundle_endpoint_url,
            "https://bundles.partner.example:8443/bundle"
        );
        assert_eq!(d.source, "LanyardFederation/partner");
        match d.profile {
            EndpointProfile::HttpsSpiffe {
                endpoint_spiffe_id,
                bootstrap: Some(bundle),
            } => {
                assert_eq!(
                    endpoint_spiffe_id.to_string(),
                    "spiffe://partner.example/lanyard/server"
                );
                assert_eq!(bundle.trust_domain(), &partner());
                assert_eq!(bundle.x509_authorities().len(), 1);
            }
            other => panic!("{other:?}"),
        }
        // Without a bootstrap bundle (set by other means before the first fetch).
        assert!(matches!(
            check(&spiffe(None)).unwrap().profile,
            EndpointProfile::HttpsSpiffe {
                bootstrap: None,
                ..
            }
        ));
    }

    #[test]
    fn https_spiffe_with_a_spiffe_bundle_document() {
        let pem = root_pem(&partner());
        let bundle = TrustBundle::from_pem(partner(), pem.as_bytes()).unwrap();
        let jwks = bundle.to_jwks().unwrap();
        match check(&spiffe(Some(jwks))).unwrap().profile {
            EndpointProfile::HttpsSpiffe {
                bootstrap: Some(b), ..
            } => assert_eq!(b.x509_authorities(), bundle.x509_authorities()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn https_web_with_and_without_roots() {
        let d = check(&web(None)).unwrap();
        assert_eq!(d.profile, EndpointProfile::HttpsWeb { ca_roots: None });
        assert_eq!(d.source, "LanyardFederation/partner-web");
        // Any Web PKI root will do; this one happens to be a SPIFFE CA.
        let pem = root_pem(&TrustDomain::new("roots.example").unwrap());
        match check(&web(Some(pem))).unwrap().profile {
            EndpointProfile::HttpsWeb { ca_roots: Some(r) } => assert_eq!(r.len(), 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_refusal() {
        let pem = root_pem(&partner());
        type Edit = Box<dyn Fn(&mut LanyardFederation)>;
        type Case = (&'static str, Edit, fn(&FederationError) -> bool);
        let cases: Vec<Case> = vec![
            ("no name", Box::new(|r| r.metadata.name = None), |e| {
                *e == FederationError::NoName
            }),
            (
                "bad trust domain",
                Box::new(|r| r.spec.trust_domain = "Partner.Example".into()),
                |e| matches!(e, FederationError::TrustDomain(_)),
            ),
            (
                "trust domain as a URI",
                Box::new(|r| r.spec.trust_domain = "spiffe://partner.example".into()),
                |e| matches!(e, FederationError::TrustDomain(_)),
            ),
            (
                "own trust domain",
                Box::new(|r| {
                    r.spec.trust_domain = "example.org".into();
                    r.spec.bundle_endpoint_profile.endpoint_spiffe_id =
                        Some("spiffe://example.org/lanyard/server".into());
                }),
                |e| matches!(e, FederationError::OwnTrustDomain(_)),
            ),
            (
                "http URL",
                Box::new(|r| r.spec.bundle_endpoint_url = "http://partner.example/".into()),
                |e| matches!(e, FederationError::Url(_)),
            ),
            (
                "URL with userinfo",
                Box::new(|r| r.spec.bundle_endpoint_url = "https://u@partner.example/".into()),
                |e| matches!(e, FederationError::Url(_)),
            ),
            (
                "unknown profile",
                Box::new(|r| r.spec.bundle_endpoint_profile.type_ = "https".into()),
                |e| *e == FederationError::Profile("https".into()),
            ),
            (
                "https_spiffe without endpoint ID",
                Box::new(|r| r.spec.bundle_endpoint_profile.endpoint_spiffe_id = None),
                |e| *e == FederationError::EndpointIdMissing,
            ),
            (
                "bad endpoint ID",
                Box::new(|r| {
                    r.spec.bundle_endpoint_profile.endpoint_spiffe_id =
                        Some("spiffe://partner.example//x".into())
                }),
                |e| matches!(e, FederationError::EndpointId(_)),
            ),
            (
                "endpoint ID of another trust domain",
                Box::new(|r| {
                    r.spec.bundle_endpoint_profile.endpoint_spiffe_id =
                        Some("spiffe://other.example/server".into())
                }),
                |e| matches!(e, FederationError::EndpointIdOtherDomain { .. }),
            ),
            (
                "garbage bundle",
                Box::new(|r| r.spec.trust_domain_bundle = Some("not a bundle".into())),
                |e| matches!(e, FederationError::Bundle(_)),
            ),
            (
                "bundle JSON without X.509 authorities",
                Box::new(|r| r.spec.trust_domain_bundle = Some(r#"{"keys": []}"#.into())),
                |e| matches!(e, FederationError::Bundle(_)),
            ),
            (
                "oversized bundle",
                Box::new(|r| {
                    r.spec.trust_domain_bundle = Some(" ".repeat(MAX_BUNDLE_TEXT_LEN + 1))
                }),
                |e| matches!(e, FederationError::Bundle(m) if m.contains("allowed")),
            ),
            (
                "caBundle with https_spiffe",
                Box::new(|r| r.spec.ca_bundle = Some(String::new())),
                |e| *e == FederationError::NotForProfile("caBundle", PROFILE_HTTPS_WEB),
            ),
        ];
        for (what, edit, want) in cases {
            let mut r = spiffe(Some(pem.clone()));
            edit(&mut r);
            let e = check(&r).unwrap_err();
            assert!(want(&e), "{what}: {e:?}");
        }

        let web_cases: Vec<Case> = vec![
            (
                "endpoint ID with https_web",
                Box::new(|r| {
                    r.spec.bundle_endpoint_profile.endpoint_spiffe_id =
                        Some("spiffe://partner.example/x".into())
                }),
                |e| *e == FederationError::NotForProfile("endpointSPIFFEID", PROFILE_HTTPS_SPIFFE),
            ),
            (
                "trustDomainBundle with https_web",
                Box::new(|r| r.spec.trust_domain_bundle = Some(String::new())),
                |e| *e == FederationError::NotForProfile("trustDomainBundle", PROFILE_HTTPS_SPIFFE),
            ),
            (
                "garbage caBundle",
                Box::new(|r| r.spec.ca_bundle = Some("-----BEGIN NOTHING-----".into())),
                |e| matches!(e, FederationError::CaBundle(_)),
            ),
            (
                "oversized caBundle",
                Box::new(|r| r.spec.ca_bundle = Some(" ".repeat(MAX_BUNDLE_TEXT_LEN + 1))),
                |e| matches!(e, FederationError::CaBundle(m) if m.contains("allowed")),
            ),
        ];
        for (what, edit, want) in web_cases {
            let mut r = web(None);
            edit(&mut r);
            let e = check(&r).unwrap_err();
            assert!(want(&e), "{what}: {e:?}");
        }
        // Messages start with the field they are about.
        assert!(
            FederationError::NotForProfile("caBundle", PROFILE_HTTPS_WEB)
                .to_string()
                .starts_with("caBundle: ")
        );
    }

    #[test]
    fn class_policy_decides_which_installation_serves_it() {
        let mut r = web(None);
        let default = ClassPolicy::default();
        assert!(r.served_by(&default));
        let strict = ClassPolicy {
            class_name: "lanyard".into(),
            watch_classless: false,
        };
        assert!(!r.served_by(&strict));
        r.spec.class_name = Some("lanyard".into());
        assert!(r.served_by(&strict));
        r.spec.class_name = Some("other".into());
        assert!(!r.served_by(&default));
    }

    #[test]
    fn federates_with() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let got = check_federates_with(
            &names(&["partner.example", "b.example", "partner.example"]),
            &own(),
        )
        .unwrap();
        assert_eq!(
            got,
            [
                TrustDomain::new("b.example").unwrap(),
                TrustDomain::new("partner.example").unwrap()
            ]
        );
        assert_eq!(check_federates_with(&[], &own()).unwrap(), []);
        for bad in [
            "",
            "Partner.example",
            "spiffe://partner.example",
            "a b",
            "a:1",
        ] {
            assert!(
                matches!(
                    check_federates_with(&names(&["ok.example", bad]), &own()),
                    Err(FederatesWithError::Invalid { index: 1, .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            check_federates_with(&names(&["example.org"]), &own()),
            Err(FederatesWithError::Own {
                index: 0,
                name: "example.org".into()
            })
        );
        let many: Vec<String> = (0..=MAX_FEDERATES_WITH)
            .map(|i| format!("d{i}.example"))
            .collect();
        assert_eq!(
            check_federates_with(&many, &own()),
            Err(FederatesWithError::TooMany)
        );
        check_federates_with(&many[..MAX_FEDERATES_WITH], &own()).unwrap();
    }
}
