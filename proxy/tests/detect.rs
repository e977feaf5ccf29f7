//! Detection on real ClientHellos (made by rustls with the configs the proxy uses), cut into
//! every possible pair of reads and trickled one byte per read, plus the bytes around them.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use lanyard_proxy::detect::{Inspection, inspect};
use lanyard_proxy::first_flight::{FirstFlight, read_first_flight};
use lanyard_svid::BundleSet;
use lanyard_svid::tls::{AnyId, LANYARD_ALPN, SvidStore, client_config, unused_server_name};
use tokio::io::{AsyncRead, ReadBuf};

/// The first flight of a rustls client offering `alpn`.
fn rustls_hello(alpn: Vec<Vec<u8>>) -> Vec<u8> {
    let store = Arc::new(SvidStore::new(BundleSet::new()));
    let config = client_config(store, Arc::new(AnyId), alpn);
    let mut conn = rustls::ClientConnection::new(Arc::new(config), unused_server_name()).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// Serves `data` in reads of at most `step` bytes, then EOF.
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    step: usize,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self
            .step
            .min(buf.remaining())
            .min(self.data.len() - self.pos);
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

#[test]
fn real_rustls_hellos_are_classified() {
    let ours = rustls_hello(vec![LANYARD_ALPN.to_vec()]);
    assert_eq!(
        inspect(&ours, LANYARD_ALPN),
        Inspection::ClientHello { offers_alpn: true }
    );
    let several = rustls_hello(vec![b"h2".to_vec(), LANYARD_ALPN.to_vec()]);
    assert_eq!(
        inspect(&several, LANYARD_ALPN),
        Inspection::ClientHello { offers_alpn: true }
    );
    let other = rustls_hello(vec![b"h2".to_vec()]);
    assert_eq!(
        inspect(&other, LANYARD_ALPN),
        Inspection::ClientHello { offers_alpn: false }
    );
    let none = rustls_hello(vec![]);
    assert_eq!(
        inspect(&none, LANYARD_ALPN),
        Inspection::ClientHello { offers_alpn: false }
    );
}

#[tokio::test]
async fn a_hello_in_any_two_reads_or_one_byte_at_a_time_is_recognised_and_kept_whole() {
    let hello = rustls_hello(vec![LANYARD_ALPN.to_vec()]);
    let mut trailing = hello.clone();
    // Bytes after the hello (e.g. early data) must stay for rustls, unread or replayed.
    trailing.extend_from_slice(b"after");
    for step in [1, 2, 3, 5, 64, hello.len() - 1, hello.len(), 4096] {
        let mut stream = Trickle {
            data: trailing.clone(),
            pos: 0,
            step,
        };
        let sniffed = read_first_flight(&mut stream, Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(sniffed.kind, FirstFlight::LanyardHello, "step {step}");
        assert!(
            trailing.starts_with(&sniffed.bytes),
            "step {step}: detection must keep a prefix of the stream"
        );
        assert_eq!(
            sniffed.bytes.len() + (trailing.len() - stream.pos),
            trailing.len(),
            "step {step}: every byte is either kept or still unread"
        );
    }
    // Cut in two at every point: the first flight still decides the same way.
    for cut in 1..hello.len() {
        let mut stream = Trickle {
            data: hello.clone(),
            pos: 0,
            step: cut,
        };
        let sniffed = read_first_flight(&mut stream, Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(sniffed.kind, FirstFlight::LanyardHello, "cut {cut}");
    }
}

#[tokio::test]
async fn other_first_flights() {
    let cases: [(&[u8], FirstFlight); 4] = [
        (b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", FirstFlight::Plaintext),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", FirstFlight::Plaintext),
        // SSLv2-compatible ClientHello.
        (
            &[0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15],
            FirstFlight::Plaintext,
        ),
        // An empty connection: closed before deciding.
        (b"", FirstFlight::Closed),
    ];
    for (bytes, expected) in cases {
        let mut stream = Trickle {
            data: bytes.to_vec(),
            pos: 0,
            step: 1,
        };
        let sniffed = read_first_flight(&mut stream, Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(sniffed.kind, expected, "{bytes:?}");
    }
    let h2_hello = rustls_hello(vec![b"h2".to_vec()]);
    let mut stream = Trickle {
        data: h2_hello.clone(),
        pos: 0,
        step: 7,
    };
    let sniffed = read_first_flight(&mut stream, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(sniffed.kind, FirstFlight::OtherTls);
    // Decided at the ALPN extension (rustls orders extensions at random, so it may be last):
    // what was read is kept, the rest is still unread.
    assert!(h2_hello.starts_with(&sniffed.bytes));
    assert_eq!(sniffed.bytes.len(), stream.pos);
}
