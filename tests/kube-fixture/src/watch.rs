//! Watch responses: a chunked stream of newline-delimited JSON `{"type", "object"}` events.
//!
//! Reference: "Efficient detection of changes" and "Watch bookmarks" in API Concepts
//! (<https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes>,
//! <https://kubernetes.io/docs/reference/using-api/api-concepts/#watch-bookmarks>).
//!
//! - Events are `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` and `ERROR`. Selectors are applied
//!   to each change as the API server's watch cache applies them: an object that starts
//!   matching arrives as `ADDED`, one that stops matching as `DELETED` (with its previous
//!   content and the new resourceVersion).
//! - A too-old `resourceVersion` is answered `200 OK` with one `ERROR` event carrying a
//!   `Status` of code 410, reason `Expired`, then the stream ends; a watcher that falls too
//!   far behind the live feed gets the same.
//! - With `allowWatchBookmarks=true`, `BOOKMARK` events carry the latest resourceVersion the
//!   stream has caught up with (of any type), every `bookmark_interval` and just before a
//!   `timeoutSeconds` expiry closes the stream. With `sendInitialEvents=true` the initial
//!   ADDED events end with a bookmark annotated `k8s.io/initial-events-end: "true"`.
//! - A watch on a custom resource ends (after the DELETED events of its objects) when its
//!   CustomResourceDefinition is deleted, as the API server ends it.
//! - The bookmark object carries `apiVersion` and `kind` as the API server's does (the
//!   `k8s_openapi::WatchEvent` serializer leaves them out, and kube's decoder needs them), so
//!   it is built here.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};

use crate::resources::{ResourceType, TypeRef};
use crate::status::ApiError;
use crate::store::{Change, ChangeKind, Filter, Notice, Subscription};
use crate::tls::Body;

/// Options of one watch request.
#[derive(Clone, Debug)]
pub(crate) struct WatchOptions {
    pub resource: TypeRef,
    pub filter: Filter,
    pub bookmarks: bool,
    pub send_initial_events: bool,
    pub timeout: Duration,
    pub bookmark_interval: Duration,
}

/// The body of a watch that failed before it started (e.g. 410 Expired): one ERROR event.
pub(crate) fn error_body(error: &ApiError) -> Body {
    let line = event_line(
        "ERROR",
        &serde_json::to_value(error.to_status()).unwrap_or_default(),
    );
    http_body_util::Full::new(line).boxed_unsync()
}

/// Streams `subscription` as a watch body until timeout, disconnect, shutdown or the client
/// going away.
pub(crate) fn stream_body(
    subscription: Subscription,
    options: WatchOptions,
    shutdown: watch::Receiver<bool>,
) -> Body {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(pump(subscription, options, shutdown, tx));
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, Infallible>(Frame::data(line)), rx))
    });
    BodyExt::boxed_unsync(StreamBody::new(frames.boxed()))
}

async fn pump(
    subscription: Subscription,
    options: WatchOptions,
    shutdown: watch::Receiver<bool>,
    tx: mpsc::Sender<Bytes>,
) {
    let Subscription {
        initial,
        backlog,
        receiver,
        start_rv,
        slot,
    } = subscription;
    run(initial, backlog, receiver, start_rv, options, shutdown, &tx).await;
    // Release the slot before the client sees the end of the stream.
    drop(slot);
    drop(tx);
}

async fn run(
    initial: Vec<Value>,
    backlog: Vec<std::sync::Arc<Change>>,
    mut receiver: broadcast::Receiver<Notice>,
    start_rv: u64,
    options: WatchOptions,
    mut shutdown: watch::Receiver<bool>,
    tx: &mpsc::Sender<Bytes>,
) {
    let deadline = tokio::time::Instant::now() + options.timeout;
    let mut seen = start_rv;

    for object in initial.iter().filter(|o| options.filter.matches(o)) {
        if tx.send(event_line("ADDED", object)).await.is_err() {
            return;
        }
    }
    if options.send_initial_events
        && tx
            .send(bookmark_line(&options.resource, seen, true))
            .await
            .is_err()
    {
        return;
    }
    for change in &backlog {
        if let Some(line) = change_line(change, &options)
            && tx.send(line).await.is_err()
        {
            return;
        }
    }

    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + options.bookmark_interval,
        options.bookmark_interval,
    );
    loop {
        let line = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                if options.bookmarks {
                    let _ = tx.send(bookmark_line(&options.resource, seen, false)).await;
                }
                return;
            }
            _ = ticker.tick(), if options.bookmarks => bookmark_line(&options.resource, seen, false),
            _ = shutdown.changed() => return,
            _ = tx.closed() => return,
            notice = receiver.recv() => match notice {
                Ok(Notice::Change(change)) => {
                    if change.rv <= seen {
                        continue;
                    }
                    seen = change.rv;
                    if change.resource.storage != options.resource.storage {
                        continue;
                    }
                    match change_line(&change, &options) {
                        Some(line) => line,
                        None => continue,
                    }
                }
                Ok(Notice::Disconnect) | Err(broadcast::error::RecvError::Closed) => return,
                // The CRD of the watched type was deleted.
                Ok(Notice::Removed(storage)) if storage == options.resource.storage => return,
                Ok(Notice::Removed(_)) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let expired = ApiError::expired(seen, seen + 1);
                    let status = serde_json::to_value(expired.to_status()).unwrap_or_default();
                    let _ = tx.send(event_line("ERROR", &status)).await;
                    return;
                }
            },
        };
        if tx.send(line).await.is_err() {
            return;
        }
    }
}

