//! Lanyard's traffic redirection for one pod's network namespace: the ONE copy of the rules.
//!
//! The `lanyard-init` container that `lanyard inject` adds runs the `lanyard-redirect` binary
//! (this crate's `src/main.rs`), the network-namespace end-to-end tests run the same binary,
//! and a CNI plugin can call [`steps`] and [`Iptables::apply`] itself, so every path installs
//! exactly the same rules. It needs NET_ADMIN and NET_RAW in the pod's network namespace and
//! an `iptables` command (legacy or nft backend); no shell. IPv4 only: IPv6 traffic is left
//! alone (not meshed).
//!
//! What it installs, in the nat table:
//! - inbound: every TCP connection arriving at the pod (PREROUTING) goes to the proxy's
//!   inbound port, except the skipped inbound ports; the proxy reads the original port
//!   (`SO_ORIGINAL_DST`);
//! - outbound: every TCP connection the pod opens (OUTPUT) goes to 127.0.0.1 at the proxy's
//!   outbound port, except the proxy's own (its uid: its upstream and app-side connections),
//!   loopback (the app talking to itself or to the proxy) and the skipped outbound ports.
//!
//! Running it again replaces the rules instead of adding a second copy.
//!
//! Module map:
//! - [`config`]: [`RedirectConfig`], its defaults, its environment variables and its pod
//!   annotations.
//! - [`rules`]: [`steps`], the ordered iptables argument vectors.
//! - [`iptables`]: [`Iptables`], which runs them.

#![forbid(unsafe_code)]

pub mod config;
pub mod iptables;
pub mod rules;

pub use config::{ConfigError, RedirectConfig};
pub use iptables::{ApplyError, Iptables, Ran};
pub use rules::{Step, steps};

/// The uid the injected proxy runs as; its traffic is never redirected.
pub const PROXY_UID: u32 = 2102;
/// The proxy's `--transparent-inbound` port.
pub const PROXY_INBOUND_PORT: u16 = 4143;
/// The proxy's `--transparent-outbound` port (it listens on 127.0.0.1).
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

/// Where the init image keeps the binary (the injected container's `command`).
pub const IMAGE_BINARY_PATH: &str = "/usr/local/bin/lanyard-redirect";

/// The chains the rules live in (nat table).
pub const INBOUND_CHAIN: &str = "LANYARD_INBOUND";
pub const OUTBOUND_CHAIN: &str = "LANYARD_OUTBOUND";

/// Ports per skip list: the injector's own limit plus the proxy's ports, with room; it bounds
/// the number of rules.
pub const MAX_SKIP_PORTS: usize = 128;
