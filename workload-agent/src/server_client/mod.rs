//! The agent's connection to lanyard-server: gRPC over TLS on a connector we control, so that
//! the server's SPIFFE ID is pinned (`spiffe://<td>/lanyard/server`, nothing else) and our node
//! SVID is presented as soon as we have one.
//!
//! The TLS config reads the shared [`SvidStore`] on every handshake, but an established HTTP/2
//! connection keeps the client certificate it was opened with. So after every node SVID change
//! [`ServerClient::reconnect`] replaces the channel: calls made from then on use a connection
//! that presents the new SVID (calls and streams already open finish on the old one).
//!
//! [`MintApi`] is the narrow part the certificate manager needs, so it can be tested against
//! a fake server.
//!
//! - [`feeds`]: the `WatchBundle` and `WatchNode` streams.
//! - [`discovery_cache`]: discovery answers per destination asked about by a local caller,
//!   their freshness (TTL once the server is lost) and bounds; what the agent's
//!   [`Discovery`](crate::discovery) service answers from.
//! - [`discovery_feed`]: following the cached destinations on the server's `DiscoveryFeed`.

pub mod discovery_cache;
pub mod discovery_feed;
pub mod feeds;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use lanyard_proto::identity::v1 as wire;
use lanyard_proto::identity::v1::node_identity_client::NodeIdentityClient;
use lanyard_svid::TrustDomain;
use lanyard_svid::reserved::server_id;
use lanyard_svid::tls::{ExactId, SvidStore, client_config_optional_svid, unused_server_name};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

/// Largest message accepted from the server (a 500-SVID batch response is well under it).
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Dialling and handshaking the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One unary call, start to finish.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest refusal reason taken from the server as a metric label.
const MAX_REASON_LEN: usize = 48;

/// Why a call to the server failed. `Display` is a snake_case metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    /// Not reachable, overloaded, or it said to retry.
    #[error("unavailable")]
    Unavailable(String),
    /// The server refused: `reason` is its typed refusal's label (sanitised).
    #[error("{reason}")]
    Refused { reason: String, message: String },
    /// The server answered something we cannot use.
    #[error("bad_response")]
    BadResponse(String),
    /// The `--server` address is not usable.
    #[error("bad_address")]
    BadAddress(String),
}

impl ServerError {
    /// A human explanation.
    pub fn message(&self) -> String {
        match self {
            Self::Unavailable(why) => format!("server unavailable: {why}"),
            Self::Refused { reason, message } => format!("server refused ({reason}): {message}"),
            Self::BadResponse(why) => format!("unusable answer from the server: {why}"),
            Self::BadAddress(why) => format!("server address: {why}"),
        }
    }

    /// True when trying again later may succeed without anything else changing.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// Maps a gRPC status. The server formats refusals as `reason: message`.
    pub fn from_status(status: &Status) -> Self {
        let text = status.message();
        match status.code() {
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Cancelled
            | Code::Unknown
            | Code::Internal => Self::Unavailable(format!("{:?}: {text}", status.code())),
            _ => {
                let (reason, message) = split_reason(text);
                Self::Refused { reason, message }
            }
        }
    }
}

/// `reason: message` → (reason, message); a reason that is not a short snake_case label
/// becomes `refused` (labels must stay a small, clean set).
pub fn split_reason(text: &str) -> (String, String) {
    if let Some((reason, message)) = text.split_once(": ") {
        let is_label = !reason.is_empty()
            && reason.len() <= MAX_REASON_LEN
            && reason
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if is_label {
            return (reason.to_owned(), message.to_owned());
        }
    }
    ("refused".to_owned(), text.to_owned())
}

/// The minting half of the server API: what the certificate manager calls.
#[tonic::async_trait]
pub trait MintApi: Send + Sync + 'static {
    /// One `MintX509SVIDs` call; one result per request, in order.
    async fn mint_x509_svids(
        &self,
        requests: Vec<wire::MintX509SvidRequest>,
    ) -> Result<Vec<wire::MintX509SvidResult>, ServerError>;

    /// One `MintJWTSVID` call.
    async fn mint_jwt_svid(
        &self,
        request: wire::MintJwtSvidRequest,
    ) -> Result<wire::MintJwtSvidResponse, ServerError>;
}

/// The node-attestation half of the server API: what the node SVID keeper calls.
#[tonic::async_trait]
pub trait AttestApi: Send + Sync + 'static {
    /// One `AttestNode` call: a first attestation, or a renewal with the node SVID.
    async fn attest_node(
        &self,
        request: wire::AttestNodeRequest,
    ) -> Result<wire::AttestNodeResponse, ServerError>;

    /// Makes later calls use a new connection, so they present the node SVID just installed.
    fn reconnect(&self);
}

/// A client of lanyard-server. Cheap to share (`Arc`); calls never block each other.
pub struct ServerClient {
    endpoint: Endpoint,
    address: String,
    tls: tokio_rustls::TlsConnector,
    channel: RwLock<Channel>,
}

