//! TokenReview through the real `kube` client: valid, unknown, tampered, expired,
//! wrong-audience and unbound-pod tokens, the node-name extra on and off, and RBAC on the
//! review itself.

mod common;

use std::time::Duration;

use common::{api_status, pod, start};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use kube_fixture::{
    DEFAULT_API_AUDIENCE, EXTRA_NODE_NAME, EXTRA_POD_NAME, EXTRA_POD_UID, KubeFixture, TokenBinding,
};

const AUDIENCE: &str = "lanyard-server";

/// RBAC like `system:auth-delegator`, bound to the reviewer ServiceAccount.
const REVIEWER_RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: lanyard-token-reviewer
rules:
- apiGroups: ["authentication.k8s.io"]
  resources: ["tokenreviews"]
  verbs: ["create"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: lanyard-token-reviewer
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: lanyard-token-reviewer
subjects:
- kind: ServiceAccount
  name: lanyard-server
  namespace: lanyard
"#;

struct Setup {
    fixture: KubeFixture,
    reviews: Api<TokenReview>,
    pod_uid: String,
}

async fn setup() -> Setup {
    let fixture = start().await;
    fixture.apply_yaml(REVIEWER_RBAC).expect("rbac applies");
    let created = fixture
        .store()
        .create(&pod("lanyard", "agent-abc", "node-1", &[]))
        .expect("pod seeded");
    let token = fixture.issue_api_token("lanyard", "lanyard-server");
    let reviews = Api::all(fixture.client_for(&token).expect("client"));
    Setup {
        fixture,
        reviews,
        pod_uid: created.metadata.uid.expect("uid"),
    }
}

fn agent_binding(pod_uid: &str) -> TokenBinding {
    TokenBinding {
        pod_name: "agent-abc".into(),
        pod_uid: pod_uid.into(),
        node_name: Some("node-1".into()),
    }
}

async fn review(api: &Api<TokenReview>, token: &str, audiences: &[&str]) -> TokenReviewStatus {
    let request = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_string()),
            audiences: Some(audiences.iter().map(|s| s.to_string()).collect()),
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &request)
        .await
        .expect("the review request itself succeeds")
        .status
        .expect("a review has a status")
}

fn extra(status: &TokenReviewStatus, key: &str) -> Option<Vec<String>> {
    status.user.as_ref()?.extra.as_ref()?.get(key).cloned()
}

#[tokio::test]
async fn a_bound_token_is_authenticated_with_pod_and_node_extras() {
    let s = setup().await;
    let token = s.fixture.issue_service_account_token(
        "lanyard",
        "lanyard-agent",
        Some(agent_binding(&s.pod_uid)),
        &[AUDIENCE, "other"],
        Duration::from_secs(600),
    );
    assert_eq!(token.split('.').count(), 3, "tokens are JWT-shaped");
    let status = review(&s.reviews, &token, &[AUDIENCE]).await;
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    assert_eq!(status.error, None);
    assert_eq!(status.audiences, Some(vec![AUDIENCE.to_string()]));
    let user = status.user.clone().expect("user");
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:lanyard:lanyard-agent")
    );
    let groups = user.groups.expect("groups");
    assert!(groups.contains(&"system:serviceaccounts:lanyard".to_string()));
    assert!(groups.contains(&"system:authenticated".to_string()));
    assert_eq!(
        extra(&status, EXTRA_POD_NAME),
        Some(vec!["agent-abc".into()])
    );
    assert_eq!(extra(&status, EXTRA_POD_UID), Some(vec![s.pod_uid.clone()]));
    assert_eq!(extra(&status, EXTRA_NODE_NAME), Some(vec!["node-1".into()]));
}

#[tokio::test]
async fn node_name_extra_can_be_switched_off_like_before_1_30() {
    let s = setup().await;
    let token = s.fixture.issue_service_account_token(
        "lanyard",
        "lanyard-agent",
        Some(agent_binding(&s.pod_uid)),
        &[AUDIENCE],
        Duration::from_secs(600),
    );
    s.fixture.set_node_name_extra(false);
    let status = review(&s.reviews, &token, &[AUDIENCE]).await;
    assert_eq!(status.authenticated, Some(true));
    assert_eq!(extra(&status, EXTRA_NODE_NAME), None);
    assert_eq!(
        extra(&status, EXTRA_POD_NAME),
        Some(vec!["agent-abc".into()])
    );
    s.fixture.set_node_name_extra(true);
    let status = review(&s.reviews, &token, &[AUDIENCE]).await;
    assert_eq!(extra(&status, EXTRA_NODE_NAME), Some(vec!["node-1".into()]));
}

