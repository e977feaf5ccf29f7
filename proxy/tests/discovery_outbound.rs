//! The discovery client against a fake agent `Discovery` service on a Unix socket, and the
//! discovered outbound path (meshed pod, Service endpoints, unmeshed, unknown, refusals) in
//! front of real in-process inbound proxies and echo apps.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::discovery::{
    FakeDiscovery, discovered_outbound, lookup_until, meshed, service, unknown, unmeshed,
};
use common::*;
use lanyard_proxy::context::ConnContext;
use lanyard_proxy::discovery::{
    Answer, DiscoveryClient, DiscoveryError, DiscoverySettings, ServiceEndpoint,
};
use lanyard_proxy::tap::Tap;
use lanyard_svid::SpiffeId;
use tokio::net::{TcpListener, TcpStream};
use tonic::Status;

const CLIENT: &str = "spiffe://example.org/client";
const SERVER: &str = "spiffe://example.org/server";
const OTHER: &str = "spiffe://example.org/other";

fn id(text: &str) -> SpiffeId {
    SpiffeId::parse(text).unwrap()
}

fn settings() -> DiscoverySettings {
    DiscoverySettings {
        resolve_timeout: Duration::from_secs(5),
        rewatch_delay: Duration::from_millis(20),
        ..DiscoverySettings::default()
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

// ---------------------------------------------------------------------------------------
// The client

#[tokio::test]
async fn a_meshed_answer_is_resolved_once_then_kept_current_by_a_watch() {
    let fake = FakeDiscovery::start().await;
    let dst = addr("10.0.0.5:8080");
    fake.set(dst, meshed(SERVER));
    let client = fake.client(settings());
    let first = client.lookup(dst).await.unwrap();
    assert_eq!(first.answer, Answer::MeshedPod(id(SERVER)));
    fake.wait_watches(1).await;
    client.lookup(dst).await.unwrap();
    assert_eq!(fake.resolves(), 1, "second lookup cached");
    assert_eq!(client.cached(), 1);
    // A new ID (a new pod on the same IP) is followed.
    fake.set(dst, meshed(OTHER));
    lookup_until(&client, dst, "the new ID", |a| {
        *a == Ok(Answer::MeshedPod(id(OTHER)))
    })
    .await;
    assert_eq!(fake.resolves(), 1);
}

#[tokio::test]
async fn a_meshed_destination_is_never_downgraded() {
    let fake = FakeDiscovery::start().await;
    let dst = addr("10.0.0.5:8080");
    fake.set(dst, meshed(SERVER));
    let client = fake.client(settings());
    client.lookup(dst).await.unwrap();
    fake.wait_watches(1).await;
    fake.set(dst, unmeshed());
    lookup_until(&client, dst, "the downgrade refused", |a| {
        *a == Err(DiscoveryError::DowngradeRefused)
    })
    .await;
    // The pod deleted: connections refused, not plaintext.
    fake.set(dst, unknown());
    lookup_until(&client, dst, "the gone pod refused", |a| {
        *a == Err(DiscoveryError::MeshedGone)
    })
    .await;
    // Meshed again (a new pod): used again.
    fake.set(dst, meshed(OTHER));
    lookup_until(&client, dst, "meshed again", |a| {
        *a == Ok(Answer::MeshedPod(id(OTHER)))
    })
    .await;
}

#[tokio::test]
async fn unknown_destinations_may_become_meshed_and_no_answer_is_unavailable() {
    let fake = FakeDiscovery::start().await;
    let dst = addr("10.0.0.6:80");
    let client = fake.client(settings());
    let err = client.lookup(dst).await.unwrap_err();
    assert!(matches!(err, DiscoveryError::Unavailable(_)), "{err:?}");
    assert_eq!(client.cached(), 0, "a failed lookup is not cached");
    fake.set(dst, unknown());
    assert_eq!(client.lookup(dst).await.unwrap().answer, Answer::Unknown);
    fake.wait_watches(1).await;
    fake.set(dst, meshed(SERVER));
    lookup_until(&client, dst, "the upgrade", |a| {
        *a == Ok(Answer::MeshedPod(id(SERVER)))
    })
    .await;
}

#[tokio::test]
async fn cached_answers_outlive_an_unreachable_agent_until_they_expire() {
    let fake = FakeDiscovery::start().await;
    let (meshed_dst, plain_dst) = (addr("10.0.0.5:80"), addr("10.0.0.7:80"));
    fake.set(meshed_dst, meshed(SERVER));
    fake.set(plain_dst, unmeshed());
    let client = fake.client(settings());
    client.lookup(meshed_dst).await.unwrap();
    client.lookup(plain_dst).await.unwrap();
    fake.wait_watches(2).await;
    // The agent goes away: streams lost, new calls refused. Answers are still used.
    fake.refuse(Some(Status::unavailable("shutting_down: down")));
    fake.end_watches(Status::unavailable("shutting_down: bye"));
    let resolves = fake.resolves();
    for _ in 0..3 {
        assert_eq!(
            client.lookup(meshed_dst).await.unwrap().answer,
            Answer::MeshedPod(id(SERVER))
        );
        assert_eq!(
            client.lookup(plain_dst).await.unwrap().answer,
            Answer::UnmeshedPod
        );
    }
    assert_eq!(fake.resolves(), resolves);
    // The agent says the answers expired: the meshed one refuses, the other is forgotten.
    fake.refuse(None);
    let watches = fake.watches_opened();
    fake.wait_watches(watches + 2).await;
    fake.refuse(Some(Status::unavailable("shutting_down: down")));
    // As the agent ends a Watch whose answer expired: Unavailable with the refusal trailer.
    let mut expired = Status::unavailable("the answer expired");
    expired.metadata_mut().insert(
        lanyard_proxy::discovery::REFUSAL_TRAILER,
        "expired".parse().unwrap(),
    );
    fake.end_watches(expired);
    lookup_until(&client, meshed_dst, "the meshed answer expired", |a| {
        *a == Err(DiscoveryError::MeshedGone)
    })
    .await;
    lookup_until(&client, plain_dst, "the plain answer forgotten", |a| {
        matches!(a, Err(DiscoveryError::Unavailable(_)))
    })
    .await;
}

#[tokio::test]
async fn a_meshed_service_endpoint_listed_unmeshed_is_left_out() {
    let fake = FakeDiscovery::start().await;
    let svc = addr("10.96.0.1:80");
    let (e1, e2) = (addr("10.0.0.1:8080"), addr("10.0.0.2:8080"));
    fake.set(svc, service(&[(e1, Some(SERVER)), (e2, None)]));
    let client = fake.client(settings());
    client.lookup(svc).await.unwrap();
    fake.wait_watches(1).await;
    fake.set(svc, service(&[(e1, None), (e2, None)]));
    lookup_until(&client, svc, "e1 left out", |a| {
        *a == Ok(Answer::Service(vec![ServiceEndpoint {
            addr: e2,
            id: None,
        }]))
    })
    .await;
}

#[tokio::test]
async fn endpoints_are_picked_round_robin_skipping_recent_failures() {
    let fake = FakeDiscovery::start().await;
    let svc = addr("10.96.0.1:80");
    let (e1, e2, e3) = (
        addr("10.0.0.1:80"),
        addr("10.0.0.2:80"),
        addr("10.0.0.3:80"),
    );
    fake.set(svc, service(&[(e1, Some(SERVER)), (e2, None), (e3, None)]));
    let client = fake.client(settings());
    let lookup = client.lookup(svc).await.unwrap();
    let picks: Vec<_> = (0..6)
        .map(|_| client.pick(&lookup, &[]).unwrap().addr)
        .collect();
    assert_eq!(picks, [e1, e2, e3, e1, e2, e3]);
    client.connect_failed(e2);
    let picks: Vec<_> = (0..4)
        .map(|_| client.pick(&lookup, &[]).unwrap().addr)
        .collect();
    assert!(!picks.contains(&e2), "{picks:?}");
    assert!(picks.contains(&e1) && picks.contains(&e3), "{picks:?}");
    assert!(client.pick(&lookup, &[e1, e2, e3]).is_none());
    client.connect_succeeded(e2);
    let picks: Vec<_> = (0..3)
        .map(|_| client.pick(&lookup, &[]).unwrap().addr)
        .collect();
    assert!(picks.contains(&e2), "{picks:?}");
}

// ---------------------------------------------------------------------------------------
// The discovered outbound path

/// An outbound listener (holding CLIENT's SVID) whose connections go to `dst` as discovery
/// says; its tap.
async fn outbound(ca: &Ca, dst: SocketAddr, discovery: DiscoveryClient) -> (SocketAddr, Tap) {
    let (listen, tap, _) = outbound_ctx(ca, dst, discovery).await;
    (listen, tap)
}

/// [`outbound`], and the context its connections share.
async fn outbound_ctx(
    ca: &Ca,
    dst: SocketAddr,
    discovery: DiscoveryClient,
) -> (SocketAddr, Tap, Arc<ConnContext>) {
    let o = discovered_outbound(ca, CLIENT, dst, |_| discovery).await;
    (o.listen, o.tap, o.ctx)
}

/// An inbound proxy as `SERVER` in front of an echo app; its inbound address.
async fn meshed_server(ca: &Ca) -> (FakeWorkloadApi, lanyard_proxy::RunningProxy) {
    let app = echo_app(None).await;
    let api = FakeWorkloadApi::start().await;
    let issued = ca.issue(SERVER);
    api.push(svid_message(SERVER, &issued, &[ca.root_der()], &[]));
    let mut args = proxy_args(&api.socket);
    args.inbound = vec![format!("127.0.0.1:0={}", app.addr)];
    let proxy = start_proxy(args).await;
    wait_for_svid(&proxy, issued.leaf()).await;
    (api, proxy)
}

struct TapLines(lanyard_proxy::tap::TapReader);

impl TapLines {
    async fn next(&mut self) -> String {
        within("a tap line", async {
            match self.0.next().await {
                Some(lanyard_proxy::TapEvent::Line(line)) => line.to_string(),
                other => panic!("unexpected tap event {other:?}"),
            }
        })
        .await
    }
}

/// One connection through `listen`: whether the echo came back.
async fn echo_through(listen: SocketAddr) -> bool {
    let mut s = TcpStream::connect(listen).await.unwrap();
    use tokio::io::AsyncWriteExt;
    if s.write_all(b"hello").await.is_err() {
        return false;
    }
    let (got, _) = read_until(&mut s, 5).await;
    got == b"hello"
}

async fn read_until(s: &mut TcpStream, n: usize) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    within("an answer or a close", async {
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while got.len() < n {
            match s.read(&mut buf).await {
                Ok(0) => return (got, false),
                Ok(k) => got.extend_from_slice(&buf[..k]),
                Err(_) => return (got, true),
            }
        }
        (got, false)
    })
    .await
}

#[tokio::test]
async fn a_meshed_pod_gets_mtls_expecting_its_id_and_a_downgrade_is_refused() {
    let ca = Ca::new("example.org");
    let (_api, server) = meshed_server(&ca).await;
    let dst = server.addr("inbound");
    let fake = FakeDiscovery::start().await;
    fake.set(dst, meshed(SERVER));
    let client = fake.client(settings());
    let (listen, tap) = outbound(&ca, dst, client.clone()).await;
    let mut lines = TapLines(tap.subscribe());

    assert!(echo_through(listen).await);
    let line = lines.next().await;
    assert_eq!(field(&line, "tls"), "true", "{line}");
    assert_eq!(field(&line, "peer"), SERVER, "{line}");
    assert_eq!(field(&line, "dst"), dst.to_string(), "{line}");

    // Discovery now expects another ID: the handshake refuses the server.
    fake.wait_watches(1).await;
    fake.set(dst, meshed(OTHER));
    lookup_until(&client, dst, "the new ID", |a| {
        *a == Ok(Answer::MeshedPod(id(OTHER)))
    })
    .await;
    assert!(!echo_through(listen).await);
    let line = lines.next().await;
    assert_eq!(field(&line, "reason"), "unexpected_id", "{line}");

    fake.set(dst, unmeshed());
    lookup_until(&client, dst, "the downgrade", |a| a.is_err()).await;
    assert!(!echo_through(listen).await);
    let line = lines.next().await;
    assert_eq!(field(&line, "reason"), "meshed_downgrade_refused", "{line}");
}

#[tokio::test]
async fn a_service_spreads_over_ready_endpoints_with_each_ones_identity() {
    let ca = Ca::new("example.org");
    let (_api, server) = meshed_server(&ca).await;
    let meshed_ep = server.addr("inbound");
    let plain_ep = echo_app(None).await.addr;
    // A closed port: its connect fails and it is skipped.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let svc = addr("127.0.0.1:9");
    let fake = FakeDiscovery::start().await;
    fake.set(
        svc,
        service(&[
            (meshed_ep, Some(SERVER)),
            (dead, Some(OTHER)),
            (plain_ep, None),
        ]),
    );
    let client = fake.client(settings());
    let (listen, tap) = outbound(&ca, svc, client.clone()).await;
    let mut lines = TapLines(tap.subscribe());

    let mut seen = HashMap::new();
    for _ in 0..6 {
        assert!(echo_through(listen).await);
        let line = lines.next().await;
        let dst = field(&line, "dst").to_owned();
        assert_ne!(dst, dead.to_string(), "{line}");
        if dst == meshed_ep.to_string() {
            assert_eq!(field(&line, "tls"), "true", "{line}");
            assert_eq!(field(&line, "peer"), SERVER, "{line}");
        } else {
            assert_eq!(dst, plain_ep.to_string(), "{line}");
            assert_eq!(field(&line, "tls"), "false", "{line}");
            assert_eq!(field(&line, "reason"), "not_meshed", "{line}");
        }
        *seen.entry(dst).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.values().all(|n| *n >= 2), "balanced: {seen:?}");

    // Scaled down to the plain endpoint only: followed.
    fake.wait_watches(1).await;
    fake.set(svc, service(&[(plain_ep, None)]));
    lookup_until(
        &client,
        svc,
        "the scale-down",
        |a| matches!(a, Ok(Answer::Service(e)) if e.len() == 1),
    )
    .await;
    for _ in 0..2 {
        assert!(echo_through(listen).await);
        let line = lines.next().await;
        assert_eq!(field(&line, "dst"), plain_ep.to_string(), "{line}");
    }
    // No ready endpoint: refused.
    fake.set(svc, service(&[]));
    lookup_until(
        &client,
        svc,
        "no endpoints",
        |a| matches!(a, Ok(Answer::Service(e)) if e.is_empty()),
    )
    .await;
    assert!(!echo_through(listen).await);
    let line = lines.next().await;
    assert_eq!(field(&line, "reason"), "no_ready_endpoint", "{line}");
}

#[tokio::test]
async fn unmeshed_and_unknown_destinations_go_plaintext_and_undiscoverable_ones_are_refused() {
    let ca = Ca::new("example.org");
    let fake = FakeDiscovery::start().await;
    let client = fake.client(settings());
    // Only an authoritative answer gives plaintext; no answer (here the agent's `not_ready`)
    // closes the connection (issue 14, finding 8).
    for (kind, reason, forwarded) in [
        (Some(unmeshed()), "not_meshed", true),
        (Some(unknown()), "no_discovery", true),
        (None, "discovery_refused", false),
    ] {
        let app = echo_app(None).await;
        if let Some(kind) = kind {
            fake.set(app.addr, kind);
        }
        let (listen, tap) = outbound(&ca, app.addr, client.clone()).await;
        let mut lines = TapLines(tap.subscribe());
        assert_eq!(echo_through(listen).await, forwarded, "{reason}");
        let line = lines.next().await;
        assert_eq!(field(&line, "tls"), "false", "{line}");
        assert_eq!(field(&line, "reason"), reason, "{line}");
        assert_eq!(field(&line, "dst"), app.addr.to_string(), "{line}");
    }
}

#[tokio::test]
async fn the_shared_connector_follows_a_rotation_and_a_bundle_change() {
    let ca = Ca::new("example.org");
    let (_api, server) = meshed_server(&ca).await;
    let mut server_lines = Lines::of(&server);
    let dst = server.addr("inbound");
    let fake = FakeDiscovery::start().await;
    fake.set(dst, meshed(SERVER));
    let (listen, tap, ctx) = outbound_ctx(&ca, dst, fake.client(settings())).await;
    let mut lines = TapLines(tap.subscribe());
    let connector = ctx.connectors.exact(&id(SERVER));

    assert!(echo_through(listen).await);
    assert_eq!(field(&lines.next().await, "tls"), "true");
    assert_eq!(field(&server_lines.next().await, "peer"), CLIENT);

    // Rotated to a new SVID (another ID, to tell them apart): the next connection presents it.
    const ROTATED: &str = "spiffe://example.org/client-rotated";
    ctx.store
        .update_svid(ca.issue(ROTATED).x509_svid())
        .unwrap();
    assert!(echo_through(listen).await);
    assert_eq!(field(&lines.next().await, "tls"), "true");
    assert_eq!(field(&server_lines.next().await, "peer"), ROTATED);

    // The bundle now trusts another root only: the server is refused.
    let stranger = Ca::new("example.org");
    let td = lanyard_svid::TrustDomain::parse("example.org").unwrap();
    let only_stranger = client_store(&stranger.issue(CLIENT), &[(&td, stranger.root_der())]);
    ctx.store.update_bundles((*only_stranger.bundles()).clone());
    assert!(!echo_through(listen).await);
    let line = lines.next().await;
    assert_eq!(field(&line, "reason"), "untrusted_chain", "{line}");

    // Trusted again: connects again.
    let trusting = client_store(&ca.issue(CLIENT), &[(&td, ca.root_der())]);
    ctx.store.update_bundles((*trusting.bundles()).clone());
    assert!(echo_through(listen).await);
    assert_eq!(field(&lines.next().await, "tls"), "true");

    // All through the one connector built for SERVER, never rebuilt.
    assert_eq!(ctx.connectors.len(), 1);
    assert!(Arc::ptr_eq(
        connector.config(),
        ctx.connectors.exact(&id(SERVER)).config()
    ));
}
