//! Which bundle each connected agent acknowledged, for this replica's CA report and metrics.
//!
//! An agent on `SyncBundle` registers for as long as its stream lives
//! ([`BundleAcks::register_sync`]); each `BundleAck` it sends, once checked
//! ([`ValidAck::parse`]), replaces what is recorded for its node. An agent on the older
//! `WatchBundle` registers too ([`BundleAcks::register_watch`]) and is counted as
//! *unacknowledging*, as is an agent on `SyncBundle` that has not acknowledged yet: neither is
//! ever counted as having received a bundle. Dropping a registration (the stream ended)
//! removes the agent from the connected ones.
//!
//! A departed agent's last acknowledgement is still reported (not counted in the metrics,
//! which are about connected agents) for the longest SVID lifetime the server issues
//! ([`BundleAcks::remembering_departed`]): its node's workloads keep serving with the bundle it
//! last installed until their SVIDs run out, so a rotation must wait for it, or for that long.
//! The ten-year simulation (ca-lifecycle/tests/ten_years.rs) shows the gap this closes: an
//! agent down across `add` was not waited for, and after `switch` its workloads refused peers
//! renewed under the new root. It returns (a new stream) or the time passes, whichever first.
//!
//! Keyed by node: an agent that reconnects before its old stream is gone holds two
//! registrations for one node, and is removed when the last one ends. Memory is bounded by the
//! connected agents (each holds a valid node SVID) times one bounded acknowledgement.
//! Counts per acknowledged version are kept as acknowledgements arrive, so the metrics cost
//! nothing per agent.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use lanyard_ca_lifecycle::report::AgentAck;
use lanyard_proto::identity::v1 as wire;
use tokio::sync::watch;

/// Most root fingerprints in one acknowledgement (a rotation has two roots; more than a few is
/// a broken or hostile agent).
pub const MAX_SVID_ROOTS: usize = 64;
/// Hex digits of a bundle version ([`lanyard_svid::TrustBundle::version`]).
pub const VERSION_HEX_LEN: usize = 16;
/// Hex digits of a certificate fingerprint ([`lanyard_svid::bundle::certificate_fingerprint`]).
pub const FINGERPRINT_HEX_LEN: usize = 64;

/// Why an acknowledgement was ignored. `Display` is a metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckRefusal {
    #[error("bad_version")]
    BadVersion,
    #[error("too_many_roots")]
    TooManyRoots(usize),
    #[error("bad_root_fingerprint")]
    BadRootFingerprint,
}

impl AckRefusal {
    /// A human explanation (never echoes the agent's bytes, which may be anything).
    pub fn message(&self) -> String {
        match self {
            Self::BadVersion => {
                format!("the version is not {VERSION_HEX_LEN} hex digits (TrustBundle::version)")
            }
            Self::TooManyRoots(n) => {
                format!("{n} svid_roots; at most {MAX_SVID_ROOTS} are accepted")
            }
            Self::BadRootFingerprint => format!(
                "an svid_roots entry is not {FINGERPRINT_HEX_LEN} hex digits (a certificate's SHA-256)"
            ),
        }
    }
}

/// A checked acknowledgement: a 16-hex-digit version and at most [`MAX_SVID_ROOTS`] distinct
/// 64-hex-digit fingerprints, all lowercase, sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidAck {
    pub version: String,
    pub svid_roots: Vec<String>,
}

impl ValidAck {
    pub fn parse(ack: &wire::BundleAck) -> Result<Self, AckRefusal> {
        let version = lower_hex(&ack.version, VERSION_HEX_LEN).ok_or(AckRefusal::BadVersion)?;
        if ack.svid_roots.len() > MAX_SVID_ROOTS {
            return Err(AckRefusal::TooManyRoots(ack.svid_roots.len()));
        }
        let mut svid_roots = ack
            .svid_roots
            .iter()
            .map(|r| lower_hex(r, FINGERPRINT_HEX_LEN).ok_or(AckRefusal::BadRootFingerprint))
            .collect::<Result<Vec<_>, _>>()?;
        svid_roots.sort_unstable();
        svid_roots.dedup();
        Ok(Self {
            version,
            svid_roots,
        })
    }
}

/// `text` lowercased if it is exactly `len` ASCII hex digits.
fn lower_hex(text: &str, len: usize) -> Option<String> {
    (text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| text.to_ascii_lowercase())
}

/// One node's agent on `SyncBundle`.
struct Syncing {
    /// Live `SyncBundle` streams of this node (normally one).
    streams: u32,
    ack: Option<(ValidAck, SystemTime)>,
}

