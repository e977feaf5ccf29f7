//! `lanyard ca new-root` writes a new root to two new files (the key 0600), touching no
//! cluster; `lanyard ca init` creates the cluster's CA from a root: the bundle ConfigMap
//! (`bundle.pem` = the root) and the CA Secret (a new intermediate under it and a new JWT
//! key), directly through the API, refusing when either exists. An `init` interrupted between
//! its two creations (the ConfigMap holding exactly this root, no annotation, no Secret) is
//! completed by running it again.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use lanyard_ca_lifecycle::names::{CONFIGMAP_BUNDLE_KEY, ROTATION_ANNOTATION};
use lanyard_ca_lifecycle::report::CertSummary;
use lanyard_svid::TrustDomain;

use super::material::{self, RootWithKey, first_secret, format_time};
use super::{CaError, Cluster, Refused};

/// `lanyard ca new-root`: generates a root for `td` valid `ttl` from `now`, writes its
/// certificate to `cert` and key to `key` (both new files). Returns what to tell the user.
pub fn new_root(
    td: &TrustDomain,
    cert: &Path,
    key: &Path,
    ttl: Duration,
    now: SystemTime,
) -> Result<String, CaError> {
    let root = material::generate_root(td, ttl, now)?;
    material::write_new_root(&root, cert, key)?;
    let summary = CertSummary::of(root.cert_der());
    Ok(format!(
        "wrote root {} ({}, trust domain {td}, expires {}) to {}, its key to {} (mode 0600).\n\
         Keep the key offline: it is needed only to issue intermediates. Next: `lanyard ca init \
         --root-cert {} --root-key {}` (first CA) or `lanyard ca rotate-root add --root-cert {}` \
         (a rotation).\n",
        summary.short(),
        summary.subject,
        format_time(summary.not_after),
        cert.display(),
        key.display(),
        cert.display(),
        key.display(),
        cert.display(),
    ))
}

/// `lanyard ca init`.
pub async fn init(
    cluster: &Cluster,
    root_cert: &Path,
    root_key: &Path,
    intermediate_ttl: Duration,
    now: SystemTime,
) -> Result<String, CaError> {
    let root = RootWithKey::read(root_cert, root_key, now)?;
    let objects = &cluster.objects;
    if cluster.get_secret().await?.is_some() {
        return Err(Refused::CaExists {
            what: objects.secret_ref(),
        }
        .into());
    }
    let root_pem = root.cert.pem();
    let resume = match cluster.get_configmap().await? {
        None => false,
        Some(cm) if is_interrupted_init(&cm, &root_pem) => true,
        Some(_) => {
            return Err(Refused::CaExists {
                what: objects.configmap_ref(),
            }
            .into());
        }
    };
    let secret = first_secret(&root.ca, intermediate_ttl, now)?;
    let intermediate = CertSummary::of(&secret.intermediate("the new Secret")?);
    if !resume {
        cluster
            .create_configmap(BTreeMap::from([(
                CONFIGMAP_BUNDLE_KEY.to_owned(),
                root_pem.clone(),
            )]))
            .await?;
    }
    cluster
        .create_secret(&secret)
        .await
        .map_err(|failed| CaError::Incomplete {
            done: format!("{} was created", objects.configmap_ref()),
            failed: Box::new(failed),
            next: "Run the same `lanyard ca init` again to create the Secret".to_owned(),
        })?;
    Ok(format!(
        "created {} (root {}, trust domain {}) and {} (intermediate {}, expires {}; a new JWT key).\n",
        objects.configmap_ref(),
        root.cert.summary.short(),
        root.cert.trust_domain,
        objects.secret_ref(),
        intermediate.short(),
        format_time(intermediate.not_after),
    ))
}

/// A bundle ConfigMap an earlier `init` with this root created before its Secret failed.
fn is_interrupted_init(cm: &k8s_openapi::api::core::v1::ConfigMap, root_pem: &str) -> bool {
    let bundle = cm.data.as_ref().and_then(|d| d.get(CONFIGMAP_BUNDLE_KEY));
    let annotated = cm
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(ROTATION_ANNOTATION));
    bundle.map(String::as_str) == Some(root_pem) && !annotated
}
