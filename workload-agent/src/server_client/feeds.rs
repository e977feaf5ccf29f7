//! The server's two feeds, followed for as long as the agent runs; a stream that ends or
//! fails is reopened with backoff (reset once a reopened stream delivers again).
//!
//! - The bundle: [`BundleFeed`] opens `SyncBundle`, installs every bundle it receives (the
//!   caller's `on_bundle`), then acknowledges it with a `BundleAck` ([`AckSource`]: the
//!   installed bundle's version and the roots the held SVIDs chain to), and acknowledges
//!   again whenever that changes (SVIDs renewed under another root, dropped, expired), never
//!   twice the same in a row after a change, and at most one a second (what changes meanwhile
//!   is coalesced into the next). A server that answers `Unimplemented` predates `SyncBundle`:
//!   that stream is `WatchBundle` instead (said once in the log), with no acknowledgements;
//!   `SyncBundle` is tried again at every reopen, so an upgraded server gets them. Each
//!   message's federated bundles replace the federated set ([`FederatedFeed`]); they take no
//!   part in the acknowledgements, which are about our own bundle.
//! - The node: [`spawn_node_feed`] follows `WatchNode`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use lanyard_proto::identity::v1 as wire;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::WatchStream;
use tonic::{Code, Status, Streaming};

use super::federated::FederatedFeed;
use super::{BundleFeedApi, BundleStream, ServerClient, ServerError};
use crate::manager::backoff::Backoff;
use crate::metrics::AgentMetrics;

/// First and longest wait before reopening a feed.
const REOPEN_INITIAL: Duration = Duration::from_millis(500);
const REOPEN_MAX: Duration = Duration::from_secs(30);
/// Least time between two acknowledgements on one stream: the server takes 1 a second per
/// node (after a burst of 16) and ends the stream beyond. What changes meanwhile is
/// coalesced into the next one.
const ACK_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// What the bundle feed acknowledges: the agent's state at the time of asking.
pub trait AckSource: Send + Sync + 'static {
    /// The acknowledgement of the bundle installed now and the SVIDs held now; `None` while
    /// no bundle of the agent's trust domain is installed.
    fn current(&self) -> Option<wire::BundleAck>;
}

/// Which bundle stream is followed. `Display` is its log label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleStreamKind {
    /// `SyncBundle`: bundles in, acknowledgements out.
    Sync,
    /// `WatchBundle`: bundles in only (a server that predates `SyncBundle`).
    Watch,
}

impl std::fmt::Display for BundleStreamKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Sync => "sync_bundle",
            Self::Watch => "watch_bundle",
        })
    }
}

/// Follows the server's bundle, acknowledging what is installed.
pub struct BundleFeed {
    pub api: Arc<dyn BundleFeedApi>,
    pub acks: Arc<dyn AckSource>,
    /// Yields whenever what `acks` reads may have changed (an SVID received, dropped or
    /// expired, a bundle installed); bursts may be coalesced.
    pub changes: BoxStream<'static, ()>,
    pub metrics: Arc<AgentMetrics>,
    /// Where each message's federated bundles go (the Workload API's set, never the TLS
    /// store).
    pub federated: FederatedFeed,
}

impl BundleFeed {
    /// Runs [`BundleFeed::run`] on its own task.
    pub fn spawn(
        self,
        on_bundle: impl Fn(&wire::Bundle) + Send + Sync + 'static,
    ) -> JoinHandle<()> {
        tokio::spawn(self.run(on_bundle))
    }

    /// Follows the bundle forever, calling `on_bundle` (which installs it) with each one.
    pub async fn run(mut self, on_bundle: impl Fn(&wire::Bundle)) {
        let mut backoff = Backoff::new(REOPEN_INITIAL, REOPEN_MAX);
        let mut fell_back = false;
        loop {
            let (acker, acks) = watch::channel(None::<wire::BundleAck>);
            let outbound = WatchStream::from_changes(acks)
                .filter_map(|ack| async move { ack })
                .boxed();
            let opened = match self.api.open_sync_bundle(outbound).await {
                Ok(stream) => {
                    if fell_back {
                        tracing::info!("the server offers SyncBundle now; acknowledging bundles");
                        fell_back = false;
                    }
                    Some((stream, Some(acker)))
                }
                Err(status) if status.code() == Code::Unimplemented => {
                    if !fell_back {
                        tracing::warn!(
                            "the server does not offer SyncBundle (it predates it): following WatchBundle; this agent's bundle acknowledgements are missing from `lanyard ca status` until the server is upgraded"
                        );
                        fell_back = true;
                    }
                    self.metrics.bundle_unacknowledged();
                    match self.api.open_watch_bundle().await {
                        Ok(stream) => Some((stream, None)),
                        Err(status) => {
                            cannot_open(BundleStreamKind::Watch, &status);
                            None
                        }
                    }
                }
                Err(status) => {
                    cannot_open(BundleStreamKind::Sync, &status);
                    None
                }
            };
            if let Some((stream, acker)) = opened {
                self.follow(stream, acker, &on_bundle, &mut backoff).await;
            }
            tokio::time::sleep(backoff.fail()).await;
        }
    }

