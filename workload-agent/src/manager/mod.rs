//! The certificate manager: obtains workload X.509-SVIDs from the server, keeps them fresh, and
//! implements [`WorkloadIdentities`] for the Workload API.
//!
//! - One slot per SPIFFE ID: workloads sharing an identity share one key and one SVID. The key
//!   is generated here, held only in memory (wiped on drop), and replaced at every renewal.
//! - A single driver task wakes when something is due: a first mint, a renewal (half the
//!   remaining lifetime, ±10%), a retry after backoff, an expiry, or an idle slot to drop.
//!   Due slots go to the server in batches of at most `batch_size` CSRs, with at most
//!   `max_in_flight` calls at once.
//! - A failed mint backs off per identity (exponential, jittered, capped); an SVID that is
//!   still valid keeps being served meanwhile, and is withdrawn only when it expires.
//! - When its renewal is due, a slot is renewed only if someone asked for it within
//!   `idle_timeout` or read its current SVID since it arrived (open Workload API streams re-read
//!   after every change, so they keep their identities alive without polling); otherwise it is
//!   dropped. A slot without an SVID is dropped once nobody asked for it in `idle_timeout`.
//! - [`CertificateManager::changes`] moves on every rotation, expiry, bundle change and node
//!   view change, so every open stream re-reads at once (the Workload API reads each distinct
//!   identity set once per change and shares the result); the view version moves just before
//!   a view change, so streams re-resolve their caller only then.
//!
//! Timers use `tokio::time::Instant` (see [`renew`]), so tests run them on a paused clock.

pub mod backoff;
pub mod renew;
pub mod resolve;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use lanyard_proto::identity::v1 as wire;
use lanyard_svid::csr::KeyAndCsr;
use lanyard_svid::keys::KeyAlgorithm;
use lanyard_svid::x509::X509Svid;
use lanyard_svid::{BundleSet, SpiffeId};
use rustls_pki_types::CertificateDer;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::attest::Attested;
use crate::identities::{Entitlement, IdentityError, WorkloadIdentities};
use crate::metrics::AgentMetrics;
use crate::server_client::{MintApi, ServerError, split_reason};
use backoff::{Backoff, random_unit};
use renew::SvidTimes;
use resolve::NodeView;

/// Tunables of the manager. `Default` gives the production values.
#[derive(Debug, Clone)]
pub struct ManagerSettings {
    /// Most CSRs in one `MintX509SVIDs` call (the server accepts up to 500).
    pub batch_size: usize,
    /// Most `MintX509SVIDs` calls in flight at once.
    pub max_in_flight: usize,
    /// How long [`WorkloadIdentities::x509_svids`] waits for a first mint.
    pub first_mint_wait: Duration,
    /// Slots nobody asked for in this long are dropped.
    pub idle_timeout: Duration,
    /// Per-identity retry backoff after a failed mint.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Most identities held at once (a bound on memory and on work per renewal round).
    pub max_identities: usize,
    /// Longest a JWT-SVID mint may take.
    pub jwt_timeout: Duration,
}

impl Default for ManagerSettings {
    fn default() -> Self {
        Self {
            batch_size: 100,
            max_in_flight: 4,
            first_mint_wait: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(120),
            max_identities: 20_000,
            jwt_timeout: Duration::from_secs(10),
        }
    }
}

/// Distinct workload claims remembered per identity (pods sharing a service account).
const MAX_WORKLOADS_PER_SLOT: usize = 8;

/// The certificate manager. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct CertificateManager {
    shared: Arc<Shared>,
}

struct Shared {
    settings: ManagerSettings,
    server: Arc<dyn MintApi>,
    metrics: Arc<AgentMetrics>,
    /// Never held across an `.await`.
    state: Mutex<HashMap<SpiffeId, Slot>>,
    bundles: RwLock<Arc<BundleSet>>,
    view: RwLock<Arc<NodeView>>,
    /// Moves at every node view change, before `changes` does (see
    /// [`WorkloadIdentities::view_version`]).
    view_version: AtomicU64,
    /// What the Workload API watches.
    changes: watch::Sender<u64>,
    /// Moves after every finished mint attempt (success or not), for waiting callers.
    outcomes: watch::Sender<u64>,
    /// Wakes the driver (new slot, attempt finished, attested).
    wake: Notify,
    attested: watch::Sender<bool>,
    permits: Arc<Semaphore>,
}