#[tokio::test]
async fn unknown_and_tampered_tokens_are_not_authenticated() {
    let s = setup().await;
    let status = review(&s.reviews, "not-a-token", &[AUDIENCE]).await;
    assert_eq!(status.authenticated, Some(false));
    assert!(
        status
            .error
            .expect("error")
            .contains("invalid bearer token")
    );
    assert_eq!(status.audiences, None);

    let token = s.fixture.issue_service_account_token(
        "lanyard",
        "lanyard-agent",
        Some(agent_binding(&s.pod_uid)),
        &[AUDIENCE],
        Duration::from_secs(600),
    );
    let mut tampered = token.into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let status = review(&s.reviews, &tampered, &[AUDIENCE]).await;
    assert_eq!(status.authenticated, Some(false));
}

#[tokio::test]
async fn expired_tokens_are_not_authenticated() {
    let s = setup().await;
    let token = s.fixture.issue_service_account_token(
        "lanyard",
        "lanyard-agent",
        Some(agent_binding(&s.pod_uid)),
        &[AUDIENCE],
        Duration::from_secs(600),
    );
    assert_eq!(
        review(&s.reviews, &token, &[AUDIENCE]).await.authenticated,
        Some(true)
    );
    s.fixture.advance_clock(Duration::from_secs(601));
    let status = review(&s.reviews, &token, &[AUDIENCE]).await;
    assert_eq!(status.authenticated, Some(false));
    assert!(status.error.expect("error").contains("expired"));
}

#[tokio::test]
async fn wrong_audience_tokens_are_not_authenticated() {
    let s = setup().await;
    let token = s.fixture.issue_service_account_token(
        "lanyard",
        "lanyard-agent",
        Some(agent_binding(&s.pod_uid)),
        &["vault"],
        Duration::from_secs(600),
    );
    let status = review(&s.reviews, &token, &[AUDIENCE]).await;
    assert_eq!(status.authenticated, Some(false));
    let error = status.error.expect("error");
    assert!(error.contains("audiences"), "{error}");
    assert!(
        error.contains("vault") && error.contains(AUDIENCE),
        "{error}"
    );
}

#[tokio::test]
async fn a_review_without_audiences_uses_the_api_server_audience() {
    let s = setup().await;
    let api_token = s.fixture.issue_api_token("lanyard", "lanyard-agent");
    let status = review(&s.reviews, &api_token, &[]).await;
    assert_eq!(status.authenticated, Some(true));
    assert_eq!(
        status.audiences,
        Some(vec![DEFAULT_API_AUDIENCE.to_string()])
    );
    let bound = s.fixture.issue_service_account_token(
        "lanyard",
        "lanyard-agent",
        None,
        &[AUDIENCE],
        Duration::from_secs(600),
    );
    assert_eq!(
        review(&s.reviews, &bound, &[]).await.authenticated,
        Some(false)
    );
}

#[tokio::test]
async fn a_token_dies_with_its_pod_and_is_not_revived_by_a_namesake() {
    let s = setup().await;
    let token = s.fixture.issue_service_account_token(
        "lanyard",
        "lanyard-agent",
        Some(agent_binding(&s.pod_uid)),
        &[AUDIENCE],
        Duration::from_secs(600),
    );
    s.fixture
        .store()
        .delete::<Pod>("lanyard", "agent-abc")
        .expect("deleted");
    let status = review(&s.reviews, &token, &[AUDIENCE]).await;
    assert_eq!(status.authenticated, Some(false));
    assert!(status.error.expect("error").contains("agent-abc"));

    let recreated = s
        .fixture
        .store()
        .create(&pod("lanyard", "agent-abc", "node-1", &[]))
        .expect("recreated");
    assert_ne!(recreated.metadata.uid.as_deref(), Some(s.pod_uid.as_str()));
    let status = review(&s.reviews, &token, &[AUDIENCE]).await;
    assert_eq!(status.authenticated, Some(false));
}

#[tokio::test]
async fn creating_a_review_needs_rbac() {
    let s = setup().await;
    let outsider = s.fixture.issue_api_token("lanyard", "lanyard-agent");
    let api: Api<TokenReview> = Api::all(s.fixture.client_for(&outsider).unwrap());
    let request = TokenReview {
        spec: TokenReviewSpec {
            token: Some("x".into()),
            audiences: None,
        },
        ..Default::default()
    };
    let status = api_status(api.create(&PostParams::default(), &request).await);
    assert_eq!(status.code, 403);
    assert_eq!(status.reason, "Forbidden");
    assert!(
        status.message.contains("at the cluster scope"),
        "{}",
        status.message
    );
}
