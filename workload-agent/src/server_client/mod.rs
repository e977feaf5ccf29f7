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
//! a fake server; [`BundleFeedApi`] the part the bundle feed opens.
//!
//! A handshake whose server certificate does not verify re-reads the `--trust-bundle` file
//! (when given with [`ServerClient::with_bundle_file`]) and is retried once if the file adds
//! a root: see [`bundle_file`].
//!
//! - [`feeds`]: the `SyncBundle` stream (bundles in, acknowledgements out; `WatchBundle` with a
//!   server that predates it) and the `WatchNode` stream.
//! - [`federated`]: the federated bundles of each bundle message, checked and handed to the
//!   Workload API only (never trusted for this connection).
//! - [`bundle_ack`]: what the agent acknowledges: the installed bundle's version and the roots
//!   its SVIDs chain to.
//! - [`bundle_file`]: the `--trust-bundle` file, read at start and again when the server's
//!   certificate does not verify.
//! - [`discovery_cache`]: discovery answers per destination asked about by a local caller,
//!   their freshness (TTL once the server is lost) and bounds; what the agent's
//!   [`Discovery`](crate::discovery) service answers from.
//! - [`discovery_feed`]: following the cached destinations on the server's `DiscoveryFeed`.

pub mod bundle_ack;
pub mod bundle_file;
pub mod discovery_cache;
pub mod discovery_feed;
pub mod federated;
pub mod feeds;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use http::Uri;
use hyper_util::rt::TokioIo;
use lanyard_proto::identity::v1 as wire;
use lanyard_proto::identity::v1::node_identity_client::NodeIdentityClient;
use lanyard_svid::TrustDomain;
use lanyard_svid::reserved::server_id;
use lanyard_svid::tls::{
    ExactId, SvidStore, TlsRefusal, client_config_optional_svid, refusal_from_io,
    unused_server_name,
};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

use bundle_file::BundleFile;

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

/// A bundle stream from the server, as the bundle feed reads it.
pub type BundleStream = BoxStream<'static, Result<wire::WatchBundleResponse, Status>>;

/// The bundle half of the server API: what the bundle feed opens. Statuses are kept whole, so
/// that `Unimplemented` (a server that predates `SyncBundle`) can be told apart.
#[tonic::async_trait]
pub trait BundleFeedApi: Send + Sync + 'static {
    /// Opens `SyncBundle`; `acks` are sent as they come, and the stream ends with them.
    async fn open_sync_bundle(
        &self,
        acks: BoxStream<'static, wire::BundleAck>,
    ) -> Result<BundleStream, Status>;

    /// Opens `WatchBundle`.
    async fn open_watch_bundle(&self) -> Result<BundleStream, Status>;
}

/// A client of lanyard-server. Cheap to share (`Arc`); calls never block each other.
pub struct ServerClient {
    endpoint: Endpoint,
    address: String,
    tls: tokio_rustls::TlsConnector,
    store: Arc<SvidStore>,
    bundle_file: Option<Arc<BundleFile>>,
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
            store.clone(),
            Arc::new(ExactId(server_id(trust_domain))),
            vec![b"h2".to_vec()],
        );
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
        let connector = Connector {
            address: address.clone(),
            tls: tls.clone(),
            store: store.clone(),
            bundle_file: None,
        };
        let channel = connector.lazy_channel(&endpoint);
        Ok(Self {
            endpoint,
            address,
            tls,
            store,
            bundle_file: None,
            channel: RwLock::new(channel),
        })
    }

    /// Re-reads `file` (the `--trust-bundle` file) when the server's certificate does not
    /// verify, and retries the handshake once if it adds a root.
    pub fn with_bundle_file(mut self, file: BundleFile) -> Self {
        self.bundle_file = Some(Arc::new(file));
        self.reconnect();
        self
    }

    fn connector(&self) -> Connector {
        Connector {
            address: self.address.clone(),
            tls: self.tls.clone(),
            store: self.store.clone(),
            bundle_file: self.bundle_file.clone(),
        }
    }

    /// The server's address as configured.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Replaces the connection, so the next calls present the store's current node SVID.
    pub fn reconnect(&self) {
        let channel = self.connector().lazy_channel(&self.endpoint);
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

/// Awaits a stream's opening (with [`CALL_TIMEOUT`]), keeping its status.
async fn open<T: Send + 'static>(
    call: impl std::future::Future<Output = Result<tonic::Response<Streaming<T>>, Status>>,
) -> Result<BoxStream<'static, Result<T, Status>>, Status> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no answer within {}s",
            CALL_TIMEOUT.as_secs()
        ))),
        Ok(result) => Ok(result?.into_inner().boxed()),
    }
}

#[tonic::async_trait]
impl BundleFeedApi for ServerClient {
    async fn open_sync_bundle(
        &self,
        acks: BoxStream<'static, wire::BundleAck>,
    ) -> Result<BundleStream, Status> {
        let mut client = self.client();
        // Boxed as `Send` here: the compiler cannot prove it through the streaming request's
        // generic future (a higher-ranked lifetime error otherwise).
        let call: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send + '_>> =
            Box::pin(client.sync_bundle(acks));
        open(call).await
    }

