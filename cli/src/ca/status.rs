//! `lanyard ca status`: the roots and intermediate in use with their expiry, the rotation
//! phase, which replicas and how many agents serve which bundle version, the next step with
//! how far its precondition has propagated (and who is waiting), and warnings: certificates
//! within 60 days of expiry, stale or unreadable reports, replicas that disagree, agents that
//! lag. [`Status`] serialises to the JSON `--output json` prints; [`Status::text`] is for
//! people. [`cluster_warnings`] is shared with `lanyard check --cluster`.

use std::collections::BTreeMap;
use std::time::SystemTime;

use lanyard_ca_lifecycle::expiry;
use lanyard_ca_lifecycle::names::{REPORT_STALE_AFTER_SECS, SECRET_JWT_NEXT_KEY};
use lanyard_ca_lifecycle::propagation::{
    ClusterView, Propagation, Refusal, describe_agent, may_retire, may_switch,
};
use lanyard_ca_lifecycle::report::{AgentAck, CertSummary, short};
use lanyard_ca_lifecycle::rotation::{Phase, RotationState};
use lanyard_ca_lifecycle::unix_seconds;
use serde::Serialize;

use super::material::format_time;
use super::rotate_root::cluster_view;
use super::state::CaState;
use super::{CaError, Cluster};

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Everything `lanyard ca status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub trust_domain: String,
    pub rotation: Option<RotationState>,
    /// The bundle ConfigMap's roots.
    pub roots: Vec<CertSummary>,
    /// The Secret's signing intermediate.
    pub intermediate: Option<CertSummary>,
    /// The bundle root the Secret's intermediate chains to.
    pub signing_root: Option<String>,
    pub replicas: Vec<ReplicaStatus>,
    pub stale_replicas: Vec<String>,
    pub versions: BTreeMap<String, VersionStatus>,
    pub agents: Vec<AgentAck>,
    pub step: Option<Step>,
    pub warnings: Vec<String>,
}

/// One live replica.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaStatus {
    pub replica: String,
    pub bundle_version: String,
    pub signing_root: String,
    pub signing_since: i64,
    pub signing_intermediate: String,
    /// Agents connected to it: listed, unlisted and unacknowledging.
    pub agents: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VersionStatus {
    pub replicas: usize,
    pub agents: usize,
}

/// The next phase of a rotation and how far its precondition has reached.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// `switch` or `retire`.
    pub next: &'static str,
    pub what: &'static str,
    pub replicas: usize,
    pub replicas_done: usize,
    pub agents: usize,
    pub agents_done: usize,
    pub waiting_for: Vec<String>,
    /// Whether the step would be accepted now.
    pub complete: bool,
    /// Why not, when it would be refused (`refused (<label>): <message>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
}

impl Step {
    fn new(
        next: &'static str,
        what: &'static str,
        propagation: Propagation,
        verdict: Result<(), Refusal>,
    ) -> Self {
        Self {
            next,
            what,
            replicas: propagation.replicas,
            replicas_done: propagation.replicas_done,
            agents: propagation.agents,
            agents_done: propagation.agents_done,
            waiting_for: propagation.waiting_for,
            complete: verdict.is_ok(),
            refusal: verdict
                .err()
                .map(|r| format!("refused ({r}): {}", r.message())),
        }
    }
}

/// `lanyard ca status`.
pub async fn status(cluster: &Cluster, now: SystemTime) -> Result<Status, CaError> {
    let state = CaState::read(cluster).await?;
    let (view, unreadable) = cluster_view(cluster, now).await?;
    Ok(build(&state, &view, &unreadable, unix_seconds(now)))
}

