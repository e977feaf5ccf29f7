//! Cluster mode's CA: the issuing intermediate from a `kubernetes.io/tls` Secret and the trust
//! anchors from a ConfigMap, both watched, so a re-issued intermediate, a new root or a root
//! rotation's next step is picked up by every replica without a restart. The server never
//! creates a CA here: a missing Secret is a startup error naming it.
//!
//! The keys are [`lanyard_ca_lifecycle::names`]'s. The CA Secret: `tls.crt` (the intermediate,
//! optionally followed by more of its chain), `tls.key` (its key, PKCS#8 or SEC1 PEM),
//! `jwt.key` (the ECDSA P-256 key that signs JWT-SVIDs, shared by all replicas so any of them
//! mints tokens the same bundle validates), and during a root rotation `jwt-next.key` /
//! `jwt-previous.key`, whose public halves are published in the bundle and never sign.
//! The bundle ConfigMap: `bundle.pem`, one or more root certificates.
//!
//! cert-manager: a Certificate's Secret has `tls.crt`, `tls.key` and `ca.crt` and cannot
//! carry `jwt.key`. With `--ca-jwt-secret` the signing JWT key comes from that Secret instead:
//! its `jwt.key`, or else its `tls.key` (a second cert-manager Certificate, ECDSA P-256, used
//! only for its key). It is watched like the others; `jwt-next.key` / `jwt-previous.key` are
//! published from either Secret.

use std::sync::Arc;
use std::time::SystemTime;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::watcher;
use kube::{Api, Client};
use lanyard_ca_lifecycle::names::{
    CONFIGMAP_BUNDLE_KEY, SECRET_CERT_KEY, SECRET_JWT_KEY, SECRET_JWT_NEXT_KEY,
    SECRET_JWT_PREVIOUS_KEY, SECRET_KEY_KEY,
};
use lanyard_svid::bundle::certificates_from_pem;
use lanyard_svid::ca::Issuer;
use lanyard_svid::jwt::JwtSigner;
use lanyard_svid::keys::{KeyAlgorithm, pkcs8_from_pem};
use lanyard_svid::{JwtAuthority, TrustDomain};
use zeroize::Zeroizing;

use crate::authority::{Authority, SigningMaterial};
use crate::config::ObjectRef;

#[derive(Debug, thiserror::Error)]
pub enum CaSourceError {
    #[error(
        "Secret {0} not found; create it (`lanyard ca init` does, or cert-manager) — the server never makes a CA in cluster mode"
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
    #[error("Secret {0} has neither `{SECRET_JWT_KEY}` nor `{SECRET_KEY_KEY}` for the JWT key")]
    MissingJwtKey(ObjectRef),
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
    /// `--ca-jwt-secret`: the Secret holding the JWT signing key, when `secret` cannot
    /// (cert-manager).
    pub jwt_secret: Option<ObjectRef>,
}

/// One Secret's `data`, read by key.
struct SecretData<'a> {
    object: &'a ObjectRef,
    secret: &'a Secret,
}

impl SecretData<'_> {
    /// The text under `key`, if there is one.
    fn text(&self, key: &'static str) -> Result<Option<Zeroizing<String>>, CaSourceError> {
        let Some(bytes) = self.secret.data.as_ref().and_then(|d| d.get(key)) else {
            return Ok(None);
        };
        String::from_utf8(bytes.0.clone())
            .map(|s| Some(Zeroizing::new(s)))
            .map_err(|e| {
                // The bytes are key material: wipe them, never print them.
                drop(Zeroizing::new(e.into_bytes()));
                self.bad(format!("`{key}` is not text"))
            })
    }

    fn required(&self, key: &'static str) -> Result<Zeroizing<String>, CaSourceError> {
        self.text(key)?
            .ok_or_else(|| CaSourceError::MissingKey(self.object.clone(), key))
    }

    fn bad(&self, message: String) -> CaSourceError {
        CaSourceError::BadSecret(self.object.clone(), message)
    }

    /// The JWT key under `key` (ECDSA P-256, PKCS#8 or SEC1 PEM), if there is one.
    fn jwt_signer(&self, key: &'static str) -> Result<Option<JwtSigner>, CaSourceError> {
        let Some(pem) = self.text(key)? else {
            return Ok(None);
        };
        let pkcs8 = pkcs8_from_pem(&pem, KeyAlgorithm::EcdsaP256)
            .map_err(|e| self.bad(format!("`{key}`: {}", e.message())))?;
        JwtSigner::from_pkcs8(&pkcs8)
            .map(Some)
            .map_err(|e| self.bad(format!("`{key}`: {e} (PKCS#8 or SEC1 PEM)")))
    }

    /// The public halves of `jwt-next.key` and `jwt-previous.key`, those present.
    fn published_jwt(&self) -> Result<Vec<JwtAuthority>, CaSourceError> {
        let mut published = Vec::new();
        for key in [SECRET_JWT_NEXT_KEY, SECRET_JWT_PREVIOUS_KEY] {
            if let Some(signer) = self.jwt_signer(key)? {
                published.push(signer.authority());
            }
        }
        Ok(published)
    }
}

