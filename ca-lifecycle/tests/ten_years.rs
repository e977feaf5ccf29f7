//! Ten simulated years of a cluster's CA on an injected clock: an intermediate re-issued every
//! 30 days, the root rotated every 2 years (add, switch, retire), each phase moved on only when
//! `propagation::may_switch`/`may_retire` allow it over a `ClusterView` built from the
//! simulated replicas' reports. Two server replicas pick up each change of the CA Secret and
//! bundle ConfigMap with their own lag; three agents receive bundle updates with their own
//! delay, renew their node SVID and one workload's X.509- and JWT-SVID at half life from
//! either replica, move their bundle stream between replicas, and are sometimes down across a
//! phase.
//!
//! Every certificate and token is real (`lanyard_svid`: `RootCa`, `Issuer::sign_x509_svid`,
//! `JwtSigner::mint`, with an explicit `now`). Before and after every event (a renewal, a
//! replica or agent picking up a change, a phase, an agent going down or up), the checker
//! asserts at that instant that every workload holds an X.509-SVID and a JWT-SVID valid then
//! whose root (JWT key) is in the bundle every relying agent has installed, that every agent's
//! node SVID is trusted by every replica and every replica's own SVID by every agent that is up.
//! Each (issuer, relying bundle) pair is checked with `verify_peer`/`jwt::validate` the first
//! time it is relied on; later instants compare validity windows and root fingerprints (the
//! checker asserts both ways agree whenever both run). SVIDs and JWT-SVIDs live 2 days in the
//! simulation (renewed daily): about 40,000 real signatures, a few seconds in a debug build.
//! What matters is how the lifetime compares with the replicas' and agents' delays (seconds
//! to minutes) and the outages (hours), not its absolute value.
//!
//! Replicas list only the agents connected to them (the contract). `an_agent_down_when_a_root_is_added`
//! shows what that misses, and that replicas keeping a disconnected agent's last
//! acknowledgement for the longest SVID lifetime would close it.

use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lanyard_ca_lifecycle::expiry;
use lanyard_ca_lifecycle::propagation::{ClusterView, Refusal, may_add, may_retire, may_switch};
use lanyard_ca_lifecycle::report::{
    AgentAck, BundleSummary, CertSummary, ReplicaReport, SigningSummary,
};
use lanyard_ca_lifecycle::rotation::{Phase, RotationState};
use lanyard_svid::jwt::{self, JwtSigner};
use lanyard_svid::reserved::{NodeAttestation, agent_id, server_id};
use lanyard_svid::{
    BundleSet, Issuer, KeyAlgorithm, KeyAndCsr, PeerRole, RootCa, SignedSvid, SpiffeId,
    TrustBundle, TrustDomain, VerifiedCsr, verify_peer,
};

const MINUTE: i64 = 60;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
const YEAR: i64 = 365 * DAY;
/// 2030-03-17: the simulation's first instant.
const START: i64 = 1_900_000_000;
const AUDIENCE: &str = "spiffe://example.org/peers";
/// How long kubelet takes to refresh a mounted ConfigMap (the agent's bootstrap bundle file).
const KUBELET_REFRESH: i64 = 60;

fn at(t: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(t).expect("simulated times are after 1970"))
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).expect("simulated durations fit")
}

/// What replicas list in their reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReportPolicy {
    /// The contract: agents connected now.
    ConnectedOnly,
    /// Also agents that disconnected less than the longest SVID lifetime ago, with their last
    /// acknowledgement (their workloads still hold SVIDs and the bundle they had).
    KeepDisconnected,
}

/// When an agent is taken down: just before one of the operator's steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Before {
    /// Just before rotation `n` (1-based) adds its root.
    Add(u32),
    /// Just before rotation `n` switches (after `may_switch` allowed it).
    Switch(u32),
    /// Just before rotation `n` retires the old root.
    Retire(u32),
    /// Just before the `n`th intermediate re-issue.
    Intermediate(u32),
}

#[derive(Debug, Clone, Copy)]
struct Outage {
    agent: usize,
    before: Before,
    down_for: i64,
}

#[derive(Debug, Clone)]
struct Params {
    years: i64,
    svid_ttl: i64,
    jwt_ttl: i64,
    intermediate_every: i64,
    intermediate_ttl: i64,
    root_every: i64,
    root_ttl: i64,
    /// Per replica: how long after a change of the Secret/ConfigMap it serves it.
    replica_lag: [i64; 2],
    /// Per agent: how long after its replica serves a bundle it has installed it.
    agent_delay: [i64; 3],
    /// How often the operator retries a refused phase.
    poll: i64,
    policy: ReportPolicy,
    outages: Vec<Outage>,
    /// Simulated length, when shorter than `years`.
    end_after: Option<i64>,
}

