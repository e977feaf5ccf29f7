//! `lanyard-proxy run`: binds every listener, starts the Workload API client, and serves.
//!
//! [`start`] returns once everything is bound, with the bound addresses (port 0 resolved), so
//! the binary can announce them and tests can dial them. Dropping the [`RunningProxy`] stops
//! the listeners and the Workload API client; connections already open run to their end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use lanyard_svid::BundleSet;
use lanyard_svid::tls::{LANYARD_ALPN, SvidStore, server_config};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::config::ProxyConfig;
use crate::context::{ConnContext, ConnLimits};
use crate::discovery::{DiscoveryClient, DiscoverySettings};
use crate::inbound::{Inbound, InboundPolicy, InboundTarget, serve_inbound};
use crate::metrics::ProxyMetrics;
use crate::outbound::{OutboundDestination, serve_outbound};
use crate::tap::{TAP_QUEUE_LINES, Tap, serve_tap};
use crate::workload_client;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {addr} ({role}): {source}")]
    Bind {
        role: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started proxy.
pub struct RunningProxy {
    /// Each listener's role and bound address, in the order they were configured.
    pub listeners: Vec<(&'static str, SocketAddr)>,
    pub store: Arc<SvidStore>,
    pub tap: Tap,
    pub metrics: Arc<ProxyMetrics>,
    tasks: JoinSet<()>,
}

impl RunningProxy {
    /// The bound addresses of the listeners with `role` (`inbound`, `outbound`,
    /// `transparent-inbound`, `transparent-outbound`, `admin`, `metrics`).
    pub fn addrs(&self, role: &str) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter(|(r, _)| *r == role)
            .map(|(_, a)| *a)
            .collect()
    }

    /// The one listener with `role`; panics if there is not exactly one (feature
    /// `test-util`).
    #[cfg(feature = "test-util")]
    pub fn addr(&self, role: &str) -> SocketAddr {
        let addrs = self.addrs(role);
        assert_eq!(addrs.len(), 1, "listeners with role {role}: {addrs:?}");
        addrs[0]
    }

    /// Runs until a serving task ends (they do not, short of a panic).
    pub async fn wait(mut self) {
        let _ = self.tasks.join_next().await;
    }
}

async fn bind(role: &'static str, addr: SocketAddr) -> Result<(TcpListener, SocketAddr), RunError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { role, addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| RunError::Bind { role, addr, source })?;
    Ok((listener, bound))
}

/// Binds and starts everything `config` asks for.
pub async fn start(config: &ProxyConfig) -> Result<RunningProxy, RunError> {
    let mut registry = Registry::default();
    let metrics = ProxyMetrics::register(&mut registry);
    let store = Arc::new(SvidStore::new(BundleSet::new()));
    let tap = Tap::new(TAP_QUEUE_LINES, metrics.tap_dropped.clone());
    let ctx = Arc::new(ConnContext::new(
        store.clone(),
        tap.clone(),
        metrics.clone(),
        ConnLimits {
            max_connections: config.max_connections,
            handshake_timeout: config.handshake_timeout,
            idle_timeout: config.idle_timeout,
        },
    ));
    let policy = Arc::new(InboundPolicy {
        strict: config.strict,
        opaque_ports: config.opaque_ports.clone(),
        detect_timeout: config.detect_timeout,
        acceptor: TlsAcceptor::from(Arc::new(server_config(
            store.clone(),
            config.allow.clone().into_authorizer(),
            vec![LANYARD_ALPN.to_vec()],
        ))),
    });

    let mut tasks = JoinSet::new();
    let mut listeners = Vec::new();
    for inbound in &config.inbound {
        let (listener, addr) = bind("inbound", inbound.listen).await?;
        listeners.push(("inbound", addr));
        let inbound = Inbound {
            target: InboundTarget::Fixed(inbound.target.clone()),
            policy: policy.clone(),
        };
        tasks.spawn(serve_inbound(listener, inbound, ctx.clone()));
    }
    for outbound in &config.outbound {
        let (listener, addr) = bind("outbound", outbound.listen).await?;
        listeners.push(("outbound", addr));
        tasks.spawn(serve_outbound(
            listener,
            OutboundDestination::Fixed {
                destination: outbound.destination.clone(),
                expected_id: outbound.expected_id.clone(),
            },
            ctx.clone(),
        ));
    }
    if let Some(listen) = config.transparent_inbound {
        let (listener, addr) = bind("transparent-inbound", listen).await?;
        listeners.push(("transparent-inbound", addr));
        let inbound = Inbound {
            target: InboundTarget::OriginalDst,
            policy: policy.clone(),
        };
        tasks.spawn(serve_inbound(listener, inbound, ctx.clone()));
    }
    if let Some(listen) = config.transparent_outbound {
        let (listener, addr) = bind("transparent-outbound", listen).await?;
        listeners.push(("transparent-outbound", addr));
        tasks.spawn(serve_outbound(
            listener,
            OutboundDestination::OriginalDst {
                discovery: config.discovery.then(|| {
                    DiscoveryClient::with_metrics(
                        config.workload_socket.clone(),
                        DiscoverySettings::default(),
                        metrics.clone(),
                    )
                }),
            },
            ctx.clone(),
        ));
    }
    let (admin, addr) = bind("admin", config.admin).await?;
    listeners.push(("admin", addr));
    tasks.spawn(serve_tap(admin, tap.clone()));
    if let Some(listen) = config.metrics {
        let (listener, addr) = bind("metrics", listen).await?;
        listeners.push(("metrics", addr));
        let ready_store = store.clone();
        let readiness = move || readiness(&ready_store, SystemTime::now());
        tasks.spawn(crate::probes::serve(
            listener,
            Arc::new(registry),
            Arc::new(readiness),
            config.metrics_access,
        ));
    }
    tasks.spawn(workload_client::follow(
        config.workload_socket.clone(),
        store.clone(),
        metrics.clone(),
    ));
    Ok(RunningProxy {
        listeners,
        store,
        tap,
        metrics,
        tasks,
    })
}

/// `/readyz`: ready while an SVID is held and still valid (an expired one cannot be used for
/// mTLS, e.g. while the agent is unreachable for longer than the SVID's lifetime).
pub fn readiness(store: &SvidStore, now: SystemTime) -> Result<(), String> {
    match store.svid() {
        None => Err("no X.509-SVID from the Workload API yet".to_owned()),
        Some(svid) if svid.not_after() <= now => Err(format!(
            "the X.509-SVID {} expired at {}",
            svid.spiffe_id(),
            humantime::format_rfc3339_seconds(svid.not_after())
        )),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_svid::test_support::TestCa;
    use std::time::Duration;

    #[test]
    fn ready_only_with_an_unexpired_svid() {
        let ca = TestCa::new("example.org");
        let store = SvidStore::new(BundleSet::new());
        let now = SystemTime::now();
        assert!(
            readiness(&store, now)
                .unwrap_err()
                .contains("no X.509-SVID")
        );
        let svid = ca.svid("spiffe://example.org/web");
        let not_after = svid.not_after();
        store.update_svid(svid).unwrap();
        readiness(&store, now).unwrap();
        let later = not_after + Duration::from_secs(1);
        let err = readiness(&store, later).unwrap_err();
        assert!(err.contains("expired"), "{err}");
    }
}
