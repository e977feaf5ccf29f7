//! Two Lanyard deployments of different trust domains on one machine, each with its own
//! `lanyard-server` (data-dir mode, `--bundle-endpoint`), `lanyard-agent` and proxies,
//! federating through their bundle endpoints (`https_spiffe`, bootstrapped from the other's
//! root):
//!
//! - a proxy of `a.test` talks mTLS to a proxy of `b.test` whose `--allow` names its ID; a
//!   `b.test` proxy with `--allow any` (its own trust domain only) refuses it
//!   (`other_trust_domain`); an `a.test` workload whose entry does not federate with `b.test`
//!   is not given `b.test`'s bundle, so its proxy refuses B (`unknown_trust_domain`);
//! - py-spiffe and the Rust `spiffe` crate see the federated bundle through the agent;
//! - a foreign bundle endpoint (`https_web`, served by this test) that turns to serving
//!   garbage, an oversized document or a bundle whose CA names another trust domain is refused
//!   (the server's fetch metric names why) and the bundle fetched before stays.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use lanyard_e2e::client::{RunAs, api_until, http_get, metric};
use lanyard_e2e::echo::EchoApp;
use lanyard_e2e::proxy::{Launch, Proxy, assert_refused, field, finish, round_trip};
use lanyard_e2e::python::{PyClient, field as py_field, script};
use lanyard_e2e::stack::{Agent, Server};
use lanyard_e2e::wait::eventually;
use lanyard_svid::{RootCa, TrustBundle, TrustDomain};

/// `a.test/client`: federates with `b.test`.
const CLIENT_UID: u32 = 2201;
/// `a.test/plain`: no federation.
const PLAIN_UID: u32 = 2202;
/// `b.test/server`: federates with `a.test`.
const SERVER_UID: u32 = 2203;

fn my_uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

/// An `[[entries]]` table for `uid`, federating with `federates_with`.
fn entry(id: &str, uid: u32, federates_with: &[&str]) -> String {
    let list = federates_with
        .iter()
        .map(|td| format!("\"{td}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[[entries]]\nspiffe_id = \"{id}\"\nselectors = [\"unix:uid:{uid}\"]\nnodes = [\"*\"]\nfederates_with = [{list}]\n"
    )
}

/// A `[[federation]]` table: `trust_domain`'s Lanyard server at `endpoint` (`https_spiffe`),
/// first authenticated with the roots in `roots_file`.
fn spiffe_federation(trust_domain: &str, endpoint: SocketAddr, roots_file: &Path) -> String {
    format!(
        "[[federation]]\ntrust_domain = \"{trust_domain}\"\nbundle_endpoint_url = \"https://{endpoint}\"\nbundle_endpoint_profile = \"https_spiffe\"\nendpoint_spiffe_id = \"spiffe://{trust_domain}/lanyard/server\"\ntrust_domain_bundle_file = \"{}\"\n",
        roots_file.display()
    )
}

/// A temp dir other uids can traverse to the agents' sockets.
fn shared_dir(path: &Path) {
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn as_uid(uid: u32) -> Launch<'static> {
    Launch {
        uid: Some(uid),
        ..Launch::default()
    }
}

/// The trust domains `lanyard-agent api fetch bundles` lists for this process (it prints
/// each as `spiffe://<td>`).
fn served_domains(agent: &Agent) -> Vec<String> {
    let out = lanyard_e2e::client::api(&agent.socket, &["fetch", "bundles"], RunAs::Me);
    out.stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|id| id.trim_start_matches("spiffe://").to_owned())
        .collect()
}

/// Waits until `agent` serves this process the bundle of `trust_domain`.
fn wait_for_bundle(agent: &Agent, trust_domain: &str) {
    api_until(&agent.socket, &["fetch", "bundles"], RunAs::Me, |o| {
        o.success
            && o.stdout
                .lines()
                .any(|l| l.starts_with(&format!("spiffe://{trust_domain} ")))
    });
}