#[derive(Default)]
struct State {
    syncing: HashMap<String, Syncing>,
    /// Live `WatchBundle` streams per node.
    watching: HashMap<String, u32>,
    /// Acknowledged agents per version.
    by_version: HashMap<String, u64>,
    /// Agents whose streams ended: the last acknowledgement, when it came, and until when it
    /// is still reported.
    departed: HashMap<String, (ValidAck, SystemTime, SystemTime)>,
}

impl State {
    fn count(&mut self, version: &str, delta: i64) {
        let count = self.by_version.entry(version.to_owned()).or_default();
        *count = count.saturating_add_signed(delta);
        if *count == 0 {
            self.by_version.remove(version);
        }
    }
}

/// Every connected agent's latest acknowledgement. Shared behind an `Arc`.
pub struct BundleAcks {
    state: Mutex<State>,
    /// Bumped on every change (a registration, an acknowledgement, a stream ending).
    changes: watch::Sender<u64>,
    /// How long a departed agent's last acknowledgement is still reported.
    keep_departed: Duration,
}

impl Default for BundleAcks {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            changes: watch::channel(0).0,
            keep_departed: Duration::ZERO,
        }
    }
}

/// What [`BundleAcks::snapshot`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcksSnapshot {
    /// Acknowledged agents, by node name.
    pub agents: Vec<AgentAck>,
    /// Acknowledged agents beyond the listing cap.
    pub unlisted: u64,
    /// Agents on `WatchBundle`, and agents on `SyncBundle` that have not acknowledged yet.
    pub unacknowledging: u64,
}

/// How many agents are on which bundle, for the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckCounts {
    /// Acknowledged agents per bundle version.
    pub by_version: BTreeMap<String, u64>,
    pub unacknowledging: u64,
}

impl BundleAcks {
    /// Connected agents only: a departed agent is forgotten at once.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A departed agent's last acknowledgement is reported for `keep` (the longest SVID
    /// lifetime the server issues) after its stream ends, or until it connects again.
    pub fn remembering_departed(keep: Duration) -> Arc<Self> {
        Arc::new(Self {
            keep_departed: keep,
            ..Self::default()
        })
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("bundle acks lock")
    }

    /// Changes, to wake the report writer and metrics (the value is a change counter).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// An agent on `node` opened a `SyncBundle` stream; it is listed until the returned
    /// registration is dropped.
    pub fn register_sync(self: &Arc<Self>, node: &str) -> SyncRegistration {
        let mut state = self.lock();
        state.departed.remove(node);
        state
            .syncing
            .entry(node.to_owned())
            .or_insert(Syncing {
                streams: 0,
                ack: None,
            })
            .streams += 1;
        drop(state);
        self.changed();
        SyncRegistration {
            acks: self.clone(),
            node: node.to_owned(),
        }
    }

    /// An agent on `node` opened a `WatchBundle` stream (it never acknowledges).
    pub fn register_watch(self: &Arc<Self>, node: &str) -> WatchRegistration {
        *self.lock().watching.entry(node.to_owned()).or_default() += 1;
        self.changed();
        WatchRegistration {
            acks: self.clone(),
            node: node.to_owned(),
        }
    }

    /// Every acknowledged agent by node, connected or departed less than the retention ago at
    /// `now` (at most `max_listed`; the rest counted in `unlisted`), and how many do not
    /// acknowledge.
    pub fn snapshot(&self, max_listed: usize, now: SystemTime) -> AcksSnapshot {
        let mut state = self.lock();
        state.departed.retain(|_, (_, _, until)| *until > now);
        let listed = |node: &String, ack: &ValidAck, at: &SystemTime| AgentAck {
            node: node.clone(),
            version: ack.version.clone(),
            svid_roots: ack.svid_roots.clone(),
            acked_at: lanyard_ca_lifecycle::unix_seconds(*at),
        };
        let mut agents: Vec<AgentAck> = state
            .syncing
            .iter()
            .filter_map(|(node, s)| s.ack.as_ref().map(|(ack, at)| listed(node, ack, at)))
            .chain(
                state
                    .departed
                    .iter()
                    .map(|(node, (ack, at, _))| listed(node, ack, at)),
            )
            .collect();
        let unacknowledging = unacknowledging(&state);
        drop(state);
        agents.sort_unstable_by(|a, b| a.node.cmp(&b.node));
        let unlisted = agents.len().saturating_sub(max_listed) as u64;
        agents.truncate(max_listed);
        AcksSnapshot {
            agents,
            unlisted,
            unacknowledging,
        }
    }

    /// Agents per acknowledged version, and the unacknowledging ones.
    pub fn counts(&self) -> AckCounts {
        let state = self.lock();
        AckCounts {
            by_version: state
                .by_version
                .iter()
                .map(|(v, n)| (v.clone(), *n))
                .collect(),
            unacknowledging: unacknowledging(&state),
        }
    }
}

