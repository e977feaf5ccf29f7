//! Workload attestation: from a Unix-socket caller's kernel credentials to its selectors.
//!
//! [`WorkloadAttestor::attest`] turns a [`PeerCred`] (pid, uid, gid) into the `unix`
//! selectors (uid, gid, user, group, binary path and sha256) and, when the process runs in a
//! kubelet-managed container, the pod UID and container ID (as `k8s:pod-uid` and
//! `k8s:container-id` selectors and as a [`PodContainer`]). The other `k8s` selectors
//! (namespace, service account, labels..., and `k8s:container-name`, that container ID's name
//! in the pod) come from the server's pod feed, keyed by that pod UID, and are added by the
//! caller (`crate::manager::resolve`).
//!
//! PID reuse. A PID names a process only while it lives. A connection is pinned to the process
//! that connected ([`WorkloadAttestor::pin_socket`], called at accept):
//! - With `SO_PEERPIDFD` (Linux 6.5+, see [`pidfd`]) the kernel hands over a pidfd for the
//!   process that called `connect()`, however late the agent accepts. Its fdinfo `Pid:` is
//!   read before and *after* the selectors are collected from `/proc/<pid>`: while it still
//!   shows the PID, that PID cannot have been given to another process, so everything read in
//!   between was the connecting process's. An exited process refuses (`process_gone`). No PID
//!   that can have been recycled is ever attested.
//! - Without it (older kernels), the fallback: the process start time (field 22 of
//!   `/proc/<pid>/stat`) pinned at accept and compared before and after the selectors are
//!   collected (`pid_reused`, `process_gone`). The window between the peer's `connect()` and
//!   the accept stays open there: the accept loop accepts at once, even when the connection
//!   budget is full, to keep it short. Start times have clock-tick (10 ms) resolution.
//!
//! Exec. `execve` keeps the PID (and the pidfd), so the binary is pinned too: its device,
//! inode and path ([`process::BinaryId`]) at accept, compared before and after every
//! attestation; a different binary refuses (`binary_changed`). This stops "connect, fork,
//! exec the allowed binary in the parent, call from the child". It cannot stop a process that
//! execs the allowed binary *before* the agent accepts (microseconds with a prompt accept), nor
//! a same-uid attacker who ptraces or injects code into the allowed process: `unix:path` and
//! `unix:sha256` prove what binary the connecting process ran when it connected, not what
//! code runs in it (see docs/SECURITY.md).
//!
//! Pod sockets. A caller that came in on a pod's own socket (a CSI volume the kubelet published
//! for that pod, see `crate::csi`) is in that pod by how it reached the agent: its pod comes
//! from the mount ([`SocketOrigin::Pod`]), not from `/proc/<pid>/cgroup`. The cgroup is still
//! read, for the container ID and as a cross-check only: a cgroup naming *another* pod refuses
//! (`pod_mismatch`); one naming no pod (a layout the parser does not know) leaves the pod from
//! the mount in place.
//!
//! Blocking. One attestation reads five small `/proc` files, may hash a binary (the first
//! time a version of it is seen; see [`digest`]) and asks NSS for names, which can mean a
//! network round trip to a directory service. So [`WorkloadAttestor::attest`] runs it on
//! tokio's blocking pool. [`WorkloadAttestor::pin`] reads one `/proc/<pid>/stat` (a few
//! hundred bytes from procfs, no disk, no network) and is cheap enough to run inline.

pub mod cgroup;
pub mod digest;
pub mod peer;
pub mod pidfd;
pub mod process;
pub mod unix;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lanyard_svid::selector::{Selector, SelectorError, SelectorKey, SelectorSet};

pub use cgroup::{CgroupError, PodContainer, parse_cgroup_file};
pub use digest::DigestCache;
pub use peer::PeerCred;
pub use pidfd::{PeerPidfd, PeerPidfdResult};
pub use process::{BinaryId, ProcDir, ProcessError};
pub use unix::UnixError;

/// Where procfs is mounted on a normal host.
pub const DEFAULT_PROC_ROOT: &str = "/proc";

