//! The pod lookup: one `GET` of the pod through the real `kube` client, configured by the
//! kubeconfig the installer wrote, the whole lookup (connecting included) bounded by the
//! configuration's timeout. The plugin is a short-lived process, so the lookup runs on a
//! runtime of its own that ends with it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Why the pod could not be looked up.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("reading the kubeconfig {path}: {reason}")]
    Kubeconfig { path: PathBuf, reason: String },
    #[error("the pod lookup took longer than {0:?}: is the API server reachable from the node?")]
    Timeout(Duration),
    #[error("pod {namespace}/{name} is not in the API (yet?)")]
    NotFound { namespace: String, name: String },
    #[error("getting pod {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("starting the lookup's runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl LookupError {
    /// Whether trying again later may succeed (the API server unreachable or slow, the pod not
    /// yet visible); a kubeconfig that cannot be used, or whose identity the API server
    /// refuses (401, 403: the token or the RBAC is wrong), will not fix itself.
    pub fn is_transient(&self) -> bool {
        match self {
            LookupError::Kubeconfig { .. } => false,
            LookupError::Api {
                source: kube::Error::Api(status),
                ..
            } => !matches!(status.code, 401 | 403),
            _ => true,
        }
    }
}

/// Gets `namespace/name` with the client `kubeconfig` describes, within `timeout`.
pub fn get_pod(
    kubeconfig: &Path,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<Pod, LookupError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(LookupError::Runtime)?;
    let kubeconfig_error = |reason: String| LookupError::Kubeconfig {
        path: kubeconfig.to_owned(),
        reason,
    };
    let file = Kubeconfig::read_from(kubeconfig).map_err(|e| kubeconfig_error(e.to_string()))?;
    runtime.block_on(async {
        let lookup = async {
            let mut config =
                kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| kubeconfig_error(e.to_string()))?;
            config.connect_timeout = Some(timeout);
            config.read_timeout = Some(timeout);
            let client =
                kube::Client::try_from(config).map_err(|e| kubeconfig_error(e.to_string()))?;
            let pods: kube::Api<Pod> = kube::Api::namespaced(client, namespace);
            match pods.get_opt(name).await {
                Ok(Some(pod)) => Ok(pod),
                Ok(None) => Err(LookupError::NotFound {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                }),
                Err(source) => Err(LookupError::Api {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    source,
                }),
            }
        };
        tokio::time::timeout(timeout, lookup)
            .await
            .map_err(|_| LookupError::Timeout(timeout))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_kubeconfig_is_not_transient() {
        let err = get_pod(
            Path::new("/nonexistent/kubeconfig"),
            "default",
            "p",
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(err, LookupError::Kubeconfig { .. }), "{err}");
        assert!(!err.is_transient());
        assert!(err.to_string().contains("/nonexistent/kubeconfig"), "{err}");
    }

    /// A server that accepts and never answers: the lookup ends at the timeout.
    #[test]
    fn an_api_server_that_never_answers_times_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: \
                 https://{addr}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  \
                 user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: c\n    \
                 user: u\ncurrent-context: x\n"
            ),
        )
        .unwrap();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let started = std::time::Instant::now();
        let err = get_pod(&path, "default", "p", Duration::from_millis(300)).unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5), "{err}");
        drop(listener);
    }
}
