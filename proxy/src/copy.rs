//! The bidirectional copy loop behind [`crate::forward::pipe`], with buffers sized by traffic.
//!
//! Why not `tokio::io::copy_bidirectional`: its fixed buffers force a choice between bulk
//! throughput (large buffers: fewer syscalls, full 16 KiB TLS records) and memory per idle
//! connection (small buffers). Here each direction's buffer
//! - holds nothing while idle: a read of one byte into the stack waits for data;
//! - starts at [`BufferPolicy::initial`] when data arrives, and grows fourfold (up to
//!   [`BufferPolicy::max`]) each time a read fills it, i.e. while the direction streams;
//! - once grown, keeps reading until the source has nothing ready or the buffer is full before
//!   writing, so a write carries as much as the source had (several TLS records per syscall);
//! - is released after a whole [`BufferPolicy::idle`] period without progress in that
//!   direction, so a connection that streamed once goes back to holding nothing.
//!
//! Byte counts are kept per direction as they happen, so they survive an error.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How a direction's buffer is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferPolicy {
    /// The buffer allocated when data arrives on an idle direction.
    pub initial: usize,
    /// The largest buffer a streaming direction grows to.
    pub max: usize,
    /// A direction without progress for a whole period of this length releases its buffer
    /// (so after between one and two periods of silence).
    pub idle: Duration,
}

impl BufferPolicy {
    /// 4 KiB at first (a connection carrying small messages costs little), up to 256 KiB
    /// (a bulk transfer costs one syscall per 256 KiB on the plaintext side and full records
    /// on the TLS side), released after 250 to 500 ms of silence.
    pub const DEFAULT: Self = Self {
        initial: 4 * 1024,
        max: 256 * 1024,
        idle: Duration::from_millis(250),
    };
}

impl Default for BufferPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The bytes one direction carried: read from its source, written to its sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flow {
    pub read: u64,
    pub written: u64,
}

/// Copies `a` to `b` and `b` to `a` until both directions end (each end of input is passed
/// on as a write shutdown: half-close) or one fails. Await it, then read [`Self::flows`].
pub struct BidiCopy<'a, A, B> {
    a: &'a mut A,
    b: &'a mut B,
    a_to_b: Direction,
    b_to_a: Direction,
    policy: BufferPolicy,
    /// Ticks every `policy.idle` while either direction holds a buffer.
    idle_timer: Pin<Box<Sleep>>,
    idle_timer_armed: bool,
}

impl<'a, A, B> BidiCopy<'a, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    pub fn new(a: &'a mut A, b: &'a mut B, policy: BufferPolicy) -> Self {
        // Never polled until a buffer exists, so an idle pipe has no timer registered.
        let idle_timer = Box::pin(tokio::time::sleep_until(Instant::now() + policy.idle));
        Self {
            a,
            b,
            a_to_b: Direction::default(),
            b_to_a: Direction::default(),
            policy,
            idle_timer,
            idle_timer_armed: false,
        }
    }

    /// What each direction has carried so far (also after an error).
    pub fn flows(&self) -> (Flow, Flow) {
        (self.a_to_b.flow, self.b_to_a.flow)
    }

    /// The current buffer size of each direction (0: released).
    pub fn buffer_sizes(&self) -> (usize, usize) {
        (self.a_to_b.buf.len(), self.b_to_a.buf.len())
    }

    /// Releases the buffers of directions that made no progress during the last period.
    fn poll_idle(&mut self, cx: &mut Context<'_>) {
        loop {
            if !self.a_to_b.holds_buffer() && !self.b_to_a.holds_buffer() {
                self.idle_timer_armed = false;
                return;
            }
            if !self.idle_timer_armed {
                self.idle_timer_armed = true;
                let next = Instant::now() + self.policy.idle;
                self.idle_timer.as_mut().reset(next);
            }
            if self.idle_timer.as_mut().poll(cx).is_pending() {
                return;
            }
            self.a_to_b.end_period();
            self.b_to_a.end_period();
            self.idle_timer_armed = false;
        }
    }
}

