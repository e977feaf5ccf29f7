//! The agent against the real lanyard-server, in process: join-token attestation, the node
//! SVID saved 0600 and reused by a restarted agent without a token, the installed bundle
//! acknowledged on `SyncBundle`, resolution of this very
//! process to its static entries, X.509-SVIDs chaining to the bundle, rotation of a short-lived
//! SVID reaching `changes()`, a JWT-SVID, and a server outage: the cached SVID keeps being
//! served, and renewals resume when a server on the same data dir comes back. And an agent
//! that cannot reach any server still stops when asked.
//!
//! The server runs on its own tokio runtime, so "killing" it (dropping that runtime) really
//! closes its listener and every connection.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lanyard_agent::attest::{Attested, PeerCred, WorkloadAttestor};
use lanyard_agent::config::AgentConfig;
use lanyard_agent::identities::{Entitlement, IdentityError, WorkloadIdentities};
use lanyard_agent::metrics::AgentMetrics;
use lanyard_agent::node_svid::{AttestMethod, NODE_SVID_FILE};
use lanyard_agent::run::{Agent, Readiness, RunError};
use lanyard_server::admin::{self, AdminRequest, AdminResponse};
use lanyard_server::config::RunArgs as ServerArgs;
use lanyard_server::entries::EntryConfig;
use lanyard_svid::{PeerRole, verify_peer};
use tokio::time::Instant;
use zeroize::Zeroizing;

const DEADLINE: Duration = Duration::from_secs(30);

/// A lanyard-server on its own runtime.
struct TestServer {
    runtime: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
}

