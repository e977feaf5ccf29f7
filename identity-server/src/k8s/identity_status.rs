//! The `status` of every `LanyardIdentity`, written by one replica at a time.
//!
//! Who writes: the holder of the `coordination.k8s.io/v1` Lease [`LEASE_NAME`] in the server's
//! namespace (the CA Secret's, as for the CA reports). A replica takes the Lease by creating
//! it, or, once the holder has not renewed it for [`LEASE_DURATION`] *as this replica observed
//! it* (its own clock, so clock skew between nodes does not matter), by replacing it with the
//! `resourceVersion` it read (two replicas racing: one gets a conflict). The holder renews it
//! every [`RENEW_INTERVAL`] and stops writing when a renewal has not succeeded for
//! [`LEASE_DURATION`]. The decision is [`decide`], a pure function.
//!
//! What: [`lanyard_registration::status::statuses`] over the registry and every pod: the same
//! on every replica, so a resource whose status already says it is not written. When: after a
//! change of the registrations or the pods, at most once every [`MIN_INTERVAL`], and every
//! [`HEARTBEAT`]. How: a JSON merge patch of `/status` (absent fields sent as null, so a
//! cleared `specError` goes). Refusals (RBAC) are a WARN; serving goes on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use lanyard_registration::{LanyardIdentity, LanyardIdentityStatus};
use tokio::time::Instant;

use super::identities::IdentityInformer;
use super::pods::PodIndex;
use super::write_schedule::WriteSchedule;
use crate::metrics::ServerMetrics;
use crate::registry_view::Registrations;

pub const LEASE_NAME: &str = "lanyard-identity-status";
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RENEW_INTERVAL: Duration = Duration::from_secs(5);
/// Least time between two status rounds after a change, and the round made regardless.
pub const MIN_INTERVAL: Duration = Duration::from_secs(2);
pub const HEARTBEAT: Duration = Duration::from_secs(30);

/// The Lease as read: who holds it, for how long, and its version (which changes on every
/// renewal, so a new one means the holder is alive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub holder: Option<String>,
    pub duration: Duration,
    pub resource_version: String,
}

impl LeaseRecord {
    pub fn of(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Self {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty()),
            duration: Duration::from_secs(
                spec.and_then(|s| s.lease_duration_seconds)
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(LEASE_DURATION.as_secs()),
            ),
            resource_version: lease.metadata.resource_version.clone().unwrap_or_default(),
        }
    }
}

/// What to do with the Lease now. `Display` is a log label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseAction {
    /// No Lease exists: create it, holding it.
    Create,
    /// We hold it: renew it.
    Renew,
    /// Nobody holds it, or the holder has not renewed it for its duration: replace it.
    TakeOver,
    /// Another replica holds it and renews it.
    Follow,
}

impl std::fmt::Display for LeaseAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Create => "create",
            Self::Renew => "renew",
            Self::TakeOver => "take_over",
            Self::Follow => "follow",
        })
    }
}

/// `lease` as read now, `observed_at`: when this replica first saw its current version.
pub fn decide(
    lease: Option<&LeaseRecord>,
    observed_at: Instant,
    me: &str,
    now: Instant,
) -> LeaseAction {
    match lease {
        None => LeaseAction::Create,
        Some(l) if l.holder.as_deref() == Some(me) => LeaseAction::Renew,
        Some(l) if l.holder.is_none() => LeaseAction::TakeOver,
        Some(l) if now >= observed_at + l.duration => LeaseAction::TakeOver,
        Some(_) => LeaseAction::Follow,
    }
}

/// The resources whose status must be written: those in `computed` whose `current` status
/// differs (a resource not in `current` is gone: skipped).
pub fn due_writes(
    computed: BTreeMap<String, LanyardIdentityStatus>,
    current: &BTreeMap<String, Option<LanyardIdentityStatus>>,
) -> Vec<(String, LanyardIdentityStatus)> {
    computed
        .into_iter()
        .filter(|(name, status)| {
            current
                .get(name)
                .is_some_and(|now| now.as_ref() != Some(status))
        })
        .collect()
}

