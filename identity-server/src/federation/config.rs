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

use lanyard_daemon::config_file;
use lanyard_registration::federation::{
    BundleEndpointProfile, FederatedDomain, LanyardFederationSpec,
};
use lanyard_svid::TrustDomain;
use serde::Deserialize;

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
        let domain = config.check(own, base, index).map_err(fail)?;
        if out.iter().any(|d| d.trust_domain == domain.trust_domain) {
            return Err(fail("listed twice".into()));
        }
        out.push(domain);
    }
    Ok(out)
}

impl FederationConfig {
    /// The table as a `LanyardFederation` spec (its files read), checked by the code that
    /// checks the resources; refusals name the table's keys.
    fn check(
        self,
        own: &TrustDomain,
        base: &Path,
        index: usize,
    ) -> Result<FederatedDomain, String> {
        let read = |file: PathBuf, key: &str| {
            config_file::read_text(&base.join(file)).map_err(|e| format!("{key}: {e}"))
        };
        let spec = LanyardFederationSpec {
            trust_domain: self.trust_domain,
            bundle_endpoint_url: self.bundle_endpoint_url,
            bundle_endpoint_profile: BundleEndpointProfile {
                type_: self.bundle_endpoint_profile,
                endpoint_spiffe_id: self.endpoint_spiffe_id,
            },
            trust_domain_bundle: self
                .trust_domain_bundle_file
                .map(|f| read(f, "trust_domain_bundle_file"))
                .transpose()?,
            ca_bundle: self.ca_file.map(|f| read(f, "ca_file")).transpose()?,
            class_name: None,
        };
        FederatedDomain::from_spec(&spec, own, format!("--config [[federation]] #{index}"))
            .map_err(|e| in_table_keys(&e.to_string()))
    }
}

/// A refusal worded with the resource's field names, reworded with the table's keys.
fn in_table_keys(message: &str) -> String {
    // Longest first: `trustDomain` is a prefix of `trustDomainBundle`.
    [
        ("trustDomainBundle", "trust_domain_bundle_file"),
        ("bundleEndpointProfile", "bundle_endpoint_profile"),
        ("bundleEndpointURL", "bundle_endpoint_url"),
        ("endpointSPIFFEID", "endpoint_spiffe_id"),
        ("trustDomain", "trust_domain"),
        ("caBundle", "ca_file"),
    ]
    .iter()
    .fold(message.to_owned(), |text, (field, key)| {
        text.replace(field, key)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_registration::federation::EndpointProfile;

    fn own() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn spiffe(td: &str) -> FederationConfig {
        FederationConfig {
            trust_domain: td.into(),
            bundle_endpoint_url: format!("https://bundles.{td}:8443"),
            bundle_endpoint_profile: "https_spiffe".into(),
            endpoint_spiffe_id: Some(format!("spiffe://{td}/lanyard/server")),
            ..Default::default()
        }
    }

    fn refusal(configs: Vec<FederationConfig>, base: &Path) -> String {
        validate(configs, &own(), base).unwrap_err().to_string()
    }

    #[test]
    fn tables_become_domains_with_their_files_read_from_the_config_directory() {
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::new("b.test").unwrap();
        let root = lanyard_svid::ca::RootCa::generate(
            &td,
            std::time::Duration::from_secs(3600),
            std::time::SystemTime::now(),
        )
        .unwrap();
        std::fs::write(dir.path().join("b.pem"), root.cert_pem()).unwrap();
        let mut b = spiffe("b.test");
        b.trust_domain_bundle_file = Some("b.pem".into());
        let web = FederationConfig {
            trust_domain: "web.test".into(),
            bundle_endpoint_url: "https://web.test/bundle".into(),
            bundle_endpoint_profile: "https_web".into(),
            ..Default::default()
        };
        let domains = validate(vec![b, web], &own(), dir.path()).unwrap();
        assert_eq!(domains[0].source, "--config [[federation]] #0");
        match &domains[0].profile {
            EndpointProfile::HttpsSpiffe { bootstrap, .. } => assert_eq!(
                bootstrap.as_ref().unwrap().x509_authorities(),
                std::slice::from_ref(root.cert_der())
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            domains[1].profile,
            EndpointProfile::HttpsWeb { ca_roots: None }
        );
    }

    #[test]
    fn refusals_name_the_table_and_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        assert_eq!(
            refusal(vec![spiffe("b.test"), spiffe("b.test")], base),
            "[[federation]] 1 (b.test): listed twice"
        );
        assert!(refusal(vec![spiffe("example.org")], base).contains("own trust domain"));
        let mut missing = spiffe("b.test");
        missing.trust_domain_bundle_file = Some("absent.pem".into());
        let err = refusal(vec![missing], base);
        assert!(
            err.starts_with("[[federation]] 0 (b.test): trust_domain_bundle_file: "),
            "{err}"
        );
        let mut web_with_id = spiffe("b.test");
        web_with_id.bundle_endpoint_profile = "https_web".into();
        let err = refusal(vec![web_with_id], base);
        assert!(err.contains("endpoint_spiffe_id"), "{err}");
        assert!(!err.contains("endpointSPIFFEID"), "{err}");
        std::fs::write(base.join("empty.pem"), "").unwrap();
        let empty_ca = FederationConfig {
            trust_domain: "web.test".into(),
            bundle_endpoint_url: "https://web.test".into(),
            bundle_endpoint_profile: "https_web".into(),
            ca_file: Some("empty.pem".into()),
            ..Default::default()
        };
        assert!(refusal(vec![empty_ca], base).contains("ca_file: "));
        let mut http = spiffe("b.test");
        http.bundle_endpoint_url = "http://b.test".into();
        assert!(refusal(vec![http], base).contains("bundle_endpoint_url"));
    }
}