/// What attestation found out about a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    /// `unix:*` selectors, plus `k8s:pod-uid` (and `k8s:container-id` when its cgroup names
    /// one) for a caller in a pod.
    pub selectors: SelectorSet,
    /// The pod and container its cgroup names, if it names one.
    pub pod: Option<PodContainer>,
    /// The pod whose own socket the caller came in on (canonical UID), known from the CSI
    /// mount; `None` on the node socket.
    pub socket_pod: Option<String>,
}

impl Attested {
    /// The caller's pod UID: the pod of the socket it came in on, else its cgroup's pod.
    pub fn pod_uid(&self) -> Option<&str> {
        self.socket_pod
            .as_deref()
            .or_else(|| self.pod.as_ref().map(PodContainer::pod_uid))
    }
}

/// Which socket a caller came in on: what the agent knows of it before looking at `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketOrigin {
    /// The node's socket: any local process; its pod (if any) comes from its cgroup.
    Node,
    /// A pod's own socket, published into that pod only: the pod's canonical UID.
    Pod(String),
}

/// Why a caller could not be attested. `Display` is a snake_case label, usable as a metric
/// label; [`AttestError::message`] is the human explanation.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The kernel gave no PID for the peer (e.g. it is in a PID namespace we cannot see).
    #[error("no_pid")]
    NoPid,
    /// The caller's PID now belongs to another process.
    #[error("pid_reused")]
    PidReused { pid: i32, expected: u64, found: u64 },
    /// `/proc/<pid>` could not be read, or the process has exited.
    #[error("{}", .0.label())]
    Process(ProcessError),
    /// The process runs another binary than when it connected (it called `execve`).
    #[error("binary_changed")]
    BinaryChanged {
        pid: i32,
        pinned: PathBuf,
        now: PathBuf,
    },
    /// The caller's binary could not be attested.
    #[error("{}", .0.label())]
    Unix(UnixError),
    /// The caller's cgroup file names a pod but not in a way we can trust.
    #[error("{}", .1.label())]
    Cgroup(i32, CgroupError),
    /// The caller came in on a pod's own socket, but its cgroup names another pod.
    #[error("pod_mismatch")]
    PodMismatch {
        pid: i32,
        socket_pod: String,
        cgroup_pod: String,
    },
    /// More selectors than a set may hold (cannot happen with the selectors collected here).
    #[error("too_many_selectors")]
    Selectors(SelectorError),
    /// The blocking task died (a bug: it panicked).
    #[error("internal")]
    Internal(String),
}

impl AttestError {
    /// The snake_case label (same as `Display`), e.g. `process_gone`, `pid_reused`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoPid => "no_pid",
            Self::PidReused { .. } => "pid_reused",
            Self::BinaryChanged { .. } => "binary_changed",
            Self::Process(e) => e.label(),
            Self::Unix(e) => e.label(),
            Self::Cgroup(_, e) => e.label(),
            Self::PodMismatch { .. } => "pod_mismatch",
            Self::Selectors(_) => "too_many_selectors",
            Self::Internal(_) => "internal",
        }
    }

    /// A human explanation.
    pub fn message(&self) -> String {
        match self {
            Self::NoPid => "the kernel gave no PID for the caller; the agent must run in the \
                            host PID namespace"
                .to_owned(),
            Self::PidReused {
                pid,
                expected,
                found,
            } => format!(
                "PID {pid} now belongs to another process (start time {found}, expected \
                 {expected}); the caller exited"
            ),
            Self::BinaryChanged { pid, pinned, now } => format!(
                "process {pid} runs {} but ran {} when it connected; a connection is attested \
                 as the binary that opened it",
                now.display(),
                pinned.display()
            ),
            Self::Process(e) => e.to_string(),
            Self::Unix(e) => e.to_string(),
            Self::Cgroup(pid, e) => format!("process {pid}: {e}"),
            Self::PodMismatch {
                pid,
                socket_pod,
                cgroup_pod,
            } => format!(
                "process {pid} runs in pod {cgroup_pod} (its cgroup) but called on the socket \
                 published to pod {socket_pod}; a pod's socket serves that pod only"
            ),
            Self::Selectors(e) => e.to_string(),
            Self::Internal(why) => format!("attestation task failed: {why}"),
        }
    }
}

