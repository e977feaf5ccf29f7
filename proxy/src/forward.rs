//! Piping a client connection to its upstream, both ways, with half-close: when one side
//! finishes sending, the other side's write half is shut down and the other direction keeps
//! flowing. The byte counts survive an error, so a reset connection is still reported right.
//!
//! Every pipe has an idle timeout (`--idle-timeout`): a connection that carries no byte either
//! way for a whole period is closed (so after between one and two periods of silence; one
//! timer per connection, re-armed only when a period ends). Bytes in either direction keep it
//! open, so server-speaks-first and opaque protocols work as long as something flows.
//!
//! Also here: [`forward_plain`], the one plaintext forward inbound and outbound share, and
//! [`Done`], how a handled connection ended.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::context::{ConnContext, peer_text};
use crate::copy::{BidiCopy, BufferPolicy};
use crate::reason::NoTlsReason;
use crate::tap::Outcome;

/// Application bytes carried, seen from the client (downstream) side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Read from the client, sent upstream.
    pub bytes_in: u64,
    /// Read from upstream, sent to the client.
    pub bytes_out: u64,
}

/// A pipe closed because nothing moved for a whole idle period.
#[derive(Debug, thiserror::Error)]
#[error("no bytes either way for {0:?}")]
pub struct IdleTimeout(pub Duration);

impl IdleTimeout {
    /// True when `err` is a pipe's idle timeout.
    pub fn is(err: &io::Error) -> bool {
        err.get_ref().is_some_and(|e| e.is::<IdleTimeout>())
    }
}

/// Copies between `downstream` and `upstream` until both directions end, one fails, or
/// nothing moves for `idle`.
pub async fn pipe<D, U>(downstream: D, upstream: U, idle: Duration) -> (Transfer, io::Result<()>)
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    pipe_with(downstream, upstream, BufferPolicy::DEFAULT, idle).await
}

/// [`pipe`] with buffers sized by `policy`.
pub async fn pipe_with<D, U>(
    mut downstream: D,
    mut upstream: U,
    policy: BufferPolicy,
    idle: Duration,
) -> (Transfer, io::Result<()>)
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut copy = BidiCopy::new(&mut downstream, &mut upstream, policy);
    let mut seen = copy.flows();
    let mut timer = Box::pin(tokio::time::sleep(idle));
    let result = poll_fn(|cx| {
        if let Poll::Ready(result) = Pin::new(&mut copy).poll(cx) {
            return Poll::Ready(result);
        }
        while timer.as_mut().poll(cx).is_ready() {
            let now = copy.flows();
            if now == seen {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    IdleTimeout(idle),
                )));
            }
            seen = now;
            timer.as_mut().reset(Instant::now() + idle);
        }
        Poll::Pending
    })
    .await;
    let (down_to_up, up_to_down) = copy.flows();
    (
        Transfer {
            bytes_in: down_to_up.read,
            bytes_out: up_to_down.written,
        },
        result,
    )
}

/// How a handled connection ended, for its record.
pub struct Done {
    pub dst: String,
    pub outcome: Outcome,
    pub transfer: Transfer,
}

impl Done {
    /// Closed before anything was carried.
    pub fn refused(dst: String, reason: NoTlsReason) -> Self {
        Self {
            dst,
            outcome: Outcome::NoTls(reason),
            transfer: Transfer::default(),
        }
    }
}

/// Connects to `target` and pipes `client` to it untouched, as plaintext for `reason`.
pub async fn forward_plain<S>(
    client: S,
    target: &str,
    reason: NoTlsReason,
    ctx: &ConnContext,
) -> Done
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match ctx.connect(target).await {
        Ok(upstream) => plain_over(client, upstream, target, reason, ctx).await,
        Err(refusal) => Done::refused(target.to_owned(), refusal),
    }
}

/// Pipes `client` to an already connected `upstream`, as plaintext for `reason`.
pub async fn plain_over<S>(
    client: S,
    upstream: TcpStream,
    target: &str,
    reason: NoTlsReason,
    ctx: &ConnContext,
) -> Done
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let dst = peer_text(&upstream, target);
    let (transfer, result) = pipe(client, upstream, ctx.idle_timeout).await;
    if let Err(e) = &result
        && IdleTimeout::is(e)
    {
        tracing::debug!(%dst, "closed an idle connection");
    }
    Done {
        dst,
        outcome: Outcome::NoTls(reason),
        transfer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_both_ways_and_half_closes() {
        let (mut client, proxy_down) = tokio::io::duplex(1024);
        let (proxy_up, mut server) = tokio::io::duplex(1024);
        let piping = tokio::spawn(pipe(proxy_down, proxy_up, Duration::from_secs(3600)));

        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        // The server sees the request and then EOF (the half-close went through) ...
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        // ... and can still answer.
        server.write_all(b"a longer response").await.unwrap();
        server.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"a longer response");

        let (transfer, result) = piping.await.unwrap();
        result.unwrap();
        assert_eq!(
            transfer,
            Transfer {
                bytes_in: 7,
                bytes_out: 17
            }
        );
    }
}

#[cfg(test)]
mod idle_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const IDLE: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn bytes_either_way_keep_a_pipe_open_and_silence_closes_it() {
        let (mut client, proxy_down) = tokio::io::duplex(1024);
        let (proxy_up, mut server) = tokio::io::duplex(1024);
        let started = Instant::now();
        let piping = tokio::spawn(pipe(proxy_down, proxy_up, IDLE));
        // A server-speaks-first protocol: only the server talks, every 6 s, for a minute.
        let mut buf = [0u8; 16];
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            server.write_all(b"tick").await.unwrap();
            assert_eq!(client.read(&mut buf).await.unwrap(), 4);
        }
        assert!(!piping.is_finished(), "closed while bytes flowed");
        let last_byte = Instant::now();
        let (transfer, result) = piping.await.unwrap();
        let err = result.unwrap_err();
        assert!(IdleTimeout::is(&err), "{err}");
        let silent = last_byte.elapsed();
        assert!(silent >= IDLE && silent <= 2 * IDLE, "{silent:?}");
        assert_eq!(transfer.bytes_out, 40);
        assert!(started.elapsed() > Duration::from_secs(60));
        // Both ends see the close.
        assert_eq!(client.read(&mut buf).await.unwrap(), 0);
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_pipe_closes_within_two_periods() {
        let (_client, proxy_down) = tokio::io::duplex(64);
        let (proxy_up, _server) = tokio::io::duplex(64);
        let started = Instant::now();
        let (_, result) = pipe(proxy_down, proxy_up, IDLE).await;
        assert!(IdleTimeout::is(&result.unwrap_err()));
        assert_eq!(started.elapsed(), IDLE);
    }
}
