//! Cluster mode's CA: the issuing intermediate from a `kubernetes.io/tls` Secret and the trust
//! anchors from a ConfigMap, both watched, so a rotated intermediate or a new root is picked up
//! by every replica without a restart. The server never creates a CA here: a missing Secret is
//! a startup error naming it.
//!
//! Secret keys: `tls.crt` (the intermediate, optionally followed by more of its chain),
//! `tls.key` (its key), and `jwt.key` (the PKCS#8 PEM key that signs JWT-SVIDs, shared by all
//! replicas so any of them can mint tokens the same bundle validates). `lanyard install`
//! writes all three; a cert-manager-issued Secret needs `jwt.key` added.
//! ConfigMap key: `bundle.pem`, one or more root certificates.

use std::sync::Arc;
use std::time::SystemTime;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::watcher;
use kube::{Api, Client};
use lanyard_svid::TrustDomain;
use lanyard_svid::bundle::certificates_from_pem;
use lanyard_svid::ca::Issuer;
use lanyard_svid::jwt::JwtSigner;
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;

use crate::authority::{Authority, SigningMaterial};
use crate::config::ObjectRef;

pub const SECRET_CERT_KEY: &str = "tls.crt";
pub const SECRET_KEY_KEY: &str = "tls.key";
pub const SECRET_JWT_KEY: &str = "jwt.key";
pub const CONFIGMAP_BUNDLE_KEY: &str = "bundle.pem";

#[derive(Debug, thiserror::Error)]
pub enum CaSourceError {
    #[error(
        "Secret {0} not found; create it (`lanyard install` does) — the server never makes a CA in cluster mode"
    )]
    SecretMissing(ObjectRef),
    #[error("ConfigMap {0} not found; it must hold the trust anchors under `bundle.pem`")]
    ConfigMapMissing(ObjectRef),
    #[error("reading {what} {object}: {source}")]
    Api {
        what: &'static str,
        object: ObjectRef,
        source: Box<kube::Error>,
    },
    #[error("Secret {0} has no `{1}`")]
    MissingKey(ObjectRef, &'static str),
    #[error("ConfigMap {0} has no `bundle.pem`")]
    MissingBundle(ObjectRef),
    #[error("Secret {0}: {1}")]
    BadSecret(ObjectRef, String),
    #[error("ConfigMap {0}: {1}")]
    BadBundle(ObjectRef, String),
    #[error("{0}")]
    Install(#[from] crate::authority::InstallError),
}

/// Where cluster mode's CA comes from.
#[derive(Clone)]
pub struct KubeCaSource {
    pub client: Client,
    pub trust_domain: TrustDomain,
    pub secret: ObjectRef,
    pub configmap: ObjectRef,
}

impl KubeCaSource {
    /// Reads both objects and builds the signing material.
    pub async fn load(&self) -> Result<SigningMaterial, CaSourceError> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.secret.namespace);
        let secret = secrets
            .get_opt(&self.secret.name)
            .await
            .map_err(|source| CaSourceError::Api {
                what: "Secret",
                object: self.secret.clone(),
                source: Box::new(source),
            })?
            .ok_or_else(|| CaSourceError::SecretMissing(self.secret.clone()))?;
        let maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.configmap.namespace);
        let configmap = maps
            .get_opt(&self.configmap.name)
            .await
            .map_err(|source| CaSourceError::Api {
                what: "ConfigMap",
                object: self.configmap.clone(),
                source: Box::new(source),
            })?
            .ok_or_else(|| CaSourceError::ConfigMapMissing(self.configmap.clone()))?;
        self.material(&secret, &configmap)
    }

    fn material(
        &self,
        secret: &Secret,
        configmap: &ConfigMap,
    ) -> Result<SigningMaterial, CaSourceError> {
        let field = |key: &'static str| -> Result<String, CaSourceError> {
            let bytes = secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .ok_or_else(|| CaSourceError::MissingKey(self.secret.clone(), key))?;
            String::from_utf8(bytes.0.clone()).map_err(|_| {
                CaSourceError::BadSecret(self.secret.clone(), format!("`{key}` is not text"))
            })
        };
        let bad_secret = |m: String| CaSourceError::BadSecret(self.secret.clone(), m);
        let cert = field(SECRET_CERT_KEY)?;
        let key = zeroize::Zeroizing::new(field(SECRET_KEY_KEY)?);
        let jwt_pem = zeroize::Zeroizing::new(field(SECRET_JWT_KEY)?);
        let issuer = Issuer::from_pem(&self.trust_domain, &cert, &key)
            .map_err(|e| bad_secret(e.message()))?;
        let jwt_der = PrivatePkcs8KeyDer::from_pem_slice(jwt_pem.as_bytes())
            .map_err(|_| bad_secret(format!("`{SECRET_JWT_KEY}` is not a PKCS#8 PEM key")))?;
        let jwt = JwtSigner::from_pkcs8(jwt_der.secret_pkcs8_der())
            .map_err(|e| bad_secret(e.to_string()))?;
        let bundle_pem = configmap
            .data
            .as_ref()
            .and_then(|d| d.get(CONFIGMAP_BUNDLE_KEY))
            .ok_or_else(|| CaSourceError::MissingBundle(self.configmap.clone()))?;
        let roots = certificates_from_pem(bundle_pem.as_bytes())
            .map_err(|e| CaSourceError::BadBundle(self.configmap.clone(), e.to_string()))?;
        Ok(SigningMaterial { issuer, roots, jwt })
    }

    /// Loads and installs the CA once (failing startup if that fails), then watches both
    /// objects and re-installs on every change until the task is dropped. A bad update is
    /// logged and the material in force stays.
    pub async fn start(
        self,
        authority: Arc<Authority>,
    ) -> Result<tokio::task::JoinHandle<()>, CaSourceError> {
        let material = self.load().await?;
        authority.install(material, SystemTime::now())?;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.secret.namespace);
        let maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.configmap.namespace);
        let secret_changes =
            Box::pin(watcher::watch_object(secrets, &self.secret.name).map(|_| ()));
        let map_changes = Box::pin(watcher::watch_object(maps, &self.configmap.name).map(|_| ()));
        let mut changes = futures::stream::select(secret_changes, map_changes);
        Ok(tokio::spawn(async move {
            while changes.next().await.is_some() {
                match self.load().await {
                    Ok(material) => match authority.install(material, SystemTime::now()) {
                        Ok(bundle) => tracing::info!(
                            sequence = bundle.sequence(),
                            "CA material reloaded from the cluster"
                        ),
                        Err(e) => {
                            tracing::error!(error = %e, "new CA material refused; keeping the current one")
                        }
                    },
                    Err(e) => {
                        tracing::error!(error = %e, "CA reload failed; keeping the current material")
                    }
                }
            }
        }))
    }
}
