//! CustomResourceDefinitions and custom objects through the real `kube` client: a CRD from
//! YAML becomes Established, bad CRDs are 422, custom objects are created, listed, watched,
//! patched, pruned, validated (422 naming the field), their status subresource is separate,
//! `metadata.generation` follows spec changes, and deleting the CRD stops serving them.

mod common;

use std::collections::BTreeMap;

use common::{api_status, start, within};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PostParams, WatchEvent, WatchParams,
};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{reflector, watcher};
use kube::{Api, Client, ResourceExt as _};
use kube_fixture::KubeFixture;
use serde_json::{Value, json};

/// A small namespaced CRD with two served versions (v1 stores), a status subresource and a
/// schema exercising every check the fixture makes.
const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.lanyard.dev
spec:
  group: example.lanyard.dev
  scope: Namespaced
  names:
    plural: widgets
    singular: widget
    kind: Widget
  versions:
    - name: v1
      served: true
      storage: true
      subresources:
        status: {}
      schema:
        openAPIV3Schema: &schema
          type: object
          properties:
            spec:
              type: object
              required: [size]
              properties:
                size: {type: integer, minimum: 1, maximum: 10}
                names:
                  type: array
                  maxItems: 16
                  items: {type: string, pattern: '^[a-z]+$'}
                mode: {type: string, enum: [fast, slow], default: slow}
                x509TTL: {type: string, pattern: '^[0-9]+[smh]$'}
                tags:
                  type: object
                  additionalProperties: {type: string, maxLength: 8}
                extra:
                  type: object
                  x-kubernetes-preserve-unknown-fields: true
            status:
              type: object
              properties:
                observedGeneration: {type: integer}
                phase: {type: string, enum: [Ready, Failed]}
    - name: v1beta1
      served: true
      storage: false
      subresources:
        status: {}
      schema:
        openAPIV3Schema: *schema
"#;

fn widget_resource(version: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.lanyard.dev", version, "Widget"),
        "widgets",
    )
}

fn widget(name: &str, spec: Value) -> DynamicObject {
    DynamicObject::new(name, &widget_resource("v1")).data(json!({ "spec": spec }))
}

async fn install_widget_crd(fixture: &KubeFixture) -> Client {
    let client = fixture.admin_client().unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_saphyr::from_str(WIDGET_CRD).unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    within(
        "the CRD to be established",
        await_condition(
            crds,
            "widgets.example.lanyard.dev",
            conditions::is_crd_established(),
        ),
    )
    .await
    .unwrap();
    client
}

fn widgets(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &widget_resource("v1"))
}

#[tokio::test]
async fn a_crd_from_yaml_is_established_with_its_accepted_names() {
    let fixture = start().await;
    let client = install_widget_crd(&fixture).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let crd = crds.get("widgets.example.lanyard.dev").await.unwrap();
    let status = crd.status.unwrap();
    let names = status.accepted_names.unwrap();
    assert_eq!(names.kind, "Widget");
    assert_eq!(names.list_kind.as_deref(), Some("WidgetList"));
    assert_eq!(status.stored_versions, Some(vec!["v1".to_string()]));
    let conditions = status.conditions.unwrap();
    for wanted in ["Established", "NamesAccepted"] {
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == wanted && c.status == "True"),
            "{wanted} in {conditions:?}"
        );
    }
    assert_eq!(crd.metadata.generation, Some(1));
    // The CRD is listed, and its kind is served only now.
    assert_eq!(
        crds.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
}

