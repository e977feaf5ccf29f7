//! Writes through the real `kube` client: create/get/replace/patch/delete, 409 on stale and
//! concurrent updates, the status subresource, server-side apply, authentication failures,
//! and the kubeconfig file.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{api_status, pod, start};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodStatus, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, ResourceExt as _};
use serde_json::json;

fn config_map(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("v".to_string(), value.to_string())])),
        ..Default::default()
    }
}

#[tokio::test]
async fn create_get_and_delete_follow_api_server_errors() {
    let fixture = start().await;
    let api: Api<ConfigMap> = Api::namespaced(fixture.admin_client().unwrap(), "lanyard");
    let created = api
        .create(&PostParams::default(), &config_map("bundle", "1"))
        .await
        .unwrap();
    assert_eq!(created.namespace().as_deref(), Some("lanyard"));
    assert!(created.uid().is_some());
    assert!(created.creation_timestamp().is_some());

    let dup = api_status(
        api.create(&PostParams::default(), &config_map("bundle", "1"))
            .await,
    );
    assert_eq!((dup.code, dup.reason.as_str()), (409, "AlreadyExists"));
    let missing = api_status(api.get("nope").await);
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    assert_eq!(missing.message, "configmaps \"nope\" not found");

    let wrong_uid = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some("not-the-uid".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    let refused = api_status(api.delete("bundle", &wrong_uid).await);
    assert_eq!(refused.code, 409);
    api.delete("bundle", &DeleteParams::default())
        .await
        .unwrap();
    assert!(api.get_opt("bundle").await.unwrap().is_none());
    let gone = api_status(api.delete("bundle", &DeleteParams::default()).await);
    assert_eq!(gone.code, 404);
}

#[tokio::test]
async fn a_stale_update_is_a_409_conflict() {
    let fixture = start().await;
    let api: Api<ConfigMap> = Api::namespaced(fixture.admin_client().unwrap(), "lanyard");
    api.create(&PostParams::default(), &config_map("c", "0"))
        .await
        .unwrap();
    let first = api.get("c").await.unwrap();
    let second = first.clone();

    let mut a = first;
    a.data = Some(BTreeMap::from([("v".to_string(), "a".to_string())]));
    let written = api.replace("c", &PostParams::default(), &a).await.unwrap();
    assert_ne!(written.resource_version(), a.resource_version());

    let mut b = second;
    b.data = Some(BTreeMap::from([("v".to_string(), "b".to_string())]));
    let status = api_status(api.replace("c", &PostParams::default(), &b).await);
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(status.message.contains("the object has been modified"));
    assert_eq!(api.get("c").await.unwrap().data.unwrap()["v"], "a");

    // A merge patch carrying a stale resourceVersion is refused the same way.
    let stale = json!({"metadata": {"resourceVersion": b.resource_version()}, "data": {"v": "p"}});
    let status = api_status(
        api.patch("c", &PatchParams::default(), &Patch::Merge(&stale))
            .await,
    );
    assert_eq!(status.code, 409);
}

#[tokio::test]
async fn concurrent_read_modify_write_loses_no_update() {
    let fixture = start().await;
    let api: Api<ConfigMap> = Api::namespaced(fixture.admin_client().unwrap(), "lanyard");
    api.create(&PostParams::default(), &config_map("counter", "0"))
        .await
        .unwrap();
    let conflicts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers = 8;
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let api = api.clone();
        let conflicts = conflicts.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let mut cm = api.get("counter").await.unwrap();
                let n: u32 = cm.data.as_ref().unwrap()["v"].parse().unwrap();
                cm.data = Some(BTreeMap::from([("v".to_string(), (n + 1).to_string())]));
                match api.replace("counter", &PostParams::default(), &cm).await {
                    Ok(_) => return,
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        conflicts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
        }));
    }
    for t in tasks {
        common::within("the writers", t).await.unwrap();
    }
    let final_value = api.get("counter").await.unwrap().data.unwrap()["v"].clone();
    assert_eq!(final_value, writers.to_string());
}

#[tokio::test]
async fn status_is_a_subresource_and_create_resets_it() {
    let fixture = start().await;
    let api: Api<Pod> = Api::namespaced(fixture.admin_client().unwrap(), "apps");
    let mut p = pod("apps", "p", "node-a", &[]);
    p.status = Some(PodStatus {
        pod_ip: Some("10.1.1.1".into()),
        ..Default::default()
    });
    let created = api.create(&PostParams::default(), &p).await.unwrap();
    let status = created.status.clone().unwrap();
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    assert_eq!(status.pod_ip, None);

    let patched = api
        .patch_status(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"podIP": "10.2.2.2", "phase": "Running"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.status.unwrap().pod_ip.as_deref(), Some("10.2.2.2"));

    // Status changes through the main resource are ignored, label changes are kept.
    let patched = api
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {"a": "b"}}, "status": {"podIP": "9.9.9.9"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(patched.labels()["a"], "b");
    assert_eq!(patched.status.unwrap().pod_ip.as_deref(), Some("10.2.2.2"));
}

