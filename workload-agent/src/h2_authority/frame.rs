//! HTTP/2 frame headers (RFC 9113 section 4.1): the 9 octets before every frame payload.

/// Octets in a frame header.
pub const HEADER_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE's initial value, and tonic's (it does not raise it).
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16_384;

/// Frame types the layer tells apart (RFC 9113 section 6).
pub const HEADERS: u8 = 0x1;
pub const PUSH_PROMISE: u8 = 0x5;
pub const CONTINUATION: u8 = 0x9;

/// HEADERS / CONTINUATION flags.
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY: u8 = 0x20;
/// Octets of the PRIORITY fields in a HEADERS frame.
pub const PRIORITY_LEN: usize = 5;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length.
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    /// The stream identifier; the reserved bit is kept so a frame is re-emitted as it came.
    pub stream: u32,
}

impl FrameHeader {
    /// Parses 9 octets (never fails: any value is a header; bounds are checked by the caller).
    pub fn parse(raw: &[u8; HEADER_LEN]) -> Self {
        Self {
            len: usize::from(raw[0]) << 16 | usize::from(raw[1]) << 8 | usize::from(raw[2]),
            kind: raw[3],
            flags: raw[4],
            stream: u32::from_be_bytes([raw[5], raw[6], raw[7], raw[8]]),
        }
    }

    /// The stream identifier without the reserved bit.
    pub fn stream_id(&self) -> u32 {
        self.stream & 0x7fff_ffff
    }

    /// Appends the 9 octets. `len` must fit in 24 bits (callers keep it under the frame size).
    pub fn write(&self, out: &mut Vec<u8>) {
        debug_assert!(self.len < 1 << 24);
        out.extend_from_slice(&(self.len as u32).to_be_bytes()[1..]);
        out.push(self.kind);
        out.push(self.flags);
        out.extend_from_slice(&self.stream.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_writes_back_the_same_octets() {
        let raw = [
            0x00,
            0x40,
            0x01,
            HEADERS,
            END_HEADERS | PADDED,
            0x80,
            0,
            0,
            3,
        ];
        let h = FrameHeader::parse(&raw);
        assert_eq!(h.len, 0x4001);
        assert_eq!(h.kind, HEADERS);
        assert_eq!(h.flags, END_HEADERS | PADDED);
        assert_eq!(h.stream_id(), 3);
        let mut out = Vec::new();
        h.write(&mut out);
        assert_eq!(out, raw);
    }
}
