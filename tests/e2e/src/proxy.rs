//! `lanyard-proxy run` as a real process for the end-to-end tests: started as a uid of the
//! test's choosing (so the agent attests each proxy as its own workload, from the kernel's
//! peer credentials), optionally inside a network namespace or a pod-shaped cgroup; its
//! listeners read from its `listening on` lines; its tap read from `--admin`; its readiness
//! and metrics from `--metrics`. Plus the byte-level helpers the proxy tests share.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::netns::{Netns, connect_from};
use crate::process::Process;
use crate::{DEADLINE, binary};

/// Where and as whom a proxy runs.
#[derive(Clone, Copy, Default)]
pub struct Launch<'a> {
    /// The uid (and gid) the proxy runs as, supplementary groups cleared (`setpriv`);
    /// `None`: this test's user.
    pub uid: Option<u32>,
    /// The network namespace it runs in (`ip netns exec`).
    pub netns: Option<&'a Netns>,
    /// A cgroup directory it is moved into before `exec` (a pod's container cgroup).
    pub cgroup: Option<&'a Path>,
}

/// A running proxy.
pub struct Proxy<'a> {
    pub process: Process,
    listeners: Vec<(String, SocketAddr)>,
    netns: Option<&'a Netns>,
    /// Its tap, opened as soon as it listens (before it can be ready, so before any test
    /// traffic): one line per finished connection.
    pub tap: TapLines,
}

impl<'a> Proxy<'a> {
    /// Starts `lanyard-proxy run` on the agent socket `socket` with `args` (listeners and
    /// policy), tap and metrics on loopback ports of the kernel's choosing and a 300 ms
    /// detection timeout; returns once it listens. See [`Proxy::wait_ready`].
    pub fn start(socket: &Path, how: Launch<'a>, args: &[&str]) -> Self {
        let proxy = binary("lanyard-proxy");
        let mut argv: Vec<String> = Vec::new();
        if let Some(dir) = how.cgroup {
            // `$$` is the shell's PID, which `exec` hands on: the proxy starts in the cgroup.
            argv.extend([
                "/bin/sh".into(),
                "-c".into(),
                r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#.into(),
                "sh".into(),
                dir.to_str().expect("utf-8 path").into(),
            ]);
        }
        // After the cgroup move: `ip netns exec` mounts the namespace's own /sys, where the
        // cgroup hierarchy is not to be found. The cgroup is inherited across its exec.
        if let Some(ns) = how.netns {
            argv.extend(ns.exec_prefix());
        }
        if let Some(uid) = how.uid {
            argv.extend([
                "setpriv".into(),
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".into(),
                "--".into(),
            ]);
        }
        argv.push(proxy.to_str().expect("utf-8 path").into());
        argv.extend(
            [
                "run",
                "--workload-socket",
                socket.to_str().expect("utf-8 path"),
                "--admin",
                "127.0.0.1:0",
                "--metrics",
                "127.0.0.1:0",
                "--detect-timeout",
                "300ms",
                "--handshake-timeout",
                "5s",
            ]
            .map(String::from),
        );
        argv.extend(args.iter().map(|a| a.to_string()));

        let rest: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
        let process = Process::start(Path::new(&argv[0]), &rest, &[]);
        // The metrics listener is announced last, so every other line is in by then.
        process.listener("metrics");
        let listeners: Vec<(String, SocketAddr)> = process
            .stdout_lines()
            .iter()
            .filter_map(|line| {
                let rest = line.strip_prefix("listening on ")?;
                let (addr, role) = rest.split_once(" (")?;
                Some((role.strip_suffix(')')?.to_owned(), addr.parse().ok()?))
            })
            .collect();
        let admin = listeners
            .iter()
            .find(|(role, _)| role == "admin")
            .expect("an admin listener")
            .1;
        let tap = TapLines::open(connect_from(how.netns, admin).expect("connect to the tap"));
        Self {
            process,
            listeners,
            netns: how.netns,
            tap,
        }
    }