impl Params {
    fn ten_years() -> Self {
        let mut outages = Vec::new();
        // Across phases that are safe to miss: each agent in turn.
        for rotation in 1..=4u32 {
            let agent = (rotation as usize) % 3;
            outages.push(Outage {
                agent,
                before: Before::Switch(rotation),
                down_for: 8 * HOUR,
            });
            outages.push(Outage {
                agent: (agent + 1) % 3,
                before: Before::Retire(rotation),
                down_for: 8 * HOUR,
            });
        }
        for n in (3..120u32).step_by(7) {
            outages.push(Outage {
                agent: (n as usize) % 3,
                before: Before::Intermediate(n),
                down_for: 5 * HOUR,
            });
        }
        Self {
            years: 10,
            svid_ttl: 2 * DAY,
            jwt_ttl: 2 * DAY,
            intermediate_every: 30 * DAY,
            // Re-issued every 30 days, so it never comes within the 60-day warning.
            intermediate_ttl: 100 * DAY,
            root_every: 2 * YEAR,
            root_ttl: 5 * YEAR,
            replica_lag: [5, 90],
            agent_delay: [2, 30, 120],
            poll: 5 * MINUTE,
            policy: ReportPolicy::ConnectedOnly,
            outages,
            end_after: None,
        }
    }

    fn longest_ttl(&self) -> i64 {
        self.svid_ttl.max(self.jwt_ttl)
    }
}

/// A root, with what reports say about it.
struct Root {
    ca: RootCa,
    fp: String,
    not_after: i64,
    summary: CertSummary,
}

impl Root {
    fn generate(td: &TrustDomain, ttl: i64, t: i64) -> Rc<Self> {
        let ca = RootCa::generate(td, Duration::from_secs(ttl as u64), at(t)).unwrap();
        let summary = CertSummary::of(ca.cert_der());
        Rc::new(Self {
            fp: summary.fingerprint.clone(),
            not_after: secs(ca.not_after().duration_since(UNIX_EPOCH).unwrap()),
            ca,
            summary,
        })
    }
}

/// A signing intermediate and the root it chains to.
struct Intermediate {
    issuer: Issuer,
    root: Rc<Root>,
    not_after: i64,
    summary: CertSummary,
}

impl Intermediate {
    fn issue(root: &Rc<Root>, ttl: i64, t: i64) -> Rc<Self> {
        let issuer = root
            .ca
            .issue_intermediate(Duration::from_secs(ttl as u64), at(t))
            .unwrap();
        Rc::new(Self {
            not_after: secs(issuer.not_after().duration_since(UNIX_EPOCH).unwrap()),
            summary: CertSummary::of(issuer.cert_der()),
            issuer,
            root: root.clone(),
        })
    }
}

/// The CA Secret and bundle ConfigMap, as `lanyard ca` last wrote them.
#[derive(Clone)]
struct CaState {
    /// `bundle.pem`.
    roots: Vec<Rc<Root>>,
    /// `tls.crt`/`tls.key`.
    intermediate: Rc<Intermediate>,
    /// `jwt.key`, `jwt-next.key`, `jwt-previous.key`.
    jwt: Rc<JwtSigner>,
    jwt_next: Option<Rc<JwtSigner>>,
    jwt_previous: Option<Rc<JwtSigner>>,
    rotation: Option<RotationState>,
}

/// A bundle as a replica serves it (roots and every published JWT key), with what the
/// checker looks up.
struct Bundle {
    version: String,
    roots: HashSet<String>,
    kids: HashSet<String>,
    set: BundleSet,
    summary: BundleSummary,
}

impl Bundle {
    fn of(td: &TrustDomain, state: &CaState) -> Rc<Self> {
        let mut trust = TrustBundle::new(td.clone());
        for root in &state.roots {
            trust.add_x509_authority(root.ca.cert_der().clone());
        }
        for key in [
            Some(&state.jwt),
            state.jwt_next.as_ref(),
            state.jwt_previous.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            trust.add_jwt_authority(key.authority());
        }
        let summary = BundleSummary::of(&trust);
        let mut set = BundleSet::new();
        set.insert(trust.clone());
        Rc::new(Self {
            version: trust.version(),
            roots: state.roots.iter().map(|r| r.fp.clone()).collect(),
            kids: summary.jwt_key_ids.iter().cloned().collect(),
            set,
            summary,
        })
    }
}

/// An X.509-SVID and what issued it.
struct X509 {
    svid: SignedSvid,
    issuer: Rc<Intermediate>,
    not_after: i64,
}

impl X509 {
    fn sign(issuer: &Rc<Intermediate>, csr: &VerifiedCsr, id: &SpiffeId, ttl: i64, t: i64) -> Self {
        let svid = issuer
            .issuer
            .sign_x509_svid(csr, id, Duration::from_secs(ttl as u64), at(t))
            .unwrap_or_else(|e| panic!("t={t}: signing {id} failed: {e}"));
        Self {
            not_after: secs(svid.not_after.duration_since(UNIX_EPOCH).unwrap()),
            svid,
            issuer: issuer.clone(),
        }
    }

