//! Following the cache's destinations on the server's `DiscoveryFeed.Follow` stream: one
//! stream per agent, reopened with backoff when it fails. Every open stream re-follows all
//! cached destinations; while it is open, new destinations are followed and dropped ones
//! unfollowed as the cache asks, and every answer received goes into the cache.
//!
//! The connection is our own (not [`crate::server_client::ServerClient`]'s channel), opened
//! afresh for every stream with the same pinned-server TLS config, so a reopened stream
//! always presents the current node SVID.

use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use lanyard_proto::discovery::v1 as wire;
use lanyard_proto::discovery::v1::discovery_feed_client::DiscoveryFeedClient;
use lanyard_svid::TrustDomain;
use lanyard_svid::reserved::server_id;
use lanyard_svid::tls::{ExactId, SvidStore, client_config_optional_svid, unused_server_name};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use super::ServerError;
use super::discovery_cache::DiscoveryCache;
use crate::manager::backoff::Backoff;

/// First and longest wait before reopening the stream.
const REOPEN_INITIAL: Duration = Duration::from_millis(500);
const REOPEN_MAX: Duration = Duration::from_secs(30);
/// Destinations per request (the server's bound is 4096).
const MAX_PER_REQUEST: usize = 1024;
/// Largest update accepted from the server.
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the server is and how to reach it.
#[derive(Clone)]
pub struct FeedTarget {
    /// `host:port`.
    pub address: String,
    pub store: Arc<SvidStore>,
    pub trust_domain: TrustDomain,
}

/// Follows the cache's destinations until the task is aborted; also sweeps idle entries.
pub fn spawn(cache: Arc<DiscoveryCache>, target: FeedTarget) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Backoff::new(REOPEN_INITIAL, REOPEN_MAX);
        loop {
            let stream = cache.stream_opened();
            let outcome = run_stream(&cache, &target, stream, &mut backoff).await;
            cache.stream_lost(stream);
            match outcome {
                Ok(()) => tracing::info!(feed = "discovery", "server feed ended; reopening"),
                Err(e) => tracing::warn!(
                    feed = "discovery",
                    reason = %e,
                    "server feed failed: {}",
                    e.message()
                ),
            }
            tokio::time::sleep(backoff.fail()).await;
        }
    })
}

async fn run_stream(
    cache: &DiscoveryCache,
    target: &FeedTarget,
    stream: u64,
    backoff: &mut Backoff,
) -> Result<(), ServerError> {
    let mut client = DiscoveryFeedClient::new(channel(target)?)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel(4);
    // The first request goes in before the call, so the server has work at once.
    if let Some(first) = cache.take_pending(stream, MAX_PER_REQUEST) {
        let _ = tx.try_send(first);
    }
    let mut updates = client
        .follow(ReceiverStream::new(rx))
        .await
        .map_err(|s| ServerError::from_status(&s))?
        .into_inner();
    cache.stream_accepted(stream);
    let sweep_every = (cache.settings().idle / 4).max(Duration::from_secs(1));
    let mut sweep = tokio::time::interval(sweep_every);
    loop {
        tokio::select! {
            // Reading and writing are awaited together: neither side can block the other.
            permit = tx.reserve() => {
                let Ok(permit) = permit else { return Ok(()) };
                match cache.take_pending(stream, MAX_PER_REQUEST) {
                    Some(request) => permit.send(request),
                    None => {
                        drop(permit);
                        tokio::select! {
                            () = cache.pending.notified() => {}
                            message = updates.message() => {
                                if !receive(cache, stream, message, backoff)? {
                                    return Ok(());
                                }
                            }
                            _ = sweep.tick() => { cache.sweep(); }
                        }
                    }
                }
            }
            message = updates.message() => {
                if !receive(cache, stream, message, backoff)? {
                    return Ok(());
                }
            }
        }
    }
}

/// Applies one received message; false when the server closed the stream.
fn receive(
    cache: &DiscoveryCache,
    stream: u64,
    message: Result<Option<wire::FollowUpdate>, tonic::Status>,
    backoff: &mut Backoff,
) -> Result<bool, ServerError> {
    match message {
        Ok(Some(update)) => {
            backoff.reset();
            cache.apply(stream, update);
            Ok(true)
        }
        Ok(None) => Ok(false),
        Err(status) => Err(ServerError::from_status(&status)),
    }
}

fn channel(target: &FeedTarget) -> Result<tonic::transport::Channel, ServerError> {
    let endpoint = Endpoint::from_shared(format!("http://{}", target.address))
        .map_err(|e| ServerError::BadAddress(format!("{:?}: {e}", target.address)))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client_config_optional_svid(
        target.store.clone(),
        Arc::new(ExactId(server_id(&target.trust_domain))),
        vec![b"h2".to_vec()],
    )));
    let address = target.address.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let (address, tls) = (address.clone(), tls.clone());
        async move {
            let tcp = TcpStream::connect(&address).await?;
            tcp.set_nodelay(true)?;
            let stream = tls.connect(unused_server_name(), tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}
