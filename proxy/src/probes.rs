//! The proxy's `--metrics` listener: `/healthz` and `/readyz` for everyone who can reach it
//! (the kubelet's probes come from the node, from an address the pod cannot tell from another
//! pod's), `/metrics` only for callers on the pod's loopback (its own containers, e.g. a
//! metrics agent sidecar) unless [`MetricsAccess::Everyone`] (`--metrics-allow-remote`). The
//! metrics name every peer the proxy talked to by direction and outcome, plaintext; they are
//! not for every pod in the cluster to read. The answers are those of
//! `lanyard_telemetry::serve_health`, whose listener has no per-caller rule.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use lanyard_telemetry::Readiness;
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

impl MetricsAccess {
    /// Whether `peer` may read `/metrics`.
    pub fn allows(self, peer: SocketAddr) -> bool {
        self == MetricsAccess::Everyone || peer.ip().to_canonical().is_loopback()
    }
}

/// What a refused `/metrics` caller is told.
pub const METRICS_REFUSED: &str = "the proxy's /metrics are served on the pod's loopback only; \
     annotate the pod lanyard.dev/proxy-metrics: expose (lanyard-proxy --metrics-allow-remote) \
     to serve them to other pods\n";

/// Serves the endpoints on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    readiness: Arc<dyn Readiness>,
    access: MetricsAccess,
) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let registry = registry.clone();
        let readiness = readiness.clone();
        let metrics = access.allows(peer);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = respond(&req, metrics, &registry, readiness.as_ref());
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond<B>(
    req: &Request<B>,
    metrics: bool,
    registry: &Registry,
    readiness: &dyn Readiness,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match readiness.ready() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" if !metrics => text(StatusCode::FORBIDDEN, METRICS_REFUSED.into()),
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => {
                    let mut response = text(StatusCode::OK, body);
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    );
                    response
                }
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "encoding failed\n".into(),
                ),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    #[test]
    fn only_loopback_callers_read_metrics_by_default() {
        let at = |ip: IpAddr| SocketAddr::new(ip, 40000);
        let loopback = MetricsAccess::Loopback;
        assert!(loopback.allows(at(IpAddr::V4(Ipv4Addr::LOCALHOST))));
        assert!(loopback.allows(at(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)))));
        assert!(loopback.allows(at(IpAddr::V6(Ipv6Addr::LOCALHOST))));
        // An IPv4 caller of a dual-stack socket.
        assert!(loopback.allows(at("::ffff:127.0.0.1".parse().unwrap())));
        assert!(!loopback.allows(at("10.1.2.3".parse().unwrap())));
        assert!(!loopback.allows(at("::ffff:10.1.2.3".parse().unwrap())));
        assert!(!loopback.allows(at("fd00::1".parse().unwrap())));
        assert!(MetricsAccess::Everyone.allows(at("10.1.2.3".parse().unwrap())));
        assert_eq!(MetricsAccess::default().to_string(), "loopback");
    }

    #[test]
    fn a_refused_caller_still_gets_health() {
        let registry = Registry::default();
        let ready = || Ok(());
        let get = |path: &str, metrics: bool| {
            let req = Request::get(path).body(()).unwrap();
            respond(&req, metrics, &registry, &ready).status()
        };
        assert_eq!(get("/healthz", false), StatusCode::OK);
        assert_eq!(get("/readyz", false), StatusCode::OK);
        assert_eq!(get("/metrics", false), StatusCode::FORBIDDEN);
        assert_eq!(get("/metrics", true), StatusCode::OK);
        assert_eq!(get("/other", true), StatusCode::NOT_FOUND);
    }
}
