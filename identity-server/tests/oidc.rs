//! OIDC discovery for JWT-SVIDs against a real in-process server (data-dir mode): the
//! discovery document, the JWK Set verifying a JWT-SVID minted through the server's gRPC API,
//! a JWT key rotation through the admin socket (both keys served, new tokens under the new
//! one, the old one gone when its grace ends, kept across a restart within it), refusals
//! (unknown path, POST), and HTTPS with a test CA.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use lanyard_proto::identity::v1 as wire;
use lanyard_proto::identity::v1::attest_node_request::Method;
use lanyard_server::admin::{self, AdminRequest, AdminResponse};
use lanyard_server::config::RunArgs;
use lanyard_svid::{BundleSet, TrustBundle};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

const ISSUER: &str = "https://oidc.example.org";
const ENTRIES: &str = r#"
[[entries]]
spiffe_id = "spiffe://example.org/web"
selectors = ["unix:uid:1001"]
nodes = ["node-1"]
"#;
/// Every lifetime the server issues: the retired-key grace is this plus 30 s of skew.
const TTL: &str = "4s";
const GRACE: Duration = Duration::from_secs(4 + 30);

/// A test CA and a certificate for `localhost` it signs, as PEM files in `dir`.
struct TestPki {
    ca_pem: String,
    cert_file: PathBuf,
    key_file: PathBuf,
}

fn test_pki(dir: &Path) -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.is_ca = IsCa::ExplicitNoCa;
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (cert_file, key_file) = (dir.join("oidc.crt"), dir.join("oidc.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    lanyard_daemon::private_file::write_private_atomic(&key_file, key.serialize_pem().as_bytes())
        .unwrap();
    TestPki {
        ca_pem: ca_cert.pem(),
        cert_file,
        key_file,
    }
}

/// A server with OIDC discovery on; stops when dropped.
struct OidcServer {
    grpc: SocketAddr,
    oidc: SocketAddr,
    data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), lanyard_server::run::RunError>>,
}

impl Drop for OidcServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

impl OidcServer {
    async fn start(dir: &Path, pki: Option<&TestPki>) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config_path = dir.join("server.toml");
        std::fs::write(&config_path, ENTRIES).unwrap();
        let mut args = RunArgs {
            config: Some(config_path),
            trust_domain: Some(TD.into()),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            data_dir: Some(dir.join("data")),
            x509_ttl: Some(TTL.into()),
            jwt_ttl: Some(TTL.into()),
            node_ttl: Some(TTL.into()),
            jwt_issuer: Some(ISSUER.into()),
            oidc_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..Default::default()
        };
        match pki {
            Some(pki) => {
                args.oidc_cert = Some(pki.cert_file.clone());
                args.oidc_key = Some(pki.key_file.clone());
            }
            None => args.oidc_insecure_http = true,
        }
        let config = args.resolve().expect("valid test config");
        let (tx, rx) = oneshot::channel::<(SocketAddr, SocketAddr)>();
        let seen = std::sync::Mutex::new((None, Some(tx)));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(lanyard_server::run::run(
            config,
            None,
            move |role, addr| {
                let mut seen = seen.lock().unwrap();
                match role {
                    "oidc" => seen.0 = Some(addr),
                    // gRPC is announced last, when everything else serves.
                    "grpc" => {
                        let oidc = seen.0.expect("OIDC announced before gRPC");
                        if let Some(tx) = seen.1.take() {
                            let _ = tx.send((addr, oidc));
                        }
                    }
                    _ => {}
                }
            },
            async move {
                let _ = stopped.await;
            },
        ));
        let (grpc, oidc) = tokio::time::timeout(DEADLINE, rx)
            .await
            .expect("the server listens before the deadline")
            .expect("the server started (see its error)");
        Self {
            grpc,
            oidc,
            data_dir: dir.join("data"),
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .expect("the server stops")
            .expect("not aborted")
            .expect("stops cleanly");
    }

    async fn admin(&self, request: AdminRequest) -> AdminResponse {
        admin::call(&self.data_dir, &request).await.unwrap()
    }

    /// Attests an agent for node-1 and mints a JWT-SVID of the web entry for `audience`.
    async fn mint(&self, audience: &str) -> String {
        let roots = match self.admin(AdminRequest::BundleShow).await {
            AdminResponse::Bundle { pem } => pem,
            other => panic!("no bundle: {other:?}"),
        };
        let caller = Caller::new(BundleSet::from(TrustBundle::from_x509_authorities(
            td(),
            lanyard_svid::bundle::certificates_from_pem(roots.as_bytes()).unwrap(),
        )));
        let token = match self
            .admin(AdminRequest::TokenGenerate {
                node: Some("node-1".into()),
                ttl_secs: 600,
            })
            .await
        {
            AdminResponse::Token { token, .. } => token,
            other => panic!("no token: {other:?}"),
        };
        caller
            .attest(self.grpc, Method::JoinToken(token))
            .await
            .unwrap();
        caller
            .client(self.grpc)
            .await
            .mint_jwtsvid(wire::MintJwtSvidRequest {
                workload: Some(wire::Workload {
                    kind: Some(wire::workload::Kind::EntrySpiffeId(
                        "spiffe://example.org/web".into(),
                    )),
                    entry_pod: None,
                }),
                audience: vec![audience.into()],
            })
            .await
            .unwrap()
            .into_inner()
            .token
    }
}

