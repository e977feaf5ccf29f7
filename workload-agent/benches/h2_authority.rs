//! The cost of the `h2_authority` frame layer (run:
//! `cargo bench -p lanyard-agent --bench h2_authority`):
//!
//! - **First SVID**: a new connection to the Workload API socket, `FetchX509SVID`, until its
//!   first message; 300 each, p50/p99, with and without the layer, interleaved.
//! - **Fan-out**: 1,000 connections with one open `FetchX509SVID` stream each; the SVID is
//!   rotated and every stream's receipt of the new message is timed from the rotation;
//!   3 rounds each, alternating, p50/p99/max, with and without the layer.
//! - **Frame loop alone**: the rewriter over the recorded grpc-core stream (header blocks,
//!   one rewrite per connection) and over 16 KiB DATA frames (pass-through).
//!
//! Both server variants are the real Workload API service (`WorkloadApiService`, tonic, the
//! agent's server builder, limits and admission layer) on a real Unix socket with peer
//! credentials pinned at accept, over the test suite's fake identities; the only difference is
//! whether reads go through `AuthorityNormalizer`. That is why this bench keeps its own accept
//! loop instead of `socket::serve`, which always applies the layer. Clients are tonic (a valid authority: the layer parses and
//! passes everything); grpc-core clients cannot be served at all without the layer.

#[path = "../tests/workload_api_support/mod.rs"]
mod workload_api_support;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use lanyard_agent::attest::{PeerCred, WorkloadAttestor};
use lanyard_agent::h2_authority::{AuthorityNormalizer, FrameRewriter, RewriterLimits};
use lanyard_agent::socket::accept::PinnedPeer;
use lanyard_agent::socket::admission::AdmissionLayer;
use lanyard_agent::socket::{ConnectionLimits, server_builder};
use lanyard_agent::workload_api::{Limits, WorkloadApiMetrics, WorkloadApiService};
use lanyard_daemon::rewind::Rewind;
use lanyard_proto::workload::X509svidRequest;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::server::Connected;
use workload_api_support::*;

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FIRST_SVID_RUNS: usize = 300;
const FAN_OUT: usize = 1_000;
const FAN_OUT_ROUNDS: usize = 3;

/// An accepted connection, its preface replayed, with or without the layer.
struct Conn<S> {
    stream: Rewind<S, &'static [u8]>,
    info: PinnedPeer,
}

