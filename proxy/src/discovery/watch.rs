//! The task that keeps one cached destination current: a `Watch` on the agent, reopened when
//! lost (the answer stays usable for the stale TTL meanwhile), until the entry goes idle.

use std::net::SocketAddr;
use std::sync::Arc;

use lanyard_client::discovery::{WatchEnd, answer_from_wire};
use tokio::time::Instant;

use super::Shared;

/// Why a watch session ended.
enum SessionEnd {
    /// The entry went idle or was removed: stop watching.
    Done,
    /// The agent ended or refused the stream.
    Ended(WatchEnd),
}

/// Keeps `dst`'s entry current until it goes idle.
pub(super) async fn watch_entry(shared: Arc<Shared>, dst: SocketAddr) {
    loop {
        let end = watch_session(&shared, dst).await;
        let now = Instant::now();
        {
            let mut entries = shared.entries.lock().expect("discovery cache");
            let Some(entry) = entries.get_mut(&dst) else {
                return;
            };
            match end {
                SessionEnd::Done => {
                    entries.remove(&dst);
                    return;
                }
                SessionEnd::Ended(WatchEnd::Expired) => {
                    if entry.was_meshed {
                        entry.expire();
                    } else {
                        entries.remove(&dst);
                        return;
                    }
                }
                SessionEnd::Ended(WatchEnd::Lost) => {
                    entry
                        .stale_at
                        .get_or_insert(now + shared.settings.stale_ttl);
                }
            }
        }
        tokio::time::sleep(shared.settings.rewatch_delay).await;
        if idle(&shared, dst) {
            shared.entries.lock().expect("discovery cache").remove(&dst);
            return;
        }
    }
}

/// True when `dst` is not cached or has not been used for the idle time.
fn idle(shared: &Shared, dst: SocketAddr) -> bool {
    let entries = shared.entries.lock().expect("discovery cache");
    entries
        .get(&dst)
        .is_none_or(|e| e.last_used + shared.settings.idle <= Instant::now())
}

async fn watch_session(shared: &Shared, dst: SocketAddr) -> SessionEnd {
    let mut stream = match shared.agent.watch(dst).await {
        Ok(stream) => stream,
        Err(status) => {
            let end = WatchEnd::from_status(&status);
            tracing::debug!(%dst, %end, code = ?status.code(), message = status.message(), "discovery watch refused");
            return SessionEnd::Ended(end);
        }
    };
    loop {
        let check = tokio::time::sleep(shared.settings.idle);
        tokio::select! {
            message = stream.message() => match message {
                Ok(Some(response)) => match answer_from_wire(response) {
                    Ok(answer) => {
                        let mut entries = shared.entries.lock().expect("discovery cache");
                        let Some(entry) = entries.get_mut(&dst) else { return SessionEnd::Done };
                        entry.apply(dst, answer);
                    }
                    Err(e) => tracing::warn!(%dst, reason = "bad_discovery_answer", detail = %e, "ignoring a discovery update"),
                },
                Ok(None) => return SessionEnd::Ended(WatchEnd::Lost),
                Err(status) => {
                    let end = WatchEnd::from_status(&status);
                    tracing::debug!(%dst, %end, code = ?status.code(), message = status.message(), "discovery watch ended");
                    return SessionEnd::Ended(end);
                }
            },
            () = check => {
                if idle(shared, dst) {
                    return SessionEnd::Done;
                }
            }
        }
    }
}
