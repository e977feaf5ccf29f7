//! Outbound: connections from the workload to the network.
//!
//! mTLS with ALPN `lanyard/1` is used exactly when the destination's SPIFFE ID is known
//! (`--outbound L=D,id=ID`, or discovery for transparent destinations). The server's SVID
//! must verify and be that ID, and a failed handshake closes the connection: a known-meshed
//! destination never gets plaintext. Destinations without a known ID are forwarded as
//! plaintext with a reason.
//!
//! Transparent destinations are looked up in [`DiscoveryClient`]: a meshed pod gets mTLS
//! expecting its ID; a Service address gets one of its ready endpoints, chosen round-robin
//! (endpoints that failed to connect recently are skipped), dialled directly with mTLS
//! expecting that endpoint's ID, or plaintext `not_meshed` for an unmeshed endpoint; an
//! unmeshed pod is plaintext `not_meshed`; an address discovery answers `Unknown` is plaintext
//! `no_discovery`. Only those authoritative answers ever give plaintext: no answer at all (the
//! agent unreachable, timed out, or refusing the lookup, e.g. `too_many_destinations`) closes
//! the connection as `discovery_refused`, since the destination may well be meshed (issue
//! 14, finding 8). Discovery's other refusals (a meshed destination downgraded or gone, an
//! unusable answer) close the connection too.

use std::net::SocketAddr;
use std::sync::Arc;

use lanyard_svid::SpiffeId;
use lanyard_svid::tls::{LANYARD_ALPN, peer_spiffe_id, unused_server_name};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use crate::accept::{Handler, serve};
use crate::context::{ConnContext, peer_text};
use crate::discovery::{Answer, DiscoveryClient, DiscoveryError};
use crate::forward::{Done, forward_plain, pipe, plain_over};
use crate::original_dst::original_dst;
use crate::reason::NoTlsReason;
use crate::tap::{Direction, Outcome};

/// Where an outbound listener sends.
#[derive(Clone)]
pub enum OutboundDestination {
    /// `--outbound L=D[,id=ID]`.
    Fixed {
        destination: String,
        /// The expected ID (its connector comes from [`ConnContext::connectors`]).
        expected_id: Option<SpiffeId>,
    },
    /// `--transparent-outbound`: the original destination, looked up in discovery when
    /// there is a client (else plaintext `no_discovery`).
    OriginalDst { discovery: Option<DiscoveryClient> },
    /// A fixed destination looked up in discovery like a transparent one: the transparent
    /// path without `SO_ORIGINAL_DST`, for tests (feature `test-util`).
    #[cfg(feature = "test-util")]
    Discovered {
        destination: SocketAddr,
        discovery: DiscoveryClient,
    },
}

/// Endpoints of one Service tried for one connection before giving up.
const MAX_ENDPOINT_ATTEMPTS: usize = 3;

impl Handler for OutboundDestination {
    fn describe(&self) -> String {
        destination_text(self)
    }

    async fn handle(&self, app: TcpStream, ctx: &ConnContext) -> Done {
        handle(app, self, ctx).await
    }
}

/// Accepts on `listener` until the task is dropped.
pub async fn serve_outbound(
    listener: TcpListener,
    destination: OutboundDestination,
    ctx: Arc<ConnContext>,
) {
    serve(listener, Direction::Out, Arc::new(destination), ctx).await
}

fn destination_text(destination: &OutboundDestination) -> String {
    match destination {
        OutboundDestination::Fixed { destination, .. } => destination.clone(),
        OutboundDestination::OriginalDst { .. } => "unknown".into(),
        #[cfg(feature = "test-util")]
        OutboundDestination::Discovered { destination, .. } => destination.to_string(),
    }
}

async fn handle(app: TcpStream, destination: &OutboundDestination, ctx: &ConnContext) -> Done {
    let _ = app.set_nodelay(true);
    match destination {
        OutboundDestination::Fixed {
            destination,
            expected_id: Some(expected),
        } => originate_mtls(app, destination, expected, ctx).await,
        OutboundDestination::Fixed {
            destination,
            expected_id: None,
        } => forward_plain(app, destination, NoTlsReason::NotMeshed, ctx).await,
        OutboundDestination::OriginalDst { discovery } => match original_dst(&app) {
            Ok(addr) => match discovery {
                Some(discovery) => discovered(app, addr, discovery, ctx).await,
                None => forward_plain(app, &addr.to_string(), NoTlsReason::NoDiscovery, ctx).await,
            },
            Err(e) => {
                tracing::debug!(error = %e, "no original destination");
                Done::refused("unknown".into(), NoTlsReason::NoOriginalDst)
            }
        },
        #[cfg(feature = "test-util")]
        OutboundDestination::Discovered {
            destination,
            discovery,
        } => discovered(app, *destination, discovery, ctx).await,
    }
}