impl<A, B> Future for BidiCopy<'_, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let policy = this.policy;
        if !this.a_to_b.done
            && let Poll::Ready(Err(e)) =
                this.a_to_b
                    .poll_copy(cx, Pin::new(&mut *this.a), Pin::new(&mut *this.b), &policy)
        {
            return Poll::Ready(Err(e));
        }
        if !this.b_to_a.done
            && let Poll::Ready(Err(e)) =
                this.b_to_a
                    .poll_copy(cx, Pin::new(&mut *this.b), Pin::new(&mut *this.a), &policy)
        {
            return Poll::Ready(Err(e));
        }
        if this.a_to_b.done && this.b_to_a.done {
            return Poll::Ready(Ok(()));
        }
        this.poll_idle(cx);
        Poll::Pending
    }
}

/// One direction: data read from the source waits in `buf[pos..cap]` for the sink.
#[derive(Debug, Default)]
struct Direction {
    /// Empty while released.
    buf: Vec<u8>,
    pos: usize,
    cap: usize,
    /// A read filled the buffer: the next one, once this is written out, is larger.
    grow: bool,
    /// End of input seen.
    read_done: bool,
    /// Something was written since the sink was last flushed.
    need_flush: bool,
    /// End of input passed on (sink shut down).
    done: bool,
    /// Progress since the idle timer last ticked.
    active: bool,
    flow: Flow,
}

impl Direction {
    fn holds_buffer(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The idle timer ticked: release the buffer if nothing moved for the whole period.
    fn end_period(&mut self) {
        if self.active {
            self.active = false;
        } else if self.pos == self.cap {
            self.release();
        }
    }

    fn release(&mut self) {
        self.buf = Vec::new();
        self.pos = 0;
        self.cap = 0;
        self.grow = false;
    }

    fn has_room(&self) -> bool {
        self.buf.is_empty() || self.cap < self.buf.len()
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        policy: &BufferPolicy,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if !self.read_done && self.has_room() {
                match self.poll_fill(cx, reader.as_mut(), policy) {
                    Poll::Ready(Ok(_)) => {
                        // A streaming direction gathers what the source has before writing;
                        // small messages go out at once (latency).
                        let streaming = self.buf.len() > policy.initial;
                        if streaming && !self.read_done && self.has_room() {
                            continue;
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending if self.pos == self.cap => {
                        // Nothing to write and nothing to read: push out what the sink holds
                        // (a TLS stream may keep records), then wait.
                        if self.need_flush {
                            ready!(writer.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Pending => {}
                }
            }

            while self.pos < self.cap {
                match writer
                    .as_mut()
                    .poll_write(cx, &self.buf[self.pos..self.cap])
                {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "the receiving side accepted no bytes",
                        )));
                    }
                    Poll::Ready(Ok(n)) => {
                        self.pos += n;
                        self.flow.written += n as u64;
                        self.need_flush = true;
                        self.active = true;
                    }
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Top the buffer up meanwhile, for a larger write when the sink drains.
                        if !self.read_done && self.has_room() {
                            ready!(self.poll_fill(cx, reader.as_mut(), policy))?;
                        }
                        return Poll::Pending;
                    }
                }
            }

            // Everything read has been written.
            self.pos = 0;
            self.cap = 0;
            if self.grow {
                self.grow = false;
                let size = (self.buf.len() * 4).min(policy.max);
                self.buf = vec![0; size];
            }
            if self.read_done {
                if self.need_flush {
                    ready!(writer.as_mut().poll_flush(cx))?;
                    self.need_flush = false;
                }
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.done = true;
                self.release();
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Reads once into the free part of the buffer (allocating it if released); returns the
    /// bytes added, 0 at end of input (then `read_done` is set).
    fn poll_fill<R>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        policy: &BufferPolicy,
    ) -> Poll<io::Result<usize>>
    where
        R: AsyncRead + ?Sized,
    {
        let mut added = 0;
        if self.buf.is_empty() {
            // Released: wait for data with a one-byte read into the stack, so that an idle
            // direction holds no buffer, then allocate and read the rest.
            let mut probe = [0u8; 1];
            let mut probe_buf = ReadBuf::new(&mut probe);
            ready!(poll_read_retrying(cx, reader.as_mut(), &mut probe_buf))?;
            if probe_buf.filled().is_empty() {
                self.read_done = true;
                return Poll::Ready(Ok(0));
            }
            self.buf = vec![0; policy.initial.max(2)];
            self.buf[0] = probe[0];
            self.cap = 1;
            self.flow.read += 1;
            self.active = true;
            added = 1;
        }
        let mut read_buf = ReadBuf::new(&mut self.buf[self.cap..]);
        match poll_read_retrying(cx, reader.as_mut(), &mut read_buf) {
            Poll::Ready(Ok(())) => {
                let n = read_buf.filled().len();
                if n == 0 {
                    self.read_done = true;
                }
                self.cap += n;
                self.flow.read += n as u64;
                self.active |= n > 0;
                if self.cap == self.buf.len() && self.buf.len() < policy.max {
                    self.grow = true;
                }
                Poll::Ready(Ok(added + n))
            }
            // The probe's byte is data even if the rest is not here yet.
            Poll::Pending if added > 0 => Poll::Ready(Ok(added)),
            other => other.map_ok(|()| 0),
        }
    }
}

fn poll_read_retrying<R: AsyncRead + ?Sized>(
    cx: &mut Context<'_>,
    mut reader: Pin<&mut R>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    loop {
        match reader.as_mut().poll_read(cx, buf) {
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    const POLICY: BufferPolicy = BufferPolicy {
        initial: 1024,
        max: 16 * 1024,
        idle: Duration::from_millis(100),
    };

    /// Polls `copy` once; its output if it finished.
    async fn step<F: Future + Unpin>(copy: &mut F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut *copy).poll(cx) {
                Poll::Ready(output) => Some(output),
                Poll::Pending => None,
            })
        })
        .await
    }

