//! ServiceAccount tokens: issuing bound tokens, authenticating API requests with them, and
//! answering `authentication.k8s.io/v1` TokenReviews as the API server does.
//!
//! References: "Managing Service Accounts", bound service account tokens
//! (<https://kubernetes.io/docs/reference/access-authn-authz/service-accounts-admin/#bound-service-account-tokens>),
//! "Authenticating", service account tokens and webhook token review
//! (<https://kubernetes.io/docs/reference/access-authn-authz/authentication/#service-account-tokens>),
//! and the TokenReview API
//! (<https://kubernetes.io/docs/reference/kubernetes-api/authentication-resources/token-review-v1/>).
//!
//! Faithful where our server depends on it:
//! - A token is a JWT (ES256, signed by the fixture) with the API server's claims: `iss`, `sub`
//!   = `system:serviceaccount:NS:SA`, `aud`, `exp`/`iat`/`nbf`, `jti`, and the private
//!   `kubernetes.io` claim naming the namespace, ServiceAccount, pod and node.
//! - A review authenticates a token only if the fixture issued it, it has not expired, its
//!   audiences intersect the requested ones (the API server's own audiences when the request
//!   names none) and, for a pod-bound token, that pod still exists with the bound UID.
//!   `status.audiences` is that intersection.
//! - `status.user`: username `system:serviceaccount:NS:SA`, uid of the ServiceAccount, groups
//!   `system:serviceaccounts`, `system:serviceaccounts:NS`, `system:authenticated`; `extra`
//!   holds `authentication.kubernetes.io/pod-name`, `pod-uid`, `credential-id` (`JTI=...`) and,
//!   since Kubernetes 1.30, `node-name` / `node-uid`; [`Tokens::set_node_name_extra`] turns the
//!   node extras off to behave like an older cluster.
//! - A refused review is `authenticated: false` with an `error` worded like the API server's,
//!   and HTTP 201 (the review itself succeeded).
//!
//! Simplified: the ServiceAccount need not exist as an object (its UID is made up once per
//! name, or taken from a stored ServiceAccount); a bound node is not checked for existence;
//! the signature is not what makes a token valid here, the fixture's record of issuing it is.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewStatus, UserInfo};
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::json;

use crate::clock::Clock;
use crate::ids;
use crate::rbac::{SUPERUSER_GROUP, User};
use crate::status::{ApiError, Reason};
use crate::store::Store;

/// The issuer and default API audience of a cluster created with default settings.
pub const DEFAULT_API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
/// The `user.extra` key naming the pod a token is bound to.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// The `user.extra` key with the bound pod's UID.
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
/// The `user.extra` key naming the bound node (Kubernetes 1.30+).
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
/// The `user.extra` key with the bound node's UID (Kubernetes 1.30+).
pub const EXTRA_NODE_UID: &str = "authentication.kubernetes.io/node-uid";
/// The `user.extra` key identifying the credential (`JTI=<jti>`).
pub const EXTRA_CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";

/// Username of the fixture's admin identity (member of `system:masters`).
pub const ADMIN_USER: &str = "kube-fixture:admin";

/// Longest token accepted in a header or review (bounds work on hostile input).
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Most tokens the fixture remembers.
const MAX_TOKENS: usize = 100_000;

/// What a token is bound to, as the kubelet's projected token for a pod is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBinding {
    /// The pod's name (in the ServiceAccount's namespace).
    pub pod_name: String,
    /// The pod's UID; the token is only valid while a pod with this UID exists.
    pub pod_uid: String,
    /// The node the pod runs on, if the token names it (Kubernetes 1.30+ does).
    pub node_name: Option<String>,
}

/// Why a token was not authenticated. `Display` is a snake_case label;
/// [`TokenRejection::message`] is the API server's wording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenRejection {
    /// Empty, oversized, or a token the fixture never issued.
    Unknown,
    /// Past its `exp`.
    Expired,
    /// None of the token's audiences is acceptable.
    WrongAudience {
        /// The token's `aud`.
        token: Vec<String>,
        /// What the review (or the API server) accepts.
        accepted: Vec<String>,
    },
    /// The bound pod no longer exists.
    PodNotFound(String),
    /// A pod of that name exists, but it is not the one the token was bound to.
    PodUidMismatch(String),
}

impl std::fmt::Display for TokenRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenRejection::Unknown => "unknown_token",
            TokenRejection::Expired => "expired",
            TokenRejection::WrongAudience { .. } => "wrong_audience",
            TokenRejection::PodNotFound(_) => "bound_pod_not_found",
            TokenRejection::PodUidMismatch(_) => "bound_pod_uid_mismatch",
        })
    }
}

impl TokenRejection {
    /// The `status.error` text, worded like the API server's union authenticator.
    pub fn message(&self) -> String {
        let detail = match self {
            TokenRejection::Unknown => "token lookup failed: not issued by this cluster".into(),
            TokenRejection::Expired => "service account token has expired".into(),
            TokenRejection::WrongAudience { token, accepted } => {
                format!(
                    "token audiences {token:?} is invalid for the target audiences {accepted:?}"
                )
            }
            TokenRejection::PodNotFound(name) => {
                format!("pod \"{name}\" not found: the token's bound pod was deleted")
            }
            TokenRejection::PodUidMismatch(name) => format!(
                "pod \"{name}\" UID does not match the token's bound pod: the pod was recreated"
            ),
        };
        format!("[invalid bearer token, {detail}]")
    }
}

