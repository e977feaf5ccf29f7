//! Full mTLS handshakes against a server, one new TCP connection each: handshake, one byte
//! there and back (under TLS 1.3 the client finishes before the server has checked the client
//! certificate; the echo proves the server accepted it), close.
//!
//! The figure compared is handshakes per CPU-second of the server process (`--server-pid`),
//! read from /proc: it does not depend on whether the load generator saturated the server.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::procfs::cpu_seconds;
use crate::tls::server_name;

/// Per-connection limit: a stuck handshake fails the run rather than hanging it.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Run {
    pub connect: String,
    pub concurrency: usize,
    pub warmup: Duration,
    pub measure: Duration,
    pub server_pid: Option<u32>,
}

async fn one(connector: &TlsConnector, addr: &str) -> anyhow::Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector.connect(server_name(), tcp).await?;
    tls.write_all(b"x").await?;
    let mut byte = [0u8; 1];
    tls.read_exact(&mut byte).await?;
    anyhow::ensure!(&byte == b"x", "the echo came back wrong");
    Ok(())
}

pub async fn run(config: rustls::ClientConfig, run: Run) -> anyhow::Result<()> {
    let connector = TlsConnector::from(Arc::new(config));
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..run.concurrency {
        let (connector, addr) = (connector.clone(), run.connect.clone());
        let (counting, stop, done) = (counting.clone(), stop.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::timeout(CONNECTION_TIMEOUT, one(&connector, &addr))
                    .await
                    .context("handshake timed out")??;
                if counting.load(Ordering::Relaxed) {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(run.warmup).await;
    let cpu_before = run.server_pid.map(cpu_seconds).transpose()?;
    let started = Instant::now();
    counting.store(true, Ordering::Relaxed);
    tokio::time::sleep(run.measure).await;
    counting.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = run.server_pid.map(cpu_seconds).transpose()?;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await??;
    }
    let n = done.load(Ordering::Relaxed);
    print!(
        "handshakes={n} seconds={elapsed:.2} rate={:.0}",
        n as f64 / elapsed
    );
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        let cpu = after - before;
        print!(" server_cpu_s={cpu:.2} per_core={:.0}", n as f64 / cpu);
    }
    println!();
    Ok(())
}
