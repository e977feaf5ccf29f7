//! `lanyard-local`: the whole system on loopback, for a first look.
//!
//! It starts, from the binaries next to itself: `lanyard-server` (data-dir mode, a temp dir),
//! `lanyard-agent` (attested by a join token), and two `lanyard-proxy` processes: one in front
//! of a sample web app (inbound), one in front of a sample client app (outbound, expecting the
//! web proxy's SPIFFE ID). The two proxies get different identities from one agent because
//! they run from two copies of the proxy binary, selected by `unix:path`. The sample apps run
//! inside this process. Every connection's tap line from both proxies is printed, and a
//! plaintext client shows what unmeshed traffic looks like.
//!
//! `--check` runs until both proxies have reported an mTLS connection with the right peer and
//! the plaintext one, then exits 0 (used by the end-to-end test); it fails after a deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;

const TRUST_DOMAIN: &str = "example.org";
const WEB_ID: &str = "spiffe://example.org/demo/web";
const CLIENT_ID: &str = "spiffe://example.org/demo/client";
const YOU_ID: &str = "spiffe://example.org/demo/you";
/// How long children get to exit after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(8);
/// How long any one startup step may take.
const STEP_DEADLINE: Duration = Duration::from_secs(30);

/// Run the whole Lanyard system on loopback and show mTLS between two proxies.
#[derive(Parser)]
#[command(name = "lanyard-local", version, about)]
struct Cli {
    /// Exit 0 once mTLS (both sides) and plaintext traffic have been seen; fail after 60 s.
    #[arg(long)]
    check: bool,
    /// Seconds between the sample client's requests.
    #[arg(long, default_value_t = 2)]
    interval: u64,
}

/// Children started so far; all killed (process groups) on exit or Ctrl-C.
#[derive(Default, Clone)]
struct Children(Arc<Mutex<Vec<Child>>>);

impl Children {
    fn spawn(&self, program: &Path, args: &[&str]) -> anyhow::Result<ChildOutput> {
        let mut child = Command::new(program)
            .args(args)
            .env(
                "LANYARD_LOG",
                std::env::var("LANYARD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.0.lock().unwrap().push(child);
        Ok(ChildOutput { lines: rx })
    }

    /// Asks every child to stop (SIGTERM to its process group), waits up to a grace period,
    /// then kills whatever is left.
    fn kill_all(&self) {
        let mut children = self.0.lock().unwrap();
        let signal_all = |children: &mut Vec<Child>, signal| {
            for child in children.iter_mut() {
                if matches!(child.try_wait(), Ok(None)) {
                    // SAFETY: kill(2) on the process group of a child we started.
                    unsafe {
                        libc::kill(-(child.id() as i32), signal);
                    }
                }
            }
        };
        signal_all(&mut children, libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline
            && children
                .iter_mut()
                .any(|c| matches!(c.try_wait(), Ok(None)))
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        signal_all(&mut children, libc::SIGKILL);
        for child in children.iter_mut() {
            let _ = child.wait();
        }
    }
}

struct ChildOutput {
    lines: mpsc::Receiver<String>,
}

impl ChildOutput {
    /// Waits for `listening on ADDR (role)` and returns ADDR (as text: it may be `unix:...`).
    fn listener(&self, role: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + STEP_DEADLINE;
        let suffix = format!(" ({role})");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .with_context(|| format!("no `{role}` listener announced in time"))?;
            if let Some(addr) = line
                .strip_prefix("listening on ")
                .and_then(|l| l.strip_suffix(&suffix))
            {
                return Ok(addr.to_owned());
            }
        }
    }
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("binary directory")?.join(name);
    if !path.exists() {
        bail!(
            "{} not found: build with `cargo build --workspace --bins` (./deploy/local/run does)",
            path.display()
        );
    }
    Ok(path)
}

fn run_ok(program: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "{} {args:?}: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The sample web app: answers every HTTP request with a greeting.
fn start_web_app() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                if stream.read(&mut buf).unwrap_or(0) > 0 {
                    let body = "hello from the web app\n";
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
        }
    });
    Ok(addr)
}

