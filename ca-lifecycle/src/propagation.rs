//! How far a change has reached, from the live replicas' reports, and whether the next phase
//! of a root rotation may start. Nothing here reads the cluster or a clock: `lanyard ca` (and
//! the ten-year simulation) pass the reports and the time in.
//!
//! - `switch` needs the new root (and the next JWT key) in the bundle of every replica and
//!   acknowledged by every agent: from then on SVIDs under the new root are issued, and every
//!   peer must already trust them.
//! - `retire` needs every replica signing under the new root, no agent holding an SVID under
//!   the old one, and the longest SVID a replica issues to have run out since the last replica
//!   switched: an SVID a workload fetched once and kept could otherwise outlive its root.

use std::collections::BTreeMap;

use crate::report::{AgentAck, BundleSummary, ReplicaReport, short};
use crate::rotation::{Phase, RotationState};

/// Margin added to the wait before `retire`, for clocks that disagree between machines.
pub const RETIRE_MARGIN_SECS: i64 = 60;

/// The live replicas' reports (stale ones set aside) and what they say together.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub replicas: Vec<ReplicaReport>,
    /// Replicas whose reports are older than
    /// [`REPORT_STALE_AFTER_SECS`](crate::names::REPORT_STALE_AFTER_SECS): ignored.
    pub stale: Vec<String>,
}

/// How many replicas serve, and agents acknowledged, one bundle version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionCount {
    pub replicas: usize,
    pub agents: usize,
}

impl ClusterView {
    pub fn new(reports: impl IntoIterator<Item = ReplicaReport>, now: i64) -> Self {
        let (mut replicas, mut stale) = (Vec::new(), Vec::new());
        for report in reports {
            if report.is_stale(now) {
                stale.push(report.replica);
            } else {
                replicas.push(report);
            }
        }
        replicas.sort_by(|a, b| a.replica.cmp(&b.replica));
        Self { replicas, stale }
    }

    /// Every agent once, by node: an agent that moved to another replica is listed by both
    /// until the first rewrites its report, and its latest acknowledgement is the truth.
    pub fn agents(&self) -> Vec<&AgentAck> {
        let mut by_node: BTreeMap<&str, &AgentAck> = BTreeMap::new();
        for ack in self.replicas.iter().flat_map(|r| &r.agents) {
            let newer = by_node
                .get(ack.node.as_str())
                .is_none_or(|seen| seen.acked_at < ack.acked_at);
            if newer {
                by_node.insert(&ack.node, ack);
            }
        }
        by_node.into_values().collect()
    }

    /// The bundle a live replica serves under `version`, if any does.
    pub fn bundle(&self, version: &str) -> Option<&BundleSummary> {
        self.replicas
            .iter()
            .map(|r| &r.bundle)
            .find(|b| b.version == version)
    }

    /// Per bundle version: how many replicas serve it and how many agents acknowledged it.
    pub fn versions(&self) -> BTreeMap<String, VersionCount> {
        let mut counts: BTreeMap<String, VersionCount> = BTreeMap::new();
        for replica in &self.replicas {
            counts
                .entry(replica.bundle.version.clone())
                .or_default()
                .replicas += 1;
        }
        for agent in self.agents() {
            counts.entry(agent.version.clone()).or_default().agents += 1;
        }
        counts
    }

    /// Agents counted by replicas but not listed (beyond the listing cap, or on the old
    /// WatchBundle stream that does not acknowledge): they are never counted as done.
    pub fn unaccounted_agents(&self) -> u64 {
        self.replicas
            .iter()
            .map(|r| r.unlisted_agents + r.unacknowledging_agents)
            .sum()
    }

    /// How far a step has reached: `replica_done` judges each replica, `agent_done` each
    /// agent (with the bundle its acknowledged version names, if a live replica serves it).
    pub fn propagation(
        &self,
        replica_done: impl Fn(&ReplicaReport) -> bool,
        agent_done: impl Fn(&AgentAck, Option<&BundleSummary>) -> bool,
    ) -> Propagation {
        let mut p = Propagation {
            replicas: self.replicas.len(),
            agents: self.agents().len() + self.unaccounted_agents() as usize,
            ..Propagation::default()
        };
        for replica in &self.replicas {
            if replica_done(replica) {
                p.replicas_done += 1;
            } else {
                p.waiting_for.push(format!("replica {}", replica.replica));
            }
        }
        for agent in self.agents() {
            if agent_done(agent, self.bundle(&agent.version)) {
                p.agents_done += 1;
            } else {
                p.waiting_for.push(format!("agent on {}", agent.node));
            }
        }
        let unaccounted = self.unaccounted_agents();
        if unaccounted > 0 {
            p.waiting_for
                .push(format!("{unaccounted} agents that do not acknowledge"));
        }
        p
    }