#[test]
fn two_trust_domains_federate_through_their_bundle_endpoints() {
    let tmp = tempfile::tempdir().unwrap();
    shared_dir(tmp.path());
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    shared_dir(&a_dir);
    shared_dir(&b_dir);
    let a_entries = [
        entry("spiffe://a.test/client", CLIENT_UID, &["b.test"]),
        entry("spiffe://a.test/plain", PLAIN_UID, &[]),
        entry("spiffe://a.test/probe", my_uid(), &["b.test"]),
    ]
    .concat();
    let endpoint_flags = ["--bundle-endpoint", "127.0.0.1:0"];

    // A first, without federation: B needs A's endpoint address and roots.
    let a = Server::start_in_domain(&a_dir, "a.test", &a_entries, "127.0.0.1:0", &endpoint_flags);
    let a_endpoint = a.process.listener("bundle-endpoint");
    let a_roots = tmp.path().join("a-roots.pem");
    a.write_bundle(&a_roots);
    let b_config = [
        entry("spiffe://b.test/server", SERVER_UID, &["a.test"]),
        entry("spiffe://b.test/probe", my_uid(), &["a.test"]),
        spiffe_federation("a.test", a_endpoint, &a_roots),
    ]
    .concat();
    let b = Server::start_in_domain(&b_dir, "b.test", &b_config, "127.0.0.1:0", &endpoint_flags);
    let b_endpoint = b.process.listener("bundle-endpoint");
    let b_roots = tmp.path().join("b-roots.pem");
    b.write_bundle(&b_roots);
    // A again, on the same addresses and data dir, now federating with B.
    let a_grpc = a.addr.to_string();
    drop(a);
    let a = Server::start_in_domain(
        &a_dir,
        "a.test",
        &[a_entries, spiffe_federation("b.test", b_endpoint, &b_roots)].concat(),
        &a_grpc,
        &["--bundle-endpoint", &a_endpoint.to_string()],
    );
    let agent_a = Agent::start(&a_dir, &a, "node-a");
    let agent_b = Agent::start(&b_dir, &b, "node-b");
    wait_for_bundle(&agent_a, "b.test");
    wait_for_bundle(&agent_b, "a.test");
    assert_eq!(served_domains(&agent_a), ["a.test", "b.test"]);

    let app = EchoApp::start(None);
    let mut b_allowing = Proxy::start(
        &agent_b.socket,
        as_uid(SERVER_UID),
        &[
            "--inbound",
            &format!("127.0.0.1:0={}", app.addr),
            "--allow",
            "any,spiffe://a.test/client",
        ],
    );
    let mut b_own_only = Proxy::start(
        &agent_b.socket,
        as_uid(SERVER_UID),
        &["--inbound", &format!("127.0.0.1:0={}", app.addr)],
    );
    let (allowing_in, own_only_in) = (b_allowing.addr("inbound"), b_own_only.addr("inbound"));
    let to = |addr: SocketAddr| format!("127.0.0.1:0={addr},id=spiffe://b.test/server");
    let mut a_client = Proxy::start(
        &agent_a.socket,
        as_uid(CLIENT_UID),
        &["--outbound", &to(allowing_in)],
    );
    let a_client_again = Proxy::start(
        &agent_a.socket,
        as_uid(CLIENT_UID),
        &["--outbound", &to(own_only_in)],
    );
    let mut a_plain = Proxy::start(
        &agent_a.socket,
        as_uid(PLAIN_UID),
        &["--outbound", &to(allowing_in)],
    );
    for p in [
        &b_allowing,
        &b_own_only,
        &a_client,
        &a_client_again,
        &a_plain,
    ] {
        p.wait_ready();
    }

    // a.test/client -> b.test/server, whose --allow names it: mTLS across trust domains.
    let mut conn = a_client.connect(a_client.addr("outbound"));
    assert_eq!(round_trip(&mut conn, b"across domains"), b"across domains");
    finish(&mut conn);
    let line = a_client.tap.next_line();
    assert_eq!(field(&line, "tls"), "true", "{line}");
    assert_eq!(field(&line, "peer"), "spiffe://b.test/server", "{line}");
    let line = b_allowing.tap.next_line();
    assert_eq!(field(&line, "tls"), "true", "{line}");
    assert_eq!(field(&line, "peer"), "spiffe://a.test/client", "{line}");
    assert_eq!(app.accepted(), 1);

    // The same client to a B proxy whose --allow is `any`: its own trust domain only.
    let mut conn = a_client_again.connect(a_client_again.addr("outbound"));
    assert_refused(&mut conn, b"not without --allow");
    let line = b_own_only.tap.next_line();
    assert_eq!(field(&line, "tls"), "false", "{line}");
    assert_eq!(field(&line, "reason"), "other_trust_domain", "{line}");
    assert_eq!(app.accepted(), 1, "nothing reached the app");

    // a.test/plain does not federate with b.test: it holds no b.test bundle, so B's SVID
    // does not verify.
    let mut conn = a_plain.connect(a_plain.addr("outbound"));
    assert_refused(&mut conn, b"no bundle for b.test");
    let line = a_plain.tap.next_line();
    assert_eq!(field(&line, "tls"), "false", "{line}");
    assert_eq!(field(&line, "reason"), "unknown_trust_domain", "{line}");
    assert_eq!(
        field(&b_allowing.tap.next_line(), "reason"),
        "handshake_failed"
    );
    assert_eq!(app.accepted(), 1);

    // py-spiffe, unchanged, sees b.test's bundle beside its own (X.509 and JWT).
    let py = PyClient::spawn(
        &script("py_spiffe_client.py"),
        &[agent_a.socket.to_str().unwrap(), "fetch", "federation-test"],
    );
    let svid = py.next();
    assert_eq!(py_field(&svid, "spiffe_id"), "spiffe://a.test/probe");
    let bundles = py.next();
    assert_eq!(py_field(&bundles, "step"), "x509_bundles", "{bundles}");
    assert_eq!(
        py_field(&bundles, "trust_domains"),
        "[\"a.test\", \"b.test\"]"
    );
    for _ in 0..2 {
        py.next(); // the JWT-SVID and its validation by the agent
    }
    let local = py.next();
    assert_eq!(py_field(&local, "step"), "jwt_local_validation", "{local}");
    assert_eq!(
        py_field(&local, "jwt_trust_domains"),
        "[\"a.test\", \"b.test\"]"
    );
    assert_eq!(py_field(&py.next(), "step"), "done");
    py.succeeds();

    // The Rust `spiffe` crate: the X.509 context's bundle set and the JWT bundles.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client =
            spiffe::WorkloadApiClient::connect_to(format!("unix://{}", agent_a.socket.display()))
                .await
                .expect("connect to agent A");
        let b_td = spiffe::TrustDomain::new("b.test").unwrap();
        let context = client.fetch_x509_context().await.expect("X.509 context");
        let federated = context
            .bundle_set()
            .get(&b_td)
            .expect("b.test's bundle in the X.509 context");
        let want =
            lanyard_svid::bundle::certificates_from_pem(&std::fs::read(&b_roots).unwrap()).unwrap();
        let got: Vec<&[u8]> = federated.authorities().iter().map(|c| c.as_ref()).collect();
        let want: Vec<&[u8]> = want.iter().map(|c| c.as_ref()).collect();
        assert_eq!(got, want, "b.test's roots, as its server serves them");
        let jwt = client.fetch_jwt_bundles().await.expect("JWT bundles");
        assert!(jwt.get(&b_td).is_some(), "b.test's JWT keys");
    });

    drop((a_client, a_client_again, a_plain, b_allowing, b_own_only));
    drop((agent_a, agent_b, a, b));
}

