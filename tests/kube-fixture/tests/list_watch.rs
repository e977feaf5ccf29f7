//! List and watch through the real `kube` client: label and field selectors, events for
//! changes made after a watch starts, selector transitions, bookmarks, `timeoutSeconds`,
//! 410 for a compacted version, and `kube::runtime::watcher` recovering from 410.

mod common;

use std::collections::BTreeMap;

use common::{api_status, pod, start, within};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::watcher;
use kube::runtime::watcher::Event;
use kube::runtime::{WatchStreamExt as _, reflector};
use kube::{Api, ResourceExt as _};

fn names<K: kube::Resource>(items: &[K]) -> Vec<String> {
    items.iter().map(|o| o.name_any()).collect()
}

async fn seed_pods(fixture: &kube_fixture::KubeFixture) {
    let store = fixture.store();
    store
        .create(&pod("apps", "web-1", "node-a", &[("app", "web")]))
        .unwrap();
    store
        .create(&pod("apps", "web-2", "node-b", &[("app", "web")]))
        .unwrap();
    store
        .create(&pod("apps", "db-1", "node-a", &[("app", "db")]))
        .unwrap();
    store
        .create(&pod("other", "web-9", "node-a", &[("app", "web")]))
        .unwrap();
}

#[tokio::test]
async fn lists_filter_by_namespace_labels_and_fields() {
    let fixture = start().await;
    seed_pods(&fixture).await;
    let client = fixture.admin_client().unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "apps");

    let all = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(names(&all.items), ["db-1", "web-1", "web-2"]);
    let rv: u64 = all.metadata.resource_version.unwrap().parse().unwrap();
    assert_eq!(rv, fixture.store().resource_version());

    let web = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(names(&web.items), ["web-1", "web-2"]);
    let set = pods
        .list(&ListParams::default().labels("app in (db),app!=web"))
        .await
        .unwrap();
    assert_eq!(names(&set.items), ["db-1"]);

    let on_a = pods
        .list(&ListParams::default().fields("spec.nodeName=node-a"))
        .await
        .unwrap();
    assert_eq!(names(&on_a.items), ["db-1", "web-1"]);
    let everywhere: Api<Pod> = Api::all(client.clone());
    let on_a_all = everywhere
        .list(
            &ListParams::default()
                .fields("spec.nodeName=node-a")
                .labels("app=web"),
        )
        .await
        .unwrap();
    assert_eq!(names(&on_a_all.items), ["web-1", "web-9"]);
    let one = pods
        .list(&ListParams::default().fields("metadata.name=web-2"))
        .await
        .unwrap();
    assert_eq!(names(&one.items), ["web-2"]);

    let status = api_status(
        pods.list(&ListParams::default().fields("spec.hostname=x"))
            .await,
    );
    assert_eq!(status.code, 400);
    assert!(status.message.contains("field label not supported"));
    let status = api_status(pods.list(&ListParams::default().labels("app in web")).await);
    assert_eq!(status.code, 400);

    // `limit` is ignored: one complete page, no continue token.
    let paged = pods.list(&ListParams::default().limit(1)).await.unwrap();
    assert_eq!(paged.items.len(), 3);
    assert!(paged.metadata.continue_.unwrap_or_default().is_empty());
}

#[tokio::test]
async fn endpoint_slices_are_served_by_service_label() {
    let fixture = start().await;
    let slice = |name: &str, service: &str| EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("apps".into()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/service-name".to_string(),
                service.to_string(),
            )])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec!["10.0.0.5".into()],
            ..Default::default()
        }],
        ports: None,
    };
    fixture.store().create(&slice("web-abc", "web")).unwrap();
    fixture.store().create(&slice("db-abc", "db")).unwrap();
    let api: Api<EndpointSlice> = Api::namespaced(fixture.admin_client().unwrap(), "apps");
    let list = api
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .unwrap();
    assert_eq!(names(&list.items), ["web-abc"]);
    assert_eq!(list.items[0].endpoints[0].addresses, ["10.0.0.5"]);
}

/// Next event from a raw watch stream, within the deadline.
async fn next_event<S, K>(stream: &mut S) -> WatchEvent<K>
where
    S: futures::Stream<Item = kube::Result<WatchEvent<K>>> + Unpin,
{
    within("a watch event", stream.next())
        .await
        .expect("the stream is open")
        .expect("the event decodes")
}

