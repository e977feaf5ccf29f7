//! The accept loop every listener runs, and the connection budget it admits against.
//!
//! One loop for inbound and outbound: accept, admit against the [`Budget`], hand the socket
//! to the listener's [`Handler`] in its own task, and report the end of the connection (one
//! metric, one tap line, one log line) through [`ConnContext::finish`].
//!
//! The budget is `--max-connections` for all listeners together. Inbound connections come
//! from the network, so each source gets at most a [`SOURCE_SHARE_DIVISOR`]th of the budget
//! (an IPv4 address, or an IPv6 /64, which one host usually owns whole): one peer holding
//! silent connections can no longer take every slot. Outbound connections come from our own
//! workload (one address for all of them), so they are counted against the total only.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::context::ConnContext;
use crate::forward::Done;
use crate::reason::NoTlsReason;
use crate::tap::{ConnRecord, Direction};

/// A source may hold at most this fraction of the budget (1/4): no single peer can exhaust it,
/// three quarters stay for everyone else, and a legitimate busy peer (a client node's proxy,
/// a NAT address) still gets 2,500 connections under the default budget of 10,000.
pub const SOURCE_SHARE_DIVISOR: usize = 4;

/// What a listener does with each admitted connection.
pub trait Handler: Send + Sync + 'static {
    /// The destination text for a connection refused before it was handled.
    fn describe(&self) -> String;

    /// Serves one connection to its end.
    fn handle(&self, tcp: TcpStream, ctx: &ConnContext) -> impl Future<Output = Done> + Send;
}

/// Accepts on `listener` until the task is dropped.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    direction: Direction,
    handler: Arc<H>,
    ctx: Arc<ConnContext>,
) {
    loop {
        let (tcp, src) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // E.g. out of file descriptors: pause instead of spinning.
                tracing::warn!(%direction, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let done = match ctx.budget.admit(direction, src.ip()) {
                Ok(_slot) => {
                    let _open = ctx.metrics.open(direction);
                    handler.handle(tcp, &ctx).await
                }
                Err(refusal) => Done::refused(handler.describe(), refusal),
            };
            ctx.finish(ConnRecord {
                direction,
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

/// Connections handled at once: a total, and a share per inbound source.
pub struct Budget {
    total: Arc<Semaphore>,
    per_source: usize,
    /// Open inbound connections per source; an entry exists only while one is open.
    by_source: Arc<Mutex<HashMap<SourceKey, usize>>>,
}

/// Whom a share is counted for: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SourceKey(IpAddr);

impl SourceKey {
    fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Self(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
            v4 => Self(v4),
        }
    }
}

/// An admitted connection's slot, given back on drop.
pub struct Slot {
    _total: OwnedSemaphorePermit,
    _source: Option<SourceHold>,
}

/// One connection counted against a source's share; uncounted on drop.
struct SourceHold {
    key: SourceKey,
    by_source: Arc<Mutex<HashMap<SourceKey, usize>>>,
}

impl Drop for SourceHold {
    fn drop(&mut self) {
        let mut counts = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

impl Budget {
    /// `max_connections` in all; each inbound source at most a [`SOURCE_SHARE_DIVISOR`]th
    /// of it (at least one).
    pub fn new(max_connections: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(max_connections)),
            per_source: (max_connections / SOURCE_SHARE_DIVISOR).max(1),
            by_source: Arc::default(),
        }
    }

    /// The most connections one inbound source may hold.
    pub fn per_source(&self) -> usize {
        self.per_source
    }

    /// A slot for one more connection from `source`, or the refusal. The total is checked
    /// first: a full proxy says so whoever asks.
    pub fn admit(&self, direction: Direction, source: IpAddr) -> Result<Slot, NoTlsReason> {
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| NoTlsReason::ConnectionLimit)?;
        let source = match direction {
            Direction::Out => None,
            Direction::In => {
                let key = SourceKey::of(source);
                let mut counts = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
                let n = counts.entry(key).or_default();
                if *n >= self.per_source {
                    // `total` is dropped: the slot goes back.
                    return Err(NoTlsReason::SourceLimit);
                }
                *n += 1;
                Some(SourceHold {
                    key,
                    by_source: self.by_source.clone(),
                })
            }
        };
        Ok(Slot {
            _total: total,
            _source: source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_source_gets_a_quarter_and_gives_it_back() {
        let budget = Budget::new(8);
        assert_eq!(budget.per_source(), 2);
        let a1 = budget.admit(Direction::In, ip("10.0.0.1")).unwrap();
        let _a2 = budget.admit(Direction::In, ip("10.0.0.1")).unwrap();
        assert_eq!(
            budget.admit(Direction::In, ip("10.0.0.1")).err(),
            Some(NoTlsReason::SourceLimit)
        );
        // Another source is unaffected.
        let _b = budget.admit(Direction::In, ip("10.0.0.2")).unwrap();
        drop(a1);
        let _a3 = budget.admit(Direction::In, ip("10.0.0.1")).unwrap();
    }

    #[test]
    fn ipv6_sources_share_by_slash_64_and_mapped_v4_is_v4() {
        let budget = Budget::new(4);
        let _one = budget.admit(Direction::In, ip("2001:db8::1")).unwrap();
        assert_eq!(
            budget.admit(Direction::In, ip("2001:db8::ffff:2")).err(),
            Some(NoTlsReason::SourceLimit)
        );
        let _other = budget.admit(Direction::In, ip("2001:db8:0:1::1")).unwrap();
        let _v4 = budget.admit(Direction::In, ip("10.0.0.1")).unwrap();
        assert_eq!(
            budget.admit(Direction::In, ip("::ffff:10.0.0.1")).err(),
            Some(NoTlsReason::SourceLimit)
        );
    }

    #[test]
    fn the_total_binds_outbound_too_and_refusals_keep_nothing() {
        let budget = Budget::new(3);
        assert_eq!(budget.per_source(), 1);
        let _in = budget.admit(Direction::In, ip("10.0.0.1")).unwrap();
        // Refused for its share: the total slot it took is given back.
        assert_eq!(
            budget.admit(Direction::In, ip("10.0.0.1")).err(),
            Some(NoTlsReason::SourceLimit)
        );
        // Outbound (our own workload) is not held to a share.
        let out = budget.admit(Direction::Out, ip("127.0.0.1")).unwrap();
        let _out2 = budget.admit(Direction::Out, ip("127.0.0.1")).unwrap();
        assert_eq!(
            budget.admit(Direction::In, ip("10.0.0.2")).err(),
            Some(NoTlsReason::ConnectionLimit)
        );
        drop(out);
        let _in2 = budget.admit(Direction::In, ip("10.0.0.2")).unwrap();
    }
}