impl TestServer {
    fn start(data_dir: &Path, listen: SocketAddr) -> Self {
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let entry = |path: &str, selectors: Vec<String>, ttl: Option<&str>| EntryConfig {
            spiffe_id: format!("spiffe://example.org{path}"),
            selectors,
            nodes: Some(vec!["*".into()]),
            x509_ttl: ttl.map(Into::into),
            jwt_ttl: None,
            dns_names: None,
            federates_with: None,
        };
        let config = ServerArgs {
            trust_domain: Some("example.org".into()),
            listen: Some(listen),
            data_dir: Some(data_dir.to_owned()),
            entries: vec![
                entry("/me", vec![format!("unix:uid:{uid}")], None),
                entry(
                    "/short",
                    vec![format!("unix:uid:{uid}"), format!("unix:gid:{gid}")],
                    Some("5s"),
                ),
                entry("/someone-else", vec!["unix:uid:4242424".into()], None),
            ],
            ..Default::default()
        }
        .resolve()
        .expect("server config");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        runtime.spawn(async move {
            let on_listening = move |role: &'static str, addr: SocketAddr| {
                if role == "grpc" {
                    let _ = tx.lock().unwrap().send(addr);
                }
            };
            if let Err(e) =
                lanyard_server::run::run(config, None, on_listening, std::future::pending()).await
            {
                panic!("server stopped: {e}");
            }
        });
        let addr = rx.recv_timeout(DEADLINE).expect("server did not listen");
        Self {
            runtime: Some(runtime),
            addr,
        }
    }

    /// Drops the server's runtime: listener and connections close at once.
    fn kill(mut self) {
        self.runtime.take().unwrap().shutdown_background();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn admin(data_dir: &Path, request: AdminRequest) -> AdminResponse {
    admin::call(data_dir, &request).await.expect("admin socket")
}

fn agent_config(
    server: SocketAddr,
    bundle: PathBuf,
    data_dir: &Path,
    token: Option<String>,
) -> AgentConfig {
    AgentConfig {
        server: server.to_string(),
        trust_bundle: bundle,
        trust_domain: None,
        method: token.map(|t| AttestMethod::JoinToken(Zeroizing::new(t))),
        socket: data_dir.join("unused.sock"),
        data_dir: Some(data_dir.to_owned()),
        health: None,
        node_name: None,
        csi: None,
    }
}

async fn start_agent(config: &AgentConfig) -> Result<Agent, RunError> {
    tokio::time::timeout(
        DEADLINE,
        Agent::start(
            config,
            AgentMetrics::unregistered(),
            Arc::new(Readiness::default()),
        ),
    )
    .await
    .expect("agent start timed out")
}

/// This test process, attested as the Workload API would attest it.
async fn this_process() -> Attested {
    // SAFETY: these calls have no preconditions.
    let cred = unsafe { PeerCred::new(Some(libc::getpid()), libc::getuid(), libc::getgid()) };
    WorkloadAttestor::default()
        .attest(cred)
        .await
        .expect("attest self")
}

/// Polls `check` until it returns `Some`, failing after [`DEADLINE`].
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn paths(list: &[Entitlement]) -> Vec<String> {
    list.iter().map(|e| e.spiffe_id.path().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_attests_mints_rotates_and_survives_a_server_outage() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let server_dir = tmp.path().join("server");
    let agent_dir = tmp.path().join("agent");
    let server = TestServer::start(&server_dir, "127.0.0.1:0".parse().unwrap());
    let addr = server.addr;

    let AdminResponse::Bundle { pem } = admin(&server_dir, AdminRequest::BundleShow).await else {
        panic!("no bundle");
    };
    let bundle_file = tmp.path().join("bundle.pem");
    std::fs::write(&bundle_file, pem).unwrap();
    let AdminResponse::Token { token, .. } = admin(
        &server_dir,
        AdminRequest::TokenGenerate {
            node: Some("node-a".into()),
            ttl_secs: 600,
        },
    )
    .await
    else {
        panic!("no token");
    };

    // A wrong token is refused, with the server's reason, and nothing is saved.
    let bad = agent_config(
        addr,
        bundle_file.clone(),
        &tmp.path().join("bad"),
        Some("nope".into()),
    );
    match start_agent(&bad).await {
        Err(RunError::Attest(e)) => assert!(!e.is_transient(), "{e}: {}", e.message()),
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("a bad join token was accepted"),
    }
    assert!(!tmp.path().join("bad").join(NODE_SVID_FILE).exists());

    // Attest with the join token; the node SVID is saved privately.
    let config = agent_config(addr, bundle_file.clone(), &agent_dir, Some(token.clone()));
    let agent = start_agent(&config).await.expect("agent attests");
    let node_svid = agent.node.current().expect("node SVID");
    assert_eq!(
        node_svid.spiffe_id().to_string(),
        "spiffe://example.org/lanyard/agent/join_token/node-a"
    );
    let saved = agent_dir.join(NODE_SVID_FILE);
    assert_eq!(
        std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&agent_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    agent
        .readiness
        .check()
        .expect("ready: attested, bundle from the server");

    // The bundle is acknowledged on SyncBundle (not WatchBundle: the agent reports a version).
    let td = lanyard_svid::TrustDomain::new("example.org").unwrap();
    let installed = agent.manager.bundles().get(&td).unwrap().version();
    eventually("the bundle acknowledged", || {
        let labels = vec![("version", installed.clone())];
        let acked = agent.metrics.bundle_acknowledged.get(&labels).is_some();
        async move { acked.then_some(()) }
    })
    .await;

    // The node feed arrives; this process resolves to its two entries (not someone else's).
    let me = this_process().await;
    let entitled = eventually("the node view", || {
        let got = agent.manager.resolve(&me);
        async move { (!got.is_empty()).then_some(got) }
    })
    .await;
    assert_eq!(paths(&entitled), ["/me", "/short"]);

    // X.509-SVIDs chain to the bundle.
    let svids = agent.manager.x509_svids(&entitled).await.expect("SVIDs");
    let bundles = agent.manager.bundles();
    for (svid, e) in svids.iter().zip(&entitled) {
        let id = verify_peer(svid.chain(), &bundles, SystemTime::now(), PeerRole::Client)
            .expect("chains to the bundle");
        assert_eq!(id, e.spiffe_id);
        assert!(svid.private_key_pkcs8().is_some());
    }

    // The 5 s SVID rotates (at ~2.5 s) and `changes()` says so.
    let short = [entitled[1].clone()];
    let mut changes = agent.manager.changes();
    changes.mark_unchanged();
    let first_short = svids[1].clone();
    let rotated = eventually("a rotation", || {
        let (m, mut rx, old) = (agent.manager.clone(), changes.clone(), first_short.clone());
        let short = short.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(1), rx.changed())
                .await
                .ok()?
                .ok()?;
            let now = m.x509_svids(&short).await.ok()?;
            (now[0].leaf() != old.leaf()).then(|| now[0].clone())
        }
    })
    .await;
    assert!(rotated.not_after() >= first_short.not_after());

    // A JWT-SVID, valid for its audience against the server's bundle.
    let token_jwt = agent
        .manager
        .jwt_svid(&entitled[0], &["db".into()])
        .await
        .expect("JWT");
    let validated = lanyard_svid::jwt::validate(
        &token_jwt,
        "db",
        &agent.manager.bundles(),
        SystemTime::now(),
    )
    .expect("JWT validates");
    assert_eq!(validated.spiffe_id, entitled[0].spiffe_id);
    // An entry not assigned to this caller is still refused by the server if asked for.
    let stranger = lanyard_agent::identities::Entitlement {
        spiffe_id: "spiffe://example.org/not-an-entry".parse().unwrap(),
        workload: lanyard_proto::identity::v1::Workload {
            kind: Some(lanyard_proto::identity::v1::workload::Kind::EntrySpiffeId(
                "spiffe://example.org/not-an-entry".into(),
            )),
            entry_pod: None,
        },
        x509_ttl: None,
        hint: String::new(),
        federates_with: Vec::new(),
    };
    assert!(matches!(
        agent.manager.jwt_svid(&stranger, &["db".into()]).await,
        Err(IdentityError::Refused(_))
    ));
    drop(agent);

    // A second agent on the same data dir starts without a token, with the saved node SVID.
    let again = agent_config(addr, bundle_file.clone(), &agent_dir, None);
    let agent = start_agent(&again).await.expect("restart without a token");
    assert_eq!(
        agent.node.current().unwrap().leaf(),
        node_svid.leaf(),
        "the saved node SVID is reused"
    );
    let me_svid = agent
        .manager
        .x509_svids(&entitled[..1])
        .await
        .expect("mints with the saved SVID");
    let short_before = agent.manager.x509_svids(&short).await.unwrap();

    // The server dies: the cached SVID is still served, renewals fail.
    server.kill();
    let failures = || {
        agent
            .metrics
            .renewal_failures
            .get_or_create(&vec![("reason", "unavailable".to_owned())])
            .get()
    };
    eventually("a failed renewal", || {
        let n = failures();
        async move { (n > 0).then_some(()) }
    })
    .await;
    let still = agent
        .manager
        .x509_svids(&entitled[..1])
        .await
        .expect("cached SVID served");
    assert!(Arc::ptr_eq(&still[0], &me_svid[0]));

    // A server on the same data dir (same CA) comes back on the same port: renewals resume.
    let _server = TestServer::start(&server_dir, addr);
    let renewed = eventually("renewals after the restart", || {
        let (m, short, old) = (
            agent.manager.clone(),
            short.clone(),
            short_before[0].clone(),
        );
        async move {
            let now = m.x509_svids(&short).await.ok()?;
            (now[0].leaf() != old.leaf()
                && now[0].not_after() > SystemTime::now() + Duration::from_secs(1))
            .then(|| now[0].clone())
        }
    })
    .await;
    verify_peer(
        renewed.chain(),
        &agent.manager.bundles(),
        SystemTime::now(),
        PeerRole::Client,
    )
    .expect("renewed SVID chains to the same bundle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_still_attesting_stops_when_asked() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: every attempt is refused, a transient failure retried forever.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let root = lanyard_svid::ca::RootCa::generate(
        &lanyard_svid::TrustDomain::new("example.org").unwrap(),
        Duration::from_secs(86_400),
        SystemTime::now(),
    )
    .unwrap();
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, root.cert_pem()).unwrap();
    let config = agent_config(nowhere, bundle, dir.path(), Some("a-token".into()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(lanyard_agent::run::run(config, |_, _| {}, async {
        let _ = stopped.await;
    }));
    let _ = stop.send(());
    let result = tokio::time::timeout(DEADLINE, agent)
        .await
        .expect("the agent kept attesting after shutdown")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}
