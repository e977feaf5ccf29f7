//! Merging a daemon's options from their three sources (DESIGN §2): `--flag` over
//! `LANYARD_<FLAG>` over the `--config` file. clap merges the first two (each option is
//! `#[arg(long, env = "LANYARD_…")]`, repeatable ones with `value_delimiter = ','`); this module
//! fills what they left unset from the file, remembers which options the file supplied, and
//! names that source when a value is refused, so the user knows which of the three to fix.

use std::path::PathBuf;

use crate::config_file::ConfigFileError;

/// Where an option's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `--flag` or `LANYARD_<FLAG>`: clap has merged the two before we see the value.
    FlagOrEnv,
    /// Another variable a daemon falls back on, e.g. `SPIFFE_ENDPOINT_SOCKET`.
    Env(&'static str),
    /// The `--config` file.
    File(PathBuf),
}

/// Why a daemon's options are refused: the reasons every daemon shares. Options are named by
/// their flag (`trust-domain`); the variable and file key follow from it.
#[derive(Debug, thiserror::Error)]
pub enum OptionError {
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error("--{0} is required (flag, {env} or `{key}` in --config)", env = env_var(.0), key = file_key(.0))]
    Missing(&'static str),
    #[error("--{flag}: {message}{}", from_suffix(.flag, .origin.as_ref()))]
    Invalid {
        flag: &'static str,
        message: String,
        /// `None` until [`Provenance::name_origin`] has looked it up.
        origin: Option<Origin>,
    },
}

/// A refused value of `--flag`; [`Provenance::name_origin`] adds where it came from.
pub fn invalid(flag: &'static str, message: impl ToString) -> OptionError {
    OptionError::Invalid {
        flag,
        message: message.to_string(),
        origin: None,
    }
}

fn env_var(flag: &str) -> String {
    format!("LANYARD_{}", flag.to_uppercase().replace('-', "_"))
}

fn file_key(flag: &str) -> String {
    flag.replace('-', "_")
}

fn from_suffix(flag: &str, origin: Option<&Origin>) -> String {
    match origin {
        None => String::new(),
        Some(Origin::FlagOrEnv) => format!(" (from the flag or {})", env_var(flag)),
        Some(Origin::Env(var)) => format!(" (from {var})"),
        Some(Origin::File(path)) => format!(" (from `{}` in {})", file_key(flag), path.display()),
    }
}

/// Which options a source below flags and `LANYARD_*` supplied; every other given value came
/// from a flag or its variable.
#[derive(Debug, Default)]
pub struct Provenance {
    /// `(file key, origin)`; an option is filled at most once, so a key appears at most once.
    supplied: Vec<(&'static str, Origin)>,
}

impl Provenance {
    /// Sets `value` to `lower` if `value` is unset and `lower` is not, noting that option `key`
    /// (the file key) came from `origin`. Unset is the default: `None`, an empty list, or a
    /// switch left off (so any source can turn a switch on, none can turn it off).
    pub fn fill<T: Default + PartialEq>(
        &mut self,
        origin: &Origin,
        key: &'static str,
        value: &mut T,
        lower: T,
    ) {
        if *value == T::default() && lower != T::default() {
            *value = lower;
            self.supplied.push((key, origin.clone()));
        }
    }

    /// Adds to an [`OptionError::Invalid`] where the refused value came from.
    pub fn name_origin(&self, err: OptionError) -> OptionError {
        let OptionError::Invalid { flag, message, .. } = err else {
            return err;
        };
        let supplied = self.supplied.iter().find(|(key, _)| *key == file_key(flag));
        let origin = supplied.map_or(Origin::FlagOrEnv, |(_, origin)| origin.clone());
        OptionError::Invalid {
            flag,
            message,
            origin: Some(origin),
        }
    }
}

/// `fill_unset!(provenance, origin, into, from; field, ...)`: for each field (named as its
/// file key), [`Provenance::fill`]s `into.field` from `from.field`, noting `origin`.
#[macro_export]
macro_rules! fill_unset {
    ($provenance:expr, $origin:expr, $into:expr, $from:expr; $($field:ident),+ $(,)?) => {{
        let origin = $origin;
        $( $provenance.fill(&origin, stringify!($field), &mut $into.$field, $from.$field); )+
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Options {
        name: Option<String>,
        peers: Vec<String>,
        verbose: bool,
    }

    fn file() -> Origin {
        Origin::File("/etc/lanyard/d.toml".into())
    }

    #[test]
    fn only_unset_options_are_filled_and_noted() {
        let mut given = Options {
            name: Some("flag".into()),
            ..Default::default()
        };
        let lower = Options {
            name: Some("file".into()),
            peers: vec!["a".into()],
            verbose: true,
        };
        let mut provenance = Provenance::default();
        fill_unset!(provenance, file(), given, lower; name, peers, verbose);
        assert_eq!(given.name.as_deref(), Some("flag"));
        assert_eq!(given.peers, ["a"]);
        assert!(given.verbose);
        let named = |flag| provenance.name_origin(invalid(flag, "bad")).to_string();
        assert!(named("name").ends_with("(from the flag or LANYARD_NAME)"));
        assert!(named("peers").ends_with("(from `peers` in /etc/lanyard/d.toml)"));

        // An unset lower value fills nothing and is not noted.
        let mut empty = Options::default();
        let mut provenance = Provenance::default();
        fill_unset!(provenance, file(), empty, Options::default(); name, peers, verbose);
        assert!(empty.name.is_none() && empty.peers.is_empty() && !empty.verbose);
        assert!(provenance.supplied.is_empty());
    }

    #[test]
    fn a_refused_value_names_its_source() {
        let mut provenance = Provenance::default();
        let mut ttl = None;
        provenance.fill(&file(), "x509_ttl", &mut ttl, Some("0s"));
        let mut socket = None;
        provenance.fill(
            &Origin::Env("SPIFFE_ENDPOINT_SOCKET"),
            "workload_socket",
            &mut socket,
            Some("x"),
        );
        let named = |flag| provenance.name_origin(invalid(flag, "bad")).to_string();
        assert_eq!(
            named("x509-ttl"),
            "--x509-ttl: bad (from `x509_ttl` in /etc/lanyard/d.toml)"
        );
        assert_eq!(
            named("node-ttl"),
            "--node-ttl: bad (from the flag or LANYARD_NODE_TTL)"
        );
        assert_eq!(
            named("workload-socket"),
            "--workload-socket: bad (from SPIFFE_ENDPOINT_SOCKET)"
        );
        assert_eq!(invalid("node-ttl", "bad").to_string(), "--node-ttl: bad");
    }

    #[test]
    fn missing_names_all_three_places() {
        assert_eq!(
            OptionError::Missing("trust-domain").to_string(),
            "--trust-domain is required (flag, LANYARD_TRUST_DOMAIN or `trust_domain` in --config)"
        );
        // Only Invalid gains an origin.
        let missing = Provenance::default().name_origin(OptionError::Missing("listen"));
        assert!(matches!(missing, OptionError::Missing("listen")));
    }
}
