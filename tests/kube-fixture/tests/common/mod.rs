//! Helpers shared by the fixture's integration tests: start a fixture, wait for conditions
//! with a deadline, read API errors.

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_fixture::{FixtureOptions, KubeFixture};

/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Starts a fixture with short bookmark intervals, after installing the ring provider.
pub async fn start() -> KubeFixture {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    KubeFixture::start(FixtureOptions {
        bookmark_interval: Duration::from_millis(200),
        ..FixtureOptions::default()
    })
    .await
    .expect("fixture starts")
}

/// Awaits `fut`, failing the test if it takes longer than [`DEADLINE`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The `metav1.Status` of a failed kube call (panics if the call succeeded or failed
/// otherwise).
pub fn api_status<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> kube::core::Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// A pod object in `ns` scheduled to `node` with `labels`.
pub fn pod(ns: &str, name: &str, node: &str, labels: &[(&str, &str)]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            service_account_name: Some("default".into()),
            containers: vec![Default::default()],
            ..Default::default()
        }),
        status: None,
    }
}