    /// Every replica serves, and every agent acknowledged, a bundle trusting `root` (and
    /// publishing `jwt_key_id`, when given).
    pub fn trusts(&self, root: &str, jwt_key_id: Option<&str>) -> Propagation {
        let has = |b: &BundleSummary| {
            b.has_root(root) && jwt_key_id.is_none_or(|kid| b.jwt_key_ids.iter().any(|k| k == kid))
        };
        self.propagation(|r| has(&r.bundle), |_, b| b.is_some_and(has))
    }

    /// Every replica signs under `root`, and every agent holds only SVIDs under it.
    pub fn signs_under(&self, root: &str) -> Propagation {
        self.propagation(
            |r| r.signing.root == root,
            |a, _| a.svid_roots.iter().all(|r| r == root),
        )
    }

    /// No replica serves, and no agent acknowledged, a bundle trusting `root`.
    pub fn forgot(&self, root: &str) -> Propagation {
        self.propagation(
            |r| !r.bundle.has_root(root),
            |_, b| b.is_some_and(|b| !b.has_root(root)),
        )
    }

    /// Unix seconds after which no SVID any replica issued under its previous root can still
    /// be valid (plus [`RETIRE_MARGIN_SECS`]); `None` without replicas.
    pub fn old_svids_expire_at(&self) -> Option<i64> {
        let since = self.replicas.iter().map(|r| r.signing.since).max()?;
        let ttl = self
            .replicas
            .iter()
            .map(|r| r.longest_svid_ttl_secs)
            .max()?;
        Some(since + i64::try_from(ttl).unwrap_or(i64::MAX / 2) + RETIRE_MARGIN_SECS)
    }
}

/// How far one step has reached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Propagation {
    pub replicas: usize,
    pub replicas_done: usize,
    pub agents: usize,
    pub agents_done: usize,
    /// Who has not got there yet ("replica X", "agent on NODE").
    pub waiting_for: Vec<String>,
}

impl Propagation {
    /// Done everywhere (and there is at least one replica to say so).
    pub fn complete(&self) -> bool {
        self.replicas > 0 && self.waiting_for.is_empty()
    }
}

impl std::fmt::Display for Propagation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} replicas, {}/{} agents",
            self.replicas_done, self.replicas, self.agents_done, self.agents
        )
    }
}

/// Why a rotation phase may not start now. `Display` is a snake_case label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `add` while a rotation is in progress.
    RotationInProgress(Phase),
    /// `switch`, `retire` or `abort` with no rotation in progress.
    NoRotation,
    /// The rotation is in another phase than the step needs.
    WrongPhase { step: &'static str, found: Phase },
    /// No live replica reports: propagation cannot be measured.
    NoReplicas { stale: Vec<String> },
    /// The previous phase has not reached everyone.
    NotPropagated {
        step: &'static str,
        what: &'static str,
        propagation: Propagation,
    },
    /// SVIDs under the old root may still be valid until this Unix time.
    OldSvidsUnexpired { until: i64, now: i64 },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::RotationInProgress(_) => "rotation_in_progress",
            Self::NoRotation => "no_rotation",
            Self::WrongPhase { .. } => "wrong_phase",
            Self::NoReplicas { .. } => "no_replicas",
            Self::NotPropagated { .. } => "not_propagated",
            Self::OldSvidsUnexpired { .. } => "old_svids_unexpired",
        })
    }
}

impl Refusal {
    /// What happened and what to do, for people.
    pub fn message(&self) -> String {
        match self {
            Self::RotationInProgress(phase) => format!(
                "a root rotation is already in progress (phase {phase}); finish it (`lanyard ca rotate-root switch`/`retire`) or `lanyard ca rotate-root abort` it first"
            ),
            Self::NoRotation => {
                "no root rotation is in progress; start one with `lanyard ca rotate-root add`"
                    .to_owned()
            }
            Self::WrongPhase { step, found } => {
                let next = match found {
                    Phase::Added => "switch",
                    Phase::Switched => "retire",
                };
                format!("`{step}` does not follow phase {found}; the next step is `{next}`")
            }
            Self::NoReplicas { stale } if stale.is_empty() => {
                "no lanyard-server replica has reported; propagation cannot be measured (is the server running, and allowed to write its report ConfigMap?)".to_owned()
            }
            Self::NoReplicas { stale } => format!(
                "no lanyard-server replica has reported recently (stale reports from: {}); propagation cannot be measured",
                stale.join(", ")
            ),
            Self::NotPropagated {
                step,
                what,
                propagation,
            } => format!(
                "refusing to {step}: {what} has reached {propagation}; still waiting for: {}. Watch `lanyard ca status` and retry when it shows complete",
                propagation.waiting_for.join(", ")
            ),
            Self::OldSvidsUnexpired { until, now } => format!(
                "refusing to retire: SVIDs issued under the old root may be valid for {} more seconds (until unix {until}); retry then",
                until - now
            ),
        }
    }
}

