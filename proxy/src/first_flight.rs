//! Reading a client's first flight for detection: only as many bytes as [`crate::detect`]
//! asks for (never more than one full TLS record), all under one deadline counted from the
//! start, so the decision waits on nothing but the client's bytes and the timeout.
//!
//! The bytes are read, not peeked: a ClientHello may span several TCP segments, and reading
//! exactly what the parser asks for (first a record header, then the record) needs no
//! peek-buffer sizing and never reads past the record. The caller replays the bytes with
//! [`lanyard_daemon::rewind::Rewind`] to the target or to rustls.

use std::io;
use std::time::Duration;

use lanyard_svid::tls::LANYARD_ALPN;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use crate::detect::{Inspection, MAX_CLIENT_HELLO_BYTES, inspect};

/// What the first flight turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstFlight {
    /// A TLS ClientHello offering ALPN `lanyard/1`: ours to terminate.
    LanyardHello,
    /// A TLS ClientHello without `lanyard/1` (the application's own TLS), or one too large
    /// to be ours.
    OtherTls,
    /// Bytes that do not start a TLS handshake.
    Plaintext,
    /// The deadline passed first (no bytes at all: a server-speaks-first protocol).
    Timeout,
    /// The client closed its side before a decision.
    Closed,
}

/// The verdict and the bytes read to reach it (to be replayed).
#[derive(Debug)]
pub struct Sniffed {
    pub kind: FirstFlight,
    pub bytes: Vec<u8>,
}

/// Reads from `stream` until [`inspect`] decides, the client closes, or `timeout` passes.
pub async fn read_first_flight<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> io::Result<Sniffed> {
    let deadline = Instant::now() + timeout;
    let mut bytes = Vec::new();
    loop {
        let at_least = match inspect(&bytes, LANYARD_ALPN) {
            Inspection::ClientHello { offers_alpn: true } => {
                return Ok(done(FirstFlight::LanyardHello, bytes));
            }
            Inspection::ClientHello { offers_alpn: false } => {
                return Ok(done(FirstFlight::OtherTls, bytes));
            }
            Inspection::NotClientHello => return Ok(done(FirstFlight::Plaintext, bytes)),
            Inspection::NeedMore { at_least } if at_least > MAX_CLIENT_HELLO_BYTES => {
                return Ok(done(FirstFlight::OtherTls, bytes));
            }
            Inspection::NeedMore { at_least } => at_least,
        };
        let filled = bytes.len();
        bytes.resize(at_least, 0);
        match tokio::time::timeout_at(deadline, stream.read(&mut bytes[filled..])).await {
            Err(_elapsed) => {
                bytes.truncate(filled);
                return Ok(done(FirstFlight::Timeout, bytes));
            }
            Ok(Ok(0)) => {
                bytes.truncate(filled);
                return Ok(done(FirstFlight::Closed, bytes));
            }
            Ok(Ok(n)) => bytes.truncate(filled + n),
            Ok(Err(e)) => return Err(e),
        }
    }
}

fn done(kind: FirstFlight, bytes: Vec<u8>) -> Sniffed {
    Sniffed { kind, bytes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn silence_times_out_with_no_bytes() {
        let (_far, mut near) = tokio::io::duplex(64);
        let start = Instant::now();
        let sniffed = read_first_flight(&mut near, Duration::from_millis(500))
            .await
            .unwrap();
        assert_eq!(sniffed.kind, FirstFlight::Timeout);
        assert!(sniffed.bytes.is_empty());
        assert_eq!(start.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_partial_record_times_out_keeping_its_bytes() {
        let (mut far, mut near) = tokio::io::duplex(64);
        far.write_all(&[0x16, 3, 1, 0, 200, 1]).await.unwrap();
        let sniffed = read_first_flight(&mut near, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(sniffed.kind, FirstFlight::Timeout);
        assert_eq!(sniffed.bytes, [0x16, 3, 1, 0, 200, 1]);
    }

    #[tokio::test]
    async fn plaintext_is_decided_without_waiting_and_bytes_are_kept() {
        let (mut far, mut near) = tokio::io::duplex(64);
        far.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        // A long timeout: the test would hang if detection waited for it.
        let sniffed = read_first_flight(&mut near, Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(sniffed.kind, FirstFlight::Plaintext);
        // Only the record header's worth was read; the rest stays in the socket.
        assert_eq!(sniffed.bytes, b"GET /");
    }

    #[tokio::test]
    async fn close_before_a_decision() {
        let (mut far, mut near) = tokio::io::duplex(64);
        far.write_all(&[0x16, 3]).await.unwrap();
        drop(far);
        let sniffed = read_first_flight(&mut near, Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(sniffed.kind, FirstFlight::Closed);
        assert_eq!(sniffed.bytes, [0x16, 3]);
    }

    #[tokio::test]
    async fn an_oversized_record_is_foreign_tls_after_one_record_at_most() {
        let (mut far, mut near) = tokio::io::duplex(1 << 16);
        // A ClientHello announcing 32 KiB whose cipher suite list runs past a full record.
        let mut wire = vec![0x16, 3, 1, 0x40, 0x00, 1, 0x00, 0x80, 0x00, 3, 3];
        wire.extend([0u8; 32]);
        wire.extend([0, 0x7f, 0x00]);
        wire.resize(MAX_CLIENT_HELLO_BYTES, 0);
        wire.extend([0x16, 3, 1, 0x40, 0x00]);
        wire.extend(vec![0u8; 100]);
        far.write_all(&wire).await.unwrap();
        let sniffed = read_first_flight(&mut near, Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(sniffed.kind, FirstFlight::OtherTls);
        assert!(sniffed.bytes.len() <= MAX_CLIENT_HELLO_BYTES);
    }
}
