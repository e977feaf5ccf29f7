//! Fuzzes ClientHello detection: `inspect` must never panic, must ask only for more bytes
//! than it has (and never more than one full record), and must be stable: once it decides,
//! more bytes never change the decision, and every prefix before that asked for more.
#![no_main]

#[path = "../../src/detect.rs"]
#[allow(dead_code)]
mod detect;

use detect::{Inspection, MAX_CLIENT_HELLO_BYTES, inspect};
use libfuzzer_sys::fuzz_target;

const ALPN: &[u8] = b"lanyard/1";

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(MAX_CLIENT_HELLO_BYTES + 64)];
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
});
