//! This replica's CA report: ConfigMap `lanyard-ca-report-<replica>` in the CA Secret's
//! namespace, labelled `lanyard.dev/ca-report=true`, whose `report.json` is a
//! [`ReplicaReport`]: the bundle this replica serves, what it signs with and since when, the
//! longest SVID it issues, and what each of its agents acknowledged. `lanyard ca` reads every
//! replica's report to measure how far a rotation step has propagated.
//!
//! When it is written ([`run`]): at start, then whenever what it would say changes (the
//! bundle, the signing material, an agent's acknowledgement or stream), at most once every
//! [`REPORT_MIN_INTERVAL_SECS`] (changes in between are folded into one write), and every
//! [`REPORT_HEARTBEAT_SECS`] regardless, so a report that stops being rewritten is known to be
//! from a replica that is gone. On a graceful shutdown the ConfigMap is deleted.
//!
//! How: a JSON merge patch of the label and `report.json`; if the ConfigMap does not exist,
//! a create (and if that races with another create, the patch again). No `get` or `update` is
//! needed. A write refused by RBAC, or failing otherwise, is logged (a WARN when the failure
//! starts or changes, then at DEBUG) and the server keeps serving: the report is for
//! operators, nothing in the data path depends on it.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use lanyard_ca_lifecycle::names::{
    REPORT_DATA_KEY, REPORT_HEARTBEAT_SECS, REPORT_LABEL, REPORT_MIN_INTERVAL_SECS,
    report_configmap_name,
};
use lanyard_ca_lifecycle::report::{
    BundleSummary, CertSummary, MAX_AGENTS_LISTED, ReplicaReport, SigningSummary,
};
use lanyard_ca_lifecycle::unix_seconds;
use lanyard_svid::bundle::certificate_fingerprint;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::authority::{ActiveMaterial, Authority};
use crate::bundle_acks::BundleAcks;
use crate::k8s::write_schedule::WriteSchedule;

/// The heartbeat and the least time between two writes.
pub const HEARTBEAT: Duration = Duration::from_secs(REPORT_HEARTBEAT_SECS as u64);
pub const MIN_INTERVAL: Duration = Duration::from_secs(REPORT_MIN_INTERVAL_SECS as u64);

/// Why a report could not be written or deleted. `Display` is a snake_case label.
#[derive(Debug, thiserror::Error)]
pub enum ReportWriteError {
    #[error("forbidden")]
    Forbidden { message: String },
    #[error("api_error")]
    Api(Box<kube::Error>),
}

impl ReportWriteError {
    fn from_kube(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(status) if status.code == 403 => Self::Forbidden {
                message: status.message,
            },
            other => Self::Api(Box::new(other)),
        }
    }

    /// What an operator reads: what failed and what to do.
    pub fn message(&self, object: &str) -> String {
        match self {
            Self::Forbidden { message } => format!(
                "the API server refused to write ConfigMap {object} ({message}); grant the \
                 server's ServiceAccount create, patch and delete on configmaps in that \
                 namespace (`lanyard install` renders it), or `lanyard ca status` cannot see \
                 this replica"
            ),
            Self::Api(e) => format!("writing ConfigMap {object}: {e}"),
        }
    }
}

/// Where reports go. [`KubeReportSink`] in a cluster; tests record.
pub trait ReportSink: Send + Sync {
    fn write(
        &self,
        report: &ReplicaReport,
    ) -> impl Future<Output = Result<(), ReportWriteError>> + Send;
    fn delete(&self) -> impl Future<Output = Result<(), ReportWriteError>> + Send;
    /// `NS/NAME`, for logs.
    fn object(&self) -> String;
}

/// The replica's report ConfigMap.
pub struct KubeReportSink {
    api: Api<ConfigMap>,
    namespace: String,
    name: String,
}

