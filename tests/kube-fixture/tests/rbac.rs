//! RBAC through the real `kube` client: rules loaded from YAML allow exactly what they name
//! (resourceNames, verbs, namespaces) and everything else is a 403 like the API server's.

mod common;

use std::collections::BTreeMap;

use common::{api_status, pod, start, within};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, ResourceExt as _};
use kube_fixture::KubeFixture;
use serde_json::json;

/// A server-like identity: reads one named Secret in its namespace, watches pods everywhere,
/// and may only read ConfigMaps in `lanyard` through a ClusterRole bound by a RoleBinding.
const RBAC: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata:
  name: server
  namespace: lanyard
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: ca-secret-reader
  namespace: lanyard
rules:
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: ["lanyard-ca"]
  verbs: ["get", "list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: server-ca
  namespace: lanyard
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: ca-secret-reader
subjects:
- kind: ServiceAccount
  name: server
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: pod-reader
rules:
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: server-pods
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: pod-reader
subjects:
- kind: ServiceAccount
  name: server
  namespace: lanyard
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: configmap-reader
rules:
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: server-configmaps
  namespace: lanyard
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: configmap-reader
subjects:
- kind: ServiceAccount
  name: server
  namespace: lanyard
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: lanyard-server
  namespace: lanyard
spec: {}
"#;

fn secret(name: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("lanyard".into()),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([("k".to_string(), name.to_string())])),
        ..Default::default()
    }
}

