//! Memory per established idle connection: open connections through a proxy pair to an echo
//! server, push one byte through each and back (so both proxies have finished the handshake
//! and set up the pipe), then read the proxies' VmRSS. The figure is the RSS growth over the
//! `--count` measured connections divided by their number, after `--warmup` connections that
//! absorb one-time growth (thread stacks, allocator arenas).

use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::procfs::rss_kib;

/// Per-connection limit, so a refused connection fails the run instead of hanging it.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for late allocations (e.g. a thread's first use) before RSS is read.
const SETTLE: Duration = Duration::from_millis(500);

async fn open(addr: &str) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(b"x").await?;
    let mut byte = [0u8; 1];
    s.read_exact(&mut byte).await?;
    Ok(s)
}

async fn open_many(addr: &str, n: usize, held: &mut Vec<TcpStream>) -> anyhow::Result<()> {
    for i in 0..n {
        let s = tokio::time::timeout(CONNECTION_TIMEOUT, open(addr))
            .await
            .with_context(|| format!("connection {i} timed out"))?
            .with_context(|| format!("connection {i}"))?;
        held.push(s);
    }
    Ok(())
}

pub async fn run(connect: &str, warmup: usize, count: usize, pids: &[u32]) -> anyhow::Result<()> {
    let mut held = Vec::with_capacity(warmup + count);
    open_many(connect, warmup, &mut held).await?;
    tokio::time::sleep(SETTLE).await;
    let before = pids
        .iter()
        .map(|&p| rss_kib(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    open_many(connect, count, &mut held).await?;
    tokio::time::sleep(SETTLE).await;
    for (pid, before) in pids.iter().zip(before) {
        let after = rss_kib(*pid)?;
        let per_conn = (after.saturating_sub(before) as f64) * 1024.0 / count as f64;
        println!(
            "pid={pid} rss_before_kib={before} rss_after_kib={after} per_conn_bytes={per_conn:.0}"
        );
    }
    drop(held);
    Ok(())
}