impl KubeReportSink {
    pub fn new(client: kube::Client, namespace: &str, replica: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: report_configmap_name(replica),
        }
    }

    fn configmap(&self, json: String) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some([(REPORT_LABEL.to_owned(), "true".to_owned())].into()),
                ..Default::default()
            },
            data: Some([(REPORT_DATA_KEY.to_owned(), json)].into()),
            ..Default::default()
        }
    }

    async fn patch(&self, configmap: &ConfigMap) -> Result<(), kube::Error> {
        let body = serde_json::json!({
            "metadata": {"labels": configmap.metadata.labels},
            "data": configmap.data,
        });
        self.api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .map(drop)
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == code)
}

impl ReportSink for KubeReportSink {
    async fn write(&self, report: &ReplicaReport) -> Result<(), ReportWriteError> {
        let configmap = self.configmap(report.to_json());
        match self.patch(&configmap).await {
            Err(e) if is_status(&e, 404) => {}
            other => return other.map_err(ReportWriteError::from_kube),
        }
        match self.api.create(&PostParams::default(), &configmap).await {
            // Created between our patch and create: patch it now.
            Err(e) if is_status(&e, 409) => self
                .patch(&configmap)
                .await
                .map_err(ReportWriteError::from_kube),
            other => other.map(drop).map_err(ReportWriteError::from_kube),
        }
    }

    async fn delete(&self) -> Result<(), ReportWriteError> {
        match self.api.delete(&self.name, &DeleteParams::default()).await {
            Err(e) if is_status(&e, 404) => Ok(()),
            other => other.map(drop).map_err(ReportWriteError::from_kube),
        }
    }

