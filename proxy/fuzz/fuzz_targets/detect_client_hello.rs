//! Fuzzes ClientHello detection: `inspect` must never panic, must ask only for more bytes
//! than it has (at most one record more, never past `MAX_CLIENT_HELLO_BYTES` for a hello the
//! proxy will read), and must be stable: once it decides, more bytes never change the
//! decision, and every prefix before that asked for more.
//!
//! Two shapes of input, chosen by the first byte:
//! - raw wire bytes (first byte even): whatever a client might send;
//! - handshake bytes to fragment (first byte odd): the rest is one handshake message, cut
//!   into records of a size taken from the second byte, so multi-record ClientHellos are
//!   reached without the fuzzer having to guess record headers. The verdict must not depend
//!   on the fragmentation: the same bytes in full-size records decide the same way.
#![no_main]

#[path = "../../src/detect.rs"]
#[allow(dead_code)]
mod detect;

use detect::{
    Inspection, MAX_CLIENT_HELLO_BYTES, MAX_RECORD_PAYLOAD, RECORD_HEADER_LEN, inspect,
};
use libfuzzer_sys::fuzz_target;

const ALPN: &[u8] = b"lanyard/1";

/// `handshake` in handshake records of at most `chunk` payload bytes.
fn records(handshake: &[u8], chunk: usize) -> Vec<u8> {
    let mut wire = Vec::with_capacity(handshake.len() + handshake.len() / chunk * 5 + 5);
    for part in handshake.chunks(chunk) {
        wire.extend([0x16, 3, 1]);
        wire.extend((part.len() as u16).to_be_bytes());
        wire.extend(part);
    }
    wire
}

/// The checks of the module comment on one wire input; the verdict on the whole input.
fn check(data: &[u8]) -> Inspection {
    let whole = inspect(data, ALPN);
    if let Inspection::NeedMore { at_least } = whole {
        assert!(at_least > data.len(), "asked for {at_least} with {} bytes", data.len());
    }
    // Replay as the proxy reads: grow the buffer to what was asked for.
    let mut len = 0;
    loop {
        match inspect(&data[..len], ALPN) {
            Inspection::NeedMore { at_least } => {
                assert!(at_least > len);
                assert!(
                    at_least - len <= RECORD_HEADER_LEN + MAX_RECORD_PAYLOAD,
                    "asked for more than a record ahead: {at_least} at {len}"
                );
                if at_least > MAX_CLIENT_HELLO_BYTES || at_least > data.len() {
                    break;
                }
                len = at_least;
            }
            decided => {
                // Deciding on a prefix means the whole input decides the same way.
                assert_eq!(decided, whole, "prefix of {len} bytes");
                break;
            }
        }
    }
    whole
}

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(MAX_CLIENT_HELLO_BYTES + 64)];
    match data {
        [mode, size, handshake @ ..] if mode % 2 == 1 && !handshake.is_empty() => {
            let chunk = usize::from(*size).max(1);
            let fragmented = check(&records(handshake, chunk));
            let unfragmented = check(&records(handshake, MAX_RECORD_PAYLOAD));
            // Where both decided, they agree: records are framing, not content.
            let decided = |i: &Inspection| !matches!(i, Inspection::NeedMore { .. });
            if decided(&fragmented) && decided(&unfragmented) {
                assert_eq!(fragmented, unfragmented, "chunk {chunk}");
            }
        }
        _ => {
            check(data);
        }
    }
});
