//! The driver: the one task that wakes when something is due (a first mint, a renewal, a
//! retry after backoff, an expiry, an idle slot to drop), plans batches of due slots within
//! the in-flight bound, mints them on the server and takes in the results.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use lanyard_proto::identity::v1 as wire;
use lanyard_svid::SpiffeId;
use lanyard_svid::csr::KeyAndCsr;
use lanyard_svid::keys::KeyAlgorithm;
use lanyard_svid::x509::X509Svid;
use rustls_pki_types::CertificateDer;
use tokio::time::Instant;

use super::Shared;
use super::backoff::random_unit;
use super::renew::SvidTimes;
use super::slot::{MintFailure, Pending, Slot};
use crate::server_client::{ServerError, split_reason};

impl Shared {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SpiffeId, Slot>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn bump_changes(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub(super) async fn drive(self: Arc<Self>) {
        loop {
            let now = Instant::now();
            let capacity = self.permits.available_permits() * self.settings.batch_size.max(1);
            let (due, next) = self.plan(now, capacity);
            let mut due = due.into_iter().peekable();
            while due.peek().is_some() {
                let batch: Vec<Pending> =
                    due.by_ref().take(self.settings.batch_size.max(1)).collect();
                let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                    // Cannot happen (only this task acquires, within capacity); release the slots.
                    self.finish(
                        batch,
                        Err(ServerError::Unavailable("no call slot".into())),
                        Vec::new(),
                    );
                    continue;
                };
                let shared = self.clone();
                tokio::spawn(async move {
                    shared.mint_batch(batch).await;
                    drop(permit);
                    shared.wake.notify_one();
                });
            }
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.wake.notified() => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }

    /// Expires, drops and picks due slots (marking them in flight); returns them, most urgent
    /// first, and when to look again.
    pub(super) fn plan(&self, now: Instant, capacity: usize) -> (Vec<Pending>, Option<Instant>) {
        let attested = *self.attested.borrow();
        let idle = self.settings.idle_timeout;
        let mut changed = false;
        let mut next: Option<Instant> = None;
        let mut soonest = |at: Instant| {
            if at > now {
                next = Some(next.map_or(at, |n: Instant| n.min(at)));
            }
        };
        let mut slots = self.lock();
        slots.retain(|id, slot| {
            if slot.svid.is_some() && slot.times.is_some_and(|t| t.is_expired(now)) {
                tracing::warn!(spiffe_id = %id, "X.509-SVID expired before it could be renewed; no longer served");
                slot.svid = None;
                changed = true;
            }
            if slot.in_flight || slot.wanted(now, idle) {
                return true;
            }
            tracing::debug!(spiffe_id = %id, "no workload asked for this identity lately; dropped");
            false
        });
        let mut due: Vec<(bool, Instant, SpiffeId)> = Vec::new();
        for (id, slot) in slots.iter() {
            if slot.in_flight {
                continue;
            }
            if let (Some(_), Some(t)) = (&slot.svid, &slot.times) {
                soonest(t.expires);
            }
            if slot.svid.is_none() {
                soonest(slot.last_requested + idle);
            }
            let at = slot.next_attempt(now);
            if at <= now && attested && !slot.workloads.is_empty() {
                let expires = slot.times.map_or(now, |t| t.expires);
                due.push((slot.svid.is_some(), expires, id.clone()));
            } else {
                soonest(at);
            }
        }
        // Identities without an SVID first (a workload is waiting), then by expiry.
        due.sort();
        let mut picked = Vec::new();
        for (_, _, id) in due.into_iter().take(capacity) {
            let slot = slots.get_mut(&id).expect("present");
            slot.in_flight = true;
            picked.push(Pending {
                workload: slot.workloads.last().cloned().expect("checked non-empty"),
                spiffe_id: id,
            });
        }
        let held = slots.values().filter(|s| s.svid.is_some()).count();
        drop(slots);
        self.metrics.svids_cached.set(held as i64);
        if changed {
            self.bump_changes();
        }
        (picked, next)
    }

    pub(super) async fn mint_batch(&self, batch: Vec<Pending>) {
        let mut keys = Vec::with_capacity(batch.len());
        let mut requests = Vec::with_capacity(batch.len());
        for pending in &batch {
            match KeyAndCsr::generate(KeyAlgorithm::EcdsaP256) {
                Ok(key) => {
                    requests.push(wire::MintX509SvidRequest {
                        workload: Some(pending.workload.clone()),
                        csr: key.csr_der.clone(),
                    });
                    keys.push(key);
                }
                Err(e) => {
                    let error = ServerError::BadResponse(format!("key generation failed: {e}"));
                    return self.finish(batch, Err(error), Vec::new());
                }
            }
        }
        let result = self.server.mint_x509_svids(requests).await;
        self.finish(batch, result, keys);
    }

    /// Records the outcome of one call for every identity of `batch`.
    pub(super) fn finish(
        &self,
        batch: Vec<Pending>,
        result: Result<Vec<wire::MintX509SvidResult>, ServerError>,
        keys: Vec<KeyAndCsr>,
    ) {
        let now = Instant::now();
        let now_wall = SystemTime::now();
        let mut changed = false;
        let mut keys = keys.into_iter();
        let mut slots = self.lock();
        for (index, pending) in batch.into_iter().enumerate() {
            let key = keys.next();
            let outcome = match &result {
                Err(e) => Err(MintFailure {
                    label: e.to_string(),
                    message: e.message(),
                    refused_claim: false,
                }),
                Ok(results) => accept(&pending.spiffe_id, results.get(index), key),
            };
            let Some(slot) = slots.get_mut(&pending.spiffe_id) else {
                continue;
            };
            slot.in_flight = false;
            slot.attempts += 1;
            match outcome {
                Ok(svid) => {
                    let times = SvidTimes::schedule(now, now_wall, svid.not_after(), random_unit());
                    tracing::info!(
                        spiffe_id = %pending.spiffe_id,
                        expires_in_s = (times.expires - now).as_secs(),
                        renew_in_s = (times.renew_at - now).as_secs(),
                        "received X.509-SVID"
                    );
                    slot.svid = Some(Arc::new(svid));
                    slot.times = Some(times);
                    slot.current_read = false;
                    slot.backoff.reset();
                    slot.retry_at = None;
                    slot.last_error = None;
                    self.metrics.rotations.inc();
                    changed = true;
                }
                Err(failure) => {
                    self.metrics.renewal_failed(&failure.label);
                    let other_claims = slot.workloads.len() > 1;
                    if failure.refused_claim && other_claims {
                        // Another pod may still name this identity; try it next, at once.
                        slot.workloads.retain(|w| w != &pending.workload);
                        slot.retry_at = None;
                    } else {
                        slot.retry_at = Some(now + slot.backoff.fail());
                    }
                    tracing::warn!(
                        spiffe_id = %pending.spiffe_id,
                        reason = %failure.label,
                        still_serving = slot.servable(now).is_some(),
                        retry_in_ms = slot.retry_at.map_or(0, |r| (r - now).as_millis() as u64),
                        "X.509-SVID mint failed: {}",
                        failure.message
                    );
                    slot.last_error = Some(format!("{}: {}", failure.label, failure.message));
                }
            }
        }
        let held = slots.values().filter(|s| s.svid.is_some()).count();
        drop(slots);
        self.metrics.svids_cached.set(held as i64);
        if changed {
            self.bump_changes();
        }
        self.outcomes.send_modify(|v| *v = v.wrapping_add(1));
    }
}

/// Turns one result into an SVID with its key, or a failure.
fn accept(
    expected: &SpiffeId,
    result: Option<&wire::MintX509SvidResult>,
    key: Option<KeyAndCsr>,
) -> Result<X509Svid, MintFailure> {
    let bad = |message: String| MintFailure {
        label: "bad_response".into(),
        message,
        refused_claim: false,
    };
    match result.and_then(|r| r.result.as_ref()) {
        None => Err(bad("the server's result is empty".into())),
        Some(wire::mint_x509_svid_result::Result::Refusal(r)) => {
            let (label, _) = split_reason(&format!("{}: ", r.reason));
            Err(MintFailure {
                label,
                message: r.message.clone(),
                refused_claim: true,
            })
        }
        Some(wire::mint_x509_svid_result::Result::Svid(w)) => {
            let key = key.ok_or_else(|| bad("no key for this result".into()))?;
            let chain = w
                .cert_chain
                .iter()
                .map(|c| CertificateDer::from(c.clone()))
                .collect();
            let svid = X509Svid::parse(chain, Some(key.private_key_pkcs8))
                .map_err(|e| bad(format!("X.509-SVID: {}", e.message())))?;
            if svid.spiffe_id() != expected {
                return Err(MintFailure {
                    label: "unexpected_id".into(),
                    message: format!(
                        "asked for {expected}, the server issued {}",
                        svid.spiffe_id()
                    ),
                    refused_claim: false,
                });
            }
            Ok(svid)
        }
    }
}