    /// Follows one opened stream until it ends or fails.
    async fn follow(
        &mut self,
        mut stream: BundleStream,
        acker: Option<watch::Sender<Option<wire::BundleAck>>>,
        on_bundle: &impl Fn(&wire::Bundle),
        backoff: &mut Backoff,
    ) {
        let kind = match acker {
            Some(_) => BundleStreamKind::Sync,
            None => BundleStreamKind::Watch,
        };
        tracing::debug!(feed = %kind, "server feed open");
        let mut acked = Acked::default();
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(Ok(msg)) => {
                        backoff.reset();
                        if let Some(bundle) = &msg.bundle {
                            on_bundle(bundle);
                        }
                        // The whole set every time: a server without federation sends none,
                        // which drops what an earlier one sent.
                        self.federated.apply(&msg.federated_bundles);
                        acked.owed = Some(Owed::AfterBundle);
                    }
                    Some(Err(status)) => {
                        let e = ServerError::from_status(&status);
                        tracing::warn!(feed = %kind, reason = %e, "server feed failed: {}", e.message());
                        return;
                    }
                    None => {
                        tracing::info!(feed = %kind, "server feed ended; reopening");
                        return;
                    }
                },
                // Only once this stream's first bundle is acknowledged: until then there is
                // nothing the server asked about.
                Some(()) = self.changes.next(), if acker.is_some() && acked.last.is_some() => {
                    acked.owed.get_or_insert(Owed::IfChanged);
                }
                () = tokio::time::sleep_until(acked.not_before), if acked.owed.is_some() => {}
            }
            if let Some(acker) = &acker {
                self.ack(acker, &mut acked);
            }
        }
    }

    /// Sends the acknowledgement owed, if any, once [`ACK_MIN_INTERVAL`] has passed since the
    /// last one; after a bundle always, after a change only when it differs from the last.
    fn ack(&self, acker: &watch::Sender<Option<wire::BundleAck>>, acked: &mut Acked) {
        let Some(owed) = acked.owed else {
            return;
        };
        let now = Instant::now();
        if now < acked.not_before {
            return;
        }
        acked.owed = None;
        let Some(ack) = self.acks.current() else {
            return;
        };
        let changed = acked.last.as_ref() != Some(&ack);
        if owed == Owed::IfChanged && !changed {
            return;
        }
        if changed {
            tracing::info!(
                version = %ack.version,
                svid_roots = ?ack.svid_roots,
                "acknowledging the trust bundle to the server"
            );
        }
        self.metrics.bundle_acknowledged(&ack.version);
        acked.last = Some(ack.clone());
        acked.not_before = now + ACK_MIN_INTERVAL;
        acker.send_replace(Some(ack));
    }
}

/// Why an acknowledgement is owed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owed {
    /// A bundle arrived: the server waits for this one.
    AfterBundle,
    /// What is held may have changed: sent only if the acknowledgement differs.
    IfChanged,
}

/// One stream's acknowledgements.
struct Acked {
    /// The last one sent.
    last: Option<wire::BundleAck>,
    owed: Option<Owed>,
    /// No acknowledgement before (the server limits their rate).
    not_before: Instant,
}

impl Default for Acked {
    fn default() -> Self {
        Self {
            last: None,
            owed: None,
            not_before: Instant::now(),
        }
    }
}

fn cannot_open(kind: BundleStreamKind, status: &Status) {
    let e = ServerError::from_status(status);
    tracing::warn!(feed = %kind, reason = %e, "cannot open server feed: {}", e.message());
}

/// Follows `WatchNode`, calling `on_view` with each view of this node.
pub fn spawn_node_feed(
    client: Arc<ServerClient>,
    on_view: impl Fn(&wire::WatchNodeResponse) + Send + Sync + 'static,
) -> JoinHandle<()> {
    tokio::spawn(follow(
        "node",
        move || {
            let client = client.clone();
            async move { client.watch_node().await }
        },
        move |msg: wire::WatchNodeResponse| on_view(&msg),
    ))
}

