//! The CA as the cluster holds it: the Secret's signing material, the bundle's roots and the
//! rotation annotation, read together and checked ([`CaState`]); and a command's writes
//! ([`Write`]), applied in the order the command chose, each guarded by the `resourceVersion`
//! read, so no bundle ever lacks a root or key something signs with and no two operators
//! interleave.

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use lanyard_ca_lifecycle::names::{CONFIGMAP_BUNDLE_KEY, ROTATION_ANNOTATION};
use lanyard_ca_lifecycle::rotation::RotationState;
use lanyard_svid::TrustDomain;
use lanyard_svid::bundle::certificate_fingerprint;
use rustls::pki_types::CertificateDer;

use super::CaError;
use super::kube::{CaObjects, Cluster, KubeError, secret_data};
use super::material::{self, MaterialError, SecretData, bundle_pem, issued_by};

/// Why the cluster's CA cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "{what} not found: the cluster has no CA yet; create it with `lanyard ca new-root` and `lanyard ca init` (or have cert-manager write it), or give --namespace/--ca-secret/--bundle-configmap"
    )]
    Missing { what: String },
    #[error("{what} has no `{key}`")]
    MissingKey { what: String, key: &'static str },
    #[error("{0}")]
    Invalid(#[from] MaterialError),
    #[error("{what}: {source}")]
    Annotation {
        what: String,
        source: lanyard_ca_lifecycle::rotation::AnnotationError,
    },
}

/// The CA Secret and bundle ConfigMap, read and checked.
#[derive(Debug, Clone)]
pub struct CaState {
    pub objects: CaObjects,
    /// As read (its `resourceVersion` guards the write).
    pub secret: Secret,
    pub configmap: ConfigMap,
    pub data: SecretData,
    /// `bundle.pem`, in order.
    pub roots: Vec<CertificateDer<'static>>,
    pub trust_domain: TrustDomain,
    pub rotation: Option<RotationState>,
}

impl CaState {
    /// Reads both objects; either missing is [`StateError::Missing`].
    pub async fn read(cluster: &Cluster) -> Result<Self, CaError> {
        let objects = &cluster.objects;
        let configmap = cluster
            .get_configmap()
            .await?
            .ok_or_else(|| StateError::Missing {
                what: objects.configmap_ref(),
            })?;
        let secret = cluster
            .get_secret()
            .await?
            .ok_or_else(|| StateError::Missing {
                what: objects.secret_ref(),
            })?;
        Ok(Self::from_objects(objects.clone(), secret, configmap)?)
    }

    pub fn from_objects(
        objects: CaObjects,
        secret: Secret,
        configmap: ConfigMap,
    ) -> Result<Self, StateError> {
        let what = objects.configmap_ref();
        let pem = configmap
            .data
            .as_ref()
            .and_then(|d| d.get(CONFIGMAP_BUNDLE_KEY))
            .ok_or_else(|| StateError::MissingKey {
                what: what.clone(),
                key: CONFIGMAP_BUNDLE_KEY,
            })?;
        let (roots, trust_domain) =
            material::bundle_roots(&format!("{what} {CONFIGMAP_BUNDLE_KEY}"), pem)?;
        let rotation = configmap
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ROTATION_ANNOTATION))
            .map(|text| RotationState::from_annotation(text))
            .transpose()
            .map_err(|source| StateError::Annotation {
                what: format!("{what} annotation {ROTATION_ANNOTATION}"),
                source,
            })?;
        let data = secret_data(&secret);
        Ok(Self {
            objects,
            secret,
            configmap,
            data,
            roots,
            trust_domain,
            rotation,
        })
    }

    /// The fingerprints of the bundle's roots, in order.
    pub fn root_fingerprints(&self) -> Vec<String> {
        material::fingerprints(&self.roots)
    }

    pub fn has_root(&self, fingerprint: &str) -> bool {
        self.root_fingerprints().iter().any(|f| f == fingerprint)
    }

    /// The signing intermediate (the first certificate of `tls.crt`).
    pub fn intermediate(&self) -> Result<CertificateDer<'static>, MaterialError> {
        self.data.intermediate(&self.objects.secret_ref())
    }

    /// The fingerprint of the bundle root the Secret's `tls.crt` chains to: the root that
    /// signed its last certificate. `None` when no root of the bundle did.
    pub fn signing_root(&self) -> Option<String> {
        signing_root(&self.data, &self.roots)
    }

    /// The ConfigMap as read, with `roots` as `bundle.pem` and `rotation` as the annotation
    /// (removed when `None`).
    pub fn configmap_with(
        &self,
        roots: &[CertificateDer<'_>],
        rotation: Option<&RotationState>,
    ) -> ConfigMap {
        let mut configmap = self.configmap.clone();
        configmap
            .data
            .get_or_insert_with(Default::default)
            .insert(CONFIGMAP_BUNDLE_KEY.to_owned(), bundle_pem(roots));
        let annotations = configmap
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        match rotation {
            Some(state) => {
                annotations.insert(ROTATION_ANNOTATION.to_owned(), state.to_annotation());
            }
            None => {
                annotations.remove(ROTATION_ANNOTATION);
            }
        }
        configmap
    }
}

/// The fingerprint of the root in `roots` that the last certificate of `data`'s `tls.crt`
/// was issued by.
pub fn signing_root(data: &SecretData, roots: &[CertificateDer<'_>]) -> Option<String> {
    let pem = data.get(lanyard_ca_lifecycle::names::SECRET_CERT_KEY)?;
    let chain = lanyard_svid::bundle::certificates_from_pem(pem).ok()?;
    let last = chain.last()?;
    roots
        .iter()
        .find(|root| issued_by(last, root))
        .map(|root| certificate_fingerprint(root))
}

/// One write of a command, applied in order by [`apply`].
#[derive(Debug, Clone)]
pub enum Write {
    /// The Secret's data, whole.
    Secret(SecretData),
    /// `bundle.pem` and the rotation annotation.
    Bundle {
        roots: Vec<CertificateDer<'static>>,
        rotation: Option<RotationState>,
    },
}

impl Write {
    fn describe(&self, objects: &CaObjects) -> String {
        match self {
            Write::Secret(_) => format!("{} was written", objects.secret_ref()),
            Write::Bundle { .. } => format!("{} was written", objects.configmap_ref()),
        }
    }
}

/// Applies `writes` in order against the objects as `state` read them. A write refused after
/// an earlier one succeeded is [`CaError::Incomplete`], which says what was written.
pub async fn apply(cluster: &Cluster, state: &CaState, writes: &[Write]) -> Result<(), CaError> {
    for (done, write) in writes.iter().enumerate() {
        let result: Result<(), KubeError> = match write {
            Write::Secret(data) => cluster.replace_secret(&state.secret, data).await,
            Write::Bundle { roots, rotation } => {
                cluster
                    .replace_configmap(&state.configmap_with(roots, rotation.as_ref()))
                    .await
            }
        };
        if let Err(failed) = result {
            if done == 0 {
                return Err(failed.into());
            }
            let done: Vec<String> = writes[..done]
                .iter()
                .map(|w| w.describe(&state.objects))
                .collect();
            return Err(CaError::Incomplete {
                done: done.join(", "),
                failed: Box::new(failed),
                next: "What was written is safe on its own; run the same command again to complete it (`lanyard ca status` shows where the CA stands)".to_owned(),
            });
        }
    }
    Ok(())
}
