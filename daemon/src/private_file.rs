//! Files holding secrets (CA keys, node SVID keys, eviction lists, workloads' SVID keys):
//! written atomically as new files with mode 0600, never through what was at the path, in
//! directories only we can enter; read back ([`read_private`]) only when nobody else may read
//! them.

use std::fs::{self, OpenOptions};
use std::hash::{BuildHasher as _, Hasher as _};
use std::io::{Read as _, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use zeroize::Zeroizing;

/// Writes `contents` to `path` atomically with mode 0600; see [`write_new_atomic`].
pub fn write_private_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_new_atomic(path, contents, 0o600)
}

/// Writes `contents` to `path` atomically as a new file with `mode`, so a crash never leaves a
/// half-written file under the real name and nothing already at `path` is written through:
///
/// - the data goes into a new file under a private, unpredictable temporary name in the same
///   directory, opened with `O_CREAT|O_EXCL|O_NOFOLLOW` and mode 0600 (a file or symlink
///   someone else put there is never opened; a taken name is retried under another);
/// - it is flushed, set to `mode`, and renamed over `path`: a symlink at `path` is replaced,
///   its target untouched; a file at `path` (whatever its owner or mode) is replaced by ours.
pub fn write_new_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("path has no file name"))?;
    let (tmp, mut file) = create_temp(dir, &name.to_string_lossy())?;
    let written = (|| {
        file.write_all(contents)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // Make the rename itself durable.
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// A new 0600 file in `dir` under an unpredictable name derived from `name`.
fn create_temp(dir: &Path, name: &str) -> std::io::Result<(std::path::PathBuf, fs::File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut last = None;
    for _ in 0..16 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        // Unpredictable enough that nobody can pre-create it; O_EXCL settles a collision.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(nanos);
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        hasher.write_u32(std::process::id());
        let tmp = dir.join(format!(".{name}.{:016x}.tmp", hasher.finish()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free temporary name")))
}

/// Creates `dir` (and parents) if needed and sets it to `mode`.
pub fn ensure_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
}

/// The permission bits of `path`.
pub fn mode_of(path: &Path) -> std::io::Result<u32> {
    Ok(fs::metadata(path)?.permissions().mode() & 0o7777)
}

/// Why [`read_private`] refused a file.
#[derive(Debug, thiserror::Error)]
pub enum PrivateFileError {
    /// Opening, inspecting or reading it failed (missing, no permission, an I/O error).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Group or others may read it: whatever it holds may already be known to them.
    #[error(
        "readable by group or others (mode {mode:o}); a file holding a private key must be \
         0600 (chmod 600 it)"
    )]
    Exposed { mode: u32 },
    /// Larger than the caller's bound: not the file it expects.
    #[error("larger than {max_len} bytes")]
    TooLarge { max_len: u64 },
}

impl PrivateFileError {
    /// The file does not exist (a caller may treat that as "none yet").
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

/// The contents of the private file at `path`, at most `max_len` bytes, wiped from memory when
/// dropped. Refused when group or others may read it. The mode checked is that of the file
/// opened (fstat), not of whatever the path names a moment later.
pub fn read_private(path: &Path, max_len: u64) -> Result<Zeroizing<Vec<u8>>, PrivateFileError> {
    let file = fs::File::open(path)?;
    let mode = file.metadata()?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(PrivateFileError::Exposed { mode });
    }
    let mut contents = Zeroizing::new(Vec::new());
    // One byte more than allowed tells "exactly the bound" from "beyond it".
    file.take(max_len.saturating_add(1))
        .read_to_end(&mut contents)?;
    if contents.len() as u64 > max_len {
        return Err(PrivateFileError::TooLarge { max_len });
    }
    Ok(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_private_file_and_refuses_an_exposed_or_oversized_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tls.key");
        write_private_atomic(&path, b"secret").unwrap();
        assert_eq!(read_private(&path, 6).unwrap().as_slice(), b"secret");

        let err = read_private(&path, 5).unwrap_err();
        assert!(
            matches!(err, PrivateFileError::TooLarge { max_len: 5 }),
            "{err}"
        );

        for mode in [0o640, 0o604, 0o644] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = read_private(&path, 64).unwrap_err();
            assert!(
                matches!(err, PrivateFileError::Exposed { mode: m } if m == mode),
                "{mode:o}: {err}"
            );
            let message = err.to_string();
            assert!(message.contains("chmod 600"), "{message}");
            assert!(message.contains(&format!("{mode:o}")), "{message}");
        }
        // Owner-only modes other than 0600 are private too.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(read_private(&path, 64).unwrap().as_slice(), b"secret");
    }

    #[test]
    fn a_missing_file_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_private(&dir.path().join("missing"), 64).unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(!PrivateFileError::TooLarge { max_len: 1 }.is_not_found());
    }

    #[test]
    fn the_mode_checked_is_the_opened_files_not_a_symlinks() {
        // A symlink's own mode (0777) is not what counts: the file it names is.
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("key");
        write_private_atomic(&target, b"k").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(read_private(&link, 64).unwrap().as_slice(), b"k");
        fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            read_private(&link, 64),
            Err(PrivateFileError::Exposed { mode: 0o644 })
        ));
    }

    #[test]
    fn writes_0600_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        write_private_atomic(&path, b"one").unwrap();
        write_private_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(mode_of(&path).unwrap(), 0o600);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn replaces_a_symlink_and_a_readable_file_instead_of_writing_through_them() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"victim").unwrap();
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        write_new_atomic(&link, b"secret", 0o600).unwrap();
        assert_eq!(
            fs::read(&victim).unwrap(),
            b"victim",
            "the target is untouched"
        );
        let meta = fs::symlink_metadata(&link).unwrap();
        assert!(
            meta.file_type().is_file(),
            "the link was replaced by a file"
        );
        assert_eq!(fs::read(&link).unwrap(), b"secret");

        let open = dir.path().join("open.key");
        fs::write(&open, b"old").unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o644)).unwrap();
        let before = fs::metadata(&open).unwrap().ino();
        write_new_atomic(&open, b"secret", 0o600).unwrap();
        assert_ne!(fs::metadata(&open).unwrap().ino(), before, "a new file");
        assert_eq!(mode_of(&open).unwrap(), 0o600);
        write_new_atomic(&open, b"public", 0o644).unwrap();
        assert_eq!(mode_of(&open).unwrap(), 0o644);
        // victim, link.key, open.key: no temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 3);
    }
}
