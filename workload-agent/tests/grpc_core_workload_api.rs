//! grpc-core clients (py-spiffe and raw Python `grpcio`), unchanged, against the real Workload
//! API on its Unix socket: they send the percent-encoded socket path as `:authority`, which
//! only the socket's `h2_authority` frame layer lets through.
//!
//! Needs the Python clients' venv: run through `./scripts/test`, which sets
//! `LANYARD_TEST_PYTHON`. Without it these tests fail (they never pass silently).

mod workload_api_support;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use lanyard_agent::h2_authority::hpack::is_acceptable_authority;
use lanyard_agent::workload_api::Limits;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use workload_api_support::*;

fn python() -> PathBuf {
    match std::env::var_os("LANYARD_TEST_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "LANYARD_TEST_PYTHON is not set: run the tests with ./scripts/test, which builds \
             the py-spiffe/grpcio venv from tests/python-requirements.txt and sets it"
        ),
    }
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

struct PyClient {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl PyClient {
    fn spawn(script_name: &str, args: &[&str]) -> Self {
        let mut child = Command::new(python())
            .arg(script(script_name))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the Python client");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, lines }
    }

    /// The next JSON line the client prints.
    async fn next(&mut self) -> Value {
        let line = within("a line from the Python client", self.lines.next_line())
            .await
            .unwrap()
            .expect("the Python client ended early (its stderr is above)");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    async fn succeeds(mut self) {
        let status = within("the Python client to exit", self.child.wait())
            .await
            .unwrap();
        assert!(status.success(), "the Python client failed: {status}");
    }
}

async fn setup(ids: &[&str]) -> (Agent, std::sync::Arc<FakeIdentities>) {
    install_ring();
    let pki = Pki::new();
    let ids: Vec<_> = ids.iter().map(|p| pki.id(p)).collect();
    let identities = FakeIdentities::new(pki, &ids);
    let agent = Agent::start(identities.clone(), Limits::default()).await;
    // What grpc-core sends as :authority: the socket path, percent-encoded. Check it is
    // indeed one h2 refuses, or these tests would prove nothing about the layer.
    let encoded = agent.socket.to_str().unwrap().replace('/', "%2F");
    assert!(!is_acceptable_authority(encoded.as_bytes()));
    (agent, identities)
}

fn sock(agent: &Agent) -> &str {
    agent.socket.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_fetches_svids_bundles_and_jwts() {
    let (agent, ids) = setup(&["/web", "/web-admin"]).await;
    // Registered as federating with partner.test: py-spiffe sees that bundle too.
    let partner = ids.pki.federated.trust_domain().clone();
    let federated = ["/web", "/web-admin"].map(|p| federating(&ids.pki.id(p), &[&partner]));
    ids.set_entitlements(federated.to_vec());
    let mut py = PyClient::spawn("py_spiffe_client.py", &[sock(&agent), "fetch", "db"]);

    let svid = py.next().await;
    assert_eq!(svid["step"], "x509_svid");
    assert_eq!(
        svid["spiffe_id"], "spiffe://example.org/web",
        "the default SVID"
    );
    assert_eq!(svid["chain"], 2, "leaf and intermediate");

    let bundles = py.next().await;
    assert_eq!(bundles["step"], "x509_bundles");
    assert_eq!(
        bundles["trust_domains"],
        serde_json::json!(["example.org", "partner.test"])
    );
    assert_eq!(bundles["authorities"], 2);

    let jwt = py.next().await;
    assert_eq!(jwt["step"], "jwt_svid");
    assert_eq!(jwt["spiffe_id"], "spiffe://example.org/web");
    assert_eq!(jwt["audience"], serde_json::json!(["db"]));

    let validated = py.next().await;
    assert_eq!(validated["step"], "validate_jwt_svid");
    assert_eq!(validated["spiffe_id"], "spiffe://example.org/web");

    let local = py.next().await;
    assert_eq!(local["step"], "jwt_local_validation");
    assert_eq!(local["spiffe_id"], "spiffe://example.org/web");
    assert_eq!(
        local["jwt_trust_domains"],
        serde_json::json!(["example.org", "partner.test"])
    );

    assert_eq!(py.next().await["step"], "done");
    py.succeeds().await;
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_sees_no_federated_bundle_its_registration_does_not_name() {
    // The agent holds partner.test's bundle, but these identities do not federate with it.
    let (agent, _ids) = setup(&["/web"]).await;
    let mut py = PyClient::spawn("py_spiffe_client.py", &[sock(&agent), "fetch", "db"]);
    assert_eq!(py.next().await["step"], "x509_svid");
    let bundles = py.next().await;
    assert_eq!(bundles["step"], "x509_bundles");
    assert_eq!(bundles["trust_domains"], serde_json::json!(["example.org"]));
    assert_eq!(py.next().await["step"], "jwt_svid");
    assert_eq!(py.next().await["step"], "validate_jwt_svid");
    let local = py.next().await;
    assert_eq!(local["step"], "jwt_local_validation");
    assert_eq!(
        local["jwt_trust_domains"],
        serde_json::json!(["example.org"])
    );
    assert_eq!(py.next().await["step"], "done");
    py.succeeds().await;
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_follows_a_rotation_on_stream_x509_contexts() {
    let (agent, ids) = setup(&["/web"]).await;
    let web = ids.pki.id("/web");
    let mut py = PyClient::spawn("py_spiffe_client.py", &[sock(&agent), "watch", "2"]);

    let first = py.next().await;
    assert_eq!(first["step"], "x509_context");
    assert_eq!(first["spiffe_id"], "spiffe://example.org/web");
    let serial = |svid: &lanyard_svid::X509Svid| {
        let (_, cert) = x509_parser::parse_x509_certificate(svid.leaf()).unwrap();
        format!("{:x}", cert.tbs_certificate.serial)
    };
    assert_eq!(first["serial"], serial(&ids.svid_of(&web)));

    let rotated = ids.rotate(&web);
    let second = py.next().await;
    assert_eq!(second["step"], "x509_context");
    assert_eq!(
        second["serial"],
        serial(&rotated),
        "the rotated SVID arrives"
    );
    assert_ne!(second["serial"], first["serial"]);
    assert_eq!(py.next().await["step"], "done");
    py.succeeds().await;
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_grpcio_without_the_security_header_gets_invalid_argument() {
    let (agent, _ids) = setup(&["/web"]).await;
    let mut py = PyClient::spawn("grpc_raw_client.py", &[sock(&agent), "without-header"]);
    let result = py.next().await;
    assert_eq!(result["code"], "INVALID_ARGUMENT", "{result}");
    assert!(
        result["details"]
            .as_str()
            .unwrap()
            .contains("workload.spiffe.io"),
        "{result}"
    );
    py.succeeds().await;

    // The same client with the header is served: the refusal above was the header's.
    let mut py = PyClient::spawn("grpc_raw_client.py", &[sock(&agent), "with-header"]);
    let result = py.next().await;
    assert_eq!(result["code"], "OK", "{result}");
    assert_eq!(result["svids"], 1);
    py.succeeds().await;
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_grpcio_with_no_identity_gets_permission_denied() {
    let (agent, _ids) = setup(&[]).await;
    let mut py = PyClient::spawn("grpc_raw_client.py", &[sock(&agent), "with-header"]);
    let result = py.next().await;
    assert_eq!(result["code"], "PERMISSION_DENIED", "{result}");
    assert_eq!(result["details"], "no identity issued");
    py.succeeds().await;
    agent.stop().await.unwrap();
}