    /// Polls `copy` until `done` holds, failing after a bounded number of polls.
    async fn step_until<F: Future + Unpin>(copy: &mut F, mut done: impl FnMut(&F) -> bool) {
        for _ in 0..1000 {
            if done(copy) {
                return;
            }
            assert!(step(copy).await.is_none(), "the copy ended early");
            tokio::task::yield_now().await;
        }
        panic!("condition not reached within 1000 polls");
    }

    /// A sink that records the size of every write and fails once `fail_after` bytes are in.
    #[derive(Default)]
    struct Sink {
        got: Vec<u8>,
        writes: Vec<usize>,
        fail_after: Option<usize>,
        reader: Option<Waker>,
    }

    impl AsyncRead for Sink {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            // Never sends anything.
            self.get_mut().reader = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    impl AsyncWrite for Sink {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let room = this.fail_after.map_or(buf.len(), |l| l - this.got.len());
            if room == 0 {
                return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
            }
            let n = buf.len().min(room);
            this.got.extend_from_slice(&buf[..n]);
            this.writes.push(n);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_pipe_holds_no_buffer_and_small_messages_start_small() {
        let (mut client, mut down) = duplex(1 << 20);
        let (mut up, mut server) = duplex(1 << 20);
        let mut copy = BidiCopy::new(&mut down, &mut up, POLICY);
        assert!(step(&mut copy).await.is_none());
        assert_eq!(copy.buffer_sizes(), (0, 0));

        client.write_all(b"ping").await.unwrap();
        step_until(&mut copy, |c| c.flows().0.written == 4).await;
        assert_eq!(copy.buffer_sizes(), (POLICY.initial, 0));
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
    }

    #[tokio::test(start_paused = true)]
    async fn a_streaming_direction_grows_and_writes_in_large_chunks() {
        let (mut client, mut down) = duplex(1 << 20);
        let mut sink = Sink::default();
        let data = pattern(300_000);
        client.write_all(&data).await.unwrap();
        let mut copy = BidiCopy::new(&mut down, &mut sink, POLICY);
        step_until(&mut copy, |c| c.flows().0.written == data.len() as u64).await;
        assert_eq!(
            copy.buffer_sizes(),
            (POLICY.max, 0),
            "grown to the maximum, once"
        );
        assert_eq!(copy.flows().0.read, data.len() as u64);
        drop(copy);
        assert_eq!(sink.got, data);
        // 1 KiB, then 4 KiB, then 16 KiB writes: the bulk goes out in maximal chunks.
        assert_eq!(&sink.writes[..2], &[1024, 4096]);
        let full = sink.writes.iter().filter(|&&n| n == POLICY.max).count();
        assert!(
            full >= 300_000 / POLICY.max - 1,
            "writes: {:?}",
            sink.writes
        );
    }

    #[tokio::test(start_paused = true)]
    async fn buffers_are_released_after_an_idle_period_and_kept_while_active() {
        let (mut client, mut down) = duplex(1 << 20);
        let (mut up, mut server) = duplex(1 << 20);
        let mut copy = BidiCopy::new(&mut down, &mut up, POLICY);
        client.write_all(&pattern(100_000)).await.unwrap();
        step_until(&mut copy, |c| c.flows().0.written == 100_000).await;
        let mut got = vec![0u8; 100_000];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(copy.buffer_sizes().0, POLICY.max);

        // Traffic in every period keeps the grown buffer.
        for _ in 0..3 {
            tokio::time::advance(POLICY.idle / 2).await;
            client.write_all(b"more").await.unwrap();
            let target = copy.flows().0.written + 4;
            step_until(&mut copy, |c| c.flows().0.written == target).await;
            tokio::time::advance(POLICY.idle / 2).await;
            assert!(step(&mut copy).await.is_none());
            assert_eq!(copy.buffer_sizes().0, POLICY.max, "released while active");
        }

        // One full quiet period: released.
        tokio::time::advance(POLICY.idle).await;
        assert!(step(&mut copy).await.is_none());
        tokio::time::advance(POLICY.idle).await;
        assert!(step(&mut copy).await.is_none());
        assert_eq!(copy.buffer_sizes(), (0, 0));

        // Data after the release starts over at the initial size, first byte included.
        client.write_all(b"again").await.unwrap();
        let target = copy.flows().0.written + 5;
        step_until(&mut copy, |c| c.flows().0.written == target).await;
        assert_eq!(copy.buffer_sizes(), (POLICY.initial, 0));
        let mut rest = vec![0u8; 12 + 5];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest[12..], b"again");
    }

