//! `[[federation]]` in a server's `--config`: the trust domains a data-dir server (or a
//! cluster-mode server, beside `LanyardFederation` resources) fetches bundles from.
//!
//! ```toml
//! [[federation]]
//! trust_domain = "partner.example"
//! bundle_endpoint_url = "https://bundles.partner.example:8443"
//! bundle_endpoint_profile = "https_spiffe"          # or "https_web"
//! endpoint_spiffe_id = "spiffe://partner.example/lanyard/server"   # https_spiffe
//! trust_domain_bundle_file = "partner-bundle.pem"   # https_spiffe: PEM or a SPIFFE bundle
//! # ca_file = "web-roots.pem"                       # https_web: else the system's roots
//! ```
//! Relative paths are read from the config file's directory.

use std::path::{Path, PathBuf};

use lanyard_registration::federation::{
    EndpointProfile, FederatedDomain, FederationError, PROFILE_HTTPS_SPIFFE, PROFILE_HTTPS_WEB,
    check_endpoint_url, parse_bundle_text,
};
use lanyard_svid::{SpiffeId, TrustDomain};
use serde::Deserialize;

/// Largest bootstrap bundle or CA file read.
const MAX_FILE_LEN: u64 = 1 << 20;

/// One `[[federation]]` table as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    pub trust_domain: String,
    pub bundle_endpoint_url: String,
    pub bundle_endpoint_profile: String,
    #[serde(default)]
    pub endpoint_spiffe_id: Option<String>,
    #[serde(default)]
    pub trust_domain_bundle_file: Option<PathBuf>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// Why a `[[federation]]` table is refused.
#[derive(Debug, thiserror::Error)]
#[error("[[federation]] {index} ({trust_domain}): {reason}")]
pub struct FederationConfigError {
    /// Position in `[[federation]]`, from 0.
    pub index: usize,
    pub trust_domain: String,
    pub reason: String,
}

/// Checks every table; relative file names are taken from `base` (the config file's
/// directory). Two tables for one trust domain are refused.
pub fn validate(
    configs: Vec<FederationConfig>,
    own: &TrustDomain,
    base: &Path,
) -> Result<Vec<FederatedDomain>, FederationConfigError> {
    let mut out: Vec<FederatedDomain> = Vec::with_capacity(configs.len());
    for (index, config) in configs.into_iter().enumerate() {
        let trust_domain = config.trust_domain.clone();
        let fail = |reason: String| FederationConfigError {
            index,
            trust_domain: trust_domain.clone(),
            reason,
        };
        let domain = config
            .check(own, base, index)
            .map_err(|e| fail(e.to_string()))?;
        if out.iter().any(|d| d.trust_domain == domain.trust_domain) {
            return Err(fail("listed twice".into()));
        }
        out.push(domain);
    }
    Ok(out)
}

impl FederationConfig {
    fn check(
        self,
        own: &TrustDomain,
        base: &Path,
        index: usize,
    ) -> Result<FederatedDomain, FederationError> {
        let trust_domain = TrustDomain::new(&self.trust_domain)
            .map_err(|e| FederationError::TrustDomain(e.to_string()))?;
        if &trust_domain == own {
            return Err(FederationError::OwnTrustDomain(self.trust_domain));
        }
        check_endpoint_url(&self.bundle_endpoint_url)?;
        let profile = match self.bundle_endpoint_profile.as_str() {
            PROFILE_HTTPS_SPIFFE => {
                if self.ca_file.is_some() {
                    return Err(FederationError::NotForProfile("ca_file", PROFILE_HTTPS_WEB));
                }
                let id = self
                    .endpoint_spiffe_id
                    .as_deref()
                    .ok_or(FederationError::EndpointIdMissing)?;
                let endpoint_spiffe_id =
                    SpiffeId::parse(id).map_err(|e| FederationError::EndpointId(e.to_string()))?;
                if endpoint_spiffe_id.trust_domain() != &trust_domain {
                    return Err(FederationError::EndpointIdOtherDomain {
                        id: id.to_owned(),
                        trust_domain: trust_domain.to_string(),
                    });
                }
                let bootstrap = match &self.trust_domain_bundle_file {
                    Some(file) => {
                        let text =
                            read_bounded(&base.join(file)).map_err(FederationError::Bundle)?;
                        Some(parse_bundle_text(&trust_domain, &text)?)
                    }
                    None => None,
                };
                EndpointProfile::HttpsSpiffe {
                    endpoint_spiffe_id,
                    bootstrap,
                }
            }
            PROFILE_HTTPS_WEB => {
                if self.endpoint_spiffe_id.is_some() {
                    return Err(FederationError::NotForProfile(
                        "endpoint_spiffe_id",
                        PROFILE_HTTPS_SPIFFE,
                    ));
                }
                if self.trust_domain_bundle_file.is_some() {
                    return Err(FederationError::NotForProfile(
                        "trust_domain_bundle_file",
                        PROFILE_HTTPS_SPIFFE,
                    ));
                }
                let ca_roots = match &self.ca_file {
                    Some(file) => {
                        let text =
                            read_bounded(&base.join(file)).map_err(FederationError::CaBundle)?;
                        let certs = lanyard_svid::bundle::certificates_from_pem(&text)
                            .map_err(|e| FederationError::CaBundle(e.to_string()))?;
                        if certs.is_empty() {
                            return Err(FederationError::CaBundle(
                                "no certificate in the file".into(),
                            ));
                        }
                        Some(certs.into_iter().map(|c| c.to_vec()).collect())
                    }
                    None => None,
                };
                EndpointProfile::HttpsWeb { ca_roots }
            }
            other => return Err(FederationError::Profile(other.to_owned())),
        };
        Ok(FederatedDomain {
            trust_domain,
            bundle_endpoint_url: self.bundle_endpoint_url,
            profile,
            source: format!("--config [[federation]] #{index}"),
        })
    }
}

/// A file's bytes, refused past [`MAX_FILE_LEN`].
fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(format!(
            "{}: larger than {MAX_FILE_LEN} bytes",
            path.display()
        ));
    }
    Ok(bytes)
}