/// The merge patch that makes `/status` exactly `status`: fields it leaves out are nulled.
pub fn status_patch(status: &LanyardIdentityStatus) -> serde_json::Value {
    let mut value = serde_json::to_value(status).expect("a status serialises");
    if let Some(map) = value.as_object_mut() {
        for key in ["observedGeneration", "specError", "refusals"] {
            map.entry(key).or_insert(serde_json::Value::Null);
        }
    }
    serde_json::json!({ "status": value })
}

/// Why a Lease or status write failed. `Display` is a log label.
#[derive(Debug, thiserror::Error)]
pub enum StatusWriteError {
    #[error("forbidden")]
    Forbidden { message: String },
    #[error("conflict")]
    Conflict,
    #[error("api_error")]
    Api(Box<kube::Error>),
}

impl StatusWriteError {
    fn from_kube(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(status) if status.code == 403 => Self::Forbidden {
                message: status.message,
            },
            kube::Error::Api(status) if status.code == 409 => Self::Conflict,
            other => Self::Api(Box::new(other)),
        }
    }

    fn message(&self, what: &str) -> String {
        match self {
            Self::Forbidden { message } => format!(
                "the API server refused {what} ({message}); grant the server's ServiceAccount \
                 get, create and update on leases in its namespace and patch on \
                 lanyardidentities/status (`lanyard install` renders it). LanyardIdentity \
                 statuses are not written meanwhile; issuance is unaffected"
            ),
            Self::Conflict => format!("{what}: another replica wrote it first"),
            Self::Api(e) => format!("{what}: {e}"),
        }
    }
}

/// The Lease and the resources' `/status`, through the API server.
pub struct KubeStatusSink {
    leases: Api<Lease>,
    identities: Api<LanyardIdentity>,
    namespace: String,
}

impl KubeStatusSink {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            leases: Api::namespaced(client.clone(), namespace),
            identities: Api::all(client),
            namespace: namespace.to_owned(),
        }
    }

    async fn read_lease(&self) -> Result<Option<Lease>, StatusWriteError> {
        self.leases
            .get_opt(LEASE_NAME)
            .await
            .map_err(StatusWriteError::from_kube)
    }

    /// Creates the Lease (`read` = None) or replaces the version read, held by `me`.
    async fn write_lease(
        &self,
        read: Option<Lease>,
        me: &str,
        action: LeaseAction,
    ) -> Result<(), StatusWriteError> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let mut lease = read.unwrap_or_else(|| Lease {
            metadata: ObjectMeta {
                name: Some(LEASE_NAME.to_owned()),
                namespace: Some(self.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec::default()),
        });
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if action != LeaseAction::Renew {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.map_or(0, |t| t + 1));
        }
        spec.holder_identity = Some(me.to_owned());
        spec.lease_duration_seconds = Some(LEASE_DURATION.as_secs() as i32);
        spec.renew_time = Some(now);
        let result = if action == LeaseAction::Create {
            self.leases.create(&PostParams::default(), &lease).await
        } else {
            // The resourceVersion read makes this a compare-and-swap.
            self.leases
                .replace(LEASE_NAME, &PostParams::default(), &lease)
                .await
        };
        result.map(drop).map_err(StatusWriteError::from_kube)
    }

    /// Gives the Lease up if `me` holds it (a compare-and-swap on the version read), so
    /// another replica takes over at its next renewal instead of after the lease duration.
    async fn release_lease(&self, me: &str) -> Result<bool, StatusWriteError> {
        let Some(mut lease) = self.read_lease().await? else {
            return Ok(false);
        };
        if LeaseRecord::of(&lease).holder.as_deref() != Some(me) {
            return Ok(false);
        }
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        self.leases
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
            .map(|_| true)
            .map_err(StatusWriteError::from_kube)
    }

    async fn write_status(
        &self,
        name: &str,
        status: &LanyardIdentityStatus,
    ) -> Result<(), StatusWriteError> {
        match self
            .identities
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(status_patch(status)),
            )
            .await
        {
            // Deleted meanwhile: nothing to describe.
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            other => other.map(drop).map_err(StatusWriteError::from_kube),
        }
    }
}

/// This replica's name (its Lease holder identity).
#[derive(Debug, Clone)]
pub struct StatusSettings {
    pub replica: String,
}

impl StatusSettings {
    pub fn new(replica: &str) -> Self {
        Self {
            replica: replica.to_owned(),
        }
    }
}

