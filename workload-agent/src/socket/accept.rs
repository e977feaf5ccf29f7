//! Accepting connections on the agent's socket: the caller pinned at accept, the connection
//! budget, the HTTP/2 preface within a timeout, the idle timeout, and the `:authority` frame
//! layer.
//!
//! The loop accepts at once, always: a connection must not wait in the kernel's backlog,
//! where its caller could exit and its PID go to another process before the agent looks. Each
//! accepted connection is checked against the [`ConnectionBudget`] (all callers, and the
//! caller's uid's share); over budget, it is closed at once. Otherwise its caller is pinned
//! ([`WorkloadAttestor::pin_socket`]: a pidfd from `SO_PEERPIDFD`, the start time, the binary),
//! so every attestation on the connection refuses another process or another binary. The
//! connection must then send the 24-byte HTTP/2 preface within
//! [`ConnectionLimits::preface_timeout`]; garbage or silence is closed there, before any
//! HTTP/2 state is allocated, and without holding up other connections (each waits in its own
//! task). The bytes read are replayed to the HTTP/2 server ([`Rewind`]), and every later read
//! goes through [`AuthorityNormalizer`], so grpc-core clients' `:authority` reaches h2 valid.
//! A connection with no open stream for [`ConnectionLimits::idle_timeout`] is closed
//! ([`super::idle`]).
//!
//! One [`Acceptor`] feeds the HTTP/2 server: it runs the node socket's accept loop and one
//! for every pod socket ([`super::pods`]), all counted in the same budget; a pod socket's
//! connections carry that socket's pod ([`PinnedPeer::socket_pod`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use lanyard_daemon::rewind::Rewind;

use super::budget::{ConnectionBudget, ConnectionSlot};
use super::idle::{ConnectionActivity, IdleTimer};
use super::limits::ConnectionLimits;
use super::pods::SocketPod;
use crate::attest::{AttestError, PeerCred, PinnedProcess, WorkloadAttestor};
use crate::h2_authority::AuthorityNormalizer;

/// The first bytes of every HTTP/2 connection (RFC 9113 section 3.4).
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// Admitted connections waiting for the HTTP/2 server to pick them up.
const ADMITTED_QUEUE: usize = 64;

/// What the accept loop learnt of a connection's caller, attached by tonic to every request on
/// it (as connect info) and read by the admission layer only.
#[derive(Debug, Clone)]
pub struct PinnedPeer {
    /// The kernel's credentials of the peer, with the start time pinned when that worked.
    /// `None`: the kernel would not say (attestation then refuses).
    pub cred: Option<PeerCred>,
    /// The process that connected, pinned at accept (pidfd, start time, binary); calls are
    /// attested against it. `None` with `cred` set: only the start time in `cred` is pinned.
    pub pinned: Option<Arc<PinnedProcess>>,
    /// Why pinning failed at accept (e.g. the process already exited); every call on the
    /// connection is refused with it.
    pub pin_error: Option<Arc<AttestError>>,
    /// The connection's open streams, counted by the admission layer for the idle timeout.
    pub activity: Arc<ConnectionActivity>,
    /// The pod whose own socket the connection came in on; `None` on the node socket.
    pub socket_pod: Option<Arc<SocketPod>>,
}

impl PinnedPeer {
    /// A peer known by its credentials only (as pinned by [`WorkloadAttestor::pin`], if at
    /// all), for servers built outside [`incoming`] (benchmarks, tests).
    pub fn from_cred(cred: Option<PeerCred>) -> Self {
        Self {
            cred,
            pinned: None,
            pin_error: None,
            activity: ConnectionActivity::new(),
            socket_pod: None,
        }
    }
}

/// An admitted connection: the stream (its preface replayed, reads through
/// [`AuthorityNormalizer`]), its caller, its idle timer, and its slot in the connection budget
/// (freed when the HTTP/2 server drops the connection).
pub struct CallerConnection {
    stream: Rewind<AuthorityNormalizer<UnixStream>, &'static [u8]>,
    info: PinnedPeer,
    idle: IdleTimer,
    _slot: ConnectionSlot,
}

