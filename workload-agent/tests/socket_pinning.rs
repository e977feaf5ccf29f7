//! Issue 14, findings 3 and 4, performed against the real `socket::serve` over a real Unix
//! socket, with real processes (a Python helper, `tests/support/connect_fork.py`, standard
//! library only):
//!
//! - PID reuse (finding 3): the process that connected forks, hands the connection on and
//!   exits; its PID is given (through `/proc/sys/kernel/ns_last_pid`, as root) to `sleep`, a
//!   binary an entry is for. Calls on the held connection are refused (`process_gone` with
//!   `SO_PEERPIDFD`, `pid_reused` with the start-time fallback), never that entry's SVID. And
//!   a connection accepted only after its process exited and its PID went to `sleep` (the
//!   original finding: accepts waited while the budget was full) cannot even be pinned.
//! - fork+exec (finding 4): the process that connected forks, the child hands the connection
//!   on, the parent execs `sleep` (the allowed binary, same PID): calls on the held connection
//!   are refused `binary_changed`; the same connection got its own (Python's) SVID before.
//!
//! These need root (ns_last_pid) and Linux 6.5+ (SO_PEERPIDFD), as in CI.

mod workload_api_support;

use std::fs::OpenOptions;
use std::io::{self, BufRead as _, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::fs::FileExt as _;
use std::os::unix::net::{UnixListener as StdListener, UnixStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lanyard_agent::attest::{Attested, PeerCred, WorkloadAttestor};
use lanyard_agent::identities::{Entitlement, IdentityError, WorkloadIdentities};
use lanyard_agent::socket::{self, ConnectionLimits, Services};
use lanyard_agent::workload_api::{Limits, WorkloadApiMetrics};
use lanyard_proto::workload::X509svidRequest;
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use lanyard_svid::selector::Selector;
use lanyard_svid::{BundleSet, SpiffeId, X509Svid};
use tokio::sync::{oneshot, watch};
use tonic::transport::{Channel, Endpoint};
use workload_api_support::*;

const SLEEP: &str = "/usr/bin/sleep";

fn python() -> String {
    std::env::var("LANYARD_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

fn helper() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/connect_fork.py")
}

/// Identities by binary path: `rules` maps a `unix:path` selector to the ID it gets.
struct ByPath {
    fake: Arc<FakeIdentities>,
    rules: Vec<(Selector, SpiffeId)>,
}

#[tonic::async_trait]
impl WorkloadIdentities for ByPath {
    fn resolve(&self, attested: &Attested) -> Vec<Entitlement> {
        self.rules
            .iter()
            .filter(|(selector, _)| attested.selectors.contains(selector))
            .map(|(_, id)| entitlement(id))
            .collect()
    }
    async fn x509_svids(
        &self,
        entitlements: &[Entitlement],
    ) -> Result<Vec<Arc<X509Svid>>, IdentityError> {
        self.fake.x509_svids(entitlements).await
    }
    async fn jwt_svid(
        &self,
        entitlement: &Entitlement,
        audience: &[String],
    ) -> Result<String, IdentityError> {
        self.fake.jwt_svid(entitlement, audience).await
    }
    fn bundles(&self) -> Arc<BundleSet> {
        self.fake.bundles()
    }
    fn changes(&self) -> watch::Receiver<u64> {
        self.fake.changes()
    }
}

fn path_selector(path: &Path) -> Selector {
    Selector::parse(&format!("unix:path:{}", path.display())).unwrap()
}

/// The real socket server with `identities`, until the returned sender is dropped.
async fn serve(
    identities: Arc<dyn WorkloadIdentities>,
    attestor: WorkloadAttestor,
) -> (tempfile::TempDir, PathBuf, oneshot::Sender<()>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn({
        let path = path.clone();
        async move {
            socket::serve(
                &path,
                Arc::new(attestor),
                ConnectionLimits::default(),
                Services::new().workload_api(
                    identities,
                    Limits::default(),
                    WorkloadApiMetrics::default(),
                ),
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .unwrap()
        }
    });
    let check = path.clone();
    eventually("the socket", || {
        let exists = check.exists();
        async move { exists.then_some(()) }
    })
    .await;
    (dir, path, stop)
}

/// A connection to the agent opened by another process, handed to this one.
struct Attacker {
    /// The process that connected (it then execs or exits on `go`).
    connector: Child,
    go: Option<ChildStdin>,
    /// Kept open so the helper's child (which also holds the connection) waits.
    _back: StdStream,
    connection: Option<OwnedFd>,
}

impl Attacker {
    fn start(agent: &Path, mode: &str, argv: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let back_path = dir.path().join("back.sock");
        let back = StdListener::bind(&back_path).unwrap();
        let mut connector = Command::new(python())
            .arg(helper())
            .arg(agent)
            .arg(&back_path)
            .arg(mode)
            .args(argv)
            .stdin(Stdio::piped())
            .spawn()
            .expect("run the Python helper");
        back.set_nonblocking(false).unwrap();
        let (back, _) = accept_within(&back, DEADLINE);
        back.set_read_timeout(Some(DEADLINE)).unwrap();
        let connection = recv_fd(&back).expect("the helper passes the connection");
        let go = connector.stdin.take();
        Self {
            connector,
            go,
            _back: back,
            connection: Some(connection),
        }
    }

    fn pid(&self) -> i32 {
        self.connector.id() as i32
    }

    fn go(&mut self) {
        let mut go = self.go.take().unwrap();
        go.write_all(b"go\n").unwrap();
    }

    /// A gRPC channel over the handed-on connection (usable once: it never reconnects).
    async fn channel(&mut self) -> SpiffeWorkloadApiClient<Channel> {
        let fd = self.connection.take().unwrap();
        let stream = Arc::new(Mutex::new(Some(StdStream::from(fd))));
        let endpoint = Endpoint::from_static("http://localhost");
        let channel = endpoint.connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let stream = stream.lock().unwrap().take();
            async move {
                let stream = stream.ok_or_else(|| io::Error::other("used once"))?;
                stream.set_nonblocking(true)?;
                let stream = tokio::net::UnixStream::from_std(stream)?;
                Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }));
        SpiffeWorkloadApiClient::new(within("connect", channel).await.unwrap())
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        let _ = self.connector.kill();
        let _ = self.connector.wait();
    }
}

fn accept_within(listener: &StdListener, deadline: Duration) -> (StdStream, ()) {
    listener.set_nonblocking(true).unwrap();
    let start = Instant::now();
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                return (stream, ());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && start.elapsed() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("the helper never connected back: {e}"),
        }
    }
}

