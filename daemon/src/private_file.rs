//! Files holding secrets (CA keys, node SVID keys, eviction lists, workloads' SVID keys):
//! written atomically as new files with mode 0600, never through what was at the path, in
//! directories only we can enter.

use std::fs::{self, OpenOptions};
use std::hash::{BuildHasher as _, Hasher as _};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::*;

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
