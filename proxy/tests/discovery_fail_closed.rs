//! Issue 14, finding 8 (the proxy half): an error from discovery never becomes plaintext.
//!
//! The attack: fill the agent's discovery cache (or this caller's share of it) so that the
//! agent refuses `Resolve` with `too_many_destinations` / `caller_destination_budget`; before
//! the fix the proxy read any refusal as "no discovery" and forwarded the connection in
//! plaintext, to a destination that may be meshed. Here a fake agent refuses exactly as the
//! real one does (status code, message and the `lanyard-discovery-refusal` trailer) and the
//! proxy must close the connection as `discovery_refused` without ever connecting to the
//! destination; the same for an agent that is not there at all.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::discovery::{FakeDiscovery, discovered_outbound};
use common::*;
use lanyard_proxy::discovery::{DiscoveryClient, DiscoverySettings, REFUSAL_TRAILER};
use lanyard_proxy::tap::Tap;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::{Code, Status};

const CLIENT: &str = "spiffe://example.org/client";

/// The agent's refusal as `DiscoveryRefusal::to_status` builds it.
fn agent_refusal(code: Code, label: &str) -> Status {
    let mut status = Status::new(code, format!("{label}: refused by the agent"));
    status
        .metadata_mut()
        .insert(REFUSAL_TRAILER, label.parse().unwrap());
    status
}

fn lookups(registry: &Registry, outcome: &str) -> u64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    let prefix = format!("lanyard_proxy_discovery_lookups_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.parse().unwrap())
}

/// A discovered outbound listener towards `app` asking the agent at `socket`; its address,
/// tap, and metrics registry.
async fn outbound(
    ca: &Ca,
    app: &App,
    socket: std::path::PathBuf,
) -> (std::net::SocketAddr, Tap, Registry) {
    let settings = DiscoverySettings {
        resolve_timeout: Duration::from_secs(5),
        ..DiscoverySettings::default()
    };
    let o = discovered_outbound(ca, CLIENT, app.addr, |metrics| {
        DiscoveryClient::with_metrics(socket, settings, metrics)
    })
    .await;
    (o.listen, o.tap, o.registry)
}

/// Sends a secret through `listen`; the bytes that came back before the proxy closed.
async fn send_secret(listen: std::net::SocketAddr) -> Vec<u8> {
    let mut s = TcpStream::connect(listen).await.unwrap();
    // The write may fail once the proxy has closed: either way nothing may come back.
    let _ = s.write_all(b"GET /secret HTTP/1.1\r\n\r\n").await;
    within("the proxy to close", async {
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got).await;
        got
    })
    .await
}

async fn tap_line(tap: &mut lanyard_proxy::tap::TapReader) -> String {
    within("a tap line", async {
        match tap.next().await {
            Some(lanyard_proxy::TapEvent::Line(line)) => line.to_string(),
            other => panic!("unexpected tap event {other:?}"),
        }
    })
    .await
}

#[tokio::test]
async fn a_refusing_agent_closes_the_connection_and_nothing_reaches_the_destination() {
    let ca = Ca::new("example.org");
    for (code, label) in [
        (Code::ResourceExhausted, "too_many_destinations"),
        (Code::ResourceExhausted, "caller_destination_budget"),
        (Code::Unavailable, "not_ready"),
    ] {
        let fake = FakeDiscovery::start().await;
        fake.refuse(Some(agent_refusal(code, label)));
        // The destination is a plain echo app: before the fix the secret was echoed back.
        let app = echo_app(None).await;
        let (listen, tap, registry) = outbound(&ca, &app, fake.socket.clone()).await;
        let mut lines = tap.subscribe();

        let back = send_secret(listen).await;
        assert!(back.is_empty(), "{label}: plaintext went through: {back:?}");
        let line = tap_line(&mut lines).await;
        assert_eq!(field(&line, "tls"), "false", "{line}");
        assert_eq!(field(&line, "reason"), "discovery_refused", "{line}");
        assert_eq!(field(&line, "dst"), app.addr.to_string(), "{line}");
        assert!(fake.resolves() >= 1, "{label}: the agent was asked");
        assert_eq!(
            app.accepted.load(Ordering::SeqCst),
            0,
            "{label}: the proxy never connected to the destination"
        );
        assert_eq!(lookups(&registry, "discovery_refused"), 1, "{label}");
    }
}

#[tokio::test]
async fn an_unreachable_agent_closes_the_connection_too() {
    let ca = Ca::new("example.org");
    let dir = tempfile::tempdir().unwrap();
    let app = echo_app(None).await;
    let (listen, tap, registry) = outbound(&ca, &app, dir.path().join("no-agent.sock")).await;
    let mut lines = tap.subscribe();

    assert!(send_secret(listen).await.is_empty());
    let line = tap_line(&mut lines).await;
    assert_eq!(field(&line, "reason"), "discovery_refused", "{line}");
    assert_eq!(app.accepted.load(Ordering::SeqCst), 0);
    assert_eq!(lookups(&registry, "discovery_unavailable"), 1);
}