/// Agents on `WatchBundle` (a node also acknowledging on `SyncBundle` is counted there) and
/// agents on `SyncBundle` without an acknowledgement yet.
fn unacknowledging(state: &State) -> u64 {
    let waiting = state.syncing.values().filter(|s| s.ack.is_none()).count();
    let watching = state
        .watching
        .keys()
        .filter(|node| !state.syncing.contains_key(*node))
        .count();
    (waiting + watching) as u64
}

/// A live `SyncBundle` stream; dropping it (the stream ended) forgets the agent unless it has
/// another stream open.
pub struct SyncRegistration {
    acks: Arc<BundleAcks>,
    node: String,
}

impl SyncRegistration {
    /// Records `ack`, received at `at`, as this node's latest.
    pub fn record(&self, ack: ValidAck, at: SystemTime) {
        {
            let mut guard = self.acks.lock();
            let state = &mut *guard;
            let Some(entry) = state.syncing.get_mut(&self.node) else {
                return;
            };
            let new_version = ack.version.clone();
            if let Some((old, _)) = entry.ack.replace((ack, at)) {
                state.count(&old.version, -1);
            }
            state.count(&new_version, 1);
        }
        self.acks.changed();
    }

    pub fn node(&self) -> &str {
        &self.node
    }
}

impl Drop for SyncRegistration {
    fn drop(&mut self) {
        {
            let mut guard = self.acks.lock();
            let state = &mut *guard;
            let Some(entry) = state.syncing.get_mut(&self.node) else {
                return;
            };
            entry.streams = entry.streams.saturating_sub(1);
            if entry.streams == 0
                && let Some(Syncing {
                    ack: Some((ack, acked_at)),
                    ..
                }) = state.syncing.remove(&self.node)
            {
                state.count(&ack.version, -1);
                if !self.acks.keep_departed.is_zero() {
                    let until = SystemTime::now() + self.acks.keep_departed;
                    state
                        .departed
                        .insert(self.node.clone(), (ack, acked_at, until));
                }
            }
        }
        self.acks.changed();
    }
}

/// A live `WatchBundle` stream.
pub struct WatchRegistration {
    acks: Arc<BundleAcks>,
    node: String,
}

