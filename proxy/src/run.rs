//! `lanyard-proxy run`: binds every listener, starts the Workload API client, and serves.
//!
//! [`start`] returns once everything is bound, with the bound addresses (port 0 resolved), so
//! the binary can announce them and tests can dial them. Dropping the [`RunningProxy`] stops
//! the listeners and the Workload API client; connections already open run to their end.
//!
//! The transparent listeners serve both families, as the redirect rules do
//! (`lanyard-redirect` installs the same rules through iptables and ip6tables): beside
//! `0.0.0.0:P` the inbound one also listens on `[::]:P` (`IPV6_V6ONLY`, so the two sockets
//! share the port), beside `127.0.0.1:P` the outbound one on `[::1]:P` (where OUTPUT's
//! REDIRECT delivers IPv6 connections), P being the port the IPv4 socket got. A namespace
//! without IPv6 (binding answers `EADDRNOTAVAIL` or `EAFNOSUPPORT`) gets the IPv4 listener and
//! one log line; any other failure to bind is fatal, as for every listener.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::Arc;
use std::time::SystemTime;

use lanyard_svid::BundleSet;
use lanyard_svid::tls::{LANYARD_ALPN, SvidStore, server_config};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpSocket};
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

/// Pending connections per listener (what `TcpListener::bind` asks for too).
const LISTEN_BACKLOG: u32 = 1024;

/// The IPv6 address a transparent listener on `addr` also listens on: `[::]` beside
/// `0.0.0.0`, `[::1]` beside an IPv4 loopback address; none beside anything else.
fn ipv6_companion(addr: SocketAddr) -> Option<SocketAddrV6> {
    let IpAddr::V4(v4) = addr.ip() else {
        return None;
    };
    let ip = if v4.is_unspecified() {
        Ipv6Addr::UNSPECIFIED
    } else if v4.is_loopback() {
        Ipv6Addr::LOCALHOST
    } else {
        return None;
    };
    Some(SocketAddrV6::new(ip, addr.port(), 0, 0))
}

/// Whether failing to bind an IPv6 address means this network namespace has no IPv6: the
/// address is not there (`::1` without IPv6 on loopback) or the family is not (IPv6 disabled
/// in the kernel).
fn means_no_ipv6(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EADDRNOTAVAIL) | Some(libc::EAFNOSUPPORT)
    )
}

/// An IPv6-only listener on `addr` (`IPV6_V6ONLY` set before binding, so it never takes an
/// IPv4 port, and `[::]:P` coexists with `0.0.0.0:P`).
fn bind_v6only(addr: SocketAddrV6) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v6()?;
    socket.set_reuseaddr(true)?;
    set_v6only(&socket)?;
    socket.bind(SocketAddr::V6(addr))?;
    socket.listen(LISTEN_BACKLOG)
}

