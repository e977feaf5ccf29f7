//! The attacker side of `socket_body_flood.rs` and `socket_connection_flood.rs`, run as a
//! separate process (the test binary re-executed, optionally as another uid through
//! `setpriv`), so that the test process's memory is the agent's alone.
//!
//! The test that re-executes the binary runs only the test named [`ENTRY`] with
//! `LANYARD_ATTACK` set; that test does nothing in a normal run. The attacker prints
//! `ATTACK <what> <numbers...>` lines on stdout and stops when its stdin closes.
#![allow(dead_code)]

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The name of the test that is the attacker's entry point.
pub const ENTRY: &str = "attacker_process_entry";

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

/// The attack to run.
pub enum Attack {
    /// `connections` gRPC connections, each with 64 calls at a time of FetchJWTSVID without
    /// the `workload.spiffe.io` header, each carrying a `body_bytes` request.
    Bodies {
        connections: usize,
        body_bytes: usize,
    },
    /// `connections` raw HTTP/2 connections opened one after the other and held open, idle.
    Connections { connections: usize },
}

/// A running attacker process.
pub struct Attacker {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Attacker {
    /// Re-executes this test binary as the attacker against `socket`, as `uid` if given.
    pub fn spawn(socket: &Path, attack: Attack, uid: Option<u32>) -> Self {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = match uid {
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.args([
                    format!("--reuid={uid}"),
                    format!("--regid={uid}"),
                    "--clear-groups".to_owned(),
                    "--".to_owned(),
                ])
                .arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args(["--exact", ENTRY, "--nocapture", "--test-threads=1"]);
        let (mode, connections, body) = match attack {
            Attack::Bodies {
                connections,
                body_bytes,
            } => ("bodies", connections, body_bytes),
            Attack::Connections { connections } => ("connections", connections, 0),
        };
        cmd.env("LANYARD_ATTACK", mode)
            .env("LANYARD_ATTACK_SOCKET", socket)
            .env("LANYARD_ATTACK_CONNECTIONS", connections.to_string())
            .env("LANYARD_ATTACK_BODY", body.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("re-execute the test binary");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The harness prints `test NAME ... ` without a newline before ours.
                if let Some(at) = line.find("ATTACK ") {
                    let _ = tx.send(line[at + "ATTACK ".len()..].to_owned());
                }
            }
        });
        Self { child, lines }
    }

    /// The next `ATTACK` line, within `deadline`.
    pub fn next_line(&self, deadline: Duration) -> String {
        self.lines
            .recv_timeout(deadline)
            .expect("the attacker reports within the deadline")
    }

    /// Closes its stdin (it stops) and returns its last report.
    pub fn stop(mut self, deadline: Duration) -> String {
        drop(self.child.stdin.take());
        let line = self.next_line(deadline);
        let _ = self.child.wait();
        line
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The attacker's entry point: does nothing unless `LANYARD_ATTACK` is set.
pub fn run_if_asked() {
    let Ok(mode) = std::env::var("LANYARD_ATTACK") else {
        return;
    };
    let socket = PathBuf::from(std::env::var("LANYARD_ATTACK_SOCKET").unwrap());
    let number = |name: &str| -> usize { std::env::var(name).unwrap().parse().unwrap() };
    let connections = number("LANYARD_ATTACK_CONNECTIONS");
    let body = number("LANYARD_ATTACK_BODY");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        match mode.as_str() {
            "bodies" => bodies(&socket, connections, body).await,
            "connections" => hold_connections(&socket, connections).await,
            other => panic!("unknown attack {other}"),
        }
    });
}

/// Resolves when stdin closes.
async fn stdin_closed() {
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin()
            .lock()
            .read_line(&mut sink)
            .is_ok_and(|n| n > 0)
        {}
    })
    .await;
}

async fn bodies(socket: &Path, connections: usize, body: usize) {
    use lanyard_proto::workload::JwtsvidRequest;
    use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

    let stop = Arc::new(AtomicBool::new(false));
    let (calls, refused_header, other) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let audience = "a".repeat(body);
    // All connections first, then the calls (connecting under the flood would be slow).
    let mut clients = Vec::new();
    for _ in 0..connections {
        let channel = lanyard_client::channel::connect(socket).await.unwrap();
        clients.push(SpiffeWorkloadApiClient::new(channel).max_encoding_message_size(usize::MAX));
    }
    let mut tasks = Vec::new();
    for client in clients {
        for _ in 0..64 {
            let (mut client, audience, stop) = (client.clone(), audience.clone(), stop.clone());
            let (calls, refused_header, other) =
                (calls.clone(), refused_header.clone(), other.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    // No `workload.spiffe.io` header: refused by admission, before any decoding.
                    let request = tonic::Request::new(JwtsvidRequest {
                        audience: vec![audience.clone()],
                        spiffe_id: String::new(),
                    });
                    let result = client.fetch_jwtsvid(request).await;
                    calls.fetch_add(1, Ordering::Relaxed);
                    match result {
                        Err(s) if s.code() == tonic::Code::InvalidArgument => {
                            refused_header.fetch_add(1, Ordering::Relaxed)
                        }
                        _ => other.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
    }
    println!("ATTACK started {connections}");
    stdin_closed().await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    println!(
        "ATTACK done {} {} {}",
        calls.load(Ordering::Relaxed),
        refused_header.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed)
    );
}

async fn hold_connections(socket: &Path, connections: usize) {
    let mut held = Vec::new();
    let mut closed = 0usize;
    for _ in 0..connections {
        let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
        let _ = stream.write_all(PREFACE).await;
        let _ = stream.write_all(&SETTINGS).await;
        let mut buf = [0u8; 64];
        // Held: the agent answers with its SETTINGS. Over budget: closed at once.
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => held.push(stream),
            _ => closed += 1,
        }
    }
    println!("ATTACK held {} {closed}", held.len());
    stdin_closed().await;
    // How many of the held ones the agent has closed meanwhile (none unless idle).
    let mut still = 0usize;
    for stream in &mut held {
        let mut buf = [0u8; 256];
        let open = loop {
            match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await {
                Err(_) => break true,
                Ok(Ok(n)) if n > 0 => continue,
                Ok(_) => break false,
            }
        };
        still += usize::from(open);
    }
    println!("ATTACK done {still}");
}

/// The resident set size of this process, in bytes.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}
