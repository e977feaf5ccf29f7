//! Piping a client connection to its upstream, both ways, with half-close: when one side
//! finishes sending, the other side's write half is shut down and the other direction keeps
//! flowing. The byte counts survive an error, so a reset connection is still reported right.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Application bytes carried, seen from the client (downstream) side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Read from the client, sent upstream.
    pub bytes_in: u64,
    /// Read from upstream, sent to the client.
    pub bytes_out: u64,
}

/// Copies between `downstream` and `upstream` until both directions end or one fails.
pub async fn pipe<D, U>(downstream: D, mut upstream: U) -> (Transfer, io::Result<()>)
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut down = Counted {
        inner: downstream,
        read: 0,
        written: 0,
    };
    let result = tokio::io::copy_bidirectional(&mut down, &mut upstream)
        .await
        .map(|_| ());
    (
        Transfer {
            bytes_in: down.read,
            bytes_out: down.written,
        },
        result,
    )
}

/// Counts the bytes read from and written to `inner`.
struct Counted<S> {
    inner: S,
    read: u64,
    written: u64,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.read += (buf.filled().len() - before) as u64;
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            this.written += *n as u64;
        }
        poll
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
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
        let piping = tokio::spawn(pipe(proxy_down, proxy_up));

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
