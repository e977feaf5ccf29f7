//! Fuzzes the `h2_authority` frame layer: any client byte stream, fed in chunks the input
//! chooses, must never panic, never grow the output by more than a bounded rewrite per frame,
//! and, when it is accepted, never leave an output frame above the frame size. The first
//! octet picks a small or the default frame size, so splits and carries are reached often.
#![no_main]

use lanyard_agent::h2_authority::frame::{FrameHeader, HEADER_LEN};
use lanyard_agent::h2_authority::{FrameRewriter, RewriterLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, stream)) = data.split_first() else {
        return;
    };
    let limits = RewriterLimits {
        max_frame_size: if knobs & 1 == 0 { 16_384 } else { 64 },
        max_header_block: 4096,
        max_table_size: 4096,
    };
    let chunk = 1 + usize::from(knobs >> 1);
    let mut rewriter = FrameRewriter::new(limits);
    let mut out = Vec::new();
    let mut accepted = true;
    for piece in stream.chunks(chunk) {
        if let Err(e) = rewriter.process(piece, &mut out) {
            assert!(!e.label().is_empty());
            assert!(e.message().len() < 256);
            accepted = false;
            break;
        }
    }
    // Output lags input by at most one held frame and grows by a bounded amount per frame:
    // a rewrite changes one value's encoding, never its decoded length.
    assert!(out.len() <= 2 * stream.len() + 64 * HEADER_LEN + 4096);
    if accepted {
        // Every complete output frame respects the frame size.
        let mut rest = &out[..];
        while rest.len() >= HEADER_LEN {
            let h = FrameHeader::parse(rest[..HEADER_LEN].try_into().unwrap());
            assert!(h.len <= limits.max_frame_size);
            if rest.len() < HEADER_LEN + h.len {
                break;
            }
            rest = &rest[HEADER_LEN + h.len..];
        }
    }
});