    fn root(&self) -> &str {
        &self.issuer.root.fp
    }

    /// Why it is not valid at `t`, if it is not (the leaf, its intermediate or its root).
    fn invalid_at(&self, t: i64) -> Option<String> {
        if t >= self.not_after {
            Some(format!("expired at {}", self.not_after))
        } else if t >= self.issuer.not_after {
            Some(format!("intermediate expired at {}", self.issuer.not_after))
        } else if t >= self.issuer.root.not_after {
            Some(format!("root expired at {}", self.issuer.root.not_after))
        } else {
            None
        }
    }
}

struct Jwt {
    key: Rc<JwtSigner>,
    token: String,
    kid: String,
    exp: i64,
}

struct Replica {
    name: String,
    lag: i64,
    /// Index of the CA history entry it serves.
    seen: usize,
    state: Rc<CaState>,
    bundle: Rc<Bundle>,
    /// Since when it has signed under its current root.
    since: i64,
    svid: X509,
    svid_renew_at: i64,
}

struct Agent {
    node: String,
    delay: i64,
    up: bool,
    /// The replica its bundle stream is on.
    stream: usize,
    /// What the node's proxies and workloads use (kept while the agent is down).
    installed: Rc<Bundle>,
    pending: Option<(i64, Rc<Bundle>)>,
    node_svid: X509,
    workload: X509,
    jwt: Jwt,
    renew_at: i64,
    renewals: u64,
    last_ack: AgentAck,
    down_since: i64,
    up_at: i64,
    node_id: SpiffeId,
    workload_id: SpiffeId,
}

/// What the operator did, to assert on at the end.
#[derive(Debug, Default)]
struct Tally {
    rotations: u32,
    intermediates: u32,
    /// Refusals by (rotation, label).
    refusals: BTreeMap<(u32, String), u32>,
    /// Messages of refused switches.
    switch_refusals: Vec<String>,
    add_refused_in_progress: u32,
    outages: u32,
    /// (issuer, relying bundle) pairs checked with the real verifiers.
    crypto_checks: u32,
    checks: u64,
}

struct Sim {
    p: Params,
    td: TrustDomain,
    t: i64,
    csr: VerifiedCsr,
    /// Every version of the CA Secret + ConfigMap, with when it was written.
    history: Vec<(i64, Rc<CaState>, Rc<Bundle>)>,
    replicas: Vec<Replica>,
    agents: Vec<Agent>,
    // Operator.
    next_root: i64,
    next_intermediate: i64,
    poll_at: i64,
    rotation_no: u32,
    intermediate_no: u32,
    tally: Tally,
    violations: Vec<String>,
    verified: HashSet<(usize, usize, u8)>,
}

impl Sim {
    fn new(p: Params) -> Self {
        let td = TrustDomain::new("example.org").unwrap();
        let t = START;
        let key = KeyAndCsr::generate(KeyAlgorithm::EcdsaP256).unwrap();
        // One key for every SVID: the simulation is about chains and bundles, not keys.
        let csr = VerifiedCsr::from_der(&key.csr_der).unwrap();
        let root = Root::generate(&td, p.root_ttl, t);
        let state = Rc::new(CaState {
            roots: vec![root.clone()],
            intermediate: Intermediate::issue(&root, p.intermediate_ttl, t),
            jwt: Rc::new(JwtSigner::generate().unwrap().0),
            jwt_next: None,
            jwt_previous: None,
            rotation: None,
        });
        let bundle = Bundle::of(&td, &state);
        let replicas = ["lanyard-server-0", "lanyard-server-1"]
            .iter()
            .zip(p.replica_lag)
            .map(|(name, lag)| Replica {
                name: name.to_string(),
                lag,
                seen: 0,
                state: state.clone(),
                bundle: bundle.clone(),
                since: t,
                svid: X509::sign(&state.intermediate, &csr, &server_id(&td), p.svid_ttl, t),
                svid_renew_at: t + p.svid_ttl / 2,
            })
            .collect();
        let agents = (0..3)
            .map(|i| {
                let node = format!("node-{i}");
                let node_id = agent_id(&td, NodeAttestation::K8sPsat, &node).unwrap();
                let workload_id = td.id(&format!("/ns/default/sa/app-{i}")).unwrap();
                let jwt = mint(&state.jwt, &workload_id, p.jwt_ttl, t);
                Agent {
                    delay: p.agent_delay[i],
                    up: true,
                    stream: i % 2,
                    installed: bundle.clone(),
                    pending: None,
                    node_svid: X509::sign(&state.intermediate, &csr, &node_id, p.svid_ttl, t),
                    workload: X509::sign(&state.intermediate, &csr, &workload_id, p.svid_ttl, t),
                    jwt,
                    // Staggered, so any stretch of a sixth of a TTL holds somebody's renewal.
                    renew_at: t + (i as i64 + 1) * p.svid_ttl / 6,
                    renewals: 0,
                    last_ack: AgentAck {
                        node: node.clone(),
                        version: bundle.version.clone(),
                        svid_roots: vec![root.fp.clone()],
                        acked_at: t,
                    },
                    down_since: 0,
                    up_at: 0,
                    node,
                    node_id,
                    workload_id,
                }
            })
            .collect();
        Self {
            next_root: t + p.root_every,
            next_intermediate: t + p.intermediate_every,
            poll_at: i64::MAX,
            td,
            t,
            csr,
            history: vec![(t, state, bundle)],
            replicas,
            agents,
            rotation_no: 0,
            intermediate_no: 0,
            tally: Tally::default(),
            violations: Vec::new(),
            verified: HashSet::new(),
            p,
        }
    }

