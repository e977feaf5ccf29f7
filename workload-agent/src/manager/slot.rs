//! One identity's slot: its current SVID (with key), the workload claims to name it to the
//! server with, and its timers (renewal, backoff, idleness). What is due for a mint is a
//! [`Pending`]; a failed one a [`MintFailure`].

use std::sync::Arc;
use std::time::Duration;

use lanyard_proto::identity::v1 as wire;
use lanyard_svid::SpiffeId;
use lanyard_svid::x509::X509Svid;
use tokio::time::Instant;

use super::ManagerSettings;
use super::backoff::Backoff;
use super::renew::SvidTimes;

/// Distinct workload claims remembered per identity (pods sharing a service account).
const MAX_WORKLOADS_PER_SLOT: usize = 8;

/// One identity: its current SVID (with key) and its timers.
pub(super) struct Slot {
    /// Ways to name the workload to the server, most recently seen last.
    pub(super) workloads: Vec<wire::Workload>,
    pub(super) svid: Option<Arc<X509Svid>>,
    pub(super) times: Option<SvidTimes>,
    pub(super) last_requested: Instant,
    /// Someone asked for this identity while the current SVID was already held (a stream
    /// re-reading after a change): a sign the SVID is in use.
    pub(super) current_read: bool,
    pub(super) backoff: Backoff,
    pub(super) retry_at: Option<Instant>,
    pub(super) in_flight: bool,
    /// Finished mint attempts.
    pub(super) attempts: u64,
    pub(super) last_error: Option<String>,
}

impl Slot {
    pub(super) fn new(settings: &ManagerSettings, now: Instant) -> Self {
        Self {
            workloads: Vec::new(),
            svid: None,
            times: None,
            last_requested: now,
            current_read: false,
            backoff: Backoff::new(settings.backoff_initial, settings.backoff_max),
            retry_at: None,
            in_flight: false,
            attempts: 0,
            last_error: None,
        }
    }

    /// The SVID if it may still be served.
    pub(super) fn servable(&self, now: Instant) -> Option<Arc<X509Svid>> {
        match (&self.svid, &self.times) {
            (Some(svid), Some(t)) if !t.is_expired(now) => Some(svid.clone()),
            _ => None,
        }
    }

    /// Records `workload` as the most recent way to name this identity. A new one clears any
    /// backoff: it may succeed where the previous claim was refused.
    pub(super) fn remember(&mut self, workload: &wire::Workload) {
        if let Some(pos) = self.workloads.iter().position(|w| w == workload) {
            let w = self.workloads.remove(pos);
            self.workloads.push(w);
        } else {
            if self.workloads.len() == MAX_WORKLOADS_PER_SLOT {
                self.workloads.remove(0);
            }
            self.workloads.push(workload.clone());
            self.retry_at = None;
        }
    }

    /// Whether to keep this slot. An SVID is never dropped before its renewal is due; then
    /// it is renewed only if someone asked within `idle` or read it since it arrived.
    pub(super) fn wanted(&self, now: Instant, idle: Duration) -> bool {
        let recently_asked = now < self.last_requested + idle;
        match (&self.svid, &self.times) {
            (Some(_), Some(t)) => !t.renewal_due(now) || recently_asked || self.current_read,
            _ => recently_asked,
        }
    }

    /// When the driver should next look at this slot.
    pub(super) fn next_attempt(&self, now: Instant) -> Instant {
        let base = match (&self.svid, &self.times) {
            (Some(_), Some(t)) => t.renew_at,
            _ => now,
        };
        self.retry_at.map_or(base, |r| base.max(r))
    }
}

/// One CSR to send, with what it is for.
pub(super) struct Pending {
    pub(super) spiffe_id: SpiffeId,
    pub(super) workload: wire::Workload,
}

/// Why one identity's mint failed.
pub(super) struct MintFailure {
    pub(super) label: String,
    pub(super) message: String,
    /// The server refused this workload claim (try another claim, if any).
    pub(super) refused_claim: bool,
}
