//! Two in-process proxies (outbound A, inbound B) in front of echo apps, with SVIDs from
//! lanyard-svid's CA served by a fake Workload API: mTLS, plaintext, every refusal, rotation
//! and live bundle changes, over real loopback sockets.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use lanyard_proxy::{RunArgs, RunningProxy};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const CLIENT: &str = "spiffe://example.org/client";
const SERVER: &str = "spiffe://example.org/server";

/// A proxy with its own fake Workload API already serving `id` from `ca`.
struct Node {
    api: FakeWorkloadApi,
    proxy: RunningProxy,
}

async fn node(
    ca: &Ca,
    id: &str,
    roots: &[Vec<u8>],
    federated: &[(&str, Vec<u8>)],
    configure: impl FnOnce(&mut RunArgs),
) -> Node {
    let api = FakeWorkloadApi::start().await;
    let issued = ca.issue(id);
    api.push(svid_message(id, &issued, roots, federated));
    let mut args = proxy_args(&api.socket);
    configure(&mut args);
    let proxy = start_proxy(args).await;
    wait_for_svid(&proxy, issued.leaf()).await;
    Node { api, proxy }
}

/// B: inbound in front of `app`.
async fn server_node(ca: &Ca, app: &App, configure: impl FnOnce(&mut RunArgs)) -> Node {
    let target = app.addr;
    node(ca, SERVER, &[ca.root_der()], &[], |a| {
        a.inbound = vec![format!("127.0.0.1:0={target}")];
        configure(a)
    })
    .await
}

/// A: outbound to `b`'s inbound, expecting `expected`.
async fn client_node(ca: &Ca, b: &Node, expected: &str) -> Node {
    let dest = b.proxy.addr("inbound");
    node(ca, CLIENT, &[ca.root_der()], &[], |a| {
        a.outbound = vec![format!("127.0.0.1:0={dest},id={expected}")]
    })
    .await
}