impl Connected for CallerConnection {
    type ConnectInfo = PinnedPeer;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for CallerConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(read) => Poll::Ready(read),
            // Idle for the timeout: end of file, and the HTTP/2 server closes the connection.
            Poll::Pending if self.idle.poll_expired(cx) => {
                tracing::debug!(
                    uid = self.info.cred.map(|c| c.uid),
                    "closed an idle agent socket connection"
                );
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for CallerConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Accepts connections on `listener` (see the module docs), for tonic's
/// `serve_with_incoming`. The accept loop runs in its own task and stops when the returned
/// stream is dropped.
pub fn incoming(
    listener: UnixListener,
    attestor: Arc<WorkloadAttestor>,
    limits: &ConnectionLimits,
) -> impl Stream<Item = io::Result<CallerConnection>> + Send + 'static {
    incoming_with_budget(listener, attestor, limits).0
}

/// [`incoming`], and the connection budget it counts in (to watch it).
pub fn incoming_with_budget(
    listener: UnixListener,
    attestor: Arc<WorkloadAttestor>,
    limits: &ConnectionLimits,
) -> (
    impl Stream<Item = io::Result<CallerConnection>> + Send + 'static,
    Arc<ConnectionBudget>,
) {
    let (acceptor, incoming) = Acceptor::new(attestor, limits);
    acceptor.spawn(listener, None);
    (incoming, acceptor.budget.clone())
}

/// Runs accept loops that feed one HTTP/2 server (see the module docs). Clones share the
/// budget and the server; the loops stop when the server drops its stream of connections.
#[derive(Clone)]
pub(crate) struct Acceptor {
    attestor: Arc<WorkloadAttestor>,
    budget: Arc<ConnectionBudget>,
    limits: ConnectionLimits,
    admitted: mpsc::Sender<io::Result<CallerConnection>>,
}

impl Acceptor {
    /// An acceptor, and the stream of admitted connections for the server.
    pub(crate) fn new(
        attestor: Arc<WorkloadAttestor>,
        limits: &ConnectionLimits,
    ) -> (Self, ReceiverStream<io::Result<CallerConnection>>) {
        let (admitted, rx) = mpsc::channel(ADMITTED_QUEUE);
        let budget = ConnectionBudget::new(limits.max_connections, limits.max_connections_per_uid);
        let acceptor = Self {
            attestor,
            budget,
            limits: limits.clone(),
            admitted,
        };
        (acceptor, ReceiverStream::new(rx))
    }

