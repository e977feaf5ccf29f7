//! Attacks from the hardening review (issue 14) against a real in-process proxy over real
//! sockets, each showing its bounded outcome:
//! - finding 13: a ClientHello over 16 KiB offering `lanyard/1` is terminated as mTLS, not
//!   forwarded as foreign TLS;
//! - finding 12: one source's silent connections take at most its share of
//!   `--max-connections`, and an idle forwarded connection is closed by `--idle-timeout`.
//!
//! Finding 15 (`--admin` on a non-loopback address) is in `cli.rs`, against the binary.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use common::*;
use lanyard_svid::SpiffeId;
use lanyard_svid::tls::{
    CurrentSvid, ExactId, LANYARD_ALPN, SpiffeServerVerifier, unused_server_name,
};
use rustls::crypto::{ActiveKeyExchange, SharedSecret, SupportedKxGroup};
use rustls::{ClientConfig, ClientConnection, NamedGroup};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const CLIENT: &str = "spiffe://example.org/client";
const SERVER: &str = "spiffe://example.org/server";

/// A proxy as SERVER in front of an echo app, with `args` adjusted by `tweak`.
async fn server_proxy(
    ca: &Ca,
    tweak: impl FnOnce(&mut lanyard_proxy::RunArgs),
) -> (FakeWorkloadApi, App, lanyard_proxy::RunningProxy) {
    let app = echo_app(None).await;
    let api = FakeWorkloadApi::start().await;
    let issued = ca.issue(SERVER);
    api.push(svid_message(SERVER, &issued, &[ca.root_der()], &[]));
    let mut args = proxy_args(&api.socket);
    args.inbound = vec![format!("127.0.0.1:0={}", app.addr)];
    tweak(&mut args);
    let proxy = start_proxy(args).await;
    wait_for_svid(&proxy, issued.leaf()).await;
    (api, app, proxy)
}

// ---------------------------------------------------------------------------------------
// Finding 13: a ClientHello over one record

/// Bytes of the oversized key share: with it the ClientHello needs two records.
const SHARE_BYTES: usize = 20 * 1024;

/// A key-exchange group nobody else knows, whose key share is [`SHARE_BYTES`] long (as large
/// post-quantum shares make ClientHellos). The server, not knowing it, asks for X25519 with
/// a HelloRetryRequest, so the handshake still completes.
#[derive(Debug)]
struct HugeShare;

#[derive(Debug)]
struct HugeActive(Vec<u8>);

/// A private-use code point (RFC 8446: 0xFE00..0xFEFF).
const HUGE_GROUP: NamedGroup = NamedGroup::Unknown(0xfe42);

impl SupportedKxGroup for HugeShare {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        Ok(Box::new(HugeActive(vec![0x42; SHARE_BYTES])))
    }

    fn name(&self) -> NamedGroup {
        HUGE_GROUP
    }
}

impl ActiveKeyExchange for HugeActive {
    fn complete(self: Box<Self>, _peer: &[u8]) -> Result<SharedSecret, rustls::Error> {
        Err(rustls::Error::General(
            "the huge group never completes".into(),
        ))
    }

    fn pub_key(&self) -> &[u8] {
        &self.0
    }

    fn group(&self) -> NamedGroup {
        HUGE_GROUP
    }
}

static HUGE: HugeShare = HugeShare;

/// A client as CLIENT expecting SERVER, like the proxy's own, whose first ClientHello
/// carries the huge share first (then X25519 as the group to retry with).
fn huge_hello_config(ca: &Ca) -> Arc<ClientConfig> {
    let td = lanyard_svid::TrustDomain::parse("example.org").unwrap();
    let store = client_store(&ca.issue(CLIENT), &[(&td, ca.root_der())]);
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups = vec![&HUGE, rustls::crypto::ring::kx_group::X25519];
    let verifier = SpiffeServerVerifier::new(
        store.clone(),
        Arc::new(ExactId(SpiffeId::parse(SERVER).unwrap())),
        true,
    );
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(CurrentSvid(store)));
    config.alpn_protocols = vec![LANYARD_ALPN.to_vec()];
    config.enable_sni = false;
    Arc::new(config)
}