#[tokio::test]
async fn malformed_crds_are_refused_as_invalid() {
    let fixture = start().await;
    let crds: Api<CustomResourceDefinition> = Api::all(fixture.admin_client().unwrap());
    let mut crd: CustomResourceDefinition = serde_saphyr::from_str(WIDGET_CRD).unwrap();
    crd.metadata.name = Some("gadgets.example.lanyard.dev".into());
    let status = api_status(crds.create(&PostParams::default(), &crd).await);
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    let causes = status.details.unwrap().causes;
    assert_eq!(causes[0].field, "metadata.name");
    assert_eq!(
        causes[0].message,
        "Invalid value: \"gadgets.example.lanyard.dev\": must be spec.names.plural+\".\"+spec.group"
    );

    let mut crd: CustomResourceDefinition = serde_saphyr::from_str(WIDGET_CRD).unwrap();
    crd.spec.versions[1].storage = true;
    crd.spec.scope = "Everywhere".into();
    let status = api_status(crds.create(&PostParams::default(), &crd).await);
    assert_eq!(status.code, 422);
    let fields: Vec<String> = status
        .details
        .unwrap()
        .causes
        .into_iter()
        .map(|c| c.field)
        .collect();
    assert_eq!(fields, ["spec.scope", "spec.versions"]);
    // Nothing was stored, nothing is served.
    assert!(
        crds.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let api = widgets(&fixture.admin_client().unwrap(), "default");
    assert_eq!(api_status(api.list(&ListParams::default()).await).code, 404);
}

#[tokio::test]
async fn custom_objects_are_created_listed_and_watched() {
    let fixture = start().await;
    let client = install_widget_crd(&fixture).await;
    let api = widgets(&client, "apps");
    let watch_api = api.clone();
    let mut events = watch_api
        .watch(&WatchParams::default().labels("team=a"), "0")
        .await
        .unwrap()
        .boxed();

    let mut a = widget("a", json!({"size": 1}));
    a.labels_mut().insert("team".into(), "a".into());
    let created = api.create(&PostParams::default(), &a).await.unwrap();
    assert_eq!(created.namespace().as_deref(), Some("apps"));
    assert_eq!(
        created.data["spec"]["mode"], "slow",
        "the default is applied"
    );
    assert_eq!(created.metadata.generation, Some(1));
    let mut b = widget("b", json!({"size": 2}));
    b.labels_mut().insert("team".into(), "b".into());
    api.create(&PostParams::default(), &b).await.unwrap();

    let first = within("the ADDED event", events.try_next())
        .await
        .unwrap()
        .unwrap();
    match first {
        WatchEvent::Added(o) => assert_eq!(o.name_any(), "a"),
        other => panic!("expected ADDED a, got {other:?}"),
    }

    let patched = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data["spec"]["size"], 3);
    let json_patched = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(
                    json!([{"op": "add", "path": "/spec/names", "value": ["x"]}]),
                )
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(json_patched.data["spec"]["names"], json!(["x"]));
    match within("the MODIFIED event", events.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        WatchEvent::Modified(o) => assert_eq!(o.data["spec"]["size"], 3),
        other => panic!("expected MODIFIED, got {other:?}"),
    }

    let listed = api
        .list(&ListParams::default().fields("metadata.name=b"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].name_any(), "b");
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &widget_resource("v1"));
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );

    // Every served version reads the same objects, in its own apiVersion.
    let beta: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "apps", &widget_resource("v1beta1"));
    let seen = beta.get("b").await.unwrap();
    assert_eq!(
        seen.types.as_ref().unwrap().api_version,
        "example.lanyard.dev/v1beta1"
    );

    api.delete("a", &DeleteParams::default()).await.unwrap();
    loop {
        match within("the DELETED event", events.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            WatchEvent::Deleted(o) => {
                assert_eq!(o.name_any(), "a");
                break;
            }
            WatchEvent::Modified(_) | WatchEvent::Bookmark(_) => continue,
            other => panic!("expected DELETED, got {other:?}"),
        }
    }
    assert_eq!(api_status(api.get("a").await).code, 404);
}

