//! The health listener: `/healthz` (the process runs), `/readyz` (it can do its job: the
//! daemon decides, through [`Readiness`]) and `/metrics` (Prometheus text format), the last for
//! the callers a [`MetricsPolicy`] allows (the proxy keeps its metrics on the pod's loopback;
//! health answers everyone, as the kubelet probes from the node).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Answers `/readyz`: `Ok` when ready, else why not.
pub trait Readiness: Send + Sync + 'static {
    fn ready(&self) -> Result<(), String>;
}

impl<F: Fn() -> Result<(), String> + Send + Sync + 'static> Readiness for F {
    fn ready(&self) -> Result<(), String> {
        self()
    }
}

/// Who may read `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsPolicy {
    /// Everyone who reaches the listener (the server's and the agent's).
    Everyone,
    /// Callers on a loopback address only; the others get 403 with `refusal`, which should say
    /// how to open them up.
    LoopbackOnly { refusal: &'static str },
}

impl MetricsPolicy {
    /// Whether `peer` may read `/metrics` (an IPv4-mapped loopback address counts).
    pub fn allows(self, peer: SocketAddr) -> bool {
        match self {
            MetricsPolicy::Everyone => true,
            MetricsPolicy::LoopbackOnly { .. } => peer.ip().to_canonical().is_loopback(),
        }
    }
}

/// Serves the health endpoints on `listener`, `/metrics` to everyone, until the task is dropped.
pub async fn serve_health(
    listener: TcpListener,
    registry: Arc<Registry>,
    readiness: Arc<dyn Readiness>,
) {
    serve_health_with(listener, registry, readiness, MetricsPolicy::Everyone).await
}

/// [`serve_health`], with `/metrics` for the callers `policy` allows.
pub async fn serve_health_with(
    listener: TcpListener,
    registry: Arc<Registry>,
    readiness: Arc<dyn Readiness>,
    policy: MetricsPolicy,
) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let registry = registry.clone();
        let readiness = readiness.clone();
        let refusal = match policy {
            MetricsPolicy::LoopbackOnly { refusal } if !policy.allows(peer) => Some(refusal),
            _ => None,
        };
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = respond(&req, refusal, &registry, readiness.as_ref());
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The answer to `req`; `metrics_refusal` is set when this caller may not read `/metrics`.
fn respond<B>(
    req: &Request<B>,
    metrics_refusal: Option<&'static str>,
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
        "/metrics" if metrics_refusal.is_some() => text(
            StatusCode::FORBIDDEN,
            metrics_refusal.unwrap_or_default().into(),
        ),
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
    fn loopback_only_allows_loopback_callers() {
        let at = |ip: IpAddr| SocketAddr::new(ip, 40000);
        let loopback = MetricsPolicy::LoopbackOnly { refusal: "no" };
        assert!(loopback.allows(at(IpAddr::V4(Ipv4Addr::LOCALHOST))));
        assert!(loopback.allows(at(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)))));
        assert!(loopback.allows(at(IpAddr::V6(Ipv6Addr::LOCALHOST))));
        // An IPv4 caller of a dual-stack socket.
        assert!(loopback.allows(at("::ffff:127.0.0.1".parse().unwrap())));
        assert!(!loopback.allows(at("10.1.2.3".parse().unwrap())));
        assert!(!loopback.allows(at("::ffff:10.1.2.3".parse().unwrap())));
        assert!(!loopback.allows(at("fd00::1".parse().unwrap())));
        assert!(MetricsPolicy::Everyone.allows(at("10.1.2.3".parse().unwrap())));
    }

    #[test]
    fn a_refused_caller_still_gets_health() {
        let registry = Registry::default();
        let ready = || Ok(());
        let get = |path: &str, refusal: Option<&'static str>| {
            let req = Request::get(path).body(()).unwrap();
            respond(&req, refusal, &registry, &ready)
        };
        assert_eq!(get("/healthz", Some("no")).status(), StatusCode::OK);
        assert_eq!(get("/readyz", Some("no")).status(), StatusCode::OK);
        let refused = get("/metrics", Some("ask for it"));
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert_eq!(get("/metrics", None).status(), StatusCode::OK);
        assert_eq!(get("/other", None).status(), StatusCode::NOT_FOUND);
    }
    use prometheus_client::metrics::counter::Counter;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn endpoints() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("things", "Things done", counter.clone());
        counter.inc();
        let ready = Arc::new(AtomicBool::new(false));
        let flag = ready.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_health(
            listener,
            Arc::new(registry),
            Arc::new(move || {
                if flag.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("no CA yet".into())
                }
            }),
        ));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        let not_ready = get(addr, "/readyz").await;
        assert!(
            not_ready.starts_with("HTTP/1.1 503") && not_ready.contains("no CA yet"),
            "{not_ready}"
        );
        ready.store(true, Ordering::SeqCst);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let metrics = get(addr, "/metrics").await;
        assert!(metrics.contains("things_total 1"), "{metrics}");
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
    }
}