/// One HTTP GET over a plain TCP connection to `addr`; returns the body's first line.
fn get(addr: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .rsplit("\r\n\r\n")
        .next()
        .unwrap_or("")
        .trim()
        .to_owned())
}

/// Streams a proxy's tap lines (tagged with `who`) into `tx`, reconnecting until the proxy is up.
fn follow_tap(who: &'static str, admin: String, tx: mpsc::Sender<(&'static str, String)>) {
    std::thread::spawn(move || {
        loop {
            if let Ok(stream) = TcpStream::connect(&admin) {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send((who, line)).is_err() {
                        return;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let children = Children::default();
    let stopping = Arc::new(AtomicBool::new(false));
    {
        let children = children.clone();
        let stopping = stopping.clone();
        ctrlc_handler(move || {
            stopping.store(true, Ordering::SeqCst);
            children.kill_all();
        });
    }
    let result = run(&cli, &children, &stopping);
    children.kill_all();
    // Ctrl-C ends the run by killing the children, which makes whatever step was waiting
    // fail: that is a normal stop, not an error. The temp dir is removed as `run` returns.
    if stopping.load(Ordering::SeqCst) {
        println!("stopped; every process is gone and the temporary directory removed");
        return Ok(());
    }
    result
}

fn run(cli: &Cli, children: &Children, stopping: &AtomicBool) -> anyhow::Result<()> {
    let server_bin = sibling("lanyard-server")?;
    let agent_bin = sibling("lanyard-agent")?;
    let proxy_bin = sibling("lanyard-proxy")?;
    let dir = tempfile::Builder::new()
        .prefix("lanyard-local-")
        .tempdir()?;
    let root = dir.path();

    // Two copies of the proxy, so the agent can tell them apart by binary path.
    let mut proxies = Vec::new();
    for name in ["web", "client"] {
        std::fs::create_dir_all(root.join(name))?;
        let copy = root.join(name).join("lanyard-proxy");
        std::fs::copy(&proxy_bin, &copy)?;
        proxies.push(copy);
    }
    let (web_proxy, client_proxy) = (&proxies[0], &proxies[1]);
    let config = format!(
        "[[entries]]\nspiffe_id = \"{WEB_ID}\"\nselectors = [\"unix:path:{}\"]\nnodes = [\"local\"]\n\n\
         [[entries]]\nspiffe_id = \"{CLIENT_ID}\"\nselectors = [\"unix:path:{}\"]\nnodes = [\"local\"]\n\n\
         [[entries]]\nspiffe_id = \"{YOU_ID}\"\nselectors = [\"unix:path:{}\"]\nnodes = [\"local\"]\n",
        web_proxy.display(),
        client_proxy.display(),
        agent_bin.canonicalize()?.display(),
    );
    let config_path = root.join("server.toml");
    std::fs::write(&config_path, config)?;
    let server_data = root.join("server");
    let s = |p: &Path| p.to_str().expect("utf-8 temp path").to_owned();

    println!(
        "starting lanyard-server (trust domain {TRUST_DOMAIN}, data dir {})",
        server_data.display()
    );
    let server = children.spawn(
        &server_bin,
        &[
            "run",
            "--trust-domain",
            TRUST_DOMAIN,
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &s(&server_data),
            "--config",
            &s(&config_path),
        ],
    )?;
    let server_addr = server.listener("grpc")?;
    let token = run_ok(
        &server_bin,
        &[
            "token",
            "generate",
            "--data-dir",
            &s(&server_data),
            "--node",
            "local",
        ],
    )?;
    let bundle = root.join("bundle.pem");
    std::fs::write(
        &bundle,
        run_ok(
            &server_bin,
            &["bundle", "show", "--data-dir", &s(&server_data)],
        )?,
    )?;

    // The token goes in a 0600 file, not on the command line where any local user could read
    // it (and where a token is one argument whatever its first character).
    let token_file = root.join("join-token");
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&token_file)?
            .write_all(token.trim().as_bytes())?;
    }
    let socket = root.join("sockets").join("agent.sock");
    println!("starting lanyard-agent (node `local`, join token)");
    let agent = children.spawn(
        &agent_bin,
        &[
            "run",
            "--server",
            &server_addr,
            "--trust-bundle",
            &s(&bundle),
            "--join-token-file",
            &s(&token_file),
            "--socket",
            &s(&socket),
            "--data-dir",
            &s(&root.join("agent")),
        ],
    )?;
    agent.listener("workload-api")?;

    let web_app = start_web_app()?;
    println!("starting the web app on {web_app} behind a proxy ({WEB_ID})");
    let web = children.spawn(
        web_proxy,
        &[
            "run",
            "--workload-socket",
            &s(&socket),
            "--inbound",
            &format!("127.0.0.1:0={web_app}"),
            "--admin",
            "127.0.0.1:0",
        ],
    )?;
    let web_inbound = web.listener("inbound")?;
    let web_admin = web.listener("admin")?;
    println!("starting the client app's proxy ({CLIENT_ID}), sending to {web_inbound} as {WEB_ID}");
    let client = children.spawn(
        client_proxy,
        &[
            "run",
            "--workload-socket",
            &s(&socket),
            "--outbound",
            &format!("127.0.0.1:0={web_inbound},id={WEB_ID}"),
            "--admin",
            "127.0.0.1:0",
        ],
    )?;
    let client_outbound = client.listener("outbound")?;
    let client_admin = client.listener("admin")?;

    println!();
    println!(
        "Lanyard is running. The agent's Workload API socket: {}",
        socket.display()
    );
    println!(
        "Try: {} api fetch x509 --socket {}",
        agent_bin.display(),
        socket.display()
    );
    println!("Tap lines from both proxies follow (Ctrl-C stops everything):");
    println!();

    let (tx, taps) = mpsc::channel();
    follow_tap("web proxy   ", web_admin, tx.clone());
    follow_tap("client proxy", client_admin, tx);

    let mut seen_out = false;
    let mut seen_in = false;
    let mut seen_plain = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut next_request = Instant::now();
    let mut requests = 0u64;
    while !stopping.load(Ordering::SeqCst) {
        if Instant::now() >= next_request {
            requests += 1;
            // The sample client app talks to its outbound proxy in plaintext; the proxies do mTLS.
            match get(&client_outbound) {
                Ok(body) => println!("client app got: {body}"),
                Err(e) => {
                    println!("client app: request failed ({e}); the proxies may still be starting")
                }
            }
            // Every third round, an unmeshed client talks to the web proxy directly.
            if requests % 3 == 1 {
                match get(&web_inbound) {
                    Ok(body) => println!("plaintext client got: {body}"),
                    Err(e) => println!("plaintext client: {e}"),
                }
            }
            next_request = Instant::now() + Duration::from_secs(cli.interval);
        }
        if let Ok((who, line)) = taps.recv_timeout(Duration::from_millis(100)) {
            println!("[{who}] {line}");
            seen_out |= line.starts_with("proxy=out")
                && line.contains("tls=true")
                && line.contains(&format!("peer={WEB_ID}"));
            seen_in |= line.starts_with("proxy=in")
                && line.contains("tls=true")
                && line.contains(&format!("peer={CLIENT_ID}"));
            seen_plain |= line.starts_with("proxy=in") && line.contains("tls=false");
        }
        if cli.check {
            if seen_out && seen_in && seen_plain {
                println!(
                    "check passed: mTLS on both sides with the right peer IDs, and plaintext seen"
                );
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "check failed: mTLS out={seen_out} in={seen_in}, plaintext={seen_plain} within 60 s"
                );
            }
        }
    }
    Ok(())
}

/// Runs `on_signal` when SIGINT or SIGTERM arrives (a thread waits for them with sigwait).
fn ctrlc_handler(on_signal: impl FnOnce() + Send + 'static) {
    // SAFETY: plain libc signal-mask calls on a local sigset; blocking the signals in this
    // (main) thread before any other thread starts makes every thread inherit the mask, so
    // only the waiting thread below receives them.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        std::thread::spawn(move || {
            let mut signal = 0;
            libc::sigwait(&set, &mut signal);
            on_signal();
        });
    }
}
