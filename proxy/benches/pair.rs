//! Loopback baseline for an originate+terminate pair of in-process proxies (TLS 1.3, P-256,
//! one persistent connection) against a direct TCP connection to the same app:
//! one-stream throughput, and ping-pong latency with one 64-byte message in flight.
//!
//! Not the DESIGN §3 comparison against stunnel4/HAProxy (a later task); this measures the
//! proxy alone so regressions show. Run: `cargo bench -p lanyard-proxy --bench pair`.
//! Both proxies and the app share this process's runtime, so absolute numbers understate a
//! deployment with separate processes; the ratio to direct TCP is the figure to watch.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CLIENT: &str = "spiffe://example.org/client";
const SERVER: &str = "spiffe://example.org/server";
const BULK_BYTES: usize = 512 << 20;
const PINGS: usize = 20_000;

/// An app that discards what it reads and answers each 64-byte ping with 64 bytes.
async fn sink_app() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let mut mode = [0u8; 1];
                if s.read_exact(&mut mode).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; 64 * 1024];
                if mode[0] == b'B' {
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                    let _ = s.write_all(b"done").await;
                } else {
                    let mut ping = [0u8; 64];
                    while s.read_exact(&mut ping).await.is_ok() {
                        if s.write_all(&ping).await.is_err() {
                            break;
                        }
                    }
                }
            });
        }
    });
    addr
}

async fn throughput(addr: std::net::SocketAddr) -> f64 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(b"B").await.unwrap();
    let chunk = vec![7u8; 256 * 1024];
    let start = Instant::now();
    let mut sent = 0;
    while sent < BULK_BYTES {
        s.write_all(&chunk).await.unwrap();
        sent += chunk.len();
    }
    s.shutdown().await.unwrap();
    let mut done = [0u8; 4];
    s.read_exact(&mut done).await.unwrap();
    (sent as f64 * 8.0) / start.elapsed().as_secs_f64() / 1e9
}

async fn ping_pong(addr: std::net::SocketAddr) -> (Duration, Duration) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(b"P").await.unwrap();
    let ping = [1u8; 64];
    let mut pong = [0u8; 64];
    let mut samples = Vec::with_capacity(PINGS);
    for i in 0..PINGS + 1000 {
        let start = Instant::now();
        s.write_all(&ping).await.unwrap();
        s.read_exact(&mut pong).await.unwrap();
        if i >= 1000 {
            samples.push(start.elapsed());
        }
    }
    samples.sort();
    (samples[PINGS / 2], samples[PINGS * 99 / 100])
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let ca = Ca::new("example.org");
        let app = sink_app().await;

        let api_b = FakeWorkloadApi::start().await;
        let issued_b = ca.issue(SERVER);
        api_b.push(svid_message(SERVER, &issued_b, &[ca.root_der()], &[]));
        let mut args = proxy_args(&api_b.socket);
        args.inbound = vec![format!("127.0.0.1:0={app}")];
        let b = start_proxy(args).await;
        wait_for_svid(&b, issued_b.leaf()).await;

        let api_a = FakeWorkloadApi::start().await;
        let issued_a = ca.issue(CLIENT);
        api_a.push(svid_message(CLIENT, &issued_a, &[ca.root_der()], &[]));
        let mut args = proxy_args(&api_a.socket);
        args.outbound = vec![format!("127.0.0.1:0={},id={SERVER}", b.addr("inbound"))];
        let a = start_proxy(args).await;
        wait_for_svid(&a, issued_a.leaf()).await;
        let pair = a.addr("outbound");

        let direct_gbps = throughput(app).await;
        let pair_gbps = throughput(pair).await;
        println!(
            "throughput, one stream: direct {direct_gbps:.2} Gbit/s, mTLS pair {pair_gbps:.2} Gbit/s ({:.0}%)",
            100.0 * pair_gbps / direct_gbps
        );
        let (d50, d99) = ping_pong(app).await;
        let (p50, p99) = ping_pong(pair).await;
        println!(
            "ping-pong 64 B: direct p50 {d50:?} p99 {d99:?}; mTLS pair p50 {p50:?} p99 {p99:?}; \
             added p50 {:?} p99 {:?}",
            p50.saturating_sub(d50),
            p99.saturating_sub(d99)
        );
    });
}
