//! The default redirect mode: what the installed Lanyard says, read from the ConfigMap
//! [`CONFIG_MAP`] (key [`REDIRECT_KEY`]) in the install namespace through the `kube` client,
//! as `lanyard install` wrote it (`cni` with `--cni`, else `init`).
//!
//! The client is configured as kubectl is (`KUBECONFIG`, `~/.kube/config`, or the in-cluster
//! service account), and every step is bounded by one timeout, so an unreachable cluster costs
//! at most that long. Anything short of a clear answer ([`ClusterError::is_fatal`] aside)
//! means the caller falls back to `init`, which works everywhere, and says why.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;

use super::RedirectMode;
use lanyard_redirect::UnknownRedirectMode;

/// The ConfigMap `lanyard install` renders in its namespace, and its key naming the redirect
/// mode (`cni` or `init`): the names the install side writes.
pub use crate::install::{CONFIG_MAP_NAME as CONFIG_MAP, CONFIG_REDIRECT_KEY as REDIRECT_KEY};
/// How long reading the cluster may take, all steps together.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the cluster gave no redirect mode.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no cluster configured ({0})")]
    NoConfig(String),
    #[error("the cluster did not answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("reading ConfigMap {namespace}/{CONFIG_MAP}: {message}")]
    Api { namespace: String, message: String },
    #[error(
        "ConfigMap {namespace}/{CONFIG_MAP} not found (Lanyard is not installed in namespace \
         {namespace}; --namespace names another)"
    )]
    NotInstalled { namespace: String },
    #[error("ConfigMap {namespace}/{CONFIG_MAP} has no key {REDIRECT_KEY}")]
    NoKey { namespace: String },
    #[error("ConfigMap {namespace}/{CONFIG_MAP}: {REDIRECT_KEY}: {message}; give --redirect")]
    BadValue { namespace: String, message: String },
}

impl ClusterError {
    /// An installed Lanyard whose configuration makes no sense: guessing could mesh pods the
    /// wrong way, so the command stops instead of falling back.
    pub fn is_fatal(&self) -> bool {
        matches!(self, ClusterError::BadValue { .. })
    }
}

/// The mode of the Lanyard installed in `namespace`.
pub async fn redirect_mode(
    namespace: &str,
    timeout: Duration,
) -> Result<RedirectMode, ClusterError> {
    match tokio::time::timeout(timeout, read(namespace, timeout)).await {
        Ok(result) => result,
        Err(_) => Err(ClusterError::Timeout(timeout)),
    }
}

async fn read(namespace: &str, timeout: Duration) -> Result<RedirectMode, ClusterError> {
    let mut config = kube::Config::infer()
        .await
        .map_err(|e| ClusterError::NoConfig(e.to_string()))?;
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    let client =
        kube::Client::try_from(config).map_err(|e| ClusterError::NoConfig(e.to_string()))?;
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, namespace);
    let config_map = api
        .get_opt(CONFIG_MAP)
        .await
        .map_err(|e| ClusterError::Api {
            namespace: namespace.to_owned(),
            message: e.to_string(),
        })?
        .ok_or_else(|| ClusterError::NotInstalled {
            namespace: namespace.to_owned(),
        })?;
    let value = config_map
        .data
        .as_ref()
        .and_then(|data| data.get(REDIRECT_KEY))
        .ok_or_else(|| ClusterError::NoKey {
            namespace: namespace.to_owned(),
        })?;
    value
        .trim()
        .parse()
        .map_err(|e: UnknownRedirectMode| ClusterError::BadValue {
            namespace: namespace.to_owned(),
            message: e.to_string(),
        })
}