    fn end(&self) -> i64 {
        START + self.p.end_after.unwrap_or(self.p.years * YEAR)
    }

    fn current(&self) -> &Rc<CaState> {
        &self.history.last().unwrap().1
    }

    fn run(mut self) -> Self {
        self.check("start");
        loop {
            let next = self.next_event();
            assert!(next > self.t, "no progress at t={}", self.t);
            if next >= self.end() {
                self.t = self.end();
                self.check("end");
                break;
            }
            // The state since the last event, at its last instant.
            self.t = next - 1;
            self.check("before");
            self.t = next;
            self.step();
            self.check("after");
        }
        self
    }

    fn next_event(&self) -> i64 {
        let mut next = i64::MAX;
        for r in &self.replicas {
            if let Some((written, ..)) = self.history.get(r.seen + 1) {
                next = next.min(written + r.lag);
            }
            next = next.min(r.svid_renew_at);
        }
        for a in &self.agents {
            if a.up {
                next = next.min(a.renew_at);
                if let Some((due, _)) = &a.pending {
                    next = next.min(*due);
                }
            } else {
                next = next.min(a.up_at);
            }
        }
        next.min(self.operator_due())
    }

    fn operator_due(&self) -> i64 {
        match self.current().rotation {
            None => self.next_root.min(self.next_intermediate),
            Some(_) => self.poll_at,
        }
    }

    /// Everything due at `self.t`, in a fixed order.
    fn step(&mut self) {
        let t = self.t;
        // Replicas pick up the Secret and ConfigMap.
        for i in 0..self.replicas.len() {
            while let Some((written, state, bundle)) = self.history.get(self.replicas[i].seen + 1) {
                if written + self.replicas[i].lag > t {
                    break;
                }
                let (state, bundle) = (state.clone(), bundle.clone());
                let r = &mut self.replicas[i];
                r.seen += 1;
                let new_intermediate = !Rc::ptr_eq(&r.state.intermediate, &state.intermediate);
                if state.intermediate.root.fp != r.state.intermediate.root.fp {
                    r.since = t;
                }
                r.state = state;
                r.bundle = bundle;
                if new_intermediate {
                    r.svid = X509::sign(
                        &r.state.intermediate,
                        &self.csr,
                        &server_id(&self.td),
                        self.p.svid_ttl,
                        t,
                    );
                    r.svid_renew_at = t + (r.svid.not_after - t) / 2;
                }
            }
            let r = &mut self.replicas[i];
            if r.svid_renew_at <= t {
                r.svid = X509::sign(
                    &r.state.intermediate,
                    &self.csr,
                    &server_id(&self.td),
                    self.p.svid_ttl,
                    t,
                );
                r.svid_renew_at = t + (r.svid.not_after - t) / 2;
            }
        }
        // Agents come back, install bundles, renew.
        for i in 0..self.agents.len() {
            if !self.agents[i].up && self.agents[i].up_at <= t {
                self.agent_up(i);
            }
            if !self.agents[i].up {
                continue;
            }
            let due = self.agents[i]
                .pending
                .as_ref()
                .is_some_and(|(due, _)| *due <= t);
            if due {
                let (_, bundle) = self.agents[i].pending.take().unwrap();
                self.agents[i].installed = bundle;
                self.ack(i);
            }
            if self.agents[i].renew_at <= t {
                self.renew(i);
            }
            self.follow_stream(i);
        }
        if self.operator_due() <= t {
            self.operate();
        }
        // A change the operator just wrote may be picked up at once by nobody (lags > 0);
        // agents follow their replica's bundle.
        for i in 0..self.agents.len() {
            if self.agents[i].up {
                self.follow_stream(i);
            }
        }
    }

