//! What the tests that run the real `lanyard` binary against the Kubernetes API fixture share:
//! running a command with the fixture's admin kubeconfig and nothing from the environment that
//! would point it elsewhere, and reading its outcome.

#![allow(dead_code)] // each test crate uses its own part

use std::path::{Path, PathBuf};
use std::process::Command;

/// One run of `lanyard COMMAND ...`.
pub struct Run {
    /// `lanyard ca`, `lanyard identities`: the prefix of its error lines.
    pub command: String,
    pub ok: bool,
    /// The exit status' code.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts a refusal with `label` (`<command>: refused (<label>): `, nothing on stdout)
    /// and returns its message.
    pub fn refused(&self, label: &str) -> &str {
        assert!(
            !self.ok,
            "expected a refusal ({label}), got: {}",
            self.stdout
        );
        let prefix = format!("{}: refused ({label}): ", self.command);
        assert!(
            self.stderr.starts_with(&prefix),
            "expected {prefix:?}: {}",
            self.stderr
        );
        assert!(self.stdout.is_empty(), "{}", self.stdout);
        &self.stderr[prefix.len()..]
    }

    /// Asserts success; returns stdout.
    pub fn ok(&self) -> &str {
        assert!(self.ok, "failed: {}", self.stderr);
        &self.stdout
    }

    /// Asserts failure with exit status 1 and nothing on stdout; returns stderr.
    pub fn failed(&self) -> &str {
        assert!(!self.ok, "expected a failure, got: {}", self.stdout);
        assert_eq!(self.code, Some(1), "{}", self.stderr);
        assert!(self.stdout.is_empty(), "{}", self.stdout);
        &self.stderr
    }
}

/// Runs `lanyard ARGS` (off the async runtime) with `KUBECONFIG=kubeconfig`, `HOME=home`, and
/// no in-cluster configuration or `LANYARD_*` settings from the environment.
pub async fn lanyard(kubeconfig: &Path, home: &Path, args: &[&str]) -> Run {
    let (kubeconfig, home): (PathBuf, PathBuf) = (kubeconfig.to_owned(), home.to_owned());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let command = format!("lanyard {}", args.first().map_or("", String::as_str));
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lanyard"));
        cmd.args(&args)
            .env("KUBECONFIG", kubeconfig)
            .env("HOME", home)
            .env_remove("KUBERNETES_SERVICE_HOST");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("LANYARD_") {
                cmd.env_remove(key);
            }
        }
        let out = cmd.output().unwrap();
        Run {
            command,
            ok: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    })
    .await
    .unwrap()
}
