//! mTLS handshakes over loopback TCP with the configs of `lanyard_svid::tls`: both sides see
//! each other's SPIFFE ID, and every refusal the design asks for shows up, with its reason, on
//! the side that made it.
//!
//! Every connection is exercised with a 1-byte echo: under TLS 1.3 a client's handshake can
//! complete although the server refused the client's certificate; only the first read shows it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lanyard_svid::csr::VerifiedCsr;
use lanyard_svid::test_support::{LeafSpec, TestCa};
use lanyard_svid::tls::{
    self, AllowPolicy, AnyId, Authorizer, ExactId, LANYARD_ALPN, MemberOf, SvidStore, TlsRefusal,
    refusal_from_io,
};
use lanyard_svid::{BundleSet, KeyAlgorithm, KeyAndCsr, RootCa, SpiffeId, TrustBundle, X509Svid};
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const SERVER: &str = "spiffe://example.org/server";
const CLIENT: &str = "spiffe://example.org/client";
const DEADLINE: Duration = Duration::from_secs(10);

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn alpn() -> Vec<Vec<u8>> {
    vec![LANYARD_ALPN.to_vec()]
}

async fn within<F: std::future::Future>(fut: F) -> F::Output {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .expect("no answer before the deadline")
}

/// What the server saw of one connection.
#[derive(Debug)]
enum ServerEvent {
    Accepted {
        peer: Option<SpiffeId>,
        alpn: Option<Vec<u8>>,
    },
    /// The handshake failed; the label of our own refusal if it was one.
    Refused { reason: Option<String> },
}

