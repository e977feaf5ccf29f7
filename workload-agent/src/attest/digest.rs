//! SHA-256 of callers' binaries, cached per file version.
//!
//! Hashing a 100 MB binary takes a fraction of a second, far too slow for every RPC, so
//! digests are cached by what identifies one version of one file: device, inode, size, mtime
//! and ctime (`fstat` of the open binary). ctime is in the key because the file's owner can set
//! mtime back after changing the content, but no one can set ctime. The cache is bounded and
//! forgets its oldest entry first.
//!
//! The caller passes the binary already opened (through `/proc/<pid>/exe`), so the digest is
//! of the file the process runs, whatever its path names now.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, Metadata};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// How many binaries' digests the agent remembers by default.
pub const DEFAULT_DIGEST_CACHE_ENTRIES: usize = 1024;
/// Binaries larger than this are not hashed (their `sha256` selector is omitted).
pub const MAX_HASHED_BINARY_LEN: u64 = 1 << 30;

const READ_CHUNK: usize = 64 * 1024;

/// Why a binary has no digest.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error("binary is {size} bytes, over the {MAX_HASHED_BINARY_LEN}-byte hashing limit")]
    TooLarge { size: u64 },
    #[error("binary changed while it was being hashed")]
    Changed,
    #[error("binary is unreadable: {0}")]
    Io(#[from] std::io::Error),
}

/// One version of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileVersion {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileVersion {
    fn of(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

#[derive(Default)]
struct Entries {
    digests: HashMap<FileVersion, [u8; 32]>,
    /// Insertion order, for eviction.
    order: VecDeque<FileVersion>,
}

/// A bounded cache of binary digests, shared by all attestations.
pub struct DigestCache {
    capacity: usize,
    entries: Mutex<Entries>,
    hashed: AtomicU64,
}

impl DigestCache {
    /// A cache holding at most `capacity` digests (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: Mutex::default(),
            hashed: AtomicU64::new(0),
        }
    }

    /// The SHA-256 of an open binary, from the cache when this version was hashed before.
    pub fn digest(&self, file: &File) -> Result<[u8; 32], DigestError> {
        let version = FileVersion::of(&file.metadata()?);
        if let Some(digest) = self.lock().digests.get(&version) {
            return Ok(*digest);
        }
        if version.size > MAX_HASHED_BINARY_LEN {
            return Err(DigestError::TooLarge { size: version.size });
        }
        // Hashed outside the lock: two first callers of one binary may both hash it, which
        // costs time once, while holding the lock would stall every other attestation.
        let digest = hash(file, version.size)?;
        if FileVersion::of(&file.metadata()?) != version {
            return Err(DigestError::Changed);
        }
        self.hashed.fetch_add(1, Ordering::Relaxed);
        self.insert(version, digest);
        Ok(digest)
    }

    /// How many digests were computed (not served from the cache) so far.
    pub fn hashes_computed(&self) -> u64 {
        self.hashed.load(Ordering::Relaxed)
    }

    /// How many digests the cache holds.
    pub fn len(&self) -> usize {
        self.lock().digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, version: FileVersion, digest: [u8; 32]) {
        let mut entries = self.lock();
        if entries.digests.insert(version, digest).is_some() {
            return;
        }
        entries.order.push_back(version);
        while entries.order.len() > self.capacity {
            if let Some(oldest) = entries.order.pop_front() {
                entries.digests.remove(&oldest);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // The map stays consistent even if a holder panicked: each update is one insert.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for DigestCache {
    fn default() -> Self {
        Self::new(DEFAULT_DIGEST_CACHE_ENTRIES)
    }
}

/// Hashes exactly `size` bytes from the file's start (positioned reads, so the file's cursor
/// does not matter); a different length means the file changed.
fn hash(file: &File, size: u64) -> Result<[u8; 32], DigestError> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut offset = 0u64;
    // Read one byte past `size` at most, to notice a file that grew.
    while offset <= size {
        let want = buf.len().min((size + 1 - offset) as usize);
        let n = match file.read_at(&mut buf[..want], offset) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        ctx.update(&buf[..n]);
        offset += n as u64;
    }
    if offset != size {
        return Err(DigestError::Changed);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};

    fn file_with(content: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        std::fs::write(&path, content).unwrap();
        (dir, path)
    }

    fn sha256(content: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, content).as_ref());
        out
    }

    #[test]
    fn digests_and_caches_by_file_version() {
        let content = vec![7u8; 3 * READ_CHUNK + 5];
        let (_dir, path) = file_with(&content);
        let cache = DigestCache::new(4);
        let first = cache.digest(&File::open(&path).unwrap()).unwrap();
        assert_eq!(first, sha256(&content));
        let second = cache.digest(&File::open(&path).unwrap()).unwrap();
        assert_eq!(second, first);
        assert_eq!(cache.hashes_computed(), 1);
    }

    #[test]
    fn a_rewritten_file_is_hashed_again_even_with_its_old_mtime() {
        let (_dir, path) = file_with(b"version one");
        let cache = DigestCache::new(4);
        let old = cache.digest(&File::open(&path).unwrap()).unwrap();
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();

        // Same size, same inode, mtime restored: only ctime tells the versions apart.
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all(b"version two").unwrap();
        f.set_modified(mtime).unwrap();
        drop(f);

        let new = cache.digest(&File::open(&path).unwrap()).unwrap();
        assert_eq!(new, sha256(b"version two"));
        assert_ne!(new, old);
        assert_eq!(cache.hashes_computed(), 2);
    }

    #[test]
    fn cache_is_bounded_and_forgets_the_oldest() {
        let cache = DigestCache::new(2);
        let files: Vec<_> = (0..3u8).map(|i| file_with(&[i; 10])).collect();
        for (_dir, path) in &files {
            cache.digest(&File::open(path).unwrap()).unwrap();
        }
        assert_eq!(cache.len(), 2);
        // The newest is still cached, the oldest was evicted and is hashed again.
        cache.digest(&File::open(&files[2].1).unwrap()).unwrap();
        assert_eq!(cache.hashes_computed(), 3);
        cache.digest(&File::open(&files[0].1).unwrap()).unwrap();
        assert_eq!(cache.hashes_computed(), 4);
    }

    #[test]
    fn hashes_from_the_start_whatever_the_file_position() {
        let (_dir, path) = file_with(b"0123456789");
        let mut f = File::open(&path).unwrap();
        f.seek(std::io::SeekFrom::Start(4)).unwrap();
        assert_eq!(
            DigestCache::new(1).digest(&f).unwrap(),
            sha256(b"0123456789")
        );
    }
}