/// The event a change produces for a watcher, if any, its object shown in the watched
/// version.
fn change_line(change: &Change, options: &WatchOptions) -> Option<Bytes> {
    let filter = &options.filter;
    let show = |object: &Value| options.resource.present(object.clone());
    let now = filter.matches(&change.object);
    let before = change.previous.as_ref().is_some_and(|p| filter.matches(p));
    match (change.kind, before, now) {
        (ChangeKind::Added, _, true) => Some(event_line("ADDED", &show(&change.object))),
        (ChangeKind::Modified, true, true) => Some(event_line("MODIFIED", &show(&change.object))),
        (ChangeKind::Modified, false, true) => Some(event_line("ADDED", &show(&change.object))),
        (ChangeKind::Modified, true, false) => {
            // Left the selection: DELETED with the previous content at the new version.
            let mut previous = change.previous.clone().unwrap_or_default();
            if let Some(meta) = previous.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert(
                    "resourceVersion".into(),
                    Value::String(change.rv.to_string()),
                );
            }
            Some(event_line("DELETED", &show(&previous)))
        }
        (ChangeKind::Deleted, b, n) if b || n => Some(event_line("DELETED", &show(&change.object))),
        _ => None,
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object}))
        .unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark_line(rt: &ResourceType, rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"apiVersion": rt.api_version, "kind": rt.kind, "metadata": metadata}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selectors::LabelSelector;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn change(kind: ChangeKind, prev: Option<Value>, now: Value) -> Change {
        Change {
            rv: 7,
            resource: ResourceType::lookup::<ConfigMap>().unwrap().clone(),
            kind,
            object: now,
            previous: prev,
        }
    }

    fn parse(line: Bytes) -> Value {
        serde_json::from_slice(&line).unwrap()
    }

    #[test]
    fn selector_transitions_become_added_and_deleted() {
        let filter = WatchOptions {
            resource: ResourceType::lookup::<ConfigMap>().unwrap().clone(),
            filter: Filter {
                labels: LabelSelector::parse("app=x").unwrap(),
                ..Filter::default()
            },
            bookmarks: false,
            send_initial_events: false,
            timeout: Duration::from_secs(1),
            bookmark_interval: Duration::from_secs(1),
        };
        let on = json!({"metadata": {"name": "a", "labels": {"app": "x"}, "resourceVersion": "6"}});
        let off = json!({"metadata": {"name": "a", "resourceVersion": "7"}});
        let joined = change(ChangeKind::Modified, Some(off.clone()), on.clone());
        assert_eq!(
            parse(change_line(&joined, &filter).unwrap())["type"],
            "ADDED"
        );
        let left = change(ChangeKind::Modified, Some(on.clone()), off.clone());
        let ev = parse(change_line(&left, &filter).unwrap());
        assert_eq!(ev["type"], "DELETED");
        assert_eq!(ev["object"]["metadata"]["labels"]["app"], "x");
        assert_eq!(ev["object"]["metadata"]["resourceVersion"], "7");
        let unrelated = change(ChangeKind::Modified, Some(off.clone()), off);
        assert!(change_line(&unrelated, &filter).is_none());
    }

    #[test]
    fn bookmarks_carry_type_meta() {
        let rt = ResourceType::lookup::<ConfigMap>().unwrap();
        let ev = parse(bookmark_line(rt, 42, true));
        assert_eq!(ev["type"], "BOOKMARK");
        assert_eq!(ev["object"]["kind"], "ConfigMap");
        assert_eq!(ev["object"]["metadata"]["resourceVersion"], "42");
        assert_eq!(
            ev["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
            "true"
        );
    }
}
