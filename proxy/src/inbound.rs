//! Inbound: connections from the network to the workload.
//!
//! Per connection: the target is the listener's (`--inbound L=T`) or the redirected original
//! destination (transparent). An opaque target port is forwarded at once. Otherwise the
//! client's first flight is read under the detection timeout ([`crate::first_flight`]):
//! a ClientHello offering `lanyard/1` is terminated as mTLS (client SVID verified against
//! its own trust domain's bundle, its ID checked by `--allow`), then piped to the target;
//! anything else is forwarded untouched when permissive, or closed when strict. The decision
//! uses the client's bytes and the timeout only.

use std::sync::Arc;
use std::time::Duration;

use lanyard_daemon::rewind::Rewind;
use lanyard_svid::tls::peer_spiffe_id;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::accept::{Handler, serve};
use crate::context::{ConnContext, peer_text};
use crate::first_flight::{FirstFlight, read_first_flight};
use crate::forward::{Done, forward_plain, pipe};
use crate::original_dst::original_dst;
use crate::reason::NoTlsReason;
use crate::tap::{Direction, Outcome};

/// Where an inbound listener delivers.
#[derive(Debug, Clone)]
pub enum InboundTarget {
    /// `--inbound L=T`: always T.
    Fixed(String),
    /// `--transparent-inbound`: the connection's original destination.
    OriginalDst,
}

/// Policy shared by every inbound listener.
pub struct InboundPolicy {
    /// Close anything that is not mTLS.
    pub strict: bool,
    /// Target ports forwarded without detection.
    pub opaque_ports: Vec<u16>,
    pub detect_timeout: Duration,
    /// Built from `lanyard_svid::tls::server_config` with the `--allow` policy.
    pub acceptor: TlsAcceptor,
}

/// An inbound listener: where it delivers, under which policy.
pub struct Inbound {
    pub target: InboundTarget,
    pub policy: Arc<InboundPolicy>,
}

impl Handler for Inbound {
    fn describe(&self) -> String {
        target_text(&self.target)
    }

    async fn handle(&self, tcp: TcpStream, ctx: &ConnContext) -> Done {
        handle(tcp, &self.target, &self.policy, ctx).await
    }
}

/// Accepts on `listener` until the task is dropped.
pub async fn serve_inbound(listener: TcpListener, inbound: Inbound, ctx: Arc<ConnContext>) {
    serve(listener, Direction::In, Arc::new(inbound), ctx).await
}

fn target_text(target: &InboundTarget) -> String {
    match target {
        InboundTarget::Fixed(t) => t.clone(),
        InboundTarget::OriginalDst => "unknown".into(),
    }
}

/// The port of `HOST:PORT`.
fn port_of(address: &str) -> Option<u16> {
    address.rsplit_once(':')?.1.parse().ok()
}

async fn handle(
    mut tcp: TcpStream,
    target: &InboundTarget,
    policy: &InboundPolicy,
    ctx: &ConnContext,
) -> Done {
    let _ = tcp.set_nodelay(true);
    let target: String = match target {
        InboundTarget::Fixed(t) => t.clone(),
        InboundTarget::OriginalDst => match original_dst(&tcp) {
            Ok(addr) => addr.to_string(),
            Err(e) => {
                tracing::debug!(error = %e, "no original destination");
                return Done::refused(target_text(target), NoTlsReason::NoOriginalDst);
            }
        },
    };

    if port_of(&target).is_some_and(|p| policy.opaque_ports.contains(&p)) {
        return forward_plain(
            Rewind::new(Vec::new(), tcp),
            &target,
            NoTlsReason::OpaquePort,
            ctx,
        )
        .await;
    }

    let sniffed = match read_first_flight(&mut tcp, policy.detect_timeout).await {
        Ok(sniffed) => sniffed,
        Err(e) => {
            tracing::debug!(error = %e, "reading the first flight failed");
            return Done::refused(target, NoTlsReason::ClientError);
        }
    };
    let stream = Rewind::new(sniffed.bytes, tcp);
    let reason = match sniffed.kind {
        FirstFlight::LanyardHello => return terminate_mtls(stream, &target, policy, ctx).await,
        FirstFlight::OtherTls => NoTlsReason::OtherTls,
        FirstFlight::Plaintext | FirstFlight::Closed => NoTlsReason::NoTlsFromRemote,
        FirstFlight::Timeout => NoTlsReason::DetectTimeout,
    };
    if policy.strict {
        tracing::debug!(detected = %reason, "strict listener");
        return Done::refused(target, NoTlsReason::PlaintextRefused);
    }
    forward_plain(stream, &target, reason, ctx).await
}

async fn terminate_mtls(
    stream: Rewind<TcpStream>,
    target: &str,
    policy: &InboundPolicy,
    ctx: &ConnContext,
) -> Done {
    if !ctx.store.has_svid() {
        return Done::refused(target.to_owned(), NoTlsReason::NoSvid);
    }
    let stream = crate::read_ahead::ReadAhead::new(stream); // rustls reads a record at a time
    let tls =
        match tokio::time::timeout(ctx.handshake_timeout, policy.acceptor.accept(stream)).await {
            Err(_) => return Done::refused(target.to_owned(), NoTlsReason::HandshakeTimeout),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "inbound TLS handshake failed");
                return Done::refused(target.to_owned(), NoTlsReason::from_handshake_error(&e));
            }
            Ok(Ok(tls)) => tls,
        };
    // The verifier has validated and authorised this leaf; client auth is mandatory.
    let Some(peer) = peer_spiffe_id(tls.get_ref().1) else {
        return Done::refused(target.to_owned(), NoTlsReason::HandshakeFailed);
    };
    let upstream = match ctx.connect(target).await {
        Ok(upstream) => upstream,
        Err(refusal) => return Done::refused(target.to_owned(), refusal),
    };
    let dst = peer_text(&upstream, target);
    let (transfer, _result) = pipe(tls, upstream, ctx.idle_timeout).await;
    Done {
        dst,
        outcome: Outcome::Mtls { peer },
        transfer,
    }
}

#[cfg(test)]
mod tests {
    use super::port_of;

    #[test]
    fn ports_of_targets() {
        assert_eq!(port_of("127.0.0.1:8080"), Some(8080));
        assert_eq!(port_of("[::1]:443"), Some(443));
        assert_eq!(port_of("app.local:25"), Some(25));
        assert_eq!(port_of("nope"), None);
    }
}
