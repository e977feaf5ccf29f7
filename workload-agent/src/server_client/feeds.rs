//! The server's two feeds, `WatchBundle` and `WatchNode`, followed for as long as the agent
//! runs: every message is handed to a callback, and a stream that ends or fails is reopened
//! with backoff (reset once a reopened stream delivers again).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lanyard_proto::identity::v1 as wire;
use tokio::task::JoinHandle;
use tonic::Streaming;

use super::{ServerClient, ServerError};
use crate::manager::backoff::Backoff;

/// First and longest wait before reopening a feed.
const REOPEN_INITIAL: Duration = Duration::from_millis(500);
const REOPEN_MAX: Duration = Duration::from_secs(30);

/// Follows `WatchBundle`, calling `on_bundle` with each bundle.
pub fn spawn_bundle_feed(
    client: Arc<ServerClient>,
    on_bundle: impl Fn(&wire::Bundle) + Send + Sync + 'static,
) -> JoinHandle<()> {
    tokio::spawn(follow(
        "bundle",
        move || {
            let client = client.clone();
            async move { client.watch_bundle().await }
        },
        move |msg: wire::WatchBundleResponse| {
            if let Some(bundle) = &msg.bundle {
                on_bundle(bundle);
            }
        },
    ))
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