impl KubeCaSource {
    async fn get_secret(&self, object: &ObjectRef) -> Result<Secret, CaSourceError> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &object.namespace);
        secrets
            .get_opt(&object.name)
            .await
            .map_err(|source| CaSourceError::Api {
                what: "Secret",
                object: object.clone(),
                source: Box::new(source),
            })?
            .ok_or_else(|| CaSourceError::SecretMissing(object.clone()))
    }

    /// Reads the objects and builds the signing material.
    pub async fn load(&self) -> Result<SigningMaterial, CaSourceError> {
        let secret = self.get_secret(&self.secret).await?;
        let jwt_secret = match &self.jwt_secret {
            Some(object) => Some(self.get_secret(object).await?),
            None => None,
        };
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
        self.material(&secret, jwt_secret.as_ref(), &configmap)
    }

    fn material(
        &self,
        secret: &Secret,
        jwt_secret: Option<&Secret>,
        configmap: &ConfigMap,
    ) -> Result<SigningMaterial, CaSourceError> {
        let ca = SecretData {
            object: &self.secret,
            secret,
        };
        let cert = ca.required(SECRET_CERT_KEY)?;
        let key = ca.required(SECRET_KEY_KEY)?;
        let issuer =
            Issuer::from_pem(&self.trust_domain, &cert, &key).map_err(|e| ca.bad(e.message()))?;
        let mut published_jwt = ca.published_jwt()?;
        let jwt = match (&self.jwt_secret, jwt_secret) {
            (Some(object), Some(secret)) => {
                let jwt = SecretData { object, secret };
                published_jwt.extend(jwt.published_jwt()?);
                match jwt.jwt_signer(SECRET_JWT_KEY)? {
                    Some(signer) => signer,
                    None => jwt
                        .jwt_signer(SECRET_KEY_KEY)?
                        .ok_or_else(|| CaSourceError::MissingJwtKey(object.clone()))?,
                }
            }
            _ => ca
                .jwt_signer(SECRET_JWT_KEY)?
                .ok_or_else(|| CaSourceError::MissingKey(self.secret.clone(), SECRET_JWT_KEY))?,
        };
        let mut seen = std::collections::HashSet::new();
        published_jwt.retain(|a| a.key_id != jwt.key_id() && seen.insert(a.key_id.clone()));
        let bundle_pem = configmap
            .data
            .as_ref()
            .and_then(|d| d.get(CONFIGMAP_BUNDLE_KEY))
            .ok_or_else(|| CaSourceError::MissingBundle(self.configmap.clone()))?;
        let roots = certificates_from_pem(bundle_pem.as_bytes())
            .map_err(|e| CaSourceError::BadBundle(self.configmap.clone(), e.to_string()))?;
        Ok(SigningMaterial {
            issuer,
            roots,
            jwt,
            published_jwt,
        })
    }

    /// Loads and installs the CA once (failing startup if that fails), then watches the
    /// objects and re-installs on every change until the task is dropped. A bad update is
    /// logged and the material in force stays.
    pub async fn start(
        self,
        authority: Arc<Authority>,
    ) -> Result<tokio::task::JoinHandle<()>, CaSourceError> {
        let material = self.load().await?;
        authority.install(material, SystemTime::now())?;
        let watch_secret = |object: &ObjectRef| {
            let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &object.namespace);
            watcher::watch_object(secrets, &object.name)
                .map(|_| ())
                .boxed()
        };
        let maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.configmap.namespace);
        let mut changes = futures::stream::select_all(
            [
                Some(watch_secret(&self.secret)),
                self.jwt_secret.as_ref().map(watch_secret),
                Some(
                    watcher::watch_object(maps, &self.configmap.name)
                        .map(|_| ())
                        .boxed(),
                ),
            ]
            .into_iter()
            .flatten(),
        );
        Ok(tokio::spawn(async move {
            while changes.next().await.is_some() {
                match self.load().await {
                    Ok(material) => match authority.install(material, SystemTime::now()) {
                        Ok(bundle) => tracing::info!(
                            sequence = bundle.sequence(),
                            version = %bundle.version(),
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