/// An echo server on 127.0.0.1:0 reporting each handshake's outcome.
async fn start_server(config: ServerConfig) -> (SocketAddr, mpsc::UnboundedReceiver<ServerEvent>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (events, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let events = events.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(mut tls) => {
                        let (_, conn) = tls.get_ref();
                        let _ = events.send(ServerEvent::Accepted {
                            peer: tls::peer_spiffe_id(conn),
                            alpn: conn.alpn_protocol().map(|p| p.to_vec()),
                        });
                        let mut buf = [0u8; 64];
                        loop {
                            match tls.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if tls.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                    let _ = tls.flush().await;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        let _ = events.send(ServerEvent::Refused {
                            reason: refusal_from_io(&e).map(|r| r.to_string()),
                        });
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn connect(config: ClientConfig, addr: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(config))
        .connect(tls::unused_server_name(), tcp)
        .await
}

/// Writes one byte and reads it back.
async fn echo(stream: &mut TlsStream<TcpStream>, byte: u8) -> std::io::Result<()> {
    stream.write_all(&[byte]).await?;
    stream.flush().await?;
    let mut got = [0u8; 1];
    stream.read_exact(&mut got).await?;
    assert_eq!(got[0], byte);
    Ok(())
}

/// Connects and echoes; `Err` if either step fails.
async fn connect_and_echo(
    config: ClientConfig,
    addr: SocketAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut stream = within(connect(config, addr)).await?;
    within(echo(&mut stream, 7)).await?;
    Ok(stream)
}

async fn next_event(rx: &mut mpsc::UnboundedReceiver<ServerEvent>) -> ServerEvent {
    within(rx.recv()).await.expect("server task alive")
}

fn store(svid: Option<X509Svid>, bundles: BundleSet) -> Arc<SvidStore> {
    let store = SvidStore::new(bundles);
    if let Some(svid) = svid {
        store.update_svid(svid).unwrap();
    }
    Arc::new(store)
}

fn server_with(ca: &TestCa, authorizer: Arc<dyn Authorizer>) -> (Arc<SvidStore>, ServerConfig) {
    let store = store(Some(ca.svid(SERVER)), ca.bundle_set());
    let config = tls::server_config(store.clone(), authorizer, alpn());
    (store, config)
}

fn client_with(ca: &TestCa, svid: X509Svid, expected: &str) -> (Arc<SvidStore>, ClientConfig) {
    let store = store(Some(svid), ca.bundle_set());
    let config = tls::client_config(store.clone(), Arc::new(ExactId(id(expected))), alpn());
    (store, config)
}

#[tokio::test]
async fn mtls_both_sides_see_each_others_id() {
    let ca = TestCa::new("example.org");
    let (_, server) = server_with(&ca, Arc::new(MemberOf(ca.trust_domain().clone())));
    let (addr, mut events) = start_server(server).await;
    let (_, client) = client_with(&ca, ca.svid(CLIENT), SERVER);

    let stream = connect_and_echo(client, addr).await.unwrap();
    let (_, conn) = stream.get_ref();
    assert_eq!(tls::peer_spiffe_id(conn), Some(id(SERVER)));
    assert_eq!(conn.alpn_protocol(), Some(LANYARD_ALPN));
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    match next_event(&mut events).await {
        ServerEvent::Accepted { peer, alpn } => {
            assert_eq!(peer, Some(id(CLIENT)));
            assert_eq!(alpn.as_deref(), Some(LANYARD_ALPN));
        }
        other => panic!("expected an accepted connection, got {other:?}"),
    }
}

#[tokio::test]
async fn svids_from_the_production_ca_work_end_to_end() {
    let td = lanyard_svid::TrustDomain::new("example.org").unwrap();
    let now = SystemTime::now();
    let root = RootCa::generate(&td, Duration::from_secs(86_400), now).unwrap();
    let issuer = root
        .issue_intermediate(Duration::from_secs(3600 * 12), now)
        .unwrap();
    let svid = |name: &str| {
        let key_and_csr = KeyAndCsr::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let csr = VerifiedCsr::from_der(&key_and_csr.csr_der).unwrap();
        let signed = issuer
            .sign_x509_svid(&csr, &id(name), Duration::from_secs(3600), now)
            .unwrap();
        X509Svid::parse(signed.cert_chain, Some(key_and_csr.private_key_pkcs8)).unwrap()
    };
    let mut bundle = TrustBundle::new(td.clone());
    bundle.add_x509_authority(root.cert_der().clone());
    let bundles = BundleSet::from(bundle);

    let server_store = store(Some(svid(SERVER)), bundles.clone());
    let server = tls::server_config(server_store, Arc::new(AnyId), alpn());
    let (addr, mut events) = start_server(server).await;
    let client_store = store(Some(svid(CLIENT)), bundles);
    let client = tls::client_config(client_store, Arc::new(ExactId(id(SERVER))), alpn());

    connect_and_echo(client, addr).await.unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        ServerEvent::Accepted { peer: Some(p), .. } if p == id(CLIENT)
    ));
}

#[tokio::test]
async fn client_from_another_trust_domain_is_refused() {
    let ca = TestCa::new("example.org");
    let other = TestCa::new("other.org");
    let (_, server) = server_with(&ca, Arc::new(AnyId));
    let (addr, mut events) = start_server(server).await;

    // The client trusts our server, but its own SVID is from other.org, which the server has
    // no bundle for.
    let (_, client) = client_with(&ca, other.svid("spiffe://other.org/client"), SERVER);
    assert!(connect_and_echo(client, addr).await.is_err());
    match next_event(&mut events).await {
        ServerEvent::Refused { reason } => {
            assert_eq!(reason.as_deref(), Some("unknown_trust_domain"))
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn federated_domain_is_verified_but_policy_can_still_refuse_it() {
    let ca = TestCa::new("example.org");
    let other = TestCa::new("other.org");
    let mut bundles = ca.bundle_set();
    bundles.insert(other.bundle());
    let server_store = store(Some(ca.svid(SERVER)), bundles);
    let server = tls::server_config(
        server_store,
        Arc::new(MemberOf(ca.trust_domain().clone())),
        alpn(),
    );
    let (addr, mut events) = start_server(server).await;
    let (_, client) = client_with(&ca, other.svid("spiffe://other.org/client"), SERVER);
    assert!(connect_and_echo(client, addr).await.is_err());
    match next_event(&mut events).await {
        ServerEvent::Refused { reason } => {
            assert_eq!(reason.as_deref(), Some("other_trust_domain"))
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn client_id_outside_the_allow_policy_is_refused() {
    let ca = TestCa::new("example.org");
    let policy: AllowPolicy = "spiffe://example.org/ns/prod/*".parse().unwrap();
    let store = store(Some(ca.svid(SERVER)), ca.bundle_set());
    let server = tls::server_config(store.clone(), policy.into_authorizer(store), alpn());
    let (addr, mut events) = start_server(server).await;

    let (_, outsider) = client_with(&ca, ca.svid("spiffe://example.org/ns/dev/sa/x"), SERVER);
    assert!(connect_and_echo(outsider, addr).await.is_err());
    match next_event(&mut events).await {
        ServerEvent::Refused { reason } => assert_eq!(reason.as_deref(), Some("id_not_allowed")),
        other => panic!("expected a refusal, got {other:?}"),
    }

    let (_, insider) = client_with(&ca, ca.svid("spiffe://example.org/ns/prod/sa/x"), SERVER);
    connect_and_echo(insider, addr).await.unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        ServerEvent::Accepted { .. }
    ));
}

#[tokio::test]
async fn client_with_an_expired_or_foreign_root_svid_is_refused() {
    let ca = TestCa::new("example.org");
    let (_, server) = server_with(&ca, Arc::new(AnyId));
    let (addr, mut events) = start_server(server).await;

    let (chain, key) = ca.issue(&LeafSpec::new(CLIENT).expired());
    // X509Svid::parse checks the profile, not time: an expired SVID can still be loaded.
    let expired = X509Svid::parse(chain, Some(key)).unwrap();
    let (_, client) = client_with(&ca, expired, SERVER);
    assert!(connect_and_echo(client, addr).await.is_err());
    match next_event(&mut events).await {
        ServerEvent::Refused { reason } => assert_eq!(reason.as_deref(), Some("expired")),
        other => panic!("expected a refusal, got {other:?}"),
    }

    let rogue = TestCa::new("example.org");
    let (_, client) = client_with(&ca, rogue.svid(CLIENT), SERVER);
    assert!(connect_and_echo(client, addr).await.is_err());
    match next_event(&mut events).await {
        ServerEvent::Refused { reason } => assert_eq!(reason.as_deref(), Some("untrusted_chain")),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn server_with_the_wrong_id_is_refused_by_the_client() {
    let ca = TestCa::new("example.org");
    let (_, server) = server_with(&ca, Arc::new(AnyId));
    let (addr, mut events) = start_server(server).await;

    let (_, client) = client_with(&ca, ca.svid(CLIENT), "spiffe://example.org/api");
    let err = within(connect(client, addr)).await.unwrap_err();
    let refusal = refusal_from_io(&err).expect("a typed refusal");
    assert_eq!(refusal.to_string(), "unexpected_id");
    assert!(matches!(refusal, TlsRefusal::Unauthorized(_)));
    // The server sees the handshake fail (the client's alert), not a refusal of its own.
    assert!(matches!(
        next_event(&mut events).await,
        ServerEvent::Refused { reason: None }
    ));
}

#[tokio::test]
async fn removed_root_refuses_new_handshakes_but_not_open_connections() {
    let ca = TestCa::new("example.org");
    let (server_store, server) = server_with(&ca, Arc::new(AnyId));
    let (addr, mut events) = start_server(server).await;
    let (_, client) = client_with(&ca, ca.svid(CLIENT), SERVER);

    let mut open = connect_and_echo(client.clone(), addr).await.unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        ServerEvent::Accepted { .. }
    ));

    // The server's bundle loses its only root: it trusts nobody from example.org any more.
    server_store.update_bundles(BundleSet::from(TrustBundle::new(ca.trust_domain().clone())));
    assert!(connect_and_echo(client.clone(), addr).await.is_err());
    match next_event(&mut events).await {
        ServerEvent::Refused { reason } => assert_eq!(reason.as_deref(), Some("no_authorities")),
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Rotated to a new root the client's SVID does not chain to.
    let new_root = TestCa::new("example.org");
    server_store.update_bundles(new_root.bundle_set());
    assert!(connect_and_echo(client.clone(), addr).await.is_err());
    match next_event(&mut events).await {
        ServerEvent::Refused { reason } => assert_eq!(reason.as_deref(), Some("untrusted_chain")),
        other => panic!("expected a refusal, got {other:?}"),
    }

    // The connection made before the change keeps working.
    within(echo(&mut open, 42)).await.unwrap();

    // And the root coming back restores new handshakes, with the very same config.
    server_store.update_bundles(ca.bundle_set());
    connect_and_echo(client, addr).await.unwrap();
}

#[tokio::test]
async fn client_side_bundle_update_refuses_the_server() {
    let ca = TestCa::new("example.org");
    let (_, server) = server_with(&ca, Arc::new(AnyId));
    let (addr, _events) = start_server(server).await;
    let (client_store, client) = client_with(&ca, ca.svid(CLIENT), SERVER);
    connect_and_echo(client.clone(), addr).await.unwrap();

    client_store.update_bundles(BundleSet::new());
    let err = within(connect(client, addr)).await.unwrap_err();
    assert_eq!(
        refusal_from_io(&err).map(|r| r.to_string()).as_deref(),
        Some("unknown_trust_domain")
    );
}

#[tokio::test]
async fn rotated_server_svid_is_presented_on_the_next_handshake() {
    let ca = TestCa::new("example.org");
    let first = ca.svid(SERVER);
    let second = ca.svid(SERVER);
    assert_ne!(first.leaf(), second.leaf());
    let server_store = store(Some(first.clone()), ca.bundle_set());
    let server = tls::server_config(server_store.clone(), Arc::new(AnyId), alpn());
    let (addr, _events) = start_server(server).await;
    let (_, client) = client_with(&ca, ca.svid(CLIENT), SERVER);

    let mut old_conn = connect_and_echo(client.clone(), addr).await.unwrap();
    let leaf_of = |s: &TlsStream<TcpStream>| s.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(&leaf_of(&old_conn), first.leaf());

    server_store.update_svid(second.clone()).unwrap();
    let new_conn = connect_and_echo(client, addr).await.unwrap();
    assert_eq!(&leaf_of(&new_conn), second.leaf());

    // The connection opened under the first SVID is untouched.
    within(echo(&mut old_conn, 1)).await.unwrap();
    assert_eq!(&leaf_of(&old_conn), first.leaf());
}

#[tokio::test]
async fn rotated_client_svid_is_presented_on_the_next_handshake() {
    let ca = TestCa::new("example.org");
    let (_, server) = server_with(&ca, Arc::new(AnyId));
    let (addr, mut events) = start_server(server).await;
    let (client_store, client) = client_with(&ca, ca.svid(CLIENT), SERVER);
    connect_and_echo(client.clone(), addr).await.unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        ServerEvent::Accepted { peer: Some(p), .. } if p == id(CLIENT)
    ));
    client_store
        .update_svid(ca.svid("spiffe://example.org/client-v2"))
        .unwrap();
    connect_and_echo(client, addr).await.unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        ServerEvent::Accepted { peer: Some(p), .. } if p == id("spiffe://example.org/client-v2")
    ));
}

#[tokio::test]
async fn no_svid_yet_fails_cleanly_on_either_side() {
    let ca = TestCa::new("example.org");

    // A server without an SVID cannot complete a handshake.
    let server_store = store(None, ca.bundle_set());
    let server = tls::server_config(server_store.clone(), Arc::new(AnyId), alpn());
    let (addr, mut events) = start_server(server).await;
    let (_, client) = client_with(&ca, ca.svid(CLIENT), SERVER);
    assert!(connect_and_echo(client.clone(), addr).await.is_err());
    assert!(matches!(
        next_event(&mut events).await,
        ServerEvent::Refused { .. }
    ));
    // Once it arrives, the same config serves.
    server_store.update_svid(ca.svid(SERVER)).unwrap();
    connect_and_echo(client, addr).await.unwrap();

    // A client without an SVID refuses to proceed, with a typed reason.
    let client_store = store(None, ca.bundle_set());
    let client = tls::client_config(client_store, Arc::new(ExactId(id(SERVER))), alpn());
    let err = within(connect(client, addr)).await.unwrap_err();
    assert_eq!(refusal_from_io(&err), Some(&TlsRefusal::NoSvid));
}

#[tokio::test]
async fn optional_client_auth_accepts_anonymous_clients_and_verifies_presented_ones() {
    let ca = TestCa::new("example.org");
    let server_store = store(Some(ca.svid(SERVER)), ca.bundle_set());
    let server = tls::server_config_optional_client_auth(server_store, alpn());
    let (addr, mut events) = start_server(server).await;

    // An agent before attestation: no SVID, still verifies the server.
    let anon_store = store(None, ca.bundle_set());
    let anon =
        tls::client_config_optional_svid(anon_store.clone(), Arc::new(ExactId(id(SERVER))), alpn());
    connect_and_echo(anon.clone(), addr).await.unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        ServerEvent::Accepted { peer: None, .. }
    ));

    // The same client config after it got its SVID: the server now sees who it is.
    anon_store.update_svid(ca.svid(CLIENT)).unwrap();
    connect_and_echo(anon, addr).await.unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        ServerEvent::Accepted { peer: Some(p), .. } if p == id(CLIENT)
    ));

    // A presented certificate must verify.
    let rogue = TestCa::new("example.org");
    let (_, bad) = client_with(&ca, rogue.svid(CLIENT), SERVER);
    assert!(connect_and_echo(bad, addr).await.is_err());
    match next_event(&mut events).await {
        ServerEvent::Refused { reason } => assert_eq!(reason.as_deref(), Some("untrusted_chain")),
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Anonymous clients still verify the server: a wrong expected ID is refused.
    let wrong = tls::client_config_optional_svid(
        store(None, ca.bundle_set()),
        Arc::new(ExactId(id("spiffe://example.org/elsewhere"))),
        alpn(),
    );
    let err = within(connect(wrong, addr)).await.unwrap_err();
    assert_eq!(
        refusal_from_io(&err).map(|r| r.to_string()).as_deref(),
        Some("unexpected_id")
    );
}

