//! Peers of a federated trust domain: a proxy whose Workload API delivers a federated bundle
//! accepts that domain's workloads only where `--allow` names them (an ID or a prefix of that
//! domain), never through `any`, which is the proxy's own trust domain. Dialling a federated
//! server works with its bundle and is refused without it. Two (three) trust domains' CAs come
//! from lanyard-svid's test support; all over real loopback sockets.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use lanyard_proxy::{RunArgs, RunningProxy};
use lanyard_svid::test_support::{LeafSpec, TestCa};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const SERVER: &str = "spiffe://example.org/server";
const LOCAL_CLIENT: &str = "spiffe://example.org/client";
const PARTNER_API: &str = "spiffe://partner.example/ns/pay/sa/api";
const PARTNER_OTHER: &str = "spiffe://partner.example/ns/pay/sa/other";
const THIRD: &str = "spiffe://third.example/ns/x/sa/y";

fn issued(ca: &TestCa, id: &str) -> Issued {
    let (chain, key) = ca.issue(&LeafSpec::new(id));
    Issued { chain, key }
}

fn root(ca: &TestCa) -> Vec<u8> {
    ca.root().as_ref().to_vec()
}

/// A proxy with its own fake Workload API serving `id` from `ca`, its own bundle and the
/// `federated` domains' bundles; returns once the proxy holds them all.
struct Node {
    _api: FakeWorkloadApi,
    proxy: RunningProxy,
}

async fn node(
    ca: &TestCa,
    id: &str,
    federated: &[&TestCa],
    configure: impl FnOnce(&mut RunArgs),
) -> Node {
    let api = FakeWorkloadApi::start().await;
    let svid = issued(ca, id);
    let federated_roots: Vec<(&str, Vec<u8>)> = federated
        .iter()
        .map(|f| (f.trust_domain().name(), root(f)))
        .collect();
    api.push(svid_message(id, &svid, &[root(ca)], &federated_roots));
    let mut args = proxy_args(&api.socket);
    configure(&mut args);
    let proxy = start_proxy(args).await;
    wait_for_svid(&proxy, svid.leaf()).await;
    for f in federated {
        wait_for_roots(&proxy, f.trust_domain(), 1).await;
    }
    Node { _api: api, proxy }
}

/// example.org's SERVER behind an inbound proxy holding partner.example's bundle.
async fn local_server(local: &TestCa, partner: &TestCa, app: &App, allow: Option<&str>) -> Node {
    let target = app.addr;
    node(local, SERVER, &[partner], |a| {
        a.inbound = vec![format!("127.0.0.1:0={target}")];
        a.allow = allow.map(str::to_owned);
    })
    .await
}

/// Dials `server`'s inbound as `id` of `ca` (trusting example.org, the server's domain), sends
/// a message and returns what came back: the echo when accepted, `Err` when refused (under
/// TLS 1.3 the client's handshake completes and the server's refusal shows on the read).
async fn dial_as(ca: &TestCa, id: &str, local: &TestCa, server: &Node) -> Result<Vec<u8>, ()> {
    let store = client_store(&issued(ca, id), &[(local.trust_domain(), root(local))]);
    let mut tls = match mtls_connect(store, server.proxy.addr("inbound"), SERVER).await {
        Ok(tls) => tls,
        Err(_) => return Err(()),
    };
    if tls.write_all(b"hello").await.is_err() {
        return Err(());
    }
    // Our end done (a refused connection may already fail here): the echo app then closes.
    let _ = tls.shutdown().await;
    match read_to_end_or_error(&mut tls).await {
        (got, _) if !got.is_empty() => Ok(got),
        (got, _) => {
            assert!(got.is_empty(), "a refused peer got bytes: {got:?}");
            Err(())
        }
    }
}

/// The next inbound tap line of `tap`: its `tls` and `reason` (or `peer` when meshed).
async fn next_inbound(tap: &mut Lines) -> (String, String) {
    let line = tap.next().await;
    assert!(line.starts_with("proxy=in "), "{line}");
    let tls = field(&line, "tls").to_owned();
    let what = if tls == "true" {
        field(&line, "peer")
    } else {
        field(&line, "reason")
    };
    (tls, what.to_owned())
}

async fn metrics_of(node: &Node) -> String {
    let (status, body) = http_get(node.proxy.addr("metrics"), "/metrics").await;
    assert_eq!(status, 200);
    body
}

