//! The sans-I/O core of the layer: a client's HTTP/2 octets in, the same octets out except for
//! refused `:authority` values, one frame at a time.
//!
//! Every frame header is read; frames other than HEADERS and CONTINUATION are copied through
//! as they arrive, payload included, without being held. A HEADERS or CONTINUATION frame is
//! held whole (at most the frame size), its header block fragment run through the
//! [`HpackTracker`], and written out again: byte for byte when nothing changed, otherwise with
//! the new fragment, its length in the frame header, and, if the fragment grew past the frame
//! size, the rest in CONTINUATION frames of its own. A field that straddles two frames is
//! carried over into the next frame's fragment (h2 reassembles the whole block before
//! decoding, so where fragments split does not matter to it); the carried octets are bounded
//! by the header block limit.

use super::FrameLayerError;
use super::frame::{
    self, CONTINUATION, END_HEADERS, FrameHeader, HEADER_LEN, HEADERS, PADDED, PRIORITY,
    PRIORITY_LEN, PUSH_PROMISE,
};
use super::hpack::HpackTracker;

/// The bounds a [`FrameRewriter`] enforces.
#[derive(Debug, Clone, Copy)]
pub struct RewriterLimits {
    /// The server's SETTINGS_MAX_FRAME_SIZE: larger frames close the connection, and
    /// rewritten frames are split to stay within it.
    pub max_frame_size: usize,
    /// The most header block octets (all fragments of one block) held or accepted.
    pub max_header_block: usize,
    /// The largest dynamic table size update accepted (the server enforces its own, smaller
    /// SETTINGS_HEADER_TABLE_SIZE; this bounds the tracker alone).
    pub max_table_size: usize,
}

