//! A standard OIDC client validates JWT-SVIDs from Lanyard's discovery URL alone: real
//! `lanyard-server` (data-dir mode, `--jwt-issuer`, `--oidc-listen` over HTTPS with a test CA)
//! and `lanyard-agent` processes; JWT-SVIDs fetched through the agent's Workload API
//! (`lanyard-agent api fetch jwt`); PyJWT's `PyJWKClient` (tests/e2e/python/oidc_client.py)
//! reading `/.well-known/openid-configuration`, then `jwks_uri`, checking signature, `aud` and
//! `iss` — before and after `lanyard-server ca rotate-jwt-key`, and refusing a token of the
//! retired key once its grace has ended (kid not found).
//!
//! Needs the Python venv (`LANYARD_TEST_PYTHON`) and `openssl` for the test CA.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lanyard_e2e::client::{RunAs, api_until};
use lanyard_e2e::process::run_ok;
use lanyard_e2e::python::{PyClient, field};
use lanyard_e2e::stack::{Agent, Server, TRUST_DOMAIN};
use lanyard_e2e::{DEADLINE, binary};

/// Every lifetime the server issues (JWT, X.509, node): the retired-key grace is this plus
/// 30 s of clock skew.
const TTL: &str = "15s";
const GRACE: Duration = Duration::from_secs(15 + 30);

fn my_uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

/// A test CA and a certificate for `localhost` (key mode 0600), made with `openssl`.
fn test_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=lanyard-oidc-test-ca",
        "-days",
        "1",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(&ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "oidc.key",
        "-out",
        "oidc.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(&csr);
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "oidc.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
        "-out",
        "oidc.crt",
    ]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("oidc.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    (
        dir.join("ca.crt"),
        dir.join("oidc.crt"),
        dir.join("oidc.key"),
    )
}

/// A TCP forwarder on a port of the kernel's choosing, as an ingress in front of the OIDC
/// listener: the issuer URL names the forwarder's port (fixed before the server starts), and
/// the forwarder relays every connection to the listener once [`Ingress::route_to`] names it.
struct Ingress {
    port: u16,
    target: std::sync::Arc<std::sync::OnceLock<std::net::SocketAddr>>,
}

impl Ingress {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = std::sync::Arc::new(std::sync::OnceLock::<std::net::SocketAddr>::new());
        let route = target.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Some(addr) = route.get().copied() else {
                    continue; // not routed yet: the connection is closed
                };
                std::thread::spawn(move || {
                    let Ok(upstream) = std::net::TcpStream::connect(addr) else {
                        return;
                    };
                    let (mut c_read, mut u_write) =
                        (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                    let up = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut c_read, &mut u_write);
                        let _ = u_write.shutdown(std::net::Shutdown::Write);
                    });
                    let (mut u_read, mut c_write) = (upstream, client);
                    let _ = std::io::copy(&mut u_read, &mut c_write);
                    let _ = c_write.shutdown(std::net::Shutdown::Write);
                    let _ = up.join();
                });
            }
        });
        Self { port, target }
    }

    fn route_to(&self, addr: std::net::SocketAddr) {
        self.target.set(addr).expect("routed once");
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/oidc_client.py")
}

/// One run of the relying party; its JSON line.
fn relying_party(discovery: &str, ca: &Path, args: &[&str]) -> String {
    let mut all = vec![discovery, ca.to_str().unwrap()];
    all.extend_from_slice(args);
    let py = PyClient::spawn(&script(), &all);
    let line = py.next();
    py.succeeds();
    line
}

/// A JWT-SVID for `audience` through the agent's Workload API.
fn fetch_jwt(agent: &Agent, audience: &str) -> String {
    let out = api_until(
        &agent.socket,
        &["fetch", "jwt", "--audience", audience],
        RunAs::Me,
        |o| o.success,
    );
    out.stdout.trim().to_owned()
}

