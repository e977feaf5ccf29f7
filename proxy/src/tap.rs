//! The tap: one line per finished connection, streamed to every client of the `--admin`
//! listener (`lanyard-proxy tap` is such a client).
//!
//! Line format (DESIGN §1), fields in this order:
//! `proxy=in src=IP:PORT dst=IP:PORT tls=true peer=spiffe://... bytes_in=N bytes_out=N dur_ms=N`
//! or the same with `tls=false reason=LABEL` in place of `tls=true peer=...`.
//! `bytes_in` counts application bytes read from the connection's client (`src`) and sent on
//! towards `dst`; `bytes_out` the bytes sent back to the client. `dst` is the address
//! connected to, or the configured destination when no connection was made.
//!
//! Traffic never waits for a tap reader: lines go into a bounded broadcast ring, and a reader
//! that falls behind loses the oldest lines. Each loss is counted in the
//! `lanyard_proxy_tap_dropped_lines_total` metric and reported to that reader in its stream
//! as a comment line `# dropped=N` (N lines lost since its previous line).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lanyard_svid::SpiffeId;
use prometheus_client::metrics::counter::Counter;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, broadcast};

use crate::reason::NoTlsReason;

/// Lines buffered for readers; a reader further behind than this loses lines.
pub const TAP_QUEUE_LINES: usize = 1024;
/// Concurrent tap readers; more are told so and closed.
pub const MAX_TAP_READERS: usize = 16;

/// Which side of the workload a connection is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Into the workload: accepted from the network, delivered to the app.
    In,
    /// Out of the workload: accepted from the app, sent to the network.
    Out,
}

impl Direction {
    pub fn label(self) -> &'static str {
        match self {
            Self::In => "in",
            Self::Out => "out",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// How a connection was carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Mutual TLS with this verified peer.
    Mtls { peer: SpiffeId },
    /// Plaintext or closed, and why.
    NoTls(NoTlsReason),
}

/// One finished connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnRecord {
    pub direction: Direction,
    pub src: SocketAddr,
    pub dst: String,
    pub outcome: Outcome,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
}

impl fmt::Display for ConnRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "proxy={} src={} dst={} ",
            self.direction, self.src, self.dst
        )?;
        match &self.outcome {
            Outcome::Mtls { peer } => write!(f, "tls=true peer={peer}")?,
            Outcome::NoTls(reason) => write!(f, "tls=false reason={reason}")?,
        }
        write!(
            f,
            " bytes_in={} bytes_out={} dur_ms={}",
            self.bytes_in,
            self.bytes_out,
            self.duration.as_millis()
        )
    }
}

/// What a tap reader receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapEvent {
    Line(Arc<str>),
    /// This many lines were lost because the reader fell behind.
    Dropped(u64),
}

/// The publishing side, shared by all listeners.
#[derive(Clone)]
pub struct Tap {
    tx: broadcast::Sender<Arc<str>>,
    dropped: Counter,
}

impl Tap {
    /// `dropped` counts lines lost by slow readers.
    pub fn new(capacity: usize, dropped: Counter) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self { tx, dropped }
    }

    /// Publishes a finished connection; formats the line only if someone is listening.
    pub fn publish(&self, record: &ConnRecord) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Arc::from(record.to_string()));
        }
    }

    pub fn subscribe(&self) -> TapReader {
        TapReader {
            rx: self.tx.subscribe(),
            dropped: self.dropped.clone(),
        }
    }
}

/// One reader's view of the tap.
pub struct TapReader {
    rx: broadcast::Receiver<Arc<str>>,
    dropped: Counter,
}

impl TapReader {
    /// The next event; `None` once the tap is gone.
    pub async fn next(&mut self) -> Option<TapEvent> {
        match self.rx.recv().await {
            Ok(line) => Some(TapEvent::Line(line)),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                self.dropped.inc_by(n);
                Some(TapEvent::Dropped(n))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// Serves tap readers on `listener` until the task is dropped.
pub async fn serve_tap(listener: TcpListener, tap: Tap) {
    let readers = Arc::new(Semaphore::new(MAX_TAP_READERS));
    loop {
        let Ok((mut stream, peer)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = readers.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "refusing tap reader: {MAX_TAP_READERS} already connected");
            tokio::spawn(async move {
                let _ = stream.write_all(b"# too many tap readers\n").await;
            });
            continue;
        };
        let mut reader = tap.subscribe();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
            while let Some(event) = reader.next().await {
                let text = match event {
                    TapEvent::Line(line) => format!("{line}\n"),
                    TapEvent::Dropped(n) => format!("# dropped={n}\n"),
                };
                if stream.write_all(text.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(outcome: Outcome) -> ConnRecord {
        ConnRecord {
            direction: Direction::In,
            src: "10.0.0.1:5000".parse().unwrap(),
            dst: "127.0.0.1:8080".into(),
            outcome,
            bytes_in: 12,
            bytes_out: 34,
            duration: Duration::from_millis(56),
        }
    }

    #[test]
    fn line_format() {
        let tls = record(Outcome::Mtls {
            peer: SpiffeId::parse("spiffe://example.org/web").unwrap(),
        });
        assert_eq!(
            tls.to_string(),
            "proxy=in src=10.0.0.1:5000 dst=127.0.0.1:8080 tls=true peer=spiffe://example.org/web bytes_in=12 bytes_out=34 dur_ms=56"
        );
        let plain = ConnRecord {
            direction: Direction::Out,
            ..record(Outcome::NoTls(NoTlsReason::NotMeshed))
        };
        assert_eq!(
            plain.to_string(),
            "proxy=out src=10.0.0.1:5000 dst=127.0.0.1:8080 tls=false reason=not_meshed bytes_in=12 bytes_out=34 dur_ms=56"
        );
    }

    #[tokio::test]
    async fn a_slow_reader_loses_lines_and_is_told() {
        let dropped = Counter::default();
        let tap = Tap::new(4, dropped.clone());
        let mut reader = tap.subscribe();
        for _ in 0..10 {
            tap.publish(&record(Outcome::NoTls(NoTlsReason::DetectTimeout)));
        }
        assert_eq!(reader.next().await, Some(TapEvent::Dropped(6)));
        assert_eq!(dropped.get(), 6);
        for _ in 0..4 {
            assert!(matches!(reader.next().await, Some(TapEvent::Line(_))));
        }
        drop(tap);
        assert_eq!(reader.next().await, None);
    }

    #[test]
    fn publishing_without_readers_costs_nothing_and_never_blocks() {
        let tap = Tap::new(1, Counter::default());
        for _ in 0..1000 {
            tap.publish(&record(Outcome::NoTls(NoTlsReason::NotMeshed)));
        }
    }
}