/// May a rotation start now?
pub fn may_add(state: Option<&RotationState>) -> Result<(), Refusal> {
    match state {
        Some(s) => Err(Refusal::RotationInProgress(s.phase)),
        None => Ok(()),
    }
}

/// May signing switch to the new root? Needs phase `added`, and the new root (and the next
/// JWT key, `next_jwt_key_id`) trusted everywhere.
pub fn may_switch(
    state: Option<&RotationState>,
    view: &ClusterView,
    next_jwt_key_id: Option<&str>,
) -> Result<(), Refusal> {
    let state = state.ok_or(Refusal::NoRotation)?;
    if state.phase != Phase::Added {
        return Err(Refusal::WrongPhase {
            step: "switch",
            found: state.phase,
        });
    }
    require_replicas(view)?;
    let propagation = view.trusts(&state.new_root, next_jwt_key_id);
    if !propagation.complete() {
        return Err(Refusal::NotPropagated {
            step: "switch",
            what: "the new root",
            propagation,
        });
    }
    Ok(())
}

/// May the old root be retired? Needs phase `switched`, every replica signing under the new
/// root, no agent holding an SVID under the old one, and [`ClusterView::old_svids_expire_at`]
/// passed.
pub fn may_retire(
    state: Option<&RotationState>,
    view: &ClusterView,
    now: i64,
) -> Result<(), Refusal> {
    let state = state.ok_or(Refusal::NoRotation)?;
    if state.phase != Phase::Switched {
        return Err(Refusal::WrongPhase {
            step: "retire",
            found: state.phase,
        });
    }
    require_replicas(view)?;
    let propagation = view.signs_under(&state.new_root);
    if !propagation.complete() {
        return Err(Refusal::NotPropagated {
            step: "retire",
            what: "signing under the new root",
            propagation,
        });
    }
    let until = view
        .old_svids_expire_at()
        .expect("replicas are present")
        .max(state.switched_at.unwrap_or(0));
    if now < until {
        return Err(Refusal::OldSvidsUnexpired { until, now });
    }
    Ok(())
}

fn require_replicas(view: &ClusterView) -> Result<(), Refusal> {
    if view.replicas.is_empty() {
        return Err(Refusal::NoReplicas {
            stale: view.stale.clone(),
        });
    }
    Ok(())
}