impl<S> Connected for Conn<S> {
    type ConnectInfo = PinnedPeer;
    fn connect_info(&self) -> PinnedPeer {
        self.info.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serves the Workload API on `socket`, wrapping each connection with `wrap`.
fn serve<S, F>(
    socket: &std::path::Path,
    identities: Arc<FakeIdentities>,
    limits: Limits,
    wrap: F,
) -> tokio::task::JoinHandle<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(UnixStream) -> S + Send + Sync + Copy + 'static,
{
    let listener = UnixListener::bind(socket).unwrap();
    let attestor = Arc::new(WorkloadAttestor::default());
    let (_stop, stopping) = tokio::sync::watch::channel(false);
    std::mem::forget(_stop);
    let service =
        WorkloadApiService::new(identities, &limits, WorkloadApiMetrics::default(), stopping);
    let admission =
        AdmissionLayer::new(attestor.clone(), vec![Arc::new(service.admission_policy())]);
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Conn<S>>>(1024);
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let cred = PeerCred::from(stream.peer_cred().unwrap());
            let info = PinnedPeer::from_cred(Some(attestor.pin(cred).unwrap()));
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut preface = [0u8; 24];
                stream.read_exact(&mut preface).await.unwrap();
                assert_eq!(&preface, PREFACE);
                let conn = Conn {
                    stream: Rewind::new(&PREFACE[..], wrap(stream)),
                    info,
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
    tokio::spawn(async move {
        server_builder(&ConnectionLimits::default())
            .layer(admission)
            .add_service(service.into_server(&limits))
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// One new connection, `FetchX509SVID`, until the first message.
async fn one_first_svid(socket: &std::path::Path) -> Duration {
    let start = Instant::now();
    let mut client = client_at(socket).await;
    let mut stream = client
        .fetch_x509svid(req(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().expect("an SVID");
    start.elapsed()
}

type Held = Vec<(
    lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient<
        tonic::transport::Channel,
    >,
    tonic::Streaming<lanyard_proto::workload::X509svidResponse>,
)>;

/// Opens [`FAN_OUT`] connections with one stream each, past their first message.
async fn open_streams(socket: &std::path::Path) -> Held {
    let mut streams = Vec::with_capacity(FAN_OUT);
    for _ in 0..FAN_OUT {
        let mut client = client_at(socket).await;
        let mut stream = client
            .fetch_x509svid(req(X509svidRequest {}))
            .await
            .unwrap()
            .into_inner();
        stream.message().await.unwrap().expect("an SVID");
        streams.push((client, stream));
    }
    streams
}

/// Rotates the SVID once; how long each stream took to receive it.
async fn fan_out_round(streams: &mut Held, identities: &FakeIdentities) -> Vec<Duration> {
    let id = identities.pki.id("/bench");
    let (go_tx, _) = tokio::sync::broadcast::channel::<Instant>(1);
    let mut tasks = Vec::new();
    for (client, mut stream) in streams.drain(..) {
        let mut go = go_tx.subscribe();
        tasks.push(tokio::spawn(async move {
            let next = stream.message().await.unwrap().expect("the rotated SVID");
            let at = Instant::now();
            assert_eq!(next.svids.len(), 1);
            let start = go.recv().await.unwrap();
            (at - start, client, stream)
        }));
    }
    let _ = go_tx.send(Instant::now());
    identities.rotate(&id);
    let mut times = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (took, client, stream) = task.await.unwrap();
        times.push(took);
        streams.push((client, stream));
    }
    times
}

fn frame_loop() {
    let recorded = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/h2/grpc_core_3_calls.bin"
    ))
    .unwrap();
    let input = &recorded[24..];
    let runs = 20_000;
    let mut out = Vec::with_capacity(4096);
    let start = Instant::now();
    for _ in 0..runs {
        let mut r = FrameRewriter::new(RewriterLimits::default());
        out.clear();
        r.process(input, &mut out).unwrap();
        assert_eq!(r.rewrites(), 1);
    }
    let per = start.elapsed() / runs;
    println!(
        "frame loop, recorded grpc-core connection ({} octets, 3 header blocks, 1 rewrite): {:.1} us per connection",
        input.len(),
        per.as_secs_f64() * 1e6
    );

    let mut data = Vec::new();
    for _ in 0..4096 {
        data.extend_from_slice(&[0, 0x40, 0, 0, 0, 0, 0, 0, 1]);
        data.extend(std::iter::repeat_n(7u8, 16_384));
    }
    let mut r = FrameRewriter::new(RewriterLimits::default());
    let mut out = Vec::with_capacity(64 * 1024);
    let start = Instant::now();
    for chunk in data.chunks(16 * 1024) {
        out.clear();
        r.process(chunk, &mut out).unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "frame loop, 16 KiB DATA frames in 16 KiB reads: {:.0} MiB/s",
        data.len() as f64 / secs / (1 << 20) as f64
    );
}

fn main() {
    install_ring();
    frame_loop();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let limits = Limits {
            streams_per_caller: 10 * FAN_OUT,
            ..Limits::default()
        };
        let dir = tempfile::tempdir().unwrap();
        // Both servers run side by side and are measured interleaved, so load changes on the
        // machine hit both alike. Index 0: without the layer, 1: with it.
        let mut sockets = Vec::new();
        let mut identities = Vec::new();
        for with_layer in [false, true] {
            let pki = Pki::new();
            let id = pki.id("/bench");
            let ids = FakeIdentities::new(pki, &[id]);
            let socket = dir.path().join(format!("agent-{with_layer}.sock"));
            if with_layer {
                serve(
                    &socket,
                    ids.clone(),
                    limits.clone(),
                    AuthorityNormalizer::new,
                );
            } else {
                serve(&socket, ids.clone(), limits.clone(), |s| s);
            }
            sockets.push(socket);
            identities.push(ids);
        }
        const LABELS: [&str; 2] = ["without layer", "with layer"];

        let mut first = [Vec::new(), Vec::new()];
        for round in 0..FIRST_SVID_RUNS + 20 {
            for (v, socket) in sockets.iter().enumerate() {
                let took = one_first_svid(socket).await;
                // The first 20 warm up (lazy initialisation on both sides).
                if round >= 20 {
                    first[v].push(took);
                }
            }
        }
        for times in first.iter_mut() {
            times.sort();
        }
        for v in 0..2 {
            println!(
                "first SVID, {}: p50 {} p99 {} ({} runs)",
                LABELS[v],
                ms(percentile(&first[v], 0.5)),
                ms(percentile(&first[v], 0.99)),
                first[v].len()
            );
        }
        println!(
            "first SVID p50 ratio with/without: {:.3}",
            percentile(&first[1], 0.5).as_secs_f64() / percentile(&first[0], 0.5).as_secs_f64()
        );

        let mut held = [
            open_streams(&sockets[0]).await,
            open_streams(&sockets[1]).await,
        ];
        let mut fan = [Vec::new(), Vec::new()];
        for _ in 0..FAN_OUT_ROUNDS {
            for v in 0..2 {
                fan[v].extend(fan_out_round(&mut held[v], &identities[v]).await);
            }
        }
        for v in 0..2 {
            fan[v].sort();
            println!(
                "fan-out {FAN_OUT} streams x {FAN_OUT_ROUNDS} rounds, {}: p50 {} p99 {} max {}",
                LABELS[v],
                ms(percentile(&fan[v], 0.5)),
                ms(percentile(&fan[v], 0.99)),
                ms(*fan[v].last().unwrap()),
            );
        }
        println!(
            "fan-out p99 ratio with/without: {:.3}",
            percentile(&fan[1], 0.99).as_secs_f64() / percentile(&fan[0], 0.99).as_secs_f64()
        );
    });
}
