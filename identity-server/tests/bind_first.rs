//! `lanyard-server run` binds its listeners before it creates or loads CA material: a port
//! already taken fails the start with an error naming the address and the flag, and leaves
//! the data dir as it was (not created; or, with `--init`, still empty).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

fn run_server(args: &[&str], data_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lanyard-server"))
        .args(["run", "--trust-domain", "example.org", "--data-dir"])
        .arg(data_dir)
        .args(args)
        // No LANYARD_* settings from the environment.
        .env_clear()
        .output()
        .expect("running lanyard-server")
}

fn assert_refused(out: &Output, message: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started: {stderr}");
    assert!(
        stderr.contains(message),
        "expected {message:?} in:\n{stderr}"
    );
}

#[test]
fn a_taken_grpc_port_leaves_a_new_data_dir_uncreated() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let out = run_server(&["--listen", &addr], &data_dir);
    assert_refused(&out, &format!("cannot listen on {addr} (--listen"));
    assert!(!data_dir.exists(), "the data dir was created");
}

#[test]
fn a_taken_health_port_leaves_an_empty_data_dir_empty_even_with_init() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = run_server(
        &["--listen", "127.0.0.1:0", "--health", &addr, "--init"],
        dir.path(),
    );
    assert_refused(&out, &format!("cannot listen on {addr} (--health"));
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "the data dir holds {left:?}");
}

#[test]
fn taken_bundle_endpoint_and_oidc_ports_leave_a_new_data_dir_uncreated() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let out = run_server(
        &["--listen", "127.0.0.1:0", "--bundle-endpoint", &addr],
        &data_dir,
    );
    assert_refused(&out, &format!("cannot listen on {addr} (--bundle-endpoint"));
    assert!(!data_dir.exists(), "the data dir was created");
    let out = run_server(
        &[
            "--listen",
            "127.0.0.1:0",
            "--oidc-listen",
            &addr,
            "--jwt-issuer",
            "https://oidc.example.org",
            "--oidc-insecure-http",
        ],
        &data_dir,
    );
    assert_refused(&out, &format!("cannot listen on {addr} (--oidc-listen"));
    assert!(!data_dir.exists(), "the data dir was created");
}

#[test]
fn a_listen_name_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let out = run_server(&["--listen", "localhost:8081"], &data_dir);
    assert_refused(
        &out,
        "give an IP address and port to listen on, e.g. 0.0.0.0:8081",
    );
    assert!(!data_dir.exists());
}
