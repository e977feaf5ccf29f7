//! Mint throughput over gRPC (DESIGN §3): batches of 100 CSRs, 8 concurrent callers, against
//! the bare rate of one P-256 verify + one P-256 sign measured in the same run.
//!
//! `cargo bench -p lanyard-server --bench mint_grpc` (optional args: seconds per phase).
//! The server runs in this process on a multi-threaded runtime (all cores), as it would in
//! production; CSRs are made before timing starts, so the callers spend nothing on crypto.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use lanyard_proto::identity::v1 as wire;
use lanyard_proto::identity::v1::attest_node_request::Method;
use lanyard_server::config::RunArgs;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};

const BATCH: usize = 100;
const CALLERS: usize = 8;

fn bare_rate(seconds: f64) -> f64 {
    let rng = SystemRandom::new();
    let alg = &signature::ECDSA_P256_SHA256_ASN1_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    let public = key.public_key().as_ref().to_vec();
    let message = [7u8; 300];
    let sig = key.sign(&rng, &message).unwrap();
    let verifier = signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, &public);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        verifier.verify(&message, sig.as_ref()).unwrap();
        std::hint::black_box(key.sign(&rng, &message).unwrap());
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let seconds: f64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(10.0);
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("c.toml");
    std::fs::write(
        &config_path,
        "[[entries]]\nspiffe_id = \"spiffe://example.org/bench\"\nselectors = [\"unix:uid:1\"]\nnodes = [\"*\"]\n",
    )
    .unwrap();
    let server = start(
        RunArgs {
            config: Some(config_path),
            trust_domain: Some(TD.into()),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            data_dir: Some(dir.path().join("data")),
            mint_rate_limit: Some(1e9),
            ..Default::default()
        },
        None,
    )
    .await;
    let csrs: Arc<Vec<Vec<u8>>> = Arc::new((0..BATCH).map(|_| new_csr()).collect());
    let mut callers = Vec::new();
    for i in 0..CALLERS {
        let caller = Caller::new(server.bundle().await);
        let token = server.join_token(&format!("bench-{i}")).await;
        caller
            .attest(server.addr, Method::JoinToken(token))
            .await
            .unwrap();
        callers.push(caller.client(server.addr).await);
    }
    let request = |csrs: &Arc<Vec<Vec<u8>>>| wire::MintX509SvidsRequest {
        requests: csrs
            .iter()
            .map(|c| entry_request("spiffe://example.org/bench", c.clone()))
            .collect(),
    };
    // Warm up every connection.
    for client in &mut callers {
        client.mint_x509svi_ds(request(&csrs)).await.unwrap();
    }

    let bare = tokio::task::spawn_blocking(move || bare_rate(seconds))
        .await
        .unwrap();

    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = callers
        .into_iter()
        .map(|mut client| {
            let csrs = csrs.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut issued = 0usize;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let response = client
                        .mint_x509svi_ds(request(&csrs))
                        .await
                        .unwrap()
                        .into_inner();
                    latencies.push(t.elapsed());
                    issued += response
                        .results
                        .iter()
                        .filter(|r| outcome(r).is_ok())
                        .count();
                }
                (issued, latencies)
            })
        })
        .collect();
    let mut issued = 0;
    let mut latencies = Vec::new();
    for task in tasks {
        let (n, l) = task.await.unwrap();
        issued += n;
        latencies.extend(l);
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    let rate = issued as f64 / elapsed;
    println!("bare P-256 verify+sign, one core: {bare:.0}/s");
    println!(
        "MintX509SVIDs over gRPC+TLS ({CALLERS} callers x batches of {BATCH}): {rate:.0} SVIDs/s"
    );
    println!(
        "ratio: {:.1}% of the bare rate (target >= 30%)",
        100.0 * rate / bare
    );
    println!(
        "per-call latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} calls)",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
        latencies.len()
    );
}