    /// Schedules installing the bundle the agent's stream replica serves, if it differs.
    fn follow_stream(&mut self, i: usize) {
        let served = self.replicas[self.agents[i].stream].bundle.clone();
        let a = &mut self.agents[i];
        let target = a.pending.as_ref().map_or(&a.installed, |(_, b)| b);
        if target.version != served.version {
            a.pending = Some((self.t + a.delay, served));
        }
    }

    fn ack(&mut self, i: usize) {
        let a = &mut self.agents[i];
        let mut roots: Vec<String> =
            vec![a.node_svid.root().to_owned(), a.workload.root().to_owned()];
        roots.sort();
        roots.dedup();
        a.last_ack = AgentAck {
            node: a.node.clone(),
            version: a.installed.version.clone(),
            svid_roots: roots,
            acked_at: self.t,
        };
    }

    /// Renews the node and workload SVIDs from one replica or the other, over mTLS.
    fn renew(&mut self, i: usize) {
        let t = self.t;
        let (replica_index, move_stream) = {
            let a = &self.agents[i];
            ((a.renewals as usize + i) % 2, a.renewals % 10 == 9)
        };
        self.handshake(i, replica_index, "renewal");
        let r = &self.replicas[replica_index];
        let intermediate = r.state.intermediate.clone();
        let jwt_key = r.state.jwt.clone();
        let a = &mut self.agents[i];
        a.node_svid = X509::sign(&intermediate, &self.csr, &a.node_id, self.p.svid_ttl, t);
        a.workload = X509::sign(&intermediate, &self.csr, &a.workload_id, self.p.svid_ttl, t);
        a.jwt = mint(&jwt_key, &a.workload_id, self.p.jwt_ttl, t);
        let soonest = a
            .node_svid
            .not_after
            .min(a.workload.not_after)
            .min(a.jwt.exp);
        a.renew_at = t + (soonest - t) / 2;
        a.renewals += 1;
        // Now and then the bundle stream is reset and lands on the other replica.
        if move_stream {
            a.stream = 1 - a.stream;
        }
        self.ack(i);
    }

    /// An mTLS handshake between agent `i` and replica `r`: each must trust the other's SVID.
    fn handshake(&mut self, i: usize, r: usize, what: &str) {
        let (agent, replica) = (&self.agents[i], &self.replicas[r]);
        let mut found = Vec::new();
        if !agent.installed.roots.contains(replica.svid.root()) {
            found.push(format!(
                "{what}: {} does not trust {}'s SVID (root {})",
                agent.node,
                replica.name,
                short(replica.svid.root())
            ));
        }
        if !replica.bundle.roots.contains(agent.node_svid.root()) {
            found.push(format!(
                "{what}: {} does not trust {}'s node SVID",
                replica.name, agent.node
            ));
        }
        for f in found {
            self.violation(f);
        }
    }

    fn agent_up(&mut self, i: usize) {
        let t = self.t;
        // The agent starts from the bundle file kubelet projects from the ConfigMap.
        let file_roots: HashSet<String> = self
            .history
            .iter()
            .rev()
            .find(|(written, ..)| written + KUBELET_REFRESH <= t)
            .map(|(_, state, _)| state.roots.iter().map(|r| r.fp.clone()).collect())
            .unwrap_or_default();
        let a = &mut self.agents[i];
        a.up = true;
        a.stream = 1 - a.stream;
        let replica = &self.replicas[a.stream];
        if !file_roots.contains(replica.svid.root()) {
            let msg = format!(
                "{} restarting cannot verify {} from its bundle file",
                a.node, replica.name
            );
            self.violation(msg);
        }
        self.renew(i);
        self.follow_stream(i);
    }

    fn agent_down(&mut self, i: usize, down_for: i64) {
        let a = &mut self.agents[i];
        assert!(a.up, "{} is already down", a.node);
        a.up = false;
        a.pending = None;
        a.down_since = self.t;
        a.up_at = self.t + down_for;
        self.tally.outages += 1;
    }

    fn outage(&mut self, before: Before) {
        let due: Vec<Outage> = self
            .p
            .outages
            .iter()
            .filter(|o| o.before == before)
            .copied()
            .collect();
        for o in due {
            self.agent_down(o.agent, o.down_for);
        }
    }

    fn reports(&self) -> Vec<ReplicaReport> {
        let t = self.t;
        self.replicas
            .iter()
            .enumerate()
            .map(|(index, r)| {
                let agents = self
                    .agents
                    .iter()
                    .filter(|a| a.stream == index)
                    .filter(|a| {
                        a.up || (self.p.policy == ReportPolicy::KeepDisconnected
                            && t - a.down_since < self.p.longest_ttl())
                    })
                    .map(|a| a.last_ack.clone())
                    .collect();
                ReplicaReport {
                    replica: r.name.clone(),
                    updated_at: t,
                    bundle: r.bundle.summary.clone(),
                    signing: SigningSummary {
                        intermediate: r.state.intermediate.summary.clone(),
                        root: r.state.intermediate.root.fp.clone(),
                        jwt_key_id: r.state.jwt.key_id().to_owned(),
                        since: r.since,
                    },
                    longest_svid_ttl_secs: self.p.longest_ttl() as u64,
                    agents,
                    unlisted_agents: 0,
                    unacknowledging_agents: 0,
                }
            })
            .collect()
    }

