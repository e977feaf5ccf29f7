//! Federation between in-process servers over real TLS: server A (example.org) fetches the
//! bundles of other trust domains from their SPIFFE bundle endpoints and sends them to its
//! agents (`WatchBundle`, `SyncBundle`); a fake endpoint's bad answers are refused (each
//! counted under its label) and the bundle held stays; `https_web` both ways; the bundle
//! endpoint's own HTTP surface; in cluster mode, a `LanyardFederation` resource created and
//! deleted through the API fixture starts and stops the fetching.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use lanyard_proto::identity::v1 as wire;
use lanyard_proto::identity::v1::attest_node_request::Method;
use lanyard_server::admin::{self, AdminRequest, AdminResponse};
use lanyard_server::config::{RunArgs, ServerConfig};
use lanyard_server::federation::ServedProfile;
use lanyard_server::federation::schedule::FetchTiming;
use lanyard_svid::reserved::server_id;
use lanyard_svid::test_support::TestCa;
use lanyard_svid::tls::{ExactId, SvidStore, client_config_optional_svid, unused_server_name};
use lanyard_svid::{BundleSet, TrustBundle, TrustDomain};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Fetch timing short enough for a test (the real minimum refresh is 5 s).
fn quick() -> FetchTiming {
    FetchTiming {
        min_refresh: Duration::from_millis(100),
        max_refresh: Duration::from_millis(200),
        default_refresh: Duration::from_millis(200),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(200),
    }
}

/// A running server and what it announced; stops when dropped.
struct Server {
    addr: SocketAddr,
    health: Option<SocketAddr>,
    bundle_endpoint: Option<SocketAddr>,
    data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), lanyard_server::run::RunError>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

impl Server {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .expect("stops within the deadline")
            .unwrap()
            .unwrap();
    }

    async fn admin(&self, request: AdminRequest) -> AdminResponse {
        admin::call(&self.data_dir, &request).await.unwrap()
    }

    /// The roots as PEM.
    async fn roots_pem(&self) -> String {
        match self.admin(AdminRequest::BundleShow).await {
            AdminResponse::Bundle { pem } => pem,
            other => panic!("no bundle: {other:?}"),
        }
    }

    async fn metrics(&self) -> String {
        http_get(self.health.expect("started with --health"), "/metrics").await
    }

    /// Waits until `lanyard_server_federation_fetch_total{trust_domain,result}` is at least 1.
    async fn wait_fetch_result(&self, trust_domain: &str, result: &str) {
        let line = format!(
            "lanyard_server_federation_fetch_total{{trust_domain=\"{trust_domain}\",result=\"{result}\"}}"
        );
        eventually(&format!("a {result} fetch of {trust_domain}"), || async {
            self.metrics().await.contains(&line).then_some(())
        })
        .await;
    }

    /// An attested agent of this server (trust domain example.org).
    async fn agent(&self, node: &str) -> Caller {
        let pem = self.roots_pem().await;
        let roots = lanyard_svid::bundle::certificates_from_pem(pem.as_bytes()).unwrap();
        let caller = Caller::new(BundleSet::from(TrustBundle::from_x509_authorities(
            td(),
            roots,
        )));
        let token = match self
            .admin(AdminRequest::TokenGenerate {
                node: Some(node.into()),
                ttl_secs: 600,
            })
            .await
        {
            AdminResponse::Token { token, .. } => token,
            other => panic!("no token: {other:?}"),
        };
        caller
            .attest(self.addr, Method::JoinToken(token))
            .await
            .unwrap();
        caller
    }
}

fn args(trust_domain: &str, data_dir: &Path, config: &str) -> RunArgs {
    let config_path = data_dir.with_extension("toml");
    std::fs::write(&config_path, config).unwrap();
    RunArgs {
        config: Some(config_path),
        trust_domain: Some(trust_domain.into()),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        health: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(data_dir.to_owned()),
        ..Default::default()
    }
}

async fn start(args: RunArgs) -> Server {
    let mut config = args.resolve().expect("valid test config");
    config.federation.timing = quick();
    start_config(config).await.expect("server starts")
}