/// What the fake bundle endpoint answers with now.
#[derive(Clone)]
enum Serving {
    Document(Vec<u8>),
}

/// An HTTPS bundle endpoint (`https_web`) run by this test: a certificate for 127.0.0.1 from
/// a test CA, answering every request with what [`Serving`] holds at that moment.
struct FakeEndpoint {
    addr: SocketAddr,
    serving: Arc<Mutex<Serving>>,
}

impl FakeEndpoint {
    fn start(ca: &rcgen::Issuer<'static, rcgen::KeyPair>, first: Vec<u8>) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        let cert = params.signed_by(&key, ca).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = Arc::new(Mutex::new(Serving::Document(first)));
        let answer = serving.clone();
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { return };
                let config = config.clone();
                let Serving::Document(body) = answer.lock().unwrap().clone();
                std::thread::spawn(move || {
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, tcp);
                    let mut request = Vec::new();
                    let mut byte = [0u8; 1];
                    while !request.ends_with(b"\r\n\r\n") && request.len() < 16 * 1024 {
                        match tls.read(&mut byte) {
                            Ok(1) => request.push(byte[0]),
                            _ => return,
                        }
                    }
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    // A fetcher that stops reading an oversized body closes: ignore that.
                    let _ = tls.write_all(head.as_bytes());
                    let _ = tls.write_all(&body);
                    let _ = tls.flush();
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                });
            }
        });
        Self { addr, serving }
    }

    fn serve(&self, document: Vec<u8>) {
        *self.serving.lock().unwrap() = Serving::Document(document);
    }
}