#[tokio::test]
async fn a_watch_sees_changes_made_after_it_starts() {
    let fixture = start().await;
    let api: Api<ConfigMap> = Api::namespaced(fixture.admin_client().unwrap(), "apps");
    let listed = api.list(&ListParams::default()).await.unwrap();
    let rv = listed.metadata.resource_version.unwrap();
    let mut events = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();

    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("bundle".into()),
            namespace: Some("apps".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "bundle.pem".to_string(),
            "one".to_string(),
        )])),
        ..Default::default()
    };
    let created = api.create(&PostParams::default(), &cm).await.unwrap();
    match next_event(&mut events).await {
        WatchEvent::Added(obj) => {
            assert_eq!(obj.name_any(), "bundle");
            assert_eq!(obj.resource_version(), created.resource_version());
        }
        other => panic!("expected ADDED, got {other:?}"),
    }
    fixture
        .store()
        .modify::<ConfigMap>("apps", "bundle", |cm| {
            cm.data = Some(BTreeMap::from([(
                "bundle.pem".to_string(),
                "two".to_string(),
            )]));
        })
        .unwrap();
    match next_event(&mut events).await {
        WatchEvent::Modified(obj) => {
            assert_eq!(obj.data.unwrap()["bundle.pem"], "two");
        }
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    fixture
        .store()
        .delete::<ConfigMap>("apps", "bundle")
        .unwrap();
    match next_event(&mut events).await {
        WatchEvent::Deleted(obj) => assert_eq!(obj.name_any(), "bundle"),
        other => panic!("expected DELETED, got {other:?}"),
    }
}

#[tokio::test]
async fn a_selected_watch_sees_objects_enter_and_leave_its_selection() {
    let fixture = start().await;
    seed_pods(&fixture).await;
    let api: Api<Pod> = Api::namespaced(fixture.admin_client().unwrap(), "apps");
    let rv = fixture.store().resource_version().to_string();
    let wp = WatchParams::default().fields("spec.nodeName=node-b");
    let mut events = api.watch(&wp, &rv).await.unwrap().boxed();

    // A change to a pod on another node is not seen; moving web-1 to node-b is an ADDED.
    fixture
        .store()
        .modify::<Pod>("apps", "db-1", |p| {
            p.metadata.labels = Some(BTreeMap::from([("x".into(), "y".into())]));
        })
        .unwrap();
    fixture
        .store()
        .modify::<Pod>("apps", "web-1", |p| {
            p.spec.as_mut().unwrap().node_name = Some("node-b".into());
        })
        .unwrap();
    match next_event(&mut events).await {
        WatchEvent::Added(p) => assert_eq!(p.name_any(), "web-1"),
        other => panic!("expected ADDED for web-1, got {other:?}"),
    }
    fixture
        .store()
        .modify::<Pod>("apps", "web-2", |p| {
            p.spec.as_mut().unwrap().node_name = Some("node-c".into());
        })
        .unwrap();
    match next_event(&mut events).await {
        WatchEvent::Deleted(p) => assert_eq!(p.name_any(), "web-2"),
        other => panic!("expected DELETED for web-2, got {other:?}"),
    }
}

#[tokio::test]
async fn bookmarks_arrive_and_timeout_seconds_ends_the_watch() {
    let fixture = start().await;
    let api: Api<ConfigMap> = Api::namespaced(fixture.admin_client().unwrap(), "apps");
    let rv = fixture.store().resource_version().to_string();
    let wp = WatchParams::default().timeout(2);
    let mut events = api.watch(&wp, &rv).await.unwrap().boxed();
    match next_event(&mut events).await {
        WatchEvent::Bookmark(b) => {
            let bookmarked: u64 = b.metadata.resource_version.parse().unwrap();
            assert!(bookmarked >= rv.parse::<u64>().unwrap());
        }
        other => panic!("expected BOOKMARK, got {other:?}"),
    }
    // The server closes the stream after timeoutSeconds (2 s), well within the deadline.
    let rest: Vec<_> = within("the watch to time out", events.collect::<Vec<_>>()).await;
    assert!(
        rest.iter()
            .all(|e| matches!(e, Ok(WatchEvent::Bookmark(_))))
    );
    assert_eq!(fixture.store().open_watches(), 0);
}

#[tokio::test]
async fn a_watch_from_a_compacted_version_gets_410_expired() {
    let fixture = start().await;
    seed_pods(&fixture).await;
    let api: Api<Pod> = Api::namespaced(fixture.admin_client().unwrap(), "apps");
    let old = fixture.store().resource_version().to_string();
    fixture.expire_watches();
    let mut events = api
        .watch(&WatchParams::default(), &old)
        .await
        .unwrap()
        .boxed();
    match next_event(&mut events).await {
        WatchEvent::Error(status) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected ERROR 410, got {other:?}"),
    }
    assert!(within("the stream to end", events.next()).await.is_none());
    // A fresh version still works.
    let fresh = api.list(&ListParams::default()).await.unwrap();
    let rv = fresh.metadata.resource_version.unwrap();
    let mut events = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    fixture.store().delete::<Pod>("apps", "db-1").unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        WatchEvent::Deleted(_)
    ));
}