impl From<ProcessError> for AttestError {
    fn from(e: ProcessError) -> Self {
        Self::Process(e)
    }
}

impl From<UnixError> for AttestError {
    fn from(e: UnixError) -> Self {
        match e {
            // One label for a vanished process, wherever it was noticed.
            UnixError::Process(e) => Self::Process(e),
            e => Self::Unix(e),
        }
    }
}

/// Attests Unix-socket callers. Cheap to clone; clones share the digest cache.
#[derive(Clone)]
pub struct WorkloadAttestor {
    inner: Arc<Inner>,
    /// Ask sockets for `SO_PEERPIDFD` (off only to test the start-time fallback).
    peer_pidfd: bool,
}

struct Inner {
    proc_root: PathBuf,
    digests: DigestCache,
}

/// A connection's caller as pinned at accept: its credentials (start time recorded), the
/// binary it ran, and a pidfd for it when the kernel gave one.
#[derive(Debug)]
pub struct PinnedProcess {
    pub cred: PeerCred,
    pub binary: BinaryId,
    pidfd: Option<PeerPidfd>,
}

impl PinnedProcess {
    /// Whether the pin holds a pidfd (`SO_PEERPIDFD`), rather than the start time only.
    pub fn has_pidfd(&self) -> bool {
        self.pidfd.is_some()
    }
}

impl Default for WorkloadAttestor {
    fn default() -> Self {
        Self::new(DEFAULT_PROC_ROOT, DigestCache::default())
    }
}

impl WorkloadAttestor {
    /// An attestor reading processes under `proc_root` (normally [`DEFAULT_PROC_ROOT`]).
    pub fn new(proc_root: impl Into<PathBuf>, digests: DigestCache) -> Self {
        Self {
            inner: Arc::new(Inner {
                proc_root: proc_root.into(),
                digests,
            }),
            peer_pidfd: true,
        }
    }

    /// This attestor, never asking for `SO_PEERPIDFD`: pins by start time only, as on a
    /// kernel before 6.5 (to test the fallback).
    pub fn without_peer_pidfd(self) -> Self {
        Self {
            peer_pidfd: false,
            ..self
        }
    }

    pub fn proc_root(&self) -> &Path {
        &self.inner.proc_root
    }

    /// The shared digest cache (for metrics and tests).
    pub fn digests(&self) -> &DigestCache {
        &self.inner.digests
    }

    /// Records the caller's current start time in `cred`; call it when the connection is
    /// accepted, so every later attestation on it refuses a process that reused the PID.
    pub fn pin(&self, cred: PeerCred) -> Result<PeerCred, AttestError> {
        let pid = cred.pid.filter(|p| *p > 0).ok_or(AttestError::NoPid)?;
        let start_time = ProcDir::new(&self.inner.proc_root, pid).start_time()?;
        Ok(PeerCred {
            start_time: Some(start_time),
            ..cred
        })
    }

    /// Pins the process that connected `socket` (see the module docs): a pidfd from the
    /// socket when the kernel has `SO_PEERPIDFD`, its start time and its binary. Reads two
    /// small procfs entries; cheap enough to run inline at accept.
    pub fn pin_socket(
        &self,
        socket: std::os::fd::BorrowedFd<'_>,
        cred: PeerCred,
    ) -> Result<PinnedProcess, AttestError> {
        let pid = cred.pid.filter(|p| *p > 0).ok_or(AttestError::NoPid)?;
        let pidfd = if self.peer_pidfd {
            match PeerPidfd::of_socket(socket) {
                Ok(PeerPidfdResult::Pidfd(pidfd)) => Some(pidfd),
                Ok(PeerPidfdResult::Gone) => {
                    return Err(ProcessError::Gone { pid }.into());
                }
                Ok(PeerPidfdResult::Unsupported) => None,
                Err(e) => {
                    tracing::debug!(error = %e, "SO_PEERPIDFD failed; pinning by start time");
                    None
                }
            }
        } else {
            None
        };
        let proc = ProcDir::new(&self.inner.proc_root, pid);
        check_pidfd(pidfd.as_ref(), pid)?;
        let start_time = proc.start_time()?;
        let binary = proc.exe_id()?;
        check_pidfd(pidfd.as_ref(), pid)?;
        Ok(PinnedProcess {
            cred: PeerCred {
                start_time: Some(start_time),
                ..cred
            },
            binary,
            pidfd,
        })
    }

