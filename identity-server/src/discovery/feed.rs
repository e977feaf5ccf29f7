//! `lanyard.discovery.v1.DiscoveryFeed.Follow`: one bidirectional stream per agent.
//!
//! The agent sends `follow` / `unfollow` lists; the server answers every followed destination
//! once its indexes are listed, then after each index change sends, in batches, exactly the
//! answers that differ from what it last sent on that stream. Nothing is sent for a
//! destination nobody follows, so an agent's traffic and memory follow what its workloads
//! talk to, not the size of the cluster.
//!
//! Only node agents may follow (the same check as every `NodeIdentity` RPC). Bounds per
//! stream: destinations followed ([`FeedLimits::max_follows`], beyond: the stream ends with
//! `ResourceExhausted`), destinations per request, answers per update message; the request
//! size is bounded by the gRPC decoding limit.
//!
//! Cost. A follow request costs one lookup per *newly* followed destination; what the stream
//! already follows is not looked up again. An index change costs one lookup per followed
//! destination whose answer that index can change (an EndpointSlice change: the Service
//! answers only; a pod or Service change: all), and sends only the answers that differ.
//! Changes arriving while a stream is busy coalesce.
//!
//! When the server shuts down, every stream ends with `Unavailable` (`shutting_down`), so the
//! graceful drain finishes and agents reopen their stream on another replica.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use lanyard_proto::discovery::v1 as wire;
use lanyard_proto::discovery::v1::discovery_feed_server::DiscoveryFeed;
use lanyard_proto::discovery_destination::{Destination, DestinationError};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::resolver::{AnswerKind, DiscoverySources, IndexChange};
use crate::metrics::ServerMetrics;
use crate::service::IdentityService;

const RPC: &str = "discovery_follow";

/// The bounds of one `Follow` stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedLimits {
    /// Destinations one stream may follow at once.
    pub max_follows: usize,
    /// Destinations (follow + unfollow) in one request.
    pub max_per_request: usize,
    /// Answers in one update message.
    pub max_updates_per_message: usize,
}

impl Default for FeedLimits {
    fn default() -> Self {
        Self {
            max_follows: 16_384,
            max_per_request: 4096,
            max_updates_per_message: 1024,
        }
    }
}

/// Why a stream was ended. `Display` is a metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedRefusal {
    #[error("too_many_follows")]
    TooManyFollows { limit: usize },
    #[error("request_too_large")]
    RequestTooLarge { limit: usize },
    #[error("bad_destination")]
    BadDestination(DestinationError),
    #[error("shutting_down")]
    ShuttingDown,
}

impl FeedRefusal {
    pub fn to_status(&self) -> Status {
        match self {
            Self::TooManyFollows { limit } => Status::resource_exhausted(format!(
                "{self}: at most {limit} destinations per stream; unfollow some"
            )),
            Self::RequestTooLarge { limit } => Status::invalid_argument(format!(
                "{self}: at most {limit} destinations per request"
            )),
            Self::BadDestination(e) => Status::invalid_argument(format!("{self}: {}", e.message())),
            Self::ShuttingDown => {
                Status::unavailable(format!("{self}: this server is stopping; reconnect"))
            }
        }
    }
}

/// The `DiscoveryFeed` gRPC service.
pub struct DiscoveryFeedService {
    identity: Arc<IdentityService>,
    sources: DiscoverySources,
    limits: FeedLimits,
    metrics: Arc<ServerMetrics>,
    stopping: watch::Receiver<bool>,
}

