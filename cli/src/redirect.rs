//! The pod's traffic redirection lives in `lanyard-redirect` (the `lanyard-init` container
//! runs its binary); its parameters and the proxy's uid and ports are re-exported here for
//! the CLI's callers.

pub use lanyard_redirect::{
    ENV_PROXY_INBOUND_PORT, ENV_PROXY_OUTBOUND_PORT, ENV_PROXY_UID, ENV_SKIP_INBOUND_PORTS,
    ENV_SKIP_OUTBOUND_PORTS, IMAGE_BINARY_PATH, PROXY_ADMIN_PORT, PROXY_INBOUND_PORT,
    PROXY_METRICS_PORT, PROXY_OUTBOUND_PORT, PROXY_UID, RedirectConfig,
};
