//! Attestation of real processes: a child `cat` waiting on a pipe is attested by PID and its
//! selectors checked against the real binary; exited, zombie and reused PIDs are refused; and,
//! as root, the child is moved into pod-shaped cgroups (cgroup v1 cgroupfs layout and the v2
//! systemd layout) exactly as the kubelet would place a container, then attested.
//!
//! The cgroup tests need root and the cgroup hierarchies; without them they fail with a
//! message saying what is missing, unless `LANYARD_SKIP_CGROUP_TESTS=1` is set.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lanyard_agent::attest::{AttestError, Attested, PeerCred, WorkloadAttestor};
use lanyard_svid::selector::{Selector, SelectorKey};

const CAT: &str = "/bin/cat";

/// A child `cat` blocked reading its stdin pipe; killed and reaped on drop.
struct Waiter(Child);

impl Waiter {
    fn spawn() -> Self {
        let child = Command::new(CAT)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn /bin/cat");
        Self(child)
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    fn cred(&self) -> PeerCred {
        // SAFETY: getuid and getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        PeerCred::new(Some(self.pid()), uid, gid)
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn values(attested: &Attested, key: SelectorKey) -> Vec<String> {
    attested
        .selectors
        .iter()
        .filter(|s| s.key() == key)
        .map(|s| s.value().to_owned())
        .collect()
}

fn state_of(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    lanyard_agent::attest::process::parse_stat(&stat).map(|s| s.state)
}

#[tokio::test]
async fn attests_a_real_child_against_its_binary() {
    let child = Waiter::spawn();
    let attestor = WorkloadAttestor::default();
    let cred = child.cred();
    let attested = attestor.attest(cred).await.expect("attest child");

    let binary = std::fs::canonicalize(CAT).unwrap();
    let sel = |s: &str| Selector::parse(s).unwrap();
    let required = [
        Selector::uid(cred.uid),
        Selector::gid(cred.gid),
        sel(&format!("unix:path:{}", binary.display())),
        sel(&format!(
            "unix:sha256:{}",
            sha256_hex(&std::fs::read(&binary).unwrap())
        )),
    ];
    assert!(
        attested.selectors.matches_all(&required),
        "{:?} lacks one of {required:?}",
        attested.selectors
    );
    if cred.uid == 0 {
        assert_eq!(values(&attested, SelectorKey::User), ["root"]);
        assert_eq!(values(&attested, SelectorKey::Group), ["root"]);
    }
    // This test process and its child run in no pod.
    assert_eq!(attested.pod, None);
    assert!(values(&attested, SelectorKey::PodUid).is_empty());
    // The path is the binary's, not this test's.
    assert!(!attested.selectors.contains(&sel(&format!(
        "unix:path:{}",
        std::env::current_exe().unwrap().display()
    ))));

    // A second attestation is served the digest from the cache.
    let hashed = attestor.digests().hashes_computed();
    let again = attestor.attest(cred).await.unwrap();
    assert_eq!(again, attested);
    assert_eq!(attestor.digests().hashes_computed(), hashed);
}

#[tokio::test]
async fn pinned_start_time_must_still_match() {
    let child = Waiter::spawn();
    let attestor = WorkloadAttestor::default();
    let pinned = attestor.pin(child.cred()).unwrap();
    let start = pinned.start_time.expect("pin records the start time");
    attestor.attest(pinned).await.expect("same process passes");

    let other = PeerCred {
        start_time: Some(start + 1),
        ..pinned
    };
    let err = attestor.attest(other).await.unwrap_err();
    assert_eq!(err.label(), "pid_reused", "{}", err.message());
    assert!(matches!(err, AttestError::PidReused { expected, found, .. }
        if expected == start + 1 && found == start));
}

#[tokio::test]
async fn exited_process_is_refused() {
    let mut child = Waiter::spawn();
    let attestor = WorkloadAttestor::default();
    let pinned = attestor.pin(child.cred()).unwrap();
    let pid = child.pid();
    child.0.kill().unwrap();

    // Killed but not yet reaped: a zombie, whose PID cannot be reused yet.
    let deadline = Instant::now() + Duration::from_secs(10);
    while state_of(pid) != Some('Z') {
        assert!(Instant::now() < deadline, "child never became a zombie");
        std::thread::yield_now();
    }
    let err = attestor.attest(pinned).await.unwrap_err();
    assert_eq!(err.label(), "process_gone", "{}", err.message());

    // Reaped: /proc/<pid> is gone, or the PID already belongs to someone else.
    child.0.wait().unwrap();
    let err = attestor.attest(pinned).await.unwrap_err();
    let expected = if Path::new(&format!("/proc/{pid}")).exists() {
        "pid_reused"
    } else {
        "process_gone"
    };
    assert_eq!(err.label(), expected, "{}", err.message());
}

#[tokio::test]
async fn a_peer_without_pid_is_refused() {
    let attestor = WorkloadAttestor::default();
    for pid in [None, Some(0), Some(-1)] {
        let err = attestor.attest(PeerCred::new(pid, 0, 0)).await.unwrap_err();
        assert_eq!(err.label(), "no_pid");
        assert!(attestor.pin(PeerCred::new(pid, 0, 0)).is_err());
    }
}

// ---- Real pod-shaped cgroups ----

/// Where the hierarchies this test uses live, or why they cannot be used here.
fn cgroup_roots() -> Result<(PathBuf, Option<PathBuf>), String> {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the cgroup tests need root (to create cgroups and move a process)".into());
    }
    let v1 = PathBuf::from("/sys/fs/cgroup/pids");
    if !v1.join("cgroup.procs").exists() {
        return Err(format!(
            "no cgroup v1 `pids` hierarchy at {} (see `mount | grep cgroup`)",
            v1.display()
        ));
    }
    let v2 = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| is_cgroup2(p));
    Ok((v1, v2))
}

fn is_cgroup2(path: &Path) -> bool {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let Ok(c_path) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs is a plain C struct, valid when zeroed.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid NUL-terminated string and `buf` a writable statfs.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut buf) };
    rc == 0 && buf.f_type as i64 == CGROUP2_SUPER_MAGIC
}