    fn view(&self) -> ClusterView {
        ClusterView::new(self.reports(), self.t)
    }

    fn publish(&mut self, state: CaState) {
        let bundle = Bundle::of(&self.td, &state);
        self.history.push((self.t, Rc::new(state), bundle));
    }

    fn refused(&mut self, refusal: &Refusal) {
        *self
            .tally
            .refusals
            .entry((self.rotation_no, refusal.to_string()))
            .or_default() += 1;
    }

    /// What `lanyard ca` would do now: re-issue the intermediate, or move a rotation on.
    fn operate(&mut self) {
        let t = self.t;
        let state = (**self.current()).clone();
        self.expiry_warnings(&state);
        match state.rotation.clone() {
            None if t >= self.next_root => {
                may_add(None).unwrap();
                self.rotation_no += 1;
                self.outage(Before::Add(self.rotation_no));
                let root = Root::generate(&self.td, self.p.root_ttl, t);
                let rotation = RotationState {
                    phase: Phase::Added,
                    old_root: state.intermediate.root.fp.clone(),
                    new_root: root.fp.clone(),
                    added_at: t,
                    switched_at: None,
                };
                let mut next = state;
                next.roots.push(root);
                next.jwt_next = Some(Rc::new(JwtSigner::generate().unwrap().0));
                next.rotation = Some(rotation.clone());
                self.publish(next);
                // Nobody has the new root yet: a switch now must be refused, and so must a
                // second rotation.
                let err = may_switch(Some(&rotation), &self.view(), self.next_kid().as_deref())
                    .expect_err("a switch right after add must be refused");
                assert!(matches!(err, Refusal::NotPropagated { .. }), "{err:?}");
                self.refused(&err);
                self.tally.switch_refusals.push(err.message());
                assert_eq!(
                    may_add(Some(&rotation)),
                    Err(Refusal::RotationInProgress(Phase::Added))
                );
                self.tally.add_refused_in_progress += 1;
                self.poll_at = t + self.p.poll;
            }
            None => {
                // t >= next_intermediate.
                self.intermediate_no += 1;
                self.outage(Before::Intermediate(self.intermediate_no));
                let mut next = state;
                let root = next.intermediate.root.clone();
                next.intermediate = Intermediate::issue(&root, self.p.intermediate_ttl, t);
                self.publish(next);
                self.tally.intermediates += 1;
                self.next_intermediate = t + self.p.intermediate_every;
            }
            Some(rotation) if rotation.phase == Phase::Added => {
                let view = self.view();
                match may_switch(Some(&rotation), &view, self.next_kid().as_deref()) {
                    Err(err) => {
                        self.refused(&err);
                        self.tally.switch_refusals.push(err.message());
                        self.poll_at = t + self.p.poll;
                    }
                    Ok(()) => {
                        self.outage(Before::Switch(self.rotation_no));
                        let new_root = state
                            .roots
                            .iter()
                            .find(|r| r.fp == rotation.new_root)
                            .unwrap()
                            .clone();
                        let mut next = state;
                        next.intermediate =
                            Intermediate::issue(&new_root, self.p.intermediate_ttl, t);
                        next.jwt_previous = Some(next.jwt.clone());
                        next.jwt = next.jwt_next.take().expect("added publishes the next key");
                        let switched = RotationState {
                            phase: Phase::Switched,
                            switched_at: Some(t),
                            ..rotation
                        };
                        next.rotation = Some(switched.clone());
                        self.publish(next);
                        self.next_intermediate = t + self.p.intermediate_every;
                        let err = may_retire(Some(&switched), &self.view(), t)
                            .expect_err("a retire right after switch must be refused");
                        self.refused(&err);
                        self.poll_at = t + self.p.poll;
                    }
                }
            }
            Some(rotation) => {
                let view = self.view();
                match may_retire(Some(&rotation), &view, t) {
                    Err(err) => {
                        self.refused(&err);
                        self.poll_at = t + self.p.poll;
                    }
                    Ok(()) => {
                        self.outage(Before::Retire(self.rotation_no));
                        let mut next = state;
                        next.roots.retain(|r| r.fp == rotation.new_root);
                        next.jwt_previous = None;
                        next.rotation = None;
                        self.publish(next);
                        self.tally.rotations += 1;
                        self.next_root += self.p.root_every;
                        self.poll_at = i64::MAX;
                    }
                }
            }
        }
    }

    fn next_kid(&self) -> Option<String> {
        self.current()
            .jwt_next
            .as_ref()
            .map(|k| k.key_id().to_owned())
    }

