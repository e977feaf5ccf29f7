//! One-shot Workload API calls for tools (`lanyard-agent api`, `lanyard check`): fetch the
//! caller's X.509-SVIDs, a JWT-SVID, the bundles, or validate a JWT-SVID, each bounded by a
//! timeout, with errors that name the RPC and the agent's answer.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use lanyard_proto::workload::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, X509BundlesRequest, X509svidRequest,
};
use lanyard_svid::X509Svid;
use lanyard_svid::bundle::certificates_from_der;
use rustls_pki_types::CertificateDer;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use crate::channel::{self, ChannelError, request};
use crate::struct_json::struct_to_json;

/// Why a call gave no answer. Each names the RPC.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Connect(#[from] ChannelError),
    #[error("{rpc}: {:?}: {}", .status.code(), .status.message())]
    Status {
        rpc: &'static str,
        #[source]
        status: tonic::Status,
    },
    #[error("{rpc}: no answer within {timeout:?}")]
    Timeout {
        rpc: &'static str,
        timeout: Duration,
    },
    #[error("{rpc}: the stream ended without a message")]
    StreamEnded { rpc: &'static str },
    #[error("{rpc}: the response holds no {what}")]
    Empty {
        rpc: &'static str,
        what: &'static str,
    },
    #[error("{rpc}: {what} is unusable: {why}")]
    Unusable {
        rpc: &'static str,
        what: String,
        why: String,
    },
}

/// One X.509-SVID of the caller and its trust domain's bundle (concatenated DER).
pub struct FetchedSvid {
    pub svid: X509Svid,
    pub bundle_der: Vec<u8>,
}

/// A trust domain's authorities, from `FetchX509Bundles` and `FetchJWTBundles`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainBundles {
    pub x509_authorities: Vec<CertificateDer<'static>>,
    /// How many keys its JWT bundle (JWKS) holds.
    pub jwt_authorities: usize,
}

/// What `ValidateJWTSVID` said about a token.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    pub spiffe_id: String,
    pub claims: Option<serde_json::Value>,
}

/// A Workload API client on the agent's socket whose calls each wait at most `timeout`.
pub struct WorkloadClient {
    client: SpiffeWorkloadApiClient<Channel>,
    timeout: Duration,
}

impl WorkloadClient {
    /// Connects to the socket at `socket` (within `timeout`).
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Self, FetchError> {
        let channel = channel::connect_within(socket, timeout).await?;
        Ok(Self::from_channel(channel, timeout))
    }

    pub fn from_channel(channel: Channel, timeout: Duration) -> Self {
        Self {
            client: SpiffeWorkloadApiClient::new(channel),
            timeout,
        }
    }

    /// The caller's X.509-SVIDs, default first (the first message of `FetchX509SVID`).
    pub async fn x509_svids(&mut self) -> Result<Vec<FetchedSvid>, FetchError> {
        const RPC: &str = "FetchX509SVID";
        let call = self
            .client
            .fetch_x509svid(request(X509svidRequest {}, self.timeout));
        let response = first_message(RPC, self.timeout, call).await?;
        if response.svids.is_empty() {
            return Err(FetchError::Empty {
                rpc: RPC,
                what: "SVID",
            });
        }
        response
            .svids
            .into_iter()
            .map(|mut entry| {
                let key = Zeroizing::new(std::mem::take(&mut entry.x509_svid_key));
                let svid = X509Svid::from_concat_der(&entry.x509_svid, Some(key)).map_err(|e| {
                    FetchError::Unusable {
                        rpc: RPC,
                        what: format!("SVID {}", entry.spiffe_id),
                        why: e.message(),
                    }
                })?;
                Ok(FetchedSvid {
                    svid,
                    bundle_der: entry.bundle,
                })
            })
            .collect()
    }

    /// A JWT-SVID for `audience`: the default identity's, or `spiffe_id`'s.
    pub async fn jwt_svid(
        &mut self,
        audience: Vec<String>,
        spiffe_id: Option<String>,
    ) -> Result<String, FetchError> {
        const RPC: &str = "FetchJWTSVID";
        let call = self.client.fetch_jwtsvid(request(
            JwtsvidRequest {
                audience,
                spiffe_id: spiffe_id.unwrap_or_default(),
            },
            self.timeout,
        ));
        let response = unary(RPC, self.timeout, call).await?;
        response
            .svids
            .into_iter()
            .next()
            .map(|svid| svid.svid)
            .ok_or(FetchError::Empty {
                rpc: RPC,
                what: "token",
            })
    }

    /// Every trust domain's authorities, by trust domain ID.
    pub async fn bundles(&mut self) -> Result<BTreeMap<String, DomainBundles>, FetchError> {
        let timeout = self.timeout;
        let call = self
            .client
            .fetch_x509_bundles(request(X509BundlesRequest {}, timeout));
        let x509 = first_message("FetchX509Bundles", timeout, call).await?;
        let call = self
            .client
            .fetch_jwt_bundles(request(JwtBundlesRequest {}, timeout));
        let jwt = first_message("FetchJWTBundles", timeout, call).await?;
        let mut domains: BTreeMap<String, DomainBundles> = BTreeMap::new();
        for (domain, der) in x509.bundles {
            let certs = certificates_from_der(&der).map_err(|e| FetchError::Unusable {
                rpc: "FetchX509Bundles",
                what: format!("the X.509 bundle of {domain}"),
                why: e.to_string(),
            })?;
            domains.entry(domain).or_default().x509_authorities = certs;
        }
        for (domain, document) in jwt.bundles {
            let keys = serde_json::from_slice::<serde_json::Value>(&document)
                .map_err(|e| FetchError::Unusable {
                    rpc: "FetchJWTBundles",
                    what: format!("the JWT bundle of {domain}"),
                    why: e.to_string(),
                })?
                .get("keys")
                .and_then(|k| k.as_array().map(Vec::len))
                .unwrap_or(0);
            domains.entry(domain).or_default().jwt_authorities = keys;
        }
        Ok(domains)
    }

    /// Validates `token` for `audience`; the subject and the claims as JSON.
    pub async fn validate_jwt(
        &mut self,
        audience: String,
        token: String,
    ) -> Result<Validated, FetchError> {
        let call = self.client.validate_jwtsvid(request(
            ValidateJwtsvidRequest {
                audience,
                svid: token,
            },
            self.timeout,
        ));
        let response = unary("ValidateJWTSVID", self.timeout, call).await?;
        Ok(Validated {
            spiffe_id: response.spiffe_id,
            claims: response.claims.as_ref().map(struct_to_json),
        })
    }
}

async fn unary<T>(
    rpc: &'static str,
    timeout: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, FetchError> {
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(FetchError::Timeout { rpc, timeout }),
        Ok(Err(status)) => Err(FetchError::Status { rpc, status }),
        Ok(Ok(response)) => Ok(response.into_inner()),
    }
}

/// The first message of a stream (clients read only the first; each carries the full state).
async fn first_message<T>(
    rpc: &'static str,
    timeout: Duration,
    call: impl Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>>,
) -> Result<T, FetchError> {
    let first = async {
        let mut stream = call.await?.into_inner();
        stream.message().await
    };
    match tokio::time::timeout(timeout, first).await {
        Err(_) => Err(FetchError::Timeout { rpc, timeout }),
        Ok(Err(status)) => Err(FetchError::Status { rpc, status }),
        Ok(Ok(None)) => Err(FetchError::StreamEnded { rpc }),
        Ok(Ok(Some(message))) => Ok(message),
    }
}