    /// Attests a pinned caller (see [`WorkloadAttestor::pin_socket`]), on tokio's blocking
    /// pool: refused unless it is still the process that connected, running the binary it
    /// ran then.
    pub async fn attest_pinned(&self, pinned: Arc<PinnedProcess>) -> Result<Attested, AttestError> {
        self.attest_pinned_from(pinned, SocketOrigin::Node).await
    }

    /// [`WorkloadAttestor::attest_pinned`] for a caller that came in on `origin` (see the
    /// module docs on pod sockets).
    pub async fn attest_pinned_from(
        &self,
        pinned: Arc<PinnedProcess>,
        origin: SocketOrigin,
    ) -> Result<Attested, AttestError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.attest_pinned_blocking_from(&pinned, &origin))
            .await
            .map_err(|e| AttestError::Internal(e.to_string()))?
    }

    /// [`WorkloadAttestor::attest_pinned`] on the current thread.
    pub fn attest_pinned_blocking(&self, pinned: &PinnedProcess) -> Result<Attested, AttestError> {
        self.attest_pinned_blocking_from(pinned, &SocketOrigin::Node)
    }

    /// [`WorkloadAttestor::attest_pinned_from`] on the current thread.
    pub fn attest_pinned_blocking_from(
        &self,
        pinned: &PinnedProcess,
        origin: &SocketOrigin,
    ) -> Result<Attested, AttestError> {
        let cred = &pinned.cred;
        let pid = cred.pid.filter(|p| *p > 0).ok_or(AttestError::NoPid)?;
        let proc = ProcDir::new(&self.inner.proc_root, pid);
        let pidfd = pinned.pidfd.as_ref();

        check_pidfd(pidfd, pid)?;
        let before = proc.start_time()?;
        if let Some(expected) = cred.start_time {
            check_same_process(pid, expected, before)?;
        }
        check_same_binary(pid, &pinned.binary, &proc.exe_id()?)?;

        let attested = self.collect(&proc, cred, origin)?;

        // Everything above was read while the process was this one only if it still is: the
        // pidfd still names it (its PID cannot have been recycled), or at least the start
        // time is unchanged; and it still runs the binary it connected with.
        check_same_process(pid, before, proc.start_time()?)?;
        check_same_binary(pid, &pinned.binary, &proc.exe_id()?)?;
        check_pidfd(pidfd, pid)?;
        Ok(attested)
    }

    /// Attests a caller, on tokio's blocking pool.
    pub async fn attest(&self, cred: PeerCred) -> Result<Attested, AttestError> {
        self.attest_from(cred, SocketOrigin::Node).await
    }

    /// [`WorkloadAttestor::attest`] for a caller that came in on `origin`.
    pub async fn attest_from(
        &self,
        cred: PeerCred,
        origin: SocketOrigin,
    ) -> Result<Attested, AttestError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.attest_blocking_from(&cred, &origin))
            .await
            .map_err(|e| AttestError::Internal(e.to_string()))?
    }

    /// Attests a caller on the current thread (it blocks: see the module doc).
    pub fn attest_blocking(&self, cred: &PeerCred) -> Result<Attested, AttestError> {
        self.attest_blocking_from(cred, &SocketOrigin::Node)
    }

    /// [`WorkloadAttestor::attest_blocking`] for a caller that came in on `origin`.
    pub fn attest_blocking_from(
        &self,
        cred: &PeerCred,
        origin: &SocketOrigin,
    ) -> Result<Attested, AttestError> {
        let pid = cred.pid.filter(|p| *p > 0).ok_or(AttestError::NoPid)?;
        let proc = ProcDir::new(&self.inner.proc_root, pid);

        let before = proc.start_time()?;
        if let Some(expected) = cred.start_time {
            check_same_process(pid, expected, before)?;
        }

        let attested = self.collect(&proc, cred, origin)?;

        // Everything above was read while the process was this one only if it still is.
        check_same_process(pid, before, proc.start_time()?)?;
        Ok(attested)
    }

    /// Collects the selectors of the process behind `proc` (the caller checks it is the
    /// right process before and after).
    fn collect(
        &self,
        proc: &ProcDir,
        cred: &PeerCred,
        origin: &SocketOrigin,
    ) -> Result<Attested, AttestError> {
        let pid = proc.pid();
        let mut selectors = unix::unix_selectors(proc, cred.uid, cred.gid, &self.inner.digests)?;
        let cgroup = parse_cgroup_file(&proc.cgroup()?);
        let (pod, socket_pod) = match origin {
            SocketOrigin::Node => (cgroup.map_err(|e| AttestError::Cgroup(pid, e))?, None),
            SocketOrigin::Pod(socket_pod) => (
                pod_socket_cgroup(pid, socket_pod, cgroup)?,
                Some(socket_pod.clone()),
            ),
        };
        match (&pod, &socket_pod) {
            (Some(pod), _) => selectors.extend(pod.selectors()),
            (None, Some(uid)) => selectors
                .push(Selector::new(SelectorKey::PodUid, uid).map_err(AttestError::Selectors)?),
            (None, None) => {}
        }

        let selectors = SelectorSet::try_from(selectors).map_err(AttestError::Selectors)?;
        let attested = Attested {
            selectors,
            pod,
            socket_pod,
        };
        tracing::debug!(
            pid,
            uid = cred.uid,
            pod_uid = attested.pod_uid(),
            from_pod_socket = attested.socket_pod.is_some(),
            selectors = attested.selectors.len(),
            "attested caller"
        );
        Ok(attested)
    }
}

