//! Runs [`Step`]s through an `iptables` command, as `<command> -w <args>`: a removal that
//! fails found nothing to remove (as the shell script treated it); any other failure stops
//! the run with the command line and what iptables wrote to stderr.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use crate::{DEFAULT_IPTABLES, ENV_IPTABLES, Step};

/// The `iptables` command the steps run through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iptables {
    program: PathBuf,
}

/// What running one step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ran {
    Done,
    /// A removal step failed: there was nothing to remove.
    NothingToRemove,
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("running `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
}

impl Default for Iptables {
    fn default() -> Self {
        Self::new(DEFAULT_IPTABLES)
    }
}

impl Iptables {
    /// `program` is a path, or a name looked up on `PATH`.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
        }
    }

    /// [`ENV_IPTABLES`] when set and not empty, else [`DEFAULT_IPTABLES`].
    pub fn from_env() -> Self {
        match std::env::var_os(ENV_IPTABLES) {
            Some(program) if !program.is_empty() => Self::new(program),
            _ => Self::default(),
        }
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The whole command line of `step`, `-w` included, for messages and `--dry-run`.
    pub fn command_line(&self, step: &Step) -> String {
        let mut line = format!("{} -w", self.program.display());
        for arg in step.args() {
            line.push(' ');
            line.push_str(arg);
        }
        line
    }

    /// Runs one step. A removal's failure (a non-zero exit) is [`Ran::NothingToRemove`]; not
    /// being able to run the command at all is an error either way.
    pub fn run(&self, step: &Step) -> Result<Ran, ApplyError> {
        let output = Command::new(&self.program)
            .arg("-w")
            .args(step.args().iter().map(OsString::from))
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ApplyError::Spawn {
                command: self.command_line(step),
                source,
            })?;
        match (output.status.success(), step.is_removal()) {
            (true, _) => Ok(Ran::Done),
            (false, true) => Ok(Ran::NothingToRemove),
            (false, false) => Err(ApplyError::Failed {
                command: self.command_line(step),
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            }),
        }
    }

    /// Runs `steps` in order, calling `installed` after each install step that succeeded;
    /// stops at the first failure.
    pub fn apply(
        &self,
        steps: &[Step],
        mut installed: impl FnMut(&Step),
    ) -> Result<(), ApplyError> {
        for step in steps {
            self.run(step)?;
            if !step.is_removal() {
                installed(step);
            }
        }
        Ok(())
    }
}
