//! A stream that first replays bytes already read from it. A listener that looks at a
//! connection's first bytes before choosing what serves it (the proxy's protocol detection,
//! the agent's HTTP/2 preface check) must still hand those bytes to the server it chooses,
//! exactly once, without copying the connection into a new socket.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `inner`, with `prefix` read first. `P` holds the prefix: a `Vec<u8>` of bytes read from
/// this connection, or a `&'static [u8]` when they are known in advance (a protocol preface).
#[derive(Debug)]
pub struct Rewind<S, P = Vec<u8>> {
    prefix: P,
    /// How much of `prefix` has been handed out.
    consumed: usize,
    inner: S,
}

impl<S, P> Rewind<S, P> {
    pub fn new(prefix: P, inner: S) -> Self {
        Self {
            prefix,
            consumed: 0,
            inner,
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin, P: AsRef<[u8]> + Default + Unpin> AsyncRead for Rewind<S, P> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let prefix = this.prefix.as_ref();
        if this.consumed < prefix.len() {
            let rest = &prefix[this.consumed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.consumed += n;
            if this.consumed == prefix.len() {
                // Free the buffer: an idle connection should not keep its first flight.
                this.prefix = P::default();
                this.consumed = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin, P: Unpin> AsyncWrite for Rewind<S, P> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn replays_the_prefix_then_reads_through() {
        let (mut far, near) = tokio::io::duplex(64);
        far.write_all(b" world").await.unwrap();
        drop(far);
        let mut stream = Rewind::new(b"hello".to_vec(), near);
        let mut small = [0u8; 3];
        stream.read_exact(&mut small).await.unwrap();
        assert_eq!(&small, b"hel");
        let mut rest = String::new();
        stream.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "lo world");
    }

    #[tokio::test]
    async fn a_static_prefix_is_replayed_too() {
        let (mut far, near) = tokio::io::duplex(64);
        far.write_all(b"-body").await.unwrap();
        drop(far);
        let mut stream: Rewind<_, &'static [u8]> = Rewind::new(b"PRI", near);
        let mut all = String::new();
        stream.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "PRI-body");
    }

    #[tokio::test]
    async fn writes_go_straight_through() {
        let (mut far, near) = tokio::io::duplex(64);
        let mut stream = Rewind::new(b"x".to_vec(), near);
        stream.write_all(b"reply").await.unwrap();
        let mut got = [0u8; 5];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"reply");
    }
}
