//! The connecting process, held by the kernel: `SO_PEERPIDFD` (Linux 6.5+) gives a pidfd for
//! the process that called `connect()`, whenever the socket is asked, even if the agent
//! accepts it much later. A pidfd refers to that one process, never to a later one that reuses
//! its PID: once the process has exited and been reaped, the `Pid:` line of the pidfd's
//! `/proc/self/fdinfo/<fd>` reads `-1` (and `pidfd_send_signal(fd, 0)` fails with `ESRCH`).
//!
//! So "the pidfd still shows PID p" read *after* collecting selectors from `/proc/<p>` proves
//! that everything read belonged to the connecting process: PID p cannot be given to another
//! process while the connecting one still holds it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `SO_PEERPIDFD` from `<asm-generic/socket.h>` (the same on x86_64 and aarch64); libc 0.2
/// does not export it yet.
pub const SO_PEERPIDFD: libc::c_int = 77;

/// A pidfd for a socket's peer process.
#[derive(Debug)]
pub struct PeerPidfd(OwnedFd);

/// What `SO_PEERPIDFD` said about a socket's peer.
#[derive(Debug)]
pub enum PeerPidfdResult {
    /// A pidfd for the connecting process.
    Pidfd(PeerPidfd),
    /// The connecting process has already exited (no pidfd can be made for it).
    Gone,
    /// The kernel does not have `SO_PEERPIDFD` (before 6.5): fall back to start times.
    Unsupported,
}

impl PeerPidfd {
    /// Asks the kernel for a pidfd of `socket`'s peer.
    pub fn of_socket(socket: BorrowedFd<'_>) -> io::Result<PeerPidfdResult> {
        let mut fd: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `socket` is a live descriptor for the call; `fd` and `len` are live locals
        // of the size passed in `len`, which the kernel writes at most.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERPIDFD,
                (&raw mut fd).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENOPROTOOPT) => Ok(PeerPidfdResult::Unsupported),
                // Kernels before pidfds for reaped tasks refuse an exited peer so.
                Some(libc::EINVAL | libc::ESRCH) => Ok(PeerPidfdResult::Gone),
                _ => Err(err),
            };
        }
        if fd < 0 {
            return Ok(PeerPidfdResult::Unsupported);
        }
        // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
        let pidfd = Self(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(PeerPidfdResult::Pidfd(pidfd))
    }

    /// A pidfd for process `pid` of this PID namespace (`pidfd_open`), for tests and tools.
    pub fn open(pid: i32) -> io::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor the kernel just returned; nothing else owns it.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }))
    }

    /// The process's PID as this process's procfs sees it, or `None` once it has exited and
    /// been reaped (its PID may then belong to another process).
    pub fn pid(&self) -> io::Result<Option<i32>> {
        let path = format!("/proc/self/fdinfo/{}", self.0.as_raw_fd());
        let text = std::fs::read_to_string(path)?;
        let pid = text
            .lines()
            .find_map(|l| l.strip_prefix("Pid:"))
            .and_then(|v| v.trim().parse::<i32>().ok())
            .ok_or_else(|| io::Error::other("no Pid: line in the pidfd's fdinfo"))?;
        Ok((pid > 0).then_some(pid))
    }

    /// Whether the process still exists (a zombie counts as existing: its PID is not free).
    pub fn alive(&self) -> bool {
        // SAFETY: pidfd_send_signal with signal 0 only checks that the process exists and may
        // be signalled; the fd is live for the call, and a null siginfo is allowed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                0,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd as _;
    use std::process::Command;

    #[test]
    fn peer_pidfd_of_a_socket_pair_is_this_process() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        match PeerPidfd::of_socket(a.as_fd()).unwrap() {
            PeerPidfdResult::Pidfd(pidfd) => {
                assert_eq!(pidfd.pid().unwrap(), Some(std::process::id() as i32));
                assert!(pidfd.alive());
            }
            other => panic!("this kernel has SO_PEERPIDFD (6.5+): {other:?}"),
        }
    }

    #[test]
    fn a_reaped_process_reads_minus_one() {
        let mut child = Command::new("/bin/true").spawn().unwrap();
        let pidfd = PeerPidfd::open(child.id() as i32).unwrap();
        child.wait().unwrap();
        assert_eq!(pidfd.pid().unwrap(), None);
        assert!(!pidfd.alive());
    }
}