    #[tokio::test(start_paused = true)]
    async fn half_close_both_ways_with_exact_counts() {
        let (mut client, mut down) = duplex(64);
        let (mut up, mut server) = duplex(64);
        let copying = tokio::spawn(async move {
            let mut copy = BidiCopy::new(&mut down, &mut up, POLICY);
            let result = (&mut copy).await;
            (copy.flows(), copy.buffer_sizes(), result)
        });

        let request = pattern(10_000);
        let sent = request.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap(); // EOF: the half-close went through
        assert_eq!(got, request);
        let mut client = writer.await.unwrap();
        // The other direction still flows after the first one ended.
        // (Written and read at once: the pipes hold far less than the response.)
        let response = pattern(7_777);
        let mut answer = Vec::new();
        let (written, read) = tokio::join!(
            async {
                server.write_all(&response).await?;
                server.shutdown().await
            },
            client.read_to_end(&mut answer)
        );
        written.unwrap();
        read.unwrap();
        assert_eq!(answer, response);

        let ((a_to_b, b_to_a), sizes, result) = copying.await.unwrap();
        result.unwrap();
        assert_eq!(
            a_to_b,
            Flow {
                read: 10_000,
                written: 10_000
            }
        );
        assert_eq!(
            b_to_a,
            Flow {
                read: 7_777,
                written: 7_777
            }
        );
        assert_eq!(sizes, (0, 0), "a finished direction keeps no buffer");
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_mid_stream_keeps_the_counts() {
        let (mut client, mut down) = duplex(1 << 20);
        let mut sink = Sink {
            fail_after: Some(3_000),
            ..Sink::default()
        };
        client.write_all(&pattern(10_000)).await.unwrap();
        let mut copy = BidiCopy::new(&mut down, &mut sink, POLICY);
        let result = loop {
            if let Some(result) = step(&mut copy).await {
                break result;
            }
            tokio::task::yield_now().await;
        };
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
        let (a_to_b, b_to_a) = copy.flows();
        assert_eq!(a_to_b.written, 3_000);
        assert!(a_to_b.read >= 3_000 && a_to_b.read <= 10_000, "{a_to_b:?}");
        assert_eq!(b_to_a, Flow::default());
    }

    #[tokio::test(start_paused = true)]
    async fn end_of_input_on_an_idle_direction_is_passed_on_and_a_later_error_ends_the_copy() {
        let (client, mut down) = duplex(64);
        let (mut up, mut server) = duplex(64);
        drop(client); // EOF for the released direction's one-byte read
        let mut copy = BidiCopy::new(&mut down, &mut up, POLICY);
        assert!(
            step(&mut copy).await.is_none(),
            "the other direction is still open"
        );
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty());

        // The server answers a client that is gone: the write fails and ends the copy.
        server.write_all(b"late").await.unwrap();
        let result = step(&mut copy).await.expect("the copy ended");
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        let (a_to_b, b_to_a) = copy.flows();
        assert_eq!(a_to_b, Flow::default());
        assert_eq!(
            b_to_a,
            Flow {
                read: 4,
                written: 0
            }
        );
    }
}
