//! The gRPC listener's transport: TCP accepts, TLS handshakes run concurrently (each under a
//! deadline, with a cap on how many are in flight), and finished TLS streams handed to tonic.
//!
//! Doing the handshakes here rather than in tonic keeps a client that stalls mid-handshake from
//! holding up anyone else, and lets the TLS config come from the live [`SvidStore`], so a
//! rotated server SVID or a new bundle applies to the next handshake.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// A client must finish its handshake in this time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight at once; further connections wait in the kernel's accept queue.
const MAX_HANDSHAKES: usize = 1024;

pub type TlsIncoming = ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>>;

/// Accepts on `listener` until the returned stream is dropped.
pub fn incoming(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> TlsIncoming {
    let (tx, rx) = mpsc::channel(128);
    let acceptor = TlsAcceptor::from(config);
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        let reason = lanyard_svid::tls::refusal_from_io(&e)
                            .map_or("tls_error", |r| r.label());
                        tracing::info!(%peer, reason, error = %e, "TLS handshake refused");
                    }
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
