//! Lets grpc-core clients (py-spiffe, Python `grpcio`, and grpc-core in other languages) talk
//! to the tonic server on the Workload API's Unix socket, unchanged.
//!
//! # Why
//! grpc-core sends the percent-encoded socket path as the HTTP/2 `:authority` (e.g.
//! `%2Frun%2Flanyard%2Fagent.sock`). h2 parses `:authority` with `http::uri::Authority`, which
//! refuses it, and resets the stream with PROTOCOL_ERROR before tonic, or our code, sees the
//! request; h2 has no switch for this. Go and Rust clients send a valid authority.
//!
//! # What
//! [`AuthorityNormalizer`] wraps the read side of an accepted connection (client-to-server
//! octets only; writes pass straight through) and replaces every `:authority` value that h2
//! would refuse (by the very parser h2 uses, [`hpack::is_acceptable_authority`]) with a valid
//! one of the same decoded length ([`hpack::replacement_of_len`]: `localhost`, a subdomain of
//! it, or a run of `x` for the rare value shorter than 9 octets). Every other octet passes
//! unchanged. It is meant for the Unix-socket listener only, where the authority carries no
//! meaning; a TCP listener must not use it.
//!
//! # Why the same length
//! A literal with incremental indexing adds its field to both sides' HPACK dynamic tables, and
//! an entry's size is name + value + 32 octets. Keeping the decoded length keeps every entry's
//! size, hence every later eviction, identical between the client's encoder and h2's decoder,
//! so all later indexed references still mean what the client meant. A later indexed
//! reference to that entry needs no work: the server's copy already holds the new value.
//! Nothing else in the block is touched: only the value string of the one field is
//! re-encoded (plain or Huffman, whichever is shorter), and the frame lengths follow.
//!
//! # Bounds and failures
//! - Octets flow through as they arrive; only a HEADERS or CONTINUATION frame is held, whole,
//!   before it is passed on (at most the server's frame size, 16 KiB), plus the start of a
//!   field that straddles two frames (bounded with the whole header block, 64 KiB).
//! - Frames above the frame size, a header block above its bound, malformed framing or HPACK
//!   close that connection only: the read returns an `InvalidData` error carrying a
//!   [`FrameLayerError`], and h2 drops the connection. Such input would have been a
//!   connection error in h2 anyway.
//! - The tracker follows the *client's* table, capped by dynamic table size updates; it
//!   refuses updates above 64 KiB on its own account, and h2 refuses those above its
//!   SETTINGS_HEADER_TABLE_SIZE (4096) first in practice.
//!
//! # Modules
//! - [`frame`]: frame headers.
//! - [`hpack`]: the table tracker and the rewrite of one field.
//! - [`huffman`]: RFC 7541's Huffman code.
//! - [`rewriter`]: the sans-I/O frame loop, [`FrameRewriter`].

pub mod frame;
pub mod hpack;
pub mod huffman;
pub mod rewriter;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use hpack::HpackError;
pub use rewriter::{FrameRewriter, RewriterLimits};

/// How much is read from the connection at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Why the layer closed a connection. `Display` is a short snake_case label (for logs and
/// metrics); [`FrameLayerError::message`] says what happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameLayerError {
    /// A frame longer than the server's SETTINGS_MAX_FRAME_SIZE.
    FrameTooLarge { len: usize, max: usize },
    /// A header block went on past its bound.
    HeaderBlockTooLarge { max: usize },
    /// A frame other than CONTINUATION inside a header block.
    ExpectedContinuation { kind: u8 },
    /// CONTINUATION with no header block open.
    UnexpectedContinuation,
    /// CONTINUATION for another stream than the open header block's.
    ContinuationStreamMismatch,
    /// PUSH_PROMISE from a client.
    PushPromise,
    /// A pad length (or PRIORITY fields) longer than the frame.
    BadPadding,
    /// END_HEADERS inside a field.
    TruncatedHeaderBlock,
    /// The header block is not valid HPACK.
    Hpack(HpackError),
}

