//! The agent's discovery cache: one entry per destination a local caller asked about, each
//! followed on the server's `DiscoveryFeed` (see [`super::discovery_feed`]) for as long as it is used.
//!
//! Freshness. While the feed stream that answered an entry is open, the answer is current:
//! the server pushes every change. When that stream is lost, the entry keeps being served for
//! [`CacheSettings::ttl`] after the loss and then expires: lookups answer `Unavailable`
//! (`expired`), never a made-up `Unknown`, so a caller that knew a destination as meshed is
//! not led to downgrade it. A new stream re-follows every entry and its answers make them
//! current again.
//!
//! Bounds. At most [`CacheSettings::max_entries`] destinations; an entry nobody watches and
//! nobody looked up for [`CacheSettings::idle`] is dropped (and unfollowed) by [`sweep`].
//!
//! Fairness. The cache is shared by every caller on the node, so each caller ([`CallerKey`]:
//! uid, and pod UID in a pod) may hold at most [`CacheSettings::max_per_caller`] destinations
//! (an eighth of the cache by default): a destination counts against every caller that looked
//! it up, until that caller has not looked it up for [`CacheSettings::idle`]. A caller over
//! its share is refused ([`SubscribeError::CallerBudget`], `caller_destination_budget`) and
//! the others are unaffected: one workload can no longer fill the node's cache (issue 14,
//! finding 8). Eight callers flooding at once still can; that needs eight distinct pods or
//! uids holding an identity on the node.
//!
//! [`sweep`]: DiscoveryCache::sweep

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use lanyard_proto::discovery::v1 as wire;
use lanyard_proto::discovery_destination::Destination;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::metrics::DiscoveryMetrics;
use crate::socket::CallerKey;

/// Tunables of the cache. [`CacheSettings::default`] suits a node agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// How long answers stay usable after the feed that answered them is lost. A stale
    /// meshed answer fails closed (the handshake with a wrong peer fails), so this favours
    /// riding out a server restart.
    pub ttl: Duration,
    /// How long the first lookup of a destination waits for the server.
    pub first_answer_timeout: Duration,
    /// An entry unused for this long (no lookup, no open watch) is dropped.
    pub idle: Duration,
    /// Most destinations held.
    pub max_entries: usize,
    /// Most destinations one caller may hold (see the module's "Fairness").
    pub max_per_caller: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(600),
            first_answer_timeout: Duration::from_secs(3),
            idle: Duration::from_secs(600),
            max_entries: 16_384,
            // An eighth of the cache: twice the proxy's own cache of 1,024 destinations (so a
            // proxy that cycles through its whole cache within the idle time still fits), while
            // no single caller can take more than 1/8 of what the node can follow.
            max_per_caller: 16_384 / 8,
        }
    }
}

/// A cached answer and until when it may be served (`None`: its feed is live).
#[derive(Debug, Clone, PartialEq)]
pub struct Cached {
    pub resolution: wire::Resolution,
    pub valid_until: Option<Instant>,
}

impl Cached {
    pub fn is_valid(&self, now: Instant) -> bool {
        self.valid_until.is_none_or(|t| now < t)
    }
}

/// Why a destination cannot be followed now. `Display` is the refusal label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The cache is full of destinations in use.
    #[error("too_many_destinations")]
    CacheFull { limit: usize },
    /// This caller holds its share of the cache already.
    #[error("caller_destination_budget")]
    CallerBudget { limit: usize },
}

struct Entry {
    /// `None` until the server first answers.
    answer: watch::Sender<Option<Cached>>,
    /// The feed stream that last answered (0: none).
    answered_by: u64,
    last_used: Instant,
    /// The callers this entry counts against, and when each last looked it up.
    holders: HashMap<CallerKey, Instant>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Destination, Entry>,
    /// Entries counted against each caller (callers holding none are not kept).
    held: HashMap<CallerKey, usize>,
    /// Changes not yet sent on the current stream.
    to_follow: HashSet<Destination>,
    to_unfollow: HashSet<Destination>,
    /// The current feed stream (0: none open).
    stream: u64,
    /// The server accepted the current stream.
    live: bool,
    streams_opened: u64,
}

/// The cache. Shared (`Arc`) by the socket service and the feed task.
pub struct DiscoveryCache {
    settings: CacheSettings,
    metrics: DiscoveryMetrics,
    inner: Mutex<Inner>,
    /// Wakes the feed task when there is something to follow or unfollow.
    pub(super) pending: Notify,
}

impl DiscoveryCache {
    /// A cache whose metrics are registered nowhere (tests, tools).
    pub fn new(settings: CacheSettings) -> Self {
        Self::with_metrics(settings, DiscoveryMetrics::default())
    }

