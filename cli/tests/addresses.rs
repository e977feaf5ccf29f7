//! `lanyard check --server` and `lanyard tap --admin` take `HOST:PORT` with names resolved
//! (`localhost:4191`, `lanyard-server.lanyard.svc:8081`), as the agent's `--server` does, and
//! refuse anything else saying why.

use std::io::Write as _;
use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use lanyard_cli::install::InstallOptions;
use lanyard_cli::install::ca::GeneratedCa;

fn lanyard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(args)
        // No LANYARD_* or SPIFFE_ENDPOINT_SOCKET settings from the environment.
        .env_clear()
        .output()
        .unwrap()
}

/// A listener on 127.0.0.1 that answers one connection with `lines` and closes it: what a
/// proxy's tap does, and (with nothing) a server that drops the TLS handshake. The thread is
/// not joined: if the command never connects, its output says so, not a hang.
fn serve_once(lines: &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let _ = stream.write_all(lines);
        }
    });
    port
}

#[test]
fn tap_follows_a_proxy_named_by_host_name() {
    let port = serve_once(b"proxy=in a\nproxy=out b\n");
    // localhost may resolve to ::1 first, where nothing listens: the next address is tried.
    let out = lanyard(&["tap", "--admin", &format!("localhost:{port}")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"proxy=in a\nproxy=out b\n");
}

#[test]
fn check_reaches_a_server_named_by_host_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = GeneratedCa::generate(
        &InstallOptions::defaults(),
        Duration::from_secs(30 * 86400),
        Duration::from_secs(86400),
        SystemTime::now(),
    )
    .unwrap();
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, ca.root_cert_pem()).unwrap();
    // Accepts the connection and closes it: the check gets as far as the TLS handshake.
    let port = serve_once(b"");
    let out = lanyard(&[
        "check",
        "--server",
        &format!("localhost:{port}"),
        "--trust-bundle",
        bundle.to_str().unwrap(),
        "--socket",
        dir.path().join("no-agent.sock").to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    let line = stdout
        .lines()
        .find(|l| l.contains("server"))
        .unwrap_or_else(|| panic!("no server line in {stdout}"));
    assert!(
        line.starts_with("FAIL") && line.contains(&format!("TLS with localhost:{port} failed")),
        "{line}"
    );
}

#[test]
fn address_flags_refuse_what_is_not_host_port() {
    for (args, message) in [
        (
            &["check", "--server", "lanyard-server.lanyard.svc"][..],
            "\"lanyard-server.lanyard.svc\" is not HOST:PORT: there is no port",
        ),
        (
            &["check", "--server", "::1:8081"][..],
            "an IPv6 address goes in brackets",
        ),
        (
            &["tap", "--admin", "localhost:0"][..],
            "the port \"0\" is not a number from 1 to 65535",
        ),
    ] {
        let out = lanyard(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr.contains(message),
            "{args:?}: expected {message:?} in {stderr}"
        );
        assert!(
            stderr.contains("e.g. lanyard-server.lanyard.svc:8081"),
            "{stderr}"
        );
    }
}