/// What this replica knows of the Lease.
struct LeaseKeeper {
    me: String,
    /// The version last read and when it was first seen.
    observed: Option<(String, Instant)>,
    /// We hold the Lease until then (the last successful write + its duration).
    held_until: Option<Instant>,
    failing: Option<String>,
}

impl LeaseKeeper {
    fn holding(&self, now: Instant) -> bool {
        self.held_until.is_some_and(|until| now < until)
    }

    async fn tick(&mut self, sink: &KubeStatusSink) {
        let result = async {
            let read = sink.read_lease().await?;
            let now = Instant::now();
            let record = read.as_ref().map(LeaseRecord::of);
            let observed_at = match (&record, &self.observed) {
                (Some(r), Some((version, at))) if *version == r.resource_version => *at,
                _ => now,
            };
            self.observed = record
                .as_ref()
                .map(|r| (r.resource_version.clone(), observed_at));
            let action = decide(record.as_ref(), observed_at, &self.me, now);
            if action == LeaseAction::Follow {
                return Ok(action);
            }
            sink.write_lease(read, &self.me, action).await?;
            self.held_until = Some(now + LEASE_DURATION);
            Ok::<_, StatusWriteError>(action)
        }
        .await;
        match result {
            Ok(action) => {
                if self.failing.take().is_some() {
                    tracing::info!(lease = LEASE_NAME, "status lease reachable again");
                }
                if matches!(action, LeaseAction::Create | LeaseAction::TakeOver) {
                    tracing::info!(lease = LEASE_NAME, action = %action, replica = %self.me, "this replica now writes LanyardIdentity statuses");
                }
            }
            // Lost a race: someone else holds it now.
            Err(StatusWriteError::Conflict) => {}
            Err(e) => {
                let label = e.to_string();
                if self.failing.as_deref() != Some(&label) {
                    tracing::warn!(lease = LEASE_NAME, reason = %label, "{}", e.message(&format!("Lease {LEASE_NAME}")));
                    self.failing = Some(label);
                }
            }
        }
    }
}