    /// A cache counting in `metrics` (the agent's registered [`DiscoveryMetrics`]).
    pub fn with_metrics(settings: CacheSettings, metrics: DiscoveryMetrics) -> Self {
        Self {
            settings,
            metrics,
            inner: Mutex::default(),
            pending: Notify::new(),
        }
    }

    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    /// The metrics the cache and the `Discovery` service count in.
    pub fn metrics(&self) -> &DiscoveryMetrics {
        &self.metrics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver of `destination`'s answer for `caller`, creating (and following) the entry
    /// if needed; the entry counts against `caller`'s share until it stops looking it up.
    pub fn subscribe(
        &self,
        destination: Destination,
        caller: &CallerKey,
    ) -> Result<watch::Receiver<Option<Cached>>, SubscribeError> {
        let now = Instant::now();
        let mut guard = self.lock();
        let inner = &mut *guard;
        let over_budget =
            inner.held.get(caller).copied().unwrap_or(0) >= self.settings.max_per_caller;
        if let Some(entry) = inner.entries.get_mut(&destination) {
            if let Some(seen) = entry.holders.get_mut(caller) {
                *seen = now;
            } else if over_budget {
                return Err(self.over_budget(caller));
            } else {
                entry.holders.insert(caller.clone(), now);
                *inner.held.entry(caller.clone()).or_insert(0) += 1;
            }
            entry.last_used = now;
            return Ok(entry.answer.subscribe());
        }
        if over_budget {
            return Err(self.over_budget(caller));
        }
        if inner.entries.len() >= self.settings.max_entries {
            self.evict_idle(inner, now);
            if inner.entries.len() >= self.settings.max_entries {
                return Err(SubscribeError::CacheFull {
                    limit: self.settings.max_entries,
                });
            }
        }
        let (answer, rx) = watch::channel(None);
        inner.entries.insert(
            destination,
            Entry {
                answer,
                answered_by: 0,
                last_used: now,
                holders: HashMap::from([(caller.clone(), now)]),
            },
        );
        *inner.held.entry(caller.clone()).or_insert(0) += 1;
        inner.to_unfollow.remove(&destination);
        inner.to_follow.insert(destination);
        self.metrics.cached.set(inner.entries.len() as i64);
        drop(guard);
        self.pending.notify_one();
        Ok(rx)
    }

    fn over_budget(&self, caller: &CallerKey) -> SubscribeError {
        tracing::debug!(uid = caller.uid, pod_uid = ?caller.pod_uid, "caller over its share of discovery destinations");
        SubscribeError::CallerBudget {
            limit: self.settings.max_per_caller,
        }
    }

    /// Destinations counted against `caller` now.
    pub fn held_by(&self, caller: &CallerKey) -> usize {
        self.lock().held.get(caller).copied().unwrap_or(0)
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops entries unused for [`CacheSettings::idle`]; returns how many.
    pub fn sweep(&self) -> usize {
        let removed = self.evict_idle(&mut self.lock(), Instant::now());
        if removed > 0 {
            self.pending.notify_one();
        }
        removed
    }

    fn evict_idle(&self, inner: &mut Inner, now: Instant) -> usize {
        let idle = self.settings.idle;
        // Callers that stopped looking a destination up no longer pay for it.
        for entry in inner.entries.values_mut() {
            entry.holders.retain(|caller, seen| {
                let keep = now < *seen + idle;
                if !keep {
                    release(&mut inner.held, caller);
                }
                keep
            });
        }
        let gone: Vec<Destination> = inner
            .entries
            .iter()
            .filter(|(_, e)| e.answer.receiver_count() == 0 && now >= e.last_used + idle)
            .map(|(d, _)| *d)
            .collect();
        for d in &gone {
            if let Some(entry) = inner.entries.remove(d) {
                for caller in entry.holders.keys() {
                    release(&mut inner.held, caller);
                }
            }
            inner.to_follow.remove(d);
            if inner.stream != 0 {
                inner.to_unfollow.insert(*d);
            }
        }
        self.metrics.cached.set(inner.entries.len() as i64);
        gone.len()
    }

    /// A new feed stream starts: everything held is to be followed on it. Returns its number.
    pub(super) fn stream_opened(&self) -> u64 {
        let mut inner = self.lock();
        inner.streams_opened += 1;
        inner.stream = inner.streams_opened;
        inner.to_follow = inner.entries.keys().copied().collect();
        inner.to_unfollow.clear();
        inner.stream
    }

    /// The server accepted stream `stream`.
    pub(super) fn stream_accepted(&self, stream: u64) {
        let mut inner = self.lock();
        if inner.stream == stream {
            inner.live = true;
        }
    }

    /// Whether a feed stream is open and accepted by the server (answers are then current).
    pub fn is_live(&self) -> bool {
        self.lock().live
    }

    /// Stream `stream` is gone: its answers now count down their TTL.
    pub(super) fn stream_lost(&self, stream: u64) {
        let until = Instant::now() + self.settings.ttl;
        let mut inner = self.lock();
        if inner.stream == stream {
            inner.stream = 0;
            inner.live = false;
        }
        for entry in inner.entries.values_mut() {
            if entry.answered_by == stream {
                entry.answered_by = 0;
                entry.answer.send_modify(|a| {
                    if let Some(a) = a {
                        a.valid_until.get_or_insert(until);
                    }
                });
            }
        }
    }

    /// The next request to send on stream `stream`, at most `max` destinations; `None` when
    /// nothing is pending.
    pub(super) fn take_pending(&self, stream: u64, max: usize) -> Option<wire::FollowRequest> {
        let mut inner = self.lock();
        if inner.stream != stream {
            return None;
        }
        let unfollow: Vec<Destination> = inner.to_unfollow.iter().take(max).copied().collect();
        for d in &unfollow {
            inner.to_unfollow.remove(d);
        }
        let room = max - unfollow.len();
        let follow: Vec<Destination> = inner.to_follow.iter().take(room).copied().collect();
        for d in &follow {
            inner.to_follow.remove(d);
        }
        if follow.is_empty() && unfollow.is_empty() {
            return None;
        }
        Some(wire::FollowRequest {
            follow: follow.into_iter().map(Destination::to_wire).collect(),
            unfollow: unfollow.into_iter().map(Destination::to_wire).collect(),
        })
    }

    /// Applies answers received on stream `stream`; returns how many were usable.
    pub(super) fn apply(&self, stream: u64, update: wire::FollowUpdate) -> usize {
        let mut inner = self.lock();
        let mut applied = 0;
        for item in update.updates {
            let Ok(destination) = Destination::from_wire(item.destination.as_ref()) else {
                continue;
            };
            let Some(resolution) = item.resolution.filter(|r| r.kind.is_some()) else {
                continue;
            };
            // Answers for destinations dropped meanwhile are ignored.
            let Some(entry) = inner.entries.get_mut(&destination) else {
                continue;
            };
            entry.answered_by = stream;
            let fresh = Some(Cached {
                resolution,
                valid_until: None,
            });
            entry.answer.send_if_modified(|a| {
                if *a == fresh {
                    false
                } else {
                    *a = fresh;
                    true
                }
            });
            applied += 1;
        }
        applied
    }
}

/// One entry fewer counted against `caller`.
fn release(held: &mut HashMap<CallerKey, usize>, caller: &CallerKey) {
    if let Some(count) = held.get_mut(caller) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            held.remove(caller);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::resolution::Kind;

    fn d(port: u16) -> Destination {
        Destination {
            address: "10.0.0.1".parse().unwrap(),
            port,
        }
    }

    fn update(port: u16, id: &str) -> wire::FollowUpdate {
        wire::FollowUpdate {
            updates: vec![wire::DestinationResolution {
                destination: Some(d(port).to_wire()),
                resolution: Some(wire::Resolution {
                    kind: Some(Kind::MeshedPod(wire::MeshedPod {
                        spiffe_id: id.into(),
                        ..Default::default()
                    })),
                }),
            }],
        }
    }

    fn caller(uid: u32) -> CallerKey {
        CallerKey { uid, pod_uid: None }
    }

    fn settings() -> CacheSettings {
        CacheSettings {
            ttl: Duration::from_secs(60),
            idle: Duration::from_secs(300),
            max_entries: 2,
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn answers_expire_ttl_after_their_stream_is_lost() {
        let cache = DiscoveryCache::new(settings());
        let rx = cache.subscribe(d(80), &caller(1)).unwrap();
        let stream = cache.stream_opened();
        let request = cache.take_pending(stream, 100).unwrap();
        assert_eq!(request.follow, [d(80).to_wire()]);
        assert!(cache.take_pending(stream, 100).is_none());
        assert_eq!(cache.apply(stream, update(80, "spiffe://td/a")), 1);
        let now = Instant::now();
        assert!(rx.borrow().as_ref().unwrap().is_valid(now));
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(
            rx.borrow().as_ref().unwrap().is_valid(Instant::now()),
            "a live feed keeps answers valid indefinitely"
        );

        cache.stream_lost(stream);
        let lost_at = Instant::now();
        let cached = rx.borrow().clone().unwrap();
        assert_eq!(cached.valid_until, Some(lost_at + Duration::from_secs(60)));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(cached.is_valid(Instant::now()), "served until the TTL");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!cached.is_valid(Instant::now()), "expired at the TTL");

        // A new stream re-follows everything; its answer is current again.
        let next = cache.stream_opened();
        assert_eq!(cache.take_pending(next, 100).unwrap().follow.len(), 1);
        cache.apply(next, update(80, "spiffe://td/a"));
        assert_eq!(rx.borrow().as_ref().unwrap().valid_until, None);
        // An answer from an older stream does not outlive its own loss.
        cache.stream_lost(stream);
        assert_eq!(rx.borrow().as_ref().unwrap().valid_until, None);
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_and_idle_entries_are_dropped_and_unfollowed() {
        let cache = DiscoveryCache::new(settings());
        let stream = cache.stream_opened();
        let held = cache.subscribe(d(1), &caller(1)).unwrap();
        drop(cache.subscribe(d(2), &caller(1)).unwrap());
        assert_eq!(
            cache.subscribe(d(3), &caller(1)).unwrap_err(),
            SubscribeError::CacheFull { limit: 2 },
            "full of entries in use"
        );
        let _ = cache.take_pending(stream, 100);
        tokio::time::advance(Duration::from_secs(301)).await;
        assert_eq!(cache.metrics().cached.get(), 2);
        // d(2) is idle and unwatched; d(1) is still watched.
        assert_eq!(cache.sweep(), 1);
        assert_eq!(cache.len(), 1);
        assert_eq!(
            cache.metrics().cached.get(),
            1,
            "the gauge follows evictions"
        );
        let request = cache.take_pending(stream, 100).unwrap();
        assert_eq!(request.unfollow, [d(2).to_wire()]);
        assert!(cache.subscribe(d(3), &caller(1)).is_ok());
        drop(held);
    }

    #[test]
    fn unusable_answers_are_ignored() {
        let cache = DiscoveryCache::new(settings());
        let rx = cache.subscribe(d(80), &caller(1)).unwrap();
        let stream = cache.stream_opened();
        let mut empty = update(80, "x");
        empty.updates[0].resolution = Some(wire::Resolution { kind: None });
        assert_eq!(cache.apply(stream, empty), 0);
        let mut bad = update(80, "x");
        bad.updates[0].destination = Some(wire::Destination {
            address: "nonsense".into(),
            port: 80,
        });
        assert_eq!(cache.apply(stream, bad), 0);
        assert_eq!(cache.apply(stream, update(81, "x")), 0, "not followed");
        assert!(rx.borrow().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_over_its_share_is_refused_and_others_are_not() {
        let cache = DiscoveryCache::new(CacheSettings {
            idle: Duration::from_secs(300),
            max_entries: 8,
            max_per_caller: 3,
            ..Default::default()
        });
        let (a, b) = (caller(1), caller(2));
        for port in 1..=3 {
            drop(cache.subscribe(d(port), &a).unwrap());
        }
        assert_eq!(
            cache.subscribe(d(4), &a).unwrap_err(),
            SubscribeError::CallerBudget { limit: 3 }
        );
        assert_eq!(
            cache.subscribe(d(4), &a).unwrap_err().to_string(),
            "caller_destination_budget"
        );
        assert!(
            cache.subscribe(d(1), &a).is_ok(),
            "what it holds stays usable"
        );
        assert_eq!(cache.held_by(&a), 3);
        assert_eq!(cache.len(), 3, "refusals add nothing");
        // B is unaffected, and a shared destination counts against B too.
        assert!(cache.subscribe(d(4), &b).is_ok());
        assert!(cache.subscribe(d(1), &b).is_ok());
        assert_eq!(cache.held_by(&b), 2);
        assert_eq!(
            cache.subscribe(d(4), &a).unwrap_err(),
            SubscribeError::CallerBudget { limit: 3 },
            "another caller's entry still costs A a share"
        );

        // A stops using d(2) and d(3); B keeps d(1) in use: A's share comes back.
        tokio::time::advance(Duration::from_secs(200)).await;
        drop(cache.subscribe(d(1), &b).unwrap());
        tokio::time::advance(Duration::from_secs(100)).await;
        assert_eq!(cache.sweep(), 3, "d(2), d(3) and d(4) dropped");
        assert_eq!(cache.held_by(&a), 0);
        assert_eq!(cache.held_by(&b), 1, "B's looked-up d(1) stays counted");
        assert!(cache.subscribe(d(5), &a).is_ok());
    }
}
