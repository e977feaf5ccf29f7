//! The `lanyard-proxy` binary as scripts use it: `run` with flags or `LANYARD_*` /
//! `SPIFFE_ENDPOINT_SOCKET` environment, the `listening on` lines, readiness, and
//! `lanyard-proxy tap` printing connection lines.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};

const BIN: &str = env!("CARGO_BIN_EXE_lanyard-proxy");
const SERVER: &str = "spiffe://example.org/server";

fn command() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    // The test's own environment must not leak into the child's configuration.
    for (key, _) in std::env::vars() {
        if key.starts_with("LANYARD_") || key == "SPIFFE_ENDPOINT_SOCKET" {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// A running proxy process and its announced listeners.
struct ProxyProcess {
    _child: Child,
    listeners: HashMap<String, SocketAddr>,
}

async fn spawn_and_wait(mut cmd: Command, roles: &[&str]) -> ProxyProcess {
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut listeners = HashMap::new();
    within("the listening lines", async {
        while !roles.iter().all(|r| listeners.contains_key(*r)) {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("the proxy exited before announcing its listeners");
            // `listening on IP:PORT (role)`
            let rest = line
                .strip_prefix("listening on ")
                .unwrap_or_else(|| panic!("{line}"));
            let (addr, role) = rest.split_once(' ').unwrap();
            let role = role.trim_start_matches('(').trim_end_matches(')');
            listeners.insert(role.to_owned(), addr.parse().unwrap());
        }
    })
    .await;
    ProxyProcess {
        _child: child,
        listeners,
    }
}

#[tokio::test]
async fn run_announces_listeners_becomes_ready_and_tap_prints_lines() {
    let ca = Ca::new("example.org");
    let api = FakeWorkloadApi::start().await;
    let app = echo_app(None).await;
    let mut cmd = command();
    cmd.args(["run", "--workload-socket"])
        .arg(format!("unix://{}", api.socket.display()))
        .args(["--inbound", &format!("127.0.0.1:0={}", app.addr)])
        .args(["--admin", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .args(["--detect-timeout", "200ms"]);
    let proxy = spawn_and_wait(cmd, &["inbound", "admin", "metrics"]).await;
    let metrics = proxy.listeners["metrics"];
    let inbound = proxy.listeners["inbound"];

    let (status, _) = http_get(metrics, "/readyz").await;
    assert_eq!(status, 503);
    let issued = ca.issue(SERVER);
    api.push(svid_message(SERVER, &issued, &[ca.root_der()], &[]));
    within("readiness", async {
        while http_get(metrics, "/readyz").await.0 != 200 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;

    // The tap client: connections made before it subscribed are not shown, so keep making
    // one until a line arrives.
    let mut tap = command()
        .args(["tap", "--admin", &proxy.listeners["admin"].to_string()])
        .spawn()
        .unwrap();
    let mut tap_lines = BufReader::new(tap.stdout.take().unwrap()).lines();
    let line = within("a tap line", async {
        loop {
            let mut conn = TcpStream::connect(inbound).await.unwrap();
            assert_eq!(round_trip(&mut conn, b"plain").await, b"plain");
            drop(conn);
            if let Ok(line) =
                tokio::time::timeout(std::time::Duration::from_millis(200), tap_lines.next_line())
                    .await
            {
                return line.unwrap().expect("tap exited");
            }
        }
    })
    .await;
    assert!(line.starts_with("proxy=in src=127.0.0.1:"), "{line}");
    assert_eq!(field(&line, "dst"), app.addr.to_string());
    assert_eq!(field(&line, "tls"), "false");
    assert_eq!(field(&line, "reason"), "no_tls_from_remote");
    assert_eq!(field(&line, "bytes_in"), "5");

    // A meshed connection shows up as tls=true with the client's ID.
    let probe = client_store(
        &ca.issue("spiffe://example.org/probe"),
        &[(&ca.trust_domain, ca.root_der())],
    );
    let mut tls = mtls_connect(probe, inbound, SERVER).await.unwrap();
    assert_eq!(round_trip(&mut tls, b"meshed").await, b"meshed");
    drop(tls);
    let line = next_tap_line(&mut tap_lines).await;
    assert_eq!(field(&line, "tls"), "true", "{line}");
    assert_eq!(field(&line, "peer"), "spiffe://example.org/probe", "{line}");
}

async fn next_tap_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    within("a tap line", lines.next_line())
        .await
        .unwrap()
        .expect("tap exited")
}

#[tokio::test]
async fn run_reads_its_options_from_the_environment() {
    let api = FakeWorkloadApi::start().await;
    let app = echo_app(None).await;
    let mut cmd = command();
    cmd.arg("run")
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix://{}", api.socket.display()),
        )
        .env(
            "LANYARD_INBOUND",
            format!("127.0.0.1:0={0},127.0.0.1:0={0}", app.addr),
        )
        .env(
            "LANYARD_OUTBOUND",
            format!("127.0.0.1:0={},id={SERVER}", app.addr),
        )
        .env("LANYARD_ADMIN", "127.0.0.1:0")
        .env("LANYARD_STRICT", "true");
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut announced = Vec::new();
    within("the listening lines", async {
        while announced.len() < 4 {
            let line = lines.next_line().await.unwrap().expect("exited early");
            let (addr, role) = line
                .strip_prefix("listening on ")
                .and_then(|rest| rest.split_once(' '))
                .unwrap_or_else(|| panic!("{line}"));
            announced.push((role.to_owned(), addr.parse::<SocketAddr>().unwrap()));
        }
    })
    .await;
    let mut roles: Vec<_> = announced.iter().map(|(r, _)| r.as_str()).collect();
    roles.sort();
    assert_eq!(roles, ["(admin)", "(inbound)", "(inbound)", "(outbound)"]);
    // LANYARD_STRICT took effect: plaintext is closed and never reaches the app.
    let inbound = announced.iter().find(|(r, _)| r == "(inbound)").unwrap().1;
    let mut conn = TcpStream::connect(inbound).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut conn, b"plain")
        .await
        .unwrap();
    let (got, _) = read_to_end_or_error(&mut conn).await;
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(app.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    within("the Workload API stream", async {
        while api.streams.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn run_refuses_a_bad_configuration_with_a_message_naming_the_flag() {
    let out = command()
        .args([
            "run",
            "--workload-socket",
            "/nonexistent.sock",
            "--inbound",
            "127.0.0.1:0=127.0.0.1:1",
            "--allow",
            "spiffe://example.org/web",
            "--opaque-port",
            "3306",
        ])
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--opaque-port"), "{stderr}");

    let out = command()
        .args(["run", "--inbound", "127.0.0.1:0=127.0.0.1:1"])
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--workload-socket is required"), "{stderr}");
}

/// Finding 15 of the hardening review: `--admin 0.0.0.0:P` served the unauthenticated tap to
/// the network without a word. Now it is refused, naming the flag that allows it; with that
/// flag (here from its environment variable) the tap is served on every address.
#[tokio::test]
async fn a_non_loopback_admin_address_is_refused_unless_explicitly_allowed() {
    let api = FakeWorkloadApi::start().await;
    let app = echo_app(None).await;
    let run = || {
        let mut cmd = command();
        cmd.args(["run", "--workload-socket"])
            .arg(&api.socket)
            .args(["--inbound", &format!("127.0.0.1:0={}", app.addr)])
            .args(["--admin", "0.0.0.0:0"]);
        cmd
    };
    let out = run().stderr(Stdio::piped()).output().await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--admin: 0.0.0.0:0 is not a loopback address")
            && stderr.contains("--admin-allow-remote"),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening on"),
        "nothing was bound"
    );

    let mut allowed = run();
    allowed.env("LANYARD_ADMIN_ALLOW_REMOTE", "true");
    let proxy = spawn_and_wait(allowed, &["inbound", "admin"]).await;
    let admin = proxy.listeners["admin"];
    assert!(admin.ip().is_unspecified(), "{admin}");
    // The tap answers on the port it announced.
    TcpStream::connect(("127.0.0.1", admin.port()))
        .await
        .unwrap();
}

/// One of this host's own non-loopback addresses: the source address routing picks for a
/// documentation address (no packet is sent).
fn non_loopback_address() -> std::net::IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    socket
        .connect("192.0.2.77:9")
        .expect("this test needs an IPv4 route off the host (a non-loopback address)");
    let ip = socket.local_addr().unwrap().ip();
    assert!(!ip.is_loopback() && !ip.is_unspecified(), "{ip}");
    ip
}

/// On a listener bound to every address (as injected: the kubelet's probes), /healthz and
/// /readyz answer everyone, /metrics only loopback callers unless --metrics-allow-remote.
#[tokio::test]
async fn metrics_answer_loopback_callers_unless_allowed_remote() {
    let api = FakeWorkloadApi::start().await;
    let app = echo_app(None).await;
    let remote_ip = non_loopback_address();
    for allow_remote in [false, true] {
        let mut cmd = command();
        cmd.args(["run", "--workload-socket"])
            .arg(format!("unix://{}", api.socket.display()))
            .args(["--inbound", &format!("127.0.0.1:0={}", app.addr)])
            .args(["--admin", "127.0.0.1:0", "--metrics", "0.0.0.0:0"]);
        if allow_remote {
            cmd.arg("--metrics-allow-remote");
        }
        let proxy = spawn_and_wait(cmd, &["metrics"]).await;
        let port = proxy.listeners["metrics"].port();
        let local = SocketAddr::from(([127, 0, 0, 1], port));
        let remote = SocketAddr::new(remote_ip, port);

        let (status, body) = http_get(local, "/metrics").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("lanyard_proxy_"), "{body}");
        assert_eq!(http_get(remote, "/healthz").await.0, 200);
        assert_eq!(http_get(remote, "/readyz").await.0, 503, "no SVID yet");
        let (status, body) = http_get(remote, "/metrics").await;
        if allow_remote {
            assert_eq!(status, 200, "{body}");
            assert!(body.contains("lanyard_proxy_"), "{body}");
        } else {
            assert_eq!(status, 403, "{body}");
            assert!(body.contains("lanyard.dev/proxy-metrics: expose"), "{body}");
            assert!(!body.contains("lanyard_proxy_"), "{body}");
        }
    }
}

/// validate-redirect without the rules (this host has none for the probe): it fails, naming
/// the missing direction, and refuses to run as the proxy's uid.
#[tokio::test]
async fn validate_redirect_fails_without_the_rules() {
    let out = command()
        .args(["validate-redirect", "--timeout", "500ms"])
        // A port nothing here listens on or redirects to.
        .env("PROXY_OUTBOUND_PORT", free_port().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("lanyard-proxy validate-redirect: the IPv4 outbound redirect is missing"),
        "{stderr}"
    );
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    let out = command()
        .args(["validate-redirect"])
        .env("PROXY_UID", uid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("running as uid {uid}, the proxy's")),
        "{stderr}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
