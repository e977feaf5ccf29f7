//! Runs [`Step`]s, each through its family's command (`iptables` or `ip6tables`), as
//! `<command> -w <args>`: a removal that fails found nothing to remove; any other failure
//! stops the run with the command line and what the command wrote to stderr.
//!
//! IPv6 where the namespace has none: before its first IPv6 step, a run asks `ip6tables -w -t
//! nat -S` whether this network namespace has an IPv6 nat table. When that command runs but
//! fails (a kernel without IPv6, `ipv6.disable=1`, no `ip6table_nat`), the IPv6 steps are
//! skipped and the run reports [`Coverage::Ipv4Only`] with ip6tables' own words: nothing can
//! arrive or leave over IPv6 there, so there is nothing to redirect. A missing `ip6tables`
//! command is an error like a missing `iptables`: the namespace may well carry IPv6 that would
//! then pass unredirected, in plaintext.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};

use crate::{DEFAULT_IP6TABLES, DEFAULT_IPTABLES, ENV_IP6TABLES, ENV_IPTABLES, Family, Step};

/// The `iptables` and `ip6tables` commands the steps run through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iptables {
    iptables: PathBuf,
    ip6tables: PathBuf,
}

/// What running one step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ran {
    Done,
    /// A removal step failed: there was nothing to remove.
    NothingToRemove,
}

/// Which families a run redirected (or a check looked at).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Coverage {
    /// IPv4 and IPv6.
    Both,
    /// The namespace has no IPv6 nat table: only IPv4. `why` is what ip6tables said.
    Ipv4Only { why: String },
}

impl Coverage {
    pub fn covers(&self, family: Family) -> bool {
        family == Family::Ipv4 || *self == Coverage::Both
    }
}

/// `ipv4_ipv6`, `ipv4_only`: also the label in logs.
impl fmt::Display for Coverage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Coverage::Both => "ipv4_ipv6",
            Coverage::Ipv4Only { .. } => "ipv4_only",
        })
    }
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("running `{command}`: {source} (is {family_command} installed?)")]
    Spawn {
        command: String,
        family_command: &'static str,
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
        Self::new(DEFAULT_IPTABLES, DEFAULT_IP6TABLES)
    }
}

impl Iptables {
    /// Each program is a path, or a name looked up on `PATH`.
    pub fn new(iptables: impl Into<PathBuf>, ip6tables: impl Into<PathBuf>) -> Self {
        Self {
            iptables: iptables.into(),
            ip6tables: ip6tables.into(),
        }
    }

    /// [`ENV_IPTABLES`] and [`ENV_IP6TABLES`] when set and not empty, else
    /// [`DEFAULT_IPTABLES`] and [`DEFAULT_IP6TABLES`].
    pub fn from_env() -> Self {
        let var = |name, default| match std::env::var_os(name) {
            Some(program) if !program.is_empty() => PathBuf::from(program),
            _ => PathBuf::from(default),
        };
        Self::new(
            var(ENV_IPTABLES, DEFAULT_IPTABLES),
            var(ENV_IP6TABLES, DEFAULT_IP6TABLES),
        )
    }

    /// The command `family`'s steps run through.
    pub fn program(&self, family: Family) -> &Path {
        match family {
            Family::Ipv4 => &self.iptables,
            Family::Ipv6 => &self.ip6tables,
        }
    }

    /// The whole command line of `step`, `-w` included, for messages and `--dry-run`.
    pub fn command_line(&self, step: &Step) -> String {
        self.line(step.family(), step.args())
    }

    fn line(&self, family: Family, args: &[impl AsRef<str>]) -> String {
        let mut line = format!("{} -w", self.program(family).display());
        for arg in args {
            line.push(' ');
            line.push_str(arg.as_ref());
        }
        line
    }

    /// Runs `<family's command> -w ARGS` and returns what it did; not being able to run it is
    /// the error.
    pub fn output(&self, family: Family, args: &[impl AsRef<str>]) -> Result<Output, ApplyError> {
        Command::new(self.program(family))
            .arg("-w")
            .args(args.iter().map(|a| OsString::from(a.as_ref())))
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ApplyError::Spawn {
                command: self.line(family, args),
                family_command: family.command(),
                source,
            })
    }

    /// Whether this network namespace has an IPv6 nat table (see the module docs).
    pub fn ipv6_coverage(&self) -> Result<Coverage, ApplyError> {
        let output = self.output(Family::Ipv6, &["-t", "nat", "-S"])?;
        if output.status.success() {
            return Ok(Coverage::Both);
        }
        // One line: ip6tables may explain itself over several.
        let said = String::from_utf8_lossy(&output.stderr)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        Ok(Coverage::Ipv4Only {
            why: format!(
                "this network namespace has no IPv6 nat table (`{}` failed ({}): {said})",
                self.line(Family::Ipv6, &["-t", "nat", "-S"]),
                output.status
            ),
        })
    }

    /// Runs one step. A removal's failure (a non-zero exit) is [`Ran::NothingToRemove`]; not
    /// being able to run the command at all is an error either way.
    pub fn run(&self, step: &Step) -> Result<Ran, ApplyError> {
        let output = self.output(step.family(), step.args())?;
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
    /// stops at the first failure. Before the first IPv6 step it asks whether the namespace
    /// has IPv6 ([`Iptables::ipv6_coverage`]) and skips every IPv6 step when it has not.
    pub fn apply(
        &self,
        steps: &[Step],
        mut installed: impl FnMut(&Step),
    ) -> Result<Coverage, ApplyError> {
        let mut coverage = None;
        for step in steps {
            if step.family() == Family::Ipv6 {
                if coverage.is_none() {
                    coverage = Some(self.ipv6_coverage()?);
                }
                if coverage != Some(Coverage::Both) {
                    continue;
                }
            }
            self.run(step)?;
            if !step.is_removal() {
                installed(step);
            }
        }
        Ok(coverage.unwrap_or(Coverage::Both))
    }
}
