//! Lanyard's traffic redirection for one pod's network namespace: the ONE copy of the rules.
//!
//! The `lanyard-init` container that `lanyard inject --redirect init` adds runs the
//! `lanyard-redirect` binary (this crate's `src/main.rs`), the network-namespace end-to-end
//! tests run the same binary, and the `lanyard-cni` plugin calls [`steps`] and
//! [`Iptables::apply`] itself inside the pod's namespace, so every path installs exactly the
//! same rules. It needs NET_ADMIN and NET_RAW in the pod's network namespace and the
//! `iptables` and `ip6tables` commands (legacy or nft backend); no shell.
//!
//! What it installs, in the nat table, for IPv4 (`iptables`) and then the same for IPv6
//! (`ip6tables`):
//! - inbound: every TCP connection arriving at the pod (PREROUTING) goes to the proxy's
//!   inbound port, except the skipped inbound ports; the proxy reads the original port
//!   (`SO_ORIGINAL_DST`, `IP6T_SO_ORIGINAL_DST`);
//! - outbound: every TCP connection the pod opens (OUTPUT) goes to the proxy's outbound port
//!   on loopback (`127.0.0.1`; for IPv6 the kernel's REDIRECT in OUTPUT picks `::1`, so the
//!   proxy listens on `[::1]` too), except the proxy's own (its uid: its upstream and app-side
//!   connections), loopback (the app talking to itself or to the proxy: `-o lo`,
//!   `127.0.0.0/8`, `::1/128`) and the skipped outbound ports.
//!
//! IPv6 where there is none: a namespace without an IPv6 nat table (a kernel without IPv6 or
//! booted with `ipv6.disable=1`) cannot carry IPv6 traffic at all, so a run installs the IPv4
//! rules only and says so ([`Coverage::Ipv4Only`], with ip6tables' own words). A missing
//! `ip6tables` command is an error, not a reason to skip: see [`iptables`].
//!
//! Running it again replaces the rules instead of adding a second copy; [`removal_steps`]
//! removes them; [`Iptables::check`] compares a namespace with them.
//!
//! Module map:
//! - [`config`]: [`RedirectConfig`], its defaults, its environment variables and its pod
//!   annotations.
//! - [`rules`]: [`steps`] and [`removal_steps`], the ordered iptables/ip6tables argument
//!   vectors, each [`Step`] tagged with its [`Family`].
//! - [`mode`]: [`RedirectMode`], which mechanism installs a pod's rules (CNI or init).
//! - [`iptables`]: [`Iptables`], which runs them (each family through its command) and finds
//!   out whether the namespace has IPv6 ([`Coverage`]).
//! - [`check`]: [`Iptables::check`], the differences between a namespace and the steps.

#![forbid(unsafe_code)]

pub mod check;
pub mod config;
pub mod iptables;
pub mod mode;
pub mod rules;

pub use check::{Checked, Difference};
pub use config::{ConfigError, RedirectConfig};
pub use iptables::{ApplyError, Coverage, Iptables, Ran};
pub use mode::{RedirectMode, UnknownRedirectMode};
pub use rules::{Action, Family, Step, removal_steps, steps};

/// The uid the injected proxy runs as; its traffic is never redirected.
pub const PROXY_UID: u32 = 2102;
/// The proxy's `--transparent-inbound` port.
pub const PROXY_INBOUND_PORT: u16 = 4143;
/// The proxy's `--transparent-outbound` port (on 127.0.0.1, and on ::1 for IPv6).
pub const PROXY_OUTBOUND_PORT: u16 = 4140;
/// The proxy's tap (`--admin`, loopback only).
pub const PROXY_ADMIN_PORT: u16 = 4191;
/// The proxy's `/metrics`, `/healthz`, `/readyz` (`--metrics`), reached by the kubelet.
pub const PROXY_METRICS_PORT: u16 = 4192;

/// The environment variables [`RedirectConfig::from_env`] reads.
pub const ENV_PROXY_UID: &str = "PROXY_UID";
pub const ENV_PROXY_INBOUND_PORT: &str = "PROXY_INBOUND_PORT";
pub const ENV_PROXY_OUTBOUND_PORT: &str = "PROXY_OUTBOUND_PORT";
pub const ENV_SKIP_INBOUND_PORTS: &str = "SKIP_INBOUND_PORTS";
pub const ENV_SKIP_OUTBOUND_PORTS: &str = "SKIP_OUTBOUND_PORTS";
/// On a pod template: which mechanism installs the pod's redirect, [`REDIRECT_CNI`] or
/// [`REDIRECT_INIT`]. The CNI plugin acts only on injected pods that say [`REDIRECT_CNI`], so
/// the rules are never installed twice.
pub const REDIRECT_ANNOTATION: &str = "lanyard.dev/redirect";
/// [`REDIRECT_ANNOTATION`]: the node's CNI plugin installs the rules.
pub const REDIRECT_CNI: &str = "cni";
/// [`REDIRECT_ANNOTATION`]: the `lanyard-init` container installs the rules.
pub const REDIRECT_INIT: &str = "init";

/// The pod annotations [`RedirectConfig::from_annotations`] reads (the CNI plugin's view of
/// what the environment variables say to the init container); absent means the default.
pub const ANNOTATION_PROXY_UID: &str = "lanyard.dev/proxy-uid";
pub const ANNOTATION_PROXY_INBOUND_PORT: &str = "lanyard.dev/proxy-inbound-port";
pub const ANNOTATION_PROXY_OUTBOUND_PORT: &str = "lanyard.dev/proxy-outbound-port";
pub const ANNOTATION_SKIP_INBOUND_PORTS: &str = "lanyard.dev/skip-inbound-ports";
pub const ANNOTATION_SKIP_OUTBOUND_PORTS: &str = "lanyard.dev/skip-outbound-ports";

/// The iptables command ([`Iptables::from_env`]); tests substitute a recorder.
pub const ENV_IPTABLES: &str = "IPTABLES";
/// The iptables command when [`ENV_IPTABLES`] is unset or empty: found on `PATH`.
pub const DEFAULT_IPTABLES: &str = "iptables";
/// The ip6tables command ([`Iptables::from_env`]).
pub const ENV_IP6TABLES: &str = "IP6TABLES";
/// The ip6tables command when [`ENV_IP6TABLES`] is unset or empty: found on `PATH`.
pub const DEFAULT_IP6TABLES: &str = "ip6tables";

/// Where the init image keeps the binary (the injected container's `command`).
pub const IMAGE_BINARY_PATH: &str = "/usr/local/bin/lanyard-redirect";

/// The chains the rules live in (nat table, both families).
pub const INBOUND_CHAIN: &str = "LANYARD_INBOUND";
pub const OUTBOUND_CHAIN: &str = "LANYARD_OUTBOUND";

/// Ports per skip list: the injector's own limit plus the proxy's ports, with room; it bounds
/// the number of rules.
pub const MAX_SKIP_PORTS: usize = 128;
