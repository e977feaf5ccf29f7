//! TokenReview: asking the API server whether a projected ServiceAccount token is genuine,
//! unexpired and meant for us, and whom it names.

use std::collections::BTreeMap;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};

/// The parts of a successful review that attestation decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewedToken {
    pub username: String,
    pub audiences: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Why a review did not vouch for the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The API server looked at the token and said no (unknown, expired, wrong audience...).
    #[error("token not authenticated: {0}")]
    NotAuthenticated(String),
    /// We could not get an answer; the agent should retry.
    #[error("TokenReview failed: {0}")]
    Unavailable(String),
}

/// Reviews tokens; a trait so attestation is testable without an API server.
#[tonic::async_trait]
pub trait TokenReviewer: Send + Sync {
    async fn review(&self, token: &str, audience: &str) -> Result<ReviewedToken, ReviewError>;
}

/// The real reviewer, through the `kube` client.
pub struct KubeTokenReviewer {
    client: Client,
}

impl KubeTokenReviewer {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

#[tonic::async_trait]
impl TokenReviewer for KubeTokenReviewer {
    async fn review(&self, token: &str, audience: &str) -> Result<ReviewedToken, ReviewError> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![audience.to_owned()]),
            },
            ..Default::default()
        };
        let review = api
            .create(&PostParams::default(), &request)
            .await
            .map_err(|e| ReviewError::Unavailable(e.to_string()))?;
        let status = review.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(ReviewError::NotAuthenticated(
                status.error.unwrap_or_else(|| "no reason given".into()),
            ));
        }
        let user = status.user.unwrap_or_default();
        Ok(ReviewedToken {
            username: user.username.unwrap_or_default(),
            audiences: status.audiences.unwrap_or_default(),
            extra: user.extra.unwrap_or_default(),
        })
    }
}
