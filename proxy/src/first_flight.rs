//! Reading a client's first flight for detection: only as many bytes as [`crate::detect`]
//! asks for (one TLS record at a time, a ClientHello across records up to
//! [`MAX_CLIENT_HELLO_BYTES`]), all under one deadline counted from the start, so the decision
//! waits on nothing but the client's bytes and the timeout.
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
    /// A TLS ClientHello without `lanyard/1` (the application's own TLS), or one longer than
    /// rustls accepts.
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

    /// A ClientHello carrying `filler` bytes of an unknown extension, then ALPN `lanyard/1`,
    /// in handshake records of `chunk` bytes.
    fn long_hello(filler: usize, chunk: usize) -> Vec<u8> {
        let mut ext = vec![0xfe, 0x0d];
        ext.extend((filler as u16).to_be_bytes());
        ext.extend(vec![0xab; filler]);
        ext.extend([0, 16, 0, 12, 0, 10, 9]);
        ext.extend(LANYARD_ALPN);
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.extend([0, 0, 2, 0x13, 0x01, 1, 0]);
        body.extend((ext.len() as u16).to_be_bytes());
        body.extend(ext);
        let mut hs = vec![1];
        hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend(body);
        let mut wire = Vec::new();
        for part in hs.chunks(chunk) {
            wire.extend([0x16, 3, 1]);
            wire.extend((part.len() as u16).to_be_bytes());
            wire.extend(part);
        }
        wire
    }

    #[tokio::test]
    async fn a_hello_over_several_records_offering_ours_is_ours() {
        let (mut far, mut near) = tokio::io::duplex(1 << 17);
        let wire = long_hello(40 * 1024, 16 * 1024);
        assert!(wire.len() > 2 * 16 * 1024);
        far.write_all(&wire).await.unwrap();
        far.write_all(b"more").await.unwrap();
        let sniffed = read_first_flight(&mut near, Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(sniffed.kind, FirstFlight::LanyardHello);
        // The whole hello, and nothing after it.
        assert_eq!(sniffed.bytes, wire);
    }

    #[tokio::test]
    async fn a_hello_undecided_within_the_bound_is_foreign_tls() {
        let (mut far, mut near) = tokio::io::duplex(1 << 17);
        // 64,000 filler bytes in 100-byte records: its ALPN lies past MAX_CLIENT_HELLO_BYTES.
        let wire = long_hello(64_000, 100);
        assert!(wire.len() > MAX_CLIENT_HELLO_BYTES);
        far.write_all(&wire).await.unwrap();
        let sniffed = read_first_flight(&mut near, Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(sniffed.kind, FirstFlight::OtherTls);
        assert!(sniffed.bytes.len() <= MAX_CLIENT_HELLO_BYTES);
        assert_eq!(sniffed.bytes, wire[..sniffed.bytes.len()]);
    }
}
