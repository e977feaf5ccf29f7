//! The HPACK Huffman code (RFC 7541 Appendix B): decoding, and encoding for the one value the
//! layer writes.
//!
//! The code is canonical (codes are handed out in order of length, then symbol), so the table
//! here is only the 257 code lengths, transcribed from Appendix B; the codes follow from them
//! and are checked in the tests against values printed in the RFC. Decoding walks one bit at a
//! time through the per-length code ranges: slow next to a lookup table, but it only runs on
//! the few strings the layer must read (names and values entering the dynamic table, and
//! `:authority` values).

use std::sync::OnceLock;

/// Code length in bits of each symbol 0..=255, then EOS (256).
#[rustfmt::skip]
const CODE_LENGTHS: [u8; 257] = [
    // 0..=31: control characters.
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    // ' ' ! " # $ % & ' ( ) * + , - . /
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
    // 0..9 : ; < = > ?
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
    // @ A..O
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    // P..Z [ \ ] ^ _
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
    // ` a..o
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
    // p..z { | } ~ DEL
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
    // 128..=255
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
    // EOS
    30,
];

const EOS: u16 = 256;
const MAX_LEN: usize = 30;

/// Why a Huffman-coded string is not valid (RFC 7541 section 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HuffmanError {
    /// The string contains the EOS symbol.
    Eos,
    /// The string ends in more than 7 bits of padding, or padding that is not all ones.
    BadPadding,
}

/// The canonical code, built once from [`CODE_LENGTHS`].
struct Code {
    /// Code of each symbol (right-aligned).
    codes: [u32; 257],
    /// For each length: the first code of that length, and how many codes have it.
    first: [u32; MAX_LEN + 1],
    count: [u16; MAX_LEN + 1],
    /// Where each length's symbols start in `sorted`.
    offset: [u16; MAX_LEN + 1],
    /// Symbols in code order.
    sorted: [u16; 257],
}

fn code() -> &'static Code {
    static CODE: OnceLock<Code> = OnceLock::new();
    CODE.get_or_init(|| {
        let mut count = [0u16; MAX_LEN + 1];
        for &len in &CODE_LENGTHS {
            count[len as usize] += 1;
        }
        let mut first = [0u32; MAX_LEN + 1];
        let mut offset = [0u16; MAX_LEN + 1];
        let (mut next, mut placed) = (0u32, 0u16);
        for len in 1..=MAX_LEN {
            first[len] = next;
            offset[len] = placed;
            next = (next + u32::from(count[len])) << 1;
            placed += count[len];
        }
        let mut codes = [0u32; 257];
        let mut sorted = [0u16; 257];
        let mut used = [0u16; MAX_LEN + 1];
        // Within one length, codes go up with the symbol value.
        for (symbol, &len) in CODE_LENGTHS.iter().enumerate() {
            let len = len as usize;
            codes[symbol] = first[len] + u32::from(used[len]);
            sorted[usize::from(offset[len] + used[len])] = symbol as u16;
            used[len] += 1;
        }
        Code {
            codes,
            first,
            count,
            offset,
            sorted,
        }
    })
}

/// Decodes `input`, calling `emit` with each octet. Stops at the first error.
fn decode_each(input: &[u8], mut emit: impl FnMut(u8)) -> Result<(), HuffmanError> {
    let code = code();
    let (mut acc, mut len) = (0u32, 0usize);
    for &byte in input {
        for shift in (0..8).rev() {
            acc = (acc << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            let index = acc.wrapping_sub(code.first[len]);
            if index < u32::from(code.count[len]) {
                let symbol = code.sorted[usize::from(code.offset[len]) + index as usize];
                if symbol == EOS {
                    return Err(HuffmanError::Eos);
                }
                emit(symbol as u8);
                acc = 0;
                len = 0;
            } else if len == MAX_LEN {
                // Every 30-bit pattern is a code or a code's prefix, so this is unreachable
                // with a complete code; kept as a bound on the loop.
                return Err(HuffmanError::Eos);
            }
        }
    }
    // What is left must be a prefix of EOS: at most 7 bits, all ones.
    if len > 7 || acc != (1u32 << len) - 1 {
        return Err(HuffmanError::BadPadding);
    }
    Ok(())
}

/// Decodes a Huffman-coded string, appending the octets to `out`.
pub fn decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), HuffmanError> {
    decode_each(input, |b| out.push(b))
}