impl DiscoveryFeedService {
    /// `stopping` turns `true` when the server shuts down: every stream then ends.
    pub fn new(
        identity: Arc<IdentityService>,
        sources: DiscoverySources,
        limits: FeedLimits,
        metrics: Arc<ServerMetrics>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self {
            identity,
            sources,
            limits,
            metrics,
            stopping,
        }
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<wire::FollowUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl DiscoveryFeed for DiscoveryFeedService {
    type FollowStream = UpdateStream;

    async fn follow(
        &self,
        request: Request<Streaming<wire::FollowRequest>>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        let (tx, rx) = mpsc::channel(8);
        let mut agent = None;
        let out = self.identity.feed_for(RPC, &request, |a| {
            agent = Some(a);
            ReceiverStream::new(rx)
        })?;
        let agent = agent.expect("feed_for calls back on success");
        let metrics = self.metrics.clone();
        let stream = FollowStream {
            sources: self.sources.clone(),
            followed: Followed::new(self.limits, metrics.discovery_followed.clone()),
            max_updates_per_message: self.limits.max_updates_per_message,
            metrics: metrics.clone(),
            tx,
            stopping: self.stopping.clone(),
        };
        let inbound = request.into_inner();
        tokio::spawn(async move {
            if let Err(refusal) = stream.run(inbound).await {
                metrics.refused(RPC, &refusal);
                tracing::info!(node = %agent.node, reason = %refusal, "discovery feed ended");
            }
        });
        Ok(Response::new(Box::pin(out)))
    }
}

/// Resolves when `stopping` turns `true`, or its sender is gone (the server's run future was
/// dropped without a graceful shutdown: its connections may outlive it, its feeds must not).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

/// One agent's stream.
struct FollowStream {
    sources: DiscoverySources,
    followed: Followed,
    max_updates_per_message: usize,
    metrics: Arc<ServerMetrics>,
    tx: mpsc::Sender<Result<wire::FollowUpdate, Status>>,
    stopping: watch::Receiver<bool>,
}

impl FollowStream {
    /// Runs until the agent goes away, or a refusal (sent to the agent, then returned).
    async fn run(mut self, mut inbound: Streaming<wire::FollowRequest>) -> Result<(), FeedRefusal> {
        let mut changes = self.sources.subscribe();
        loop {
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(request)) => {
                        if let Err(refusal) = self.followed.apply(&request) {
                            let _ = self.tx.send(Err(refusal.to_status())).await;
                            return Err(refusal);
                        }
                    }
                    // The agent closed its side or went away.
                    Ok(None) | Err(_) => return Ok(()),
                },
                change = changes.changed() => self.followed.index_changed(change),
                () = self.tx.closed() => return Ok(()),
                () = stopped(&mut self.stopping) => {
                    let _ = self.tx.send(Err(FeedRefusal::ShuttingDown.to_status())).await;
                    return Err(FeedRefusal::ShuttingDown);
                }
            }
            if !self.send_changed().await {
                return Ok(());
            }
        }
    }

    /// Sends every answer that is due (see [`Followed::due_answers`]). False when the agent
    /// is gone.
    async fn send_changed(&mut self) -> bool {
        let due = self.followed.due_answers(&self.sources);
        self.metrics.discovery_resolves.inc_by(due.resolves as u64);
        for chunk in due.updates.chunks(self.max_updates_per_message.max(1)) {
            let update = wire::FollowUpdate {
                updates: chunk.to_vec(),
            };
            if self.tx.send(Ok(update)).await.is_err() {
                return false;
            }
            for answer in chunk {
                if let Some(resolution) = &answer.resolution {
                    self.metrics
                        .discovery_answer_sent(AnswerKind::of(resolution));
                }
            }
        }
        true
    }
}

/// Which already-answered destinations the next pass must look up again (ordered: a wider
/// rescan covers a narrower one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rescan {
    /// None: only the destinations never answered on this stream.
    Nothing,
    /// Those whose answer an EndpointSlice change can alter (Service answers).
    Services,
    All,
}

/// The answers due after a request or a change, and how many lookups finding them took.
#[derive(Debug, Default)]
struct DueAnswers {
    updates: Vec<wire::DestinationResolution>,
    resolves: usize,
}

/// What one stream follows and what was last sent for each; counted in the server-wide
/// followed-destinations gauge for as long as it lives.
struct Followed {
    limits: FeedLimits,
    /// `None`: followed, nothing sent yet.
    answers: HashMap<Destination, Option<wire::Resolution>>,
    /// The destinations with `None` in `answers`, so a follow request costs lookups for its
    /// new destinations only.
    unanswered: HashSet<Destination>,
    rescan: Rescan,
    gauge: Gauge,
}

