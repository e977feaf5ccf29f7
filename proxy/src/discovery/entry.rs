//! A cached destination and the no-downgrade rules applied to every new answer: once a
//! destination answered `MeshedPod`, a later `UnmeshedPod` is refused, and `Unknown` or an
//! expired answer refuse connections rather than sending plaintext; a Service endpoint once
//! listed meshed and then listed unmeshed is left out.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use tokio::time::Instant;

use super::{Answer, DiscoveryError};

/// Endpoint addresses remembered as once meshed, per Service.
const MAX_REMEMBERED_MESHED: usize = 4096;

/// A cached destination.
pub(super) struct Entry {
    /// The answer in force, or why none is usable.
    pub(super) state: Result<Answer, DiscoveryError>,
    /// Once `MeshedPod`: stays true for the entry's life.
    pub(super) was_meshed: bool,
    /// Service endpoint addresses once listed meshed.
    meshed_endpoints: HashSet<SocketAddr>,
    pub(super) last_used: Instant,
    /// Set while the watch is down: the answer is usable until then.
    pub(super) stale_at: Option<Instant>,
    /// Round-robin position for Services.
    pub(super) next: Arc<AtomicUsize>,
}

impl Entry {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            state: Err(DiscoveryError::Unavailable("not answered yet".into())),
            was_meshed: false,
            meshed_endpoints: HashSet::new(),
            last_used: now,
            stale_at: None,
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Applies a new answer under the no-downgrade rules.
    pub(super) fn apply(&mut self, dst: SocketAddr, answer: Answer) {
        self.stale_at = None;
        self.state = match answer {
            Answer::MeshedPod(id) => {
                self.was_meshed = true;
                Ok(Answer::MeshedPod(id))
            }
            Answer::UnmeshedPod if self.was_meshed => {
                tracing::warn!(%dst, "discovery answered a meshed destination unmeshed; refusing connections to it");
                Err(DiscoveryError::DowngradeRefused)
            }
            Answer::Unknown if self.was_meshed => {
                tracing::info!(%dst, "a meshed destination is gone; refusing connections to it");
                Err(DiscoveryError::MeshedGone)
            }
            Answer::Service(endpoints) => {
                let mut kept = Vec::with_capacity(endpoints.len());
                for endpoint in endpoints {
                    if endpoint.id.is_some() {
                        if self.meshed_endpoints.len() < MAX_REMEMBERED_MESHED {
                            self.meshed_endpoints.insert(endpoint.addr);
                        }
                    } else if self.meshed_endpoints.contains(&endpoint.addr) {
                        tracing::warn!(%dst, endpoint = %endpoint.addr, "a meshed Service endpoint is now listed unmeshed; leaving it out");
                        continue;
                    }
                    kept.push(endpoint);
                }
                Ok(Answer::Service(kept))
            }
            other => Ok(other),
        };
    }

    pub(super) fn expire(&mut self) {
        if self.was_meshed {
            self.state = Err(DiscoveryError::MeshedGone);
        }
    }

    /// The answer in force at `now`; `None` when it expired and was never meshed (forget it).
    pub(super) fn current(&self, now: Instant) -> Option<Result<Answer, DiscoveryError>> {
        if self.stale_at.is_some_and(|at| at <= now) {
            return self.was_meshed.then_some(Err(DiscoveryError::MeshedGone));
        }
        Some(self.state.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_svid::SpiffeId;
    use std::time::Duration;

    fn id(text: &str) -> SpiffeId {
        SpiffeId::parse(text).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_answer_is_used_until_the_ttl_then_refused_if_it_was_meshed() {
        let dst: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let ttl = Duration::from_secs(60);
        let mut meshed = Entry::new(Instant::now());
        meshed.apply(dst, Answer::MeshedPod(id("spiffe://td/a")));
        let mut plain = Entry::new(Instant::now());
        plain.apply(dst, Answer::UnmeshedPod);
        for entry in [&mut meshed, &mut plain] {
            entry.stale_at = Some(Instant::now() + ttl);
        }
        tokio::time::advance(ttl - Duration::from_secs(1)).await;
        let now = Instant::now();
        assert_eq!(
            meshed.current(now),
            Some(Ok(Answer::MeshedPod(id("spiffe://td/a"))))
        );
        assert_eq!(plain.current(now), Some(Ok(Answer::UnmeshedPod)));
        tokio::time::advance(Duration::from_secs(1)).await;
        let now = Instant::now();
        assert_eq!(meshed.current(now), Some(Err(DiscoveryError::MeshedGone)));
        assert_eq!(plain.current(now), None, "forgotten: asked again");
        // A fresh answer clears the staleness.
        meshed.apply(dst, Answer::MeshedPod(id("spiffe://td/b")));
        assert_eq!(
            meshed.current(now),
            Some(Ok(Answer::MeshedPod(id("spiffe://td/b"))))
        );
    }

    #[test]
    fn a_meshed_destination_is_never_downgraded() {
        let dst: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let mut entry = Entry::new(Instant::now());
        entry.apply(dst, Answer::MeshedPod(id("spiffe://td/a")));
        entry.apply(dst, Answer::UnmeshedPod);
        assert_eq!(entry.state, Err(DiscoveryError::DowngradeRefused));
        entry.apply(dst, Answer::Unknown);
        assert_eq!(entry.state, Err(DiscoveryError::MeshedGone));
    }
}
