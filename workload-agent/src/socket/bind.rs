//! Binding the agent's Unix socket safely, and removing it when the server stops.
//!
//! The parent directory is created 0755 when missing; a socket left by a previous run is
//! replaced, but only if nothing answers on it (a running agent is never unplugged) and only
//! if it *is* a socket (a regular file at the path is refused, never deleted); the new socket
//! is made 0777, because who a caller is comes from the kernel's peer credentials, not from
//! who may connect.

use std::io;
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

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
    #[error("making {path} {mode:o}: {source}")]
    Chmod {
        path: PathBuf,
        mode: u32,
        source: io::Error,
    },
    #[error("the socket path {path} has no parent directory")]
    NoParent { path: PathBuf },
}

/// Binds the agent's socket at `path` (see the module docs). Needs a tokio runtime.
pub fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    bind_mode(path, 0o777)
}

/// [`bind`], the socket made `mode` rather than 0777 (e.g. 0600 for the CSI socket, which
/// only the kubelet calls).
pub fn bind_mode(path: &Path, mode: u32) -> Result<UnixListener, SocketError> {
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
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        SocketError::Chmod {
            path: path.to_owned(),
            mode,
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

/// Removes the socket file when dropped (the server stopped), so a stale socket does not
/// linger.
#[derive(Debug)]
pub(crate) struct RemoveOnDrop(pub(crate) PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