    /// The addresses of the listeners with `role`, in the order they were configured.
    pub fn addrs(&self, role: &str) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter(|(r, _)| r == role)
            .map(|(_, a)| *a)
            .collect()
    }

    /// The one listener with `role`.
    pub fn addr(&self, role: &str) -> SocketAddr {
        let addrs = self.addrs(role);
        assert_eq!(addrs.len(), 1, "listeners with role {role}: {addrs:?}");
        addrs[0]
    }

    /// A connection to `addr` from the proxy's network namespace (its loopback listeners).
    pub fn connect(&self, addr: SocketAddr) -> TcpStream {
        let stream =
            connect_from(self.netns, addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream
    }

    /// `GET path` on the metrics listener: the status code and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        let mut stream = self.connect(self.addr("metrics"));
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).expect("read response");
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status code");
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        (
            status,
            if chunked {
                dechunk(body)
            } else {
                body.to_owned()
            },
        )
    }

    /// The value of metric sample `series` (name and labels as exposed), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "{body}");
        crate::client::metric(&body, series).unwrap_or(0.0)
    }

    /// Waits until `/readyz` answers 200: the proxy holds an SVID from the agent.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let (status, body) = self.get("/readyz");
            if status == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the proxy never became ready: {body}; stderr:\n{}",
                self.process.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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

/// The lines of a proxy's tap, collected by a thread as they arrive.
pub struct TapLines {
    lines: Arc<(Mutex<Vec<String>>, Condvar)>,
    next: usize,
}

impl TapLines {
    fn open(stream: TcpStream) -> Self {
        let lines: Arc<(Mutex<Vec<String>>, Condvar)> = Arc::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            // Ends when the proxy exits and closes the tap.
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let (lock, cvar) = &*sink;
                lock.lock().unwrap().push(line);
                cvar.notify_all();
            }
        });
        Self { lines, next: 0 }
    }

    /// The next tap line (in the order connections finished), waiting up to [`DEADLINE`].
    pub fn next_line(&mut self) -> String {
        let deadline = Instant::now() + DEADLINE;
        let (lock, cvar) = &*self.lines;
        let mut lines = lock.lock().unwrap();
        while lines.len() <= self.next {
            let now = Instant::now();
            assert!(
                now < deadline,
                "no tap line came (seen so far: {:?})",
                *lines
            );
            lines = cvar.wait_timeout(lines, deadline - now).unwrap().0;
        }
        self.next += 1;
        lines[self.next - 1].clone()
    }
}

/// The value of `key=` in a tap line.
pub fn field<'l>(line: &'l str, key: &str) -> &'l str {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

/// Writes `msg` and reads as many bytes back (the echo app's answer).
pub fn round_trip<S: Read + Write>(stream: &mut S, msg: &[u8]) -> Vec<u8> {
    stream.write_all(msg).expect("write");
    let mut back = vec![0u8; msg.len()];
    stream.read_exact(&mut back).expect("read the echo");
    back
}

/// Reads until EOF or an error: what arrived, and whether it ended in an error (a reset,
/// a TLS alert) rather than a clean close.
pub fn read_to_end_or_error<S: Read>(stream: &mut S) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (got, false),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                assert!(
                    !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                    "the connection stayed open past the deadline"
                );
                return (got, true);
            }
        }
    }
}

/// Sends `msg` on a connection the other side is expected to refuse, and checks that
/// nothing comes back before it closes. The send itself may fail (the refusal can close the
/// connection first): what matters is that no byte is answered.
pub fn assert_refused<S: Read + Write>(stream: &mut S, msg: &[u8]) {
    let _ = stream.write_all(msg).and_then(|()| stream.flush());
    let (got, _) = read_to_end_or_error(stream);
    assert!(got.is_empty(), "a refused connection answered {got:?}");
}

/// Closes our sending side and waits for the peer to finish, so the proxy's tap line for
/// this connection is (about to be) written.
pub fn finish(stream: &mut TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = read_to_end_or_error(stream);
}