/// Keeps the Lease and, while holding it, the statuses, until `stopping` turns true; then
/// gives the Lease up (if held) and returns.
pub async fn run(
    sink: KubeStatusSink,
    settings: StatusSettings,
    informer: IdentityInformer,
    registrations: Registrations,
    pods: PodIndex,
    metrics: Arc<ServerMetrics>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let mut keeper = LeaseKeeper {
        me: settings.replica,
        observed: None,
        held_until: None,
        failing: None,
    };
    let mut registry_changes = registrations.subscribe();
    let mut pod_changes = pods.subscribe();
    let mut next_renew = Instant::now();
    let mut schedule = WriteSchedule::new(MIN_INTERVAL, HEARTBEAT, true);
    let mut failing: Option<String> = None;
    loop {
        let holding = keeper.holding(Instant::now());
        tokio::select! {
            () = tokio::time::sleep_until(next_renew) => {
                keeper.tick(&sink).await;
                next_renew = Instant::now() + RENEW_INTERVAL;
                let now_holding = keeper.holding(Instant::now());
                metrics.identity_status_lease_held.set(i64::from(now_holding));
                if now_holding && !holding {
                    // A new holder writes at once.
                    schedule = WriteSchedule::new(MIN_INTERVAL, HEARTBEAT, true);
                }
                continue;
            }
            () = tokio::time::sleep_until(schedule.due()), if holding => {}
            // A closed channel (the server's shutdown future dropped) is a stop too.
            () = async { drop(stopping.wait_for(|stop| *stop).await) } => {
                metrics.identity_status_lease_held.set(0);
                match sink.release_lease(&keeper.me).await {
                    Ok(true) => tracing::info!(lease = LEASE_NAME, "status lease released"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(lease = LEASE_NAME, reason = %e, "{}", e.message(&format!("releasing Lease {LEASE_NAME}"))),
                }
                return;
            }
            changed = registry_changes.changed() => {
                if changed.is_err() { return; }
                schedule.dirty = true;
                continue;
            }
            changed = pod_changes.changed() => {
                if changed.is_err() { return; }
                schedule.dirty = true;
                continue;
            }
        }
        schedule.written();
        let snapshot = registrations.current();
        if !snapshot.synced || !crate::k8s::pods::PodLookup::is_synced(&pods) {
            schedule.dirty = true;
            continue;
        }
        let all = pods.all();
        let computed = lanyard_registration::status::statuses(
            &snapshot.registry,
            all.iter().filter(|p| p.active).map(|p| snapshot.facts(p)),
        );
        for (name, status) in due_writes(computed, &informer.statuses()) {
            match sink.write_status(&name, &status).await {
                Ok(()) => {
                    if failing.take().is_some() {
                        tracing::info!("LanyardIdentity statuses written again");
                    }
                    tracing::debug!(resource = %name, "LanyardIdentity status written");
                }
                Err(e) => {
                    let label = e.to_string();
                    if failing.as_deref() != Some(&label) {
                        tracing::warn!(resource = %name, reason = %label, "{}", e.message(&format!("patching LanyardIdentity/{name}/status")));
                        failing = Some(label);
                    }
                    // Retried at the next round.
                    schedule.dirty = true;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: Option<&str>, version: &str) -> LeaseRecord {
        LeaseRecord {
            holder: holder.map(str::to_owned),
            duration: LEASE_DURATION,
            resource_version: version.into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lease_decisions() {
        let seen = Instant::now();
        let me = "server-a";
        assert_eq!(decide(None, seen, me, seen), LeaseAction::Create);
        let mine = record(Some("server-a"), "1");
        assert_eq!(decide(Some(&mine), seen, me, seen), LeaseAction::Renew);
        let vacant = record(None, "1");
        assert_eq!(decide(Some(&vacant), seen, me, seen), LeaseAction::TakeOver);
        let theirs = record(Some("server-b"), "7");
        assert_eq!(decide(Some(&theirs), seen, me, seen), LeaseAction::Follow);
        tokio::time::advance(LEASE_DURATION - Duration::from_millis(1)).await;
        assert_eq!(
            decide(Some(&theirs), seen, me, Instant::now()),
            LeaseAction::Follow,
            "not expired yet as we observed it"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            decide(Some(&theirs), seen, me, Instant::now()),
            LeaseAction::TakeOver
        );
        // A renewal (new version) observed now restarts the wait.
        let renewed = record(Some("server-b"), "8");
        assert_eq!(
            decide(Some(&renewed), Instant::now(), me, Instant::now()),
            LeaseAction::Follow
        );
    }

    #[test]
    fn lease_record_reads_the_spec() {
        let lease: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"name": LEASE_NAME, "resourceVersion": "42"},
            "spec": {"holderIdentity": "server-b", "leaseDurationSeconds": 20}
        }))
        .unwrap();
        assert_eq!(
            LeaseRecord::of(&lease),
            LeaseRecord {
                holder: Some("server-b".into()),
                duration: Duration::from_secs(20),
                resource_version: "42".into()
            }
        );
        let empty: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"name": LEASE_NAME},
            "spec": {"holderIdentity": ""}
        }))
        .unwrap();
        assert_eq!(LeaseRecord::of(&empty).holder, None);
    }

    #[test]
    fn only_changed_statuses_of_present_resources_are_written() {
        let status = |n: i64| LanyardIdentityStatus {
            pods_matched: n,
            pods_issued: n,
            ..Default::default()
        };
        let computed: BTreeMap<String, LanyardIdentityStatus> = [
            ("same".to_owned(), status(1)),
            ("changed".to_owned(), status(2)),
            ("new".to_owned(), status(0)),
            ("gone".to_owned(), status(3)),
        ]
        .into();
        let current: BTreeMap<String, Option<LanyardIdentityStatus>> = [
            ("same".to_owned(), Some(status(1))),
            ("changed".to_owned(), Some(status(1))),
            ("new".to_owned(), None),
        ]
        .into();
        let names: Vec<String> = due_writes(computed, &current)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["changed", "new"]);
    }

    #[test]
    fn status_patch_clears_absent_fields() {
        let patch = status_patch(&LanyardIdentityStatus {
            pods_matched: 2,
            ..Default::default()
        });
        let status = &patch["status"];
        assert_eq!(status["podsMatched"], 2);
        assert!(status["specError"].is_null());
        assert!(status.as_object().unwrap().contains_key("specError"));
        assert!(status.as_object().unwrap().contains_key("refusals"));
    }
}
