//! Accepting connections on the agent's socket: the caller pinned at accept, the HTTP/2
//! preface within a timeout, the connection budget, and the `:authority` frame layer.
//!
//! Each accepted connection gets its peer credentials read and, when the attestor can, the
//! caller's process pinned (its start time recorded, see [`WorkloadAttestor::pin`]) at once,
//! so a PID reused later on is caught by every attestation on that connection. The connection
//! must then send the 24-byte HTTP/2 preface within [`ConnectionLimits::preface_timeout`];
//! garbage or silence is closed there, before any HTTP/2 state is allocated, and without
//! holding up other connections (each waits in its own task). The bytes read are replayed to
//! the HTTP/2 server ([`Rewind`]), and every later read goes through [`AuthorityNormalizer`],
//! so grpc-core clients' `:authority` reaches h2 valid. Open connections are bounded by
//! [`ConnectionLimits::max_connections`]: past it, new ones wait in the kernel's listen
//! backlog.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use lanyard_daemon::rewind::Rewind;

use super::limits::ConnectionLimits;
use crate::attest::{AttestError, PeerCred, WorkloadAttestor};
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
    /// Why pinning failed at accept (e.g. the process already exited); every call on the
    /// connection is refused with it.
    pub pin_error: Option<Arc<AttestError>>,
}

/// An admitted connection: the stream (its preface replayed, reads through
/// [`AuthorityNormalizer`]), its caller, and its slot in the connection budget (freed when the
/// HTTP/2 server drops the connection).
pub struct CallerConnection {
    stream: Rewind<AuthorityNormalizer<UnixStream>, &'static [u8]>,
    info: PinnedPeer,
    _permit: OwnedSemaphorePermit,
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
        Pin::new(&mut self.stream).poll_read(cx, buf)
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

/// Accepts connections on `listener` (see the module docs), for tonic's `serve_with_incoming`. The accept loop runs in its own task and stops when the returned
/// stream is dropped.
pub fn incoming(
    listener: UnixListener,
    attestor: Arc<WorkloadAttestor>,
    limits: &ConnectionLimits,
) -> impl Stream<Item = io::Result<CallerConnection>> + Send + 'static {
    let (admitted, rx) = mpsc::channel(ADMITTED_QUEUE);
    let budget = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let preface_timeout = limits.preface_timeout;
    tokio::spawn(accept_loop(
        listener,
        attestor,
        budget,
        preface_timeout,
        admitted,
    ));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: UnixListener,
    attestor: Arc<WorkloadAttestor>,
    budget: Arc<Semaphore>,
    preface_timeout: Duration,
    admitted: mpsc::Sender<io::Result<CallerConnection>>,
) {
    loop {
        let permit = tokio::select! {
            _ = admitted.closed() => return,
            permit = budget.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
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
        // Pinning reads one small procfs file: cheap, and it must happen as early as possible.
        let info = pin_peer(&stream, &attestor);
        let admitted = admitted.clone();
        tokio::spawn(async move {
            match read_preface(stream, preface_timeout).await {
                Ok(stream) => {
                    let connection = CallerConnection {
                        stream: Rewind::new(&HTTP2_PREFACE[..], AuthorityNormalizer::new(stream)),
                        info,
                        _permit: permit,
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

fn pin_peer(stream: &UnixStream, attestor: &WorkloadAttestor) -> PinnedPeer {
    let Ok(cred) = stream.peer_cred() else {
        return PinnedPeer {
            cred: None,
            pin_error: None,
        };
    };
    let cred = PeerCred::from(cred);
    match attestor.pin(cred) {
        Ok(pinned) => PinnedPeer {
            cred: Some(pinned),
            pin_error: None,
        },
        Err(e) => PinnedPeer {
            cred: Some(cred),
            pin_error: Some(Arc::new(e)),
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
