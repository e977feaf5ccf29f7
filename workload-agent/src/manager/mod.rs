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
//! - [`changes`](crate::identities::WorkloadIdentities::changes) moves on every rotation, expiry, bundle change and node
//!   view change, so every open stream re-reads at once (the Workload API reads each distinct
//!   identity set once per change and shares the result); the view version moves just before
//!   a view change, so streams re-resolve their caller only then.
//!
//! - Bundles: our own trust domain's ([`CertificateManager::set_bundles`], from the server's
//!   bundle, also what the server connection trusts) and the federated ones
//!   ([`CertificateManager::set_federated_bundles`], replaced whole from each bundle message,
//!   never trusted by the agent itself), served together by
//!   [`bundles`](crate::identities::WorkloadIdentities::bundles); each caller gets the part its
//!   entitlements name ([`crate::identities::served_bundles`]).
//!
//! Timers use `tokio::time::Instant` (see [`renew`]), so tests run them on a paused clock.
//!
//! - `slot`: one identity: its SVID, workload claims and timers.
//! - `driver`: the task that plans, mints and takes in renewals.
//! - `serving`: [`WorkloadIdentities`] over the slots.
//! - [`backoff`], [`renew`]: retry backoff and renewal times; [`resolve`]: callers to
//!   identities from the node view.
//!
//! [`WorkloadIdentities`]: crate::identities::WorkloadIdentities

pub use lanyard_client::backoff;
mod driver;
pub mod renew;
pub mod resolve;
mod serving;
mod slot;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use lanyard_proto::identity::v1 as wire;
use lanyard_svid::x509::X509Svid;
use lanyard_svid::{BundleSet, SpiffeId};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;

use crate::metrics::AgentMetrics;
use crate::server_client::MintApi;
use resolve::NodeView;
use slot::Slot;

/// Tunables of the manager. `Default` gives the production values.
#[derive(Debug, Clone)]
pub struct ManagerSettings {
    /// Most CSRs in one `MintX509SVIDs` call (the server accepts up to 500).
    pub batch_size: usize,
    /// Most `MintX509SVIDs` calls in flight at once.
    pub max_in_flight: usize,
    /// How long [`WorkloadIdentities::x509_svids`](crate::identities::WorkloadIdentities::x509_svids) waits for a first mint.
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
    bundles: RwLock<HeldBundles>,
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
                bundles: RwLock::new(HeldBundles::default()),
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

    /// Replaces our own trust domain's bundles (what the server connection trusts too),
    /// keeping the federated ones (no-op when unchanged).
    pub fn set_bundles(&self, bundles: BundleSet) {
        self.update_bundles(|held| held.own = Arc::new(bundles));
    }

    /// Replaces the federated bundles (the whole set: a trust domain absent from `federated`
    /// is dropped). They are served to workloads whose identities federate with them, never
    /// trusted by the agent itself. A bundle of a domain `set_bundles` holds is ignored (ours
    /// wins). No-op when unchanged.
    pub fn set_federated_bundles(&self, federated: BundleSet) {
        self.update_bundles(|held| held.federated = Arc::new(federated));
    }

    /// The federated bundles held.
    pub fn federated_bundles(&self) -> Arc<BundleSet> {
        self.held_bundles().federated
    }

    fn held_bundles(&self) -> HeldBundles {
        self.shared
            .bundles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Applies `change`, recomputes the union, and ticks `changes` if it moved.
    fn update_bundles(&self, change: impl FnOnce(&mut HeldBundles)) {
        {
            let mut held = self
                .shared
                .bundles
                .write()
                .unwrap_or_else(|e| e.into_inner());
            let mut next = held.clone();
            change(&mut next);
            next.all = Arc::new(next.union());
            if next.own == held.own && next.all == held.all {
                // The federated set may differ only in domains ours shadows: keep it.
                held.federated = next.federated;
                return;
            }
            *held = next;
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

    /// The workload X.509-SVIDs held that may still be served (what the agent acknowledges
    /// the roots of on `SyncBundle`).
    pub fn held_svids(&self) -> Vec<Arc<X509Svid>> {
        let now = tokio::time::Instant::now();
        self.shared
            .lock()
            .values()
            .filter_map(|slot| slot.servable(now))
            .collect()
    }

    /// The SPIFFE IDs of the identities held (with or without a current SVID).
    pub fn identities(&self) -> Vec<SpiffeId> {
        let mut ids: Vec<SpiffeId> = self.shared.lock().keys().cloned().collect();
        ids.sort_by_key(|id| id.to_string());
        ids
    }
}

/// The bundles held: ours, the federated ones, and their union (what
/// [`WorkloadIdentities::bundles`](crate::identities::WorkloadIdentities::bundles) serves),
/// kept so that readers never rebuild it.
#[derive(Clone, Default)]
struct HeldBundles {
    own: Arc<BundleSet>,
    federated: Arc<BundleSet>,
    all: Arc<BundleSet>,
}

impl HeldBundles {
    fn union(&self) -> BundleSet {
        let mut all = (*self.own).clone();
        for bundle in self.federated.iter() {
            if all.get(bundle.trust_domain()).is_none() {
                all.insert(bundle.clone());
            }
        }
        all
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