/// Opens a stream, forwards its messages, and reopens it with backoff, forever.
pub async fn follow<T, Open, Fut>(feed: &'static str, open: Open, on_message: impl Fn(T))
where
    Open: Fn() -> Fut,
    Fut: Future<Output = Result<Streaming<T>, ServerError>>,
{
    let mut backoff = Backoff::new(REOPEN_INITIAL, REOPEN_MAX);
    loop {
        match open().await {
            Err(e) => {
                tracing::warn!(feed, reason = %e, "cannot open server feed: {}", e.message());
            }
            Ok(mut stream) => {
                tracing::debug!(feed, "server feed open");
                loop {
                    match stream.message().await {
                        Ok(Some(msg)) => {
                            backoff.reset();
                            on_message(msg);
                        }
                        Ok(None) => {
                            tracing::info!(feed, "server feed ended; reopening");
                            break;
                        }
                        Err(status) => {
                            let e = ServerError::from_status(&status);
                            tracing::warn!(feed, reason = %e, "server feed failed: {}", e.message());
                            break;
                        }
                    }
                }
            }
        }
        tokio::time::sleep(backoff.fail()).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::mpsc;
    use tokio::time::timeout;
    use tokio_stream::wrappers::UnboundedReceiverStream;

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(10);

    /// A server's bundle half: `SyncBundle` (or `Unimplemented`) and `WatchBundle`, each open
    /// stream fed by the test; the acks it receives are forwarded to the test.
    struct FakeApi {
        offers_sync: bool,
        opened: mpsc::UnboundedSender<(
            BundleStreamKind,
            mpsc::UnboundedSender<Result<wire::WatchBundleResponse, Status>>,
        )>,
        acks: mpsc::UnboundedSender<(Instant, wire::BundleAck)>,
    }

    impl FakeApi {
        fn stream(&self, kind: BundleStreamKind) -> BundleStream {
            let (tx, rx) = mpsc::unbounded_channel();
            self.opened.send((kind, tx)).unwrap();
            UnboundedReceiverStream::new(rx).boxed()
        }
    }

    #[tonic::async_trait]
    impl BundleFeedApi for FakeApi {
        async fn open_sync_bundle(
            &self,
            mut acks: BoxStream<'static, wire::BundleAck>,
        ) -> Result<BundleStream, Status> {
            if !self.offers_sync {
                return Err(Status::unimplemented("unknown method SyncBundle"));
            }
            let forward = self.acks.clone();
            tokio::spawn(async move {
                while let Some(ack) = acks.next().await {
                    let _ = forward.send((Instant::now(), ack));
                }
            });
            Ok(self.stream(BundleStreamKind::Sync))
        }

        async fn open_watch_bundle(&self) -> Result<BundleStream, Status> {
            Ok(self.stream(BundleStreamKind::Watch))
        }
    }

    /// The agent's state as the test sets it.
    #[derive(Default)]
    struct FakeState(Mutex<Option<wire::BundleAck>>);

    impl AckSource for FakeState {
        fn current(&self) -> Option<wire::BundleAck> {
            self.0.lock().unwrap().clone()
        }
    }

    fn ack(version: &str, roots: &[&str]) -> wire::BundleAck {
        wire::BundleAck {
            version: version.into(),
            svid_roots: roots.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn bundle(sequence: u64) -> Result<wire::WatchBundleResponse, Status> {
        Ok(wire::WatchBundleResponse {
            bundle: Some(wire::Bundle {
                trust_domain: "example.org".into(),
                sequence,
                ..Default::default()
            }),
            federated_bundles: Vec::new(),
        })
    }

    struct Harness {
        opened: mpsc::UnboundedReceiver<(
            BundleStreamKind,
            mpsc::UnboundedSender<Result<wire::WatchBundleResponse, Status>>,
        )>,
        acks: mpsc::UnboundedReceiver<(Instant, wire::BundleAck)>,
        installed: mpsc::UnboundedReceiver<u64>,
        /// The federated sets installed, as their trust domains.
        federated: mpsc::UnboundedReceiver<Vec<String>>,
        state: Arc<FakeState>,
        changes: watch::Sender<u64>,
        metrics: Arc<AgentMetrics>,
        _task: JoinHandle<()>,
    }

    impl Harness {
        fn start(offers_sync: bool) -> Self {
            let (opened_tx, opened) = mpsc::unbounded_channel();
            let (acks_tx, acks) = mpsc::unbounded_channel();
            let (installed_tx, installed) = mpsc::unbounded_channel();
            let (federated_tx, federated) = mpsc::unbounded_channel();
            let state = Arc::new(FakeState::default());
            let (changes, changes_rx) = watch::channel(0u64);
            let metrics = AgentMetrics::unregistered();
            let feed = BundleFeed {
                api: Arc::new(FakeApi {
                    offers_sync,
                    opened: opened_tx,
                    acks: acks_tx,
                }),
                acks: state.clone(),
                changes: WatchStream::from_changes(changes_rx).map(|_| ()).boxed(),
                metrics: metrics.clone(),
                federated: FederatedFeed::new(
                    lanyard_svid::TrustDomain::new("example.org").unwrap(),
                    move |set: lanyard_svid::BundleSet| {
                        let domains = set.iter().map(|b| b.trust_domain().to_string());
                        let _ = federated_tx.send(domains.collect());
                    },
                ),
            };
            let task = feed.spawn(move |b: &wire::Bundle| {
                let _ = installed_tx.send(b.sequence);
            });
            Self {
                opened,
                acks,
                installed,
                federated,
                state,
                changes,
                metrics,
                _task: task,
            }
        }

        fn set_state(&self, ack: wire::BundleAck) {
            *self.state.0.lock().unwrap() = Some(ack);
            self.changes.send_modify(|v| *v += 1);
        }

        async fn next_open(
            &mut self,
        ) -> (
            BundleStreamKind,
            mpsc::UnboundedSender<Result<wire::WatchBundleResponse, Status>>,
        ) {
            timeout(DEADLINE, self.opened.recv())
                .await
                .unwrap()
                .unwrap()
        }

        async fn next_ack(&mut self) -> wire::BundleAck {
            self.next_ack_at().await.1
        }

        async fn next_ack_at(&mut self) -> (Instant, wire::BundleAck) {
            timeout(DEADLINE, self.acks.recv()).await.unwrap().unwrap()
        }

        async fn next_installed(&mut self) -> u64 {
            timeout(DEADLINE, self.installed.recv())
                .await
                .unwrap()
                .unwrap()
        }

        async fn next_federated(&mut self) -> Vec<String> {
            timeout(DEADLINE, self.federated.recv())
                .await
                .unwrap()
                .unwrap()
        }

        fn acknowledged_version(&self) -> Option<String> {
            let v1 = vec![("version", "v1".to_owned())];
            let v2 = vec![("version", "v2".to_owned())];
            [v1, v2]
                .into_iter()
                .find(|l| self.metrics.bundle_acknowledged.get(l).is_some())
                .map(|l| l[0].1.clone())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_bundle_is_acknowledged_after_it_is_installed_and_changes_are_coalesced() {
        let mut h = Harness::start(true);
        let (kind, server) = h.next_open().await;
        assert_eq!(kind, BundleStreamKind::Sync);
        // Changes before the first bundle send nothing: the server asked about nothing yet.
        h.set_state(ack("v0", &[]));

        *h.state.0.lock().unwrap() = Some(ack("v1", &["a"]));
        server.send(bundle(1)).unwrap();
        assert_eq!(h.next_installed().await, 1);
        assert_eq!(h.next_ack().await, ack("v1", &["a"]));
        assert_eq!(h.acknowledged_version().as_deref(), Some("v1"));

        // SVIDs renewed under the same roots: nothing to say. Then under a second root: said.
        h.set_state(ack("v1", &["a"]));
        h.set_state(ack("v1", &["a"]));
        h.set_state(ack("v1", &["a", "b"]));
        assert_eq!(h.next_ack().await, ack("v1", &["a", "b"]));

        // The same bundle again is acknowledged again (the server asked).
        server.send(bundle(1)).unwrap();
        assert_eq!(h.next_installed().await, 1);
        assert_eq!(h.next_ack().await, ack("v1", &["a", "b"]));

        // A new bundle, and the old root's SVIDs gone.
        *h.state.0.lock().unwrap() = Some(ack("v2", &["a", "b"]));
        server.send(bundle(2)).unwrap();
        assert_eq!(h.next_installed().await, 2);
        assert_eq!(h.next_ack().await, ack("v2", &["a", "b"]));
        h.set_state(ack("v2", &["b"]));
        assert_eq!(h.next_ack().await, ack("v2", &["b"]));
        assert_eq!(h.acknowledged_version().as_deref(), Some("v2"));

        // The stream fails: reopened as SyncBundle, and its first bundle acknowledged anew.
        server.send(Err(Status::unavailable("restarting"))).unwrap();
        let (kind, server) = h.next_open().await;
        assert_eq!(kind, BundleStreamKind::Sync);
        server.send(bundle(2)).unwrap();
        assert_eq!(h.next_installed().await, 2);
        assert_eq!(h.next_ack().await, ack("v2", &["b"]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_without_sync_bundle_is_followed_on_watch_bundle() {
        let mut h = Harness::start(false);
        h.metrics.bundle_acknowledged("v1");
        *h.state.0.lock().unwrap() = Some(ack("v1", &["a"]));
        let (kind, server) = h.next_open().await;
        assert_eq!(kind, BundleStreamKind::Watch);
        assert_eq!(
            h.acknowledged_version(),
            None,
            "nothing is acknowledged now"
        );
        server.send(bundle(7)).unwrap();
        assert_eq!(h.next_installed().await, 7);
        h.set_state(ack("v1", &["a", "b"]));
        server.send(bundle(8)).unwrap();
        assert_eq!(h.next_installed().await, 8);

        // Reopened after the stream ends: SyncBundle is asked for again first, then Watch.
        drop(server);
        let (kind, _server) = h.next_open().await;
        assert_eq!(kind, BundleStreamKind::Watch);
        assert!(
            h.acks.try_recv().is_err(),
            "no acknowledgement on WatchBundle"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn acknowledgements_are_at_least_a_second_apart_and_carry_the_latest_state() {
        let mut h = Harness::start(true);
        let (_, server) = h.next_open().await;
        *h.state.0.lock().unwrap() = Some(ack("v1", &["a"]));
        server.send(bundle(1)).unwrap();
        let (first, got) = h.next_ack_at().await;
        assert_eq!(got, ack("v1", &["a"]));
        for roots in [&["a", "b"][..], &["b"], &["a", "b"], &["b"]] {
            h.set_state(ack("v1", roots));
            tokio::task::yield_now().await;
        }
        let (second, got) = h.next_ack_at().await;
        assert_eq!(got, ack("v1", &["b"]), "the latest state, once");
        assert!(second - first >= ACK_MIN_INTERVAL, "{:?}", second - first);
        // Bundles arriving in a burst: the latest is acknowledged, a second later.
        *h.state.0.lock().unwrap() = Some(ack("v3", &["b"]));
        server.send(bundle(2)).unwrap();
        server.send(bundle(3)).unwrap();
        let (third, got) = h.next_ack_at().await;
        assert_eq!(got, ack("v3", &["b"]));
        assert!(third - second >= ACK_MIN_INTERVAL);
        assert_eq!(h.next_installed().await, 1);
        assert_eq!(h.next_installed().await, 2);
        assert_eq!(h.next_installed().await, 3);
    }

    /// A bundle of `name` with one X.509 authority (the feed checks that it parses).
    fn federated_bundle(name: &str) -> wire::Bundle {
        let td = lanyard_svid::TrustDomain::new(name).unwrap();
        let root = lanyard_svid::ca::RootCa::generate(
            &td,
            Duration::from_secs(3600),
            std::time::SystemTime::now(),
        )
        .unwrap();
        let bundle =
            lanyard_svid::TrustBundle::from_x509_authorities(td, [root.cert_der().clone()]);
        wire::Bundle::from(&bundle)
    }

    #[tokio::test(start_paused = true)]
    async fn federated_bundles_replace_the_federated_set_and_are_not_acknowledged() {
        let mut h = Harness::start(true);
        let (_, server) = h.next_open().await;
        *h.state.0.lock().unwrap() = Some(ack("v1", &["a"]));
        let with = |sequence, federated: Vec<wire::Bundle>| {
            let mut msg = bundle(sequence).unwrap();
            msg.federated_bundles = federated;
            Ok(msg)
        };
        // Our own domain among the federated ones is not taken as federated, and not as ours.
        server
            .send(with(
                1,
                vec![
                    federated_bundle("b.test"),
                    federated_bundle("example.org"),
                    federated_bundle("a.test"),
                ],
            ))
            .unwrap();
        assert_eq!(h.next_installed().await, 1, "our own bundle only");
        assert_eq!(h.next_federated().await, ["a.test", "b.test"]);
        assert_eq!(h.next_ack().await, ack("v1", &["a"]));
        // The next message without a.test drops it; one without any drops them all.
        server
            .send(with(2, vec![federated_bundle("b.test")]))
            .unwrap();
        assert_eq!(h.next_installed().await, 2);
        assert_eq!(h.next_federated().await, ["b.test"]);
        server.send(with(3, Vec::new())).unwrap();
        assert_eq!(h.next_installed().await, 3);
        assert!(h.next_federated().await.is_empty());
        assert!(
            h.installed.try_recv().is_err(),
            "no federated bundle reached the own-bundle path"
        );
    }
}
