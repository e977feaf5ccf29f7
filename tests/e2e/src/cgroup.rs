//! Pod-shaped cgroups, as the kubelet lays them out, for placing a real process "in a pod":
//! `/sys/fs/cgroup/pids/kubepods/besteffort/pod<UID>/<container-id>` on the cgroup v1 `pids`
//! hierarchy (cgroupfs driver). `/proc/<pid>/cgroup` of a process moved there shows what a
//! kubelet-managed container's shows.
//!
//! Creating cgroups needs root and the v1 hierarchy. Without them, [`roots_or_skip`] fails
//! with a message saying what is missing, unless `LANYARD_SKIP_CGROUP_TESTS=1` is set.

use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The cgroup v1 `pids` hierarchy, or why it cannot be used here.
pub fn pids_root() -> Result<PathBuf, String> {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Err("pod-shaped cgroups need root (to create cgroups and move a process)".into());
    }
    let v1 = PathBuf::from("/sys/fs/cgroup/pids");
    if !v1.join("cgroup.procs").exists() {
        return Err(format!(
            "no cgroup v1 `pids` hierarchy at {} (see `mount | grep cgroup`)",
            v1.display()
        ));
    }
    Ok(v1)
}

/// The `pids` root, or `None` when `LANYARD_SKIP_CGROUP_TESTS=1` asks to skip; panics with
/// the reason otherwise.
pub fn pids_root_or_skip() -> Option<PathBuf> {
    match pids_root() {
        Ok(root) => Some(root),
        Err(why) if std::env::var("LANYARD_SKIP_CGROUP_TESTS").as_deref() == Ok("1") => {
            eprintln!("skipping: {why} (LANYARD_SKIP_CGROUP_TESTS=1)");
            None
        }
        Err(why) => panic!("{why}; set LANYARD_SKIP_CGROUP_TESTS=1 to skip these tests"),
    }
}

/// A container ID (64 hex digits) no other run uses.
pub fn fresh_container_id() -> String {
    let state = std::collections::hash_map::RandomState::new();
    (0..4)
        .map(|i| {
            let mut h = state.build_hasher();
            h.write_u32(std::process::id());
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos(),
            );
            h.write_u8(i);
            format!("{:016x}", h.finish())
        })
        .collect()
}

/// Cgroup directories a test created, removed leaf to root on drop (also when the test
/// fails). Processes in them must have exited first: keep client processes short-lived.
#[derive(Default)]
pub struct CgroupDirs(Vec<PathBuf>);

impl CgroupDirs {
    /// Creates `root/rel` one level at a time, remembering each level it created.
    pub fn create(&mut self, root: &Path, rel: &str) -> PathBuf {
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

    /// The container cgroup of pod `pod_uid`, container `container_id` (besteffort QoS).
    pub fn container(&mut self, root: &Path, pod_uid: &str, container_id: &str) -> PathBuf {
        self.create(
            root,
            &format!("kubepods/besteffort/pod{pod_uid}/{container_id}"),
        )
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
                    // Shared ancestors (kubepods/...) may hold another test's cgroups.
                    Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() >= deadline => {
                        eprintln!("could not remove cgroup {}: {e}", dir.display());
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
    }
}
