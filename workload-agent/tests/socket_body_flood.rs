//! Issue 14, finding 6, performed against the real `socket::serve` over a real Unix socket:
//! 200 connections from another process, each with 64 calls at a time of FetchJWTSVID
//! without the `workload.spiffe.io` header and a 128 KiB request body, for 3 seconds. Every
//! call is refused by the admission layer before its body is decoded; what h2 holds of the
//! bodies is bounded by the 64 KiB receive windows. The agent's memory (this process: the
//! attacker runs in its own) grows by less than 64 MiB, and a legitimate call made during the
//! flood is served (measured: +20 MiB, about 24,000 calls refused in 3 s).

#[path = "support/attacker.rs"]
mod attacker;
mod workload_api_support;

use std::time::{Duration, Instant};

use attacker::{Attack, Attacker, rss_bytes};
use lanyard_agent::workload_api::Limits;
use lanyard_proto::workload::X509svidRequest;
use workload_api_support::*;

const MIB: u64 = 1024 * 1024;

/// Not a test: the attacker process's entry point (see `support/attacker.rs`).
#[test]
fn attacker_process_entry() {
    attacker::run_if_asked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_connections_of_unadmitted_bodies_hold_bounded_memory() {
    install_ring();
    let pki = Pki::new();
    let web = pki.id("/web");
    let identities = FakeIdentities::new(pki, std::slice::from_ref(&web));
    let agent = Agent::start(identities, Limits::default()).await;
    // Warm up (one call), so the baseline includes the server's steady state.
    let mut client = agent.raw_client().await;
    let mut warm = within("warm-up", client.fetch_x509svid(req(X509svidRequest {})))
        .await
        .unwrap()
        .into_inner();
    within("warm-up answer", warm.message())
        .await
        .unwrap()
        .unwrap();
    drop(warm);
    let before = rss_bytes();

    let attack = Attacker::spawn(
        &agent.socket,
        Attack::Bodies {
            connections: 200,
            body_bytes: 128 * 1024,
        },
        None,
    );
    let started = tokio::task::spawn_blocking({
        let attack = attack;
        move || {
            let line = attack.next_line(Duration::from_secs(120));
            (attack, line)
        }
    })
    .await
    .unwrap();
    let (attack, line) = started;
    assert_eq!(line, "started 200");

    // The flood runs for 3 s; the agent's RSS is sampled all along.
    let mut peak = rss_bytes();
    let until = Instant::now() + Duration::from_secs(3);
    let mut legit = None;
    while Instant::now() < until {
        if legit.is_none() {
            // A legitimate caller during the flood.
            let mut stream = within(
                "FetchX509SVID",
                client.fetch_x509svid(req(X509svidRequest {})),
            )
            .await
            .unwrap()
            .into_inner();
            let answer = within("the SVID", stream.message()).await.unwrap().unwrap();
            legit = Some(answer.svids[0].spiffe_id.clone());
        }
        peak = peak.max(rss_bytes());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = tokio::task::spawn_blocking(move || attack.stop(Duration::from_secs(60)))
        .await
        .unwrap();
    let numbers: Vec<u64> = done
        .strip_prefix("done ")
        .unwrap()
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    let (calls, refused, other) = (numbers[0], numbers[1], numbers[2]);
    let growth = peak.saturating_sub(before);
    eprintln!(
        "body flood: {calls} calls ({refused} refused missing_header, {other} other); agent RSS \
         {} MiB -> peak {} MiB (+{} MiB)",
        before / MIB,
        peak / MIB,
        growth / MIB
    );
    assert_eq!(legit.as_deref(), Some(web.to_string().as_str()));
    assert!(
        refused >= 200 * 64,
        "the attack ran: every stream refused at least once"
    );
    assert_eq!(other, 0, "every call refused by the header check");
    assert!(growth < 64 * MIB, "agent RSS grew by {} MiB", growth / MIB);
}