/// What a pod socket's caller's cgroup adds to the pod known from the mount: its container
/// when it names the same pod; nothing when it names no pod; a refusal when it names another
/// pod (a container or only a pod-level cgroup) or cannot be made sense of.
fn pod_socket_cgroup(
    pid: i32,
    socket_pod: &str,
    cgroup: Result<Option<PodContainer>, CgroupError>,
) -> Result<Option<PodContainer>, AttestError> {
    let mismatch = |cgroup_pod: &str| AttestError::PodMismatch {
        pid,
        socket_pod: socket_pod.to_owned(),
        cgroup_pod: cgroup_pod.to_owned(),
    };
    match cgroup {
        Ok(Some(pod)) if pod.pod_uid() == socket_pod => Ok(Some(pod)),
        Ok(Some(pod)) => Err(mismatch(pod.pod_uid())),
        Ok(None) => Ok(None),
        // In the socket's pod but not in a container's cgroup: the pod stands, no container.
        Err(CgroupError::NotAContainer { pod_uid, .. }) if pod_uid == socket_pod => Ok(None),
        Err(CgroupError::NotAContainer { pod_uid, .. }) => Err(mismatch(&pod_uid)),
        Err(e) => Err(AttestError::Cgroup(pid, e)),
    }
}

/// The pidfd (when there is one) still names process `pid`: it has not exited, so its PID
/// has not been recycled.
fn check_pidfd(pidfd: Option<&PeerPidfd>, pid: i32) -> Result<(), AttestError> {
    let Some(pidfd) = pidfd else {
        return Ok(());
    };
    match pidfd.pid() {
        Ok(Some(now)) if now == pid => Ok(()),
        Ok(_) => Err(ProcessError::Gone { pid }.into()),
        Err(e) => Err(ProcessError::Unreadable {
            pid,
            what: "pidfd fdinfo",
            detail: e.to_string(),
        }
        .into()),
    }
}

