//! coordination.k8s.io/v1 Leases through the real `kube` client: a status-writer lock taken
//! with optimistic concurrency (a stale update is a 409), and RBAC rules with resourceNames
//! for leases as the API server evaluates them.

mod common;

use common::{api_status, start};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt as _};
use serde_json::json;

fn lease(holder: &str, at: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some("lanyard-status-writer".into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(MicroTime(at)),
            renew_time: Some(MicroTime(at)),
            lease_transitions: Some(0),
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn a_lease_is_a_lock_with_optimistic_concurrency() {
    let fixture = start().await;
    let leases: Api<Lease> = Api::namespaced(fixture.admin_client().unwrap(), "lanyard");
    let at: Timestamp = "2026-01-02T03:04:05.123456Z".parse().unwrap();
    let created = leases
        .create(&PostParams::default(), &lease("server-a", at))
        .await
        .unwrap();
    let spec = created.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("server-a"));
    assert_eq!(
        spec.acquire_time,
        Some(MicroTime(at)),
        "microseconds survive"
    );
    let dup = api_status(
        leases
            .create(&PostParams::default(), &lease("server-b", at))
            .await,
    );
    assert_eq!((dup.code, dup.reason.as_str()), (409, "AlreadyExists"));

    // Both replicas read the lease; A renews first, B's takeover is then stale.
    let seen_by_a = leases.get("lanyard-status-writer").await.unwrap();
    let seen_by_b = seen_by_a.clone();
    let mut renewed = seen_by_a;
    renewed.spec.as_mut().unwrap().renew_time =
        Some(MicroTime(at + std::time::Duration::from_secs(5)));
    let renewed = leases
        .replace("lanyard-status-writer", &PostParams::default(), &renewed)
        .await
        .unwrap();
    let mut takeover = seen_by_b;
    let spec = takeover.spec.as_mut().unwrap();
    spec.holder_identity = Some("server-b".into());
    spec.lease_transitions = Some(1);
    let conflict = api_status(
        leases
            .replace("lanyard-status-writer", &PostParams::default(), &takeover)
            .await,
    );
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        conflict.message,
        "Operation cannot be fulfilled on leases.coordination.k8s.io \"lanyard-status-writer\": the object has been modified; please apply your changes to the latest version and try again"
    );
    let current = leases.get("lanyard-status-writer").await.unwrap();
    assert_eq!(current.resource_version(), renewed.resource_version());
    assert_eq!(
        current.spec.unwrap().holder_identity.as_deref(),
        Some("server-a")
    );

    // Retrying from the fresh version succeeds.
    takeover.metadata.resource_version = renewed.resource_version();
    let taken = leases
        .replace("lanyard-status-writer", &PostParams::default(), &takeover)
        .await
        .unwrap();
    assert_eq!(
        taken.spec.unwrap().holder_identity.as_deref(),
        Some("server-b")
    );
    let released = leases
        .patch(
            "lanyard-status-writer",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": null}})),
        )
        .await
        .unwrap();
    assert_eq!(released.spec.unwrap().holder_identity, None);
    assert_eq!(
        leases
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    leases
        .delete("lanyard-status-writer", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        api_status(leases.get("lanyard-status-writer").await).code,
        404
    );
}

#[tokio::test]
async fn lease_rbac_with_resource_names() {
    let fixture = start().await;
    fixture
        .apply_yaml(
            r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: status-writer-lease, namespace: lanyard}
rules:
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [create]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  resourceNames: [lanyard-status-writer]
  verbs: [get, update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: server-lease, namespace: lanyard}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: status-writer-lease}
subjects:
- {kind: ServiceAccount, name: server, namespace: lanyard}
"#,
        )
        .unwrap();
    let token = fixture.issue_api_token("lanyard", "server");
    let client = fixture.client_for(&token).unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "lanyard");
    let at = Timestamp::UNIX_EPOCH;
    leases
        .create(&PostParams::default(), &lease("server-a", at))
        .await
        .unwrap();
    let got = leases.get("lanyard-status-writer").await.unwrap();
    leases
        .replace("lanyard-status-writer", &PostParams::default(), &got)
        .await
        .unwrap();
    let denied = api_status(leases.list(&ListParams::default()).await);
    assert_eq!(denied.code, 403);
    let denied = api_status(
        leases
            .patch(
                "lanyard-status-writer",
                &PatchParams::default(),
                &Patch::Merge(json!({})),
            )
            .await,
    );
    assert_eq!(denied.code, 403, "patch is not granted");
    let mut other = lease("server-a", at);
    other.metadata.name = Some("other".into());
    leases.create(&PostParams::default(), &other).await.unwrap();
    let denied = api_status(leases.get("other").await);
    assert_eq!(denied.code, 403, "resourceNames limit get");
    assert_eq!(
        denied.message,
        "leases.coordination.k8s.io \"other\" is forbidden: User \"system:serviceaccount:lanyard:server\" cannot get resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"lanyard\""
    );
    let elsewhere: Api<Lease> = Api::namespaced(client, "default");
    assert_eq!(
        api_status(elsewhere.get("lanyard-status-writer").await).code,
        403
    );
}