#[tokio::test]
async fn allow_any_refuses_every_workload_of_a_federated_domain() {
    let local = TestCa::new("example.org");
    let partner = TestCa::new("partner.example");
    let app = echo_app(None).await;
    // The default --allow: any.
    let b = local_server(&local, &partner, &app, None).await;
    let mut tap = Lines::of(&b.proxy);

    // partner.example's bundle is held, so its client verifies, and is refused all the same.
    assert!(dial_as(&partner, PARTNER_API, &local, &b).await.is_err());
    assert_eq!(
        next_inbound(&mut tap).await,
        ("false".into(), "other_trust_domain".into())
    );
    assert_eq!(app.accepted.load(Ordering::SeqCst), 0);
    assert!(
        metrics_of(&b).await.contains(
            "lanyard_proxy_connections_total{direction=\"in\",tls=\"false\",reason=\"other_trust_domain\"} 1"
        ),
        "the refusal is counted under its label"
    );

    // `any` still lets in every workload of the proxy's own domain.
    assert_eq!(
        dial_as(&local, LOCAL_CLIENT, &local, &b).await,
        Ok(b"hello".to_vec())
    );
    assert_eq!(
        next_inbound(&mut tap).await,
        ("true".into(), LOCAL_CLIENT.into())
    );
}