/// The decoded length of a Huffman-coded string, without keeping the octets.
pub fn decoded_len(input: &[u8]) -> Result<usize, HuffmanError> {
    let mut n = 0usize;
    decode_each(input, |_| n += 1)?;
    Ok(n)
}

/// The length in octets of `input` Huffman-coded.
pub fn encoded_len(input: &[u8]) -> usize {
    let bits: usize = input
        .iter()
        .map(|&b| usize::from(CODE_LENGTHS[usize::from(b)]))
        .sum();
    bits.div_ceil(8)
}

/// Appends `input` Huffman-coded to `out`, padded with the most significant bits of EOS.
pub fn encode(input: &[u8], out: &mut Vec<u8>) {
    let code = code();
    let (mut acc, mut bits) = (0u64, 0u32);
    for &b in input {
        let len = u32::from(CODE_LENGTHS[usize::from(b)]);
        acc = (acc << len) | u64::from(code.codes[usize::from(b)]);
        bits += len;
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1u64 << bits) - 1;
    }
    if bits > 0 {
        let pad = 8 - bits;
        out.push(((acc << pad) | ((1u64 << pad) - 1)) as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_is_complete() {
        // Kraft's sum over all 257 codes is exactly 1: no code is missing or overlapping.
        let sum: u64 = CODE_LENGTHS.iter().map(|&l| 1u64 << (30 - l)).sum();
        assert_eq!(sum, 1u64 << 30);
    }

    #[test]
    fn canonical_codes_match_values_printed_in_the_rfc() {
        let c = code();
        // (symbol, code, length) rows of RFC 7541 Appendix B.
        for (symbol, expected, len) in [
            (b'0' as usize, 0x0, 5),
            (b'a' as usize, 0x3, 5),
            (b' ' as usize, 0x14, 6),
            (b'%' as usize, 0x15, 6),
            (b':' as usize, 0x5c, 7),
            (b'&' as usize, 0xf8, 8),
            (0, 0x1ff8, 13),
            (b'\\' as usize, 0x7fff0, 19),
            (255, 0x3ffffee, 26),
            (256, 0x3fffffff, 30),
        ] {
            assert_eq!(c.codes[symbol], expected, "code of symbol {symbol}");
            assert_eq!(CODE_LENGTHS[symbol], len, "length of symbol {symbol}");
        }
    }

    #[test]
    fn rfc_example_strings_round_trip() {
        // RFC 7541 C.4.1: "www.example.com".
        let coded = [
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ];
        let mut out = Vec::new();
        decode(&coded, &mut out).unwrap();
        assert_eq!(out, b"www.example.com");
        let mut again = Vec::new();
        encode(b"www.example.com", &mut again);
        assert_eq!(again, coded);
        assert_eq!(encoded_len(b"www.example.com"), coded.len());
    }

    #[test]
    fn every_octet_round_trips() {
        let all: Vec<u8> = (0..=255u8).collect();
        let mut coded = Vec::new();
        encode(&all, &mut coded);
        assert_eq!(coded.len(), encoded_len(&all));
        let mut out = Vec::new();
        decode(&coded, &mut out).unwrap();
        assert_eq!(out, all);
        assert_eq!(decoded_len(&coded).unwrap(), 256);
    }

    #[test]
    fn refuses_eos_and_bad_padding() {
        // EOS (30 ones) followed by two padding ones.
        assert_eq!(decode(&[0xff; 4], &mut Vec::new()), Err(HuffmanError::Eos));
        // 'a' (00011) padded with zeros instead of ones.
        assert_eq!(
            decode(&[0b0001_1000], &mut Vec::new()),
            Err(HuffmanError::BadPadding)
        );
        // A full octet of padding.
        assert_eq!(
            decode(&[0b0001_1111, 0xff], &mut Vec::new()),
            Err(HuffmanError::BadPadding)
        );
        assert_eq!(decode(&[], &mut Vec::new()), Ok(()));
    }
}
