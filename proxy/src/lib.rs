//! lanyard-proxy: the sidecar that gives a workload mutual TLS without changing it.
//!
//! Module map:
//! - [`config`]: `run` options from flags, `LANYARD_*` env and `--config` TOML, validated.
//! - [`workload_client`]: the Workload API client keeping the SVID store current.
//! - [`discovery`]: the agent Discovery client: what is behind a transparent destination.
//! - [`detect`]: the bounded, allocation-free ClientHello/ALPN parser (fuzzed).
//! - [`first_flight`]: reading a client's first bytes for detection under a deadline.
//! - [`accept`]: the accept loop of every listener and its connection budget (per source).
//! - [`inbound`]: network to workload: detect, terminate mTLS or forward, or refuse.
//! - [`outbound`]: workload to network: originate mTLS to a known ID, else plaintext.
//! - [`original_dst`]: `SO_ORIGINAL_DST` for the transparent (iptables REDIRECT) listeners.
//! - [`forward`]: the bidirectional pipe (byte counts, half-close, idle timeout) and the one
//!   plaintext forward.
//! - [`connectors`]: outbound TLS connectors, one per expected server ID, shared.
//! - [`copy`]: its copy loop, with buffers that grow while streaming and go when idle.
//! - [`read_ahead`]: large socket reads under a TLS session (rustls reads a record at a time).
//! - [`context`]: what connection handlers share, and the end-of-connection report.
//! - [`reason`]: the typed reasons for plaintext or refusal, whose text is the label.
//! - [`tap`]: one line per connection to `--admin` readers, lossy for slow readers.
//! - [`metrics`]: Prometheus metrics.
//! - [`probes`]: the `--metrics` listener: health for all, `/metrics` for loopback callers.
//! - [`run`]: binds everything and starts serving.
//! - [`redirect_check`]: `validate-redirect`, the injected pod's proof that the outbound
//!   redirect rules are in place.

pub mod accept;
pub mod config;
pub mod connectors;
pub mod context;
pub mod copy;
pub mod detect;
pub mod discovery;
pub mod first_flight;
pub mod forward;
pub mod inbound;
pub mod metrics;
pub mod original_dst;
pub mod outbound;
pub mod probes;
pub mod read_ahead;
pub mod reason;
pub mod redirect_check;
pub mod run;
pub mod tap;
pub mod workload_client;

pub use config::{ProxyConfig, RunArgs};
pub use reason::NoTlsReason;
pub use run::{RunningProxy, start};
pub use tap::{ConnRecord, Direction, Outcome, Tap, TapEvent};
