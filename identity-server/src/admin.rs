//! The admin socket: how `lanyard-server token generate`, `agent evict` and `bundle show`
//! reach the running server, rather than touching files the server is also writing.
//!
//! A Unix socket at `<data-dir>/admin/admin.sock`, in a 0700 directory, speaking one JSON
//! request line and one JSON response line per connection. The caller's uid (from the
//! kernel) must be the server's own uid or root; anyone else is refused before a byte is read.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use lanyard_daemon::private_file::ensure_dir;

/// Longest request or response line.
const MAX_LINE: usize = 64 * 1024;
/// A client that does not finish its request in this time is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminRequest {
    TokenGenerate { node: Option<String>, ttl_secs: u64 },
    AgentEvict { node: String },
    BundleShow,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AdminResponse {
    Token { token: String, node: String },
    Evicted { node: String },
    Bundle { pem: String },
    Error { message: String },
}

/// What the server does for each admin request.
pub trait AdminHandler: Send + Sync + 'static {
    fn handle(&self, request: AdminRequest) -> AdminResponse;
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot reach the server's admin socket at {path}: {source} (is `lanyard-server run` running with this --data-dir?)"
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin socket protocol error: {0}")]
    Protocol(String),
    #[error("timed out talking to the admin socket")]
    Timeout,
}

/// Where the admin socket of a data dir lives.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin").join("admin.sock")
}

/// Binds the admin socket (replacing a stale one) and serves it until the task is dropped.
pub fn serve(
    data_dir: &Path,
    handler: Arc<dyn AdminHandler>,
) -> Result<tokio::task::JoinHandle<()>, AdminError> {
    let path = socket_path(data_dir);
    let io = |source| AdminError::Io {
        path: path.clone(),
        source,
    };
    ensure_dir(path.parent().expect("has parent"), 0o700).map_err(io)?;
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(&path).map_err(io)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let own_uid = unsafe { libc::geteuid() };
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_one(stream, own_uid, handler).await {
                    tracing::warn!(error = %e, "admin request failed");
                }
            });
        }
    }))
}

async fn serve_one(
    mut stream: UnixStream,
    own_uid: u32,
    handler: Arc<dyn AdminHandler>,
) -> Result<(), AdminError> {
    let peer_uid = stream
        .peer_cred()
        .map_err(|e| AdminError::Protocol(e.to_string()))?
        .uid();
    if peer_uid != own_uid && peer_uid != 0 {
        tracing::warn!(
            peer_uid,
            "admin socket: refused a caller that is neither root nor the server's user"
        );
        let refusal = AdminResponse::Error {
            message: format!("uid {peer_uid} may not administer this server"),
        };
        return write_line(&mut stream, &refusal).await;
    }
    let response = match read_line::<AdminRequest>(&mut stream).await {
        Ok(request) => handler.handle(request),
        Err(e) => AdminResponse::Error {
            message: format!("bad request: {e}"),
        },
    };
    write_line(&mut stream, &response).await
}

async fn read_line<T: for<'de> Deserialize<'de>>(stream: &mut UnixStream) -> Result<T, AdminError> {
    let mut reader = BufReader::new(stream).take(MAX_LINE as u64 + 1);
    let mut line = String::new();
    tokio::time::timeout(IO_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| AdminError::Timeout)?
        .map_err(|e| AdminError::Protocol(e.to_string()))?;
    if line.len() > MAX_LINE {
        return Err(AdminError::Protocol("line too long".into()));
    }
    serde_json::from_str(line.trim_end()).map_err(|e| AdminError::Protocol(e.to_string()))
}

async fn write_line<T: Serialize>(stream: &mut UnixStream, value: &T) -> Result<(), AdminError> {
    let mut line = serde_json::to_vec(value).expect("admin messages serialise");
    line.push(b'\n');
    tokio::time::timeout(IO_TIMEOUT, stream.write_all(&line))
        .await
        .map_err(|_| AdminError::Timeout)?
        .map_err(|e| AdminError::Protocol(e.to_string()))
}

/// Sends one request to the server running on `data_dir` and returns its response.
pub async fn call(data_dir: &Path, request: &AdminRequest) -> Result<AdminResponse, AdminError> {
    let path = socket_path(data_dir);
    let mut stream = UnixStream::connect(&path)
        .await
        .map_err(|source| AdminError::Connect { path, source })?;
    write_line(&mut stream, request).await?;
    read_line(&mut stream).await
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl AdminHandler for Echo {
        fn handle(&self, request: AdminRequest) -> AdminResponse {
            match request {
                AdminRequest::AgentEvict { node } => AdminResponse::Evicted { node },
                other => AdminResponse::Error {
                    message: format!("{other:?}"),
                },
            }
        }
    }

    #[tokio::test]
    async fn round_trip_and_private_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _server = serve(dir.path(), Arc::new(Echo)).unwrap();
        let response = call(dir.path(), &AdminRequest::AgentEvict { node: "n1".into() })
            .await
            .unwrap();
        assert_eq!(response, AdminResponse::Evicted { node: "n1".into() });
        let mode = lanyard_daemon::private_file::mode_of(&dir.path().join("admin")).unwrap();
        assert_eq!(mode, 0o700);
    }

    #[tokio::test]
    async fn garbage_gets_an_error_and_the_server_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let _server = serve(dir.path(), Arc::new(Echo)).unwrap();
        let mut raw = UnixStream::connect(socket_path(dir.path())).await.unwrap();
        raw.write_all(b"{\"op\":\"format_disk\"}\n").await.unwrap();
        let mut reply = String::new();
        raw.read_to_string(&mut reply).await.unwrap();
        assert!(
            reply.contains("bad request") && reply.contains("format_disk"),
            "{reply}"
        );
        let response = call(dir.path(), &AdminRequest::AgentEvict { node: "n2".into() })
            .await
            .unwrap();
        assert_eq!(response, AdminResponse::Evicted { node: "n2".into() });
    }

    #[tokio::test]
    async fn no_server_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = call(dir.path(), &AdminRequest::BundleShow)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("is `lanyard-server run` running"),
            "{err}"
        );
    }
}