/// An authenticated ServiceAccount (or the admin).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticated {
    /// The identity for RBAC.
    pub user: User,
    /// `user.uid`.
    pub uid: String,
    /// `user.extra`.
    pub extra: BTreeMap<String, Vec<String>>,
    /// The requested audiences the token carries.
    pub audiences: Vec<String>,
}

#[derive(Clone, Debug)]
struct IssuedToken {
    namespace: String,
    service_account: String,
    service_account_uid: String,
    binding: Option<TokenBinding>,
    node_uid: Option<String>,
    audiences: Vec<String>,
    expires_at: Timestamp,
    jti: String,
}

/// The fixture's token authority.
pub struct Tokens {
    signing_key: EcdsaKeyPair,
    issued: Mutex<HashMap<String, IssuedToken>>,
    sa_uids: Mutex<HashMap<(String, String), String>>,
    admin_token: String,
    api_audiences: Vec<String>,
    node_name_extra: AtomicBool,
    check_bound_pods: bool,
    clock: Arc<Clock>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens are credentials: never print them.
        f.debug_struct("Tokens")
            .field("api_audiences", &self.api_audiences)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    pub(crate) fn new(
        clock: Arc<Clock>,
        api_audiences: Vec<String>,
        check_bound_pods: bool,
    ) -> Result<Self, ApiError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| ApiError::internal("generating the token signing key failed"))?;
        let signing_key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                .map_err(|_| ApiError::internal("loading the token signing key failed"))?;
        let admin_token = format!(
            "kube-fixture-admin.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ids::secret_bytes())
        );
        Ok(Self {
            signing_key,
            issued: Mutex::new(HashMap::new()),
            sa_uids: Mutex::new(HashMap::new()),
            admin_token,
            api_audiences,
            node_name_extra: AtomicBool::new(true),
            check_bound_pods,
            clock,
        })
    }

    /// The admin bearer token (member of `system:masters`, bypasses RBAC).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The audiences the API server accepts for its own requests.
    pub fn api_audiences(&self) -> &[String] {
        &self.api_audiences
    }

    /// Whether reviews report `node-name`/`node-uid` extras (Kubernetes 1.30+ behaviour, the
    /// default) or not (older clusters).
    pub fn set_node_name_extra(&self, enabled: bool) {
        self.node_name_extra.store(enabled, Ordering::SeqCst);
    }

    /// Issues a ServiceAccount token (a JWT) for `audiences`, valid for `ttl`.
    pub(crate) fn issue(
        &self,
        store: &Store,
        namespace: &str,
        service_account: &str,
        binding: Option<TokenBinding>,
        audiences: Vec<String>,
        ttl: Duration,
    ) -> String {
        let now = self.clock.now();
        let expires_at = now
            .checked_add(SignedDuration::try_from(ttl).unwrap_or(SignedDuration::MAX))
            .unwrap_or(Timestamp::MAX);
        let service_account_uid = self.service_account_uid(store, namespace, service_account);
        // The node's UID comes from a stored Node of that name, else it is made up.
        let node_uid = binding
            .as_ref()
            .and_then(|b| b.node_name.as_ref())
            .map(|node| {
                store
                    .get::<Node>("", node)
                    .ok()
                    .and_then(|n| n.metadata.uid)
                    .unwrap_or_else(ids::uid)
            });
        let jti = ids::uid();
        let mut k8s = json!({
            "namespace": namespace,
            "serviceaccount": {"name": service_account, "uid": service_account_uid},
        });
        if let Some(b) = &binding {
            k8s["pod"] = json!({"name": b.pod_name, "uid": b.pod_uid});
            if let (Some(node), Some(uid)) = (&b.node_name, &node_uid) {
                k8s["node"] = json!({"name": node, "uid": uid});
            }
        }
        let claims = json!({
            "aud": audiences,
            "exp": expires_at.as_second(),
            "iat": now.as_second(),
            "nbf": now.as_second(),
            "iss": DEFAULT_API_AUDIENCE,
            "jti": jti,
            "kubernetes.io": k8s,
            "sub": format!("system:serviceaccount:{namespace}:{service_account}"),
        });
        let token = self.sign_jwt(&claims);
        let record = IssuedToken {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            service_account_uid,
            binding,
            node_uid,
            audiences,
            expires_at,
            jti,
        };
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        if issued.len() >= MAX_TOKENS {
            // Forget expired tokens first; a test issuing this many is itself the bug.
            let now = self.clock.now();
            issued.retain(|_, t| t.expires_at > now);
        }
        issued.insert(token.clone(), record);
        token
    }

    fn sign_jwt(&self, claims: &serde_json::Value) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = json!({"alg": "ES256", "kid": "kube-fixture"});
        let signing_input = format!(
            "{}.{}",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        );
        let signature = self
            .signing_key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map(|s| b64.encode(s.as_ref()))
            // Signing only fails if the RNG does; the token stays unique through its jti.
            .unwrap_or_default();
        format!("{signing_input}.{signature}")
    }

    fn service_account_uid(&self, store: &Store, namespace: &str, name: &str) -> String {
        if let Ok(sa) = store.get::<ServiceAccount>(namespace, name)
            && let Some(uid) = sa.metadata.uid
        {
            return uid;
        }
        self.sa_uids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((namespace.to_string(), name.to_string()))
            .or_insert_with(ids::uid)
            .clone()
    }

    /// Authenticates a bearer token for an API request (audience: the API server's own).
    pub(crate) fn authenticate_request(
        &self,
        store: &Store,
        token: &str,
    ) -> Result<Authenticated, TokenRejection> {
        if token == self.admin_token {
            return Ok(Authenticated {
                user: User {
                    name: ADMIN_USER.to_string(),
                    groups: vec![SUPERUSER_GROUP.into(), "system:authenticated".into()],
                },
                uid: String::new(),
                extra: BTreeMap::new(),
                audiences: self.api_audiences.clone(),
            });
        }
        self.authenticate(store, token, &self.api_audiences)
    }

    /// Validates a token against `accepted` audiences, as a TokenReview does.
    pub fn authenticate(
        &self,
        store: &Store,
        token: &str,
        accepted: &[String],
    ) -> Result<Authenticated, TokenRejection> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(TokenRejection::Unknown);
        }
        let record = self
            .issued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
            .ok_or(TokenRejection::Unknown)?;
        if self.clock.now() >= record.expires_at {
            return Err(TokenRejection::Expired);
        }
        let matched: Vec<String> = accepted
            .iter()
            .filter(|a| record.audiences.contains(a))
            .cloned()
            .collect();
        if matched.is_empty() {
            return Err(TokenRejection::WrongAudience {
                token: record.audiences.clone(),
                accepted: accepted.to_vec(),
            });
        }
        if let Some(b) = &record.binding
            && self.check_bound_pods
        {
            match store.get::<Pod>(&record.namespace, &b.pod_name) {
                Err(_) => return Err(TokenRejection::PodNotFound(b.pod_name.clone())),
                Ok(pod) if pod.metadata.uid.as_deref() != Some(b.pod_uid.as_str()) => {
                    return Err(TokenRejection::PodUidMismatch(b.pod_name.clone()));
                }
                Ok(_) => {}
            }
        }
        let mut extra = BTreeMap::new();
        extra.insert(
            EXTRA_CREDENTIAL_ID.to_string(),
            vec![format!("JTI={}", record.jti)],
        );
        if let Some(b) = &record.binding {
            extra.insert(EXTRA_POD_NAME.to_string(), vec![b.pod_name.clone()]);
            extra.insert(EXTRA_POD_UID.to_string(), vec![b.pod_uid.clone()]);
            if self.node_name_extra.load(Ordering::SeqCst)
                && let (Some(node), Some(uid)) = (&b.node_name, &record.node_uid)
            {
                extra.insert(EXTRA_NODE_NAME.to_string(), vec![node.clone()]);
                extra.insert(EXTRA_NODE_UID.to_string(), vec![uid.clone()]);
            }
        }
        Ok(Authenticated {
            user: User {
                name: format!(
                    "system:serviceaccount:{}:{}",
                    record.namespace, record.service_account
                ),
                groups: vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{}", record.namespace),
                    "system:authenticated".into(),
                ],
            },
            uid: record.service_account_uid,
            extra,
            audiences: matched,
        })
    }

    /// Answers a TokenReview: the same object back with `status` filled in.
    pub(crate) fn review(
        &self,
        store: &Store,
        mut review: TokenReview,
    ) -> Result<TokenReview, ApiError> {
        let token = review.spec.token.clone().unwrap_or_default();
        if token.is_empty() {
            return Err(ApiError::new(
                Reason::Invalid,
                "TokenReview.authentication.k8s.io \"\" is invalid: spec.token: Required value",
            ));
        }
        let accepted = match review.spec.audiences.as_deref() {
            Some(a) if !a.is_empty() => a.to_vec(),
            _ => self.api_audiences.clone(),
        };
        let status = match self.authenticate(store, &token, &accepted) {
            Ok(who) => {
                tracing::debug!(user = %who.user.name, "kube-fixture: token review authenticated");
                TokenReviewStatus {
                    audiences: Some(who.audiences),
                    authenticated: Some(true),
                    error: None,
                    user: Some(UserInfo {
                        extra: Some(who.extra),
                        groups: Some(who.user.groups),
                        uid: Some(who.uid),
                        username: Some(who.user.name),
                    }),
                }
            }
            Err(rejection) => {
                tracing::debug!(reason = %rejection, "kube-fixture: token review refused");
                TokenReviewStatus {
                    audiences: None,
                    authenticated: Some(false),
                    error: Some(rejection.message()),
                    user: Some(UserInfo::default()),
                }
            }
        };
        review.status = Some(status);
        Ok(review)
    }
}
