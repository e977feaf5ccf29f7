//! Read-only bind mounts of a volume's directory onto its target, and their removal.
//!
//! Both ends are pinned as `O_PATH` descriptors first and the mount is made through
//! `/proc/self/fd/N`, so what was checked ([`super::target`]) is what gets mounted on: a path
//! component swapped for a symlink after the check cannot redirect the mount. The new mount is
//! then made read-only, `nosuid`, `nodev` and `noexec` (a failure there removes it again: a
//! writable mount is never left behind).
//!
//! Whether a target is "our" mount is decided by identity, not by parsing mount tables: once
//! the volume's directory is bind-mounted on the target, the target's device and inode are the
//! directory's ([`is_mounted`]).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

/// Why a mount operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("opening {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path} resolved to {found} after it was checked; refusing to mount there")]
    Moved { path: PathBuf, found: PathBuf },
    #[error("bind-mounting {source_dir} on {target}: {error}")]
    Bind {
        source_dir: PathBuf,
        target: PathBuf,
        error: io::Error,
    },
    #[error("making the mount on {target} read-only: {error}")]
    ReadOnly { target: PathBuf, error: io::Error },
    #[error("unmounting {target}: {error}")]
    Unmount { target: PathBuf, error: io::Error },
    #[error("creating {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
}

/// Whether `target` is `source` bind-mounted (same device and inode; `target` not followed if
/// it is a symlink).
pub fn is_mounted(source: &Path, target: &Path) -> bool {
    match (
        std::fs::symlink_metadata(source),
        std::fs::symlink_metadata(target),
    ) {
        (Ok(s), Ok(t)) => t.is_dir() && s.dev() == t.dev() && s.ino() == t.ino(),
        _ => false,
    }
}

/// Creates the directory `path` (mode 0750, as the kubelet makes its mount points) unless a
/// directory is there already.
pub fn create_dir(path: &Path) -> Result<(), MountError> {
    match std::fs::DirBuilder::new().mode(0o750).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            match std::fs::symlink_metadata(path) {
                Ok(meta) if meta.is_dir() => Ok(()),
                _ => Err(MountError::Create {
                    path: path.to_owned(),
                    source: e,
                }),
            }
        }
        Err(source) => Err(MountError::Create {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Bind-mounts the directory `source` on the directory `target` (both already checked),
/// read-only, `nosuid`, `nodev`, `noexec`.
pub fn bind_read_only(source: &Path, target: &Path) -> Result<(), MountError> {
    let source_fd = open_path(source)?;
    let target_fd = open_path(target)?;
    check_still(&target_fd, target)?;
    let bind = mount(
        Some(&fd_path(&source_fd)),
        &fd_path(&target_fd),
        libc::MS_BIND,
    );
    bind.map_err(|error| MountError::Bind {
        source_dir: source.to_owned(),
        target: target.to_owned(),
        error,
    })?;
    // The descriptor pinned the mount point; the new mount's root is what the path shows now.
    let remount = open_path(target).and_then(|mounted| {
        mount(
            None,
            &fd_path(&mounted),
            libc::MS_BIND
                | libc::MS_REMOUNT
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC,
        )
        .map_err(|error| MountError::ReadOnly {
            target: target.to_owned(),
            error,
        })
    });
    if let Err(e) = remount {
        let _ = unmount(target);
        return Err(e);
    }
    Ok(())
}

/// Unmounts whatever is mounted on `target` (not following a symlink there); a busy mount
/// is detached (lazily unmounted) instead.
pub fn unmount(target: &Path) -> Result<(), MountError> {
    let path = c_path(target).map_err(|error| MountError::Unmount {
        target: target.to_owned(),
        error,
    })?;
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
    let mut rc = unsafe { libc::umount2(path.as_ptr(), libc::UMOUNT_NOFOLLOW) };
    if rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY) {
        // SAFETY: as above.
        rc = unsafe { libc::umount2(path.as_ptr(), libc::UMOUNT_NOFOLLOW | libc::MNT_DETACH) };
    }
    if rc != 0 {
        return Err(MountError::Unmount {
            target: target.to_owned(),
            error: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// An `O_PATH` descriptor of the directory `path`, not following a symlink at its end.
fn open_path(path: &Path) -> Result<OwnedFd, MountError> {
    let open_error = |source| MountError::Open {
        path: path.to_owned(),
        source,
    };
    let c = c_path(path).map_err(open_error)?;
    // SAFETY: `c` is a valid NUL-terminated string; the flags ask for a new descriptor only.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(open_error(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by open(2) and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The descriptor still names `path` (nothing on the way was swapped since it was checked).
fn check_still(fd: &OwnedFd, path: &Path) -> Result<(), MountError> {
    let found = std::fs::read_link(fd_path(fd)).map_err(|source| MountError::Open {
        path: path.to_owned(),
        source,
    })?;
    if found != path {
        return Err(MountError::Moved {
            path: path.to_owned(),
            found,
        });
    }
    Ok(())
}

fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))
}

fn mount(source: Option<&Path>, target: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let source = source.map(c_path).transpose()?;
    let target = c_path(target)?;
    // SAFETY: every pointer is a valid NUL-terminated string (or null, which mount(2) accepts
    // for the source of a remount, the filesystem type of a bind mount and the data).
    let rc = unsafe {
        libc::mount(
            source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn a_read_only_bind_mount_and_its_removal() {
        if !is_root() {
            eprintln!("skipping: bind mounts need root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        let (source, target) = (base.join("source"), base.join("target"));
        std::fs::create_dir(&source).unwrap();
        std::fs::write(source.join("agent.sock"), "x").unwrap();
        create_dir(&target).unwrap();
        create_dir(&target).unwrap();
        assert!(!is_mounted(&source, &target));

        bind_read_only(&source, &target).unwrap();
        let guard = Unmount(target.clone());
        assert!(is_mounted(&source, &target));
        assert_eq!(std::fs::read(target.join("agent.sock")).unwrap(), b"x");
        let err = std::fs::write(target.join("new"), "y").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        // The source itself stays writable.
        std::fs::write(source.join("new"), "y").unwrap();

        unmount(&target).unwrap();
        std::mem::forget(guard);
        assert!(!is_mounted(&source, &target));
        assert!(!target.join("agent.sock").exists());
        assert!(unmount(&target).is_err(), "nothing mounted there any more");
    }

    #[test]
    fn a_symlink_target_is_never_mounted_on() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(base.join("source")).unwrap();
        std::fs::create_dir(base.join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(base.join("elsewhere"), base.join("link")).unwrap();
        let err = bind_read_only(&base.join("source"), &base.join("link")).unwrap_err();
        assert!(matches!(err, MountError::Open { .. }), "{err}");
        assert!(create_dir(&base.join("link")).is_err());
    }

    /// Unmounts on drop, should an assertion fail with the mount in place.
    struct Unmount(PathBuf);

    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = unmount(&self.0);
        }
    }
}