/// Receives one descriptor passed with `SCM_RIGHTS`.
fn recv_fd(socket: &StdStream) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: byte.len(),
    };
    // u64s: the control buffer must be aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is a plain C struct; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: every pointer in `msg` points at live locals of the lengths given.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `msg` was filled in by recvmsg; CMSG_FIRSTHDR reads only its control fields.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    if cmsg.is_null() {
        return Err(io::Error::other("no descriptor passed"));
    }
    // SAFETY: `cmsg` points into `control`, a complete header as the kernel wrote it; for
    // SCM_RIGHTS its data holds at least one int, read unaligned.
    unsafe {
        if (*cmsg).cmsg_level != libc::SOL_SOCKET || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return Err(io::Error::other("not SCM_RIGHTS"));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Runs `argv` as a new process with PID `pid`, by writing `pid - 1` to ns_last_pid (under
/// its lock, as CRIU does) just before forking; retried, as any other fork on the machine may
/// take the PID first.
fn spawn_with_pid(pid: i32, argv: &[&str]) -> Child {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/proc/sys/kernel/ns_last_pid")
        .expect("ns_last_pid (this test needs root)");
    // SAFETY: flock on a descriptor we own; released when it is closed.
    assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }, 0);
    for _ in 0..500 {
        file.write_at(format!("{}", pid - 1).as_bytes(), 0).unwrap();
        let mut child = Command::new(argv[0]).args(&argv[1..]).spawn().unwrap();
        if child.id() as i32 == pid {
            return child;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("could not get PID {pid} for {argv:?} in 500 tries");
}

/// Waits until process `pid` runs `binary`.
async fn runs(pid: i32, binary: &str) {
    eventually("the exec", || {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        async move { (exe.as_deref() == Some(Path::new(binary))).then_some(()) }
    })
    .await;
}

fn python_binary() -> PathBuf {
    let out = Command::new(python())
        .args(["-c", "import os; print(os.readlink('/proc/self/exe'))"])
        .output()
        .unwrap();
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The agent with entries for Python (`/py`) and for `sleep` (`/sleep`).
async fn agent_with_entries(
    attestor: WorkloadAttestor,
) -> (
    tempfile::TempDir,
    PathBuf,
    oneshot::Sender<()>,
    SpiffeId,
    SpiffeId,
) {
    install_ring();
    let pki = Pki::new();
    let (py, sleep) = (pki.id("/py"), pki.id("/sleep"));
    let fake = FakeIdentities::new(pki, &[py.clone(), sleep.clone()]);
    let identities = Arc::new(ByPath {
        fake,
        rules: vec![
            (path_selector(&python_binary()), py.clone()),
            (path_selector(Path::new(SLEEP)), sleep.clone()),
        ],
    });
    let (dir, socket, stop) = serve(identities, attestor).await;
    (dir, socket, stop, py, sleep)
}

/// The SPIFFE IDs a FetchX509SVID on `client` is answered with, or its refusal.
async fn fetch_ids(
    client: &mut SpiffeWorkloadApiClient<Channel>,
) -> Result<Vec<String>, tonic::Status> {
    let mut stream = within(
        "FetchX509SVID",
        client.fetch_x509svid(req(X509svidRequest {})),
    )
    .await?
    .into_inner();
    let first = within("the first answer", stream.message()).await?;
    Ok(first
        .map(|r| r.svids.into_iter().map(|s| s.spiffe_id).collect())
        .unwrap_or_default())
}

async fn pid_reuse_is_refused(attestor: WorkloadAttestor, label: &str, code: tonic::Code) {
    let (_dir, socket, _stop, py, _sleep) = agent_with_entries(attestor).await;
    let mut attacker = Attacker::start(&socket, "exit", &[]);
    let pid = attacker.pid();
    let mut client = attacker.channel().await;
    // Pinned to the Python process that connected: its own identity.
    assert_eq!(fetch_ids(&mut client).await.unwrap(), [py.to_string()]);

    // It exits; its PID goes to `sleep`, which an entry is for.
    attacker.go();
    attacker.connector.wait().unwrap();
    let mut newcomer = spawn_with_pid(pid, &[SLEEP, "600"]);
    runs(pid, SLEEP).await;

    let refused = fetch_ids(&mut client)
        .await
        .expect_err("never the newcomer's SVID");
    assert_eq!(refused.code(), code, "{refused:?}");
    assert!(refused.message().contains(label), "{refused:?}");
    let _ = newcomer.kill();
    let _ = newcomer.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid_reuse_behind_a_held_connection_is_refused_process_gone() {
    pid_reuse_is_refused(
        WorkloadAttestor::default(),
        "(process_gone)",
        tonic::Code::Unavailable,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid_reuse_is_refused_pid_reused_by_the_start_time_fallback() {
    pid_reuse_is_refused(
        WorkloadAttestor::default().without_peer_pidfd(),
        "(pid_reused)",
        tonic::Code::PermissionDenied,
    )
    .await;
}

/// The original finding's order: the connection is accepted only after its process exited and
/// its PID went to `sleep`. `SO_PEERPIDFD` still names the process that connected: it is
/// gone, so the connection cannot be pinned (every call on it is refused `process_gone`).
#[test]
fn a_connection_accepted_after_its_pid_was_reused_cannot_be_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("late.sock");
    let listener = StdListener::bind(&path).unwrap();
    let mut connector = Command::new(python())
        .args([
            "-c",
            "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); \
             print('connected', flush=True); sys.stdin.readline()",
        ])
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = connector.id() as i32;
    // Connected: the kernel has queued it; nobody accepted yet.
    let mut line = String::new();
    std::io::BufReader::new(connector.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "connected");
    drop(connector.stdin.take());
    connector.wait().unwrap();
    let mut newcomer = spawn_with_pid(pid, &[SLEEP, "600"]);

    let (accepted, _) = listener.accept().unwrap();
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let cred = PeerCred::new(Some(pid), uid, gid);
    let err = WorkloadAttestor::default()
        .pin_socket(std::os::fd::AsFd::as_fd(&accepted), cred)
        .expect_err("the connecting process is gone");
    assert_eq!(err.label(), "process_gone");

    // The fallback cannot tell: it pins the newcomer. This is the window the prompt accept
    // keeps short on kernels without SO_PEERPIDFD (documented in docs/SECURITY.md).
    let fallback = WorkloadAttestor::default()
        .without_peer_pidfd()
        .pin_socket(std::os::fd::AsFd::as_fd(&accepted), cred)
        .unwrap();
    assert_eq!(fallback.binary.path, Path::new(SLEEP));
    let _ = newcomer.kill();
    let _ = newcomer.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_then_exec_of_the_allowed_binary_is_refused_binary_changed() {
    let (_dir, socket, _stop, py, sleep) = agent_with_entries(WorkloadAttestor::default()).await;
    let mut attacker = Attacker::start(&socket, "exec", &[SLEEP, "600"]);
    let pid = attacker.pid();
    let mut client = attacker.channel().await;
    // A normal caller (the Python process, unchanged) gets its own SVID on this connection.
    assert_eq!(fetch_ids(&mut client).await.unwrap(), [py.to_string()]);

    // The process that connected execs `sleep` (same PID); the connection is held elsewhere.
    attacker.go();
    runs(pid, SLEEP).await;
    let refused = fetch_ids(&mut client)
        .await
        .expect_err("never sleep's SVID");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("(binary_changed)"),
        "{refused:?}"
    );
    assert!(refused.message().contains(SLEEP), "{refused:?}");
    assert!(!refused.message().contains(&sleep.to_string()));

    // Again: refused every time, not once.
    let again = fetch_ids(&mut client).await.expect_err("still refused");
    assert!(again.message().contains("(binary_changed)"), "{again:?}");
}
