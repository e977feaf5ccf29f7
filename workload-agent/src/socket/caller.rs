//! Who is calling: the typed caller the admission layer hands to every service on the socket,
//! and the per-caller stream budget services count their open streams in.
//!
//! The caller is attested once per call by [`super::admission`] and put in the request's
//! extensions as a [`Caller`]; services read it with [`Caller::of`] and never look at peer
//! credentials themselves. Open streams are counted per caller ([`CallerKey`]: uid, and pod
//! UID when the caller runs in a pod). A stream's slot is held by a [`StreamSlot`] that lives
//! inside the stream, so it is released whenever the stream ends, a client disconnect
//! included.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::attest::{Attested, PeerCred};

/// An admitted, attested caller: its kernel credentials (pinned at accept) and what
/// attestation found. Put in each request's extensions by the admission layer.
#[derive(Debug, Clone)]
pub struct Caller {
    pub cred: PeerCred,
    pub attested: Attested,
}

impl Caller {
    /// The caller of `request`, as admitted; `None` when the request did not come through
    /// the admission layer (the service is then not mounted by [`super::serve()`]).
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&Caller> {
        request.extensions().get::<Caller>()
    }

    /// Whom this caller's streams are counted against.
    pub fn key(&self) -> CallerKey {
        CallerKey {
            uid: self.cred.uid,
            pod_uid: self.attested.pod_uid().map(str::to_owned),
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