#[tokio::test]
async fn a_rule_of_the_foreign_domain_lets_exactly_its_workloads_in() {
    let local = TestCa::new("example.org");
    let partner = TestCa::new("partner.example");
    let app = echo_app(None).await;
    let allow = format!("any,{PARTNER_API}");
    let b = local_server(&local, &partner, &app, Some(&allow)).await;
    let mut tap = Lines::of(&b.proxy);

    assert_eq!(
        dial_as(&partner, PARTNER_API, &local, &b).await,
        Ok(b"hello".to_vec())
    );
    assert_eq!(
        next_inbound(&mut tap).await,
        ("true".into(), PARTNER_API.into())
    );
    // Another workload of the same foreign domain is not named.
    assert!(dial_as(&partner, PARTNER_OTHER, &local, &b).await.is_err());
    assert_eq!(
        next_inbound(&mut tap).await,
        ("false".into(), "other_trust_domain".into())
    );
    assert_eq!(
        dial_as(&local, LOCAL_CLIENT, &local, &b).await,
        Ok(b"hello".to_vec())
    );
    assert_eq!(
        next_inbound(&mut tap).await,
        ("true".into(), LOCAL_CLIENT.into())
    );
    assert_eq!(app.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_prefix_of_the_foreign_domain_without_any_is_strict_for_both_domains() {
    let local = TestCa::new("example.org");
    let partner = TestCa::new("partner.example");
    let app = echo_app(None).await;
    let b = local_server(
        &local,
        &partner,
        &app,
        Some("spiffe://partner.example/ns/pay/*"),
    )
    .await;
    let mut tap = Lines::of(&b.proxy);

    for peer in [PARTNER_API, PARTNER_OTHER] {
        assert_eq!(
            dial_as(&partner, peer, &local, &b).await,
            Ok(b"hello".to_vec()),
            "{peer}"
        );
        assert_eq!(next_inbound(&mut tap).await, ("true".into(), peer.into()));
    }
    for (ca, peer, reason) in [
        (
            &partner,
            "spiffe://partner.example/ns/ops/sa/x",
            "other_trust_domain",
        ),
        // No `any`: the own domain's workloads are not allowed either.
        (&local, LOCAL_CLIENT, "id_not_allowed"),
    ] {
        assert!(dial_as(ca, peer, &local, &b).await.is_err(), "{peer}");
        assert_eq!(
            next_inbound(&mut tap).await,
            ("false".into(), reason.into()),
            "{peer}"
        );
    }
    // Restrictive, hence strict: plaintext is closed.
    let mut plain = TcpStream::connect(b.proxy.addr("inbound")).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let (got, _) = read_to_end_or_error(&mut plain).await;
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(
        next_inbound(&mut tap).await,
        ("false".into(), "plaintext_refused".into())
    );
    assert_eq!(app.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_named_peer_still_needs_a_bundle_of_its_own_domain() {
    let local = TestCa::new("example.org");
    let partner = TestCa::new("partner.example");
    let third = TestCa::new("third.example");
    let app = echo_app(None).await;
    // third.example is named, but only partner.example's bundle is held.
    let allow = format!("any,{THIRD},spiffe://example.org/*");
    let b = local_server(&local, &partner, &app, Some(&allow)).await;
    let mut tap = Lines::of(&b.proxy);

    assert!(dial_as(&third, THIRD, &local, &b).await.is_err());
    assert_eq!(
        next_inbound(&mut tap).await,
        ("false".into(), "unknown_trust_domain".into())
    );
    // The partner's CA cannot vouch for another domain's IDs: each peer is verified against
    // the bundle of its own trust domain only.
    for (peer, reason) in [
        (LOCAL_CLIENT, "untrusted_chain"),
        (THIRD, "unknown_trust_domain"),
    ] {
        assert!(dial_as(&partner, peer, &local, &b).await.is_err(), "{peer}");
        assert_eq!(
            next_inbound(&mut tap).await,
            ("false".into(), reason.into()),
            "{peer}"
        );
    }
    assert_eq!(app.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn proxies_of_two_domains_mesh_only_with_the_bundle_and_an_allow_rule() {
    let local = TestCa::new("example.org");
    let partner = TestCa::new("partner.example");
    let app = echo_app(None).await;
    let target = app.addr;
    // P: partner.example's API, holding example.org's bundle, allowing example.org's client.
    let p = node(&partner, PARTNER_API, &[&local], |a| {
        a.inbound = vec![format!("127.0.0.1:0={target}")];
        a.allow = Some(format!("any,{LOCAL_CLIENT}"));
    })
    .await;
    // P': the same, with plain `any`.
    let p_any = node(&partner, PARTNER_API, &[&local], |a| {
        a.inbound = vec![format!("127.0.0.1:0={target}")];
    })
    .await;
    let outbound_to = |p: &Node| {
        vec![format!(
            "127.0.0.1:0={},id={PARTNER_API}",
            p.proxy.addr("inbound")
        )]
    };
    // A: example.org's client holding partner.example's bundle; A': without it.
    let a = node(&local, LOCAL_CLIENT, &[&partner], |a| {
        a.outbound = outbound_to(&p);
    })
    .await;
    let a_refused = node(&local, LOCAL_CLIENT, &[&partner], |a| {
        a.outbound = outbound_to(&p_any);
    })
    .await;
    let a_no_bundle = node(&local, LOCAL_CLIENT, &[], |a| {
        a.outbound = outbound_to(&p);
    })
    .await;

    // Bundle and rule: meshed, each side seeing the other's foreign ID.
    let (mut tap_a, mut tap_p) = (Lines::of(&a.proxy), Lines::of(&p.proxy));
    let mut conn = TcpStream::connect(a.proxy.addr("outbound")).await.unwrap();
    assert_eq!(round_trip(&mut conn, b"federated").await, b"federated");
    drop(conn);
    let out = tap_a.next().await;
    assert_eq!(field(&out, "tls"), "true", "{out}");
    assert_eq!(field(&out, "peer"), PARTNER_API, "{out}");
    assert_eq!(
        next_inbound(&mut tap_p).await,
        ("true".into(), LOCAL_CLIENT.into())
    );

    // Bundle, no rule: P' refuses A' (other_trust_domain); A' sees the refusal.
    let (mut tap_a, mut tap_p) = (Lines::of(&a_refused.proxy), Lines::of(&p_any.proxy));
    let mut conn = TcpStream::connect(a_refused.proxy.addr("outbound"))
        .await
        .unwrap();
    conn.write_all(b"let me in").await.unwrap();
    let (got, _) = read_to_end_or_error(&mut conn).await;
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(
        next_inbound(&mut tap_p).await,
        ("false".into(), "other_trust_domain".into())
    );
    let out = tap_a.next().await;
    assert_eq!(field(&out, "tls"), "false", "{out}");
    assert_eq!(field(&out, "reason"), "refused_by_peer", "{out}");

    // No bundle of the server's domain: A'' refuses the server itself, sending nothing.
    let (mut tap_a, mut tap_p) = (Lines::of(&a_no_bundle.proxy), Lines::of(&p.proxy));
    let mut conn = TcpStream::connect(a_no_bundle.proxy.addr("outbound"))
        .await
        .unwrap();
    conn.write_all(b"secret").await.unwrap();
    let (got, _) = read_to_end_or_error(&mut conn).await;
    assert!(got.is_empty(), "{got:?}");
    let out = tap_a.next().await;
    assert_eq!(field(&out, "tls"), "false", "{out}");
    assert_eq!(field(&out, "reason"), "unknown_trust_domain", "{out}");
    assert_eq!(
        next_inbound(&mut tap_p).await,
        ("false".into(), "handshake_failed".into())
    );
    assert!(
        metrics_of(&a_no_bundle).await.contains(
            "lanyard_proxy_connections_total{direction=\"out\",tls=\"false\",reason=\"unknown_trust_domain\"} 1"
        ),
        "the outbound refusal is counted under its label"
    );
    // Only the meshed connection reached the app.
    assert_eq!(app.accepted.load(Ordering::SeqCst), 1);
}
