//! The pod's traffic redirection: the iptables script in `deploy/iptables/redirect.sh`,
//! embedded here so the init container `lanyard inject` adds runs exactly the file the proxy's
//! network-namespace tests run, and the parameters it reads.

/// The script (POSIX sh), verbatim.
pub const REDIRECT_SCRIPT: &str = include_str!("../../deploy/iptables/redirect.sh");

/// Where the script lives in the repository, for tests and docs.
pub const REDIRECT_SCRIPT_PATH: &str = "deploy/iptables/redirect.sh";

/// The environment variables the script reads.
pub const ENV_PROXY_UID: &str = "PROXY_UID";
pub const ENV_PROXY_INBOUND_PORT: &str = "PROXY_INBOUND_PORT";
pub const ENV_PROXY_OUTBOUND_PORT: &str = "PROXY_OUTBOUND_PORT";
pub const ENV_SKIP_INBOUND_PORTS: &str = "SKIP_INBOUND_PORTS";
pub const ENV_SKIP_OUTBOUND_PORTS: &str = "SKIP_OUTBOUND_PORTS";

/// The uid the injected proxy runs as; the script never redirects its traffic.
pub const PROXY_UID: u32 = 2102;
/// The proxy's `--transparent-inbound` port.
pub const PROXY_INBOUND_PORT: u16 = 4143;
/// The proxy's `--transparent-outbound` port (it listens on 127.0.0.1).
pub const PROXY_OUTBOUND_PORT: u16 = 4140;
/// The proxy's tap (`--admin`, loopback only).
pub const PROXY_ADMIN_PORT: u16 = 4191;
/// The proxy's `/metrics`, `/healthz`, `/readyz` (`--metrics`), reached by the kubelet.
pub const PROXY_METRICS_PORT: u16 = 4192;