#[tokio::test]
async fn patches_json_merge_strategic_and_apply() {
    let fixture = start().await;
    let api: Api<ConfigMap> = Api::namespaced(fixture.admin_client().unwrap(), "lanyard");
    let applied = api
        .patch(
            "ssa",
            &PatchParams::apply("lanyard-test"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"a": "1"}})),
        )
        .await
        .unwrap();
    assert_eq!(applied.data.unwrap()["a"], "1");
    let rv_before = api.get("ssa").await.unwrap().resource_version();
    let same = api
        .patch(
            "ssa",
            &PatchParams::apply("lanyard-test"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"a": "1"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        same.resource_version(),
        rv_before,
        "a no-op write keeps the version"
    );

    let strategic = api
        .patch(
            "ssa",
            &PatchParams::default(),
            &Patch::Strategic(json!({"data": {"b": "2"}})),
        )
        .await
        .unwrap();
    assert_eq!(strategic.data.clone().unwrap().len(), 2);
    let json_patch: json_patch::Patch =
        serde_json::from_value(json!([{"op": "remove", "path": "/data/a"}])).unwrap();
    let patched = api
        .patch(
            "ssa",
            &PatchParams::default(),
            &Patch::<()>::Json(json_patch),
        )
        .await
        .unwrap();
    assert_eq!(
        patched.data.unwrap(),
        BTreeMap::from([("b".to_string(), "2".to_string())])
    );
    let missing = api_status(
        api.patch("nope", &PatchParams::default(), &Patch::Merge(json!({})))
            .await,
    );
    assert_eq!(missing.code, 404);
}

#[tokio::test]
async fn secret_string_data_is_stored_as_data() {
    let fixture = start().await;
    let api: Api<Secret> = Api::namespaced(fixture.admin_client().unwrap(), "lanyard");
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("ca".into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        string_data: Some(BTreeMap::from([("tls.crt".to_string(), "PEM".to_string())])),
        ..Default::default()
    };
    api.create(&PostParams::default(), &secret).await.unwrap();
    let read = api.get("ca").await.unwrap();
    assert_eq!(read.data.unwrap()["tls.crt"].0, b"PEM");
    assert!(read.string_data.is_none());
    let tls = api
        .list(&ListParams::default().fields("type=kubernetes.io/tls"))
        .await
        .unwrap();
    assert_eq!(tls.items.len(), 1);
}

#[tokio::test]
async fn requests_need_a_token_for_the_api_audience() {
    let fixture = start().await;
    let unknown: Api<ConfigMap> = Api::namespaced(fixture.client_for("made-up").unwrap(), "x");
    let status = api_status(unknown.list(&ListParams::default()).await);
    assert_eq!((status.code, status.reason.as_str()), (401, "Unauthorized"));

    // A token for another audience (e.g. an agent's token for lanyard-server) is no API
    // credential.
    let token = fixture.issue_service_account_token(
        "lanyard",
        "agent",
        None,
        &["lanyard-server"],
        std::time::Duration::from_secs(600),
    );
    let wrong: Api<ConfigMap> = Api::namespaced(fixture.client_for(&token).unwrap(), "x");
    assert_eq!(
        api_status(wrong.list(&ListParams::default()).await).code,
        401
    );

    // An API token without RBAC is authenticated but forbidden.
    let token = fixture.issue_api_token("lanyard", "agent");
    let nobody: Api<ConfigMap> = Api::namespaced(fixture.client_for(&token).unwrap(), "x");
    assert_eq!(
        api_status(nobody.list(&ListParams::default()).await).code,
        403
    );
}

#[tokio::test]
async fn the_kubeconfig_file_works_with_kube() {
    let fixture = start().await;
    let path = fixture.kubeconfig_path().to_path_buf();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    api.create(&PostParams::default(), &config_map("via-file", "1"))
        .await
        .unwrap();
    assert!(
        fixture
            .store()
            .get::<ConfigMap>("default", "via-file")
            .is_ok()
    );
    drop(fixture);
    assert!(!path.exists(), "the kubeconfig is removed with the fixture");
}
