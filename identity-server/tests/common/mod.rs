//! A real lanyard-server in-process (real gRPC over real TLS on 127.0.0.1:0) and a client that
//! speaks to it the way an agent does.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use lanyard_proto::identity::v1 as wire;
use lanyard_proto::identity::v1::node_identity_client::NodeIdentityClient;
use lanyard_server::admin::{self, AdminRequest, AdminResponse};
use lanyard_server::config::RunArgs;
use lanyard_svid::bundle::certificates_from_pem;
use lanyard_svid::csr::KeyAndCsr;
use lanyard_svid::keys::KeyAlgorithm;
use lanyard_svid::reserved::server_id;
use lanyard_svid::tls::{
    Authorizer, ExactId, SvidStore, client_config_optional_svid, unused_server_name,
};
use lanyard_svid::x509::X509Svid;
use lanyard_svid::{BundleSet, TrustBundle, TrustDomain};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};

pub const TD: &str = "example.org";
/// Every wait in these tests is bounded by this.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `check` until it returns `Some` or [`DEADLINE`] passes (the server's caches follow
/// the API asynchronously, so tests wait for a condition, never for a fixed time).
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    check: impl FnMut() -> F,
) -> T {
    lanyard_e2e::wait::eventually_within(what, DEADLINE, check).await
}

pub fn td() -> TrustDomain {
    TrustDomain::new(TD).unwrap()
}

/// A running server; stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The health listener, when `--health` was given.
    pub health: Option<SocketAddr>,
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<Result<(), lanyard_server::run::RunError>>,
}