#[tokio::test]
async fn mtls_end_to_end_shows_peer_ids_on_both_sides() {
    let ca = Ca::new("example.org");
    let app = echo_app(None).await;
    let b = server_node(&ca, &app, |_| {}).await;
    let a = client_node(&ca, &b, SERVER).await;
    let mut tap_a = Lines::of(&a.proxy);
    let mut tap_b = Lines::of(&b.proxy);

    let mut conn = TcpStream::connect(a.proxy.addr("outbound")).await.unwrap();
    assert_eq!(
        round_trip(&mut conn, b"ping over mtls").await,
        b"ping over mtls"
    );
    conn.shutdown().await.unwrap();
    let (rest, _) = read_to_end_or_error(&mut conn).await;
    assert!(rest.is_empty());

    let out = tap_a.next().await;
    assert!(out.starts_with("proxy=out "), "{out}");
    assert_eq!(field(&out, "tls"), "true", "{out}");
    assert_eq!(field(&out, "peer"), SERVER, "{out}");
    assert_eq!(field(&out, "dst"), b.proxy.addr("inbound").to_string());
    assert_eq!(field(&out, "bytes_in"), "14", "{out}");
    assert_eq!(field(&out, "bytes_out"), "14", "{out}");

    let inb = tap_b.next().await;
    assert!(inb.starts_with("proxy=in "), "{inb}");
    assert_eq!(field(&inb, "tls"), "true", "{inb}");
    assert_eq!(field(&inb, "peer"), CLIENT, "{inb}");
    assert_eq!(field(&inb, "dst"), app.addr.to_string());
    assert_eq!(field(&inb, "bytes_in"), "14", "{inb}");

    let (status, metrics) = http_get(b.proxy.addr("metrics"), "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            "lanyard_proxy_connections_total{direction=\"in\",tls=\"true\",reason=\"mtls\"} 1"
        ),
        "{metrics}"
    );
    let (status, _) = http_get(b.proxy.addr("metrics"), "/readyz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn plaintext_reaches_a_permissive_inbound_app() {
    let ca = Ca::new("example.org");
    let app = echo_app(None).await;
    let b = server_node(&ca, &app, |_| {}).await;
    let mut tap = Lines::of(&b.proxy);
    let mut conn = TcpStream::connect(b.proxy.addr("inbound")).await.unwrap();
    assert_eq!(
        round_trip(&mut conn, b"GET / HTTP/1.1\r\n\r\n").await,
        b"GET / HTTP/1.1\r\n\r\n"
    );
    drop(conn);
    let line = tap.next().await;
    assert_eq!(field(&line, "tls"), "false", "{line}");
    assert_eq!(field(&line, "reason"), "no_tls_from_remote", "{line}");
}

#[tokio::test]
async fn a_strict_inbound_refuses_plaintext_and_the_app_never_sees_it() {
    let ca = Ca::new("example.org");
    let app = echo_app(None).await;
    let b = server_node(&ca, &app, |a| a.strict = true).await;
    let mut tap = Lines::of(&b.proxy);
    let mut conn = TcpStream::connect(b.proxy.addr("inbound")).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let (got, _) = read_to_end_or_error(&mut conn).await;
    assert!(got.is_empty(), "{got:?}");
    let line = tap.next().await;
    assert_eq!(field(&line, "reason"), "plaintext_refused", "{line}");
    assert_eq!(app.accepted.load(Ordering::SeqCst), 0);

    // mTLS still goes through the strict listener.
    let a = client_node(&ca, &b, SERVER).await;
    let mut conn = TcpStream::connect(a.proxy.addr("outbound")).await.unwrap();
    assert_eq!(round_trip(&mut conn, b"meshed").await, b"meshed");
}

#[tokio::test]
async fn silence_on_a_strict_inbound_is_refused_at_the_timeout() {
    let ca = Ca::new("example.org");
    let app = echo_app(Some(b"BANNER\n")).await;
    let b = server_node(&ca, &app, |a| a.strict = true).await;
    let mut tap = Lines::of(&b.proxy);
    let mut conn = TcpStream::connect(b.proxy.addr("inbound")).await.unwrap();
    let (got, _) = read_to_end_or_error(&mut conn).await;
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(field(&tap.next().await, "reason"), "plaintext_refused");
    assert_eq!(app.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_id_outside_allow_is_refused() {
    let ca = Ca::new("example.org");
    let app = echo_app(None).await;
    let b = server_node(&ca, &app, |a| {
        a.allow = Some("spiffe://example.org/ns/prod/*".into())
    })
    .await;
    let a = client_node(&ca, &b, SERVER).await;
    let mut tap_a = Lines::of(&a.proxy);
    let mut tap_b = Lines::of(&b.proxy);
    let mut conn = TcpStream::connect(a.proxy.addr("outbound")).await.unwrap();
    conn.write_all(b"let me in").await.unwrap();
    let (got, _) = read_to_end_or_error(&mut conn).await;
    assert!(got.is_empty(), "{got:?}");
    let line = tap_b.next().await;
    assert_eq!(field(&line, "tls"), "false", "{line}");
    assert_eq!(field(&line, "reason"), "id_not_allowed", "{line}");
    // A's handshake completed (TLS 1.3) before B's refusal arrived; A still reports it.
    let out = tap_a.next().await;
    assert_eq!(field(&out, "tls"), "false", "{out}");
    assert_eq!(field(&out, "reason"), "refused_by_peer", "{out}");
    assert_eq!(app.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_client_svid_from_another_trust_domain_is_refused() {
    let ca = Ca::new("example.org");
    let other = Ca::new("other.org");
    let app = echo_app(None).await;
    // B trusts example.org only.
    let b = server_node(&ca, &app, |_| {}).await;
    // A is in other.org and trusts example.org as a federated domain (so it accepts B).
    let dest = b.proxy.addr("inbound");
    let a = node(
        &other,
        "spiffe://other.org/client",
        &[other.root_der()],
        &[("example.org", ca.root_der())],
        |a| a.outbound = vec![format!("127.0.0.1:0={dest},id={SERVER}")],
    )
    .await;
    let mut tap_b = Lines::of(&b.proxy);
    let mut conn = TcpStream::connect(a.proxy.addr("outbound")).await.unwrap();
    conn.write_all(b"hello").await.unwrap();
    let (got, _) = read_to_end_or_error(&mut conn).await;
    assert!(got.is_empty(), "{got:?}");
    let line = tap_b.next().await;
    assert_eq!(field(&line, "reason"), "unknown_trust_domain", "{line}");
    assert_eq!(app.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_server_with_the_wrong_id_is_refused_and_never_gets_plaintext() {
    let ca = Ca::new("example.org");
    let app = echo_app(None).await;
    let b = server_node(&ca, &app, |_| {}).await;
    let a = client_node(&ca, &b, "spiffe://example.org/somebody-else").await;
    let mut tap_a = Lines::of(&a.proxy);
    let mut tap_b = Lines::of(&b.proxy);
    let mut conn = TcpStream::connect(a.proxy.addr("outbound")).await.unwrap();
    conn.write_all(b"secret").await.unwrap();
    let (got, _) = read_to_end_or_error(&mut conn).await;
    assert!(got.is_empty(), "{got:?}");
    let out = tap_a.next().await;
    assert_eq!(field(&out, "tls"), "false", "{out}");
    assert_eq!(field(&out, "reason"), "unexpected_id", "{out}");
    // B saw a TLS handshake that A abandoned: nothing was forwarded in plaintext.
    let inb = tap_b.next().await;
    assert_eq!(field(&inb, "tls"), "false", "{inb}");
    assert_eq!(field(&inb, "reason"), "handshake_failed", "{inb}");
    assert_eq!(app.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_server_speaks_first_app_works_plain_and_meshed() {
    let ca = Ca::new("example.org");
    let app = echo_app(Some(b"220 ready\n")).await;
    let b = server_node(&ca, &app, |_| {}).await;
    let mut tap_b = Lines::of(&b.proxy);

    // Plaintext client that waits for the banner: decided by the detection timeout.
    let mut conn = TcpStream::connect(b.proxy.addr("inbound")).await.unwrap();
    let mut banner = [0u8; 10];
    within(
        "the banner",
        tokio::io::AsyncReadExt::read_exact(&mut conn, &mut banner),
    )
    .await
    .unwrap();
    assert_eq!(&banner, b"220 ready\n");
    assert_eq!(round_trip(&mut conn, b"HELO x").await, b"HELO x");
    drop(conn);
    let line = tap_b.next().await;
    assert_eq!(field(&line, "reason"), "detect_timeout", "{line}");

    // Through the mesh: A's ClientHello decides at once, and the banner comes back.
    let a = client_node(&ca, &b, SERVER).await;
    let mut conn = TcpStream::connect(a.proxy.addr("outbound")).await.unwrap();
    let mut banner = [0u8; 10];
    within(
        "the banner",
        tokio::io::AsyncReadExt::read_exact(&mut conn, &mut banner),
    )
    .await
    .unwrap();
    assert_eq!(&banner, b"220 ready\n");
}

#[tokio::test]
async fn the_apps_own_tls_and_opaque_ports_are_forwarded_untouched() {
    let ca = Ca::new("example.org");
    let app = echo_app(None).await;
    let b = server_node(&ca, &app, |_| {}).await;
    let mut tap = Lines::of(&b.proxy);
    // A ClientHello offering h2 only: the app's own TLS, echoed back byte for byte.
    let hello = client_hello(&[b"h2"]);
    let mut conn = TcpStream::connect(b.proxy.addr("inbound")).await.unwrap();
    assert_eq!(round_trip(&mut conn, &hello).await, hello);
    drop(conn);
    assert_eq!(field(&tap.next().await, "reason"), "other_tls");

    let port = app.addr.port();
    let opaque = server_node(&ca, &app, |a| a.opaque_port = vec![port]).await;
    let mut tap = Lines::of(&opaque.proxy);
    let lanyard_hello = client_hello(&[b"lanyard/1"]);
    let mut conn = TcpStream::connect(opaque.proxy.addr("inbound"))
        .await
        .unwrap();
    // Even a lanyard ClientHello is not looked at on an opaque port.
    assert_eq!(round_trip(&mut conn, &lanyard_hello).await, lanyard_hello);
    drop(conn);
    assert_eq!(field(&tap.next().await, "reason"), "opaque_port");
}

#[tokio::test]
async fn plaintext_outbound_without_id_says_not_meshed() {
    let ca = Ca::new("example.org");
    let app = echo_app(None).await;
    let target = app.addr;
    let a = node(&ca, CLIENT, &[ca.root_der()], &[], |a| {
        a.outbound = vec![format!("127.0.0.1:0={target}")]
    })
    .await;
    let mut tap = Lines::of(&a.proxy);
    let mut conn = TcpStream::connect(a.proxy.addr("outbound")).await.unwrap();
    assert_eq!(round_trip(&mut conn, b"plain").await, b"plain");
    drop(conn);
    let line = tap.next().await;
    assert!(line.starts_with("proxy=out "), "{line}");
    assert_eq!(field(&line, "reason"), "not_meshed", "{line}");
}

#[tokio::test]
async fn rotation_keeps_open_connections_and_new_ones_see_the_new_certificate() {
    let ca = Ca::new("example.org");
    let app = echo_app(None).await;
    let b = server_node(&ca, &app, |_| {}).await;
    let a = client_node(&ca, &b, SERVER).await;

    let mut held = TcpStream::connect(a.proxy.addr("outbound")).await.unwrap();
    assert_eq!(round_trip(&mut held, b"before").await, b"before");

    // Both sides rotate.
    let new_server = ca.issue(SERVER);
    b.api
        .push(svid_message(SERVER, &new_server, &[ca.root_der()], &[]));
    let new_client = ca.issue(CLIENT);
    a.api
        .push(svid_message(CLIENT, &new_client, &[ca.root_der()], &[]));
    wait_for_svid(&b.proxy, new_server.leaf()).await;
    wait_for_svid(&a.proxy, new_client.leaf()).await;

    // The connection opened before the rotation still works.
    assert_eq!(round_trip(&mut held, b"after").await, b"after");

    // A new connection is served with the new certificate.
    let probe = client_store(&ca.issue(CLIENT), &[(&ca.trust_domain, ca.root_der())]);
    let mut tls = mtls_connect(probe, b.proxy.addr("inbound"), SERVER)
        .await
        .unwrap();
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(&presented, new_server.leaf());
    assert_eq!(round_trip(&mut tls, b"new").await, b"new");
    // And the mesh keeps working for new connections.
    let mut fresh = TcpStream::connect(a.proxy.addr("outbound")).await.unwrap();
    assert_eq!(round_trip(&mut fresh, b"fresh").await, b"fresh");
    assert!(b.api.streams.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn a_root_added_to_the_bundle_is_trusted_without_restart() {
    let ca = Ca::new("example.org");
    // A second root of the same trust domain (a root rotation in progress).
    let ca2 = Ca::new("example.org");
    let app = echo_app(None).await;
    let b = server_node(&ca, &app, |_| {}).await;
    // A's SVID is issued under the new root; A trusts both roots.
    let dest = b.proxy.addr("inbound");
    let a = node(&ca2, CLIENT, &[ca.root_der(), ca2.root_der()], &[], |a| {
        a.outbound = vec![format!("127.0.0.1:0={dest},id={SERVER}")]
    })
    .await;
    let mut tap_b = Lines::of(&b.proxy);

    let mut conn = TcpStream::connect(a.proxy.addr("outbound")).await.unwrap();
    conn.write_all(b"too early").await.unwrap();
    let (got, _) = read_to_end_or_error(&mut conn).await;
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(field(&tap_b.next().await, "reason"), "untrusted_chain");

    // The new root reaches B through the Workload API; B keeps its SVID and process.
    let same_svid = ca.issue(SERVER);
    b.api.push(svid_message(
        SERVER,
        &same_svid,
        &[ca.root_der(), ca2.root_der()],
        &[],
    ));
    wait_for_roots(&b.proxy, &ca.trust_domain, 2).await;
    let mut conn = TcpStream::connect(a.proxy.addr("outbound")).await.unwrap();
    assert_eq!(round_trip(&mut conn, b"now trusted").await, b"now trusted");
    drop(conn);
    let line = tap_b.next().await;
    assert_eq!(field(&line, "peer"), CLIENT, "{line}");
}

#[tokio::test]
async fn before_the_first_svid_meshed_traffic_is_refused_and_plaintext_flows() {
    let ca = Ca::new("example.org");
    let app = echo_app(None).await;
    // B's Workload API has nothing for it yet.
    let api = FakeWorkloadApi::start().await;
    let mut args = proxy_args(&api.socket);
    args.inbound = vec![format!("127.0.0.1:0={}", app.addr)];
    args.outbound = vec![format!("127.0.0.1:0={},id={CLIENT}", app.addr)];
    let b = start_proxy(args).await;
    let mut tap = Lines::of(&b);
    wait_until("the proxy to open its stream", || {
        api.streams.load(Ordering::SeqCst) >= 1
    })
    .await;

    let (status, body) = http_get(b.addr("metrics"), "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no X.509-SVID"), "{body}");
    let (status, _) = http_get(b.addr("metrics"), "/healthz").await;
    assert_eq!(status, 200);

    // Inbound mTLS attempt: refused.
    let probe = client_store(&ca.issue(CLIENT), &[(&ca.trust_domain, ca.root_der())]);
    match mtls_connect(probe.clone(), b.addr("inbound"), SERVER).await {
        Err(_) => {}
        Ok(mut tls) => {
            let (got, _) = read_to_end_or_error(&mut tls).await;
            assert!(got.is_empty());
        }
    }
    assert_eq!(field(&tap.next().await, "reason"), "no_svid");
    // Outbound with id=: refused without dialling.
    let mut conn = TcpStream::connect(b.addr("outbound")).await.unwrap();
    let (got, _) = read_to_end_or_error(&mut conn).await;
    assert!(got.is_empty());
    let line = tap.next().await;
    assert!(line.starts_with("proxy=out "), "{line}");
    assert_eq!(field(&line, "reason"), "no_svid");
    // Plaintext flows.
    let mut conn = TcpStream::connect(b.addr("inbound")).await.unwrap();
    assert_eq!(round_trip(&mut conn, b"plain").await, b"plain");
    drop(conn);
    assert_eq!(field(&tap.next().await, "reason"), "no_tls_from_remote");

    // The first SVID arrives: ready, and mTLS is served.
    let issued = ca.issue(SERVER);
    api.push(svid_message(SERVER, &issued, &[ca.root_der()], &[]));
    wait_for_svid(&b, issued.leaf()).await;
    let (status, _) = http_get(b.addr("metrics"), "/readyz").await;
    assert_eq!(status, 200);
    let mut tls = mtls_connect(probe, b.addr("inbound"), SERVER)
        .await
        .unwrap();
    assert_eq!(round_trip(&mut tls, b"meshed").await, b"meshed");
}

#[tokio::test]
async fn the_connection_limit_closes_extra_connections() {
    let ca = Ca::new("example.org");
    let app = echo_app(None).await;
    let b = server_node(&ca, &app, |a| a.max_connections = Some(1)).await;
    let mut tap = Lines::of(&b.proxy);
    let mut first = TcpStream::connect(b.proxy.addr("inbound")).await.unwrap();
    assert_eq!(round_trip(&mut first, b"one").await, b"one");
    let mut second = TcpStream::connect(b.proxy.addr("inbound")).await.unwrap();
    let (got, _) = read_to_end_or_error(&mut second).await;
    assert!(got.is_empty());
    assert_eq!(field(&tap.next().await, "reason"), "connection_limit");
    assert_eq!(round_trip(&mut first, b"still").await, b"still");
}

/// A syntactically valid ClientHello record offering `alpn`.
fn client_hello(alpn: &[&[u8]]) -> Vec<u8> {
    let mut list = Vec::new();
    for name in alpn {
        list.push(name.len() as u8);
        list.extend_from_slice(name);
    }
    let mut ext = vec![0, 16];
    ext.extend(((list.len() + 2) as u16).to_be_bytes());
    ext.extend((list.len() as u16).to_be_bytes());
    ext.extend(list);
    let mut body = vec![3, 3];
    body.extend([9u8; 32]);
    body.extend([0, 0, 2, 0x13, 0x01, 1, 0]);
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut hs = vec![1];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut record = vec![0x16, 3, 1];
    record.extend((hs.len() as u16).to_be_bytes());
    record.extend(hs);
    record
}

#[tokio::test]
async fn a_lost_workload_api_stream_is_reopened_and_the_svid_kept_meanwhile() {
    let ca = Ca::new("example.org");
    let app = echo_app(None).await;
    let b = server_node(&ca, &app, |_| {}).await;
    let first = b.proxy.store.svid().unwrap();
    assert_eq!(b.api.streams.load(Ordering::SeqCst), 1);

    // The agent goes away and, on its return, refuses once ("no identity issued").
    b.api.refuse_next.store(1, Ordering::SeqCst);
    b.api.kill_streams();
    wait_until("the proxy to retry past the refusal", || {
        b.api.streams.load(Ordering::SeqCst) >= 3
    })
    .await;
    // The proxy kept its SVID and still serves mTLS.
    assert_eq!(b.proxy.store.svid().unwrap().leaf(), first.leaf());
    let a = client_node(&ca, &b, SERVER).await;
    let mut conn = TcpStream::connect(a.proxy.addr("outbound")).await.unwrap();
    assert_eq!(
        round_trip(&mut conn, b"still meshed").await,
        b"still meshed"
    );

    // Updates on the new stream apply.
    let next = ca.issue(SERVER);
    b.api
        .push(svid_message(SERVER, &next, &[ca.root_der()], &[]));
    wait_for_svid(&b.proxy, next.leaf()).await;
    let (_, metrics) = http_get(b.proxy.addr("metrics"), "/metrics").await;
    assert!(
        metrics.contains("lanyard_proxy_workload_api_errors_total{reason=\"status\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_unusable_workload_api_message_is_ignored_and_the_svid_kept() {
    let ca = Ca::new("example.org");
    let other = Ca::new("example.org");
    let app = echo_app(None).await;
    let b = server_node(&ca, &app, |_| {}).await;
    let first = b.proxy.store.svid().unwrap();
    let metrics_addr = b.proxy.addr("metrics");
    let refusals_reach = |n: usize| async move {
        let wanted = format!("lanyard_proxy_workload_api_errors_total{{reason=\"bad_svid\"}} {n}");
        within("the refusal to be counted", async {
            while !http_get(metrics_addr, "/metrics").await.1.contains(&wanted) {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await
    };
    // A message whose spiffe_id field does not match its certificate.
    let issued = ca.issue(SERVER);
    b.api
        .push(svid_message(CLIENT, &issued, &[ca.root_der()], &[]));
    refusals_reach(1).await;
    // A message whose key is not the certificate's.
    let mut mismatched = svid_message(SERVER, &ca.issue(SERVER), &[ca.root_der()], &[]);
    mismatched.svids[0].x509_svid_key = other.issue(SERVER).key.to_vec();
    b.api.push(mismatched);
    refusals_reach(2).await;
    assert_eq!(b.proxy.store.svid().unwrap().leaf(), first.leaf());
}