#[tokio::test]
async fn schema_violations_are_422_naming_the_field() {
    let fixture = start().await;
    let client = install_widget_crd(&fixture).await;
    let api = widgets(&client, "default");

    let names: Vec<String> = (0..17).map(|_| "a".to_string()).collect();
    let status = api_status(
        api.create(
            &PostParams::default(),
            &widget("w", json!({"size": 1, "names": names})),
        )
        .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        status.message,
        "Widget.example.lanyard.dev \"w\" is invalid: spec.names: Too many: 17: must have at most 16 items"
    );
    let details = status.details.unwrap();
    assert_eq!(details.kind, "Widget");
    assert_eq!(details.group, "example.lanyard.dev");
    assert_eq!(details.causes.len(), 1);
    assert_eq!(details.causes[0].field, "spec.names");
    assert_eq!(details.causes[0].reason, "FieldValueTooMany");
    assert_eq!(
        details.causes[0].message,
        "Too many: 17: must have at most 16 items"
    );

    let status = api_status(
        api.create(
            &PostParams::default(),
            &widget(
                "w",
                json!({"size": 11, "x509TTL": "1d", "mode": "medium", "tags": {"k": "far-too-long"}}),
            ),
        )
        .await,
    );
    let mut fields: Vec<String> = status
        .details
        .unwrap()
        .causes
        .into_iter()
        .map(|c| c.field)
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        ["spec.mode", "spec.size", "spec.tags.k", "spec.x509TTL"]
    );

    let status = api_status(
        api.create(&PostParams::default(), &widget("w", json!({})))
            .await,
    );
    assert_eq!(
        status.message,
        "Widget.example.lanyard.dev \"w\" is invalid: spec.size: Required value"
    );

    // Updates are validated too, and a refused update changes nothing.
    let created = api
        .create(&PostParams::default(), &widget("w", json!({"size": 1})))
        .await
        .unwrap();
    let status = api_status(
        api.patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": "big"}})),
        )
        .await,
    );
    assert_eq!(status.code, 422);
    assert!(
        status
            .message
            .contains("spec.size in body must be of type integer"),
        "{}",
        status.message
    );
    assert_eq!(
        api.get("w").await.unwrap().resource_version(),
        created.resource_version()
    );
}

