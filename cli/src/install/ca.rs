//! The CA `lanyard install` generates for clusters that have none: a P-256 root, an issuing
//! intermediate under it, and the JWT-SVID signing key. The cluster gets the intermediate
//! (cert and key), the JWT key (Secret, `kubernetes.io/tls` layout plus `jwt.key`) and the
//! root certificate (bundle ConfigMap, `bundle.pem`); the root's key goes nowhere unless
//! `--write-root-key FILE` asks for it (a new 0600 file, never an existing one).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine;
use lanyard_svid::ca::RootCa;
use lanyard_svid::jwt::JwtSigner;
use serde_json::json;
use zeroize::Zeroizing;

use super::labels;
use super::{BUNDLE_CONFIGMAP_NAME, CA_SECRET_NAME, InstallOptions, SERVER_NAME};
use crate::yaml::Yaml;

/// Secret and ConfigMap keys the server reads (identity-server/src/k8s/ca_source.rs).
pub const SECRET_CERT_KEY: &str = "tls.crt";
pub const SECRET_KEY_KEY: &str = "tls.key";
pub const SECRET_JWT_KEY: &str = "jwt.key";
pub const CONFIGMAP_BUNDLE_KEY: &str = "bundle.pem";

pub const DEFAULT_ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
pub const DEFAULT_INTERMEDIATE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("generating the CA: {0}")]
    Generate(String),
    #[error("generating the JWT signing key: {0}")]
    Jwt(String),
    #[error("writing the root key to {path}: {source} (the file must not exist yet)")]
    WriteRootKey {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A freshly generated CA. Keys are wiped on drop and never shown by `Debug`.
pub struct GeneratedCa {
    root_cert_pem: String,
    root_key_pem: Zeroizing<String>,
    intermediate_chain_pem: String,
    intermediate_key_pem: Zeroizing<String>,
    jwt_key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for GeneratedCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedCa").finish_non_exhaustive()
    }
}

impl GeneratedCa {
    /// A root valid for `root_ttl` and an intermediate for `intermediate_ttl` (capped at
    /// the root's lifetime), both from `now`.
    pub fn generate(
        options: &InstallOptions,
        root_ttl: Duration,
        intermediate_ttl: Duration,
        now: SystemTime,
    ) -> Result<Self, CaError> {
        let root = RootCa::generate(&options.trust_domain, root_ttl, now)
            .map_err(|e| CaError::Generate(e.message()))?;
        let intermediate = root
            .issue_intermediate(intermediate_ttl, now)
            .map_err(|e| CaError::Generate(e.message()))?;
        let (_, jwt_pkcs8) = JwtSigner::generate().map_err(|e| CaError::Jwt(e.to_string()))?;
        Ok(Self {
            root_cert_pem: root.cert_pem(),
            root_key_pem: root.key_pem(),
            intermediate_chain_pem: intermediate.cert_chain_pem(),
            intermediate_key_pem: intermediate.key_pem(),
            jwt_key_pem: lanyard_svid::pem::encode_private_key(&jwt_pkcs8),
        })
    }

    /// The root certificate (what `bundle.pem` holds).
    pub fn root_cert_pem(&self) -> &str {
        &self.root_cert_pem
    }

    /// The CA Secret the server reads with `--ca-secret`.
    pub fn secret(&self, options: &InstallOptions) -> Yaml {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        Yaml::from_json(&json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": CA_SECRET_NAME, "namespace": options.namespace, "labels": labels(SERVER_NAME)},
            "data": {
                SECRET_CERT_KEY: b64(&self.intermediate_chain_pem),
                SECRET_KEY_KEY: b64(&self.intermediate_key_pem),
                SECRET_JWT_KEY: b64(&self.jwt_key_pem),
            },
        }))
    }

    /// The bundle ConfigMap the server reads with `--bundle-configmap` and agents mount.
    pub fn configmap(&self, options: &InstallOptions) -> Yaml {
        Yaml::from_json(&json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": BUNDLE_CONFIGMAP_NAME, "namespace": options.namespace, "labels": labels(SERVER_NAME)},
            "data": {CONFIGMAP_BUNDLE_KEY: self.root_cert_pem},
        }))
    }

    /// Writes the root key (PKCS#8 PEM) to a new file with mode 0600; refuses to overwrite.
    pub fn write_root_key(&self, path: &Path) -> Result<(), CaError> {
        let err = |source| CaError::WriteRootKey {
            path: path.to_owned(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        file.write_all(self.root_key_pem.as_bytes()).map_err(err)?;
        file.sync_all().map_err(err)
    }
}