    /// Nothing in use comes within 60 days of expiry: the schedule leaves room to act.
    fn expiry_warnings(&mut self, state: &CaState) {
        let mut certs = vec![("intermediate", &state.intermediate.summary)];
        certs.extend(state.roots.iter().map(|r| ("root", &r.summary)));
        let warnings = expiry::warnings(certs, self.t);
        if !warnings.is_empty() {
            self.violation(format!("expiry warnings: {warnings:?}"));
        }
    }

    fn violation(&mut self, what: String) {
        let t = self.t;
        if self.violations.len() < 50 {
            self.violations.push(format!(
                "day {:.3} (t={t}): {what}",
                (t - START) as f64 / DAY as f64
            ));
        }
    }

    /// At `self.t`: every workload holds valid SVIDs that every relying party trusts.
    fn check(&mut self, when: &str) {
        let t = self.t;
        self.tally.checks += 1;
        let mut found = Vec::new();
        let mut crypto = Vec::new();
        for a in &self.agents {
            // The workload runs whether or not its agent is up.
            if let Some(why) = a.workload.invalid_at(t) {
                found.push(format!("{when}: {}'s workload X.509-SVID {why}", a.node));
            }
            if t >= a.jwt.exp {
                found.push(format!("{when}: {}'s workload JWT-SVID expired", a.node));
            }
            for b in &self.agents {
                if !b.installed.roots.contains(a.workload.root()) {
                    found.push(format!(
                        "{when}: {}'s workload SVID (root {}) is not trusted by {} (bundle {})",
                        a.node,
                        short(a.workload.root()),
                        b.node,
                        b.installed.version
                    ));
                } else {
                    crypto.push(Crypto::X509(&a.workload, &b.installed, PeerRole::Client, 0));
                }
                if !b.installed.kids.contains(&a.jwt.kid) {
                    found.push(format!(
                        "{when}: {}'s JWT-SVID (kid {}) is not trusted by {}",
                        a.node, a.jwt.kid, b.node
                    ));
                } else if t < a.jwt.exp {
                    crypto.push(Crypto::Jwt(&a.jwt, &b.installed));
                }
            }
            if a.up {
                if let Some(why) = a.node_svid.invalid_at(t) {
                    found.push(format!("{when}: {}'s node SVID {why}", a.node));
                }
                for r in &self.replicas {
                    if !r.bundle.roots.contains(a.node_svid.root()) {
                        found.push(format!(
                            "{when}: {}'s node SVID is not trusted by {}",
                            a.node, r.name
                        ));
                    } else {
                        crypto.push(Crypto::X509(&a.node_svid, &r.bundle, PeerRole::Client, 1));
                    }
                }
            }
        }
        for r in &self.replicas {
            if let Some(why) = r.svid.invalid_at(t) {
                found.push(format!("{when}: {}'s SVID {why}", r.name));
            }
            for a in self.agents.iter().filter(|a| a.up) {
                if !a.installed.roots.contains(r.svid.root()) {
                    found.push(format!(
                        "{when}: {}'s SVID is not trusted by {}",
                        r.name, a.node
                    ));
                } else {
                    crypto.push(Crypto::X509(&r.svid, &a.installed, PeerRole::Server, 2));
                }
            }
        }
        // The real verifiers, once per (issuer, relying bundle): they must agree.
        let mut crypto_checks = 0;
        for c in crypto {
            let key = c.key();
            if self.verified.contains(&key) {
                continue;
            }
            if let Err(e) = c.verify(t) {
                found.push(format!(
                    "{when}: the verifier disagrees with the bookkeeping: {e}"
                ));
                continue;
            }
            self.verified.insert(key);
            crypto_checks += 1;
        }
        self.tally.crypto_checks += crypto_checks;
        for f in found {
            self.violation(f);
        }
    }
}

/// A check for the real verifier.
enum Crypto<'a> {
    /// The SVID, the relying party's bundle, the role it is verified in, and which SVID of
    /// the party it is (workload 0, node 1, server 2).
    X509(&'a X509, &'a Bundle, PeerRole, u8),
    Jwt(&'a Jwt, &'a Bundle),
}

impl Crypto<'_> {
    /// Which (issuer, relying bundle, role) this is: everything here lives as long as the
    /// simulation's history, so addresses name them.
    fn key(&self) -> (usize, usize, u8) {
        match self {
            Self::X509(svid, bundle, _, which) => (
                Rc::as_ptr(&svid.issuer) as usize,
                std::ptr::from_ref(*bundle) as usize,
                *which,
            ),
            Self::Jwt(token, bundle) => (
                Rc::as_ptr(&token.key) as usize,
                std::ptr::from_ref(*bundle) as usize,
                3,
            ),
        }
    }

    fn verify(&self, t: i64) -> Result<(), String> {
        match self {
            Self::X509(svid, bundle, role, _) => {
                verify_peer(&svid.svid.cert_chain, &bundle.set, at(t), *role)
                    .map(drop)
                    .map_err(|e| format!("verify_peer: {}", e.message()))
            }
            Self::Jwt(token, bundle) => jwt::validate(&token.token, AUDIENCE, &bundle.set, at(t))
                .map(drop)
                .map_err(|e| format!("jwt::validate: {}", e.message())),
        }
    }
}

