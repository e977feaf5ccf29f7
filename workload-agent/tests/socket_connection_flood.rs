//! Issue 14, finding 5, performed against the real `socket::serve` over a real Unix socket:
//! uid 4242 (another process, through `setpriv`) opens 1,100 connections and holds them; it
//! gets its share (1,024 of 4,096) and the rest are closed at accept, at once; uid 0 still
//! gets its SVID; the agent's memory grows by less than 48 MiB (measured +25 MiB). And, on tokio's paused clock: a
//! connection that only answers pings is closed after the idle timeout, while a connection
//! with an open watch (FetchX509SVID) is kept.

#[path = "support/attacker.rs"]
mod attacker;
mod workload_api_support;

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use attacker::{Attack, Attacker, rss_bytes};
use lanyard_agent::attest::WorkloadAttestor;
use lanyard_agent::socket::ConnectionLimits;
use lanyard_agent::workload_api::Limits;
use lanyard_proto::workload::X509svidRequest;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;
use workload_api_support::*;

const MIB: u64 = 1024 * 1024;

/// Not a test: the attacker process's entry point (see `support/attacker.rs`).
#[test]
fn attacker_process_entry() {
    attacker::run_if_asked();
}

async fn svid_of(agent: &Agent) -> String {
    let mut client = agent.raw_client().await;
    let mut stream = within(
        "FetchX509SVID",
        client.fetch_x509svid(req(X509svidRequest {})),
    )
    .await
    .unwrap()
    .into_inner();
    let answer = within("the SVID", stream.message()).await.unwrap().unwrap();
    answer.svids[0].spiffe_id.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_uid_gets_its_share_of_connections_and_another_uid_still_calls() {
    install_ring();
    let pki = Pki::new();
    let web = pki.id("/web");
    let identities = FakeIdentities::new(pki, std::slice::from_ref(&web));
    let agent = Agent::start(identities, Limits::default()).await;
    // The socket's tempdir must be reachable by the other uid (the socket itself is 0777).
    std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(svid_of(&agent).await, web.to_string());
    let limits = ConnectionLimits::default();
    assert_eq!(
        (limits.max_connections, limits.max_connections_per_uid),
        (4096, 1024)
    );
    let before = rss_bytes();

    let attack = Attacker::spawn(
        &agent.socket,
        Attack::Connections { connections: 1100 },
        Some(4242),
    );
    let (attack, held) = tokio::task::spawn_blocking(move || {
        let line = attack.next_line(Duration::from_secs(120));
        (attack, line)
    })
    .await
    .unwrap();
    let during = rss_bytes();
    // Another uid (this process, uid 0) while uid 4242 holds its share.
    assert_eq!(svid_of(&agent).await, web.to_string());
    let growth = during.saturating_sub(before);
    eprintln!(
        "connection flood by uid 4242: held/closed = {held}; agent RSS {} MiB -> {} MiB (+{} \
         MiB)",
        before / MIB,
        during / MIB,
        growth / MIB
    );
    assert_eq!(
        held, "held 1024 76",
        "uid 4242 gets 1,024; the other 76 are closed"
    );
    assert!(growth < 48 * MIB, "agent RSS grew by {} MiB", growth / MIB);
    let done = tokio::task::spawn_blocking(move || attack.stop(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(
        done, "done 1024",
        "the held ones stay open while they are not idle-timed"
    );
}

/// One HTTP/2 frame: (type, flags), or `None` at end of file.
async fn read_frame(stream: &mut UnixStream) -> Option<(u8, u8)> {
    let mut header = [0u8; 9];
    stream.read_exact(&mut header).await.ok()?;
    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.ok()?;
    Some((header[3], header[4]))
}

const PING: u8 = 6;
const ACK: u8 = 1;

#[tokio::test(start_paused = true)]
async fn a_connection_only_answering_pings_is_closed_after_the_idle_timeout() {
    install_ring();
    let pki = Pki::new();
    let web = pki.id("/web");
    let identities = FakeIdentities::new(pki, std::slice::from_ref(&web));
    let limits = ConnectionLimits::default();
    assert_eq!(limits.idle_timeout, Duration::from_secs(60));
    let agent = Agent::start_full(
        identities.clone(),
        Limits::default(),
        limits,
        WorkloadAttestor::default(),
    )
    .await;

    // A watch: FetchX509SVID held open (no deadline on the call).
    let mut client = agent.raw_client().await;
    let mut request = tonic::Request::new(X509svidRequest {});
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let mut watch = client.fetch_x509svid(request).await.unwrap().into_inner();
    watch.message().await.unwrap().unwrap();

    // An idle connection that pings every 10 s and answers the agent's pings.
    let mut idle = UnixStream::connect(&agent.socket).await.unwrap();
    idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    idle.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let start = tokio::time::Instant::now();
    let closed_after = 'pinging: loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let ping = [0, 0, 8, PING, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        if idle.write_all(&ping).await.is_err() {
            break 'pinging start.elapsed();
        }
        loop {
            match read_frame(&mut idle).await {
                None => break 'pinging start.elapsed(),
                Some((PING, ACK)) => break,
                Some((PING, 0)) => {
                    let ack = [0, 0, 8, PING, ACK, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                    let _ = idle.write_all(&ack).await;
                }
                Some(_) => {}
            }
        }
        assert!(start.elapsed() < Duration::from_secs(300), "never closed");
    };
    assert!(
        closed_after >= Duration::from_secs(60) && closed_after <= Duration::from_secs(70),
        "closed after {closed_after:?}"
    );

    // Ten minutes on, the watch is still served: a rotation reaches it.
    tokio::time::sleep(Duration::from_secs(600)).await;
    let rotated = identities.rotate(&web);
    let next = watch.message().await.unwrap().unwrap();
    assert!(next.svids[0].x509_svid.starts_with(rotated.leaf().as_ref()));
}