/// Returns the roots, or `None` when skipping is asked for; fails loudly otherwise.
fn cgroup_roots_or_skip() -> Option<(PathBuf, Option<PathBuf>)> {
    match cgroup_roots() {
        Ok(roots) => Some(roots),
        Err(why) if std::env::var("LANYARD_SKIP_CGROUP_TESTS").as_deref() == Ok("1") => {
            eprintln!("skipping: {why} (LANYARD_SKIP_CGROUP_TESTS=1)");
            None
        }
        Err(why) => panic!("{why}; set LANYARD_SKIP_CGROUP_TESTS=1 to skip these tests"),
    }
}

/// Cgroup directories this test created; removed leaf to root on drop. Drop the processes
/// in them first (declare the guard before the `Waiter`s, so it drops after them).
#[derive(Default)]
struct CgroupDirs(Vec<PathBuf>);

impl CgroupDirs {
    /// Creates `root/rel` one level at a time, remembering each level it created.
    fn create(&mut self, root: &Path, rel: &str) -> PathBuf {
        let mut dir = root.to_path_buf();
        for part in rel.split('/') {
            dir.push(part);
            match std::fs::create_dir(&dir) {
                Ok(()) => self.0.push(dir.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => panic!("mkdir {}: {e}", dir.display()),
            }
        }
        dir
    }

    fn enter(dir: &Path, pid: i32) {
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", dir.display()));
    }
}

impl Drop for CgroupDirs {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            // A cgroup whose last process was just reaped can be busy for a moment.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    // Another test may share an ancestor (kubepods/...); it removes it last.
                    Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() >= deadline => {
                        eprintln!("could not remove cgroup {}: {e}", dir.display());
                        break;
                    }
                    Err(_) => std::thread::yield_now(),
                }
            }
        }
    }
}

/// A pod UID and container ID no other run of this test uses.
fn fresh_ids(tag: &str) -> (String, String) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let seed = format!("{tag}-{}-{nanos}", std::process::id());
    let hex = sha256_hex(seed.as_bytes());
    let uid = format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
    (uid, sha256_hex(hex.as_bytes()))
}

#[tokio::test]
async fn process_in_pod_cgroups_gets_its_pod_and_container() {
    let Some((v1, v2)) = cgroup_roots_or_skip() else {
        return;
    };
    let mut dirs = CgroupDirs::default();
    let attestor = WorkloadAttestor::default();

    // cgroup v1, cgroupfs driver.
    let (uid, cid) = fresh_ids("v1");
    let leaf = dirs.create(&v1, &format!("kubepods/besteffort/pod{uid}/{cid}"));
    let in_pod = Waiter::spawn();
    CgroupDirs::enter(&leaf, in_pod.pid());
    let attested = attestor.attest(in_pod.cred()).await.expect("attest v1 pod");
    let pod = attested.pod.as_ref().expect("v1 child is in a pod");
    assert_eq!((pod.pod_uid(), pod.container_id()), (&*uid, &*cid));
    assert_eq!(values(&attested, SelectorKey::PodUid), [uid.as_str()]);
    assert_eq!(values(&attested, SelectorKey::ContainerId), [cid.as_str()]);

    // A sibling process left where it was is in no pod.
    let outside = Waiter::spawn();
    let attested = attestor.attest(outside.cred()).await.unwrap();
    assert_eq!(attested.pod, None);
    assert!(values(&attested, SelectorKey::PodUid).is_empty());

    let Some(v2) = v2 else {
        eprintln!("no cgroup2 mount; the systemd-layout part is skipped");
        return;
    };

    // cgroup v2, systemd driver with containerd.
    let (uid2, cid2) = fresh_ids("v2");
    let slice = format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{cid2}.scope",
        uid2.replace('-', "_")
    );
    let leaf2 = dirs.create(&v2, &slice);
    let in_pod2 = Waiter::spawn();
    CgroupDirs::enter(&leaf2, in_pod2.pid());
    let attested = attestor
        .attest(in_pod2.cred())
        .await
        .expect("attest v2 pod");
    let pod = attested.pod.expect("v2 child is in a pod");
    assert_eq!((pod.pod_uid(), pod.container_id()), (&*uid2, &*cid2));

    // The same process also put in another pod on the v1 hierarchy: two pods, no guess.
    CgroupDirs::enter(&leaf, in_pod2.pid());
    let err = attestor.attest(in_pod2.cred()).await.unwrap_err();
    assert_eq!(err.label(), "cgroup_inconsistent", "{}", err.message());

    // A pod-shaped path below a non-kubelet cgroup is not a pod.
    let spoof = dirs.create(
        &v2,
        &format!("lanyard-test-{}.slice/{slice}", std::process::id()),
    );
    let spoofer = Waiter::spawn();
    CgroupDirs::enter(&spoof, spoofer.pid());
    let attested = attestor.attest(spoofer.cred()).await.unwrap();
    assert_eq!(attested.pod, None);

    // Waiters drop (and are reaped) before `dirs`, which was declared first.
    drop((in_pod, outside, in_pod2, spoofer));
}