fn mint(key: &Rc<JwtSigner>, id: &SpiffeId, ttl: i64, t: i64) -> Jwt {
    let token = key
        .mint(
            id,
            &[AUDIENCE.to_owned()],
            Duration::from_secs(ttl as u64),
            at(t),
        )
        .unwrap();
    Jwt {
        key: key.clone(),
        token,
        kid: key.key_id().to_owned(),
        exp: t + ttl,
    }
}

fn short(fp: &str) -> &str {
    lanyard_ca_lifecycle::report::short(fp)
}

#[test]
fn ten_years_of_rotations_never_leave_a_workload_without_a_trusted_svid() {
    let sim = Sim::new(Params::ten_years()).run();
    assert!(
        sim.violations.is_empty(),
        "{} violations, first ones:\n{}",
        sim.violations.len(),
        sim.violations.join("\n")
    );
    let tally = &sim.tally;
    // Roots at years 2, 4, 6, 8; about 120 intermediates (fewer: each switch issues one).
    assert_eq!(tally.rotations, 4, "{tally:?}");
    assert!(tally.intermediates >= 110, "{tally:?}");
    for rotation in 1..=4 {
        // A switch right after add, and a retire before the old SVIDs ran out, were refused.
        assert!(
            tally.refusals.get(&(rotation, "not_propagated".into())) >= Some(&1),
            "rotation {rotation}: {tally:?}"
        );
        assert!(
            tally
                .refusals
                .get(&(rotation, "old_svids_unexpired".into()))
                >= Some(&1),
            "rotation {rotation}: {tally:?}"
        );
    }
    assert_eq!(tally.add_refused_in_progress, 4);
    assert_eq!(tally.outages as usize, sim.p.outages.len(), "{tally:?}");
    assert!(
        tally.switch_refusals[0]
            .contains("refusing to switch: the new root has reached 0/2 replicas"),
        "{}",
        tally.switch_refusals[0]
    );
    // Every (intermediate or JWT key, bundle) pair went through the real verifiers.
    assert!(tally.crypto_checks > 2 * tally.intermediates, "{tally:?}");
    // The end: one root (the fourth new one), served everywhere, installed everywhere.
    let last = sim.current().clone();
    assert_eq!(last.roots.len(), 1);
    assert!(last.rotation.is_none());
    for r in &sim.replicas {
        assert_eq!(r.bundle.version, sim.history.last().unwrap().2.version);
    }
    for a in &sim.agents {
        assert_eq!(
            a.installed.version,
            sim.history.last().unwrap().2.version,
            "{}",
            a.node
        );
    }
    eprintln!("{tally:?}");
}

/// A rotation that starts while an agent is down. Replicas list only connected agents, so
/// the switch goes ahead while it is away, and its workloads (still running, on the bundle they
/// had) cannot verify the SVIDs their peers renew under the new root. Listing a disconnected
/// agent's last acknowledgement for the longest SVID lifetime makes the switch wait for it.
#[test]
fn an_agent_down_when_a_root_is_added() {
    let params = |policy| Params {
        end_after: Some(9 * DAY),
        root_every: 5 * DAY,
        policy,
        outages: vec![Outage {
            agent: 2,
            before: Before::Add(1),
            down_for: 10 * HOUR,
        }],
        ..Params::ten_years()
    };

    // The contract today: the checker finds the gap.
    let sim = Sim::new(params(ReportPolicy::ConnectedOnly)).run();
    assert_eq!(sim.tally.rotations, 1, "{:?}", sim.tally);
    assert!(
        sim.violations
            .iter()
            .any(|v| v.contains("is not trusted by node-2")),
        "expected node-2 to miss the new root: {:#?}",
        sim.violations
    );

    // Disconnected agents listed for the longest SVID lifetime: the switch waits for node-2.
    let sim = Sim::new(params(ReportPolicy::KeepDisconnected)).run();
    assert!(sim.violations.is_empty(), "{}", sim.violations.join("\n"));
    assert_eq!(sim.tally.rotations, 1, "{:?}", sim.tally);
    let waited = sim
        .tally
        .switch_refusals
        .iter()
        .filter(|m| m.contains("still waiting for: agent on node-2"))
        .count();
    // Polled every 5 minutes for the 10 hours node-2 was down.
    assert!(
        waited >= 100,
        "{waited}: {:?}",
        sim.tally.switch_refusals.last()
    );
}
