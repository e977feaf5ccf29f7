//! The Workload API socket: file modes, stale sockets, refusing to delete what is not ours,
//! and hostile bytes on the socket not hurting well-behaved clients.

mod workload_api_support;

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::time::Duration;

use lanyard_agent::attest::WorkloadAttestor;
use lanyard_agent::socket::{self, ConnectionLimits, SocketError};
use lanyard_agent::workload_api::Limits;
use lanyard_proto::workload::{JwtsvidRequest, X509svidRequest};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;
use workload_api_support::*;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[tokio::test]
async fn socket_is_0777_in_a_created_0755_directory() {
    install_ring();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run").join("lanyard").join("agent.sock");
    let _listener = socket::bind(&path).unwrap();
    assert!(
        std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_socket()
    );
    assert_eq!(mode(&path), 0o777);
    assert_eq!(mode(path.parent().unwrap()), 0o755);
    assert_eq!(mode(path.parent().unwrap().parent().unwrap()), 0o755);
}

#[tokio::test]
async fn a_stale_socket_is_replaced_but_a_live_one_is_not() {
    install_ring();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");

    // Live: something accepts on it.
    let live = socket::bind(&path).unwrap();
    let err = socket::bind(&path).unwrap_err();
    assert!(matches!(err, SocketError::InUse { .. }), "{err}");

    // Stale: the listener is gone, the file remains.
    drop(live);
    assert!(path.exists());
    let _fresh = socket::bind(&path).unwrap();
    UnixStream::connect(&path)
        .await
        .expect("the new socket accepts");
}

#[tokio::test]
async fn a_regular_file_at_the_path_is_refused_and_kept() {
    install_ring();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    std::fs::write(&path, b"precious").unwrap();
    let err = socket::bind(&path).unwrap_err();
    assert!(matches!(err, SocketError::NotASocket { .. }), "{err}");
    assert!(err.to_string().contains("not a socket"));
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).unwrap();
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_socket_does_not_hurt_a_concurrent_client() {
    install_ring();
    let pki = Pki::new();
    let web = pki.id("/web");
    let identities = FakeIdentities::new(pki, std::slice::from_ref(&web));
    let connection_limits = ConnectionLimits {
        preface_timeout: Duration::from_millis(300),
        ..ConnectionLimits::default()
    };
    let agent = Agent::start_full(
        identities.clone(),
        Limits::default(),
        connection_limits,
        WorkloadAttestor::default(),
    )
    .await;

    // A well-behaved client with an open stream.
    let mut good = agent.raw_client().await;
    let mut stream = within(
        "FetchX509SVID",
        good.fetch_x509svid(req(X509svidRequest {})),
    )
    .await
    .unwrap()
    .into_inner();
    within("the first message", stream.message())
        .await
        .unwrap()
        .unwrap();

    // Random bytes: closed by the agent.
    let mut garbage = UnixStream::connect(&agent.socket).await.unwrap();
    garbage.write_all(&random_bytes(4096)).await.unwrap();
    let mut sink = vec![0u8; 1024];
    within("the garbage connection to be closed", async {
        // Whatever the agent answers (nothing, or an HTTP/2 GOAWAY), it ends the connection.
        while garbage.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    })
    .await;

    // A valid preface followed by garbage frames: HTTP/2 refuses them, on that connection only.
    let mut bad_frames = UnixStream::connect(&agent.socket).await.unwrap();
    bad_frames
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    bad_frames.write_all(&random_bytes(4096)).await.unwrap();
    within("the bad-frames connection to be closed", async {
        while bad_frames.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    })
    .await;

    // A truncated preface, then silence: closed after the preface timeout.
    let mut truncated = UnixStream::connect(&agent.socket).await.unwrap();
    truncated.write_all(b"PRI * HTTP/2").await.unwrap();
    within("the truncated connection to be closed", async {
        while truncated.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    })
    .await;

    // The good client's stream still delivers, and new calls are served.
    let rotated = identities.rotate(&web);
    let next = within("the rotated SVID", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        next.svids[0].x509_svid,
        lanyard_svid::der::concat_certificates(rotated.chain())
    );
    good.fetch_jwtsvid(req(JwtsvidRequest {
        audience: vec!["a".into()],
        spiffe_id: String::new(),
    }))
    .await
    .unwrap();
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused() {
    install_ring();
    let pki = Pki::new();
    let web = pki.id("/web");
    let identities = FakeIdentities::new(pki, std::slice::from_ref(&web));
    let max = ConnectionLimits::default().max_header_list_bytes as usize;
    let agent = Agent::start(identities, Limits::default()).await;

    let mut client = agent.raw_client().await;
    let mut request = req(JwtsvidRequest {
        audience: vec!["a".into()],
        spiffe_id: String::new(),
    });
    request
        .metadata_mut()
        .insert("x-padding", "x".repeat(2 * max).parse().unwrap());
    let refused = within("the oversized call", client.fetch_jwtsvid(request)).await;
    assert!(
        refused.is_err(),
        "a header list over the bound must be refused"
    );

    // Others (and this client, on a new connection) are still served.
    let mut fresh = agent.raw_client().await;
    within(
        "a normal call",
        fresh.fetch_jwtsvid(req(JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: String::new(),
        })),
    )
    .await
    .unwrap();
    agent.stop().await.unwrap();
}