impl FrameLayerError {
    /// A short snake_case label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::FrameTooLarge { .. } => "frame_too_large",
            Self::HeaderBlockTooLarge { .. } => "header_block_too_large",
            Self::ExpectedContinuation { .. } => "expected_continuation",
            Self::UnexpectedContinuation => "unexpected_continuation",
            Self::ContinuationStreamMismatch => "continuation_stream_mismatch",
            Self::PushPromise => "push_promise_from_client",
            Self::BadPadding => "bad_padding",
            Self::TruncatedHeaderBlock => "truncated_header_block",
            Self::Hpack(e) => e.label(),
        }
    }

    /// What went wrong, for a person.
    pub fn message(&self) -> String {
        match self {
            Self::FrameTooLarge { len, max } => {
                format!("a {len}-octet frame exceeds the {max}-octet frame size")
            }
            Self::HeaderBlockTooLarge { max } => {
                format!("a header block exceeds {max} octets")
            }
            Self::ExpectedContinuation { kind } => {
                format!(
                    "frame type {kind:#x} arrived inside a header block (CONTINUATION expected)"
                )
            }
            Self::UnexpectedContinuation => "CONTINUATION without a header block".into(),
            Self::ContinuationStreamMismatch => {
                "CONTINUATION on another stream than its header block".into()
            }
            Self::PushPromise => "a client sent PUSH_PROMISE".into(),
            Self::BadPadding => "padding or priority fields longer than the HEADERS frame".into(),
            Self::TruncatedHeaderBlock => "a header block ends inside a header field".into(),
            Self::Hpack(e) => e.message().into(),
        }
    }
}

impl std::fmt::Display for FrameLayerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl std::error::Error for FrameLayerError {}

/// A connection whose reads go through a [`FrameRewriter`] (see the module docs); writes,
/// flushes and shutdown go straight to `inner`. Start it right after the 24-octet preface.
#[derive(Debug)]
pub struct AuthorityNormalizer<S> {
    inner: S,
    rewriter: FrameRewriter,
    chunk: Box<[u8]>,
    out: Vec<u8>,
    out_pos: usize,
    failed: Option<FrameLayerError>,
}

impl<S> AuthorityNormalizer<S> {
    /// Wraps `inner` with the default bounds (16 KiB frames, 64 KiB header blocks).
    pub fn new(inner: S) -> Self {
        Self::with_limits(inner, RewriterLimits::default())
    }

    pub fn with_limits(inner: S, limits: RewriterLimits) -> Self {
        Self {
            inner,
            rewriter: FrameRewriter::new(limits),
            chunk: vec![0; READ_CHUNK].into_boxed_slice(),
            out: Vec::new(),
            out_pos: 0,
            failed: None,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// How many `:authority` values were rewritten on this connection.
    pub fn rewrites(&self) -> u64 {
        self.rewriter.rewrites()
    }
}

fn closed(e: FrameLayerError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityNormalizer<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = (this.out.len() - this.out_pos).min(buf.remaining());
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = this.failed {
                return Poll::Ready(Err(closed(e)));
            }
            let mut chunk = ReadBuf::new(&mut this.chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
            let n = chunk.filled().len();
            if n == 0 {
                // End of stream; a frame cut short is h2's to notice.
                return Poll::Ready(Ok(()));
            }
            if let Err(e) = this.rewriter.process(&this.chunk[..n], &mut this.out) {
                tracing::debug!(
                    reason = %e,
                    detail = %e.message(),
                    "closing a workload API connection: malformed HTTP/2 from the client"
                );
                // Octets before the bad frame are still delivered; then the error.
                this.failed = Some(e);
            } else if this.out.is_empty() {
                // All of it is held (part of a frame header or a header frame): read on.
                continue;
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityNormalizer<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
