//! The Python clients of the interoperability tests (py-spiffe on grpc-core, PyJWT, ...), run
//! from the venv `./scripts/test` builds (`LANYARD_TEST_PYTHON`). Each client prints one flat
//! JSON object per line on stdout; [`PyClient::next`] hands them over one at a time.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use crate::DEADLINE;

/// The venv's interpreter. Without `LANYARD_TEST_PYTHON` the calling test fails (it never
/// passes silently).
pub fn python() -> PathBuf {
    match std::env::var_os("LANYARD_TEST_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "LANYARD_TEST_PYTHON is not set: run the tests with ./scripts/test, which builds \
             the py-spiffe/grpcio venv from tests/python-requirements.txt and sets it"
        ),
    }
}

/// A script of `workload-agent/tests/python/`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../workload-agent/tests/python")
        .join(name)
}

/// A Python client process whose JSON stdout lines arrive on a channel.
pub struct PyClient {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl PyClient {
    /// Runs `script` (a path) with `args`, its stderr shown with the test's.
    pub fn spawn(script: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(python())
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the Python client");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// The next line, waiting at most twice the e2e deadline.
    pub fn next(&self) -> String {
        self.lines
            .recv_timeout(DEADLINE * 2)
            .expect("a line from the Python client (its stderr is above)")
    }

    /// Waits (bounded) for the client to exit, and asserts it succeeded.
    pub fn succeeds(mut self) {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the Python client") {
                assert!(status.success(), "the Python client failed: {status}");
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the Python client did not exit"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for PyClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The JSON value of `key` in a line printed by the Python clients (`json.dumps`, flat
/// objects): a string's contents, or a number or list as written.
pub fn field(line: &str, key: &str) -> String {
    let start = line
        .find(&format!("\"{key}\": "))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + key.len()
        + 4;
    let rest = &line[start..];
    if let Some(s) = rest.strip_prefix('"') {
        s[..s.find('"').expect("a closing quote")].to_owned()
    } else if rest.starts_with('[') {
        rest[..=rest.find(']').expect("a closing bracket")].to_owned()
    } else {
        rest[..rest.find([',', '}']).expect("the end of a value")].to_owned()
    }
}