impl Default for RewriterLimits {
    fn default() -> Self {
        Self {
            max_frame_size: frame::DEFAULT_MAX_FRAME_SIZE,
            max_header_block: 64 * 1024,
            max_table_size: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Reading a frame header.
    Head,
    /// Holding a HEADERS or CONTINUATION payload.
    Hold(FrameHeader),
    /// Copying this many more payload octets through.
    Pass(usize),
}

/// The header block being received: HEADERS seen, END_HEADERS not yet.
#[derive(Debug)]
struct Block {
    stream_id: u32,
    /// The start of a field that the previous fragment ended inside.
    carry: Vec<u8>,
    /// Fragment octets received so far.
    total: usize,
}

/// Rewrites one connection's client-to-server octets; see the module docs.
#[derive(Debug)]
pub struct FrameRewriter {
    limits: RewriterLimits,
    state: State,
    head: [u8; HEADER_LEN],
    head_len: usize,
    payload: Vec<u8>,
    block: Option<Block>,
    hpack: HpackTracker,
    rewrites: u64,
}

impl FrameRewriter {
    /// A rewriter for a connection whose preface has already been read.
    pub fn new(limits: RewriterLimits) -> Self {
        Self {
            limits,
            state: State::Head,
            head: [0; HEADER_LEN],
            head_len: 0,
            payload: Vec::new(),
            block: None,
            hpack: HpackTracker::new(limits.max_table_size),
            rewrites: 0,
        }
    }

    /// How many `:authority` values were rewritten so far.
    pub fn rewrites(&self) -> u64 {
        self.rewrites
    }

    /// The tracked dynamic table (size in octets, entries), for tests.
    pub fn table(&self) -> (usize, usize) {
        (self.hpack.table_size(), self.hpack.table_len())
    }

    /// Consumes all of `input`, appending the octets to pass on to `out`. Output lags input
    /// by at most one held frame. After an error the connection must be closed.
    pub fn process(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), FrameLayerError> {
        let mut pos = 0;
        while pos < input.len() {
            let rest = &input[pos..];
            match self.state {
                State::Head => {
                    let take = (HEADER_LEN - self.head_len).min(rest.len());
                    self.head[self.head_len..self.head_len + take].copy_from_slice(&rest[..take]);
                    self.head_len += take;
                    pos += take;
                    if self.head_len == HEADER_LEN {
                        self.head_len = 0;
                        self.on_frame_header(FrameHeader::parse(&self.head), out)?;
                    }
                }
                State::Pass(remaining) => {
                    let take = remaining.min(rest.len());
                    out.extend_from_slice(&rest[..take]);
                    pos += take;
                    self.state = match remaining - take {
                        0 => State::Head,
                        left => State::Pass(left),
                    };
                }
                State::Hold(header) => {
                    let take = (header.len - self.payload.len()).min(rest.len());
                    self.payload.extend_from_slice(&rest[..take]);
                    pos += take;
                    if self.payload.len() == header.len {
                        self.on_held_frame(header, out)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn on_frame_header(
        &mut self,
        header: FrameHeader,
        out: &mut Vec<u8>,
    ) -> Result<(), FrameLayerError> {
        if header.len > self.limits.max_frame_size {
            return Err(FrameLayerError::FrameTooLarge {
                len: header.len,
                max: self.limits.max_frame_size,
            });
        }
        match (&self.block, header.kind) {
            (Some(block), CONTINUATION) if block.stream_id != header.stream_id() => {
                return Err(FrameLayerError::ContinuationStreamMismatch);
            }
            (Some(_), CONTINUATION) => {}
            (Some(_), kind) => return Err(FrameLayerError::ExpectedContinuation { kind }),
            (None, CONTINUATION) => return Err(FrameLayerError::UnexpectedContinuation),
            // A client never sends PUSH_PROMISE (RFC 9113 section 8.4); its header block
            // would also feed the server's decoder, which the tracker does not follow.
            (None, PUSH_PROMISE) => return Err(FrameLayerError::PushPromise),
            (None, HEADERS) => {}
            (None, _) => {
                header.write(out);
                if header.len > 0 {
                    self.state = State::Pass(header.len);
                }
                return Ok(());
            }
        }
        self.payload.clear();
        self.state = State::Hold(header);
        if header.len == 0 {
            self.on_held_frame(header, out)?;
        }
        Ok(())
    }

    fn on_held_frame(
        &mut self,
        header: FrameHeader,
        out: &mut Vec<u8>,
    ) -> Result<(), FrameLayerError> {
        self.state = State::Head;
        let payload = std::mem::take(&mut self.payload);
        let result = self.rewrite_held(header, &payload, out);
        // Keep the allocation for the next held frame.
        self.payload = payload;
        self.payload.clear();
        result
    }

    fn rewrite_held(
        &mut self,
        header: FrameHeader,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), FrameLayerError> {
        let (prefix_len, pad_len) = if header.kind == HEADERS {
            let mut prefix = 0;
            let mut pad = 0;
            if header.flags & PADDED != 0 {
                pad = usize::from(*payload.first().ok_or(FrameLayerError::BadPadding)?);
                prefix = 1;
            }
            if header.flags & PRIORITY != 0 {
                prefix += PRIORITY_LEN;
            }
            if prefix + pad > payload.len() {
                return Err(FrameLayerError::BadPadding);
            }
            self.block = Some(Block {
                stream_id: header.stream_id(),
                carry: Vec::new(),
                total: 0,
            });
            self.hpack.begin_block();
            (prefix, pad)
        } else {
            (0, 0)
        };
        let block = self
            .block
            .as_mut()
            .expect("a held frame is HEADERS or a CONTINUATION of an open block");
        let fragment = &payload[prefix_len..payload.len() - pad_len];
        block.total += fragment.len();
        if block.total > self.limits.max_header_block {
            return Err(FrameLayerError::HeaderBlockTooLarge {
                max: self.limits.max_header_block,
            });
        }
        let carried = !block.carry.is_empty();
        let input: &[u8] = if carried {
            block.carry.extend_from_slice(fragment);
            &block.carry
        } else {
            fragment
        };
        let mut new_fragment = Vec::with_capacity(input.len() + 16);
        let (consumed, rewrites) = self
            .hpack
            .rewrite(input, &mut new_fragment)
            .map_err(FrameLayerError::Hpack)?;
        let new_carry = input[consumed..].to_vec();
        let end = header.flags & END_HEADERS != 0;
        if end && !new_carry.is_empty() {
            return Err(FrameLayerError::TruncatedHeaderBlock);
        }
        if rewrites == 0 && !carried && new_carry.is_empty() {
            header.write(out);
            out.extend_from_slice(payload);
        } else {
            self.emit(
                header,
                &payload[..prefix_len],
                &new_fragment,
                &payload[payload.len() - pad_len..],
                out,
            );
        }
        self.rewrites += rewrites as u64;
        if end {
            self.block = None;
        } else if let Some(block) = self.block.as_mut() {
            block.carry = new_carry;
        }
        Ok(())
    }

    /// Writes `header`'s frame with a new fragment, splitting it into CONTINUATION frames
    /// when it no longer fits the frame size. Padding and priority stay on the first frame;
    /// END_HEADERS moves to the last.
    fn emit(
        &self,
        header: FrameHeader,
        prefix: &[u8],
        fragment: &[u8],
        padding: &[u8],
        out: &mut Vec<u8>,
    ) {
        let max = self.limits.max_frame_size;
        // prefix + padding came within one frame, so they still fit in one.
        let first_len = fragment.len().min(max - prefix.len() - padding.len());
        let (first, mut rest) = fragment.split_at(first_len);
        let end_flag = header.flags & END_HEADERS;
        let mut flags = header.flags;
        if !rest.is_empty() {
            flags &= !END_HEADERS;
        }
        FrameHeader {
            len: prefix.len() + first.len() + padding.len(),
            flags,
            ..header
        }
        .write(out);
        out.extend_from_slice(prefix);
        out.extend_from_slice(first);
        out.extend_from_slice(padding);
        while !rest.is_empty() {
            let (chunk, after) = rest.split_at(rest.len().min(max));
            rest = after;
            FrameHeader {
                len: chunk.len(),
                kind: CONTINUATION,
                flags: if rest.is_empty() { end_flag } else { 0 },
                stream: header.stream,
            }
            .write(out);
            out.extend_from_slice(chunk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h2_authority::hpack::{HpackError, encode_integer, replacement_of_len};

    const BAD: &[u8] = b"%2Frun%2Flanyard%2Fagent.sock";
    const DATA: u8 = 0x0;
    const PING: u8 = 0x6;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        FrameHeader {
            len: payload.len(),
            kind,
            flags,
            stream,
        }
        .write(&mut v);
        v.extend_from_slice(payload);
        v
    }

    /// `:authority` (literal name, incremental indexing) = `value`, plain.
    fn authority_field(value: &[u8]) -> Vec<u8> {
        let mut v = vec![0x40, 10];
        v.extend_from_slice(b":authority");
        encode_integer(value.len() as u64, 7, 0, &mut v);
        v.extend_from_slice(value);
        v
    }

    fn limits(max_frame_size: usize) -> RewriterLimits {
        RewriterLimits {
            max_frame_size,
            ..RewriterLimits::default()
        }
    }

    /// Feeds `input` in chunks of `chunk` octets.
    fn run(limits: RewriterLimits, input: &[u8], chunk: usize) -> Result<Vec<u8>, FrameLayerError> {
        let mut r = FrameRewriter::new(limits);
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            r.process(piece, &mut out)?;
        }
        Ok(out)
    }

    /// Splits `out` into frames, checking each length.
    fn frames(mut out: &[u8], max: usize) -> Vec<(FrameHeader, Vec<u8>)> {
        let mut v = Vec::new();
        while !out.is_empty() {
            let h = FrameHeader::parse(out[..HEADER_LEN].try_into().unwrap());
            assert!(h.len <= max, "frame of {} > {max}", h.len);
            v.push((h, out[HEADER_LEN..HEADER_LEN + h.len].to_vec()));
            out = &out[HEADER_LEN + h.len..];
        }
        v
    }

    #[test]
    fn frames_without_header_blocks_pass_byte_for_byte_in_any_chunking() {
        let mut input = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        input.extend(frame(0x8, 0, 0, &[0, 1, 0, 0]));
        input.extend(frame(DATA, 1, 1, &[7; 20_000 / 2]));
        input.extend(frame(PING, 0, 0, &[1; 8]));
        input.extend(frame(0x4, 1, 0, &[]));
        input.extend(frame(0xfa, 0xff, 9, b"unknown types pass"));
        for chunk in [1, 2, 9, 10, 4096, input.len()] {
            assert_eq!(
                run(RewriterLimits::default(), &input, chunk).unwrap(),
                input
            );
        }
    }

    #[test]
    fn a_header_block_without_a_refused_authority_is_untouched() {
        let mut block = authority_field(b"localhost");
        block.push(0x82);
        let input = frame(HEADERS, END_HEADERS, 1, &block);
        assert_eq!(run(RewriterLimits::default(), &input, 1).unwrap(), input);
    }

    #[test]
    fn padding_and_priority_are_kept_around_the_rewritten_fragment() {
        let block = authority_field(BAD);
        let mut payload = vec![3]; // pad length
        payload.extend_from_slice(&[0x80, 0, 0, 1, 16]); // exclusive dependency, weight
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&[0, 0, 0]);
        let flags = END_HEADERS | PADDED | PRIORITY | 0x1;
        let input = frame(HEADERS, flags, 1, &payload);
        let out = run(RewriterLimits::default(), &input, 7).unwrap();
        let got = frames(&out, 16_384);
        assert_eq!(got.len(), 1);
        let (h, p) = &got[0];
        assert_eq!((h.kind, h.flags, h.stream), (HEADERS, flags, 1));
        assert_eq!(p[..6], payload[..6]);
        assert_eq!(p[p.len() - 3..], [0, 0, 0]);
        let expected = authority_field(&replacement_of_len(BAD.len()));
        let mut fragment = p[6..p.len() - 3].to_vec();
        // The value may come out Huffman-coded: compare decoded forms via a second pass.
        let mut again = FrameRewriter::new(RewriterLimits::default());
        let mut sink = Vec::new();
        again
            .process(&frame(HEADERS, END_HEADERS, 1, &fragment), &mut sink)
            .unwrap();
        assert_eq!(again.rewrites(), 0, "the new value is accepted");
        fragment.truncate(12);
        assert_eq!(
            fragment,
            expected[..12],
            "the representation and name are kept"
        );
    }

    #[test]
    fn a_field_split_across_continuation_is_carried_and_rewritten() {
        let mut block = vec![0x82];
        block.extend(authority_field(BAD));
        block.push(0x86);
        for cut in 1..block.len() {
            let mut input = frame(HEADERS, 0x1, 3, &block[..cut]);
            input.extend(frame(CONTINUATION, END_HEADERS, 3, &block[cut..]));
            let out = run(RewriterLimits::default(), &input, 5).unwrap();
            let got = frames(&out, 16_384);
            assert_eq!(got[0].0.flags, 0x1, "END_STREAM stays on HEADERS");
            assert_eq!(got.last().unwrap().0.flags & END_HEADERS, END_HEADERS);
            let joined: Vec<u8> = got.iter().flat_map(|(_, p)| p.clone()).collect();
            let decoded = fluke_hpack::Decoder::new().decode(&joined).unwrap();
            let expected: Vec<(Vec<u8>, Vec<u8>)> = vec![
                (b":method".to_vec(), b"GET".to_vec()),
                (b":authority".to_vec(), replacement_of_len(BAD.len())),
                (b":scheme".to_vec(), b"http".to_vec()),
            ];
            assert_eq!(decoded, expected, "cut {cut}");
        }
    }

    #[test]
    fn growth_past_the_frame_size_moves_into_continuation_frames() {
        // A Huffman-coded bad value that re-encodes longer, in a frame already full.
        let max = 64;
        let bad = b"%2F%2F%2F%2F%2F%2F%2F%2F%2F%2F%2F%2F%2F%2F%2F%2F";
        let mut coded = Vec::new();
        crate::h2_authority::huffman::encode(bad, &mut coded);
        let mut block = vec![0x41];
        encode_integer(coded.len() as u64, 7, 0x80, &mut block);
        block.extend(&coded);
        while block.len() < max {
            block.push(0x82);
        }
        let input = frame(HEADERS, END_HEADERS | 0x1, 5, &block);
        let out = run(limits(max), &input, 1).unwrap();
        let got = frames(&out, max);
        assert!(got.len() >= 2, "split: {got:?}");
        assert_eq!(got[0].0.kind, HEADERS);
        assert_eq!(got[0].0.flags, 0x1, "END_HEADERS moved off HEADERS");
        for (h, _) in &got[1..] {
            assert_eq!((h.kind, h.stream), (CONTINUATION, 5));
        }
        assert_eq!(got.last().unwrap().0.flags, END_HEADERS);
        for (h, _) in &got[1..got.len() - 1] {
            assert_eq!(h.flags, 0);
        }
    }

    #[test]
    fn malformed_framing_is_refused() {
        let r = |input: &[u8]| run(limits(100), input, 3).unwrap_err();
        assert_eq!(
            r(&frame(DATA, 0, 1, &[0; 101])),
            FrameLayerError::FrameTooLarge { len: 101, max: 100 }
        );
        assert_eq!(
            r(&frame(CONTINUATION, END_HEADERS, 1, &[0x82])),
            FrameLayerError::UnexpectedContinuation
        );
        let mut open = frame(HEADERS, 0, 1, &[0x82]);
        open.extend(frame(DATA, 0, 1, b"x"));
        assert_eq!(
            r(&open),
            FrameLayerError::ExpectedContinuation { kind: DATA }
        );
        let mut other = frame(HEADERS, 0, 1, &[0x82]);
        other.extend(frame(CONTINUATION, END_HEADERS, 3, &[0x82]));
        assert_eq!(r(&other), FrameLayerError::ContinuationStreamMismatch);
        assert_eq!(
            r(&frame(PUSH_PROMISE, 0, 1, &[0, 0, 0, 2])),
            FrameLayerError::PushPromise
        );
        assert_eq!(
            r(&frame(HEADERS, PADDED, 1, &[])),
            FrameLayerError::BadPadding
        );
        assert_eq!(
            r(&frame(HEADERS, PADDED, 1, &[5, 0x82])),
            FrameLayerError::BadPadding
        );
        assert_eq!(
            r(&frame(HEADERS, PRIORITY, 1, &[0, 0])),
            FrameLayerError::BadPadding
        );
        assert_eq!(
            r(&frame(HEADERS, END_HEADERS, 1, &[0x41, 0x05, b'a'])),
            FrameLayerError::TruncatedHeaderBlock
        );
        assert_eq!(
            r(&frame(HEADERS, END_HEADERS, 1, &[0x80])),
            FrameLayerError::Hpack(HpackError::BadIndex)
        );
    }

    #[test]
    fn a_header_block_is_bounded_across_continuation_frames() {
        let limits = RewriterLimits {
            max_frame_size: 100,
            max_header_block: 250,
            max_table_size: 4096,
        };
        let mut input = frame(HEADERS, 0, 1, &[0x82; 100]);
        input.extend(frame(CONTINUATION, 0, 1, &[0x82; 100]));
        input.extend(frame(CONTINUATION, 0, 1, &[0x82; 100]));
        assert_eq!(
            run(limits, &input, 64).unwrap_err(),
            FrameLayerError::HeaderBlockTooLarge { max: 250 }
        );
        // A never-ending field (a literal whose length runs past every frame) hits it too.
        let mut input = frame(HEADERS, 0, 1, &[0x40, 0x7f, 0xff, 0x7f]);
        for _ in 0..3 {
            input.extend(frame(CONTINUATION, 0, 1, &[b'a'; 100]));
        }
        assert_eq!(
            run(limits, &input, 64).unwrap_err(),
            FrameLayerError::HeaderBlockTooLarge { max: 250 }
        );
    }
}