/// A SPIFFE bundle document for `trust_domain` whose one X.509 authority is a new CA naming
/// `ca_domain` (the same for a good document), asking to be fetched again after a second.
fn bundle_document(trust_domain: &str, ca_domain: &str) -> (Vec<u8>, String) {
    let ca = RootCa::generate(
        &TrustDomain::new(ca_domain).unwrap(),
        Duration::from_secs(86_400),
        SystemTime::now(),
    )
    .unwrap();
    let mut bundle = TrustBundle::from_x509_authorities(
        TrustDomain::new(trust_domain).unwrap(),
        [ca.cert_der().clone()],
    );
    bundle.set_refresh_hint(Some(Duration::from_secs(1)));
    (bundle.to_jwks().unwrap().into_bytes(), ca.cert_pem())
}

#[test]
fn a_bundle_endpoint_serving_bad_documents_is_refused_and_the_previous_bundle_stays() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca_file = tmp.path().join("web-ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let ca = rcgen::Issuer::new(ca_params, ca_key);

    // Three foreign domains, each first serving a good bundle, then one kind of bad document.
    let oversized = {
        let mut doc = b"{\"keys\": [".to_vec();
        doc.resize(2 * 1024 * 1024, b' ');
        doc.extend_from_slice(b"]}");
        doc
    };
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "garbage.test",
            b"<html>not a bundle</html>".to_vec(),
            "malformed",
        ),
        ("oversized.test", oversized, "too_large"),
        (
            "wrongdomain.test",
            bundle_document("wrongdomain.test", "evil.test").0,
            "wrong_trust_domain",
        ),
    ];
    let mut endpoints = Vec::new();
    let mut config = entry(
        "spiffe://a.test/probe",
        my_uid(),
        &cases.iter().map(|c| c.0).collect::<Vec<_>>(),
    );
    for (domain, _, _) in &cases {
        let (good, good_pem) = bundle_document(domain, domain);
        let endpoint = FakeEndpoint::start(&ca, good);
        config.push_str(&format!(
            "[[federation]]\ntrust_domain = \"{domain}\"\nbundle_endpoint_url = \"https://{}\"\nbundle_endpoint_profile = \"https_web\"\nca_file = \"{}\"\n",
            endpoint.addr,
            ca_file.display()
        ));
        endpoints.push((endpoint, good_pem));
    }
    let server = Server::start_in_domain(
        tmp.path(),
        "a.test",
        &config,
        "127.0.0.1:0",
        &["--health", "127.0.0.1:0"],
    );
    let health = server.process.listener("health");
    let agent = Agent::start(tmp.path(), &server, "node-a");
    for (domain, _, _) in &cases {
        wait_for_bundle(&agent, domain);
    }

    // Now each endpoint turns bad; the server refuses each document for its reason.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for ((domain, bad, label), (endpoint, _)) in cases.iter().zip(&endpoints) {
        endpoint.serve(bad.clone());
        let series = format!(
            "lanyard_server_federation_fetch_total{{trust_domain=\"{domain}\",result=\"{label}\"}}"
        );
        runtime.block_on(eventually(&format!("{domain} refused as {label}"), || {
            let refused = metric(&http_get(health, "/metrics"), &series).is_some_and(|n| n >= 1.0);
            std::future::ready(refused.then_some(()))
        }));
    }
    // And the agent still serves each domain's good bundle, as first fetched.
    let out = api_until(
        &agent.socket,
        &["fetch", "bundles", "--pem"],
        RunAs::Me,
        |o| o.success,
    );
    for ((domain, _, _), (_, good_pem)) in cases.iter().zip(&endpoints) {
        let section = out
            .stdout
            .split_once(&format!("spiffe://{domain} "))
            .unwrap_or_else(|| panic!("{domain} still served: {}", out.stdout))
            .1;
        assert!(
            section.contains(good_pem.trim()),
            "{domain}: the bundle fetched before stays"
        );
    }
}
