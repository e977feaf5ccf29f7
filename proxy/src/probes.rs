//! The proxy's `--metrics` listener: `/healthz` and `/readyz` for everyone who can reach it
//! (the kubelet's probes come from the node, from an address the pod cannot tell from another
//! pod's), `/metrics` only for callers on the pod's loopback (its own containers, e.g. a
//! metrics agent sidecar) unless [`MetricsAccess::Everyone`] (`--metrics-allow-remote`). The
//! metrics name every peer the proxy talked to by direction and outcome, plaintext; they are
//! not for every pod in the cluster to read. The listener is `lanyard_telemetry`'s, with a
//! [`MetricsPolicy`] from [`MetricsAccess`].

use std::fmt;
use std::sync::Arc;

use lanyard_telemetry::{MetricsPolicy, Readiness, serve_health_with};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Who may read `/metrics`; the text is its label.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MetricsAccess {
    /// Callers on the loopback address only (the default).
    #[default]
    Loopback,
    /// Everyone who can reach the listener (`--metrics-allow-remote`).
    Everyone,
}

impl fmt::Display for MetricsAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MetricsAccess::Loopback => "loopback",
            MetricsAccess::Everyone => "everyone",
        })
    }
}

/// What a refused `/metrics` caller is told.
pub const METRICS_REFUSED: &str = "the proxy's /metrics are served on the pod's loopback only; \
     annotate the pod lanyard.dev/proxy-metrics: expose (lanyard-proxy --metrics-allow-remote) \
     to serve them to other pods\n";

impl MetricsAccess {
    /// The health listener's rule for this setting.
    pub fn policy(self) -> MetricsPolicy {
        match self {
            MetricsAccess::Loopback => MetricsPolicy::LoopbackOnly {
                refusal: METRICS_REFUSED,
            },
            MetricsAccess::Everyone => MetricsPolicy::Everyone,
        }
    }
}

/// Serves the endpoints on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    readiness: Arc<dyn Readiness>,
    access: MetricsAccess,
) {
    serve_health_with(listener, registry, readiness, access.policy()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_keeps_metrics_on_loopback() {
        assert_eq!(MetricsAccess::default().to_string(), "loopback");
        let remote = "10.1.2.3:40000".parse().unwrap();
        assert!(!MetricsAccess::default().policy().allows(remote));
        assert!(MetricsAccess::Everyone.policy().allows(remote));
        assert_eq!(
            MetricsAccess::Loopback.policy(),
            MetricsPolicy::LoopbackOnly {
                refusal: METRICS_REFUSED
            }
        );
    }
}