    /// Accepts on `listener` until the server stops or the task is aborted (which closes the
    /// listener); its connections carry `socket_pod`.
    pub(crate) fn spawn(
        &self,
        listener: UnixListener,
        socket_pod: Option<Arc<SocketPod>>,
    ) -> JoinHandle<()> {
        tokio::spawn(accept_loop(
            listener,
            self.attestor.clone(),
            self.budget.clone(),
            self.limits.clone(),
            self.admitted.clone(),
            socket_pod,
        ))
    }
}

async fn accept_loop(
    listener: UnixListener,
    attestor: Arc<WorkloadAttestor>,
    budget: Arc<ConnectionBudget>,
    limits: ConnectionLimits,
    admitted: mpsc::Sender<io::Result<CallerConnection>>,
    socket_pod: Option<Arc<SocketPod>>,
) {
    loop {
        let stream = tokio::select! {
            _ = admitted.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "agent socket accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let cred = stream.peer_cred().ok().map(PeerCred::from);
        let slot = match budget.try_admit(cred.map(|c| c.uid)) {
            Ok(slot) => slot,
            Err(why) => {
                // Closed at once: the client sees its connection end and retries later.
                tracing::debug!(
                    reason = %why,
                    uid = cred.map(|c| c.uid),
                    "closed an agent socket connection over budget"
                );
                continue;
            }
        };
        // Pinning reads two small procfs entries: cheap, and it must happen at once.
        let info = PinnedPeer {
            socket_pod: socket_pod.clone(),
            ..pin_peer(&stream, cred, &attestor)
        };
        let admitted = admitted.clone();
        let (preface_timeout, idle_timeout) = (limits.preface_timeout, limits.idle_timeout);
        tokio::spawn(async move {
            match read_preface(stream, preface_timeout).await {
                Ok(stream) => {
                    let connection = CallerConnection {
                        stream: Rewind::new(&HTTP2_PREFACE[..], AuthorityNormalizer::new(stream)),
                        idle: IdleTimer::new(info.activity.clone(), idle_timeout),
                        info,
                        _slot: slot,
                    };
                    // Fails only when the server has stopped; the connection is then dropped.
                    let _ = admitted.send(Ok(connection)).await;
                }
                Err(reason) => {
                    tracing::debug!(
                        reason,
                        uid = info.cred.map(|c| c.uid),
                        "closed an agent socket connection before HTTP/2"
                    );
                }
            }
        });
    }
}

fn pin_peer(
    stream: &UnixStream,
    cred: Option<PeerCred>,
    attestor: &WorkloadAttestor,
) -> PinnedPeer {
    use std::os::fd::AsFd as _;
    let Some(cred) = cred else {
        return PinnedPeer::from_cred(None);
    };
    match attestor.pin_socket(stream.as_fd(), cred) {
        Ok(pinned) => PinnedPeer {
            cred: Some(pinned.cred),
            pinned: Some(Arc::new(pinned)),
            ..PinnedPeer::from_cred(None)
        },
        Err(e) => PinnedPeer {
            cred: Some(cred),
            pin_error: Some(Arc::new(e)),
            ..PinnedPeer::from_cred(None)
        },
    }
}

/// Reads the HTTP/2 preface within `timeout`; the reason label when it does not come.
async fn read_preface(
    mut stream: UnixStream,
    timeout: Duration,
) -> Result<UnixStream, &'static str> {
    let mut preface = [0u8; HTTP2_PREFACE.len()];
    match tokio::time::timeout(timeout, stream.read_exact(&mut preface)).await {
        Err(_) => Err("preface_timeout"),
        Ok(Err(_)) => Err("closed_before_preface"),
        Ok(Ok(_)) if &preface != HTTP2_PREFACE => Err("not_http2"),
        Ok(Ok(_)) => Ok(stream),
    }
}

#[cfg(test)]
mod tests {
    use super::super::bind::bind;
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    fn test_limits() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: 2,
            preface_timeout: Duration::from_secs(5),
            ..ConnectionLimits::default()
        }
    }

    #[tokio::test]
    async fn admits_a_connection_that_sends_the_preface_and_replays_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = bind(&path).unwrap();
        let mut incoming = Box::pin(incoming(
            listener,
            Arc::new(WorkloadAttestor::default()),
            &test_limits(),
        ));
        let mut client = UnixStream::connect(&path).await.unwrap();
        client.write_all(HTTP2_PREFACE).await.unwrap();
        // An empty SETTINGS frame: what follows the preface passes the frame layer whole.
        let settings = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
        client.write_all(&settings).await.unwrap();

        let next = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_stream::StreamExt::next(&mut incoming),
        );
        let mut conn = next.await.unwrap().unwrap().unwrap();
        let cred = conn.info.cred.unwrap();
        assert_eq!(cred.pid, Some(std::process::id() as i32));
        assert!(cred.start_time.is_some(), "the caller is pinned at accept");
        assert!(conn.info.pin_error.is_none());
        let pinned = conn.info.pinned.clone().expect("pinned");
        assert!(pinned.has_pidfd(), "this kernel has SO_PEERPIDFD");
        assert_eq!(
            pinned.binary.path,
            std::fs::read_link("/proc/self/exe").unwrap()
        );

        let mut got = vec![0u8; HTTP2_PREFACE.len() + settings.len()];
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..24], HTTP2_PREFACE);
        assert_eq!(&got[24..], settings);
    }

    #[tokio::test(start_paused = true)]
    async fn garbage_and_silence_never_reach_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = bind(&path).unwrap();
        let mut incoming = Box::pin(incoming(
            listener,
            Arc::new(WorkloadAttestor::default()),
            &ConnectionLimits {
                max_connections: 8,
                ..test_limits()
            },
        ));
        let mut garbage = UnixStream::connect(&path).await.unwrap();
        garbage.write_all(&[0x16; 24]).await.unwrap();
        let _silent = UnixStream::connect(&path).await.unwrap();

        // Garbage is closed at once; silence after the timeout (paused clock).
        let mut buf = [0u8; 1];
        assert_eq!(garbage.read(&mut buf).await.unwrap(), 0);
        let next = tokio::time::timeout(
            Duration::from_secs(30),
            tokio_stream::StreamExt::next(&mut incoming),
        );
        assert!(next.await.is_err(), "nothing was admitted");
    }
}
