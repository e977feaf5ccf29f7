//! The CA's objects in the cluster, through the `kube` client configured as kubectl is
//! (`KUBECONFIG`, `~/.kube/config`, or the in-cluster service account), as `lanyard inject`
//! reads `lanyard-config`: the CA Secret, the bundle ConfigMap, and the replicas' report
//! ConfigMaps (label `lanyard.dev/ca-report=true`).
//!
//! Every call is bounded by one timeout (10 s by default) and an error names the API server.
//! Writes replace an object read before, carrying its `resourceVersion`, so a change made by
//! someone else in between is a conflict, never silently overwritten.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use lanyard_ca_lifecycle::names::{REPORT_DATA_KEY, REPORT_LABEL};
use lanyard_ca_lifecycle::report::ReplicaReport;

use super::material::SecretData;

/// The default bound on each API call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the CA lives: `--namespace`, `--ca-secret`, `--bundle-configmap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaObjects {
    pub namespace: String,
    pub secret: String,
    pub configmap: String,
}

impl CaObjects {
    pub fn secret_ref(&self) -> String {
        format!("Secret {}/{}", self.namespace, self.secret)
    }

    pub fn configmap_ref(&self) -> String {
        format!("ConfigMap {}/{}", self.namespace, self.configmap)
    }
}

/// Why the cluster did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("no cluster configured ({0}); set KUBECONFIG")]
    NoConfig(String),
    #[error("{what}: the API server {server} did not answer within {}", humantime::format_duration(*.timeout))]
    Timeout {
        server: String,
        what: String,
        timeout: Duration,
    },
    #[error("{what}: not allowed by the API server {server} ({message})")]
    Forbidden {
        server: String,
        what: String,
        message: String,
    },
    #[error("{what}: {message} (API server {server})")]
    Api {
        server: String,
        what: String,
        message: String,
    },
    #[error(
        "{what}: changed by someone else since it was read; nothing more was written. Check `lanyard ca status` and run the command again"
    )]
    Conflict { what: String },
    #[error("{what}: already exists")]
    AlreadyExists { what: String },
    #[error("{what}: not found (API server {server})")]
    NotFound { server: String, what: String },
}

/// A connection to the cluster holding the CA.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    server: String,
    timeout: Duration,
    pub objects: CaObjects,
}

impl Cluster {
    /// A client as kubectl would configure it, each call bounded by `timeout`.
    pub async fn connect(objects: CaObjects, timeout: Duration) -> Result<Self, KubeError> {
        let config = tokio::time::timeout(timeout, kube::Config::infer())
            .await
            .map_err(|_| KubeError::NoConfig("reading the configuration timed out".into()))?
            .map_err(|e| KubeError::NoConfig(e.to_string()))?;
        Self::from_config(config, objects, timeout)
    }

    /// A client from an explicit configuration (tests).
    pub fn from_config(
        mut config: kube::Config,
        objects: CaObjects,
        timeout: Duration,
    ) -> Result<Self, KubeError> {
        let server = config.cluster_url.to_string();
        config.connect_timeout = Some(timeout);
        config.read_timeout = Some(timeout);
        config.write_timeout = Some(timeout);
        let client = Client::try_from(config).map_err(|e| KubeError::NoConfig(e.to_string()))?;
        Ok(Self {
            client,
            server,
            timeout,
            objects,
        })
    }

