//! py-spiffe (Python, on grpc-core) and a raw Python `grpcio` client, unchanged, against a
//! real `lanyard-agent` process attested to a real `lanyard-server` process. grpc-core sends
//! the percent-encoded socket path as `:authority`; the agent's socket accepts it (see
//! `lanyard_agent::h2_authority`).
//!
//! Needs the Python clients' venv: run through `./scripts/test`, which sets
//! `LANYARD_TEST_PYTHON`. Without it these tests fail (they never pass silently).

use std::path::Path;

use lanyard_e2e::client::{RunAs, api_until};
use lanyard_e2e::python::{PyClient, field, script};
use lanyard_e2e::stack::{Agent, Server, TRUST_DOMAIN};

/// `nobody`: the only uid with an entry in the no-identity test.
const NOBODY: u32 = 65_534;

fn my_uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

fn entry(path: &str, uid: u32, ttl: Option<&str>) -> String {
    let ttl = ttl
        .map(|t| format!("x509_ttl = \"{t}\"\n"))
        .unwrap_or_default();
    format!(
        "[[entries]]\nspiffe_id = \"spiffe://{TRUST_DOMAIN}{path}\"\nselectors = [\"unix:uid:{uid}\"]\nnodes = [\"*\"]\n{ttl}"
    )
}

fn start(dir: &Path, config: &str) -> (Server, Agent) {
    let server = Server::start(dir, config);
    let agent = Agent::start(dir, &server, "node-1");
    (server, agent)
}

#[test]
fn py_spiffe_fetches_validates_and_follows_a_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, agent) = start(tmp.path(), &entry("/py", my_uid(), Some("4s")));
    let socket = agent.socket.to_str().unwrap();
    // Wait until the agent has minted our SVID (the CLI retries; py-spiffe's fetch does not).
    api_until(&agent.socket, &["fetch", "x509"], RunAs::Me, |o| o.success);
    let want = format!("spiffe://{TRUST_DOMAIN}/py");

    let py = PyClient::spawn(&script("py_spiffe_client.py"), &[socket, "fetch", "db"]);
    let svid = py.next();
    assert_eq!(field(&svid, "step"), "x509_svid", "{svid}");
    assert_eq!(field(&svid, "spiffe_id"), want);
    let bundles = py.next();
    assert_eq!(field(&bundles, "step"), "x509_bundles", "{bundles}");
    assert_eq!(field(&bundles, "trust_domains"), "[\"example.org\"]");
    let jwt = py.next();
    assert_eq!(field(&jwt, "step"), "jwt_svid", "{jwt}");
    assert_eq!(field(&jwt, "spiffe_id"), want);
    assert_eq!(field(&jwt, "audience"), "[\"db\"]");
    let validated = py.next();
    assert_eq!(
        field(&validated, "step"),
        "validate_jwt_svid",
        "{validated}"
    );
    assert_eq!(field(&validated, "spiffe_id"), want);
    let local = py.next();
    assert_eq!(field(&local, "step"), "jwt_local_validation", "{local}");
    assert_eq!(field(&local, "spiffe_id"), want);
    assert_eq!(field(&py.next(), "step"), "done");
    py.succeeds();

    // The 4 s SVID is renewed at about half its life: the open stream sees a new one.
    let py = PyClient::spawn(&script("py_spiffe_client.py"), &[socket, "watch", "2"]);
    let first = py.next();
    assert_eq!(field(&first, "step"), "x509_context", "{first}");
    assert_eq!(field(&first, "spiffe_id"), want);
    let second = py.next();
    assert_eq!(field(&second, "step"), "x509_context", "{second}");
    assert_eq!(field(&second, "spiffe_id"), want);
    assert_ne!(field(&first, "serial"), field(&second, "serial"), "rotated");
    assert_eq!(field(&py.next(), "step"), "done");
    py.succeeds();

    // Raw grpcio without the security header: refused by the Workload API itself.
    let py = PyClient::spawn(&script("grpc_raw_client.py"), &[socket, "without-header"]);
    let result = py.next();
    assert_eq!(field(&result, "code"), "INVALID_ARGUMENT", "{result}");
    assert!(field(&result, "details").contains("workload.spiffe.io"));
    py.succeeds();
}

#[test]
fn raw_grpcio_without_an_identity_is_permission_denied() {
    let tmp = tempfile::tempdir().unwrap();
    // Only `nobody` has an entry: this test process has none.
    let (_server, agent) = start(tmp.path(), &entry("/nobody", NOBODY, None));
    let socket = agent.socket.to_str().unwrap();
    let py = PyClient::spawn(&script("grpc_raw_client.py"), &[socket, "with-header"]);
    let result = py.next();
    assert_eq!(field(&result, "code"), "PERMISSION_DENIED", "{result}");
    assert_eq!(field(&result, "details"), "no identity issued");
    py.succeeds();
}