fn check_same_binary(pid: i32, pinned: &BinaryId, now: &BinaryId) -> Result<(), AttestError> {
    if pinned == now {
        Ok(())
    } else {
        Err(AttestError::BinaryChanged {
            pid,
            pinned: pinned.path.clone(),
            now: now.path.clone(),
        })
    }
}

fn check_same_process(pid: i32, expected: u64, found: u64) -> Result<(), AttestError> {
    if expected == found {
        Ok(())
    } else {
        Err(AttestError::PidReused {
            pid,
            expected,
            found,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = "8f2c0a4e-1b3d-4c5e-9f60-7a8b9c0d1e2f";
    const OTHER: &str = "11111111-2222-3333-4444-555555555555";
    const CID: &str = "3b7c9f0e1d2a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c";

    fn on_pod_socket(cgroup_path: &str) -> Result<Option<PodContainer>, AttestError> {
        pod_socket_cgroup(42, POD, parse_cgroup_file(&format!("0::{cgroup_path}\n")))
    }

    #[test]
    fn a_pod_socket_takes_the_container_from_a_cgroup_of_its_pod() {
        let got = on_pod_socket(&format!("/kubepods/besteffort/pod{POD}/{CID}")).unwrap();
        assert_eq!(got, PodContainer::new(POD, CID));
        // No pod in the cgroup (a layout the parser does not know), or the pod's own
        // pod-level cgroup: the pod from the mount stands, without a container.
        assert_eq!(
            on_pod_socket("/system.slice/custom-runtime.scope").unwrap(),
            None
        );
        assert_eq!(on_pod_socket(&format!("/kubepods/pod{POD}")).unwrap(), None);
    }

    #[test]
    fn a_pod_socket_refuses_a_cgroup_of_another_pod() {
        for path in [
            format!("/kubepods/besteffort/pod{OTHER}/{CID}"),
            format!("/kubepods/pod{OTHER}"),
        ] {
            let err = on_pod_socket(&path).unwrap_err();
            assert_eq!(err.label(), "pod_mismatch", "{path}");
            assert_eq!(err.to_string(), "pod_mismatch");
            assert!(err.message().contains(OTHER) && err.message().contains(POD));
        }
        // A cgroup file that names two pods is refused as it is on the node socket.
        let two = format!("1:pids:/kubepods/pod{POD}/{CID}\n0::/kubepods/pod{OTHER}/{CID}\n");
        let err = pod_socket_cgroup(42, POD, parse_cgroup_file(&two)).unwrap_err();
        assert_eq!(err.label(), "cgroup_inconsistent");
    }

    #[test]
    fn the_pod_uid_is_the_sockets_before_the_cgroups() {
        let from_cgroup = PodContainer::new(OTHER, CID);
        let node = Attested {
            selectors: SelectorSet::default(),
            pod: from_cgroup.clone(),
            socket_pod: None,
        };
        assert_eq!(node.pod_uid(), Some(OTHER));
        let pod_socket = Attested {
            socket_pod: Some(POD.to_owned()),
            pod: None,
            ..node
        };
        assert_eq!(pod_socket.pod_uid(), Some(POD));
    }

    #[tokio::test]
    async fn this_process_on_a_pod_socket_is_that_pod() {
        // This test runs in no pod: on a pod socket it is the socket's pod, with the
        // `k8s:pod-uid` selector, and its unix selectors as ever.
        let cred = PeerCred::new(Some(std::process::id() as i32), 0, 0);
        let attested = WorkloadAttestor::default()
            .attest_from(cred, SocketOrigin::Pod(POD.to_owned()))
            .await
            .unwrap();
        assert_eq!(attested.pod_uid(), Some(POD));
        assert!(
            attested
                .selectors
                .iter()
                .any(|s| s.to_string() == format!("k8s:pod-uid:{POD}"))
        );
        assert!(
            attested
                .selectors
                .iter()
                .any(|s| s.to_string().starts_with("unix:uid:"))
        );
    }
}
