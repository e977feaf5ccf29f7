//! The README's run command and the operator tools over real processes: `lanyard-local
//! --check` (what `./deploy/local/run` starts) shows mTLS with the right peer IDs on both proxies
//! and plaintext, its first request already through (no start-up race); `lanyard check` passes
//! on a working node and names what fails otherwise. The local stack's Ctrl-C is tested in
//! local_stack_shutdown.rs.

use std::process::Command;

use lanyard_e2e::binary;
use lanyard_e2e::process::Process;
use lanyard_e2e::stack::{Agent, Server};

#[test]
fn the_local_stack_shows_mtls_and_plaintext() {
    let mut local = Process::start(
        &binary("lanyard-local"),
        &["--check", "--interval", "1"],
        &[],
    );
    let status = local.wait();
    let out = local.stdout_lines().join("\n");
    assert!(
        status.success(),
        "lanyard-local --check failed:\n{out}\n{}",
        local.stderr_text()
    );
    for wanted in [
        "tls=true peer=spiffe://example.org/demo/web",
        "tls=true peer=spiffe://example.org/demo/client",
        "tls=false reason=no_tls_from_remote",
        "api fetch x509 --socket",
        "check passed",
    ] {
        assert!(out.contains(wanted), "missing {wanted:?} in:\n{out}");
    }
    // The first request waits until both proxies hold their SVIDs: none loses that race.
    for unwanted in ["request failed", "reason=no_svid"] {
        assert!(!out.contains(unwanted), "{unwanted:?} in:\n{out}");
    }
}

fn lanyard(args: &[&str]) -> (bool, String) {
    let output = Command::new(binary("lanyard"))
        .args(args)
        .output()
        .expect("runs lanyard");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn lanyard_check_passes_on_a_working_node_and_names_failures() {
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let server = Server::start(
        dir.path(),
        &format!(
            "[[entries]]\nspiffe_id = \"spiffe://example.org/me\"\nselectors = [\"unix:uid:{uid}\"]\nnodes = [\"*\"]\n"
        ),
    );
    let agent = Agent::start(dir.path(), &server, "node-1");
    let socket = agent.socket.to_str().unwrap();
    let bundle = dir.path().join("bundle.pem");
    let addr = server.addr.to_string();
    let args = [
        "check",
        "--socket",
        socket,
        "--server",
        &addr,
        "--trust-bundle",
        bundle.to_str().unwrap(),
    ];

    // The agent may still be minting: `check` is a point-in-time look, so retry briefly.
    let deadline = std::time::Instant::now() + lanyard_e2e::DEADLINE;
    let (ok, out) = loop {
        let (ok, out) = lanyard(&args);
        if ok || std::time::Instant::now() > deadline {
            break (ok, out);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(ok, "{out}");
    assert!(
        out.contains("ok    server") && out.contains("spiffe://example.org/lanyard/server"),
        "{out}"
    );
    assert!(out.contains("ok    socket"), "{out}");
    assert!(
        out.contains("ok    svid") && out.contains("spiffe://example.org/me valid for"),
        "{out}"
    );

    // An SVID that must outlive its 1 h lifetime fails the svid check only.
    let mut long = args.to_vec();
    long.extend(["--min-validity", "2h"]);
    let (ok, out) = lanyard(&long);
    assert!(
        !ok && out.contains("FAIL  svid") && out.contains("ok    server"),
        "{out}"
    );

    // Roots that are not the server's: the server check fails.
    let other = tempfile::tempdir().unwrap();
    let other_server = Server::start(other.path(), "");
    let other_bundle = other.path().join("bundle.pem");
    other_server.write_bundle(&other_bundle);
    let (ok, out) = lanyard(&[
        "check",
        "--socket",
        socket,
        "--server",
        &addr,
        "--trust-bundle",
        other_bundle.to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("FAIL  server"), "{out}");

    // No agent behind the socket.
    let (ok, out) = lanyard(&[
        "check",
        "--socket",
        dir.path().join("nothing.sock").to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("FAIL  socket"), "{out}");
}

#[test]
fn an_agent_attested_as_another_node_refuses_to_serve() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "");
    let bundle = dir.path().join("bundle.pem");
    server.write_bundle(&bundle);
    let token = server.join_token("node-1");
    let addr = server.addr.to_string();
    let socket = dir.path().join("agent.sock");
    let mut agent = Process::start(
        &binary("lanyard-agent"),
        &[
            "run",
            "--server",
            &addr,
            "--trust-bundle",
            bundle.to_str().unwrap(),
            "--join-token",
            &token,
            "--socket",
            socket.to_str().unwrap(),
            "--node-name",
            "node-2",
        ],
        &[],
    );
    let status = agent.wait();
    assert!(!status.success());
    let stderr = agent.stderr_text();
    assert!(
        stderr.contains("attested this agent as node \"node-1\", but --node-name says \"node-2\""),
        "{stderr}"
    );
    assert!(!socket.exists(), "nothing was served");
}