/// One identity: its current SVID (with key) and its timers.
struct Slot {
    /// Ways to name the workload to the server, most recently seen last.
    workloads: Vec<wire::Workload>,
    svid: Option<Arc<X509Svid>>,
    times: Option<SvidTimes>,
    last_requested: Instant,
    /// Someone asked for this identity while the current SVID was already held (a stream
    /// re-reading after a change): a sign the SVID is in use.
    current_read: bool,
    backoff: Backoff,
    retry_at: Option<Instant>,
    in_flight: bool,
    /// Finished mint attempts.
    attempts: u64,
    last_error: Option<String>,
}

impl Slot {
    fn new(settings: &ManagerSettings, now: Instant) -> Self {
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
    fn servable(&self, now: Instant) -> Option<Arc<X509Svid>> {
        match (&self.svid, &self.times) {
            (Some(svid), Some(t)) if !t.is_expired(now) => Some(svid.clone()),
            _ => None,
        }
    }

    /// Records `workload` as the most recent way to name this identity. A new one clears any
    /// backoff: it may succeed where the previous claim was refused.
    fn remember(&mut self, workload: &wire::Workload) {
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
    fn wanted(&self, now: Instant, idle: Duration) -> bool {
        let recently_asked = now < self.last_requested + idle;
        match (&self.svid, &self.times) {
            (Some(_), Some(t)) => !t.renewal_due(now) || recently_asked || self.current_read,
            _ => recently_asked,
        }
    }

    /// When the driver should next look at this slot.
    fn next_attempt(&self, now: Instant) -> Instant {
        let base = match (&self.svid, &self.times) {
            (Some(_), Some(t)) => t.renew_at,
            _ => now,
        };
        self.retry_at.map_or(base, |r| base.max(r))
    }
}

/// One CSR to send, with what it is for.
struct Pending {
    spiffe_id: SpiffeId,
    workload: wire::Workload,
}

/// Why one identity's mint failed.
struct MintFailure {
    label: String,
    message: String,
    /// The server refused this workload claim (try another claim, if any).
    refused_claim: bool,
}

impl CertificateManager {
    /// A manager minting through `server`. Call [`CertificateManager::spawn`] to start it.
    pub fn new(
        server: Arc<dyn MintApi>,
        settings: ManagerSettings,
        metrics: Arc<AgentMetrics>,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(settings.max_in_flight.max(1)));
        Self {
            shared: Arc::new(Shared {
                settings,
                server,
                metrics,
                state: Mutex::new(HashMap::new()),
                bundles: RwLock::new(Arc::new(BundleSet::new())),
                view: RwLock::new(Arc::new(NodeView::default())),
                view_version: AtomicU64::new(0),
                changes: watch::channel(0).0,
                outcomes: watch::channel(0).0,
                wake: Notify::new(),
                attested: watch::channel(false).0,
                permits,
            }),
        }
    }

    /// Starts the driver task (mints, renewals, expiry, idle drops). Abort it to stop.
    pub fn spawn(&self) -> JoinHandle<()> {
        let shared = self.shared.clone();
        tokio::spawn(async move { shared.drive().await })
    }

    /// Whether the agent holds a node SVID the server accepts; nothing is minted before.
    pub fn set_attested(&self, attested: bool) {
        self.shared.attested.send_if_modified(|a| {
            let changed = *a != attested;
            *a = attested;
            changed
        });
        self.shared.wake.notify_one();
    }

    /// Replaces the trust bundles served to workloads (no-op when unchanged).
    pub fn set_bundles(&self, bundles: BundleSet) {
        {
            let mut current = self
                .shared
                .bundles
                .write()
                .unwrap_or_else(|e| e.into_inner());
            if **current == bundles {
                return;
            }
            *current = Arc::new(bundles);
        }
        self.shared.bump_changes();
    }

    /// Replaces the node view (no-op when unchanged). Workload claims naming pods that left
    /// the node are forgotten.
    pub fn set_view(&self, view: NodeView) {
        {
            let mut current = self.shared.view.write().unwrap_or_else(|e| e.into_inner());
            if **current == view {
                return;
            }
            let mut slots = self.shared.lock();
            for slot in slots.values_mut() {
                let before = slot.workloads.len();
                slot.workloads.retain(|w| pod_still_here(w, &view));
                if slot.workloads.is_empty() && before > 0 {
                    tracing::debug!("every pod naming an identity left the node");
                }
            }
            *current = Arc::new(view);
            // Under the write lock: whoever reads the new version then reads this view.
            self.shared.view_version.fetch_add(1, Ordering::AcqRel);
        }
        self.shared.bump_changes();
    }

    /// The node view in force.
    pub fn view(&self) -> Arc<NodeView> {
        self.shared
            .view
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The SPIFFE IDs of the identities held (with or without a current SVID).
    pub fn identities(&self) -> Vec<SpiffeId> {
        let mut ids: Vec<SpiffeId> = self.shared.lock().keys().cloned().collect();
        ids.sort_by_key(|id| id.to_string());
        ids
    }
}

fn pod_still_here(workload: &wire::Workload, view: &NodeView) -> bool {
    let pod = match (&workload.kind, &workload.entry_pod) {
        (Some(wire::workload::Kind::Pod(p)), _) | (_, Some(p)) => p,
        _ => return true,
    };
    lanyard_svid::selector::canonical_pod_uid(&pod.uid)
        .is_some_and(|uid| view.pods.contains_key(&uid))
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SpiffeId, Slot>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump_changes(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    async fn drive(self: Arc<Self>) {
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
    fn plan(&self, now: Instant, capacity: usize) -> (Vec<Pending>, Option<Instant>) {
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

    async fn mint_batch(&self, batch: Vec<Pending>) {
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
    fn finish(
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

#[tonic::async_trait]
impl WorkloadIdentities for CertificateManager {
    fn resolve(&self, attested: &Attested) -> Vec<Entitlement> {
        self.view().resolve(attested)
    }

    async fn x509_svids(
        &self,
        entitlements: &[Entitlement],
    ) -> Result<Vec<Arc<X509Svid>>, IdentityError> {
        if entitlements.is_empty() {
            return Err(IdentityError::NoIdentity);
        }
        let shared = &self.shared;
        let now = Instant::now();
        let deadline = now + shared.settings.first_mint_wait;
        let mut outcomes = shared.outcomes.subscribe();
        let mut wake = false;
        let mut started = Vec::with_capacity(entitlements.len());
        {
            let mut slots = shared.lock();
            for e in entitlements {
                if !slots.contains_key(&e.spiffe_id) {
                    if slots.len() >= shared.settings.max_identities {
                        return Err(IdentityError::NotReady(format!(
                            "the agent already holds {} identities, its limit",
                            shared.settings.max_identities
                        )));
                    }
                    slots.insert(e.spiffe_id.clone(), Slot::new(&shared.settings, now));
                }
                let slot = slots.get_mut(&e.spiffe_id).expect("inserted");
                slot.last_requested = now;
                if slot.servable(now).is_some() {
                    slot.current_read = true;
                }
                let had = slot.workloads.len();
                slot.remember(&e.workload);
                if slot.servable(now).is_none() || slot.workloads.len() != had {
                    wake = true;
                }
                started.push(slot.attempts);
            }
        }
        if wake {
            shared.wake.notify_one();
        }
        loop {
            {
                let now = Instant::now();
                let slots = shared.lock();
                let mut out = Vec::with_capacity(entitlements.len());
                let mut failed: Vec<(&SpiffeId, String)> = Vec::new();
                let mut pending = 0;
                for (e, start) in entitlements.iter().zip(&started) {
                    let Some(slot) = slots.get(&e.spiffe_id) else {
                        failed.push((&e.spiffe_id, "the identity was dropped".to_owned()));
                        continue;
                    };
                    match slot.servable(now) {
                        Some(svid) => out.push(svid),
                        // Failed since we asked, or backing off past our deadline: say why now.
                        None if slot.attempts > *start
                            || slot.retry_at.is_some_and(|r| r >= deadline) =>
                        {
                            let why = slot.last_error.clone();
                            failed
                                .push((&e.spiffe_id, why.unwrap_or_else(|| "mint failed".into())));
                        }
                        None => pending += 1,
                    }
                }
                if pending == 0 {
                    return partial_or_refused(out, &failed);
                }
            }
            if !*shared.attested.borrow() {
                return Err(IdentityError::AgentNotAttested);
            }
            match tokio::time::timeout_at(deadline, outcomes.changed()).await {
                Ok(Ok(())) => continue,
                _ => {
                    // Out of time: serve what is held; the stream gets the rest as it arrives.
                    let now = Instant::now();
                    let slots = shared.lock();
                    let out: Vec<_> = entitlements
                        .iter()
                        .filter_map(|e| slots.get(&e.spiffe_id)?.servable(now))
                        .collect();
                    let waited = format!(
                        "no X.509-SVID from the server within {} s",
                        shared.settings.first_mint_wait.as_secs_f32()
                    );
                    let missing: Vec<(&SpiffeId, String)> = entitlements
                        .iter()
                        .filter(|e| {
                            slots
                                .get(&e.spiffe_id)
                                .and_then(|s| s.servable(now))
                                .is_none()
                        })
                        .map(|e| (&e.spiffe_id, waited.clone()))
                        .collect();
                    return partial_or_refused(out, &missing);
                }
            }
        }
    }

    async fn jwt_svid(
        &self,
        entitlement: &Entitlement,
        audience: &[String],
    ) -> Result<String, IdentityError> {
        let shared = &self.shared;
        if !*shared.attested.borrow() {
            return Err(IdentityError::AgentNotAttested);
        }
        if audience.is_empty() {
            return Err(IdentityError::Refused(
                "a JWT-SVID needs an audience".into(),
            ));
        }
        let request = wire::MintJwtSvidRequest {
            workload: Some(entitlement.workload.clone()),
            audience: audience.to_vec(),
        };
        let response = tokio::time::timeout(
            shared.settings.jwt_timeout,
            shared.server.mint_jwt_svid(request),
        )
        .await
        .map_err(|_| IdentityError::NotReady("the server did not answer in time".into()))?
        .map_err(|e| {
            tracing::info!(spiffe_id = %entitlement.spiffe_id, reason = %e, "JWT-SVID mint failed");
            match e {
                ServerError::Refused { .. } => IdentityError::Refused(e.message()),
                _ => IdentityError::NotReady(e.message()),
            }
        })?;
        if response.spiffe_id != entitlement.spiffe_id.to_string() {
            return Err(IdentityError::Refused(format!(
                "asked for {}, the server issued {}",
                entitlement.spiffe_id, response.spiffe_id
            )));
        }
        Ok(response.token)
    }

    fn bundles(&self) -> Arc<BundleSet> {
        self.shared
            .bundles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    fn view_version(&self) -> Option<u64> {
        Some(self.shared.view_version.load(Ordering::Acquire))
    }
}

/// A caller's SVIDs once nothing is pending: those it holds, even when some of its identities
/// were refused (one bad entry must not cost a workload all its others), or the first refusal
/// when it holds none. Each missing identity is logged.
fn partial_or_refused(
    held: Vec<Arc<X509Svid>>,
    missing: &[(&SpiffeId, String)],
) -> Result<Vec<Arc<X509Svid>>, IdentityError> {
    if held.is_empty() {
        let why = missing
            .first()
            .map_or_else(|| "mint failed".to_owned(), |(_, why)| why.clone());
        return Err(IdentityError::NotReady(why));
    }
    for (id, why) in missing {
        tracing::warn!(spiffe_id = %id, reason = %why, "serving the caller's other identities without this one");
    }
    Ok(held)
}