/// An HTTP answer: status code, lower-case header lines, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.eq_ignore_ascii_case(name)).then(|| value.trim())
        })
    }
}

/// One HTTP/1.1 request over `stream`, `Connection: close`.
async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    method: &str,
    path: &str,
) -> Answer {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut raw))
        .await
        .expect("an answer before the deadline")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete answer");
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    Answer {
        status: status_line.split(' ').nth(1).unwrap().parse().unwrap(),
        headers: headers.to_owned(),
        body: body.to_owned(),
    }
}

async fn http(addr: SocketAddr, method: &str, path: &str) -> Answer {
    exchange(TcpStream::connect(addr).await.unwrap(), method, path).await
}

async fn https(addr: SocketAddr, ca_pem: &str, method: &str, path: &str) -> Answer {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("the OIDC listener's certificate verifies under the test CA");
    exchange(tls, method, path).await
}

/// The `kid` of a JWT's header and its claims.
fn decode(token: &str) -> (String, Value) {
    let mut parts = token.split('.');
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap()).unwrap();
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap()).unwrap();
    (header["kid"].as_str().unwrap().to_owned(), claims)
}

fn kids(keys: &Value) -> Vec<String> {
    let mut kids: Vec<_> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    kids.sort();
    kids
}

/// Verifies `token` for `audience` with the keys of the OIDC JWK Set `keys`. The SPIFFE
/// parser reads `sig` keys as an unknown use, so `use` and `alg` are dropped first (the key
/// material is what is checked here; the Python e2e test verifies with a real OIDC client).
fn verify(token: &str, audience: &str, keys: &Value) -> Result<String, String> {
    let mut plain = keys.clone();
    for key in plain["keys"].as_array_mut().unwrap() {
        let key = key.as_object_mut().unwrap();
        assert_eq!(key.remove("use"), Some("sig".into()));
        assert_eq!(key.remove("alg"), Some("ES256".into()));
    }
    let bundle = TrustBundle::from_jwt_jwks(td(), plain.to_string().as_bytes()).unwrap();
    lanyard_svid::jwt::validate(token, audience, &BundleSet::from(bundle), SystemTime::now())
        .map(|v| v.spiffe_id.to_string())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn discovery_serves_the_keys_that_verify_jwt_svids_and_follows_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let server = OidcServer::start(dir.path(), None).await;

    let discovery = http(server.oidc, "GET", "/.well-known/openid-configuration").await;
    assert_eq!(discovery.status, 200, "{discovery:?}");
    assert_eq!(discovery.header("content-type"), Some("application/json"));
    assert_eq!(
        discovery.header("cache-control"),
        Some("public, max-age=3600")
    );
    assert_eq!(
        discovery.json(),
        serde_json::json!({
            "issuer": ISSUER,
            "jwks_uri": format!("{ISSUER}/keys"),
            "authorization_endpoint": "",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    );

    let token = server.mint("db").await;
    let (first_kid, claims) = decode(&token);
    assert_eq!(claims["iss"], ISSUER, "the iss claim is the issuer");
    assert_eq!(claims["sub"], "spiffe://example.org/web");
    let keys = http(server.oidc, "GET", "/keys").await;
    assert_eq!(keys.status, 200);
    assert_eq!(keys.header("content-type"), Some("application/json"));
    assert_eq!(keys.header("cache-control"), Some("public, max-age=60"));
    let keys = keys.json();
    assert_eq!(kids(&keys), std::slice::from_ref(&first_kid));
    let key = &keys["keys"][0];
    let mut members: Vec<_> = key.as_object().unwrap().keys().cloned().collect();
    members.sort();
    assert_eq!(members, ["alg", "crv", "kid", "kty", "use", "x", "y"]);
    assert_eq!((&key["kty"], &key["crv"]), (&"EC".into(), &"P-256".into()));
    assert_eq!(
        verify(&token, "db", &keys).unwrap(),
        "spiffe://example.org/web"
    );
    assert!(verify(&token, "other", &keys).is_err(), "audience checked");

    // HEAD: the headers, no body.
    let head = http(server.oidc, "HEAD", "/keys").await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "{head:?}");
    assert!(head.header("content-length").is_some_and(|l| l != "0"));

    // A rotation through the admin socket: both keys at once, new tokens under the new one.
    let rotated = server.admin(AdminRequest::CaRotateJwtKey).await;
    let AdminResponse::JwtKeyRotated {
        kid: new_kid,
        previous_kid,
        previous_published_until_unix_secs,
    } = rotated
    else {
        panic!("not rotated: {rotated:?}")
    };
    let rotated_at = SystemTime::now();
    assert_eq!(previous_kid, first_kid);
    let until = std::time::UNIX_EPOCH + Duration::from_secs(previous_published_until_unix_secs);
    assert!(
        until >= rotated_at + GRACE - Duration::from_secs(2)
            && until <= rotated_at + GRACE + Duration::from_secs(1)
    );
    let keys = http(server.oidc, "GET", "/keys").await.json();
    let mut both = vec![first_kid.clone(), new_kid.clone()];
    both.sort();
    assert_eq!(kids(&keys), both, "the rotation shows at once");
    let new_token = server.mint("db").await;
    assert_eq!(decode(&new_token).0, new_kid);
    verify(&new_token, "db", &keys).unwrap();
    verify(&token, "db", &keys).expect("the old key's tokens still verify");

    // A restart within the grace keeps publishing the old key.
    server.stop().await;
    let server = OidcServer::start(dir.path(), None).await;
    let keys = http(server.oidc, "GET", "/keys").await.json();
    assert_eq!(kids(&keys), both, "kept across a restart");

    // When the grace ends, the old key goes (the tokens it signed expired long before).
    let gone = lanyard_e2e::wait::eventually_within(
        "the retired key leaves /keys",
        GRACE + DEADLINE,
        || async {
            let keys = http(server.oidc, "GET", "/keys").await.json();
            (kids(&keys) == [new_kid.clone()]).then_some(keys)
        },
    )
    .await;
    assert!(
        SystemTime::now() >= until,
        "not before its time: the grace ends at {until:?}"
    );
    assert!(verify(&token, "db", &gone).is_err());
    server.stop().await;
}

#[tokio::test]
async fn only_the_two_documents_and_only_get_and_head() {
    let dir = tempfile::tempdir().unwrap();
    let server = OidcServer::start(dir.path(), None).await;
    for path in [
        "/",
        "/keys/",
        "/.well-known/jwks.json",
        "/KEYS",
        "/keys/extra",
    ] {
        let answer = http(server.oidc, "GET", path).await;
        assert_eq!(answer.status, 404, "{path}: {answer:?}");
    }
    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        for path in ["/keys", "/.well-known/openid-configuration"] {
            let answer = http(server.oidc, method, path).await;
            assert_eq!(answer.status, 405, "{method} {path}: {answer:?}");
            assert_eq!(answer.header("allow"), Some("GET, HEAD"));
        }
    }
    // A request head beyond the bound is refused, and the listener keeps serving.
    let mut stream = TcpStream::connect(server.oidc).await.unwrap();
    let huge = format!(
        "GET /keys HTTP/1.1\r\nhost: localhost\r\nx-filler: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = stream.write_all(huge.as_bytes()).await;
    let mut answer = String::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_string(&mut answer)).await;
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(http(server.oidc, "GET", "/keys").await.status, 200);
}