impl TestServer {
    /// Shuts the server down as SIGTERM does and waits (bounded) until `run` has returned, so
    /// what it does on the way out (the CA report deleted, the status Lease released) is done.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .expect("the server stops within the deadline")
            .expect("the server task was not aborted")
            .expect("the server stops cleanly");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

/// A cluster-mode replica's options on the seeded fixture (`lanyard_e2e::cluster::seed`): CA
/// Secret `lanyard/lanyard-ca`, bundle ConfigMap `lanyard/lanyard-bundle`, agents of
/// `lanyard:lanyard-agent`; its files under `data_dir`. Callers add the rest
/// (`RunArgs { health: .., ..cluster_args(dir) }`).
pub fn cluster_args(data_dir: PathBuf) -> RunArgs {
    RunArgs {
        trust_domain: Some(TD.into()),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(data_dir),
        kube: true,
        ca_secret: Some("lanyard/lanyard-ca".into()),
        bundle_configmap: Some("lanyard/lanyard-bundle".into()),
        agent_sa: vec!["lanyard:lanyard-agent".into()],
        ..Default::default()
    }
}

/// Starts a data-dir mode server on `data_dir` with the TOML `config` (entries, TTLs).
pub async fn start_data_dir(data_dir: &Path, config: &str) -> TestServer {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config_path = data_dir.with_extension("toml");
    std::fs::write(&config_path, config).unwrap();
    let args = RunArgs {
        config: Some(config_path),
        trust_domain: Some(TD.into()),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(data_dir.to_owned()),
        ..Default::default()
    };
    start(args, None).await
}

pub async fn start(args: RunArgs, kube: Option<kube::Client>) -> TestServer {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = args.resolve().expect("valid test config");
    let data_dir = config
        .data_dir
        .clone()
        .expect("the test servers have a data dir");
    let (addr_tx, addr_rx) = oneshot::channel();
    let addr_tx = std::sync::Mutex::new(Some(addr_tx));
    let health = Arc::new(std::sync::Mutex::new(None));
    let health_seen = health.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(lanyard_server::run::run(
        config,
        kube,
        move |role, addr| {
            if role == "health" {
                *health_seen.lock().unwrap() = Some(addr);
            }
            if role == "grpc"
                && let Some(tx) = addr_tx.lock().unwrap().take()
            {
                let _ = tx.send(addr);
            }
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let addr = tokio::time::timeout(DEADLINE, addr_rx)
        .await
        .expect("server listens before the deadline")
        .expect("server started (see its error)");
    // The health listener is announced before the gRPC one.
    let health = *health.lock().unwrap();
    TestServer {
        addr,
        health,
        data_dir,
        stop: Some(stop),
        task,
    }
}

impl TestServer {
    pub async fn admin(&self, request: AdminRequest) -> AdminResponse {
        admin::call(&self.data_dir, &request).await.unwrap()
    }

    pub async fn join_token(&self, node: &str) -> String {
        match self
            .admin(AdminRequest::TokenGenerate {
                node: Some(node.into()),
                ttl_secs: 600,
            })
            .await
        {
            AdminResponse::Token { token, .. } => token,
            other => panic!("no token: {other:?}"),
        }
    }

    /// The roots, as an agent's `--trust-bundle` file would hold them.
    pub async fn bundle(&self) -> BundleSet {
        match self.admin(AdminRequest::BundleShow).await {
            AdminResponse::Bundle { pem } => BundleSet::from(TrustBundle::from_x509_authorities(
                td(),
                certificates_from_pem(pem.as_bytes()).unwrap(),
            )),
            other => panic!("no bundle: {other:?}"),
        }
    }
}

/// An agent-side identity: the TLS store its connections use.
pub struct Caller {
    pub store: Arc<SvidStore>,
}

impl Caller {
    pub fn new(bundles: BundleSet) -> Self {
        Self {
            store: Arc::new(SvidStore::new(bundles)),
        }
    }

    /// A gRPC client to `addr` that pins the server's ID and presents our SVID if we have one.
    pub async fn client(&self, addr: SocketAddr) -> NodeIdentityClient<Channel> {
        self.client_expecting(addr, Arc::new(ExactId(server_id(&td()))))
            .await
    }

    pub async fn client_expecting(
        &self,
        addr: SocketAddr,
        expected: Arc<dyn Authorizer>,
    ) -> NodeIdentityClient<Channel> {
        NodeIdentityClient::new(self.channel_expecting(addr, expected))
    }

    /// A channel to `addr` pinning the server's ID, for any of its services.
    pub fn channel(&self, addr: SocketAddr) -> Channel {
        self.channel_expecting(addr, Arc::new(ExactId(server_id(&td()))))
    }

    fn channel_expecting(&self, addr: SocketAddr, expected: Arc<dyn Authorizer>) -> Channel {
        let tls = Arc::new(client_config_optional_svid(
            self.store.clone(),
            expected,
            vec![b"h2".to_vec()],
        ));
        let connector = tower::service_fn(move |_| {
            let tls = tls.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                let stream = tokio_rustls::TlsConnector::from(tls)
                    .connect(unused_server_name(), tcp)
                    .await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        });
        // Lazy: a refused handshake then shows as the first call's status.
        Endpoint::from_static("http://lanyard.invalid")
            .connect_timeout(DEADLINE)
            .connect_with_connector_lazy(connector)
    }

    /// Attests with `method`; on success installs the node SVID (and the bundle) in the store.
    pub async fn attest(
        &self,
        addr: SocketAddr,
        method: wire::attest_node_request::Method,
    ) -> Result<X509Svid, tonic::Status> {
        let key = KeyAndCsr::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let response = self
            .client(addr)
            .await
            .attest_node(wire::AttestNodeRequest {
                method: Some(method),
                csr: key.csr_der.clone(),
            })
            .await?
            .into_inner();
        let svid = response.svid.unwrap();
        let chain = svid.cert_chain.into_iter().map(Into::into).collect();
        let svid = X509Svid::parse(chain, Some(key.private_key_pkcs8)).unwrap();
        self.store.update_svid(svid.clone()).unwrap();
        let bundle = TrustBundle::try_from(response.bundle.as_ref().unwrap()).unwrap();
        self.store.update_bundles(BundleSet::from(bundle));
        Ok(svid)
    }
}

/// GETs `path` from the health listener; returns the status line and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(DEADLINE, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

/// A mint request item for a static entry.
pub fn entry_request(spiffe_id: &str, csr: Vec<u8>) -> wire::MintX509SvidRequest {
    wire::MintX509SvidRequest {
        workload: Some(wire::Workload {
            kind: Some(wire::workload::Kind::EntrySpiffeId(spiffe_id.into())),
            entry_pod: None,
        }),
        csr,
    }
}

pub fn new_csr() -> Vec<u8> {
    KeyAndCsr::generate(KeyAlgorithm::EcdsaP256)
        .unwrap()
        .csr_der
}

/// The refusal reason of one batch item, or the SPIFFE ID it was issued.
pub fn outcome(result: &wire::MintX509SvidResult) -> Result<String, String> {
    match result.result.as_ref().unwrap() {
        wire::mint_x509_svid_result::Result::Svid(s) => Ok(s.spiffe_id.clone()),
        wire::mint_x509_svid_result::Result::Refusal(r) => Err(r.reason.clone()),
    }
}
