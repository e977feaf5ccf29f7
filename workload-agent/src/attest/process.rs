//! The calling process as `/proc/<pid>` shows it: its start time (which tells one process
//! apart from a later one that reuses the PID), its binary and its cgroup file.
//!
//! Every read is bounded, and a process that has exited (no `/proc/<pid>`, or a zombie) is
//! reported as [`ProcessError::Gone`], never as a generic I/O failure, so the caller can say
//! `process_gone`.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::cgroup::MAX_CGROUP_FILE_LEN;

/// The most bytes of `/proc/<pid>/stat` we read. The line is about 300 bytes: a command name
/// of at most 64 bytes plus 50 numbers.
pub const MAX_STAT_LEN: usize = 4096;

/// Why `/proc/<pid>` could not tell us about a process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("process {pid} has exited")]
    Gone { pid: i32 },
    #[error(
        "reading {what} of process {pid} was denied; the agent needs root (CAP_SYS_PTRACE) and \
         the host PID namespace"
    )]
    AccessDenied { pid: i32, what: &'static str },
    #[error("{what} of process {pid} is larger than {limit} bytes")]
    TooLarge {
        pid: i32,
        what: &'static str,
        limit: usize,
    },
    #[error("{what} of process {pid} is unreadable: {detail}")]
    Unreadable {
        pid: i32,
        what: &'static str,
        detail: String,
    },
}

impl ProcessError {
    /// A snake_case label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Gone { .. } => "process_gone",
            Self::AccessDenied { .. } => "proc_access_denied",
            Self::TooLarge { .. } => "proc_too_large",
            Self::Unreadable { .. } => "proc_unreadable",
        }
    }

    fn from_io(pid: i32, what: &'static str, err: &io::Error) -> Self {
        match err.kind() {
            io::ErrorKind::NotFound => Self::Gone { pid },
            io::ErrorKind::PermissionDenied => Self::AccessDenied { pid, what },
            // ESRCH: the process died while we read a file of it.
            _ if err.raw_os_error() == Some(libc::ESRCH) => Self::Gone { pid },
            _ => Self::Unreadable {
                pid,
                what,
                detail: err.to_string(),
            },
        }
    }
}

/// `/proc/<pid>` of one process, under a configurable proc root (tests use fixture trees).
#[derive(Debug, Clone)]
pub struct ProcDir {
    pid: i32,
    dir: PathBuf,
}

