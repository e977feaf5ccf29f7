//! Node attestation: deciding that a caller is the agent of a given node.
//!
//! Two methods, one per mode (DESIGN §1):
//! - `join_token` (data-dir mode): a single-use token bound to a node name. The agent renews
//!   by presenting its current node SVID, until the node is evicted.
//! - `k8s_psat` (cluster mode): a projected ServiceAccount token reviewed by the API server.
//!   The review must be authenticated, echo our audience, name an allowed ServiceAccount and
//!   carry the pod extras; the node comes from the `node-name` extra, else from the pod. Such
//!   agents renew only by attesting again with a fresh token.
//!
//! After attestation, every later call by the agent is re-checked with
//! [`NodeAttestor::check_agent`]: an evicted join-token node, or a Kubernetes node that no
//! longer runs an agent pod, is refused even with an unexpired node SVID.

use std::sync::Arc;
use std::time::SystemTime;

use lanyard_svid::TrustDomain;
use lanyard_svid::reserved::{AgentIdentity, NodeAttestation, agent_id};

use crate::evictions::Evictions;
use crate::join_token::{JoinTokenError, JoinTokens};
use crate::k8s::pods::PodLookup;
use crate::k8s::token_review::{ReviewError, TokenReviewer};

const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
const SA_USER_PREFIX: &str = "system:serviceaccount:";
/// Tokens longer than this are refused before being sent anywhere.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why attestation was refused. `Display` is the metric label; [`Self::message`] the sentence
/// the agent sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestRefusal {
    #[error("method_not_enabled")]
    MethodNotEnabled(NodeAttestation),
    #[error("{0}")]
    JoinToken(JoinTokenError),
    #[error("token_too_long")]
    TokenTooLong,
    #[error("token_not_authenticated")]
    NotAuthenticated(String),
    #[error("token_review_unavailable")]
    ReviewUnavailable(String),
    #[error("wrong_audience")]
    WrongAudience,
    #[error("not_a_service_account")]
    NotAServiceAccount(String),
    #[error("service_account_not_allowed")]
    ServiceAccountNotAllowed(String),
    #[error("missing_pod_extras")]
    MissingPodExtras,
    #[error("pod_cache_not_synced")]
    PodCacheNotSynced,
    #[error("pod_not_found")]
    PodNotFound,
    #[error("pod_uid_mismatch")]
    PodUidMismatch,
    #[error("pod_not_scheduled")]
    PodNotScheduled,
    #[error("bad_node_name")]
    BadNodeName(String),
    #[error("evicted")]
    Evicted(String),
    #[error("not_renewable")]
    NotRenewable,
    #[error("agent_pod_gone")]
    AgentPodGone(String),
}

impl AttestRefusal {
    /// The human explanation, safe to return to the caller (it never includes the token).
    pub fn message(&self) -> String {
        match self {
            Self::MethodNotEnabled(m) => format!("attestation method {m} is not enabled on this server"),
            Self::JoinToken(e) => e.message().to_owned(),
            Self::TokenTooLong => format!("token longer than {MAX_TOKEN_LEN} bytes"),
            Self::NotAuthenticated(why) => format!("the API server did not authenticate the token: {why}"),
            Self::ReviewUnavailable(why) => format!("TokenReview failed, retry later: {why}"),
            Self::WrongAudience => "the token's audiences do not include this server's audience".into(),
            Self::NotAServiceAccount(user) => format!("{user:?} is not a ServiceAccount"),
            Self::ServiceAccountNotAllowed(sa) => format!("ServiceAccount {sa} is not on the agent allow-list"),
            Self::MissingPodExtras => "the token is not bound to a pod (no pod-name/pod-uid extras); use a projected token".into(),
            Self::PodCacheNotSynced => "the server has not finished listing pods yet; retry".into(),
            Self::PodNotFound => "the token's pod does not exist".into(),
            Self::PodUidMismatch => "the token's pod UID does not match the pod of that name".into(),
            Self::PodNotScheduled => "the token's pod is not scheduled to a node".into(),
            Self::BadNodeName(n) => format!("node name {n:?} cannot be part of a SPIFFE ID"),
            Self::Evicted(n) => format!("node {n} was evicted; attest again with a new join token"),
            Self::NotRenewable => "only join-token agents renew with their node SVID; k8s_psat agents attest again".into(),
            Self::AgentPodGone(n) => format!("no agent pod runs on node {n} any more"),
        }
    }

    /// True when the caller should retry the same request later.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::ReviewUnavailable(_) | Self::PodCacheNotSynced)
    }
}