#[test]
fn pyjwt_validates_jwt_svids_from_the_discovery_url_across_a_jwt_key_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(tmp.path());
    let ingress = Ingress::start();
    let issuer = format!("https://localhost:{}", ingress.port);
    let discovery = format!("{issuer}/.well-known/openid-configuration");
    let entries = format!(
        "[[entries]]\nspiffe_id = \"spiffe://{TRUST_DOMAIN}/oidc\"\nselectors = [\"unix:uid:{}\"]\nnodes = [\"*\"]\n",
        my_uid()
    );
    let server = Server::start_with(
        tmp.path(),
        &entries,
        &[
            "--jwt-issuer",
            &issuer,
            "--oidc-listen",
            "127.0.0.1:0",
            "--oidc-cert",
            cert.to_str().unwrap(),
            "--oidc-key",
            key.to_str().unwrap(),
            "--jwt-ttl",
            TTL,
            "--x509-ttl",
            TTL,
            "--node-ttl",
            TTL,
        ],
    );
    ingress.route_to(server.process.listener("oidc"));
    let agent = Agent::start(tmp.path(), &server, "node-1");
    let want = format!("spiffe://{TRUST_DOMAIN}/oidc");

    // Before any rotation.
    let first = fetch_jwt(&agent, "sts.amazonaws.com");
    let seen = relying_party(&discovery, &ca, &["validate", "sts.amazonaws.com", &first]);
    assert_eq!(field(&seen, "step"), "validated", "{seen}");
    assert_eq!(field(&seen, "sub"), want);
    assert_eq!(field(&seen, "iss"), issuer);
    assert_eq!(field(&seen, "alg"), "ES256");
    let first_kid = field(&seen, "kid");
    // The audience and the issuer are checked.
    let wrong = relying_party(&discovery, &ca, &["validate", "vault", &first]);
    assert_eq!(
        (field(&wrong, "step"), field(&wrong, "kind")),
        ("refused".into(), "token".into()),
        "{wrong}"
    );

    // The rotation, through the CLI and the admin socket.
    let said = run_ok(
        &binary("lanyard-server"),
        &[
            "ca",
            "rotate-jwt-key",
            "--data-dir",
            server.data_dir.to_str().unwrap(),
        ],
    );
    let rotated_at = Instant::now();
    assert!(said.contains(&first_kid), "{said}");

    // The old key is still served (its tokens live), the new one signs new tokens (another
    // audience: the agent reuses a cached token for the same one).
    let old = relying_party(&discovery, &ca, &["key", &first_kid]);
    assert_eq!(field(&old, "step"), "key_found", "{old}");
    let second = fetch_jwt(&agent, "sts.googleapis.com");
    let seen = relying_party(
        &discovery,
        &ca,
        &["validate", "sts.googleapis.com", &second],
    );
    assert_eq!(field(&seen, "step"), "validated", "{seen}");
    assert_eq!(field(&seen, "sub"), want);
    let second_kid = field(&seen, "kid");
    assert_ne!(
        second_kid, first_kid,
        "new tokens are signed with the new key"
    );
    assert!(said.contains(&second_kid), "{said}");

    // When the grace ends the old key leaves the JWK Set; a token it signed is refused for
    // that reason (no key of its kid), not only as expired.
    let deadline = rotated_at + GRACE + DEADLINE;
    loop {
        let looked = relying_party(&discovery, &ca, &["key", &first_kid]);
        if field(&looked, "step") == "refused" {
            assert_eq!(field(&looked, "kind"), "key", "{looked}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the retired key is still served: {looked}"
        );
        // Polling a separate process at a human pace, not synchronising on time.
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        rotated_at.elapsed() >= GRACE - Duration::from_secs(2),
        "the retired key left after {:?}, before its grace",
        rotated_at.elapsed()
    );
    let refused = relying_party(&discovery, &ca, &["validate", "sts.amazonaws.com", &first]);
    assert_eq!(field(&refused, "step"), "refused", "{refused}");
    assert_eq!(field(&refused, "kind"), "key", "{refused}");
    assert!(
        field(&refused, "error").contains("Unable to find a signing key"),
        "{refused}"
    );
    // The current key still validates a fresh token.
    let third = fetch_jwt(&agent, "vault");
    let seen = relying_party(&discovery, &ca, &["validate", "vault", &third]);
    assert_eq!(field(&seen, "step"), "validated", "{seen}");
    assert_eq!(field(&seen, "kid"), second_kid);
}