impl Followed {
    /// Nothing followed yet; `gauge` counts followed destinations (shared by all streams).
    fn new(limits: FeedLimits, gauge: Gauge) -> Self {
        Self {
            limits,
            answers: HashMap::new(),
            unanswered: HashSet::new(),
            rescan: Rescan::Nothing,
            gauge,
        }
    }

    /// Applies a follow request. On a refusal the stream ends; what was applied before it
    /// stays until then.
    fn apply(&mut self, request: &wire::FollowRequest) -> Result<(), FeedRefusal> {
        let count = request.follow.len() + request.unfollow.len();
        if count > self.limits.max_per_request {
            return Err(FeedRefusal::RequestTooLarge {
                limit: self.limits.max_per_request,
            });
        }
        for d in &request.unfollow {
            let d = Destination::from_wire(Some(d)).map_err(FeedRefusal::BadDestination)?;
            if self.answers.remove(&d).is_some() {
                self.unanswered.remove(&d);
                self.gauge.dec();
            }
        }
        for d in &request.follow {
            let d = Destination::from_wire(Some(d)).map_err(FeedRefusal::BadDestination)?;
            if self.answers.contains_key(&d) {
                continue;
            }
            if self.answers.len() >= self.limits.max_follows {
                return Err(FeedRefusal::TooManyFollows {
                    limit: self.limits.max_follows,
                });
            }
            self.answers.insert(d, None);
            self.unanswered.insert(d);
            self.gauge.inc();
        }
        Ok(())
    }

    /// Notes an index change: the next pass looks up what it can have changed.
    fn index_changed(&mut self, change: IndexChange) {
        let rescan = match change {
            // A pod IP appears or turns meshed, a ClusterIP is assigned: any answer.
            IndexChange::Pods | IndexChange::Services => Rescan::All,
            // Only Service answers read EndpointSlices (resolver rule 1).
            IndexChange::EndpointSlices => Rescan::Services,
        };
        self.rescan = self.rescan.max(rescan);
    }

    /// Looks up what is due (the never-answered destinations, and what the index changes
    /// since the last pass can have changed) and returns the answers that differ from the
    /// last ones sent, recording them as sent. Before the indexes are listed an answer could
    /// wrongly say "unknown": nothing is looked up or sent, and the work stays due.
    fn due_answers(&mut self, sources: &DiscoverySources) -> DueAnswers {
        let mut due = DueAnswers::default();
        if !sources.is_synced() {
            return due;
        }
        let rescan = std::mem::replace(&mut self.rescan, Rescan::Nothing);
        let mut lookup = |destination: Destination, last: &mut Option<wire::Resolution>| {
            let now = sources.resolve(destination);
            due.resolves += 1;
            if last.as_ref() != Some(&now) {
                due.updates.push(wire::DestinationResolution {
                    destination: Some(destination.to_wire()),
                    resolution: Some(now.clone()),
                });
                *last = Some(now);
            }
        };
        match rescan {
            Rescan::Nothing => {
                for destination in self.unanswered.drain() {
                    if let Some(last) = self.answers.get_mut(&destination) {
                        lookup(destination, last);
                    }
                }
            }
            Rescan::Services | Rescan::All => {
                self.unanswered.clear();
                for (destination, last) in &mut self.answers {
                    let stale = match last {
                        None => true,
                        Some(answer) => {
                            rescan == Rescan::All || AnswerKind::of(answer) == AnswerKind::Service
                        }
                    };
                    if stale {
                        lookup(*destination, last);
                    }
                }
            }
        }
        due
    }
}