#[tokio::test]
async fn tls12_mutual_auth_works_with_the_same_verifiers() {
    let ca = TestCa::new("example.org");
    let (_, server) = server_with(&ca, Arc::new(MemberOf(ca.trust_domain().clone())));
    let (addr, mut events) = start_server(server).await;

    // A TLS 1.2-only client assembled from the public parts, as a caller with special needs
    // would: the server must fall back to 1.2 and still verify both sides.
    let client_store = store(Some(ca.svid(CLIENT)), ca.bundle_set());
    let mut client = ClientConfig::builder_with_provider(lanyard_svid::verify::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(tls::SpiffeServerVerifier::new(
            client_store.clone(),
            Arc::new(ExactId(id(SERVER))),
            true,
        )))
        .with_client_cert_resolver(Arc::new(tls::CurrentSvid(client_store)));
    client.alpn_protocols = alpn();

    let stream = connect_and_echo(client.clone(), addr).await.unwrap();
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert!(matches!(
        next_event(&mut events).await,
        ServerEvent::Accepted { peer: Some(p), .. } if p == id(CLIENT)
    ));

    // Refusals work the same under 1.2: a client from another root.
    let rogue = TestCa::new("example.org");
    let rogue_store = store(Some(rogue.svid(CLIENT)), ca.bundle_set());
    let mut bad = client;
    bad.client_auth_cert_resolver = Arc::new(tls::CurrentSvid(rogue_store));
    assert!(connect_and_echo(bad, addr).await.is_err());
    match next_event(&mut events).await {
        ServerEvent::Refused { reason } => assert_eq!(reason.as_deref(), Some("untrusted_chain")),
        other => panic!("expected a refusal, got {other:?}"),
    }
}
