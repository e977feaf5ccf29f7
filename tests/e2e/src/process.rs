//! A child process under test: stdout lines collected as they arrive, stderr kept for failure
//! messages, and the whole process group killed when the handle is dropped, so no test leaves a
//! daemon behind.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use crate::DEADLINE;

#[derive(Default)]
struct Output {
    lines: Vec<String>,
    closed: bool,
}

/// A running child.
pub struct Process {
    name: String,
    child: Child,
    stdout: Arc<(Mutex<Output>, Condvar)>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Starts `program` with `args` in its own process group.
    pub fn start(program: &Path, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut command = Command::new(program);
        command
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        let stdout: Arc<(Mutex<Output>, Condvar)> = Arc::default();
        let out = child.stdout.take().expect("piped");
        let sink = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let (lock, cvar) = &*sink;
                lock.lock().unwrap().lines.push(line);
                cvar.notify_all();
            }
            let (lock, cvar) = &*sink;
            lock.lock().unwrap().closed = true;
            cvar.notify_all();
        });
        let stderr: Arc<Mutex<Vec<String>>> = Arc::default();
        let err = child.stderr.take().expect("piped");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut lines = sink.lock().unwrap();
                // Keep the tail only: a chatty daemon must not grow the test's memory.
                if lines.len() >= 2000 {
                    lines.remove(0);
                }
                lines.push(line);
            }
        });
        Self {
            name: program
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            child,
            stdout,
            stderr,
        }
    }

    /// Waits until a stdout line satisfies `pick`, and returns what it picked.
    pub fn wait_for_line<T>(&self, what: &str, mut pick: impl FnMut(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + DEADLINE;
        let (lock, cvar) = &*self.stdout;
        let mut output = lock.lock().unwrap();
        let mut seen = 0;
        loop {
            for line in &output.lines[seen..] {
                if let Some(found) = pick(line) {
                    return found;
                }
            }
            seen = output.lines.len();
            let now = Instant::now();
            if output.closed || now >= deadline {
                let why = if output.closed { "exited" } else { "timed out" };
                drop(output);
                panic!(
                    "{} {why} before printing {what}; stderr:\n{}",
                    self.name,
                    self.stderr_text()
                );
            }
            output = cvar.wait_timeout(output, deadline - now).unwrap().0;
        }
    }

    /// The address of the listener announced as `listening on ADDR (role)`.
    pub fn listener(&self, role: &str) -> SocketAddr {
        let suffix = format!(" ({role})");
        self.wait_for_line(&format!("its {role} listener"), |line| {
            line.strip_prefix("listening on ")?
                .strip_suffix(&suffix)?
                .parse()
                .ok()
        })
    }

    /// Every stdout line so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.0.lock().unwrap().lines.clone()
    }

    /// What the process wrote to stderr (the tail), for failure messages.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running (it has not exited).
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`, `libc::SIGCONT`) to the process group.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's process group; no memory is touched.
        let rc = unsafe { libc::kill(-(self.child.id() as i32), signal) };
        assert_eq!(
            rc,
            0,
            "kill -{signal} {}: {}",
            self.name,
            std::io::Error::last_os_error()
        );
    }

    /// Stops the process group and waits for the process.
    pub fn kill(&mut self) {
        // SAFETY: kill(2) on our own child's process group; no memory is touched.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself, with the deadline; returns its status.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit in time",
                self.name
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a command to completion (with the deadline) and returns its stdout, failing the test
/// with its stderr if it does not succeed.
pub fn run_ok(program: &Path, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    assert!(
        output.status.success(),
        "{} {args:?} failed: {}",
        program.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}
