//! What every connection handler shares: the SVID store, the connection budget, the shared
//! TLS connectors, the tap and the metrics; and the end of every connection (one metric, one
//! tap line, one log line).

use std::sync::Arc;
use std::time::Duration;

use lanyard_svid::tls::SvidStore;
use tokio::net::TcpStream;

use crate::accept::Budget;
use crate::connectors::Connectors;
use crate::metrics::ProxyMetrics;
use crate::reason::NoTlsReason;
use crate::tap::{ConnRecord, Outcome, Tap};

pub struct ConnContext {
    pub store: Arc<SvidStore>,
    pub tap: Tap,
    pub metrics: Arc<ProxyMetrics>,
    /// Connections handled at once: all listeners together, and per inbound source.
    pub budget: Budget,
    /// Outbound mTLS connectors by expected server ID, reading `store` on each handshake.
    pub connectors: Connectors,
    /// Limit on each TLS handshake and each upstream connect.
    pub handshake_timeout: Duration,
    /// A piped connection with no byte either way for this long is closed.
    pub idle_timeout: Duration,
}

/// The limits a [`ConnContext`] enforces.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
}

impl ConnContext {
    pub fn new(
        store: Arc<SvidStore>,
        tap: Tap,
        metrics: Arc<ProxyMetrics>,
        limits: ConnLimits,
    ) -> Self {
        Self {
            connectors: Connectors::new(store.clone()),
            store,
            tap,
            metrics,
            budget: Budget::new(limits.max_connections),
            handshake_timeout: limits.handshake_timeout,
            idle_timeout: limits.idle_timeout,
        }
    }

    /// Reports a finished connection.
    pub fn finish(&self, record: ConnRecord) {
        self.metrics.finished(&record);
        self.tap.publish(&record);
        match &record.outcome {
            Outcome::NoTls(reason) if reason.is_refusal() => tracing::info!(
                direction = %record.direction,
                src = %record.src,
                dst = %record.dst,
                %reason,
                detail = %reason.message(),
                "connection refused"
            ),
            _ => tracing::debug!(connection = %record, "connection finished"),
        }
    }

    /// Connects to `address` (`HOST:PORT`) within the handshake timeout.
    pub async fn connect(&self, address: &str) -> Result<TcpStream, NoTlsReason> {
        match tokio::time::timeout(self.handshake_timeout, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Ok(Err(e)) => {
                tracing::debug!(%address, error = %e, "connect failed");
                Err(NoTlsReason::TargetUnreachable)
            }
            Err(_) => Err(NoTlsReason::TargetUnreachable),
        }
    }
}

/// The peer address of `stream` as text, or `fallback` when the socket has none.
pub fn peer_text(stream: &TcpStream, fallback: &str) -> String {
    stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| fallback.to_owned())
}