/// A short description of one agent's acknowledgement, for `lanyard ca status`.
pub fn describe_agent(agent: &AgentAck) -> String {
    let roots: Vec<&str> = agent.svid_roots.iter().map(|r| short(r)).collect();
    format!(
        "{} bundle {} svids under [{}]",
        agent.node,
        agent.version,
        roots.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{CertSummary, SigningSummary};

    fn cert(fp: &str) -> CertSummary {
        CertSummary {
            fingerprint: fp.into(),
            subject: format!("CN={fp}"),
            not_after: i64::MAX / 4,
        }
    }

    fn bundle(version: &str, roots: &[&str]) -> BundleSummary {
        BundleSummary {
            version: version.into(),
            roots: roots.iter().map(|r| cert(r)).collect(),
            jwt_key_ids: vec![format!("kid-{version}")],
        }
    }

    fn replica(
        name: &str,
        bundle: BundleSummary,
        root: &str,
        agents: Vec<AgentAck>,
    ) -> ReplicaReport {
        ReplicaReport {
            replica: name.into(),
            updated_at: 1000,
            bundle,
            signing: SigningSummary {
                intermediate: cert("int"),
                root: root.into(),
                jwt_key_id: "kid".into(),
                since: 900,
            },
            longest_svid_ttl_secs: 100,
            agents,
            unlisted_agents: 0,
            unacknowledging_agents: 0,
        }
    }

    fn ack(node: &str, version: &str, roots: &[&str], at: i64) -> AgentAck {
        AgentAck {
            node: node.into(),
            version: version.into(),
            svid_roots: roots.iter().map(|r| r.to_string()).collect(),
            acked_at: at,
        }
    }

    fn added() -> RotationState {
        RotationState {
            phase: Phase::Added,
            old_root: "old".into(),
            new_root: "new".into(),
            added_at: 950,
            switched_at: None,
        }
    }

    #[test]
    fn switch_waits_for_every_replica_and_agent_to_trust_the_new_root() {
        let both = bundle("v2", &["old", "new"]);
        let view = ClusterView::new(
            [
                replica(
                    "a",
                    both.clone(),
                    "old",
                    vec![ack("n1", "v2", &["old"], 990)],
                ),
                replica(
                    "b",
                    bundle("v1", &["old"]),
                    "old",
                    vec![ack("n2", "v1", &["old"], 990)],
                ),
            ],
            1000,
        );
        let err = may_switch(Some(&added()), &view, None).unwrap_err();
        let Refusal::NotPropagated { propagation, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(propagation.to_string(), "1/2 replicas, 1/2 agents");
        assert_eq!(propagation.waiting_for, ["replica b", "agent on n2"]);
        assert!(err.message().contains("agent on n2"), "{}", err.message());

        let view = ClusterView::new(
            [
                replica(
                    "a",
                    both.clone(),
                    "old",
                    vec![ack("n1", "v2", &["old"], 990)],
                ),
                replica(
                    "b",
                    both.clone(),
                    "old",
                    vec![ack("n2", "v2", &["old"], 990)],
                ),
            ],
            1000,
        );
        may_switch(Some(&added()), &view, None).unwrap();
        // The next JWT key must be published too.
        assert!(may_switch(Some(&added()), &view, Some("kid-other")).is_err());
        may_switch(Some(&added()), &view, Some("kid-v2")).unwrap();
        assert_eq!(
            view.versions()["v2"],
            VersionCount {
                replicas: 2,
                agents: 2
            }
        );
    }

    #[test]
    fn an_agent_that_moved_replicas_counts_once_with_its_latest_ack() {
        let both = bundle("v2", &["old", "new"]);
        let view = ClusterView::new(
            [
                replica(
                    "a",
                    both.clone(),
                    "old",
                    vec![ack("n1", "v1", &["old"], 900)],
                ),
                replica("b", both, "old", vec![ack("n1", "v2", &["old"], 990)]),
            ],
            1000,
        );
        assert_eq!(view.agents().len(), 1);
        may_switch(Some(&added()), &view, None).unwrap();
    }

    #[test]
    fn stale_reports_are_ignored_and_no_reports_is_a_refusal() {
        let mut old = replica("gone", bundle("v1", &["old"]), "old", vec![]);
        old.updated_at = 0;
        let view = ClusterView::new([old], 1000);
        assert_eq!(view.stale, ["gone"]);
        let err = may_switch(Some(&added()), &view, None).unwrap_err();
        assert_eq!(err.to_string(), "no_replicas");
        assert!(err.message().contains("gone"));
    }

    #[test]
    fn retire_waits_for_signing_held_svids_and_the_longest_ttl() {
        let switched = RotationState {
            phase: Phase::Switched,
            switched_at: Some(960),
            ..added()
        };
        let both = bundle("v3", &["old", "new"]);
        // One agent still holds an SVID under the old root.
        let view = ClusterView::new(
            [replica(
                "a",
                both.clone(),
                "new",
                vec![ack("n1", "v3", &["old", "new"], 990)],
            )],
            1000,
        );
        let err = may_retire(Some(&switched), &view, 2000).unwrap_err();
        assert_eq!(err.to_string(), "not_propagated");
        // All renewed: still refused until since (900) + ttl (100) + margin.
        let view = ClusterView::new(
            [replica(
                "a",
                both,
                "new",
                vec![ack("n1", "v3", &["new"], 990)],
            )],
            1000,
        );
        let until = 900 + 100 + RETIRE_MARGIN_SECS;
        assert_eq!(
            may_retire(Some(&switched), &view, until - 1),
            Err(Refusal::OldSvidsUnexpired {
                until,
                now: until - 1
            })
        );
        may_retire(Some(&switched), &view, until).unwrap();
        // Phases out of order are refused by name.
        assert_eq!(
            may_retire(Some(&added()), &view, until)
                .unwrap_err()
                .to_string(),
            "wrong_phase"
        );
        assert_eq!(
            may_add(Some(&switched)).unwrap_err().to_string(),
            "rotation_in_progress"
        );
        assert_eq!(
            may_retire(None, &view, until).unwrap_err(),
            Refusal::NoRotation
        );
    }

    #[test]
    fn agents_that_do_not_acknowledge_hold_up_propagation() {
        let mut r = replica("a", bundle("v2", &["old", "new"]), "old", vec![]);
        r.unacknowledging_agents = 2;
        let view = ClusterView::new([r], 1000);
        let p = view.trusts("new", None);
        assert!(!p.complete());
        assert_eq!(p.agents, 2);
    }
}
