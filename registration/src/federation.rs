//! Federation: the trust domains whose bundles Lanyard fetches from their SPIFFE bundle
//! endpoints, as the cluster-scoped `LanyardFederation` resource (`lanyard.dev/v1alpha1`)
//! stores them and as a data-dir server's `[[federation]]` configuration names them; both are
//! checked into one [`FederatedDomain`], the fetcher's input.
//!
//! The fields follow the SPIFFE Federation standard (and SPIRE's ClusterFederatedTrustDomain):
//! `trustDomain`, `bundleEndpointURL`, `bundleEndpointProfile` (`https_spiffe` with the
//! endpoint's SPIFFE ID, or `https_web`), and for `https_spiffe` the initial
//! `trustDomainBundle` that authenticates the endpoint the first time.

use lanyard_svid::{SpiffeId, TrustBundle, TrustDomain};

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