async fn start_config(config: ServerConfig) -> Result<Server, lanyard_server::run::RunError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data_dir = config.data_dir.clone().unwrap();
    let seen: Arc<Mutex<Vec<(&'static str, SocketAddr)>>> = Arc::default();
    let (grpc_tx, grpc_rx) = oneshot::channel();
    let grpc_tx = Mutex::new(Some(grpc_tx));
    let announced = seen.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let mut task = tokio::spawn(lanyard_server::run::run(
        config,
        None,
        move |role, addr| {
            announced.lock().unwrap().push((role, addr));
            if role == "grpc"
                && let Some(tx) = grpc_tx.lock().unwrap().take()
            {
                let _ = tx.send(addr);
            }
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let listening = tokio::time::timeout(DEADLINE, grpc_rx)
        .await
        .expect("the server listens or fails within the deadline");
    let Ok(addr) = listening else {
        // `run` returned (dropping the announcer) before listening: its error.
        let ended = tokio::time::timeout(DEADLINE, &mut task).await.unwrap();
        return Err(ended.unwrap().expect_err("run ended before listening"));
    };
    let seen = seen.lock().unwrap().clone();
    let find = |role: &str| seen.iter().find(|(r, _)| *r == role).map(|(_, a)| *a);
    Ok(Server {
        addr,
        health: find("health"),
        bundle_endpoint: find("bundle-endpoint"),
        data_dir,
        stop: Some(stop),
        task,
    })
}

/// `WatchBundle` of `agent`: the federated bundle of `td` in the next message satisfying `ok`.
async fn federated_in_feed(
    stream: &mut tonic::Streaming<wire::WatchBundleResponse>,
    td: &str,
    ok: impl Fn(&TrustBundle) -> bool,
) -> TrustBundle {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let message = stream.message().await.unwrap().expect("feed open");
            assert!(message.bundle.is_some(), "our own bundle is always there");
            if let Some(b) = message
                .federated_bundles
                .iter()
                .find(|b| b.trust_domain == td)
            {
                let bundle = TrustBundle::try_from(b).unwrap();
                if ok(&bundle) {
                    return bundle;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no federated bundle of {td} as expected within the deadline"))
}

fn federation_toml(td: &str, endpoint: SocketAddr, id: &str, bundle_file: &Path) -> String {
    format!(
        r#"
[[federation]]
trust_domain = "{td}"
bundle_endpoint_url = "https://{endpoint}"
bundle_endpoint_profile = "https_spiffe"
endpoint_spiffe_id = "{id}"
trust_domain_bundle_file = "{}"
"#,
        bundle_file.display()
    )
}

#[tokio::test]
async fn a_server_fetches_a_federated_servers_bundle_and_sends_it_to_agents() {
    let dir = tempfile::tempdir().unwrap();
    let mut b_args = args("b.test", &dir.path().join("b"), "");
    b_args.bundle_endpoint = Some("127.0.0.1:0".parse().unwrap());
    let b = start(b_args).await;
    let b_endpoint = b.bundle_endpoint.expect("B announces its bundle endpoint");
    let b_roots = dir.path().join("b-roots.pem");
    std::fs::write(&b_roots, b.roots_pem().await).unwrap();
    let b_root = lanyard_svid::bundle::certificates_from_pem(b.roots_pem().await.as_bytes())
        .unwrap()[0]
        .clone();

    let a_dir = dir.path().join("a");
    let a_config = federation_toml(
        "b.test",
        b_endpoint,
        "spiffe://b.test/lanyard/server",
        &b_roots,
    );
    let a = start(args(TD, &a_dir, &a_config)).await;
    let agent = a.agent("node-1").await;
    let mut client = agent.client(a.addr).await;

    // The fetched bundle, not the bootstrap one (PEM roots only): B's JWT key came with it.
    let mut feed = client
        .watch_bundle(wire::WatchBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    let fetched = federated_in_feed(&mut feed, "b.test", |b| !b.jwt_authorities().is_empty()).await;
    assert_eq!(fetched.x509_authorities(), std::slice::from_ref(&b_root));
    assert!(fetched.refresh_hint().is_some());
    a.wait_fetch_result("b.test", "ok").await;

    // SyncBundle carries it too.
    let (_acks, acks_rx) = futures::channel::mpsc::channel::<wire::BundleAck>(1);
    let mut sync = client.sync_bundle(acks_rx).await.unwrap().into_inner();
    let synced = federated_in_feed(&mut sync, "b.test", |_| true).await;
    assert_eq!(synced, fetched);

    // Kept in the data dir: a restart with B gone still serves the last fetched bundle.
    let kept = a_dir.join("federation").join("b.test.json");
    let kept_bundle = TrustBundle::from_jwks(
        TrustDomain::new("b.test").unwrap(),
        &std::fs::read(&kept).unwrap(),
    )
    .unwrap();
    assert_eq!(kept_bundle.x509_authorities(), fetched.x509_authorities());
    drop(feed);
    drop(sync);
    a.stop().await;
    b.stop().await;
    let a = start(args(TD, &a_dir, &a_config)).await;
    let agent = a.agent("node-2").await;
    let mut feed = agent
        .client(a.addr)
        .await
        .watch_bundle(wire::WatchBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    let served = federated_in_feed(&mut feed, "b.test", |_| true).await;
    assert!(
        !served.jwt_authorities().is_empty(),
        "the kept (fetched) bundle, not the bootstrap one"
    );
    a.wait_fetch_result("b.test", "unreachable").await;
}

/// What the fake endpoint answers now.
#[derive(Clone)]
struct Answer {
    status: u16,
    body: Bytes,
}

/// A bundle endpoint of trust domain `ca`'s presenting `store`'s SVID and answering whatever
/// `answer` holds.
async fn fake_endpoint(store: Arc<SvidStore>, answer: Arc<Mutex<Answer>>) -> SocketAddr {
    let tls = lanyard_server::federation::endpoint::tls_config(&ServedProfile::HttpsSpiffe, store)
        .unwrap();
    serve_fake(Arc::new(tls), answer).await
}

async fn serve_fake(tls: Arc<rustls::ServerConfig>, answer: Arc<Mutex<Answer>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let answer = answer.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |_request| {
                    let a = answer.lock().unwrap().clone();
                    async move {
                        let mut response = http::Response::new(Full::new(a.body));
                        *response.status_mut() = http::StatusCode::from_u16(a.status).unwrap();
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

fn ok(bundle: &TrustBundle) -> Answer {
    Answer {
        status: 200,
        body: Bytes::from(bundle.to_jwks().unwrap()),
    }
}

#[tokio::test]
async fn bad_answers_are_refused_by_label_and_the_bundle_held_stays() {
    let dir = tempfile::tempdir().unwrap();
    let c = TestCa::new("c.test");
    let store = Arc::new(
        SvidStore::with_svid(c.svid("spiffe://c.test/endpoint"), BundleSet::new()).unwrap(),
    );
    let mut v1 = c.bundle();
    v1.set_sequence(1);
    let answer = Arc::new(Mutex::new(ok(&v1)));
    let endpoint = fake_endpoint(store.clone(), answer.clone()).await;
    let c_roots = dir.path().join("c-roots.pem");
    std::fs::write(&c_roots, c.bundle().x509_authorities_pem()).unwrap();

    let config = federation_toml("c.test", endpoint, "spiffe://c.test/endpoint", &c_roots);
    let a = start(args(TD, &dir.path().join("a"), &config)).await;
    let agent = a.agent("node-1").await;
    let mut client = agent.client(a.addr).await;
    let mut feed = client
        .watch_bundle(wire::WatchBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    federated_in_feed(&mut feed, "c.test", |b| b.sequence() == 1).await;

    // The foreign bundle changes (a root added): A sends the new one.
    let added = TestCa::new("c.test");
    let mut v2 = v1.clone();
    v2.add_x509_authority(added.root().clone());
    v2.set_sequence(2);
    *answer.lock().unwrap() = ok(&v2);
    let got = federated_in_feed(&mut feed, "c.test", |b| b.sequence() == 2).await;
    assert_eq!(got.x509_authorities().len(), 2);

    // Each bad answer is refused under its label.
    let mut wrong_td = v2.clone();
    wrong_td.add_x509_authority(TestCa::new("other.test").root().clone());
    wrong_td.set_sequence(3);
    let bad = [
        (
            Answer {
                status: 200,
                body: Bytes::from_static(b"<html>not a bundle</html>"),
            },
            "malformed",
        ),
        (
            Answer {
                status: 200,
                body: Bytes::from(vec![b' '; lanyard_svid::jwks::MAX_DOCUMENT_LEN + 1]),
            },
            "too_large",
        ),
        (ok(&wrong_td), "wrong_trust_domain"),
        (
            Answer {
                status: 500,
                body: Bytes::from(v2.to_jwks().unwrap()),
            },
            "http_status",
        ),
        (
            ok(&TrustBundle::new(TrustDomain::new("c.test").unwrap())),
            "no_x509_authority",
        ),
    ];
    for (answer_now, label) in bad {
        *answer.lock().unwrap() = answer_now;
        a.wait_fetch_result("c.test", label).await;
    }
    // An endpoint presenting another ID of the domain is not authenticated.
    store
        .update_svid(c.svid("spiffe://c.test/not-the-endpoint"))
        .unwrap();
    *answer.lock().unwrap() = ok(&v2);
    a.wait_fetch_result("c.test", "tls").await;

    // Nothing was sent since v2, and a new feed starts with v2.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), feed.message())
            .await
            .is_err(),
        "no change sent to the agent after the refusals"
    );
    let mut again = client
        .watch_bundle(wire::WatchBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    let held = federated_in_feed(&mut again, "c.test", |_| true).await;
    assert_eq!(held, got);
}

/// A Web PKI CA and a server certificate for 127.0.0.1 it issued, as PEM files in `dir`.
struct WebPki {
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
}

fn web_pki(dir: &Path, name: &str) -> WebPki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    use std::os::unix::fs::PermissionsExt;
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca).unwrap();
    let pki = WebPki {
        ca_file: dir.join(format!("{name}-ca.pem")),
        cert_file: dir.join(format!("{name}.crt")),
        key_file: dir.join(format!("{name}.key")),
    };
    std::fs::write(&pki.ca_file, ca_cert.pem()).unwrap();
    std::fs::write(&pki.cert_file, cert.pem()).unwrap();
    std::fs::write(&pki.key_file, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&pki.key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    pki
}

#[tokio::test]
async fn https_web_endpoints_are_served_and_fetched_against_their_ca() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let web = web_pki(dir.path(), "web");
    let stranger = web_pki(dir.path(), "stranger");

    // A key readable by others is refused at start.
    std::fs::set_permissions(&web.key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let w_args = || {
        let mut w_args = args("w.test", &dir.path().join("w"), "");
        w_args.bundle_endpoint = Some("127.0.0.1:0".parse().unwrap());
        w_args.bundle_endpoint_cert = Some(web.cert_file.clone());
        w_args.bundle_endpoint_key = Some(web.key_file.clone());
        w_args
    };
    let refused = start_config(w_args().resolve().unwrap()).await;
    let err = refused
        .err()
        .expect("a group/other-readable key is refused")
        .to_string();
    assert!(err.contains("readable by group or others"), "{err}");
    std::fs::set_permissions(&web.key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let w = start(w_args()).await;
    let endpoint = w.bundle_endpoint.unwrap();
    let w_root = lanyard_svid::bundle::certificates_from_pem(w.roots_pem().await.as_bytes())
        .unwrap()[0]
        .clone();

    // w.test against the CA that issued the endpoint's certificate; v.test (same endpoint)
    // against another CA, which never authenticates it.
    let config = format!(
        r#"
[[federation]]
trust_domain = "w.test"
bundle_endpoint_url = "https://{endpoint}/"
bundle_endpoint_profile = "https_web"
ca_file = "{}"

[[federation]]
trust_domain = "v.test"
bundle_endpoint_url = "https://{endpoint}/"
bundle_endpoint_profile = "https_web"
ca_file = "{}"
"#,
        web.ca_file.display(),
        stranger.ca_file.display()
    );
    let a = start(args(TD, &dir.path().join("a"), &config)).await;
    let agent = a.agent("node-1").await;
    let mut feed = agent
        .client(a.addr)
        .await
        .watch_bundle(wire::WatchBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    let fetched = federated_in_feed(&mut feed, "w.test", |_| true).await;
    assert_eq!(fetched.x509_authorities(), [w_root]);
    a.wait_fetch_result("v.test", "tls").await;
    let text = a.metrics().await;
    assert!(
        !text.contains("trust_domain=\"v.test\",result=\"ok\""),
        "{text}"
    );
}

/// Raw HTTP/1.1 over TLS to B's `https_spiffe` endpoint; returns the whole answer.
async fn raw(endpoint: SocketAddr, td: &TrustDomain, bundle: BundleSet, request: &str) -> String {
    let store = Arc::new(SvidStore::new(bundle));
    let tls = Arc::new(client_config_optional_svid(
        store,
        Arc::new(ExactId(server_id(td))),
        vec![],
    ));
    let tcp = TcpStream::connect(endpoint).await.unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(unused_server_name(), tcp)
        .await
        .unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut out))
        .await
        .unwrap()
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn the_bundle_endpoint_answers_get_and_head_on_slash_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut b_args = args("b.test", &dir.path().join("b"), "");
    b_args.bundle_endpoint = Some("127.0.0.1:0".parse().unwrap());
    let b = start(b_args).await;
    let endpoint = b.bundle_endpoint.unwrap();
    let td = TrustDomain::new("b.test").unwrap();
    let roots =
        lanyard_svid::bundle::certificates_from_pem(b.roots_pem().await.as_bytes()).unwrap();
    let bundle = BundleSet::from(TrustBundle::from_x509_authorities(
        td.clone(),
        roots.clone(),
    ));

    let get = raw(
        endpoint,
        &td,
        bundle.clone(),
        "GET / HTTP/1.1\r\nhost: b\r\n\r\n",
    )
    .await;
    assert!(get.starts_with("HTTP/1.1 200"), "{get}");
    assert!(
        get.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{get}"
    );
    let body = &get[get.find("\r\n\r\n").unwrap() + 4..];
    let served = TrustBundle::from_jwks(td.clone(), body.as_bytes()).unwrap();
    assert_eq!(served.x509_authorities(), roots.as_slice());
    assert_eq!(served.jwt_authorities().len(), 1);
    assert!(served.refresh_hint().is_some());

    let head = raw(
        endpoint,
        &td,
        bundle.clone(),
        "HEAD / HTTP/1.1\r\nhost: b\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "no body: {head}");
    let post = raw(
        endpoint,
        &td,
        bundle.clone(),
        "POST / HTTP/1.1\r\nhost: b\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    let other = raw(
        endpoint,
        &td,
        bundle.clone(),
        "GET /x HTTP/1.1\r\nhost: b\r\n\r\n",
    )
    .await;
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
    // A request head past the bound is refused, not buffered.
    let huge = format!(
        "GET / HTTP/1.1\r\nhost: b\r\nx: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let answer = raw(endpoint, &td, bundle, &huge).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
}

#[tokio::test]
async fn in_cluster_mode_a_lanyard_federation_resource_is_fetched_until_it_is_deleted() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::Api;
    use kube::api::{DeleteParams, PostParams};
    use kube_fixture::{FixtureOptions, KubeFixture};
    use lanyard_registration::federation::{
        BundleEndpointProfile, LanyardFederation, LanyardFederationSpec,
    };

    let dir = tempfile::tempdir().unwrap();
    let mut b_args = args("b.test", &dir.path().join("b"), "");
    b_args.bundle_endpoint = Some("127.0.0.1:0".parse().unwrap());
    let b = start(b_args).await;
    let b_endpoint = b.bundle_endpoint.expect("B announces its bundle endpoint");

    let fixture = KubeFixture::start(FixtureOptions::default()).await.unwrap();
    let seeded = lanyard_e2e::cluster::seed(&fixture);
    let admin_client = fixture.admin_client().unwrap();
    let crd: CustomResourceDefinition =
        serde_saphyr::from_str(lanyard_registration::crd::FEDERATION_CRD_YAML).unwrap();
    Api::<CustomResourceDefinition>::all(admin_client.clone())
        .create(&PostParams::default(), &crd)
        .await
        .expect("the fixture accepts the LanyardFederation CRD");
    let federations: Api<LanyardFederation> = Api::all(admin_client);
    federations
        .create(
            &PostParams::default(),
            &LanyardFederation::new(
                "b-test",
                LanyardFederationSpec {
                    trust_domain: "b.test".into(),
                    bundle_endpoint_url: format!("https://{b_endpoint}"),
                    bundle_endpoint_profile: BundleEndpointProfile {
                        type_: "https_spiffe".into(),
                        endpoint_spiffe_id: Some("spiffe://b.test/lanyard/server".into()),
                    },
                    trust_domain_bundle: Some(b.roots_pem().await),
                    ..Default::default()
                },
            ),
        )
        .await
        .expect("the fixture accepts the LanyardFederation");

    // A cluster-mode replica under the RBAC `lanyard install` renders.
    let a_args = RunArgs {
        replica_name: Some("lanyard-server-a".into()),
        ..cluster_args(dir.path().join("a"))
    };
    let client = fixture
        .client_for(&fixture.issue_api_token("lanyard", "lanyard-server"))
        .unwrap();
    let a = common::start(a_args, Some(client)).await;
    let agent = Caller::new(BundleSet::from(TrustBundle::from_x509_authorities(
        td(),
        [seeded.root.cert_der().clone()],
    )));
    let token = lanyard_e2e::cluster::agent_token(&fixture, &seeded);
    agent
        .attest(a.addr, Method::K8sPsatToken(token))
        .await
        .unwrap();
    let mut feed = agent
        .client(a.addr)
        .await
        .watch_bundle(wire::WatchBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    // Fetched from B's endpoint (the bootstrap PEM has no JWT key).
    let fetched = federated_in_feed(&mut feed, "b.test", |b| !b.jwt_authorities().is_empty()).await;
    assert!(!fetched.x509_authorities().is_empty());

    // Deleted: the next message carries our bundle and no b.test.
    federations
        .delete("b-test", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, async {
        loop {
            let message = feed.message().await.unwrap().expect("feed open");
            if message.federated_bundles.is_empty() {
                assert!(message.bundle.is_some());
                return;
            }
        }
    })
    .await
    .expect("b.test dropped from the feed after its LanyardFederation was deleted");
    a.stop().await;
    b.stop().await;
}
