//! `unix` selectors: uid and gid (from the kernel's peer credentials), their user and group
//! names, and the caller's binary path and SHA-256.
//!
//! Names are looked up through the agent host's NSS (`getpwuid_r`/`getgrgid_r`), so they are
//! the names on the node, not those in a container's `/etc/passwd`. NSS may ask a directory
//! service over the network, so this runs on a blocking thread (see `attest`). A uid or gid
//! without a name, or with a name that is not a valid selector value, just has no name
//! selector.

use std::ffi::CStr;
use std::os::raw::{c_char, c_int};

use lanyard_svid::selector::{Selector, SelectorKey};

use super::digest::{DigestCache, DigestError};
use super::process::{ProcDir, ProcessError};

/// NSS buffers start at this size and grow on `ERANGE` up to [`MAX_NSS_BUFFER`].
const NSS_BUFFER: usize = 1024;
/// The largest buffer we give one NSS lookup (a group with many members needs a large one).
const MAX_NSS_BUFFER: usize = 1 << 20;

/// Why the binary could not be attested.
#[derive(Debug, thiserror::Error)]
pub enum UnixError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("the binary of process {pid} changed while it was being hashed")]
    BinaryChanged { pid: i32 },
}

impl UnixError {
    /// A snake_case label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Process(e) => e.label(),
            Self::BinaryChanged { .. } => "binary_changed",
        }
    }
}

/// The `unix` selectors of a caller: uid, gid, user, group, path and sha256.
pub fn unix_selectors(
    proc: &ProcDir,
    uid: u32,
    gid: u32,
    digests: &DigestCache,
) -> Result<Vec<Selector>, UnixError> {
    let mut selectors = vec![Selector::uid(uid), Selector::gid(gid)];
    selectors.extend(user_name(uid).and_then(|n| named(SelectorKey::User, &n)));
    selectors.extend(group_name(gid).and_then(|n| named(SelectorKey::Group, &n)));

    let path = proc.exe_path()?;
    match path.to_str() {
        Some(path) => selectors.extend(named(SelectorKey::Path, path)),
        None => tracing::debug!(
            pid = proc.pid(),
            "binary path is not UTF-8; no path selector"
        ),
    }

    let exe = proc.open_exe()?;
    match digests.digest(&exe) {
        Ok(digest) => selectors.push(Selector::sha256(&digest)),
        Err(DigestError::Changed) => return Err(UnixError::BinaryChanged { pid: proc.pid() }),
        Err(e @ DigestError::TooLarge { .. }) => {
            tracing::warn!(pid = proc.pid(), error = %e, "no sha256 selector");
        }
        Err(DigestError::Io(e)) => {
            return Err(ProcessError::Unreadable {
                pid: proc.pid(),
                what: "exe",
                detail: e.to_string(),
            }
            .into());
        }
    }
    Ok(selectors)
}

fn named(key: SelectorKey, value: &str) -> Option<Selector> {
    Selector::new(key, value)
        .inspect_err(|e| tracing::debug!(error = %e, "value is not a valid selector; omitted"))
        .ok()
}

/// The name of `uid` in the host's user database, if it has one.
pub fn user_name(uid: u32) -> Option<String> {
    nss_name(
        |entry: &mut libc::passwd, buf, result| {
            // SAFETY: every pointer is valid for the call: `entry` and `result` are live
            // exclusive references, `buf` is a live buffer of exactly `buf.len()` bytes.
            unsafe { libc::getpwuid_r(uid, entry, buf.as_mut_ptr(), buf.len(), result) }
        },
        |entry| entry.pw_name,
    )
}

/// The name of `gid` in the host's group database, if it has one.
pub fn group_name(gid: u32) -> Option<String> {
    nss_name(
        |entry: &mut libc::group, buf, result| {
            // SAFETY: as in `user_name`.
            unsafe { libc::getgrgid_r(gid, entry, buf.as_mut_ptr(), buf.len(), result) }
        },
        |entry| entry.gr_name,
    )
}

/// Runs a reentrant NSS lookup, growing its buffer on `ERANGE`, and copies the name out.
fn nss_name<T>(
    mut lookup: impl FnMut(&mut T, &mut [c_char], *mut *mut T) -> c_int,
    name_of: impl Fn(&T) -> *const c_char,
) -> Option<String> {
    let mut size = NSS_BUFFER;
    loop {
        // SAFETY: `passwd` and `group` are plain C structs of integers and pointers, for
        // which all-zero is a valid (if meaningless) value; the lookup fills them in.
        let mut entry: T = unsafe { std::mem::zeroed() };
        let mut buf = vec![0 as c_char; size];
        let mut result: *mut T = std::ptr::null_mut();
        let rc = lookup(&mut entry, &mut buf, &mut result);
        if rc == libc::ERANGE && size < MAX_NSS_BUFFER {
            size *= 4;
            continue;
        }
        if rc != 0 {
            tracing::debug!(errno = rc, "NSS lookup failed; no name selector");
            return None;
        }
        if result.is_null() {
            return None; // No such entry.
        }
        let name = name_of(&entry);
        if name.is_null() {
            return None;
        }
        // SAFETY: on success the name points into `buf` (alive until the end of this scope)
        // and is NUL-terminated by the C library.
        let name = unsafe { CStr::from_ptr(name) };
        return name.to_str().ok().map(str::to_owned);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_names() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(group_name(0).as_deref(), Some("root"));
    }

    #[test]
    fn unknown_ids_have_no_name() {
        // Neither a uid nor a gid this high exists on a normal system (it is -2 as an i32).
        assert_eq!(user_name(u32::MAX - 1), None);
        assert_eq!(group_name(u32::MAX - 1), None);
    }
}
