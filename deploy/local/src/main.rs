//! `lanyard-local`: the whole system on loopback, for a first look.
//!
//! It starts, from the binaries next to itself: `lanyard-server` (data-dir mode, a temp dir),
//! `lanyard-agent` (attested by a join token), and two `lanyard-proxy` processes: one in front
//! of a sample web app (inbound), one in front of a sample client app (outbound, expecting the
//! web proxy's SPIFFE ID). The two proxies get different identities from one agent because
//! they run from two copies of the proxy binary, selected by `unix:path`. The sample apps run
//! inside this process. Every connection's tap line from both proxies is printed, and a
//! plaintext client shows what unmeshed traffic looks like. The first request waits until both
//! proxies hold their SVIDs (each proxy's `/readyz`), so it does not race their start.
//!
//! Ctrl-C (SIGINT) or SIGTERM stops every child with SIGTERM, reports how each one ended
//! (`stopped NAME: exit status: 0 ...`, or `killed NAME ...` after the grace period) and
//! removes the temporary directory.
//!
//! `--check` runs until both proxies have reported an mTLS connection with the right peer and
//! the plaintext one, then exits 0 (used by the end-to-end test); it fails after a deadline.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::FromRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
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

/// Children started so far; all stopped (process groups) on exit or Ctrl-C.
#[derive(Default, Clone)]
struct Children(Arc<Mutex<ChildList>>);

#[derive(Default)]
struct ChildList {
    /// Each running child with the name its stop is reported under.
    running: Vec<(&'static str, Child)>,
    /// Set by the first stop: nothing is started after it.
    stopped: bool,
}

impl Children {
    fn spawn(
        &self,
        name: &'static str,
        program: &Path,
        args: &[&str],
    ) -> anyhow::Result<ChildOutput> {
        // Held across the spawn so a concurrent stop either sees this child or prevents it.
        let mut list = self.0.lock().unwrap();
        if list.stopped {
            bail!("not starting {name}: stopping");
        }
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
        list.running.push((name, child));
        Ok(ChildOutput { lines: rx })
    }