#[tokio::test]
async fn custom_resource_names_must_be_dns_subdomains() {
    let fixture = start().await;
    let client = install_widget_crd(&fixture).await;
    let api = widgets(&client, "default");
    let status = api_status(
        api.create(
            &PostParams::default(),
            &widget("Not_A_Name", json!({"size": 1})),
        )
        .await,
    );
    assert_eq!(status.code, 422);
    assert_eq!(status.details.unwrap().causes[0].field, "metadata.name");
    api.create(&PostParams::default(), &widget("a-b.c", json!({"size": 1})))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_kube_watcher_relists_custom_objects_after_410() {
    let fixture = start().await;
    let client = install_widget_crd(&fixture).await;
    let api = widgets(&client, "default");
    api.create(&PostParams::default(), &widget("one", json!({"size": 1})))
        .await
        .unwrap();
    let writer = reflector::store::Writer::<DynamicObject>::new(widget_resource("v1"));
    let reader = writer.as_reader();
    let mut stream = reflector(writer, watcher(api.clone(), watcher::Config::default())).boxed();
    loop {
        match within("the initial list", stream.next()).await {
            Some(Ok(watcher::Event::InitDone)) => break,
            Some(Ok(_)) => {}
            other => panic!("unexpected watcher item: {other:?}"),
        }
    }
    assert_eq!(reader.state().len(), 1);

    fixture.expire_watches();
    api.create(&PostParams::default(), &widget("two", json!({"size": 2})))
        .await
        .unwrap();
    // Relisted objects reach the reflector's store at InitDone; a live one at once.
    let mut relisted_two = false;
    loop {
        match within("the new object after a relist", stream.next()).await {
            Some(Ok(watcher::Event::Apply(o))) if o.name_any() == "two" => break,
            Some(Ok(watcher::Event::InitApply(o))) if o.name_any() == "two" => relisted_two = true,
            Some(Ok(watcher::Event::InitDone)) if relisted_two => break,
            Some(Ok(_)) => {}
            Some(Err(watcher::Error::WatchError(status))) if status.code == 410 => {}
            other => panic!("unexpected watcher item: {other:?}"),
        }
    }
    let mut cached: Vec<String> = reader.state().iter().map(|o| o.name_any()).collect();
    cached.sort();
    assert_eq!(cached, ["one", "two"]);
    assert_eq!(
        reader.state()[0].types.as_ref().unwrap().api_version,
        "example.lanyard.dev/v1"
    );
}

#[tokio::test]
async fn unknown_fields_are_pruned_not_refused() {
    let fixture = start().await;
    let client = install_widget_crd(&fixture).await;
    let api = widgets(&client, "default");
    let mut body = widget(
        "p",
        json!({"size": 1, "bogus": true, "extra": {"anything": {"goes": [1]}}}),
    );
    body.data["topLevelBogus"] = json!("x");
    let created = api.create(&PostParams::default(), &body).await.unwrap();
    assert!(created.data["spec"].get("bogus").is_none());
    assert!(created.data.get("topLevelBogus").is_none());
    assert_eq!(
        created.data["spec"]["extra"],
        json!({"anything": {"goes": [1]}})
    );
    let stored = api.get("p").await.unwrap();
    assert_eq!(stored.data, created.data);
}

#[tokio::test]
async fn status_is_a_separate_subresource_and_generation_follows_the_spec() {
    let fixture = start().await;
    let client = install_widget_crd(&fixture).await;
    let api = widgets(&client, "default");
    let mut body = widget("g", json!({"size": 1}));
    body.data["status"] = json!({"phase": "Ready"});
    let created = api.create(&PostParams::default(), &body).await.unwrap();
    assert!(created.data.get("status").is_none(), "create drops status");
    assert_eq!(created.metadata.generation, Some(1));

    // A spec change bumps the generation; the client's generation is ignored.
    let mut next = created.clone();
    next.data["spec"]["size"] = json!(2);
    next.metadata.generation = Some(42);
    let replaced = api
        .replace("g", &PostParams::default(), &next)
        .await
        .unwrap();
    assert_eq!(replaced.metadata.generation, Some(2));

    // Status through the main resource is ignored: a no-op.
    let mut with_status = replaced.clone();
    with_status.data["status"] = json!({"phase": "Failed"});
    let unchanged = api
        .replace("g", &PostParams::default(), &with_status)
        .await
        .unwrap();
    assert!(unchanged.data.get("status").is_none());
    assert_eq!(unchanged.resource_version(), replaced.resource_version());

    // Metadata changes do not bump the generation.
    let labelled = api
        .patch(
            "g",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(labelled.metadata.generation, Some(2));
    assert_ne!(labelled.resource_version(), replaced.resource_version());

    // The status subresource changes only status, without bumping the generation.
    let status_written = api
        .patch_status(
            "g",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"size": 9}, "status": {"phase": "Ready", "observedGeneration": 2}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(status_written.data["status"]["phase"], "Ready");
    assert_eq!(status_written.data["spec"]["size"], 2);
    assert_eq!(status_written.metadata.generation, Some(2));
    let mut status_put = status_written.clone();
    status_put.data["status"]["phase"] = json!("Failed");
    let status_put = api
        .replace_status("g", &PostParams::default(), &status_put)
        .await
        .unwrap();
    assert_eq!(status_put.data["status"]["phase"], "Failed");
    // The status schema is enforced on /status.
    let status = api_status(
        api.patch_status(
            "g",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Sideways"}})),
        )
        .await,
    );
    assert_eq!(status.details.unwrap().causes[0].field, "status.phase");

    // A later spec change keeps the status and bumps again.
    let bumped = api
        .patch(
            "g",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(bumped.metadata.generation, Some(3));
    assert_eq!(bumped.data["status"]["phase"], "Failed");
}

#[tokio::test]
async fn deleting_the_crd_deletes_its_objects_and_stops_serving() {
    let fixture = start().await;
    let client = install_widget_crd(&fixture).await;
    let api = widgets(&client, "default");
    api.create(&PostParams::default(), &widget("d", json!({"size": 1})))
        .await
        .unwrap();
    let mut events = api
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    assert!(matches!(
        within("ADDED", events.try_next()).await.unwrap(),
        Some(WatchEvent::Added(_))
    ));

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.delete("widgets.example.lanyard.dev", &DeleteParams::default())
        .await
        .unwrap();
    // Watchers see the objects go, then the stream ends.
    let rest: Vec<_> = within("the watch to end", events.collect::<Vec<_>>()).await;
    assert!(
        matches!(rest.first(), Some(Ok(WatchEvent::Deleted(o))) if o.name_any() == "d"),
        "{rest:?}"
    );
    assert_eq!(api_status(api.get("d").await).code, 404);
    assert_eq!(api_status(api.list(&ListParams::default()).await).code, 404);
    let status = api_status(
        api.create(&PostParams::default(), &widget("e", json!({"size": 1})))
            .await,
    );
    assert_eq!(status.code, 404);

    // Registered again, the kind starts empty.
    let client = install_widget_crd(&fixture).await;
    let api = widgets(&client, "default");
    assert!(
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn cluster_scoped_crds_and_apply_yaml() {
    let fixture = start().await;
    let yaml = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: realms.example.lanyard.dev
spec:
  group: example.lanyard.dev
  scope: Cluster
  names: {plural: realms, kind: Realm}
  versions:
    - name: v1alpha1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                domain: {type: string}
            status:
              type: object
              properties:
                note: {type: string}
---
apiVersion: example.lanyard.dev/v1alpha1
kind: Realm
metadata:
  name: corp
spec:
  domain: corp.example
  stray: dropped
"#;
    let applied = fixture.apply_yaml(yaml).unwrap();
    assert_eq!(
        applied.applied,
        [
            "CustomResourceDefinition realms.example.lanyard.dev",
            "Realm corp"
        ]
    );
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.lanyard.dev", "v1alpha1", "Realm"),
        "realms",
    );
    let realms: Api<DynamicObject> = Api::all_with(fixture.admin_client().unwrap(), &resource);
    let corp = realms.get("corp").await.unwrap();
    assert_eq!(corp.data["spec"], json!({"domain": "corp.example"}));
    assert_eq!(corp.metadata.generation, Some(1));
    // Without a status subresource, status is part of the object (and of the generation).
    let noted = realms
        .patch(
            "corp",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"note": "hi"}})),
        )
        .await
        .unwrap();
    assert_eq!(noted.data["status"]["note"], "hi");
    assert_eq!(noted.metadata.generation, Some(2));
    let status = api_status(
        realms
            .patch_status(
                "corp",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"note": "no"}})),
            )
            .await,
    );
    assert_eq!(status.code, 404);
    // A namespaced path for a cluster-scoped kind is not served.
    let wrong: Api<DynamicObject> =
        Api::namespaced_with(fixture.admin_client().unwrap(), "default", &resource);
    assert_eq!(
        api_status(wrong.list(&ListParams::default()).await).code,
        404
    );
    let labels: BTreeMap<String, String> = corp.labels().clone();
    assert!(labels.is_empty());
}

