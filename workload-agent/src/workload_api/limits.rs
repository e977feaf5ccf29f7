//! Bounds on what Workload API callers may ask of the agent, and the per-caller stream count.
//!
//! Every caller shares one agent, so one misbehaving workload must not be able to starve the
//! others: connections, HTTP/2 streams per connection, header and message sizes are bounded
//! for everyone, and open watch streams are counted per caller (uid, and pod UID when the
//! caller runs in a pod). A stream's slot is held by a [`StreamSlot`] that lives inside the
//! stream's task, so it is released whenever the stream ends, a client disconnect included.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The bounds of a Workload API endpoint. [`Limits::default`] suits a node agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Open streaming RPCs (FetchX509SVID, FetchX509Bundles, FetchJWTBundles) per caller;
    /// the next one is refused with `ResourceExhausted`.
    pub streams_per_caller: usize,
    /// Open connections on the socket, all callers together; beyond it, new connections wait
    /// in the kernel's backlog until one closes.
    pub max_connections: usize,
    /// HTTP/2 concurrent streams per connection.
    pub max_concurrent_streams_per_connection: u32,
    /// HTTP/2 header list size (all request headers of one call, decoded).
    pub max_header_list_bytes: u32,
    /// Largest request message (the biggest legitimate one is a JWT to validate).
    pub max_request_bytes: usize,
    /// Largest response message (bundles of many federated trust domains).
    pub max_response_bytes: usize,
    /// How long a new connection has to send the HTTP/2 connection preface; a silent or
    /// truncated one is closed after it.
    pub preface_timeout: Duration,
    /// HTTP/2 keepalive ping interval, to find dead peers holding streams open.
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            streams_per_caller: 64,
            max_connections: 4096,
            max_concurrent_streams_per_connection: 64,
            max_header_list_bytes: 16 * 1024,
            max_request_bytes: 128 * 1024,
            max_response_bytes: 16 * 1024 * 1024,
            preface_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// Who a stream is counted against: the caller's uid and, in a pod, its pod UID (so pods
/// sharing a uid, often 0, do not share one budget).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallerKey {
    pub uid: u32,
    pub pod_uid: Option<String>,
}

/// Counts open streams per caller.
#[derive(Debug, Clone)]
pub struct StreamLimiter {
    limit: usize,
    open: Arc<Mutex<HashMap<CallerKey, usize>>>,
}

/// A caller is at its stream limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("too_many_streams")]
pub struct TooManyStreams {
    pub limit: usize,
}

impl TooManyStreams {
    pub fn message(&self) -> String {
        format!(
            "this caller already has {} open Workload API streams; close one first",
            self.limit
        )
    }
}

impl StreamLimiter {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            open: Arc::default(),
        }
    }

    /// Takes a slot for `caller`, or refuses when it holds `limit` already.
    pub fn acquire(&self, caller: CallerKey) -> Result<StreamSlot, TooManyStreams> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(caller.clone()).or_insert(0);
        if *count >= self.limit {
            return Err(TooManyStreams { limit: self.limit });
        }
        *count += 1;
        Ok(StreamSlot {
            open: self.open.clone(),
            caller,
        })
    }

    /// Streams `caller` holds now.
    pub fn open_streams(&self, caller: &CallerKey) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(caller).copied().unwrap_or(0)
    }
}

/// One open stream of one caller; dropping it frees the slot.
#[derive(Debug)]
pub struct StreamSlot {
    open: Arc<Mutex<HashMap<CallerKey, usize>>>,
    caller: CallerKey,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.caller) {
            *count -= 1;
            // Forget idle callers, so the map holds only callers with open streams.
            if *count == 0 {
                open.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(uid: u32, pod: Option<&str>) -> CallerKey {
        CallerKey {
            uid,
            pod_uid: pod.map(str::to_owned),
        }
    }

    #[test]
    fn refuses_past_the_limit_and_frees_on_drop() {
        let limiter = StreamLimiter::new(2);
        let a = limiter.acquire(caller(1, None)).unwrap();
        let _b = limiter.acquire(caller(1, None)).unwrap();
        assert_eq!(
            limiter.acquire(caller(1, None)).unwrap_err(),
            TooManyStreams { limit: 2 }
        );
        drop(a);
        assert_eq!(limiter.open_streams(&caller(1, None)), 1);
        let _c = limiter.acquire(caller(1, None)).unwrap();
    }

    #[test]
    fn callers_have_separate_budgets() {
        let limiter = StreamLimiter::new(1);
        let _a = limiter.acquire(caller(0, Some("pod-a"))).unwrap();
        let _b = limiter.acquire(caller(0, Some("pod-b"))).unwrap();
        let _c = limiter.acquire(caller(0, None)).unwrap();
        assert!(limiter.acquire(caller(0, Some("pod-a"))).is_err());
    }

    #[test]
    fn idle_callers_are_forgotten() {
        let limiter = StreamLimiter::new(1);
        drop(limiter.acquire(caller(7, None)).unwrap());
        assert!(limiter.open.lock().unwrap().is_empty());
    }
}