    /// Asks every child to stop (SIGTERM to its process group), kills whatever is left after
    /// a grace period, and prints how each one ended. Later calls find nothing to stop.
    fn stop_all(&self) {
        let mut list = self.0.lock().unwrap();
        list.stopped = true;
        let mut running = std::mem::take(&mut list.running);
        if running.is_empty() {
            return;
        }
        let signal = |child: &Child, signal| {
            // SAFETY: kill(2) on the process group of a child we started and have not reaped
            // (its pid, the group's id, cannot have been reused).
            unsafe {
                libc::kill(-(child.id() as i32), signal);
            }
        };
        let start = Instant::now();
        for (_, child) in &running {
            signal(child, libc::SIGTERM);
        }
        let mut pending: Vec<(&'static str, Child)> = Vec::new();
        while !running.is_empty() {
            for (name, mut child) in running.drain(..) {
                match child.try_wait() {
                    Ok(Some(status)) => println!(
                        "stopped {name}: {status} ({} ms after SIGTERM)",
                        start.elapsed().as_millis()
                    ),
                    Ok(None) if start.elapsed() >= STOP_GRACE => {
                        signal(&child, libc::SIGKILL);
                        let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                        println!(
                            "killed {name}: still running {} s after SIGTERM ({status})",
                            STOP_GRACE.as_secs()
                        );
                    }
                    Ok(None) => pending.push((name, child)),
                    Err(e) => println!("stopped {name}: cannot wait for it ({e})"),
                }
            }
            std::mem::swap(&mut running, &mut pending);
            if !running.is_empty() {
                std::thread::sleep(Duration::from_millis(20));
            }
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

/// One HTTP GET of `path` over a plain TCP connection to `addr`; returns the status line and
/// the body, trimmed.
fn http_get(addr: &str, path: &str) -> anyhow::Result<(String, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or("").to_owned();
    Ok((status, body.trim().to_owned()))
}

/// One HTTP GET of `/` (the sample apps' request); returns the body.
fn get(addr: &str) -> anyhow::Result<String> {
    Ok(http_get(addr, "/")?.1)
}

/// Waits until every proxy's `/readyz` (on its metrics listener) answers 200, i.e. it holds
/// an X.509-SVID and the trust bundle: before that, a connection through it fails
/// (`no_svid`). Polled, with the step deadline; a stop ends the wait.
fn wait_ready(proxies: &[(&str, &str)], stopping: &AtomicBool) -> anyhow::Result<()> {
    let deadline = Instant::now() + STEP_DEADLINE;
    for (who, metrics) in proxies {
        loop {
            let answer = http_get(metrics, "/readyz");
            if matches!(&answer, Ok((status, _)) if status.starts_with("HTTP/1.1 200")) {
                break;
            }
            if stopping.load(Ordering::SeqCst) {
                bail!("stopped while waiting for the {who} to be ready");
            }
            if Instant::now() >= deadline {
                let why = match answer {
                    Ok((status, body)) => format!("{status}: {body}"),
                    Err(e) => e.to_string(),
                };
                bail!(
                    "the {who} was not ready within {} s: {why}",
                    STEP_DEADLINE.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// Streams a proxy's tap lines (tagged with `who`) into `tx`. The first connection is made
/// here, so no connection through the proxy goes untapped; if the tap ends, it reconnects.
fn follow_tap(
    who: &'static str,
    admin: String,
    tx: mpsc::Sender<(&'static str, String)>,
) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(&admin)
        .with_context(|| format!("connecting to the {who} tap at {admin}"))?;
    std::thread::spawn(move || {
        loop {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send((who, line)).is_err() {
                    return;
                }
            }
            stream = loop {
                std::thread::sleep(Duration::from_millis(200));
                if let Ok(stream) = TcpStream::connect(&admin) {
                    break stream;
                }
            };
        }
    });
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let children = Children::default();
    let stopping = Arc::new(AtomicBool::new(false));
    {
        let children = children.clone();
        let stopping = stopping.clone();
        on_stop_signal(move || {
            stopping.store(true, Ordering::SeqCst);
            children.stop_all();
        })?;
    }
    let dir = tempfile::Builder::new()
        .prefix("lanyard-local-")
        .tempdir()?;
    let result = run(&cli, dir.path(), &children, &stopping);
    // Every child is gone before their directory is removed (a no-op after a signal's stop:
    // this waits for that stop to finish, under the children lock).
    children.stop_all();
    drop(dir);
    // Ctrl-C ends the run by stopping the children, which makes whatever step was waiting
    // fail: that is a normal stop, not an error.
    if stopping.load(Ordering::SeqCst) {
        println!("stopped; every process is gone and the temporary directory removed");
        return Ok(());
    }
    result
}

fn run(cli: &Cli, root: &Path, children: &Children, stopping: &AtomicBool) -> anyhow::Result<()> {
    let server_bin = sibling("lanyard-server")?;
    let agent_bin = sibling("lanyard-agent")?;
    let proxy_bin = sibling("lanyard-proxy")?;

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
        "lanyard-server",
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
        "lanyard-agent",
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
        "web proxy",
        web_proxy,
        &[
            "run",
            "--workload-socket",
            &s(&socket),
            "--inbound",
            &format!("127.0.0.1:0={web_app}"),
            "--admin",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
        ],
    )?;
    let web_inbound = web.listener("inbound")?;
    let web_admin = web.listener("admin")?;
    let web_metrics = web.listener("metrics")?;
    println!("starting the client app's proxy ({CLIENT_ID}), sending to {web_inbound} as {WEB_ID}");
    let client = children.spawn(
        "client proxy",
        client_proxy,
        &[
            "run",
            "--workload-socket",
            &s(&socket),
            "--outbound",
            &format!("127.0.0.1:0={web_inbound},id={WEB_ID}"),
            "--admin",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
        ],
    )?;
    let client_outbound = client.listener("outbound")?;
    let client_admin = client.listener("admin")?;
    let client_metrics = client.listener("metrics")?;
    println!("waiting until both proxies hold their SVIDs (their /readyz)");
    wait_ready(
        &[
            ("web proxy", &web_metrics),
            ("client proxy", &client_metrics),
        ],
        stopping,
    )?;

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
    follow_tap("web proxy   ", web_admin, tx.clone())?;
    follow_tap("client proxy", client_admin, tx)?;

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
                Err(e) => println!("client app: request failed ({e})"),
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

/// Write end of the self-pipe that [`on_signal_byte`] writes to; -1 until installed.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal_byte(_: libc::c_int) {
    // SAFETY: only async-signal-safe calls (write(2) on a non-blocking pipe, errno saved and
    // restored so the interrupted code does not see ours). A full pipe already holds a byte.
    unsafe {
        let errno = *libc::__errno_location();
        let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
        libc::write(fd, [1u8].as_ptr().cast(), 1);
        *libc::__errno_location() = errno;
    }
}

/// Runs `on_signal` on a thread of its own when SIGINT or SIGTERM arrives.
///
/// A handler that writes to a self-pipe, not a blocked mask read by sigwait: the signal mask
/// is inherited by every child through fork and exec (std does not reset it), so blocking
/// SIGINT and SIGTERM here made the children deaf to the SIGTERM that stops them and each
/// stop waited out the grace period and SIGKILLed them. Handlers, unlike the mask, are reset
/// to the default by exec, so the children start as any other process.
fn on_stop_signal(on_signal: impl FnOnce() + Send + 'static) -> anyhow::Result<()> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills the two-element array; close-on-exec so no child inherits either
    // end. The write end is made non-blocking so the handler never waits; fcntl on a
    // descriptor just created.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0
            || libc::fcntl(fds[1], libc::F_SETFL, libc::O_NONBLOCK) != 0
        {
            return Err(std::io::Error::last_os_error()).context("creating the signal pipe");
        }
    }
    // SAFETY: fds[0] is a pipe end just created and owned by nothing else.
    let mut reader = File::from(unsafe { std::os::fd::OwnedFd::from_raw_fd(fds[0]) });
    SIGNAL_PIPE.store(fds[1], Ordering::Relaxed);
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        while !matches!(reader.read(&mut byte), Ok(1)) {}
        on_signal();
    });
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with our handler, an empty mask and SA_RESTART (so
        // blocking calls in other threads resume rather than fail with EINTR).
        let installed = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal_byte as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if installed != 0 {
            return Err(std::io::Error::last_os_error()).context("installing a signal handler");
        }
    }
    Ok(())
}