/// Routes a connection to `addr` by what discovery knows of it.
async fn discovered(
    app: TcpStream,
    addr: SocketAddr,
    discovery: &DiscoveryClient,
    ctx: &ConnContext,
) -> Done {
    let text = addr.to_string();
    let lookup = match discovery.lookup(addr).await {
        Ok(lookup) => lookup,
        // No answer is not an answer: the destination may be meshed, so never plaintext.
        Err(e @ (DiscoveryError::Unavailable(_) | DiscoveryError::Refused { .. })) => {
            tracing::info!(dst = %addr, reason = %e, detail = %e.message(), "no discovery answer; refusing the connection");
            return Done::refused(text, NoTlsReason::DiscoveryRefused);
        }
        Err(DiscoveryError::DowngradeRefused) => {
            return Done::refused(text, NoTlsReason::MeshedDowngradeRefused);
        }
        Err(DiscoveryError::MeshedGone) => {
            return Done::refused(text, NoTlsReason::MeshedDestinationGone);
        }
        Err(e @ DiscoveryError::BadAnswer(_)) => {
            tracing::warn!(dst = %addr, reason = %e, detail = %e.message(), "unusable discovery answer");
            return Done::refused(text, NoTlsReason::BadDiscoveryAnswer);
        }
    };
    match &lookup.answer {
        Answer::MeshedPod(id) => originate_mtls(app, &text, id, ctx).await,
        Answer::UnmeshedPod => forward_plain(app, &text, NoTlsReason::NotMeshed, ctx).await,
        Answer::Unknown => forward_plain(app, &text, NoTlsReason::NoDiscovery, ctx).await,
        Answer::Service(_) => {
            let mut tried = Vec::new();
            while tried.len() < MAX_ENDPOINT_ATTEMPTS {
                let Some(endpoint) = discovery.pick(&lookup, &tried) else {
                    break;
                };
                let endpoint_text = endpoint.addr.to_string();
                if endpoint.id.is_some() && !ctx.store.has_svid() {
                    return Done::refused(endpoint_text, NoTlsReason::NoSvid);
                }
                let upstream = match ctx.connect(&endpoint_text).await {
                    Ok(upstream) => upstream,
                    Err(_) => {
                        discovery.connect_failed(endpoint.addr);
                        tried.push(endpoint.addr);
                        continue;
                    }
                };
                discovery.connect_succeeded(endpoint.addr);
                return match &endpoint.id {
                    Some(id) => mtls_over(app, upstream, &endpoint_text, id, ctx).await,
                    None => {
                        plain_over(app, upstream, &endpoint_text, NoTlsReason::NotMeshed, ctx).await
                    }
                };
            }
            match tried.last() {
                Some(last) => Done::refused(last.to_string(), NoTlsReason::TargetUnreachable),
                None => Done::refused(text, NoTlsReason::NoReadyEndpoint),
            }
        }
    }
}

async fn originate_mtls(
    app: TcpStream,
    destination: &str,
    expected: &SpiffeId,
    ctx: &ConnContext,
) -> Done {
    if !ctx.store.has_svid() {
        return Done::refused(destination.to_owned(), NoTlsReason::NoSvid);
    }
    let upstream = match ctx.connect(destination).await {
        Ok(upstream) => upstream,
        Err(refusal) => return Done::refused(destination.to_owned(), refusal),
    };
    mtls_over(app, upstream, destination, expected, ctx).await
}

async fn mtls_over(
    app: TcpStream,
    upstream: TcpStream,
    destination: &str,
    expected: &SpiffeId,
    ctx: &ConnContext,
) -> Done {
    let dst = peer_text(&upstream, destination);
    let connector: TlsConnector = ctx.connectors.exact(expected);
    let upstream = crate::read_ahead::ReadAhead::new(upstream); // rustls reads a record at a time
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
    let (transfer, result) = pipe(app, tls, ctx.idle_timeout).await;
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