impl std::fmt::Debug for ServerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerClient")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl ServerClient {
    /// A client for the server at `address` (`host:port`) of `trust_domain`. Nothing is dialled
    /// until the first call; a server that is down is retried per call.
    pub fn new(
        address: &str,
        store: Arc<SvidStore>,
        trust_domain: &TrustDomain,
    ) -> Result<Self, ServerError> {
        let address = address
            .strip_prefix("https://")
            .unwrap_or(address)
            .trim_end_matches('/')
            .to_owned();
        // The URI only names the HTTP/2 authority; the connector dials `address` itself.
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| ServerError::BadAddress(format!("{address:?}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        let config = client_config_optional_svid(
            store,
            Arc::new(ExactId(server_id(trust_domain))),
            vec![b"h2".to_vec()],
        );
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
        let channel = lazy_channel(&endpoint, &address, &tls);
        Ok(Self {
            endpoint,
            address,
            tls,
            channel: RwLock::new(channel),
        })
    }

    /// The server's address as configured.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Replaces the connection, so the next calls present the store's current node SVID.
    pub fn reconnect(&self) {
        let channel = lazy_channel(&self.endpoint, &self.address, &self.tls);
        *self.channel.write().unwrap_or_else(|e| e.into_inner()) = channel;
    }

    fn client(&self) -> NodeIdentityClient<Channel> {
        let channel = self
            .channel
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        NodeIdentityClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub async fn attest_node(
        &self,
        request: wire::AttestNodeRequest,
    ) -> Result<wire::AttestNodeResponse, ServerError> {
        let mut client = self.client();
        unary(client.attest_node(request)).await
    }

    /// Opens the `WatchBundle` stream.
    pub async fn watch_bundle(&self) -> Result<Streaming<wire::WatchBundleResponse>, ServerError> {
        let mut client = self.client();
        unary(client.watch_bundle(wire::WatchBundleRequest {})).await
    }

    /// Opens the `WatchNode` stream.
    pub async fn watch_node(&self) -> Result<Streaming<wire::WatchNodeResponse>, ServerError> {
        let mut client = self.client();
        unary(client.watch_node(wire::WatchNodeRequest {})).await
    }
}

/// Awaits a call (with [`CALL_TIMEOUT`]) and maps its status.
async fn unary<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, ServerError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Err(_) => Err(ServerError::Unavailable(format!(
            "no answer within {}s",
            CALL_TIMEOUT.as_secs()
        ))),
        Ok(Err(status)) => Err(ServerError::from_status(&status)),
        Ok(Ok(response)) => Ok(response.into_inner()),
    }
}

#[tonic::async_trait]
impl AttestApi for ServerClient {
    async fn attest_node(
        &self,
        request: wire::AttestNodeRequest,
    ) -> Result<wire::AttestNodeResponse, ServerError> {
        ServerClient::attest_node(self, request).await
    }

    fn reconnect(&self) {
        ServerClient::reconnect(self);
    }
}

#[tonic::async_trait]
impl MintApi for ServerClient {
    async fn mint_x509_svids(
        &self,
        requests: Vec<wire::MintX509SvidRequest>,
    ) -> Result<Vec<wire::MintX509SvidResult>, ServerError> {
        let sent = requests.len();
        let mut client = self.client();
        let response =
            unary(client.mint_x509svi_ds(wire::MintX509SvidsRequest { requests })).await?;
        if response.results.len() != sent {
            return Err(ServerError::BadResponse(format!(
                "{} results for {sent} requests",
                response.results.len()
            )));
        }
        Ok(response.results)
    }

    async fn mint_jwt_svid(
        &self,
        request: wire::MintJwtSvidRequest,
    ) -> Result<wire::MintJwtSvidResponse, ServerError> {
        let mut client = self.client();
        unary(client.mint_jwtsvid(request)).await
    }
}

/// A channel that dials `address` over TCP and does the TLS handshake itself.
fn lazy_channel(endpoint: &Endpoint, address: &str, tls: &tokio_rustls::TlsConnector) -> Channel {
    let address = address.to_owned();
    let tls = tls.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let address = address.clone();
        let tls = tls.clone();
        async move {
            let tcp = TcpStream::connect(&address).await?;
            tcp.set_nodelay(true)?;
            let stream = tls.connect(unused_server_name(), tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    endpoint.connect_with_connector_lazy(connector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_typed_errors() {
        let refused = ServerError::from_status(&Status::permission_denied(
            "entry_not_assigned_to_node: the static entry is not assigned",
        ));
        assert_eq!(refused.to_string(), "entry_not_assigned_to_node");
        assert!(!refused.is_transient());
        let odd = ServerError::from_status(&Status::permission_denied("Weird Reason: x"));
        assert_eq!(odd.to_string(), "refused");
        let down = ServerError::from_status(&Status::unavailable("connection refused"));
        assert_eq!(down.to_string(), "unavailable");
        assert!(down.is_transient());
        let long = "a".repeat(MAX_REASON_LEN + 1);
        assert_eq!(split_reason(&format!("{long}: m")).0, "refused");
    }

    #[test]
    fn bad_address_is_refused() {
        let store = Arc::new(SvidStore::new(lanyard_svid::BundleSet::new()));
        let td = TrustDomain::new("example.org").unwrap();
        let err = ServerClient::new("not a host:port", store, &td).unwrap_err();
        assert_eq!(err.to_string(), "bad_address");
    }
}
