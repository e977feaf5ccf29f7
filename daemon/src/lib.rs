//! What the Lanyard daemons share for their local files, their address options and their
//! listeners, so the rules for them live in one place (the `lanyard` CLI uses the address
//! parser too).
//!
//! Module map:
//! - [`address`]: the one parser of address options: `HOST:PORT` to connect to (names
//!   resolved when dialled), `IP:PORT` to listen on.
//! - [`config_file`]: reading the `--config` TOML file (bounded, unknown keys refused by the
//!   caller's serde type), the bottom layer under flags and `LANYARD_*` variables.
//! - [`config_merge`]: filling options from that file under flags and variables, and the
//!   refusals every daemon shares (a missing option, a bad value named with its source).
//! - [`duration`]: the one duration parser and its bounds (1 s to 1 year) for TTL options,
//!   static entries and LanyardIdentity TTLs.
//! - [`help_defaults`]: the check that every optional option shows its default in `--help`.
//! - [`private_file`]: files written atomically as new files (never through an existing file or
//!   symlink), secrets with mode 0600, in directories only we can enter; and read back
//!   (`read_private`) only when no one else may read them.
//! - [`rewind`]: a stream that replays the bytes a listener read before choosing its server.

#![forbid(unsafe_code)]

pub mod address;
pub mod config_file;
pub mod config_merge;
pub mod duration;
pub mod help_defaults;
pub mod private_file;
pub mod rewind;