#[tokio::test]
async fn rbac_rules_for_custom_resources_and_their_status() {
    let fixture = start().await;
    let admin = install_widget_crd(&fixture).await;
    widgets(&admin, "apps")
        .create(&PostParams::default(), &widget("mine", json!({"size": 1})))
        .await
        .unwrap();
    widgets(&admin, "apps")
        .create(
            &PostParams::default(),
            &widget("theirs", json!({"size": 1})),
        )
        .await
        .unwrap();
    fixture
        .apply_yaml(
            r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: widget-controller}
rules:
- apiGroups: [example.lanyard.dev]
  resources: [widgets]
  verbs: [get, list, watch]
- apiGroups: [example.lanyard.dev]
  resources: [widgets/status]
  resourceNames: [mine]
  verbs: [update, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: widget-controller}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: widget-controller}
subjects:
- {kind: ServiceAccount, name: server, namespace: lanyard}
"#,
        )
        .unwrap();
    let client = fixture
        .client_for(&fixture.issue_api_token("lanyard", "server"))
        .unwrap();
    let api = widgets(&client, "apps");
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );
    let patch = Patch::Merge(json!({"status": {"phase": "Ready"}}));
    let written = api
        .patch_status("mine", &PatchParams::default(), &patch)
        .await
        .unwrap();
    assert_eq!(written.data["status"]["phase"], "Ready");
    let denied = api_status(
        api.patch_status("theirs", &PatchParams::default(), &patch)
            .await,
    );
    assert_eq!(denied.code, 403, "resourceNames limit the status writes");
    assert_eq!(
        denied.message,
        "widgets.example.lanyard.dev \"theirs\" is forbidden: User \"system:serviceaccount:lanyard:server\" cannot patch resource \"widgets/status\" in API group \"example.lanyard.dev\" in the namespace \"apps\""
    );
    let denied = api_status(
        api.patch(
            "mine",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2}})),
        )
        .await,
    );
    assert_eq!(
        denied.code, 403,
        "the status rule does not grant the main resource"
    );
    let denied = api_status(
        api.create(&PostParams::default(), &widget("new", json!({"size": 1})))
            .await,
    );
    assert_eq!(denied.code, 403);
    // CRDs themselves are not granted.
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    assert_eq!(
        api_status(crds.list(&ListParams::default()).await).code,
        403
    );
}

