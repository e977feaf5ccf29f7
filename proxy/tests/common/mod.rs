//! Shared by the proxy's integration tests: a CA (lanyard-svid's production CA), a fake
//! Workload API on a Unix socket, a fake agent Discovery service ([`discovery`]), small TCP
//! apps, proxies, tap readers and HTTP probes.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use lanyard_proto::WORKLOAD_API_HEADER;
use lanyard_proto::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use lanyard_proto::workload::*;
use lanyard_proxy::{RunArgs, RunningProxy, TapEvent};
use lanyard_svid::bundle::{BundleSet, TrustBundle};
use lanyard_svid::tls::{ExactId, LANYARD_ALPN, SvidStore, client_config, unused_server_name};
use lanyard_svid::{
    Issuer, KeyAlgorithm, KeyAndCsr, RootCa, SpiffeId, TrustDomain, VerifiedCsr, X509Svid,
};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::watch;
use tokio_stream::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{UnixListenerStream, WatchStream};
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

pub mod discovery;

/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Awaits `fut`, failing the test after [`DEADLINE`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Polls `condition` until it holds, failing the test after [`DEADLINE`].
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------
// CA

/// A root and an issuing intermediate of one trust domain, from lanyard-svid's CA.
pub struct Ca {
    pub trust_domain: TrustDomain,
    root: RootCa,
    issuer: Issuer,
}

/// An issued SVID in both forms the tests need.
pub struct Issued {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Zeroizing<Vec<u8>>,
}

impl Issued {
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    pub fn x509_svid(&self) -> X509Svid {
        X509Svid::parse(self.chain.clone(), Some(self.key.clone())).unwrap()
    }
}

impl Ca {
    pub fn new(trust_domain: &str) -> Self {
        let trust_domain = TrustDomain::new(trust_domain).unwrap();
        let now = SystemTime::now();
        let root = RootCa::generate(&trust_domain, Duration::from_secs(86400), now).unwrap();
        let issuer = root
            .issue_intermediate(Duration::from_secs(43200), now)
            .unwrap();
        Self {
            trust_domain,
            root,
            issuer,
        }
    }

    pub fn root_der(&self) -> Vec<u8> {
        self.root.cert_der().as_ref().to_vec()
    }

    pub fn issue(&self, id: &str) -> Issued {
        let key_and_csr = KeyAndCsr::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let csr = VerifiedCsr::from_der(&key_and_csr.csr_der).unwrap();
        let signed = self
            .issuer
            .sign_x509_svid(
                &csr,
                &SpiffeId::parse(id).unwrap(),
                Duration::from_secs(3600),
                SystemTime::now(),
            )
            .unwrap();
        Issued {
            chain: signed.cert_chain,
            key: key_and_csr.private_key_pkcs8,
        }
    }
}

/// The Workload API message for `issued`, trusting `roots` (concatenated DER) for its own
/// domain and the given federated bundles.
pub fn svid_message(
    id: &str,
    issued: &Issued,
    roots: &[Vec<u8>],
    federated: &[(&str, Vec<u8>)],
) -> X509svidResponse {
    X509svidResponse {
        svids: vec![X509svid {
            spiffe_id: id.to_owned(),
            x509_svid: issued
                .chain
                .iter()
                .flat_map(|c| c.as_ref().to_vec())
                .collect(),
            x509_svid_key: issued.key.to_vec(),
            bundle: roots.concat(),
            hint: String::new(),
        }],
        crl: vec![],
        federated_bundles: federated
            .iter()
            .map(|(td, der)| (format!("spiffe://{td}"), der.clone()))
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------
// Fake Workload API

/// A Workload API on a Unix socket in a temp dir, streaming whatever the test pushes.
pub struct FakeWorkloadApi {
    pub socket: PathBuf,
    tx: watch::Sender<Option<X509svidResponse>>,
    /// FetchX509SVID calls that carried the security header.
    pub streams: Arc<AtomicUsize>,
    /// Ends every open stream with `Unavailable` (an agent going away).
    kill: tokio::sync::broadcast::Sender<()>,
    /// How many of the next calls are answered `PermissionDenied` "no identity issued".
    pub refuse_next: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

impl FakeWorkloadApi {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let (tx, _) = watch::channel(None);
        let streams = Arc::new(AtomicUsize::new(0));
        let (kill, _) = tokio::sync::broadcast::channel(4);
        let refuse_next = Arc::new(AtomicUsize::new(0));
        let service = Service {
            tx: tx.clone(),
            streams: streams.clone(),
            kill: kill.clone(),
            refuse_next: refuse_next.clone(),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(SpiffeWorkloadApiServer::new(service))
                .serve_with_incoming(UnixListenerStream::new(listener)),
        );
        Self {
            socket,
            tx,
            streams,
            kill,
            refuse_next,
            _dir: dir,
        }
    }

    /// Ends every open FetchX509SVID stream with `Unavailable`.
    pub fn kill_streams(&self) {
        let _ = self.kill.send(());
    }

    /// Sends `message` to every open stream (and to streams opened later).
    pub fn push(&self, message: X509svidResponse) {
        self.tx.send_replace(Some(message));
    }
}

struct Service {
    tx: watch::Sender<Option<X509svidResponse>>,
    streams: Arc<AtomicUsize>,
    kill: tokio::sync::broadcast::Sender<()>,
    refuse_next: Arc<AtomicUsize>,
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl SpiffeWorkloadApi for Service {
    type FetchX509SVIDStream = Boxed<X509svidResponse>;
    type FetchX509BundlesStream = Boxed<X509BundlesResponse>;
    type FetchJWTBundlesStream = Boxed<JwtBundlesResponse>;
    type FetchWITSVIDStream = Boxed<WitsvidResponse>;
    type FetchWITBundlesStream = Boxed<WitBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        if request
            .metadata()
            .get(WORKLOAD_API_HEADER)
            .is_none_or(|v| v != "true")
        {
            return Err(Status::invalid_argument("security header missing"));
        }
        self.streams.fetch_add(1, Ordering::SeqCst);
        if self
            .refuse_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Status::permission_denied("no identity issued"));
        }
        let updates = WatchStream::new(self.tx.subscribe()).filter_map(|m| m.map(Ok));
        let killed = tokio_stream::wrappers::BroadcastStream::new(self.kill.subscribe())
            .map(|_| Err(Status::unavailable("agent going away")));
        Ok(Response::new(Box::pin(updates.merge(killed))))
    }

    async fn fetch_x509_bundles(
        &self,
        _: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn fetch_jwtsvid(
        &self,
        _: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn fetch_jwt_bundles(
        &self,
        _: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn validate_jwtsvid(
        &self,
        _: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn fetch_witsvid(
        &self,
        _: Request<WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn fetch_wit_bundles(
        &self,
        _: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

// ---------------------------------------------------------------------------------------
// Apps

/// A TCP app on loopback; counts the connections it accepted.
pub struct App {
    pub addr: std::net::SocketAddr,
    pub accepted: Arc<AtomicUsize>,
}

/// An echo server; with `banner`, it speaks first.
pub async fn echo_app(banner: Option<&'static [u8]>) -> App {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Some(banner) = banner
                    && stream.write_all(banner).await.is_err()
                {
                    return;
                }
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    App { addr, accepted }
}

/// Writes `msg` and reads back exactly as many bytes.
pub async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, msg: &[u8]) -> Vec<u8> {
    within("an echo", async {
        stream.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        stream.read_exact(&mut back).await.unwrap();
        back
    })
    .await
}

/// Reads until EOF or error; the bytes read, and whether it ended in an error.
pub async fn read_to_end_or_error<S: AsyncRead + Unpin>(stream: &mut S) -> (Vec<u8>, bool) {
    within("the connection to end", async {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return (got, false),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => return (got, true),
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Proxies

/// `RunArgs` for a test proxy: everything on port 0, a short detection timeout.
pub fn proxy_args(socket: &Path) -> RunArgs {
    RunArgs {
        workload_socket: Some(socket.display().to_string()),
        admin: Some("127.0.0.1:0".parse().unwrap()),
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        detect_timeout: Some("200ms".into()),
        handshake_timeout: Some("5s".into()),
        ..Default::default()
    }
}

pub async fn start_proxy(args: RunArgs) -> RunningProxy {
    let config = args.resolve(None).unwrap();
    lanyard_proxy::start(&config).await.unwrap()
}

/// Waits until `proxy` serves the SVID whose leaf is `leaf`.
pub async fn wait_for_svid(proxy: &RunningProxy, leaf: &CertificateDer<'_>) {
    let store = proxy.store.clone();
    wait_until("the proxy to take the SVID", || {
        store.svid().is_some_and(|s| s.leaf() == leaf)
    })
    .await
}

/// Waits until `proxy`'s trusted bundle of `td` has `n` roots.
pub async fn wait_for_roots(proxy: &RunningProxy, td: &TrustDomain, n: usize) {
    let store = proxy.store.clone();
    wait_until("the proxy to take the bundle", || {
        store
            .bundles()
            .get(td)
            .is_some_and(|b| b.x509_authorities().len() == n)
    })
    .await
}

/// A tap reader that yields lines only.
pub struct Lines(lanyard_proxy::tap::TapReader);

impl Lines {
    pub fn of(proxy: &RunningProxy) -> Self {
        Self(proxy.tap.subscribe())
    }

    pub async fn next(&mut self) -> String {
        within("a tap line", async {
            match self.0.next().await {
                Some(TapEvent::Line(line)) => line.to_string(),
                Some(TapEvent::Dropped(n)) => panic!("{n} tap lines dropped"),
                None => panic!("tap closed"),
            }
        })
        .await
    }
}

/// The value of `key=` in a tap line.
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

/// A GET over HTTP/1.1; the status code and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    within("an HTTP answer", async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, out)
    })
    .await
}

// ---------------------------------------------------------------------------------------
// A test's own mTLS client (to look at what the inbound proxy presents)

/// A store holding `issued` and trusting `bundles`.
pub fn client_store(issued: &Issued, bundles: &[(&TrustDomain, Vec<u8>)]) -> Arc<SvidStore> {
    let mut set = BundleSet::new();
    for (td, der) in bundles {
        set.insert(TrustBundle::from_x509_der((*td).clone(), der).unwrap());
    }
    Arc::new(SvidStore::with_svid(issued.x509_svid(), set).unwrap())
}

/// Dials `addr` with mTLS (ALPN lanyard/1) expecting `server_id`.
pub async fn mtls_connect(
    store: Arc<SvidStore>,
    addr: std::net::SocketAddr,
    server_id: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let config = client_config(
        store,
        Arc::new(ExactId(SpiffeId::parse(server_id).unwrap())),
        vec![LANYARD_ALPN.to_vec()],
    );
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(unused_server_name(), tcp)
        .await
}
