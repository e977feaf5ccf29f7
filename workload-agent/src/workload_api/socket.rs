//! The Workload API's Unix socket: binding it safely, and admitting connections.
//!
//! Binding ([`bind`]): the parent directory is created 0755 when missing; a socket left by a
//! previous run is replaced, but only if nothing answers on it (a running agent is never
//! unplugged) and only if it *is* a socket (a regular file at the path is refused, never
//! deleted); the new socket is made 0777, because who a caller is comes from the kernel's
//! peer credentials, not from who may connect.
//!
//! Admission ([`incoming`]): each accepted connection gets its peer credentials read and, when
//! the attestor can, the caller's process pinned (its start time recorded, see
//! [`WorkloadAttestor::pin`]) at once, so a PID reused later on is caught by every attestation
//! on that connection. The connection must then send the 24-byte HTTP/2 preface within
//! [`Limits::preface_timeout`]; garbage or silence is closed there, before any HTTP/2 state is
//! allocated, and without holding up other connections (each waits in its own task). The bytes
//! read are replayed to the HTTP/2 server. Open connections are bounded by
//! [`Limits::max_connections`]: past it, new ones wait in the kernel's listen backlog.

use std::io;
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
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

use super::limits::Limits;
use crate::attest::{AttestError, PeerCred, WorkloadAttestor};
use crate::h2_authority::AuthorityNormalizer;

/// The first bytes of every HTTP/2 connection (RFC 9113 section 3.4).
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// Admitted connections waiting for the HTTP/2 server to pick them up.
const ADMITTED_QUEUE: usize = 64;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("creating the socket directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("{path} exists and is not a socket; refusing to delete it (remove it yourself)")]
    NotASocket { path: PathBuf },
    #[error("another process is serving on {path}; stop it first")]
    InUse { path: PathBuf },
    #[error("removing the stale socket {path}: {source}")]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("binding {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("making {path} 0777: {source}")]
    Chmod { path: PathBuf, source: io::Error },
    #[error("the socket path {path} has no parent directory")]
    NoParent { path: PathBuf },
}

/// Binds the Workload API socket at `path` (see the module docs). Needs a tokio runtime.
pub fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| SocketError::NoParent {
            path: path.to_owned(),
        })?;
    if !parent.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .and_then(|()| {
                // The umask may have narrowed the mode; callers of every uid must reach the socket.
                std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))
            })
            .map_err(|source| SocketError::CreateDir {
                path: parent.to_owned(),
                source,
            })?;
    }
    remove_stale(path)?;
    let listener =
        std::os::unix::net::UnixListener::bind(path).map_err(|source| SocketError::Bind {
            path: path.to_owned(),
            source,
        })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).map_err(|source| {
        SocketError::Chmod {
            path: path.to_owned(),
            source,
        }
    })?;
    let bind_error = |source| SocketError::Bind {
        path: path.to_owned(),
        source,
    };
    listener.set_nonblocking(true).map_err(bind_error)?;
    UnixListener::from_std(listener).map_err(bind_error)
}

/// Removes a socket left at `path` by an earlier run; refuses anything else.
fn remove_stale(path: &Path) -> Result<(), SocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SocketError::RemoveStale {
                path: path.to_owned(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket {
            path: path.to_owned(),
        });
    }
    // A connect to a Unix socket completes or fails at once: it does not block on a peer.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(SocketError::InUse {
            path: path.to_owned(),
        });
    }
    std::fs::remove_file(path).map_err(|source| SocketError::RemoveStale {
        path: path.to_owned(),
        source,
    })
}

/// What the server knows of a connection's caller, attached by tonic to every request on it.
#[derive(Debug, Clone)]
pub struct CallerInfo {
    /// The kernel's credentials of the peer, with the start time pinned when that worked.
    /// `None`: the kernel would not say (attestation then refuses).
    pub cred: Option<PeerCred>,
    /// Why pinning failed at accept (e.g. the process already exited); every call on the
    /// connection is refused with it.
    pub pin_error: Option<Arc<AttestError>>,
}

/// An admitted connection: the stream, the preface bytes to replay, its caller, and its slot
/// in the connection budget (freed when the HTTP/2 server drops the connection). Reads go
/// through [`AuthorityNormalizer`], so grpc-core clients' `:authority` reaches h2 valid.
pub struct CallerConnection {
    stream: AuthorityNormalizer<UnixStream>,
    replay: &'static [u8],
    info: CallerInfo,
    _permit: OwnedSemaphorePermit,
}

impl Connected for CallerConnection {
    type ConnectInfo = CallerInfo;

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
        let this = &mut *self;
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay = &this.replay[n..];
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
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

/// Accepts and admits connections on `listener` (see the module docs), for tonic's
/// `serve_with_incoming`. The accept loop runs in its own task and stops when the returned
/// stream is dropped.
pub fn incoming(
    listener: UnixListener,
    attestor: Arc<WorkloadAttestor>,
    limits: &Limits,
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
                    tracing::warn!(error = %e, "workload API accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        // Pinning reads one small procfs file: cheap, and it must happen as early as possible.
        let info = caller_info(&stream, &attestor);
        let admitted = admitted.clone();
        tokio::spawn(async move {
            match read_preface(stream, preface_timeout).await {
                Ok(stream) => {
                    let connection = CallerConnection {
                        stream: AuthorityNormalizer::new(stream),
                        replay: HTTP2_PREFACE,
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
                        "closed a workload API connection before HTTP/2"
                    );
                }
            }
        });
    }
}

fn caller_info(stream: &UnixStream, attestor: &WorkloadAttestor) -> CallerInfo {
    let Ok(cred) = stream.peer_cred() else {
        return CallerInfo {
            cred: None,
            pin_error: None,
        };
    };
    let cred = PeerCred::from(cred);
    match attestor.pin(cred) {
        Ok(pinned) => CallerInfo {
            cred: Some(pinned),
            pin_error: None,
        },
        Err(e) => CallerInfo {
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
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    fn test_limits() -> Limits {
        Limits {
            max_connections: 2,
            preface_timeout: Duration::from_secs(5),
            ..Limits::default()
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
            &Limits {
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