impl Drop for WatchRegistration {
    fn drop(&mut self) {
        let mut state = self.acks.lock();
        if let Some(n) = state.watching.get_mut(&self.node) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.watching.remove(&self.node);
            }
        }
        drop(state);
        self.acks.changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "0123456789abcdef";
    const V2: &str = "fedcba9876543210";

    fn fp(c: char) -> String {
        c.to_string().repeat(FINGERPRINT_HEX_LEN)
    }

    fn ack(version: &str, roots: &[String]) -> wire::BundleAck {
        wire::BundleAck {
            version: version.into(),
            svid_roots: roots.to_vec(),
        }
    }

    #[test]
    fn acknowledgements_are_checked() {
        let ok = ValidAck::parse(&ack("0123456789ABCDEF", &[fp('B'), fp('a'), fp('b')])).unwrap();
        assert_eq!(ok.version, V1, "lowercased");
        assert_eq!(
            ok.svid_roots,
            [fp('a'), fp('b')],
            "sorted, duplicates dropped"
        );
        assert!(
            ValidAck::parse(&ack(V1, &[]))
                .unwrap()
                .svid_roots
                .is_empty()
        );
        for bad in [
            "",
            "0123",
            "0123456789abcdeg",
            "0123456789abcdef0",
            "é123456789abcde",
        ] {
            assert_eq!(
                ValidAck::parse(&ack(bad, &[])),
                Err(AckRefusal::BadVersion),
                "{bad:?}"
            );
        }
        let many: Vec<String> = (0..=MAX_SVID_ROOTS).map(|_| fp('c')).collect();
        assert_eq!(
            ValidAck::parse(&ack(V1, &many)),
            Err(AckRefusal::TooManyRoots(MAX_SVID_ROOTS + 1))
        );
        assert!(ValidAck::parse(&ack(V1, &many[..MAX_SVID_ROOTS])).is_ok());
        for bad in [fp('g'), "ab".into(), format!("{}0", fp('a'))] {
            assert_eq!(
                ValidAck::parse(&ack(V1, &[bad])),
                Err(AckRefusal::BadRootFingerprint)
            );
        }
        assert!(AckRefusal::TooManyRoots(65).message().contains("64"));
    }

    #[test]
    fn agents_are_listed_while_their_stream_lives() {
        let acks = BundleAcks::new();
        let mut changes = acks.subscribe();
        changes.borrow_and_update();
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000);

        let a = acks.register_sync("node-a");
        assert!(changes.has_changed().unwrap());
        let snap = acks.snapshot(10, SystemTime::now());
        assert!(snap.agents.is_empty());
        assert_eq!(
            (snap.unacknowledging, snap.unlisted),
            (1, 0),
            "not acknowledged yet"
        );

        a.record(ValidAck::parse(&ack(V1, &[fp('a')])).unwrap(), at);
        let b = acks.register_sync("node-b");
        b.record(ValidAck::parse(&ack(V2, &[])).unwrap(), at);
        let w = acks.register_watch("node-c");
        let snap = acks.snapshot(10, SystemTime::now());
        assert_eq!(
            snap.agents,
            [
                AgentAck {
                    node: "node-a".into(),
                    version: V1.into(),
                    svid_roots: vec![fp('a')],
                    acked_at: 1000,
                },
                AgentAck {
                    node: "node-b".into(),
                    version: V2.into(),
                    svid_roots: vec![],
                    acked_at: 1000,
                },
            ]
        );
        assert_eq!(snap.unacknowledging, 1, "the WatchBundle agent");
        assert_eq!(
            acks.counts().by_version,
            [(V1.to_owned(), 1), (V2.to_owned(), 1)].into()
        );

        // A newer acknowledgement replaces the node's previous one.
        a.record(ValidAck::parse(&ack(V2, &[])).unwrap(), at);
        assert_eq!(acks.counts().by_version, [(V2.to_owned(), 2)].into());

        // The listing cap: the rest are counted.
        let snap = acks.snapshot(1, SystemTime::now());
        assert_eq!((snap.agents.len(), snap.unlisted), (1, 1));

        drop(a);
        drop(w);
        let snap = acks.snapshot(10, SystemTime::now());
        assert_eq!(snap.agents.len(), 1);
        assert_eq!(snap.unacknowledging, 0);
        assert_eq!(acks.counts().by_version, [(V2.to_owned(), 1)].into());
        drop(b);
        assert_eq!(acks.counts(), AckCounts::default());
    }

    #[test]
    fn a_reconnected_agent_stays_until_its_last_stream_ends() {
        let acks = BundleAcks::new();
        let now = SystemTime::now();
        let old = acks.register_sync("node-a");
        old.record(ValidAck::parse(&ack(V1, &[])).unwrap(), now);
        let new = acks.register_sync("node-a");
        new.record(ValidAck::parse(&ack(V2, &[])).unwrap(), now);
        drop(old);
        let snap = acks.snapshot(10, SystemTime::now());
        assert_eq!(snap.agents.len(), 1);
        assert_eq!(snap.agents[0].version, V2);
        // A node on both streams is counted as acknowledging only.
        let watch = acks.register_watch("node-a");
        assert_eq!(acks.counts().unacknowledging, 0);
        drop(new);
        assert_eq!(acks.counts().unacknowledging, 1);
        assert!(acks.snapshot(10, SystemTime::now()).agents.is_empty());
        drop(watch);
        assert_eq!(acks.counts(), AckCounts::default());
    }

    #[test]
    fn a_departed_agent_is_reported_for_the_retention_or_until_it_returns() {
        let keep = Duration::from_secs(3600);
        let acks = BundleAcks::remembering_departed(keep);
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let a = acks.register_sync("node-a");
        a.record(ValidAck::parse(&ack(V1, &[fp('a')])).unwrap(), at);
        drop(a);
        let left = SystemTime::now();

        // Still listed with its last acknowledgement, but no longer counted as connected.
        let snap = acks.snapshot(10, left);
        assert_eq!(snap.agents.len(), 1);
        assert_eq!(snap.agents[0].version, V1);
        assert_eq!(snap.agents[0].acked_at, 1000);
        assert_eq!(acks.counts(), AckCounts::default());
        assert!(
            acks.snapshot(10, left + keep + Duration::from_secs(1))
                .agents
                .is_empty(),
            "forgotten once its workloads' SVIDs have run out"
        );

        // Gone for good once pruned; a returning agent replaces what was remembered.
        let a = acks.register_sync("node-a");
        drop(a);
        let back = acks.register_sync("node-a");
        let snap = acks.snapshot(10, SystemTime::now());
        assert!(
            snap.agents.is_empty(),
            "the returned agent has not acknowledged yet: {snap:?}"
        );
        assert_eq!(snap.unacknowledging, 1);
        back.record(ValidAck::parse(&ack(V2, &[])).unwrap(), at);
        assert_eq!(acks.snapshot(10, SystemTime::now()).agents[0].version, V2);
    }
}
