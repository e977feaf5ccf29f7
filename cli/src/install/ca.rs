//! The CA objects `lanyard install --include-ca` (and `--ca-only`) print: the CA Secret
//! (`kubernetes.io/tls` layout plus `jwt.key`) and the bundle ConfigMap (`bundle.pem`) of a
//! CA generated on the spot ([`GeneratedCa`], from [`crate::ca::material`], which `lanyard ca`
//! shares). Left out by default: applied with `kubectl apply`, the Secret's key would be
//! copied into its last-applied annotation, and a later apply of the ConfigMap would undo a
//! root rotation. `lanyard ca init` creates both directly instead.

use std::time::{Duration, SystemTime};

use base64::Engine;
use lanyard_ca_lifecycle::names::CONFIGMAP_BUNDLE_KEY;
use serde_json::{Map, Value, json};

pub use crate::ca::material::{
    DEFAULT_INTERMEDIATE_TTL, DEFAULT_ROOT_TTL, GeneratedCa, MaterialError,
};

use super::labels;
use super::{BUNDLE_CONFIGMAP_NAME, CA_SECRET_NAME, InstallOptions, SERVER_NAME};
use crate::yaml::Yaml;

impl GeneratedCa {
    /// A CA for `options`' trust domain (see [`GeneratedCa::new`]).
    pub fn generate(
        options: &InstallOptions,
        root_ttl: Duration,
        intermediate_ttl: Duration,
        now: SystemTime,
    ) -> Result<Self, MaterialError> {
        Self::new(&options.trust_domain, root_ttl, intermediate_ttl, now)
    }

    /// The CA Secret the server reads with `--ca-secret`.
    pub fn secret(&self, options: &InstallOptions) -> Yaml {
        let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
        let data: Map<String, Value> = self
            .secret_data()
            .0
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(b64(v))))
            .collect();
        Yaml::from_json(&json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": CA_SECRET_NAME, "namespace": options.namespace, "labels": labels(SERVER_NAME)},
            "data": data,
        }))
    }

    /// The bundle ConfigMap the server reads with `--bundle-configmap` and agents mount.
    pub fn configmap(&self, options: &InstallOptions) -> Yaml {
        Yaml::from_json(&json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": BUNDLE_CONFIGMAP_NAME, "namespace": options.namespace, "labels": labels(SERVER_NAME)},
            "data": {CONFIGMAP_BUNDLE_KEY: self.root_cert_pem()},
        }))
    }
}
