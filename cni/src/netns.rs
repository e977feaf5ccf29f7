//! Running work inside the pod's network namespace (`CNI_NETNS`) while the rest of the process
//! stays in the node's: a dedicated thread enters it with `setns(CLONE_NEWNET)`, runs the
//! closure (the iptables commands it starts inherit the thread's namespace) and ends, so no
//! other thread ever changes namespace.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why the namespace could not be entered.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("the network namespace {0} does not exist (any more)")]
    Gone(PathBuf),
    #[error("opening the network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("entering the network namespace {path} (is it one?): {source}")]
    Enter {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the thread in the network namespace {0} panicked")]
    Panicked(PathBuf),
}

/// Whether `path` is this process's own network namespace (the node's, for a plugin the
/// runtime runs): a pod using the host network must never get pod rules.
pub fn is_own_namespace(path: &Path) -> Result<bool, NetnsError> {
    let theirs = std::fs::metadata(path).map_err(|source| open_error(path, source))?;
    let ours = std::fs::metadata("/proc/thread-self/ns/net")
        .or_else(|_| std::fs::metadata("/proc/self/ns/net"))
        .map_err(|source| NetnsError::Open {
            path: "/proc/self/ns/net".into(),
            source,
        })?;
    Ok(theirs.dev() == ours.dev() && theirs.ino() == ours.ino())
}

fn open_error(path: &Path, source: io::Error) -> NetnsError {
    if source.kind() == io::ErrorKind::NotFound {
        NetnsError::Gone(path.to_owned())
    } else {
        NetnsError::Open {
            path: path.to_owned(),
            source,
        }
    }
}

/// Runs `f` on a new thread inside the network namespace at `path`, returning its result.
pub fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let file = File::open(path).map_err(|source| open_error(path, source))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns changes only the calling thread's network namespace (a
                // multithreaded process may do that for one thread), and this thread is
                // ours alone and ends after `f`; the fd is open for the whole call.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(NetnsError::Enter {
                        path: path.to_owned(),
                        source: io::Error::last_os_error(),
                    });
                }
                Ok(f())
            })
            .join()
            .map_err(|_| NetnsError::Panicked(path.to_owned()))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_namespace_is_recognised_and_a_missing_one_is_gone() {
        assert!(is_own_namespace(Path::new("/proc/self/ns/net")).unwrap());
        assert!(matches!(
            is_own_namespace(Path::new("/nonexistent/netns")),
            Err(NetnsError::Gone(_))
        ));
        assert!(matches!(
            run_in(Path::new("/nonexistent/netns"), || ()),
            Err(NetnsError::Gone(_))
        ));
    }

    #[test]
    fn a_file_that_is_no_namespace_cannot_be_entered() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = run_in(file.path(), || ()).unwrap_err();
        assert!(matches!(err, NetnsError::Enter { .. }), "{err}");
    }

    /// Entering our own namespace (root: CAP_SYS_ADMIN) runs the closure there.
    #[test]
    fn the_closure_runs_and_returns() {
        let inside = run_in(Path::new("/proc/self/ns/net"), || {
            is_own_namespace(Path::new("/proc/self/ns/net")).unwrap()
        });
        assert!(inside.unwrap());
    }
}