fn config_map(ns: &str, name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn setup() -> (KubeFixture, kube::Client) {
    let fixture = start().await;
    let applied = fixture.apply_yaml(RBAC).expect("manifests apply");
    assert_eq!(applied.applied.len(), 7, "{applied:?}");
    assert_eq!(applied.skipped, ["apps/v1/Deployment lanyard-server"]);
    let store = fixture.store();
    store.create(&secret("lanyard-ca")).unwrap();
    store.create(&secret("other")).unwrap();
    store.create(&config_map("lanyard", "bundle")).unwrap();
    store.create(&config_map("kube-system", "bundle")).unwrap();
    store.create(&pod("apps", "web-1", "node-a", &[])).unwrap();
    let token = fixture.issue_api_token("lanyard", "server");
    let client = fixture.client_for(&token).unwrap();
    (fixture, client)
}

#[tokio::test]
async fn resource_names_allow_one_secret_and_forbid_the_rest() {
    let (_fixture, client) = setup().await;
    let secrets: Api<Secret> = Api::namespaced(client, "lanyard");
    let ca = secrets.get("lanyard-ca").await.unwrap();
    assert_eq!(ca.data.unwrap()["k"].0, b"lanyard-ca");

    let other = api_status(secrets.get("other").await);
    assert_eq!((other.code, other.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        other.message,
        "secrets \"other\" is forbidden: User \"system:serviceaccount:lanyard:server\" cannot get resource \"secrets\" in API group \"\" in the namespace \"lanyard\""
    );
    // Listing all Secrets has no name, so a resourceNames rule does not allow it...
    assert_eq!(
        api_status(secrets.list(&ListParams::default()).await).code,
        403
    );
    // ...but listing by metadata.name does, as in the API server.
    let one = secrets
        .list(&ListParams::default().fields("metadata.name=lanyard-ca"))
        .await
        .unwrap();
    assert_eq!(one.items.len(), 1);
}

#[tokio::test]
async fn a_verb_not_granted_is_forbidden() {
    let (fixture, client) = setup().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "lanyard");
    let mut ca = secrets.get("lanyard-ca").await.unwrap();
    ca.metadata.labels = Some(BTreeMap::from([("x".to_string(), "y".to_string())]));
    let status = api_status(
        secrets
            .replace("lanyard-ca", &PostParams::default(), &ca)
            .await,
    );
    assert_eq!(status.code, 403);
    assert!(
        status
            .message
            .contains("cannot update resource \"secrets\"")
    );
    let status = api_status(
        secrets
            .patch(
                "lanyard-ca",
                &PatchParams::default(),
                &Patch::Merge(json!({})),
            )
            .await,
    );
    assert!(status.message.contains("cannot patch"));
    assert_eq!(
        api_status(secrets.create(&PostParams::default(), &secret("new")).await).code,
        403
    );
    assert!(fixture.store().get::<Secret>("lanyard", "new").is_err());
    let pods: Api<Pod> = Api::namespaced(client, "apps");
    let status = api_status(pods.delete("web-1", &Default::default()).await);
    assert_eq!(status.code, 403);
    assert!(fixture.store().get::<Pod>("apps", "web-1").is_ok());
}

#[tokio::test]
async fn a_role_binding_grants_only_in_its_namespace() {
    let (_fixture, client) = setup().await;
    let here: Api<ConfigMap> = Api::namespaced(client.clone(), "lanyard");
    assert_eq!(here.get("bundle").await.unwrap().name_any(), "bundle");
    let there: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    let status = api_status(there.get("bundle").await);
    assert_eq!(status.code, 403);
    assert!(status.message.contains("in the namespace \"kube-system\""));
    let everywhere: Api<ConfigMap> = Api::all(client);
    assert_eq!(
        api_status(everywhere.list(&ListParams::default()).await).code,
        403
    );
}

#[tokio::test]
async fn a_cluster_role_binding_grants_in_every_namespace() {
    let (fixture, client) = setup().await;
    let all: Api<Pod> = Api::all(client.clone());
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    let mut stream = watcher(
        all,
        watcher::Config::default().fields("spec.nodeName=node-a"),
    )
    .applied_objects()
    .boxed();
    let first = within("web-1", stream.try_next()).await.unwrap().unwrap();
    assert_eq!(first.name_any(), "web-1");
    fixture
        .store()
        .create(&pod("other-ns", "web-2", "node-a", &[]))
        .unwrap();
    let second = within("web-2", stream.try_next()).await.unwrap().unwrap();
    assert_eq!(second.name_any(), "web-2");
}

#[tokio::test]
async fn a_named_secret_can_be_watched_by_field_selector() {
    let (fixture, client) = setup().await;
    let secrets: Api<Secret> = Api::namespaced(client, "lanyard");
    let cfg = watcher::Config::default().fields("metadata.name=lanyard-ca");
    let mut stream = watcher(secrets.clone(), cfg).applied_objects().boxed();
    let first = within("the CA secret", stream.try_next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.name_any(), "lanyard-ca");
    fixture
        .store()
        .modify::<Secret>("lanyard", "lanyard-ca", |s| {
            s.metadata.labels = Some(BTreeMap::from([("rotated".to_string(), "1".to_string())]));
        })
        .unwrap();
    let next = within("the rotated secret", stream.try_next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.labels()["rotated"], "1");

    // Watching every Secret is refused.
    let mut all = watcher(secrets, watcher::Config::default()).boxed();
    loop {
        match within("the refusal", all.next()).await {
            Some(Ok(watcher::Event::Init)) => continue,
            Some(Err(watcher::Error::InitialListFailed(kube::Error::Api(s)))) => {
                assert_eq!(s.code, 403);
                break;
            }
            other => panic!("expected a 403, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn rbac_objects_are_served_under_the_rbac_api() {
    let (fixture, client) = setup().await;
    let admin: Api<ClusterRole> = Api::all(fixture.admin_client().unwrap());
    let roles = admin.list(&ListParams::default()).await.unwrap();
    let mut names: Vec<_> = roles.items.iter().map(|r| r.name_any()).collect();
    names.sort();
    assert_eq!(names, ["configmap-reader", "pod-reader"]);
    // The ServiceAccount may not read RBAC objects.
    let denied: Api<ClusterRole> = Api::all(client.clone());
    assert_eq!(
        api_status(denied.list(&ListParams::default()).await).code,
        403
    );

    // Removing the binding through the API revokes access at once.
    let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> =
        Api::namespaced(fixture.admin_client().unwrap(), "lanyard");
    bindings
        .delete("server-configmaps", &Default::default())
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client, "lanyard");
    assert_eq!(api_status(cms.get("bundle").await).code, 403);
}
