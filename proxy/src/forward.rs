//! Piping a client connection to its upstream, both ways, with half-close: when one side
//! finishes sending, the other side's write half is shut down and the other direction keeps
//! flowing. The byte counts survive an error, so a reset connection is still reported right.

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::copy::{BidiCopy, BufferPolicy};

/// Application bytes carried, seen from the client (downstream) side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Read from the client, sent upstream.
    pub bytes_in: u64,
    /// Read from upstream, sent to the client.
    pub bytes_out: u64,
}

/// Copies between `downstream` and `upstream` until both directions end or one fails.
pub async fn pipe<D, U>(downstream: D, upstream: U) -> (Transfer, io::Result<()>)
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    pipe_with(downstream, upstream, BufferPolicy::DEFAULT).await
}

/// [`pipe`] with buffers sized by `policy`.
pub async fn pipe_with<D, U>(
    mut downstream: D,
    mut upstream: U,
    policy: BufferPolicy,
) -> (Transfer, io::Result<()>)
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut copy = BidiCopy::new(&mut downstream, &mut upstream, policy);
    let result = (&mut copy).await;
    let (down_to_up, up_to_down) = copy.flows();
    (
        Transfer {
            bytes_in: down_to_up.read,
            bytes_out: up_to_down.written,
        },
        result,
    )
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