fn set_v6only(socket: &TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: the fd is `socket`'s, open for the call; `on` is a live c_int and the length
    // passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Binds a transparent listener: `addr`, then (see the module docs) its IPv6 companion on
/// the port `addr` got, unless the namespace has no IPv6.
async fn bind_transparent(
    role: &'static str,
    addr: SocketAddr,
) -> Result<Vec<(TcpListener, SocketAddr)>, RunError> {
    let (listener, bound) = bind(role, addr).await?;
    let mut bound_all = vec![(listener, bound)];
    let Some(v6) = ipv6_companion(addr) else {
        return Ok(bound_all);
    };
    let v6 = SocketAddrV6::new(*v6.ip(), bound.port(), 0, 0);
    let bind_error = |source| RunError::Bind {
        role,
        addr: SocketAddr::V6(v6),
        source,
    };
    match bind_v6only(v6) {
        Ok(listener) => {
            let bound = listener.local_addr().map_err(bind_error)?;
            bound_all.push((listener, bound));
        }
        Err(e) if means_no_ipv6(&e) => {
            tracing::info!(%role, addr = %v6, error = %e, "no IPv6 in this network namespace; listening on IPv4 only");
        }
        Err(e) => return Err(bind_error(e)),
    }
    Ok(bound_all)
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
            config.allow.clone().into_authorizer(store.clone()),
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
        for (listener, addr) in bind_transparent("transparent-inbound", listen).await? {
            listeners.push(("transparent-inbound", addr));
            let inbound = Inbound {
                target: InboundTarget::OriginalDst,
                policy: policy.clone(),
            };
            tasks.spawn(serve_inbound(listener, inbound, ctx.clone()));
        }
    }
    if let Some(listen) = config.transparent_outbound {
        // One client for both families: one cache, one set of watches.
        let destination = OutboundDestination::OriginalDst {
            discovery: config.discovery.then(|| {
                DiscoveryClient::with_metrics(
                    config.workload_socket.clone(),
                    DiscoverySettings::default(),
                    metrics.clone(),
                )
            }),
        };
        for (listener, addr) in bind_transparent("transparent-outbound", listen).await? {
            listeners.push(("transparent-outbound", addr));
            tasks.spawn(serve_outbound(listener, destination.clone(), ctx.clone()));
        }
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

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// Whether this host's namespace has IPv6 on loopback (else the IPv6 companions are
    /// rightly left out, and the tests check that instead).
    fn host_has_ipv6() -> bool {
        match std::net::TcpListener::bind("[::1]:0") {
            Ok(_) => true,
            Err(e) if means_no_ipv6(&e) => false,
            Err(e) => panic!("probing [::1]: {e}"),
        }
    }

    fn v6only(listener: &TcpListener) -> bool {
        use std::os::fd::AsRawFd;
        let mut on: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: the fd is `listener`'s, open for the call; `on` and `len` are live locals
        // and `len` is `on`'s size.
        let rc = unsafe {
            libc::getsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                (&mut on as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        on == 1
    }

    #[test]
    fn ipv6_companions_of_the_transparent_addresses() {
        assert_eq!(
            ipv6_companion(addr("0.0.0.0:4143")),
            Some("[::]:4143".parse().unwrap())
        );
        assert_eq!(
            ipv6_companion(addr("127.0.0.1:4140")),
            Some("[::1]:4140".parse().unwrap())
        );
        assert_eq!(ipv6_companion(addr("10.0.0.1:4143")), None);
        assert_eq!(ipv6_companion(addr("[::]:4143")), None);
    }

    #[test]
    fn only_a_missing_address_or_family_means_no_ipv6() {
        let err = std::io::Error::from_raw_os_error;
        assert!(means_no_ipv6(&err(libc::EADDRNOTAVAIL)));
        assert!(means_no_ipv6(&err(libc::EAFNOSUPPORT)));
        assert!(!means_no_ipv6(&err(libc::EADDRINUSE)));
        assert!(!means_no_ipv6(&err(libc::EACCES)));
        assert!(!means_no_ipv6(&std::io::Error::other("no errno")));
    }

    #[tokio::test]
    async fn transparent_listeners_take_both_families_on_one_port() {
        let ipv6 = host_has_ipv6();
        for (role, listen, companion) in [
            ("transparent-inbound", "0.0.0.0:0", Ipv6Addr::UNSPECIFIED),
            ("transparent-outbound", "127.0.0.1:0", Ipv6Addr::LOCALHOST),
        ] {
            let bound = bind_transparent(role, addr(listen)).await.unwrap();
            let port = bound[0].1.port();
            assert_eq!(bound[0].1.ip(), addr(listen).ip());
            if !ipv6 {
                assert_eq!(bound.len(), 1, "{role}: no IPv6 here, yet {bound:?}");
                continue;
            }
            assert_eq!(bound.len(), 2, "{role}: {bound:?}");
            let (v6, v6_addr) = &bound[1];
            assert_eq!(*v6_addr, SocketAddr::new(companion.into(), port));
            assert!(v6only(v6), "{role}: IPV6_V6ONLY not set");
            // Each family reaches its own socket.
            for (at, (listener, _)) in [
                addr(&format!("127.0.0.1:{port}")),
                addr(&format!("[::1]:{port}")),
            ]
            .into_iter()
            .zip(&bound)
            {
                let client = tokio::net::TcpStream::connect(at).await.unwrap();
                let (_, peer) = listener.accept().await.unwrap();
                assert_eq!(peer, client.local_addr().unwrap());
            }
        }
    }

    #[tokio::test]
    async fn a_taken_ipv6_port_is_fatal() {
        if !host_has_ipv6() {
            eprintln!("skipped: no IPv6 on this host's loopback");
            return;
        }
        let taken = std::net::TcpListener::bind("[::1]:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let listen = addr(&format!("127.0.0.1:{port}"));
        let Err(RunError::Bind {
            role,
            addr: at,
            source,
        }) = bind_transparent("transparent-outbound", listen).await
        else {
            panic!("[::1]:{port} is taken, yet the transparent outbound listener started");
        };
        assert_eq!(role, "transparent-outbound");
        assert_eq!(at, addr(&format!("[::1]:{port}")));
        assert_eq!(source.raw_os_error(), Some(libc::EADDRINUSE), "{source}");
    }

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
