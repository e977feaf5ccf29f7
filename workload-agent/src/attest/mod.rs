//! Workload attestation: from a Unix-socket caller's kernel credentials to its selectors.
//!
//! [`WorkloadAttestor::attest`] turns a [`PeerCred`] (pid, uid, gid) into the `unix`
//! selectors (uid, gid, user, group, binary path and sha256) and, when the process runs in a
//! kubelet-managed container, the pod UID and container ID (as `k8s:pod-uid` and
//! `k8s:container-id` selectors and as a [`PodContainer`]). The other `k8s` selectors
//! (namespace, service account, labels...) come from the server's pod feed, keyed by that pod
//! UID, and are added by the caller.
//!
//! PID reuse. A PID names a process only while it lives, so the process start time (field 22
//! of `/proc/<pid>/stat`) is read before and after the selectors are collected, and compared
//! with the start time pinned at accept ([`WorkloadAttestor::pin`]) when there is one. A
//! change or a vanished process refuses the attestation (`pid_reused`, `process_gone`): nothing
//! read in between can then belong to another process. What remains open:
//! - between the peer's `connect()` and the acceptor's [`WorkloadAttestor::pin`] (or, unpinned,
//!   the first read here), the caller could exit and its PID be taken by another process; the
//!   attacker then holds a socket that attests as the newcomer. Closing this needs a pidfd
//!   taken by the kernel at connect time (`SO_PEERPIDFD`, Linux 6.5+), which tokio and tonic do
//!   not expose; pinning at accept shrinks the window to microseconds, and without pinning it
//!   is as long as the connection lives.
//! - start times have clock-tick (10 ms) resolution, so a PID reused within one tick would
//!   pass; that needs the whole PID space to wrap within 10 ms.
//!
//! - `execve` keeps the PID and the start time, so a caller that execs while it is being
//!   attested may get the path of one binary and the digest of the next; both are binaries it
//!   chose to run, and selectors describe the process as it is, not as it connected.
//!
//! A pidfd opened here (`pidfd_open`) would add nothing: it can only be opened from the PID,
//! after the same window, and the start-time comparison already detects a later reuse.
//!
//! Blocking. One attestation reads five small `/proc` files, may hash a binary (the first
//! time a version of it is seen; see [`digest`]) and asks NSS for names, which can mean a
//! network round trip to a directory service. So [`WorkloadAttestor::attest`] runs it on
//! tokio's blocking pool. [`WorkloadAttestor::pin`] reads one `/proc/<pid>/stat` (a few
//! hundred bytes from procfs, no disk, no network) and is cheap enough to run inline.

pub mod cgroup;
pub mod digest;
pub mod peer;
pub mod process;
pub mod unix;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lanyard_svid::selector::{SelectorError, SelectorSet};

pub use cgroup::{CgroupError, PodContainer, parse_cgroup_file};
pub use digest::DigestCache;
pub use peer::PeerCred;
pub use process::{ProcDir, ProcessError};
pub use unix::UnixError;

/// Where procfs is mounted on a normal host.
pub const DEFAULT_PROC_ROOT: &str = "/proc";

/// What attestation found out about a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    /// `unix:*` selectors, plus `k8s:pod-uid` and `k8s:container-id` for a pod's container.
    pub selectors: SelectorSet,
    /// The pod and container, if the caller runs in one.
    pub pod: Option<PodContainer>,
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
    /// The caller's binary could not be attested.
    #[error("{}", .0.label())]
    Unix(UnixError),
    /// The caller's cgroup file names a pod but not in a way we can trust.
    #[error("{}", .1.label())]
    Cgroup(i32, CgroupError),
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
            Self::Process(e) => e.label(),
            Self::Unix(e) => e.label(),
            Self::Cgroup(_, e) => e.label(),
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
            Self::Process(e) => e.to_string(),
            Self::Unix(e) => e.to_string(),
            Self::Cgroup(pid, e) => format!("process {pid}: {e}"),
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
}

struct Inner {
    proc_root: PathBuf,
    digests: DigestCache,
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

    /// Attests a caller, on tokio's blocking pool.
    pub async fn attest(&self, cred: PeerCred) -> Result<Attested, AttestError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.attest_blocking(&cred))
            .await
            .map_err(|e| AttestError::Internal(e.to_string()))?
    }

    /// Attests a caller on the current thread (it blocks: see the module doc).
    pub fn attest_blocking(&self, cred: &PeerCred) -> Result<Attested, AttestError> {
        let pid = cred.pid.filter(|p| *p > 0).ok_or(AttestError::NoPid)?;
        let proc = ProcDir::new(&self.inner.proc_root, pid);

        let before = proc.start_time()?;
        if let Some(expected) = cred.start_time {
            check_same_process(pid, expected, before)?;
        }

        let mut selectors = unix::unix_selectors(&proc, cred.uid, cred.gid, &self.inner.digests)?;
        let pod = parse_cgroup_file(&proc.cgroup()?).map_err(|e| AttestError::Cgroup(pid, e))?;
        if let Some(pod) = &pod {
            selectors.extend(pod.selectors());
        }

        // Everything above was read while the process was this one only if it still is.
        check_same_process(pid, before, proc.start_time()?)?;

        let selectors = SelectorSet::try_from(selectors).map_err(AttestError::Selectors)?;
        tracing::debug!(
            pid,
            uid = cred.uid,
            pod_uid = pod.as_ref().map(|p| p.pod_uid()),
            selectors = selectors.len(),
            "attested caller"
        );
        Ok(Attested { selectors, pod })
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
