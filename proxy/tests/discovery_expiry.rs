//! How the discovery client reads the end of a `Watch`, against a fake agent `Discovery`
//! service on a Unix socket: the agent's `lanyard-discovery-refusal: expired` trailer drops
//! the cached answer (refused if it was meshed), while a bare `Unavailable` (whatever its
//! message says) is a lost stream whose answer stays in use; and the lookup metrics.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::discovery::{FakeDiscovery, lookup_until, meshed, unmeshed};
use common::wait_until;
use lanyard_proxy::discovery::{Answer, DiscoveryClient, DiscoveryError, DiscoverySettings};
use lanyard_proxy::metrics::ProxyMetrics;
use lanyard_svid::SpiffeId;
use prometheus_client::registry::Registry;
use tonic::{Code, Status};

/// The documented key (`Discovery` in discovery.proto), spelled out: the agent and the proxy
/// must agree on it.
const TRAILER: &str = "lanyard-discovery-refusal";
const ID: &str = "spiffe://example.org/server";
const NEW_ID: &str = "spiffe://example.org/new";

fn expired_status() -> Status {
    let mut status = Status::unavailable("expired: the cached answer expired");
    status
        .metadata_mut()
        .insert(TRAILER, "expired".parse().unwrap());
    status
}

/// The same words, no trailer: not the agent's typed signal.
fn bare_status() -> Status {
    Status::unavailable("expired: the cached answer expired")
}

/// A client whose stale TTL (an hour) cannot run out during a test: only the agent's signal
/// can end an answer.
fn client(agent: &FakeDiscovery) -> (DiscoveryClient, Registry) {
    let mut registry = Registry::default();
    let metrics = ProxyMetrics::register(&mut registry);
    let settings = DiscoverySettings {
        resolve_timeout: Duration::from_secs(5),
        stale_ttl: Duration::from_secs(3600),
        rewatch_delay: Duration::from_millis(20),
        ..DiscoverySettings::default()
    };
    let client = DiscoveryClient::with_metrics(agent.socket.clone(), settings, metrics);
    (client, registry)
}

fn lookups(registry: &Registry, outcome: &str) -> u64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    let prefix = format!("lanyard_proxy_discovery_lookups_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.parse().unwrap())
}

fn id(text: &str) -> SpiffeId {
    SpiffeId::parse(text).unwrap()
}

const MESHED: &str = "10.0.0.5:80";
const PLAIN: &str = "10.0.0.7:80";

/// An agent answering both destinations, and a client that looked both up and watches them.
async fn watched() -> (
    FakeDiscovery,
    DiscoveryClient,
    Registry,
    SocketAddr,
    SocketAddr,
) {
    let agent = FakeDiscovery::start().await;
    let (meshed_dst, plain_dst) = (MESHED.parse().unwrap(), PLAIN.parse().unwrap());
    agent.set(meshed_dst, meshed(ID));
    agent.set(plain_dst, unmeshed());
    let (client, registry) = client(&agent);
    client.lookup(meshed_dst).await.unwrap();
    client.lookup(plain_dst).await.unwrap();
    wait_until("both watches open", || {
        agent.watch_calls(meshed_dst) == 1 && agent.watch_calls(plain_dst) == 1
    })
    .await;
    (agent, client, registry, meshed_dst, plain_dst)
}

#[tokio::test]
async fn the_expired_trailer_ends_the_cached_answers() {
    let (agent, client, registry, meshed_dst, plain_dst) = watched().await;
    assert_eq!(lookups(&registry, "resolved"), 2);
    agent.refuse(Some(expired_status()));
    agent.end_watches(expired_status());
    lookup_until(&client, meshed_dst, "the meshed answer refused", |a| {
        *a == Err(DiscoveryError::MeshedGone)
    })
    .await;
    // Never meshed: forgotten, asked again, and the agent refuses (`expired`): a refusal,
    // which the outbound path closes on (never plaintext).
    lookup_until(
        &client,
        plain_dst,
        "the plain answer forgotten",
        |a| matches!(a, Err(DiscoveryError::Refused { label, .. }) if label == "expired"),
    )
    .await;
    assert!(lookups(&registry, "meshed_destination_gone") >= 1);
    assert!(lookups(&registry, "discovery_refused") >= 1);
}

#[tokio::test]
async fn a_bare_unavailable_is_a_lost_stream_and_the_answers_stay_in_use() {
    let (agent, client, registry, meshed_dst, plain_dst) = watched().await;
    agent.refuse(Some(bare_status()));
    agent.end_watches(bare_status());
    // Each watch was reopened (and refused) at least once: the end was handled.
    wait_until("both watches reopened", || {
        agent.watch_calls(meshed_dst) >= 3 && agent.watch_calls(plain_dst) >= 3
    })
    .await;
    let cached = lookups(&registry, "cached");
    assert_eq!(
        client.lookup(meshed_dst).await.unwrap().answer,
        Answer::MeshedPod(id(ID)),
        "a lost stream keeps the meshed answer for the stale TTL"
    );
    assert_eq!(
        client.lookup(plain_dst).await.unwrap().answer,
        Answer::UnmeshedPod
    );
    assert_eq!(lookups(&registry, "cached"), cached + 2);
    assert_eq!(lookups(&registry, "resolved"), 2, "no new Resolve");

    // The agent is back: the reopened watch brings changes again.
    agent.refuse(None);
    agent.set(meshed_dst, meshed(NEW_ID));
    lookup_until(&client, meshed_dst, "the new ID", |a| {
        *a == Ok(Answer::MeshedPod(id(NEW_ID)))
    })
    .await;
}

#[tokio::test]
async fn a_watch_reopen_refused_as_expired_ends_the_answer() {
    let (agent, client, _registry, meshed_dst, _) = watched().await;
    // The stream is lost first (no trailer), then the agent refuses the reopened watch
    // because its answer expired meanwhile.
    agent.refuse(Some(expired_status()));
    agent.end_watches(bare_status());
    lookup_until(&client, meshed_dst, "the meshed answer refused", |a| {
        *a == Err(DiscoveryError::MeshedGone)
    })
    .await;
}

#[tokio::test]
async fn an_unanswered_destination_counts_as_unavailable() {
    let agent = FakeDiscovery::start().await;
    let (client, registry) = client(&agent);
    let err = client
        .lookup("10.0.0.9:80".parse().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DiscoveryError::Unavailable(why) if why.contains(&format!("{:?}", Code::Unavailable))),
        "{err:?}"
    );
    assert_eq!(lookups(&registry, "discovery_unavailable"), 1);
    assert_eq!(lookups(&registry, "resolved"), 0);
}