/// Kubernetes attestation settings and sources.
pub struct K8sPsat {
    pub reviewer: Arc<dyn TokenReviewer>,
    pub pods: Arc<dyn PodLookup>,
    /// `(namespace, service account)` pairs allowed to attest.
    pub allowed: Vec<(String, String)>,
    pub audience: String,
}

/// The attestation method this server runs.
pub enum Method {
    JoinToken {
        tokens: Arc<JoinTokens>,
        evictions: Arc<Evictions>,
    },
    K8sPsat(K8sPsat),
}

pub struct NodeAttestor {
    trust_domain: TrustDomain,
    method: Method,
}

impl NodeAttestor {
    pub fn new(trust_domain: TrustDomain, method: Method) -> Self {
        Self {
            trust_domain,
            method,
        }
    }

    fn identity(
        &self,
        method: NodeAttestation,
        node: String,
    ) -> Result<AgentIdentity, AttestRefusal> {
        agent_id(&self.trust_domain, method, &node)
            .map_err(|_| AttestRefusal::BadNodeName(node.clone()))?;
        Ok(AgentIdentity { method, node })
    }

    /// Redeems a join token.
    pub fn attest_join_token(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<AgentIdentity, AttestRefusal> {
        let Method::JoinToken { tokens, .. } = &self.method else {
            return Err(AttestRefusal::MethodNotEnabled(NodeAttestation::JoinToken));
        };
        let node = tokens
            .redeem(token, now)
            .map_err(AttestRefusal::JoinToken)?;
        self.identity(NodeAttestation::JoinToken, node)
    }

    /// Reviews a projected ServiceAccount token.
    pub async fn attest_k8s_psat(&self, token: &str) -> Result<AgentIdentity, AttestRefusal> {
        let Method::K8sPsat(k8s) = &self.method else {
            return Err(AttestRefusal::MethodNotEnabled(NodeAttestation::K8sPsat));
        };
        if token.len() > MAX_TOKEN_LEN {
            return Err(AttestRefusal::TokenTooLong);
        }
        let review = k8s
            .reviewer
            .review(token, &k8s.audience)
            .await
            .map_err(|e| match e {
                ReviewError::NotAuthenticated(why) => AttestRefusal::NotAuthenticated(why),
                ReviewError::Unavailable(why) => AttestRefusal::ReviewUnavailable(why),
            })?;
        if !review.audiences.iter().any(|a| a == &k8s.audience) {
            return Err(AttestRefusal::WrongAudience);
        }
        let (namespace, service_account) = review
            .username
            .strip_prefix(SA_USER_PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .ok_or_else(|| AttestRefusal::NotAServiceAccount(review.username.clone()))?;
        if !k8s
            .allowed
            .iter()
            .any(|(ns, sa)| ns == namespace && sa == service_account)
        {
            return Err(AttestRefusal::ServiceAccountNotAllowed(format!(
                "{namespace}:{service_account}"
            )));
        }
        let single = |key: &str| match review.extra.get(key).map(Vec::as_slice) {
            Some([value]) if !value.is_empty() => Some(value.clone()),
            _ => None,
        };
        let (Some(pod_name), Some(pod_uid)) = (single(EXTRA_POD_NAME), single(EXTRA_POD_UID))
        else {
            return Err(AttestRefusal::MissingPodExtras);
        };
        let node = match single(EXTRA_NODE_NAME) {
            // Kubernetes 1.30+ binds the node into the token itself.
            Some(node) => node,
            // Older clusters: find the pod and check it is the very pod the token was bound to.
            None => {
                if !k8s.pods.is_synced() {
                    return Err(AttestRefusal::PodCacheNotSynced);
                }
                let pod = k8s
                    .pods
                    .by_name(namespace, &pod_name)
                    .ok_or(AttestRefusal::PodNotFound)?;
                if pod.uid != pod_uid {
                    return Err(AttestRefusal::PodUidMismatch);
                }
                if pod.node_name.is_empty() {
                    return Err(AttestRefusal::PodNotScheduled);
                }
                pod.node_name
            }
        };
        self.identity(NodeAttestation::K8sPsat, node)
    }

    /// Renewal by a join-token agent presenting its node SVID (issued at `issued_at`).
    pub fn renew(
        &self,
        agent: &AgentIdentity,
        issued_at: SystemTime,
    ) -> Result<AgentIdentity, AttestRefusal> {
        if agent.method != NodeAttestation::JoinToken {
            return Err(AttestRefusal::NotRenewable);
        }
        self.check_agent(agent, issued_at)?;
        Ok(agent.clone())
    }

    /// Re-checks, on every call, that a node SVID still speaks for its node.
    /// Resolves when an agent that passed [`NodeAttestor::check_agent`] with a node SVID
    /// issued at `issued_at` stops passing it for good (a join-token node evicted), so feeds
    /// opened before can end. Never resolves for agents nothing revokes while they stream.
    pub fn revoked(
        &self,
        agent: &AgentIdentity,
        issued_at: SystemTime,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = AttestRefusal> + Send + 'static>> {
        match (&self.method, agent.method) {
            (Method::JoinToken { evictions, .. }, NodeAttestation::JoinToken) => {
                let evicted = evictions.clone().evicted(agent.node.clone(), issued_at);
                let node = agent.node.clone();
                Box::pin(async move {
                    evicted.await;
                    AttestRefusal::Evicted(node)
                })
            }
            _ => Box::pin(std::future::pending()),
        }
    }

    pub fn check_agent(
        &self,
        agent: &AgentIdentity,
        issued_at: SystemTime,
    ) -> Result<(), AttestRefusal> {
        match (&self.method, agent.method) {
            (Method::JoinToken { evictions, .. }, NodeAttestation::JoinToken) => {
                if evictions.is_evicted(&agent.node, issued_at) {
                    return Err(AttestRefusal::Evicted(agent.node.clone()));
                }
                Ok(())
            }
            (Method::K8sPsat(k8s), NodeAttestation::K8sPsat) => {
                if !k8s.pods.is_synced() {
                    return Err(AttestRefusal::PodCacheNotSynced);
                }
                let agent_pod_runs = k8s.pods.on_node(&agent.node).iter().any(|p| {
                    p.active
                        && k8s
                            .allowed
                            .iter()
                            .any(|(ns, sa)| *ns == p.namespace && *sa == p.service_account)
                });
                if agent_pod_runs {
                    Ok(())
                } else {
                    Err(AttestRefusal::AgentPodGone(agent.node.clone()))
                }
            }
            (_, method) => Err(AttestRefusal::MethodNotEnabled(method)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::pods::{PodIndex, test_pod};
    use crate::k8s::token_review::ReviewedToken;
    use std::collections::BTreeMap;
    use std::time::Duration;

    struct FakeReviewer(Result<ReviewedToken, ReviewError>);

    #[tonic::async_trait]
    impl TokenReviewer for FakeReviewer {
        async fn review(&self, _: &str, _: &str) -> Result<ReviewedToken, ReviewError> {
            self.0.clone()
        }
    }

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn review(user: &str, aud: &str, extras: &[(&str, &str)]) -> ReviewedToken {
        ReviewedToken {
            username: user.into(),
            audiences: vec![aud.into()],
            extra: extras
                .iter()
                .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn psat(result: Result<ReviewedToken, ReviewError>, pods: PodIndex) -> NodeAttestor {
        NodeAttestor::new(
            td(),
            Method::K8sPsat(K8sPsat {
                reviewer: Arc::new(FakeReviewer(result)),
                pods: Arc::new(pods),
                allowed: vec![("lanyard".into(), "lanyard-agent".into())],
                audience: "lanyard-server".into(),
            }),
        )
    }

    const AGENT: &str = "system:serviceaccount:lanyard:lanyard-agent";

    fn synced_pods() -> PodIndex {
        let pods = PodIndex::new();
        pods.replace_all(vec![test_pod(
            "lanyard",
            "agent-x",
            "uid-1",
            "lanyard-agent",
            "node-1",
        )]);
        pods
    }

    #[tokio::test]
    async fn psat_with_node_extra() {
        let a = psat(
            Ok(review(
                AGENT,
                "lanyard-server",
                &[
                    (EXTRA_POD_NAME, "agent-x"),
                    (EXTRA_POD_UID, "uid-1"),
                    (EXTRA_NODE_NAME, "node-9"),
                ],
            )),
            PodIndex::new(),
        );
        let id = a.attest_k8s_psat("t").await.unwrap();
        assert_eq!(id.node, "node-9");
        assert_eq!(id.method, NodeAttestation::K8sPsat);
    }

    #[tokio::test]
    async fn psat_without_node_extra_uses_the_pod() {
        let extras = [(EXTRA_POD_NAME, "agent-x"), (EXTRA_POD_UID, "uid-1")];
        let a = psat(Ok(review(AGENT, "lanyard-server", &extras)), synced_pods());
        assert_eq!(a.attest_k8s_psat("t").await.unwrap().node, "node-1");

        let wrong_uid = [(EXTRA_POD_NAME, "agent-x"), (EXTRA_POD_UID, "uid-2")];
        let a = psat(
            Ok(review(AGENT, "lanyard-server", &wrong_uid)),
            synced_pods(),
        );
        assert_eq!(
            a.attest_k8s_psat("t").await,
            Err(AttestRefusal::PodUidMismatch)
        );

        let a = psat(
            Ok(review(AGENT, "lanyard-server", &extras)),
            PodIndex::new(),
        );
        assert_eq!(
            a.attest_k8s_psat("t").await,
            Err(AttestRefusal::PodCacheNotSynced)
        );
    }

    #[tokio::test]
    async fn psat_refusals() {
        let extras = [
            (EXTRA_POD_NAME, "agent-x"),
            (EXTRA_POD_UID, "uid-1"),
            (EXTRA_NODE_NAME, "n"),
        ];
        let cases = [
            (
                Err(ReviewError::NotAuthenticated("expired".into())),
                AttestRefusal::NotAuthenticated("expired".into()),
            ),
            (
                Ok(review(AGENT, "other-aud", &extras)),
                AttestRefusal::WrongAudience,
            ),
            (
                Ok(review(
                    "system:serviceaccount:default:web",
                    "lanyard-server",
                    &extras,
                )),
                AttestRefusal::ServiceAccountNotAllowed("default:web".into()),
            ),
            (
                Ok(review("alice", "lanyard-server", &extras)),
                AttestRefusal::NotAServiceAccount("alice".into()),
            ),
            (
                Ok(review(
                    AGENT,
                    "lanyard-server",
                    &[(EXTRA_POD_NAME, "agent-x")],
                )),
                AttestRefusal::MissingPodExtras,
            ),
            (
                Ok(review(
                    AGENT,
                    "lanyard-server",
                    &[
                        (EXTRA_POD_NAME, "a"),
                        (EXTRA_POD_UID, "u"),
                        (EXTRA_NODE_NAME, "a/b"),
                    ],
                )),
                AttestRefusal::BadNodeName("a/b".into()),
            ),
        ];
        for (result, expected) in cases {
            assert_eq!(
                psat(result, synced_pods()).attest_k8s_psat("t").await,
                Err(expected)
            );
        }
        let a = psat(Ok(review(AGENT, "lanyard-server", &extras)), synced_pods());
        assert_eq!(
            a.attest_k8s_psat(&"x".repeat(MAX_TOKEN_LEN + 1)).await,
            Err(AttestRefusal::TokenTooLong)
        );
        assert_eq!(
            a.attest_join_token("t", SystemTime::now()),
            Err(AttestRefusal::MethodNotEnabled(NodeAttestation::JoinToken))
        );
    }

    #[test]
    fn psat_agent_is_checked_against_running_agent_pods() {
        let pods = synced_pods();
        let a = psat(Err(ReviewError::Unavailable("unused".into())), pods.clone());
        let agent = AgentIdentity {
            method: NodeAttestation::K8sPsat,
            node: "node-1".into(),
        };
        let now = SystemTime::now();
        assert_eq!(a.check_agent(&agent, now), Ok(()));
        assert_eq!(a.renew(&agent, now), Err(AttestRefusal::NotRenewable));
        pods.delete("uid-1");
        assert_eq!(
            a.check_agent(&agent, now),
            Err(AttestRefusal::AgentPodGone("node-1".into()))
        );
    }

    #[test]
    fn join_token_flow_and_eviction() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Arc::new(JoinTokens::new());
        let evictions = Arc::new(Evictions::load(dir.path(), true).unwrap());
        let a = NodeAttestor::new(
            td(),
            Method::JoinToken {
                tokens: tokens.clone(),
                evictions: evictions.clone(),
            },
        );
        let now = SystemTime::now();
        let token = tokens
            .generate("node-1", Duration::from_secs(60), now)
            .unwrap();
        let agent = a.attest_join_token(&token, now).unwrap();
        assert_eq!(agent.node, "node-1");
        assert_eq!(
            a.attest_join_token(&token, now),
            Err(AttestRefusal::JoinToken(JoinTokenError::Unknown))
        );
        assert_eq!(a.renew(&agent, now), Ok(agent.clone()));
        evictions.evict("node-1", now).unwrap();
        assert_eq!(
            a.renew(&agent, now),
            Err(AttestRefusal::Evicted("node-1".into()))
        );
        assert_eq!(
            a.check_agent(&agent, now),
            Err(AttestRefusal::Evicted("node-1".into()))
        );
        // A later SVID (after attesting again with a new token) is fine.
        assert_eq!(a.check_agent(&agent, now + Duration::from_secs(2)), Ok(()));
        let expired = tokens
            .generate("node-2", Duration::from_secs(1), now)
            .unwrap();
        assert_eq!(
            a.attest_join_token(&expired, now + Duration::from_secs(5)),
            Err(AttestRefusal::JoinToken(JoinTokenError::Expired))
        );
        let psat_agent = AgentIdentity {
            method: NodeAttestation::K8sPsat,
            node: "node-1".into(),
        };
        assert!(a.check_agent(&psat_agent, now).is_err());
    }
}