impl Drop for Followed {
    fn drop(&mut self) {
        self.gauge.dec_by(self.answers.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::endpoint_slices::{EndpointSliceIndex, SliceEndpoint, SliceInfo};
    use crate::k8s::pods::{PodIndex, PodInfo, test_pod};
    use crate::k8s::services::{ServiceIndex, ServiceInfo, ServicePort};
    use lanyard_svid::TrustDomain;

    fn sources() -> DiscoverySources {
        DiscoverySources::empty(
            TrustDomain::new("example.org").unwrap(),
            "/ns/{namespace}/sa/{service_account}".into(),
        )
    }

    fn pod(n: u8, meshed: bool) -> PodInfo {
        let name = format!("p{n}");
        let mut p = test_pod("default", &name, &format!("uid-{n}"), &name, "node-1");
        p.pod_ips = vec![format!("10.0.0.{n}")];
        if meshed {
            p.annotations.insert(
                super::super::INJECT_ANNOTATION.into(),
                super::super::INJECT_ENABLED.into(),
            );
            p.proxy_ready = true;
        }
        p
    }

    fn dest(n: u8, port: u16) -> wire::Destination {
        Destination {
            address: format!("10.0.0.{n}").parse().unwrap(),
            port,
        }
        .to_wire()
    }

    fn follow(destinations: Vec<wire::Destination>) -> wire::FollowRequest {
        wire::FollowRequest {
            follow: destinations,
            unfollow: vec![],
        }
    }

    fn add_service(s: &DiscoverySources, endpoints: &[u8]) {
        s.services.apply(
            ("default".into(), "web".into()),
            ServiceInfo {
                cluster_ips: vec!["10.96.0.1".parse().unwrap()],
                ports: vec![ServicePort {
                    name: "http".into(),
                    port: 80,
                }],
            },
        );
        s.slices.apply(
            ("default".into(), "web-1".into()),
            SliceInfo {
                namespace: "default".into(),
                service: "web".into(),
                ports: vec![("http".into(), 8080)],
                endpoints: endpoints
                    .iter()
                    .map(|n| SliceEndpoint {
                        addresses: vec![format!("10.0.0.{n}").parse().unwrap()],
                        ready: true,
                    })
                    .collect(),
            },
        );
    }

    fn service_dest() -> wire::Destination {
        wire::Destination {
            address: "10.96.0.1".into(),
            port: 80,
        }
    }

    #[test]
    fn a_new_follow_costs_lookups_for_the_new_destinations_only() {
        let s = sources();
        for n in 1..=5 {
            s.pods.apply(pod(n, true));
        }
        let gauge = Gauge::default();
        let mut followed = Followed::new(FeedLimits::default(), gauge.clone());
        followed
            .apply(&follow((1..=4).map(|n| dest(n, 80)).collect()))
            .unwrap();
        let due = followed.due_answers(&s);
        assert_eq!((due.resolves, due.updates.len()), (4, 4));
        assert_eq!(gauge.get(), 4);

        // One more destination: one lookup, one answer, for it.
        followed.apply(&follow(vec![dest(5, 80)])).unwrap();
        let due = followed.due_answers(&s);
        assert_eq!(due.resolves, 1, "only the new destination is looked up");
        assert_eq!(due.updates.len(), 1);
        assert_eq!(due.updates[0].destination, Some(dest(5, 80)));
        assert_eq!(gauge.get(), 5);

        // Following what is already followed costs nothing and sends nothing.
        followed.apply(&follow(vec![dest(1, 80)])).unwrap();
        let due = followed.due_answers(&s);
        assert_eq!((due.resolves, due.updates.len()), (0, 0));
        assert_eq!(gauge.get(), 5);
    }

    #[test]
    fn index_changes_look_up_what_they_can_change_and_send_what_did() {
        let s = sources();
        for n in 1..=3 {
            s.pods.apply(pod(n, n != 3));
        }
        add_service(&s, &[1, 2]);
        let mut followed = Followed::new(FeedLimits::default(), Gauge::default());
        let mut destinations: Vec<_> = (1..=3).map(|n| dest(n, 80)).collect();
        destinations.push(service_dest());
        followed.apply(&follow(destinations)).unwrap();
        assert_eq!(followed.due_answers(&s).updates.len(), 4);

        // A pod turns meshed: everything is looked up again, one answer changed.
        s.pods.apply(pod(3, true));
        followed.index_changed(IndexChange::Pods);
        let due = followed.due_answers(&s);
        assert_eq!(due.resolves, 4);
        assert_eq!(due.updates.len(), 1);
        assert_eq!(due.updates[0].destination, Some(dest(3, 80)));
        assert_eq!(
            AnswerKind::of(due.updates[0].resolution.as_ref().unwrap()),
            AnswerKind::MeshedPod
        );

        // An EndpointSlice change can only change Service answers: one lookup.
        add_service(&s, &[1, 2, 3]);
        followed.index_changed(IndexChange::EndpointSlices);
        let due = followed.due_answers(&s);
        assert_eq!(due.resolves, 1);
        assert_eq!(due.updates.len(), 1);
        assert_eq!(due.updates[0].destination, Some(service_dest()));

        // A change that altered nothing followed: looked up, nothing sent.
        s.pods.apply(pod(9, true));
        followed.index_changed(IndexChange::Pods);
        let due = followed.due_answers(&s);
        assert_eq!((due.resolves, due.updates.len()), (4, 0));
        // No change since: nothing to do.
        let due = followed.due_answers(&s);
        assert_eq!((due.resolves, due.updates.len()), (0, 0));
    }

    #[test]
    fn nothing_is_answered_before_the_indexes_are_listed() {
        let listed = sources();
        let s = DiscoverySources {
            pods: PodIndex::new(),
            services: ServiceIndex::new(),
            slices: EndpointSliceIndex::new(),
            ..listed
        };
        let mut followed = Followed::new(FeedLimits::default(), Gauge::default());
        followed.apply(&follow(vec![dest(1, 80)])).unwrap();
        followed.index_changed(IndexChange::EndpointSlices);
        let due = followed.due_answers(&s);
        assert_eq!((due.resolves, due.updates.len()), (0, 0));
        s.pods.replace_all(vec![pod(1, true)]);
        s.services.replace_all(vec![]);
        followed.apply(&follow(vec![dest(2, 80)])).unwrap();
        assert_eq!(followed.due_answers(&s).updates.len(), 0, "still listing");
        s.slices.replace_all(vec![]);
        let due = followed.due_answers(&s);
        assert_eq!(due.updates.len(), 2, "both answered once listed");
    }

    #[test]
    fn the_gauge_follows_unfollows_and_the_stream_end() {
        let gauge = Gauge::default();
        let mut a = Followed::new(FeedLimits::default(), gauge.clone());
        let mut b = Followed::new(FeedLimits::default(), gauge.clone());
        a.apply(&follow(vec![dest(1, 80), dest(2, 80), dest(2, 80)]))
            .unwrap();
        b.apply(&follow(vec![dest(1, 80)])).unwrap();
        assert_eq!(gauge.get(), 3);
        a.apply(&wire::FollowRequest {
            follow: vec![],
            unfollow: vec![dest(1, 80), dest(7, 80)],
        })
        .unwrap();
        assert_eq!(
            gauge.get(),
            2,
            "an unfollow of what is not followed counts nothing"
        );
        drop(a);
        assert_eq!(gauge.get(), 1);
        drop(b);
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn bounds_are_refused() {
        let limits = FeedLimits {
            max_follows: 2,
            max_per_request: 3,
            max_updates_per_message: 10,
        };
        let mut followed = Followed::new(limits, Gauge::default());
        assert_eq!(
            followed.apply(&follow((1..=4).map(|n| dest(n, 80)).collect())),
            Err(FeedRefusal::RequestTooLarge { limit: 3 })
        );
        assert_eq!(
            followed.apply(&follow((1..=3).map(|n| dest(n, 80)).collect())),
            Err(FeedRefusal::TooManyFollows { limit: 2 })
        );
        let bad = wire::Destination {
            address: "web.default".into(),
            port: 80,
        };
        assert!(matches!(
            followed.apply(&follow(vec![bad])),
            Err(FeedRefusal::BadDestination(_))
        ));
    }
}