    async fn open_watch_bundle(&self) -> Result<BundleStream, Status> {
        let mut client = self.client();
        open(client.watch_bundle(wire::WatchBundleRequest {})).await
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

/// Dials the server: TCP, then the TLS handshake, done here so the server's ID is pinned.
#[derive(Clone)]
struct Connector {
    address: String,
    tls: tokio_rustls::TlsConnector,
    store: Arc<SvidStore>,
    bundle_file: Option<Arc<BundleFile>>,
}

impl Connector {
    /// A channel that connects through [`Connector::connect`] when first used.
    fn lazy_channel(self, endpoint: &Endpoint) -> Channel {
        let connector = tower::service_fn(move |_: Uri| {
            let this = self.clone();
            async move { this.connect().await.map(TokioIo::new) }
        });
        endpoint.connect_with_connector_lazy(connector)
    }

    /// One connection. When the server's certificate does not verify and the bundle file
    /// adds a root to the store, dials once more.
    async fn connect(&self) -> std::io::Result<TlsStream<TcpStream>> {
        match self.connect_once().await {
            Err(e) if server_not_verified(&e) => {
                let refreshed = match &self.bundle_file {
                    Some(file) => {
                        let (file, store) = (file.clone(), self.store.clone());
                        tokio::task::spawn_blocking(move || file.merge_into(&store))
                            .await
                            .unwrap_or(false)
                    }
                    None => false,
                };
                if refreshed {
                    self.connect_once().await
                } else {
                    Err(e)
                }
            }
            other => other,
        }
    }

    async fn connect_once(&self) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(&self.address).await?;
        tcp.set_nodelay(true)?;
        self.tls.connect(unused_server_name(), tcp).await
    }
}

/// True when a handshake failed because the server's certificate did not verify here.
fn server_not_verified(e: &std::io::Error) -> bool {
    matches!(refusal_from_io(e), Some(TlsRefusal::Verify(_)))
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

    /// A TLS server presenting `spiffe://example.org/lanyard/server` under `root`, accepting
    /// handshakes until dropped.
    async fn tls_server_under(
        root: &lanyard_svid::ca::RootCa,
    ) -> (String, tokio::task::JoinHandle<()>) {
        use lanyard_svid::{KeyAlgorithm, KeyAndCsr, VerifiedCsr, X509Svid};
        use std::time::{Duration, SystemTime};
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let issuer = root.issue_intermediate(day, now).unwrap();
        let key = KeyAndCsr::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let csr = VerifiedCsr::from_der(&key.csr_der).unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let signed = issuer
            .sign_x509_svid(&csr, &server_id(&td), day, now)
            .unwrap();
        let svid = X509Svid::parse(signed.cert_chain, Some(key.private_key_pkcs8)).unwrap();
        let bundle =
            lanyard_svid::TrustBundle::from_x509_authorities(td, [root.cert_der().clone()]);
        let store = Arc::new(SvidStore::with_svid(svid, bundle.into()).unwrap());
        let config =
            lanyard_svid::tls::server_config_optional_client_auth(store, vec![b"h2".to_vec()]);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // Held open until the client goes.
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let _ = tokio::io::AsyncReadExt::read(&mut tls, &mut [0u8; 1]).await;
                    }
                });
            }
        });
        (address, task)
    }

    #[tokio::test]
    async fn a_server_under_a_root_the_store_lacks_is_trusted_once_the_bundle_file_has_it() {
        use lanyard_svid::ca::RootCa;
        use std::time::{Duration, SystemTime};
        let td = TrustDomain::new("example.org").unwrap();
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let (old, new) = (
            RootCa::generate(&td, day, now).unwrap(),
            RootCa::generate(&td, day, now).unwrap(),
        );
        // The server already signs under the new root; the agent's last bundle has the old one.
        let (address, _server) = tls_server_under(&new).await;
        let last_bundle = || {
            lanyard_svid::BundleSet::from(lanyard_svid::TrustBundle::from_x509_authorities(
                td.clone(),
                [old.cert_der().clone()],
            ))
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.pem");
        let file = BundleFile {
            path: path.clone(),
            trust_domain: td.clone(),
        };

        // Without the file, and with a file that lacks the new root too: refused as untrusted.
        let store = Arc::new(SvidStore::new(last_bundle()));
        let client = ServerClient::new(&address, store.clone(), &td).unwrap();
        let err = client.connector().connect().await.unwrap_err();
        assert_eq!(refusal_from_io(&err).unwrap().label(), "untrusted_chain");
        std::fs::write(&path, old.cert_pem()).unwrap();
        let client = client.with_bundle_file(file.clone());
        let err = client.connector().connect().await.unwrap_err();
        assert_eq!(refusal_from_io(&err).unwrap().label(), "untrusted_chain");
        assert_eq!(*store.bundles(), last_bundle());

        // The file (kubelet's copy of the bundle ConfigMap) has both: the retry succeeds, and
        // the store now trusts both roots.
        std::fs::write(&path, format!("{}{}", old.cert_pem(), new.cert_pem())).unwrap();
        client
            .connector()
            .connect()
            .await
            .expect("trusted after reading the file");
        let roots = store
            .bundles()
            .get(&td)
            .unwrap()
            .x509_authorities()
            .to_vec();
        assert_eq!(roots, vec![old.cert_der().clone(), new.cert_der().clone()]);
        // And without another look at the file.
        std::fs::remove_file(&path).unwrap();
        client.connector().connect().await.expect("still trusted");
    }
}
