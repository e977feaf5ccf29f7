//! Outbound: connections from the workload to the network.
//!
//! mTLS with ALPN `lanyard/1` is used exactly when the destination's SPIFFE ID is known
//! (`--outbound L=D,id=ID`; discovery will add more). The server's SVID must verify and be
//! that ID, and a failed handshake closes the connection: a known-meshed destination never
//! gets plaintext. Destinations without a known ID are forwarded as plaintext with a reason.

use std::sync::Arc;
use std::time::Duration;

use lanyard_svid::SpiffeId;
use lanyard_svid::tls::{LANYARD_ALPN, peer_spiffe_id, unused_server_name};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::context::{ConnContext, peer_text};
use crate::forward::pipe;
use crate::inbound::Done;
use crate::original_dst::original_dst;
use crate::reason::NoTlsReason;
use crate::tap::{ConnRecord, Direction, Outcome};

/// Where an outbound listener sends.
#[derive(Clone)]
pub enum OutboundDestination {
    /// `--outbound L=D[,id=ID]`.
    Fixed {
        destination: String,
        /// The expected ID and a connector built for it (`client_config` with `ExactId`).
        mtls: Option<(SpiffeId, TlsConnector)>,
    },
    /// `--transparent-outbound`: the original destination, whose ID is not known yet.
    OriginalDst,
}

/// Accepts on `listener` until the task is dropped.
pub async fn serve_outbound(
    listener: TcpListener,
    destination: OutboundDestination,
    ctx: Arc<ConnContext>,
) {
    loop {
        let (app, src) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "outbound accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let destination = destination.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let done = match ctx.admit() {
                Some(_permit) => {
                    let _open = ctx.metrics.open(Direction::Out);
                    handle(app, &destination, &ctx).await
                }
                None => Done::refused(destination_text(&destination), NoTlsReason::ConnectionLimit),
            };
            ctx.finish(ConnRecord {
                direction: Direction::Out,
                src,
                dst: done.dst,
                outcome: done.outcome,
                bytes_in: done.transfer.bytes_in,
                bytes_out: done.transfer.bytes_out,
                duration: started.elapsed(),
            });
        });
    }
}

fn destination_text(destination: &OutboundDestination) -> String {
    match destination {
        OutboundDestination::Fixed { destination, .. } => destination.clone(),
        OutboundDestination::OriginalDst => "unknown".into(),
    }
}

async fn handle(app: TcpStream, destination: &OutboundDestination, ctx: &ConnContext) -> Done {
    let _ = app.set_nodelay(true);
    match destination {
        OutboundDestination::Fixed {
            destination,
            mtls: Some((expected, connector)),
        } => originate_mtls(app, destination, expected, connector, ctx).await,
        OutboundDestination::Fixed {
            destination,
            mtls: None,
        } => forward_plain(app, destination, NoTlsReason::NotMeshed, ctx).await,
        OutboundDestination::OriginalDst => match original_dst(&app) {
            Ok(addr) => forward_plain(app, &addr.to_string(), NoTlsReason::NoDiscovery, ctx).await,
            Err(e) => {
                tracing::debug!(error = %e, "no original destination");
                Done::refused("unknown".into(), NoTlsReason::NoOriginalDst)
            }
        },
    }
}

async fn forward_plain(
    app: TcpStream,
    destination: &str,
    reason: NoTlsReason,
    ctx: &ConnContext,
) -> Done {
    let upstream = match ctx.connect(destination).await {
        Ok(upstream) => upstream,
        Err(refusal) => return Done::refused(destination.to_owned(), refusal),
    };
    let dst = peer_text(&upstream, destination);
    let (transfer, _result) = pipe(app, upstream).await;
    Done {
        dst,
        outcome: Outcome::NoTls(reason),
        transfer,
    }
}

async fn originate_mtls(
    app: TcpStream,
    destination: &str,
    expected: &SpiffeId,
    connector: &TlsConnector,
    ctx: &ConnContext,
) -> Done {
    if !ctx.store.has_svid() {
        return Done::refused(destination.to_owned(), NoTlsReason::NoSvid);
    }
    let upstream = match ctx.connect(destination).await {
        Ok(upstream) => upstream,
        Err(refusal) => return Done::refused(destination.to_owned(), refusal),
    };
    let dst = peer_text(&upstream, destination);
    let handshake = connector.connect(unused_server_name(), upstream);
    let tls = match tokio::time::timeout(ctx.handshake_timeout, handshake).await {
        Err(_) => return Done::refused(dst, NoTlsReason::HandshakeTimeout),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, %expected, "outbound TLS handshake failed");
            return Done::refused(dst, NoTlsReason::from_handshake_error(&e));
        }
        Ok(Ok(tls)) => tls,
    };
    if tls.get_ref().1.alpn_protocol() != Some(LANYARD_ALPN) {
        return Done::refused(dst, NoTlsReason::AlpnMismatch);
    }
    // The verifier accepted exactly `expected`; read it back from the leaf all the same.
    let peer = peer_spiffe_id(tls.get_ref().1).unwrap_or_else(|| expected.clone());
    let (transfer, result) = pipe(app, tls).await;
    let outcome = match result {
        // Refused by the server before anything came back: not an mTLS connection at all.
        Err(e) if transfer.bytes_out == 0 && NoTlsReason::is_peer_alert(&e) => {
            Outcome::NoTls(NoTlsReason::RefusedByPeer)
        }
        _ => Outcome::Mtls { peer },
    };
    Done {
        dst,
        outcome,
        transfer,
    }
}
