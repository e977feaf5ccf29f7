//! Clients of a running agent as separate processes or plain sockets: the
//! `lanyard-agent api` CLI run as this user, as another user (`setpriv`) or from inside a
//! cgroup, and a minimal HTTP GET for the health listener's `/metrics`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{DEADLINE, binary};

/// Who runs the client process.
#[derive(Debug, Clone, Copy)]
pub enum RunAs<'a> {
    /// This test's own user, in this test's cgroups.
    Me,
    /// Another uid and gid, supplementary groups cleared (`setpriv`).
    User { uid: u32, gid: u32 },
    /// This user, moved into the cgroup directory given (its `cgroup.procs`) before `exec`.
    InCgroup(&'a Path),
}

/// What a finished client process said.
#[derive(Debug)]
pub struct CliOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `lanyard-agent api ARGS --socket SOCKET --timeout 10s` as `who` and waits for it.
/// The CLI's own timeout bounds every wait inside it.
pub fn api(socket: &Path, args: &[&str], who: RunAs<'_>) -> CliOutput {
    let agent = binary("lanyard-agent");
    let mut full: Vec<&str> = vec!["api"];
    full.extend_from_slice(args);
    full.extend([
        "--socket",
        socket.to_str().expect("utf-8 path"),
        "--timeout",
        "10s",
    ]);
    let mut command = match who {
        RunAs::Me => {
            let mut c = Command::new(&agent);
            c.args(&full);
            c
        }
        RunAs::User { uid, gid } => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg("--")
                .arg(&agent)
                .args(&full);
            c
        }
        RunAs::InCgroup(dir) => {
            // `$$` is the shell's PID, which `exec` hands to the client: the client runs in
            // the cgroup from its first instruction, as a container's process does.
            let mut c = Command::new("/bin/sh");
            c.arg("-c")
                .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
                .arg("sh")
                .arg(dir)
                .arg(&agent)
                .args(&full);
            c
        }
    };
    let output = command
        .stdin(Stdio::null())
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .env_remove("LANYARD_SOCKET")
        .output()
        .unwrap_or_else(|e| panic!("running the api client ({who:?}): {e}"));
    CliOutput {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `api` until `done` accepts its output (clients retry "no identity issued" and
/// "not available yet"), failing with the last output after [`DEADLINE`].
pub fn api_until(
    socket: &Path,
    args: &[&str],
    who: RunAs<'_>,
    mut done: impl FnMut(&CliOutput) -> bool,
) -> CliOutput {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let out = api(socket, args, who);
        if done(&out) {
            return out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the api client never got there; last output: {out:?}"
        );
        // Retrying a refused client at a human pace, not synchronising on time.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET path` over HTTP/1.1 with `Connection: close`; returns the body of a 200 answer.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect to health");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The value of the sample `series` (name with its labels exactly as exposed, e.g.
/// `x_total{reason="unavailable"}`) in a Prometheus text exposition.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
