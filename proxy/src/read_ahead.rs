//! A socket wrapper that reads ahead in large chunks, for the stream under a TLS session.
//!
//! Why: rustls reads TLS records into a buffer that it sizes at 4 KiB more than what it
//! holds (at most about one 16 KiB record), so a TLS stream reading straight from a socket
//! costs a syscall per record or more. Under it, this wrapper reads up to [`CHUNK`] bytes
//! per syscall and hands them out from memory. The chunk exists only while it holds unread
//! bytes: an idle connection keeps nothing here.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most one read from the socket takes.
pub const CHUNK: usize = 64 * 1024;

/// `inner`, read in chunks of up to [`CHUNK`] bytes; writes pass straight through.
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    /// Read from `inner`, not yet handed out: `buf[pos..]`. Empty when drained.
    buf: Vec<u8>,
    pos: usize,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            pos: 0,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Bytes read from the socket and not yet handed out.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            if out.remaining() >= CHUNK {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            // Not zeroed: a memset of the whole chunk per read would cost about as much as
            // the syscalls it saves. On Pending or an error the chunk is dropped, so nothing
            // is held while waiting.
            let mut chunk: Vec<u8> = Vec::with_capacity(CHUNK);
            let mut chunk_buf = ReadBuf::uninit(&mut chunk.spare_capacity_mut()[..CHUNK]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk_buf))?;
            let n = chunk_buf.filled().len();
            if n == 0 {
                return Poll::Ready(Ok(())); // end of input
            }
            // SAFETY: `ReadBuf` counts as filled only bytes that were written (initialised),
            // and `n` is within the capacity.
            unsafe { chunk.set_len(n) };
            this.buf = chunk;
            this.pos = 0;
        }
        let n = out.remaining().min(this.buf.len() - this.pos);
        out.put_slice(&this.buf[this.pos..this.pos + n]);
        this.pos += n;
        if this.pos == this.buf.len() {
            this.buf = Vec::new();
            this.pos = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
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

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    /// Counts the reads that reach the wrapped stream.
    struct CountReads<S> {
        inner: S,
        reads: usize,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for CountReads<S> {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
            if poll.is_ready() {
                this.reads += 1;
            }
            poll
        }
    }

    #[tokio::test]
    async fn small_reads_are_served_from_one_large_read_then_nothing_is_held() {
        let (mut far, near) = duplex(1 << 20);
        let data: Vec<u8> = (0..40_000).map(|i| (i % 251) as u8).collect();
        far.write_all(&data).await.unwrap();
        let mut ahead = ReadAhead::new(CountReads {
            inner: near,
            reads: 0,
        });
        let mut got = Vec::new();
        let mut small = [0u8; 4096];
        while got.len() < data.len() {
            let n = ahead.read(&mut small).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, data);
        assert_eq!(
            ahead.get_ref().reads,
            1,
            "one read of the socket for ten small reads"
        );
        assert_eq!(ahead.buffered(), 0);
        assert_eq!(ahead.buf.capacity(), 0, "a drained chunk is released");
    }

    #[tokio::test]
    async fn end_of_input_and_writes_pass_through() {
        let (mut far, near) = duplex(1024);
        let mut ahead = ReadAhead::new(near);
        ahead.write_all(b"out").await.unwrap();
        let mut three = [0u8; 3];
        far.read_exact(&mut three).await.unwrap();
        assert_eq!(&three, b"out");

        far.write_all(b"last").await.unwrap();
        drop(far);
        let mut rest = Vec::new();
        ahead.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"last");
    }
}