/// The project's own CRD (registration/crd), as `lanyard install` ships it.
const LANYARD_IDENTITY_CRD: &str =
    include_str!("../../../registration/crd/lanyardidentities.lanyard.dev.yaml");

#[tokio::test]
async fn the_lanyard_identity_crd_is_accepted_and_validates_its_objects() {
    let fixture = start().await;
    let applied = fixture.apply_yaml(LANYARD_IDENTITY_CRD).unwrap();
    assert_eq!(
        applied.applied,
        ["CustomResourceDefinition lanyardidentities.lanyard.dev"]
    );
    let client = fixture.admin_client().unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    within(
        "the LanyardIdentity CRD to be established",
        await_condition(
            crds,
            "lanyardidentities.lanyard.dev",
            conditions::is_crd_established(),
        ),
    )
    .await
    .unwrap();
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("lanyard.dev", "v1alpha1", "LanyardIdentity"),
        "lanyardidentities",
    );
    let identities: Api<DynamicObject> = Api::all_with(client, &resource);

    let valid = DynamicObject::new("web", &resource).data(json!({
        "spec": {
            "spiffeIDTemplate": "/ns/{namespace}/sa/{service_account}",
            "podSelector": {"matchLabels": {"app": "web"}},
            "dnsNameTemplates": ["{pod_name}.web.svc"],
            "x509TTL": "1h",
            "className": "default",
            "notAField": true
        }
    }));
    let created = identities
        .create(&PostParams::default(), &valid)
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.data["spec"].get("notAField").is_none(), "pruned");
    let status = identities
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"observedGeneration": 1, "podsMatched": 2}})),
        )
        .await
        .unwrap();
    assert_eq!(status.data["status"]["podsMatched"], 2);

    let too_many: Vec<String> = (0..17).map(|i| format!("n{i}.example")).collect();
    let invalid = DynamicObject::new("bad", &resource).data(json!({
        "spec": {
            "spiffeIDTemplate": "/ns/{namespace}",
            "dnsNameTemplates": too_many,
            "x509TTL": "1y"
        }
    }));
    let refused = api_status(identities.create(&PostParams::default(), &invalid).await);
    assert_eq!((refused.code, refused.reason.as_str()), (422, "Invalid"));
    let causes = refused.details.unwrap().causes;
    let dns = causes
        .iter()
        .find(|c| c.field == "spec.dnsNameTemplates")
        .expect("a cause for spec.dnsNameTemplates");
    assert_eq!(dns.message, "Too many: 17: must have at most 16 items");
    assert!(
        causes.iter().any(|c| c.field == "spec.x509TTL"),
        "{causes:?}"
    );
    let missing = DynamicObject::new("empty", &resource).data(json!({"spec": {}}));
    let refused = api_status(identities.create(&PostParams::default(), &missing).await);
    assert_eq!(
        refused.message,
        "LanyardIdentity.lanyard.dev \"empty\" is invalid: spec.spiffeIDTemplate: Required value"
    );
    assert_eq!(
        identities
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}
