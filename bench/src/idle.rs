//! Memory per established idle connection: open connections through a proxy pair to an echo
//! server, push one byte through each and back (so both proxies have finished the handshake
//! and set up the pipe), then read the proxies' VmRSS. The figure is the RSS growth over the
//! `--count` measured connections divided by their number, after `--warmup` connections that
//! absorb one-time growth (thread stacks, allocator arenas). Later cycles show whether the
//! memory of closed connections is reused.

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

/// RSS of every pid, in KiB.
fn rss_all(pids: &[u32]) -> anyhow::Result<Vec<u64>> {
    pids.iter().map(|&p| rss_kib(p)).collect()
}

/// Runs `cycles` rounds of: open `count` connections, read RSS, close them, read RSS again.
/// The first round's growth is the per-connection figure; the later rounds tell memory that
/// is reused after a close (no further growth) from memory that is lost (growth every round).
pub async fn run(
    connect: &str,
    warmup: usize,
    count: usize,
    cycles: usize,
    pids: &[u32],
) -> anyhow::Result<()> {
    let mut warm = Vec::with_capacity(warmup);
    open_many(connect, warmup, &mut warm).await?;
    tokio::time::sleep(SETTLE).await;
    let before = rss_all(pids)?;
    for cycle in 1..=cycles {
        let mut held = Vec::with_capacity(count);
        open_many(connect, count, &mut held).await?;
        tokio::time::sleep(SETTLE).await;
        let open = rss_all(pids)?;
        drop(held);
        tokio::time::sleep(SETTLE).await;
        let closed = rss_all(pids)?;
        for (i, pid) in pids.iter().enumerate() {
            let per_conn = (open[i].saturating_sub(before[i]) as f64) * 1024.0 / count as f64;
            println!(
                "cycle={cycle} pid={pid} rss_before_kib={} rss_open_kib={} rss_closed_kib={} per_conn_bytes={per_conn:.0}",
                before[i], open[i], closed[i]
            );
        }
    }
    drop(warm);
    Ok(())
}