/// The status of `state` as `view` reports it, at `now` (Unix seconds).
pub fn build(state: &CaState, view: &ClusterView, unreadable: &[String], now: i64) -> Status {
    let roots: Vec<CertSummary> = state.roots.iter().map(|r| CertSummary::of(r)).collect();
    let mut warnings = Vec::new();
    let intermediate = match state.intermediate() {
        Ok(der) => Some(CertSummary::of(&der)),
        Err(e) => {
            warnings.push(e.to_string());
            None
        }
    };
    let mut certs: Vec<(&'static str, CertSummary)> =
        roots.iter().map(|r| ("root", r.clone())).collect();
    certs.extend(intermediate.iter().map(|i| ("intermediate", i.clone())));
    warnings.extend(cluster_warnings(view, &certs, now));
    warnings.extend(unreadable.iter().cloned());
    let step = state.rotation.as_ref().map(|rotation| {
        next_step(
            rotation,
            view,
            state
                .data
                .jwt_key_id(&state.objects.secret_ref(), SECRET_JWT_NEXT_KEY),
            now,
        )
    });
    Status {
        trust_domain: state.trust_domain.to_string(),
        rotation: state.rotation.clone(),
        roots,
        intermediate,
        signing_root: state.signing_root(),
        replicas: view
            .replicas
            .iter()
            .map(|r| ReplicaStatus {
                replica: r.replica.clone(),
                bundle_version: r.bundle.version.clone(),
                signing_root: r.signing.root.clone(),
                signing_since: r.signing.since,
                signing_intermediate: r.signing.intermediate.fingerprint.clone(),
                agents: r.agents.len() as u64 + r.unlisted_agents + r.unacknowledging_agents,
            })
            .collect(),
        stale_replicas: view.stale.clone(),
        versions: view
            .versions()
            .into_iter()
            .map(|(v, c)| {
                (
                    v,
                    VersionStatus {
                        replicas: c.replicas,
                        agents: c.agents,
                    },
                )
            })
            .collect(),
        agents: view.agents().into_iter().cloned().collect(),
        step,
        warnings,
    }
}

fn next_step(
    rotation: &RotationState,
    view: &ClusterView,
    next_kid: Result<Option<String>, super::MaterialError>,
    now: i64,
) -> Step {
    match rotation.phase {
        Phase::Added => {
            let kid = next_kid.ok().flatten();
            Step::new(
                "switch",
                "the new root",
                view.trusts(&rotation.new_root, kid.as_deref()),
                may_switch(Some(rotation), view, kid.as_deref()),
            )
        }
        Phase::Switched => {
            let mut propagation = view.signs_under(&rotation.new_root);
            let verdict = may_retire(Some(rotation), view, now);
            if let Err(Refusal::OldSvidsUnexpired { until, .. }) = &verdict {
                propagation.waiting_for.push(format!(
                    "SVIDs under the old root to expire ({})",
                    format_time(*until)
                ));
            }
            Step::new("retire", "signing under the new root", propagation, verdict)
        }
    }
}

/// Warnings from the replicas' reports: `certs` (and every root and intermediate a replica
/// names) expiring within 60 days, no live replica, stale reports, replicas serving different
/// bundle versions, agents on a bundle version other than the replicas', agents that do not
/// acknowledge.
pub fn cluster_warnings(
    view: &ClusterView,
    certs: &[(&'static str, CertSummary)],
    now: i64,
) -> Vec<String> {
    let mut all: Vec<(&'static str, CertSummary)> = certs.to_vec();
    for replica in &view.replicas {
        all.extend(replica.bundle.roots.iter().map(|r| ("root", r.clone())));
        all.push(("intermediate", replica.signing.intermediate.clone()));
    }
    let mut seen = std::collections::BTreeSet::new();
    all.retain(|(_, c)| seen.insert(c.fingerprint.clone()));
    let mut warnings = expiry::warnings(all.iter().map(|(k, c)| (*k, c)), now);

    if view.replicas.is_empty() {
        warnings.push(
            "no lanyard-server replica has reported: propagation cannot be measured".to_owned(),
        );
    }
    for stale in &view.stale {
        warnings.push(format!(
            "replica {stale} has not reported for over {REPORT_STALE_AFTER_SECS} s; its report is ignored"
        ));
    }
    let mut served: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for replica in &view.replicas {
        served
            .entry(replica.bundle.version.as_str())
            .or_default()
            .push(&replica.replica);
    }
    if served.len() > 1 {
        let list: Vec<String> = served
            .iter()
            .map(|(v, r)| format!("{v} ({})", r.join(", ")))
            .collect();
        warnings.push(format!(
            "replicas serve different bundle versions: {}",
            list.join("; ")
        ));
    }
    let lagging: Vec<String> = view
        .agents()
        .into_iter()
        .filter(|a| !served.is_empty() && !served.contains_key(a.version.as_str()))
        .map(|a| format!("{} ({})", a.node, a.version))
        .collect();
    if !lagging.is_empty() {
        let shown: Vec<&str> = lagging.iter().take(10).map(String::as_str).collect();
        let more = lagging.len().saturating_sub(shown.len());
        warnings.push(format!(
            "{} agents lag the bundle the replicas serve ({}): {}{}",
            lagging.len(),
            served.keys().copied().collect::<Vec<_>>().join(", "),
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    }
    let unaccounted = view.unaccounted_agents();
    if unaccounted > 0 {
        warnings.push(format!(
            "{unaccounted} agents are not listed or do not acknowledge bundles (older agents on WatchBundle): their propagation cannot be measured"
        ));
    }
    warnings
}

fn days_left(not_after: i64, now: i64) -> String {
    let days = (not_after - now).div_euclid(86_400);
    if not_after <= now {
        "expired".to_owned()
    } else {
        format!("in {days} days")
    }
}

impl Status {
    /// For people: one section per topic, warnings last.
    pub fn text(&self, now: i64) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let cert = |c: &CertSummary| {
            format!(
                "{}  {}  expires {} ({})",
                c.short(),
                c.subject,
                format_time(c.not_after),
                days_left(c.not_after, now)
            )
        };
        let _ = writeln!(out, "trust domain   {}", self.trust_domain);
        let _ = writeln!(out, "roots          {}", self.roots.len());
        for root in &self.roots {
            let _ = writeln!(out, "  {}", cert(root));
        }
        match &self.intermediate {
            Some(i) => {
                let _ = writeln!(out, "intermediate   {}", cert(i));
                let under = self
                    .signing_root
                    .as_deref()
                    .map_or("no root of the bundle".to_owned(), |r| {
                        format!("root {}", short(r))
                    });
                let _ = writeln!(out, "  issued by    {under}");
            }
            None => {
                let _ = writeln!(out, "intermediate   unreadable (see warnings)");
            }
        }
        match &self.rotation {
            None => {
                let _ = writeln!(out, "rotation       none");
            }
            Some(r) => {
                let _ = writeln!(
                    out,
                    "rotation       {}: old root {} -> new root {} (added {}{})",
                    r.phase,
                    short(&r.old_root),
                    short(&r.new_root),
                    format_time(r.added_at),
                    r.switched_at
                        .map(|t| format!(", switched {}", format_time(t)))
                        .unwrap_or_default()
                );
            }
        }
        let _ = writeln!(out, "replicas       {} reporting", self.replicas.len());
        for r in &self.replicas {
            let _ = writeln!(
                out,
                "  {}  bundle {}  signing under {} since {}  intermediate {}  agents {}",
                r.replica,
                r.bundle_version,
                short(&r.signing_root),
                format_time(r.signing_since),
                short(&r.signing_intermediate),
                r.agents
            );
        }
        if !self.stale_replicas.is_empty() {
            let _ = writeln!(out, "  stale (ignored): {}", self.stale_replicas.join(", "));
        }
        let _ = writeln!(out, "bundle versions");
        for (version, count) in &self.versions {
            let _ = writeln!(
                out,
                "  {version}  replicas {}  agents {}",
                count.replicas, count.agents
            );
        }
        let _ = writeln!(out, "agents         {}", self.agents.len());
        for agent in &self.agents {
            let _ = writeln!(out, "  {}", describe_agent(agent));
        }
        match &self.step {
            None => {
                let _ = writeln!(out, "next step      none (no rotation in progress)");
            }
            Some(step) => {
                let _ = writeln!(
                    out,
                    "next step      {}: {} has reached {}/{} replicas, {}/{} agents",
                    step.next,
                    step.what,
                    step.replicas_done,
                    step.replicas,
                    step.agents_done,
                    step.agents
                );
                if !step.waiting_for.is_empty() {
                    let _ = writeln!(out, "  waiting for  {}", step.waiting_for.join(", "));
                }
                match &step.refusal {
                    None => {
                        let _ = writeln!(
                            out,
                            "  ready        yes: `lanyard ca rotate-root {}`",
                            step.next
                        );
                    }
                    Some(why) => {
                        let _ = writeln!(out, "  ready        no: {why}");
                    }
                }
            }
        }
        for warning in &self.warnings {
            let _ = writeln!(out, "WARN  {warning}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_ca_lifecycle::report::{BundleSummary, ReplicaReport, SigningSummary};

    fn cert(fp: &str, not_after: i64) -> CertSummary {
        CertSummary {
            fingerprint: format!("{fp:0<64}"),
            subject: format!("CN={fp}"),
            not_after,
        }
    }

    fn replica(name: &str, version: &str, agents: Vec<AgentAck>, now: i64) -> ReplicaReport {
        ReplicaReport {
            replica: name.into(),
            updated_at: now,
            bundle: BundleSummary {
                version: version.into(),
                roots: vec![cert("aa", now + 400 * 86_400)],
                jwt_key_ids: vec![],
            },
            signing: SigningSummary {
                intermediate: cert("bb", now + 10 * 86_400),
                root: "aa".into(),
                jwt_key_id: "k".into(),
                since: now,
            },
            longest_svid_ttl_secs: 3600,
            agents,
            unlisted_agents: 0,
            unacknowledging_agents: 0,
        }
    }

    fn ack(node: &str, version: &str) -> AgentAck {
        AgentAck {
            node: node.into(),
            version: version.into(),
            svid_roots: vec![],
            acked_at: 1,
        }
    }

    #[test]
    fn warnings_name_expiry_disagreement_and_lagging_agents() {
        let now = 1_000_000_000;
        let agree = ClusterView::new(
            [
                replica("a", "v2", vec![ack("n1", "v2")], now),
                replica("b", "v2", vec![ack("n2", "v1")], now),
            ],
            now,
        );
        let warnings = cluster_warnings(&agree, &[], now);
        assert_eq!(
            warnings,
            [
                "intermediate bb00000000000000 (CN=bb) expires in 10 days",
                "1 agents lag the bundle the replicas serve (v2): n2 (v1)",
            ]
        );
        let mut stale = replica("c", "v1", vec![], now);
        stale.updated_at = 0;
        let disagree = ClusterView::new(
            [
                replica("a", "v2", vec![], now),
                replica("b", "v1", vec![], now),
                stale,
            ],
            now,
        );
        let warnings = cluster_warnings(&disagree, &[("root", cert("cc", now - 1))], now);
        assert_eq!(warnings[0], "root cc00000000000000 (CN=cc) has expired");
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("replica c has not reported"))
        );
        assert!(
            warnings
                .contains(&"replicas serve different bundle versions: v1 (b); v2 (a)".to_owned())
        );
        let none = cluster_warnings(&ClusterView::new([], now), &[], now);
        assert_eq!(
            none,
            ["no lanyard-server replica has reported: propagation cannot be measured"]
        );
    }

    #[test]
    fn refusals_are_labelled_and_say_what_to_do() {
        use crate::ca::{CaError, Refused};
        let err = CaError::from(Refused::NeedsOldRoot);
        assert!(err.to_string().starts_with("refused (needs_old_root): "));
        let err = CaError::from(Refusal::NoRotation);
        assert_eq!(
            err.to_string(),
            format!("refused (no_rotation): {}", Refusal::NoRotation.message())
        );
        let foreign = Refused::ForeignRoot {
            given: "1".repeat(64),
            signing: "2".repeat(64),
        };
        assert_eq!(foreign.to_string(), "foreign_root");
        assert!(foreign.message().contains(&"2".repeat(16)));
    }
}