#[tokio::test]
async fn the_kube_watcher_relists_after_410_and_keeps_up() {
    let fixture = start().await;
    seed_pods(&fixture).await;
    let api: Api<Pod> = Api::namespaced(fixture.admin_client().unwrap(), "apps");
    let (reader, writer) = reflector::store::<Pod>();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = reflector(writer, watcher(api, watcher::Config::default()));
    let task = tokio::spawn(async move {
        let mut stream = stream.boxed();
        while let Some(item) = stream.next().await {
            if tx.send(item).is_err() {
                return;
            }
        }
    });

    let mut saw_init_done = 0;
    while saw_init_done == 0 {
        match within("the initial list", rx.recv())
            .await
            .expect("watcher runs")
        {
            Ok(Event::InitDone) => saw_init_done += 1,
            Ok(_) => {}
            Err(e) => panic!("unexpected watcher error before expiry: {e}"),
        }
    }
    assert_eq!(reader.state().len(), 3);

    fixture.expire_watches();
    let mut saw_gone = false;
    loop {
        match within("a 410 from the re-watch", rx.recv())
            .await
            .expect("watcher runs")
        {
            Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                saw_gone = true;
            }
            Ok(Event::InitDone) if saw_gone => break,
            _ => {}
        }
    }

    fixture
        .store()
        .create(&pod("apps", "web-3", "node-a", &[("app", "web")]))
        .unwrap();
    loop {
        match within("the new pod", rx.recv())
            .await
            .expect("watcher runs")
        {
            Ok(Event::Apply(p) | Event::InitApply(p)) if p.name_any() == "web-3" => break,
            Err(e) => panic!("unexpected watcher error after relist: {e}"),
            _ => {}
        }
    }
    let mut cached = names(
        &reader
            .state()
            .iter()
            .map(|p| (**p).clone())
            .collect::<Vec<_>>(),
    );
    cached.sort();
    assert_eq!(cached, ["db-1", "web-1", "web-2", "web-3"]);
    task.abort();
}

#[tokio::test]
async fn the_kube_watcher_follows_a_named_object_by_field_selector() {
    let fixture = start().await;
    seed_pods(&fixture).await;
    let api: Api<Pod> = Api::namespaced(fixture.admin_client().unwrap(), "apps");
    let cfg = watcher::Config::default().fields("metadata.name=web-2");
    let mut objects = watcher(api, cfg).applied_objects().boxed();
    let first = within("web-2", objects.try_next()).await.unwrap().unwrap();
    assert_eq!(first.name_any(), "web-2");
    fixture
        .store()
        .modify::<Pod>("apps", "web-1", |p| {
            p.metadata.annotations = Some(Default::default())
        })
        .unwrap();
    fixture
        .store()
        .modify::<Pod>("apps", "web-2", |p| {
            p.metadata.annotations = Some(BTreeMap::from([("seen".into(), "yes".into())]));
        })
        .unwrap();
    let next = within("web-2 again", objects.try_next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.name_any(), "web-2");
    assert_eq!(next.annotations()["seen"], "yes");
}

#[tokio::test]
async fn the_kube_watcher_works_with_streaming_lists() {
    let fixture = start().await;
    seed_pods(&fixture).await;
    let api: Api<Pod> = Api::namespaced(fixture.admin_client().unwrap(), "apps");
    let cfg = watcher::Config::default()
        .streaming_lists()
        .labels("app=web");
    let mut events = watcher(api, cfg).boxed();
    let mut initial = Vec::new();
    loop {
        match within("the streamed initial list", events.next()).await {
            Some(Ok(Event::Init)) => {}
            Some(Ok(Event::InitApply(p))) => initial.push(p.name_any()),
            Some(Ok(Event::InitDone)) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    initial.sort();
    assert_eq!(initial, ["web-1", "web-2"]);
    fixture
        .store()
        .create(&pod("apps", "web-3", "node-a", &[("app", "web")]))
        .unwrap();
    match within("web-3", events.next()).await {
        Some(Ok(Event::Apply(p))) => assert_eq!(p.name_any(), "web-3"),
        other => panic!("unexpected {other:?}"),
    }
}