#[tokio::test]
async fn https_with_a_test_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = test_pki(dir.path());
    let server = OidcServer::start(dir.path(), Some(&pki)).await;
    let discovery = https(
        server.oidc,
        &pki.ca_pem,
        "GET",
        "/.well-known/openid-configuration",
    )
    .await;
    assert_eq!(discovery.status, 200);
    assert_eq!(discovery.json()["jwks_uri"], format!("{ISSUER}/keys"));
    let keys = https(server.oidc, &pki.ca_pem, "GET", "/keys").await;
    assert_eq!(keys.status, 200);
    assert_eq!(kids(&keys.json()).len(), 1);
    // Plain HTTP to the HTTPS listener gets no document.
    let mut plain = TcpStream::connect(server.oidc).await.unwrap();
    plain
        .write_all(b"GET /keys HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, plain.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).contains("\"keys\""));
}

#[tokio::test]
async fn a_key_file_readable_by_others_refuses_to_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let pki = test_pki(dir.path());
    std::fs::set_permissions(&pki.key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(dir.path().join("server.toml"), ENTRIES).unwrap();
    let config = RunArgs {
        trust_domain: Some(TD.into()),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(dir.path().join("data")),
        jwt_issuer: Some(ISSUER.into()),
        oidc_listen: Some("127.0.0.1:0".parse().unwrap()),
        oidc_cert: Some(pki.cert_file.clone()),
        oidc_key: Some(pki.key_file.clone()),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    let err = tokio::time::timeout(
        DEADLINE,
        lanyard_server::run::run(config, None, |_, _| {}, std::future::pending()),
    )
    .await
    .expect("refused at once")
    .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("chmod 600") && message.contains("oidc.key"),
        "{message}"
    );
}