/// The handshake-record lengths of the client's first flight.
fn first_flight_records(config: Arc<ClientConfig>) -> Vec<usize> {
    let mut conn = ClientConnection::new(config, unused_server_name()).unwrap();
    let mut wire = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut wire).unwrap();
    }
    let mut lens = Vec::new();
    let mut at = 0;
    while at + 5 <= wire.len() {
        assert_eq!(wire[at], 0x16, "a handshake record");
        let len = usize::from(u16::from_be_bytes([wire[at + 3], wire[at + 4]]));
        lens.push(len);
        at += 5 + len;
    }
    assert_eq!(at, wire.len());
    lens
}

#[tokio::test]
async fn a_client_hello_over_16_kib_offering_lanyard_is_terminated_as_mtls() {
    let ca = Ca::new("example.org");
    let (_api, _app, proxy) = server_proxy(&ca, |_| {}).await;
    let mut tap = Lines::of(&proxy);
    let config = huge_hello_config(&ca);

    // The attack is real: the ClientHello spans two records, over 16 KiB in all.
    let records = first_flight_records(config.clone());
    assert!(records.len() >= 2, "{records:?}");
    assert!(records.iter().sum::<usize>() > 16 * 1024, "{records:?}");

    let tcp = TcpStream::connect(proxy.addr("inbound")).await.unwrap();
    let mut tls = within(
        "the handshake",
        tokio_rustls::TlsConnector::from(config).connect(unused_server_name(), tcp),
    )
    .await
    .expect("terminated as mTLS, not forwarded to the app as foreign TLS");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(LANYARD_ALPN));
    assert_eq!(round_trip(&mut tls, b"big hello").await, b"big hello");
    tls.shutdown().await.unwrap();
    drop(tls);
    let line = tap.next().await;
    assert_eq!(field(&line, "tls"), "true", "{line}");
    assert_eq!(field(&line, "peer"), CLIENT, "{line}");
}

// ---------------------------------------------------------------------------------------
// Finding 12: per-source fairness and the idle timeout

/// A TCP connection to `to` from the loopback address `from` (all of 127/8 is local).
async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether `stream` was closed by the far end (EOF or reset), waiting up to the deadline.
async fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    within("a close", async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    })
    .await
}

#[tokio::test]
async fn one_sources_silent_connections_take_only_its_share_and_idle_ones_are_closed() {
    const MAX: usize = 40;
    const SHARE: usize = MAX / lanyard_proxy::accept::SOURCE_SHARE_DIVISOR;
    let ca = Ca::new("example.org");
    let (_api, _app, proxy) = server_proxy(&ca, |a| {
        a.max_connections = Some(MAX);
        a.detect_timeout = Some("50ms".into());
        a.idle_timeout = Some("1s".into());
    })
    .await;
    let inbound = proxy.addr("inbound");
    let mut tap = Lines::of(&proxy);

    // The attacker (127.0.0.1) opens the whole budget's worth of silent connections.
    let attacker = Ipv4Addr::new(127, 0, 0, 1);
    let mut silent = Vec::new();
    for _ in 0..MAX {
        silent.push(connect_from(attacker, inbound).await);
    }
    // Past its share, each is closed at once with `source_limit`; the share is forwarded
    // after detection (permissive: a server-speaks-first client sends nothing either) and
    // closed once silent for the idle timeout, `detect_timeout` in the tap.
    let mut by_reason = std::collections::HashMap::<String, usize>::new();
    let mut other = None;
    while by_reason.get("source_limit").copied().unwrap_or(0) < MAX - SHARE {
        let line = tap.next().await;
        assert!(field(&line, "src").starts_with("127.0.0.1:"), "{line}");
        *by_reason
            .entry(field(&line, "reason").to_owned())
            .or_default() += 1;
        if other.is_none() {
            // Another source still gets through, while the attacker holds its share.
            let mut stream = connect_from(Ipv4Addr::new(127, 0, 0, 2), inbound).await;
            assert_eq!(round_trip(&mut stream, b"fair").await, b"fair");
            other = Some(stream);
        }
    }
    for stream in &mut silent {
        assert!(closed(stream).await);
    }
    while by_reason.get("detect_timeout").copied().unwrap_or(0) < SHARE {
        let line = tap.next().await;
        if field(&line, "src").starts_with("127.0.0.2:") {
            continue; // the other source's connection, idle too by now
        }
        *by_reason
            .entry(field(&line, "reason").to_owned())
            .or_default() += 1;
    }
    assert_eq!(by_reason.len(), 2, "{by_reason:?}");
    // Its share is free again.
    let mut again = connect_from(attacker, inbound).await;
    assert_eq!(round_trip(&mut again, b"back").await, b"back");
}