impl ProcDir {
    pub fn new(proc_root: &Path, pid: i32) -> Self {
        Self {
            pid,
            dir: proc_root.join(pid.to_string()),
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The process's start time, in clock ticks since boot (field 22 of `stat`). A zombie
    /// counts as gone: its PID is about to be free for reuse.
    pub fn start_time(&self) -> Result<u64, ProcessError> {
        let raw = self.read_bounded("stat", MAX_STAT_LEN)?;
        let text = String::from_utf8_lossy(&raw);
        let stat = parse_stat(&text).ok_or_else(|| ProcessError::Unreadable {
            pid: self.pid,
            what: "stat",
            detail: "not in the /proc/<pid>/stat format".to_owned(),
        })?;
        if matches!(stat.state, 'Z' | 'X' | 'x') {
            return Err(ProcessError::Gone { pid: self.pid });
        }
        Ok(stat.start_time)
    }

    /// The text of `cgroup`, at most [`MAX_CGROUP_FILE_LEN`] bytes.
    pub fn cgroup(&self) -> Result<String, ProcessError> {
        let raw = self.read_bounded("cgroup", MAX_CGROUP_FILE_LEN)?;
        String::from_utf8(raw).map_err(|_| ProcessError::Unreadable {
            pid: self.pid,
            what: "cgroup",
            detail: "not UTF-8".to_owned(),
        })
    }

    /// The binary's path, as the kernel reports it for `exe` (with ` (deleted)` appended if
    /// the file was removed or replaced since the process started).
    pub fn exe_path(&self) -> Result<PathBuf, ProcessError> {
        std::fs::read_link(self.dir.join("exe"))
            .map_err(|e| ProcessError::from_io(self.pid, "exe", &e))
    }

    /// What identifies the binary the process runs now: the executed file's device and inode
    /// (through `exe`, which reaches the inode even if the path now names another file) and
    /// its path. An `execve` changes it; nothing else does.
    pub fn exe_id(&self) -> Result<BinaryId, ProcessError> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(self.dir.join("exe"))
            .map_err(|e| ProcessError::from_io(self.pid, "exe", &e))?;
        Ok(BinaryId {
            dev: meta.dev(),
            ino: meta.ino(),
            path: self.exe_path()?,
        })
    }

    /// Opens the binary the process actually runs. Opening `exe` reaches the inode the
    /// kernel executed even if its path now names another file.
    pub fn open_exe(&self) -> Result<File, ProcessError> {
        File::open(self.dir.join("exe")).map_err(|e| ProcessError::from_io(self.pid, "exe", &e))
    }

    fn read_bounded(&self, what: &'static str, limit: usize) -> Result<Vec<u8>, ProcessError> {
        let io_err = |e: io::Error| ProcessError::from_io(self.pid, what, &e);
        let file = File::open(self.dir.join(what)).map_err(io_err)?;
        let mut raw = Vec::new();
        file.take(limit as u64 + 1)
            .read_to_end(&mut raw)
            .map_err(io_err)?;
        if raw.len() > limit {
            return Err(ProcessError::TooLarge {
                pid: self.pid,
                what,
                limit,
            });
        }
        Ok(raw)
    }
}

/// The binary a process runs: device and inode of the executed file, and its path as
/// `/proc/<pid>/exe` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryId {
    pub dev: u64,
    pub ino: u64,
    pub path: PathBuf,
}

/// The fields of `/proc/<pid>/stat` we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Field 3: `R`, `S`, `Z`...
    pub state: char,
    /// Field 22: start time in clock ticks since boot.
    pub start_time: u64,
}

/// Parses a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and may
/// itself hold spaces and `)`, so the fields are counted from the *last* `)`.
pub fn parse_stat(line: &str) -> Option<Stat> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    if close < open {
        return None;
    }
    let pid = line[..open].trim_end();
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut fields = line[close + 1..].split_ascii_whitespace();
    // Fields 3.. follow the command; field 22 is the 20th of them.
    let state = fields.next()?;
    let mut state_chars = state.chars();
    let (Some(state), None) = (state_chars.next(), state_chars.next()) else {
        return None;
    };
    let start_time = fields.nth(22 - 4)?.parse().ok()?;
    Some(Stat { state, start_time })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_line(comm: &str, state: char, start: u64) -> String {
        // Fields 4..21 are filler; field 22 is the start time; more fields follow.
        let filler: Vec<String> = (4..22).map(|n| n.to_string()).collect();
        format!(
            "4242 ({comm}) {state} {} {start} 100 200 300\n",
            filler.join(" ")
        )
    }

    #[test]
    fn start_time_is_field_22_even_with_hostile_command_names() {
        for comm in ["cat", "a b", "x) R 1 2 3", ") (", "((", ""] {
            let stat = parse_stat(&stat_line(comm, 'S', 987_654)).unwrap();
            assert_eq!(
                stat,
                Stat {
                    state: 'S',
                    start_time: 987_654
                },
                "{comm:?}"
            );
        }
    }

    #[test]
    fn real_stat_of_this_thread_parses() {
        let text = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let stat = parse_stat(&text).unwrap();
        assert_eq!(stat.state, 'R');
        assert!(stat.start_time > 0);
    }

    #[test]
    fn refuses_malformed_stat() {
        let good = stat_line("cat", 'S', 5);
        let truncated = &good[..good.len() - 20];
        for bad in [
            "",
            "4242 cat S 1",
            "4242 (cat S 1 2",
            ") 4242 (",
            "x (cat) S 1",
            truncated,
            &good.replace(" 5 100", " -5 100"),
            &good.replace("(cat) S", "(cat) SS"),
        ] {
            assert_eq!(parse_stat(bad), None, "{bad:?}");
        }
    }
}