    fn object(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What goes into every report besides the live state.
#[derive(Debug, Clone)]
pub struct ReportSettings {
    pub replica: String,
    /// The longest lifetime of anything this replica issues.
    pub longest_svid_ttl: Duration,
}

/// The report for `active` and `acks` now (`updated_at` = `now`).
pub fn build(
    settings: &ReportSettings,
    active: &ActiveMaterial,
    acks: &BundleAcks,
    now: SystemTime,
) -> ReplicaReport {
    let agents = acks.snapshot(MAX_AGENTS_LISTED, now);
    ReplicaReport {
        replica: settings.replica.clone(),
        updated_at: unix_seconds(now),
        bundle: BundleSummary::of(&active.bundle),
        signing: SigningSummary {
            intermediate: CertSummary::of(active.issuer.cert_der()),
            root: certificate_fingerprint(&active.signing_root),
            jwt_key_id: active.jwt.key_id().to_owned(),
            since: unix_seconds(active.signing_since),
        },
        longest_svid_ttl_secs: settings.longest_svid_ttl.as_secs(),
        agents: agents.agents,
        unlisted_agents: agents.unlisted,
        unacknowledging_agents: agents.unacknowledging,
    }
}

/// Writes reports to `sink` until `stopping` turns true (or its sender is gone), then deletes
/// the report and returns.
pub async fn run<S: ReportSink>(
    sink: S,
    settings: ReportSettings,
    authority: Arc<Authority>,
    acks: Arc<BundleAcks>,
    mut stopping: watch::Receiver<bool>,
) {
    let object = sink.object();
    let mut bundles = authority.subscribe_bundle();
    let mut ack_changes = acks.subscribe();
    let mut schedule = WriteSchedule::new(MIN_INTERVAL, HEARTBEAT, false);
    // What the last successful write said, `updated_at` aside.
    let mut written: Option<ReplicaReport> = None;
    // The label of the failure last logged at WARN, while writes keep failing.
    let mut failing: Option<String> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(schedule.due()) => {}
            changed = bundles.changed() => {
                if changed.is_ok() {
                    schedule.dirty = true;
                }
                continue;
            }
            changed = ack_changes.changed() => {
                if changed.is_ok() {
                    schedule.dirty = true;
                }
                continue;
            }
            _ = stopping.wait_for(|stop| *stop) => break,
        }
        let heartbeat = !schedule.dirty;
        schedule.dirty = false;
        let Some(active) = authority.active() else {
            schedule.last = Some(Instant::now());
            continue;
        };
        let report = build(&settings, &active, &acks, SystemTime::now());
        let unchanged = written.as_ref().is_some_and(|w| {
            w == &ReplicaReport {
                updated_at: w.updated_at,
                ..report.clone()
            }
        });
        if unchanged && !heartbeat {
            // The heartbeat stays due from the last write.
            continue;
        }
        schedule.last = Some(Instant::now());
        match sink.write(&report).await {
            Ok(()) => {
                if failing.take().is_some() {
                    tracing::info!(configmap = %object, "CA report written again");
                }
                written = Some(report);
            }
            Err(e) => {
                let label = e.to_string();
                if failing.as_deref() != Some(&label) {
                    tracing::warn!(configmap = %object, reason = %label, "CA report not written; serving goes on: {}", e.message(&object));
                    failing = Some(label);
                } else {
                    tracing::debug!(configmap = %object, reason = %label, "CA report still not written");
                }
                written = None;
            }
        }
    }
    match sink.delete().await {
        Ok(()) => tracing::info!(configmap = %object, "CA report deleted"),
        Err(e) => {
            tracing::warn!(configmap = %object, reason = %e, "CA report not deleted: {}", e.message(&object))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::SigningMaterial;
    use crate::bundle_acks::ValidAck;
    use lanyard_proto::identity::v1 as wire;
    use lanyard_svid::TrustDomain;
    use lanyard_svid::ca::RootCa;
    use lanyard_svid::jwt::JwtSigner;
    use std::sync::Mutex;

    const DAY: Duration = Duration::from_secs(86_400);

    #[derive(Debug, Clone, PartialEq)]
    enum Call {
        Write(Instant, Box<ReplicaReport>),
        Delete(Instant),
    }

    /// Records calls; fails writes while `fail` is set.
    #[derive(Clone, Default)]
    struct Recorder {
        calls: Arc<Mutex<Vec<Call>>>,
        fail: Arc<Mutex<bool>>,
    }

    impl Recorder {
        fn writes_at(&self, start: Instant) -> Vec<u64> {
            self.calls
                .lock()
                .unwrap()
                .iter()
                .filter_map(|c| match c {
                    Call::Write(at, _) => Some(at.duration_since(start).as_secs()),
                    Call::Delete(_) => None,
                })
                .collect()
        }

        fn last_report(&self) -> ReplicaReport {
            self.calls
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find_map(|c| match c {
                    Call::Write(_, r) => Some(ReplicaReport::clone(r)),
                    Call::Delete(_) => None,
                })
                .unwrap()
        }
    }

    impl ReportSink for Recorder {
        async fn write(&self, report: &ReplicaReport) -> Result<(), ReportWriteError> {
            self.calls
                .lock()
                .unwrap()
                .push(Call::Write(Instant::now(), Box::new(report.clone())));
            if *self.fail.lock().unwrap() {
                return Err(ReportWriteError::Forbidden {
                    message: "configmaps is forbidden".into(),
                });
            }
            Ok(())
        }

        async fn delete(&self) -> Result<(), ReportWriteError> {
            self.calls
                .lock()
                .unwrap()
                .push(Call::Delete(Instant::now()));
            Ok(())
        }

        fn object(&self) -> String {
            "lanyard/lanyard-ca-report-test".into()
        }
    }

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn authority(root: &RootCa) -> Arc<Authority> {
        let now = SystemTime::now();
        let authority = Arc::new(Authority::new(td()));
        authority
            .install(
                SigningMaterial {
                    issuer: root.issue_intermediate(DAY, now).unwrap(),
                    roots: vec![root.cert_der().clone()],
                    jwt: JwtSigner::generate().unwrap().0,
                    published_jwt: Vec::new(),
                },
                now,
            )
            .unwrap();
        authority
    }

    /// Lets the writer task run until it waits again (the paused clock only moves when every
    /// task is idle).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn writes_on_start_change_and_heartbeat_never_faster_than_the_minimum() {
        let root = RootCa::generate(&td(), DAY * 30, SystemTime::now()).unwrap();
        let authority = authority(&root);
        let acks = BundleAcks::new();
        let sink = Recorder::default();
        let (stop, stopping) = watch::channel(false);
        let start = Instant::now();
        let settings = ReportSettings {
            replica: "server-0".into(),
            longest_svid_ttl: Duration::from_secs(3600),
        };
        let task = tokio::spawn(run(
            sink.clone(),
            settings,
            authority.clone(),
            acks.clone(),
            stopping,
        ));
        settle().await;
        assert_eq!(sink.writes_at(start), [0], "written at start");
        let first = sink.last_report();
        assert_eq!(first.replica, "server-0");
        assert_eq!(first.longest_svid_ttl_secs, 3600);
        assert_eq!(first.signing.root, certificate_fingerprint(root.cert_der()));
        assert_eq!(
            first.bundle.version,
            authority.active().unwrap().bundle.version()
        );

        // Nothing changes: the heartbeat.
        tokio::time::sleep(HEARTBEAT - Duration::from_secs(1)).await;
        assert_eq!(sink.writes_at(start), [0]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        settle().await;
        assert_eq!(sink.writes_at(start), [0, 30]);

        // A change one second after a write waits for the minimum interval; more changes in
        // between fold into that one write.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let agent = acks.register_sync("node-1");
        settle().await;
        agent.record(
            ValidAck::parse(&wire::BundleAck {
                version: first.bundle.version.clone(),
                svid_roots: vec![first.signing.root.clone()],
            })
            .unwrap(),
            SystemTime::now(),
        );
        settle().await;
        assert_eq!(sink.writes_at(start), [0, 30]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        settle().await;
        assert_eq!(sink.writes_at(start), [0, 30, 32]);
        let report = sink.last_report();
        assert_eq!(report.agents.len(), 1);
        assert_eq!(report.agents[0].node, "node-1");
        assert_eq!(report.unacknowledging_agents, 0);

        // A change long after the last write is written at once.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let watcher = acks.register_watch("node-2");
        settle().await;
        assert_eq!(sink.writes_at(start), [0, 30, 32, 42]);
        assert_eq!(sink.last_report().unacknowledging_agents, 1);

        // A change that changes nothing in the report (a stream opened and closed) is not
        // written; the heartbeat comes 30 s after the last write.
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(acks.register_watch("node-2"));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(sink.writes_at(start), [0, 30, 32, 42]);
        tokio::time::sleep(Duration::from_secs(15)).await;
        settle().await;
        assert_eq!(sink.writes_at(start), [0, 30, 32, 42, 72]);
        drop(watcher);

        // Shutdown deletes the report.
        stop.send(true).unwrap();
        task.await.unwrap();
        let calls = sink.calls.lock().unwrap().clone();
        assert!(matches!(calls.last(), Some(Call::Delete(_))), "{calls:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_write_is_retried_and_serving_goes_on() {
        let root = RootCa::generate(&td(), DAY * 30, SystemTime::now()).unwrap();
        let authority = authority(&root);
        let acks = BundleAcks::new();
        let sink = Recorder::default();
        *sink.fail.lock().unwrap() = true;
        let (stop, stopping) = watch::channel(false);
        let start = Instant::now();
        let task = tokio::spawn(run(
            sink.clone(),
            ReportSettings {
                replica: "server-0".into(),
                longest_svid_ttl: DAY,
            },
            authority,
            acks.clone(),
            stopping,
        ));
        settle().await;
        // Refused at start, retried at the heartbeat, and at the minimum interval after a
        // change (the report was never written, so any change is one).
        tokio::time::sleep(HEARTBEAT).await;
        settle().await;
        assert_eq!(sink.writes_at(start), [0, 30]);
        *sink.fail.lock().unwrap() = false;
        let _agent = acks.register_sync("node-1");
        tokio::time::sleep(MIN_INTERVAL).await;
        settle().await;
        assert_eq!(sink.writes_at(start), [0, 30, 32]);
        drop(stop);
        task.await.unwrap();
    }
}
