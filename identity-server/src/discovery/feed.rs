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
//! size is bounded by the gRPC decoding limit. Each change costs one lookup per followed
//! destination per stream; changes arriving while a stream is busy coalesce.
//!
//! When the server shuts down, every stream ends with `Unavailable` (`shutting_down`), so the
//! graceful drain finishes and agents reopen their stream on another replica.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use lanyard_proto::discovery::v1 as wire;
use lanyard_proto::discovery::v1::discovery_feed_server::DiscoveryFeed;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::resolver::{Destination, DiscoverySources};
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
    BadDestination(super::resolver::DestinationError),
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
        let agent = self.identity.caller_agent(RPC, &request)?;
        let (tx, rx) = mpsc::channel(8);
        let stream = FollowStream {
            sources: self.sources.clone(),
            limits: self.limits,
            followed: HashMap::new(),
            tx,
            stopping: self.stopping.clone(),
        };
        let metrics = self.metrics.clone();
        let inbound = request.into_inner();
        tokio::spawn(async move {
            if let Err(refusal) = stream.run(inbound).await {
                metrics.refused(RPC, &refusal);
                tracing::info!(node = %agent.node, reason = %refusal, "discovery feed ended");
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Resolves when `stopping` turns `true`, or its sender is gone (the server's run future was
/// dropped without a graceful shutdown: its connections may outlive it, its feeds must not).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

/// One agent's stream: what it follows, and what was last sent for each.
struct FollowStream {
    sources: DiscoverySources,
    limits: FeedLimits,
    /// `None`: followed, nothing sent yet.
    followed: HashMap<Destination, Option<wire::Resolution>>,
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
                        if let Err(refusal) = self.apply(request) {
                            let _ = self.tx.send(Err(refusal.to_status())).await;
                            return Err(refusal);
                        }
                    }
                    // The agent closed its side or went away.
                    Ok(None) | Err(_) => return Ok(()),
                },
                () = changes.changed() => {}
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

    fn apply(&mut self, request: wire::FollowRequest) -> Result<(), FeedRefusal> {
        let count = request.follow.len() + request.unfollow.len();
        if count > self.limits.max_per_request {
            return Err(FeedRefusal::RequestTooLarge {
                limit: self.limits.max_per_request,
            });
        }
        for d in &request.unfollow {
            let d = Destination::from_wire(Some(d)).map_err(FeedRefusal::BadDestination)?;
            self.followed.remove(&d);
        }
        for d in &request.follow {
            let d = Destination::from_wire(Some(d)).map_err(FeedRefusal::BadDestination)?;
            if !self.followed.contains_key(&d) && self.followed.len() >= self.limits.max_follows {
                return Err(FeedRefusal::TooManyFollows {
                    limit: self.limits.max_follows,
                });
            }
            self.followed.entry(d).or_insert(None);
        }
        Ok(())
    }

    /// Sends every answer that differs from the last one sent. False when the agent is gone.
    async fn send_changed(&mut self) -> bool {
        // Before the indexes are listed an answer could wrongly say "unknown": say nothing.
        if !self.sources.is_synced() {
            return true;
        }
        let mut batch = Vec::new();
        for (destination, last) in &mut self.followed {
            let now = self.sources.resolve(*destination);
            if last.as_ref() != Some(&now) {
                batch.push(wire::DestinationResolution {
                    destination: Some(destination.to_wire()),
                    resolution: Some(now.clone()),
                });
                *last = Some(now);
            }
        }
        for chunk in batch.chunks(self.limits.max_updates_per_message.max(1)) {
            let update = wire::FollowUpdate {
                updates: chunk.to_vec(),
            };
            if self.tx.send(Ok(update)).await.is_err() {
                return false;
            }
        }
        true
    }
}