    /// The API server's URL, for messages.
    pub fn server(&self) -> &str {
        &self.server
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.objects.namespace)
    }

    fn configmaps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.objects.namespace)
    }

    /// The client, for other reads made with the same configuration (`lanyard identities`).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Runs one API call bounded by the timeout; an error names `what` and the API server.
    pub async fn call<T>(
        &self,
        what: String,
        call: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, KubeError> {
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(KubeError::Timeout {
                server: self.server.clone(),
                what,
                timeout: self.timeout,
            }),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(kube::Error::Api(status))) => Err(match status.code {
                409 if status.reason == "AlreadyExists" => KubeError::AlreadyExists { what },
                409 => KubeError::Conflict { what },
                404 => KubeError::NotFound {
                    server: self.server.clone(),
                    what: format!("{what} ({})", status.message),
                },
                401 | 403 => KubeError::Forbidden {
                    server: self.server.clone(),
                    what,
                    message: status.message,
                },
                _ => KubeError::Api {
                    server: self.server.clone(),
                    what,
                    message: status.message,
                },
            }),
            Ok(Err(e)) => Err(KubeError::Api {
                server: self.server.clone(),
                what,
                message: e.to_string(),
            }),
        }
    }

    pub async fn get_secret(&self) -> Result<Option<Secret>, KubeError> {
        let what = format!("reading {}", self.objects.secret_ref());
        self.call(what, self.secrets().get_opt(&self.objects.secret))
            .await
    }

    pub async fn get_configmap(&self) -> Result<Option<ConfigMap>, KubeError> {
        let what = format!("reading {}", self.objects.configmap_ref());
        self.call(what, self.configmaps().get_opt(&self.objects.configmap))
            .await
    }

    /// Creates the CA Secret (`kubernetes.io/tls`) with `data`; refuses if it exists.
    pub async fn create_secret(&self, data: &SecretData) -> Result<(), KubeError> {
        let secret = Secret {
            metadata: self.metadata(&self.objects.secret),
            type_: Some("kubernetes.io/tls".into()),
            data: Some(to_secret_data(data)),
            ..Secret::default()
        };
        let what = format!("creating {}", self.objects.secret_ref());
        self.call(what, self.secrets().create(&PostParams::default(), &secret))
            .await
            .map(drop)
    }

    /// Creates the bundle ConfigMap with `data`; refuses if it exists.
    pub async fn create_configmap(&self, data: BTreeMap<String, String>) -> Result<(), KubeError> {
        let configmap = ConfigMap {
            metadata: self.metadata(&self.objects.configmap),
            data: Some(data),
            ..ConfigMap::default()
        };
        let what = format!("creating {}", self.objects.configmap_ref());
        self.call(
            what,
            self.configmaps().create(&PostParams::default(), &configmap),
        )
        .await
        .map(drop)
    }

    fn metadata(&self, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.objects.namespace.clone()),
            labels: Some(
                [
                    ("app.kubernetes.io/name", crate::install::SERVER_NAME),
                    ("app.kubernetes.io/part-of", "lanyard"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ),
            ..ObjectMeta::default()
        }
    }

    /// Replaces the Secret as read (its `resourceVersion` kept) with `data`.
    pub async fn replace_secret(&self, read: &Secret, data: &SecretData) -> Result<(), KubeError> {
        let mut secret = read.clone();
        secret.data = Some(to_secret_data(data));
        secret.string_data = None;
        let what = format!("writing {}", self.objects.secret_ref());
        self.call(
            what,
            self.secrets()
                .replace(&self.objects.secret, &PostParams::default(), &secret),
        )
        .await
        .map(drop)
    }

    /// Replaces the ConfigMap as read (its `resourceVersion` kept).
    pub async fn replace_configmap(&self, configmap: &ConfigMap) -> Result<(), KubeError> {
        let what = format!("writing {}", self.objects.configmap_ref());
        self.call(
            what,
            self.configmaps()
                .replace(&self.objects.configmap, &PostParams::default(), configmap),
        )
        .await
        .map(drop)
    }

    /// Every replica's report in the namespace; unreadable ones are named in the second list.
    pub async fn reports(&self) -> Result<(Vec<ReplicaReport>, Vec<String>), KubeError> {
        let what = format!(
            "listing ConfigMaps {REPORT_LABEL}=true in namespace {}",
            self.objects.namespace
        );
        let list = self
            .call(
                what,
                self.configmaps()
                    .list(&ListParams::default().labels(&format!("{REPORT_LABEL}=true"))),
            )
            .await?;
        let (mut reports, mut unreadable) = (Vec::new(), Vec::new());
        for cm in list.items {
            let name = cm.metadata.name.clone().unwrap_or_default();
            match cm
                .data
                .as_ref()
                .and_then(|d| d.get(REPORT_DATA_KEY))
                .map(|text| ReplicaReport::from_json(text))
            {
                Some(Ok(report)) => reports.push(report),
                Some(Err(e)) => unreadable.push(format!("report ConfigMap {name}: {e}")),
                None => unreadable.push(format!("report ConfigMap {name}: no {REPORT_DATA_KEY}")),
            }
        }
        Ok((reports, unreadable))
    }
}

fn to_secret_data(data: &SecretData) -> BTreeMap<String, ByteString> {
    data.0
        .iter()
        .map(|(k, v)| (k.clone(), ByteString(v.clone())))
        .collect()
}

/// A Secret's data as [`SecretData`] (`stringData` is write-only and never read back).
pub fn secret_data(secret: &Secret) -> SecretData {
    SecretData(
        secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect(),
    )
}
