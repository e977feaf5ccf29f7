//! The kernel's word on who is calling: the peer credentials of a Unix-socket connection.
//!
//! `SO_PEERCRED` is read once, when the connection is accepted; the PID in it may since have
//! exited and been reused. [`PeerCred::start_time`] lets the acceptor pin the process it saw
//! (see [`super::WorkloadAttestor::pin`]), so later attestations on the connection refuse a
//! different process that happens to have the same PID.

/// A caller's credentials from its Unix socket, plus the process start time pinned at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// The peer's PID; `None` when the kernel could not say (e.g. a PID from another PID
    /// namespace that does not map into ours).
    pub pid: Option<i32>,
    pub uid: u32,
    pub gid: u32,
    /// The peer process's start time (clock ticks since boot) as first seen, if pinned.
    pub start_time: Option<u64>,
}

impl PeerCred {
    /// Credentials with nothing pinned.
    pub fn new(pid: Option<i32>, uid: u32, gid: u32) -> Self {
        Self {
            pid,
            uid,
            gid,
            start_time: None,
        }
    }
}

impl From<tokio::net::unix::UCred> for PeerCred {
    fn from(cred: tokio::net::unix::UCred) -> Self {
        Self::new(cred.pid(), cred.uid(), cred.gid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn from_tokio_ucred_of_a_real_socket_pair() {
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let cred = PeerCred::from(a.peer_cred().unwrap());
        assert_eq!(cred.pid, Some(std::process::id() as i32));
        // SAFETY: getuid and getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        assert_eq!((cred.uid, cred.gid, cred.start_time), (uid, gid, None));
    }
}
