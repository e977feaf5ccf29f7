//! Just enough HPACK (RFC 7541) to find `:authority` in a client's header blocks and rewrite
//! it, while tracking the client encoder's dynamic table exactly as the server's decoder does.
//!
//! The tracker keeps, per dynamic-table entry, only its size (name + value + 32 octets), its
//! name's length and whether its name is `:authority`: values are never stored. Strings are
//! Huffman-decoded only when needed: names and values entering the table (for their decoded
//! lengths), literal names (to recognise `:authority`) and `:authority` values.
//!
//! A rewritten field keeps its representation (indexed name or literal name, with, without or
//! never indexing) and its name bytes; only the value string is re-encoded, plain or Huffman,
//! whichever is shorter. The new value has the same decoded length, so a field entering the
//! table takes the same room in the server's table as the original would have, and every later
//! eviction is the one the client's encoder expects. An indexed reference to an entry holding
//! `:authority` needs nothing: that entry's value was rewritten when it was inserted.

use super::huffman::{self, HuffmanError};

/// The name whose value is checked.
pub const AUTHORITY: &[u8] = b":authority";
/// Entries in the static table (RFC 7541 Appendix A).
const STATIC_LEN: usize = 61;
/// An entry's overhead on top of its name and value (RFC 7541 section 4.1).
const ENTRY_OVERHEAD: usize = 32;
/// The table size both sides start with (SETTINGS_HEADER_TABLE_SIZE's default).
pub const DEFAULT_TABLE_SIZE: usize = 4096;
/// Integers above this are refused: nothing in a bounded header block needs more.
const MAX_INTEGER: u64 = 1 << 24;

/// Name lengths of the static table's entries 1..=61 (Appendix A); entry 1 is `:authority`.
#[rustfmt::skip]
const STATIC_NAME_LENS: [u8; STATIC_LEN] = [
    10, // :authority
    7, 7, // :method
    5, 5, // :path
    7, 7, // :scheme
    7, 7, 7, 7, 7, 7, 7, // :status
    14, // accept-charset
    15, // accept-encoding
    15, // accept-language
    13, // accept-ranges
    6, // accept
    27, // access-control-allow-origin
    3, // age
    5, // allow
    13, // authorization
    13, // cache-control
    19, // content-disposition
    16, // content-encoding
    16, // content-language
    14, // content-length
    16, // content-location
    13, // content-range
    12, // content-type
    6, // cookie
    4, // date
    4, // etag
    6, // expect
    7, // expires
    4, // from
    4, // host
    8, // if-match
    17, // if-modified-since
    13, // if-none-match
    8, // if-range
    19, // if-unmodified-since
    13, // last-modified
    4, // link
    8, // location
    12, // max-forwards
    18, // proxy-authenticate
    19, // proxy-authorization
    5, // range
    7, // referer
    7, // refresh
    11, // retry-after
    6, // server
    10, // set-cookie
    25, // strict-transport-security
    17, // transfer-encoding
    10, // user-agent
    4, // vary
    3, // via
    16, // www-authenticate
];

/// Why a header block cannot be decoded. Each closes the connection (the server's decoder
/// would have failed on the same block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HpackError {
    /// Index 0, or past the end of the static and dynamic tables.
    BadIndex,
    /// An integer longer than any bounded block needs.
    IntegerOverflow,
    /// A Huffman-coded string is invalid.
    Huffman(HuffmanError),
    /// A dynamic table size update above the bound.
    TableSizeTooLarge,
    /// A dynamic table size update after the first field of a block.
    LateTableSizeUpdate,
}

impl HpackError {
    /// A short snake_case label.
    pub fn label(self) -> &'static str {
        match self {
            Self::BadIndex => "hpack_bad_index",
            Self::IntegerOverflow => "hpack_integer_overflow",
            Self::Huffman(HuffmanError::Eos) => "hpack_huffman_eos",
            Self::Huffman(HuffmanError::BadPadding) => "hpack_huffman_padding",
            Self::TableSizeTooLarge => "hpack_table_size_too_large",
            Self::LateTableSizeUpdate => "hpack_late_table_size_update",
        }
    }

    /// What went wrong, for a person.
    pub fn message(self) -> &'static str {
        match self {
            Self::BadIndex => "a header field refers to a table index that does not exist",
            Self::IntegerOverflow => "an HPACK integer is larger than any bounded block needs",
            Self::Huffman(HuffmanError::Eos) => "a Huffman-coded string contains EOS",
            Self::Huffman(HuffmanError::BadPadding) => {
                "a Huffman-coded string has padding longer than 7 bits or not all ones"
            }
            Self::TableSizeTooLarge => "a dynamic table size update exceeds the allowed maximum",
            Self::LateTableSizeUpdate => {
                "a dynamic table size update comes after a header field in the same block"
            }
        }
    }
}

impl From<HuffmanError> for HpackError {
    fn from(e: HuffmanError) -> Self {
        Self::Huffman(e)
    }
}

/// One dynamic-table entry, as far as the tracker needs it.
#[derive(Debug, Clone, Copy)]
struct Entry {
    name_len: usize,
    size: usize,
    is_authority: bool,
}

/// A string's position in the block and its coding.
#[derive(Debug, Clone, Copy)]
struct StringRef {
    /// Start of the length prefix (the H bit's octet).
    prefix_start: usize,
    /// The encoded octets.
    start: usize,
    end: usize,
    huffman: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Indexing {
    Incremental,
    Without,
    Never,
}

#[derive(Debug, Clone, Copy)]
enum Name {
    Indexed(usize),
    Literal(StringRef),
}

/// One field representation, parsed but not yet applied.
#[derive(Debug, Clone, Copy)]
enum Field {
    Indexed(usize),
    SizeUpdate(usize),
    Literal {
        indexing: Indexing,
        name: Name,
        value: StringRef,
    },
}

/// Tracks the client encoder's dynamic table and rewrites refused `:authority` values.
#[derive(Debug)]
pub struct HpackTracker {
    /// Newest first, as HPACK indexes them.
    entries: std::collections::VecDeque<Entry>,
    size: usize,
    max_size: usize,
    /// The largest size an update may set.
    size_limit: usize,
    /// Whether a field (not a size update) was seen in the current block.
    field_seen: bool,
}

impl HpackTracker {
    /// A tracker for a new connection; size updates above `size_limit` are refused.
    pub fn new(size_limit: usize) -> Self {
        Self {
            entries: Default::default(),
            size: 0,
            max_size: DEFAULT_TABLE_SIZE.min(size_limit),
            size_limit,
            field_seen: false,
        }
    }

    /// The dynamic table's current size in HPACK octets.
    pub fn table_size(&self) -> usize {
        self.size
    }

    /// The number of entries in the dynamic table.
    pub fn table_len(&self) -> usize {
        self.entries.len()
    }

    /// Call at the start of every header block.
    pub fn begin_block(&mut self) {
        self.field_seen = false;
    }

    /// Applies every complete field representation at the start of `input`, appending each
    /// to `out` (unchanged, or with a refused `:authority` value replaced). Returns how many
    /// octets were consumed (always a field boundary: the rest is an incomplete field to be
    /// completed by the next fragment) and how many values were rewritten.
    pub fn rewrite(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(usize, usize), HpackError> {
        let mut pos = 0;
        let mut rewrites = 0;
        while pos < input.len() {
            let Some((field, end)) = parse_field(input, pos)? else {
                break;
            };
            if self.apply(input, pos, field, out)? {
                rewrites += 1;
            } else {
                out.extend_from_slice(&input[pos..end]);
            }
            pos = end;
        }
        Ok((pos, rewrites))
    }

    /// Updates the table for `field`. Returns true when it wrote a rewritten field to `out`
    /// (otherwise the caller copies the original octets).
    fn apply(
        &mut self,
        input: &[u8],
        start: usize,
        field: Field,
        out: &mut Vec<u8>,
    ) -> Result<bool, HpackError> {
        match field {
            Field::SizeUpdate(size) => {
                if self.field_seen {
                    return Err(HpackError::LateTableSizeUpdate);
                }
                if size > self.size_limit {
                    return Err(HpackError::TableSizeTooLarge);
                }
                self.max_size = size;
                self.evict_to(size);
                Ok(false)
            }
            Field::Indexed(index) => {
                self.field_seen = true;
                // Validity only: a dynamic entry holding `:authority` was sanitised on insert.
                self.lookup(index)?;
                Ok(false)
            }
            Field::Literal {
                indexing,
                name,
                value,
            } => {
                self.field_seen = true;
                let (name_len, is_authority) = match name {
                    Name::Indexed(index) => self.lookup(index)?,
                    Name::Literal(s) => {
                        let decoded = decode_string(input, s)?;
                        (decoded.len(), decoded == AUTHORITY)
                    }
                };
                let mut rewritten = false;
                let value_len = if is_authority {
                    let decoded = decode_string(input, value)?;
                    if let Some(replacement) = replacement_for(&decoded) {
                        // The representation and name octets stay; only the value changes.
                        out.extend_from_slice(&input[start..value.prefix_start]);
                        encode_string(&replacement, out);
                        rewritten = true;
                    }
                    decoded.len()
                } else if indexing == Indexing::Incremental {
                    decoded_string_len(input, value)?
                } else {
                    0
                };
                if indexing == Indexing::Incremental {
                    self.insert(Entry {
                        name_len,
                        size: name_len + value_len + ENTRY_OVERHEAD,
                        is_authority,
                    });
                }
                Ok(rewritten)
            }
        }
    }

    /// The name length and whether the name is `:authority`, for table index `index`.
    fn lookup(&self, index: usize) -> Result<(usize, bool), HpackError> {
        match index {
            0 => Err(HpackError::BadIndex),
            1..=STATIC_LEN => Ok((usize::from(STATIC_NAME_LENS[index - 1]), index == 1)),
            _ => self
                .entries
                .get(index - STATIC_LEN - 1)
                .map(|e| (e.name_len, e.is_authority))
                .ok_or(HpackError::BadIndex),
        }
    }

    fn insert(&mut self, entry: Entry) {
        if entry.size > self.max_size {
            // RFC 7541 section 4.4: an entry larger than the table empties it.
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max_size - entry.size);
        self.size += entry.size;
        self.entries.push_front(entry);
    }

    fn evict_to(&mut self, target: usize) {
        while self.size > target {
            let Some(old) = self.entries.pop_back() else {
                break;
            };
            self.size -= old.size;
        }
    }
}

fn decode_string(input: &[u8], s: StringRef) -> Result<Vec<u8>, HpackError> {
    let raw = &input[s.start..s.end];
    if s.huffman {
        let mut out = Vec::with_capacity(raw.len() * 8 / 5 + 1);
        huffman::decode(raw, &mut out)?;
        Ok(out)
    } else {
        Ok(raw.to_vec())
    }
}

fn decoded_string_len(input: &[u8], s: StringRef) -> Result<usize, HpackError> {
    let raw = &input[s.start..s.end];
    if s.huffman {
        Ok(huffman::decoded_len(raw)?)
    } else {
        Ok(raw.len())
    }
}

/// The value that replaces `value`, when the server's HTTP/2 stack would refuse `value` as an
/// authority: same length, and accepted by the same parser (`http::uri::Authority`, which h2
/// uses for `:authority`). `None` when `value` is acceptable (or empty: nothing of length 0
/// would be better).
pub fn replacement_for(value: &[u8]) -> Option<Vec<u8>> {
    if value.is_empty() || is_acceptable_authority(value) {
        return None;
    }
    Some(replacement_of_len(value.len()))
}

/// Whether h2 would accept `value` as `:authority`: valid UTF-8, and a valid authority.
pub fn is_acceptable_authority(value: &[u8]) -> bool {
    std::str::from_utf8(value).is_ok() && http::uri::Authority::try_from(value).is_ok()
}

/// A valid authority of exactly `len` octets: `localhost` when it fits, a subdomain of it
/// (still loopback, RFC 6761) when longer, a run of `x` when shorter.
pub fn replacement_of_len(len: usize) -> Vec<u8> {
    const HOST: &[u8] = b"localhost";
    let mut v = Vec::with_capacity(len);
    match len.checked_sub(HOST.len()) {
        None => v.resize(len, b'x'),
        Some(0) => v.extend_from_slice(HOST),
        // "localhost." is the same host written fully qualified.
        Some(1) => v.extend_from_slice(b"localhost."),
        Some(extra) => {
            v.resize(extra - 1, b'x');
            v.push(b'.');
            v.extend_from_slice(HOST);
        }
    }
    v
}

/// Appends `value` as an HPACK string literal: Huffman-coded when that is shorter.
pub fn encode_string(value: &[u8], out: &mut Vec<u8>) {
    let coded_len = huffman::encoded_len(value);
    if coded_len < value.len() {
        encode_integer(coded_len as u64, 7, 0x80, out);
        huffman::encode(value, out);
    } else {
        encode_integer(value.len() as u64, 7, 0, out);
        out.extend_from_slice(value);
    }
}

/// Appends `value` with an `n`-bit prefix, the octet's other bits set from `flags`.
pub fn encode_integer(value: u64, n: u32, flags: u8, out: &mut Vec<u8>) {
    let max = (1u64 << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push((rest as u8 & 0x7f) | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// Decodes an `n`-bit-prefix integer at `pos`. `Ok(None)`: the input ends inside it.
fn decode_integer(input: &[u8], pos: usize, n: u32) -> Result<Option<(u64, usize)>, HpackError> {
    let Some(&first) = input.get(pos) else {
        return Ok(None);
    };
    let max = (1u64 << n) - 1;
    let mut value = u64::from(first) & max;
    if value < max {
        return Ok(Some((value, pos + 1)));
    }
    let mut shift = 0u32;
    let mut at = pos + 1;
    loop {
        let Some(&b) = input.get(at) else {
            return Ok(None);
        };
        at += 1;
        value += u64::from(b & 0x7f) << shift;
        if value > MAX_INTEGER {
            return Err(HpackError::IntegerOverflow);
        }
        if b & 0x80 == 0 {
            return Ok(Some((value, at)));
        }
        shift += 7;
        if shift > 28 {
            return Err(HpackError::IntegerOverflow);
        }
    }
}

/// Parses a string literal at `pos`. `Ok(None)`: the input ends inside it.
fn parse_string(input: &[u8], pos: usize) -> Result<Option<StringRef>, HpackError> {
    let Some(&first) = input.get(pos) else {
        return Ok(None);
    };
    let Some((len, start)) = decode_integer(input, pos, 7)? else {
        return Ok(None);
    };
    let end = start + len as usize;
    if end > input.len() {
        return Ok(None);
    }
    Ok(Some(StringRef {
        prefix_start: pos,
        start,
        end,
        huffman: first & 0x80 != 0,
    }))
}

/// Parses the field representation at `pos`: the field and where it ends, or `Ok(None)` when
/// the input ends inside it.
fn parse_field(input: &[u8], pos: usize) -> Result<Option<(Field, usize)>, HpackError> {
    let first = input[pos];
    let (indexing, n) = if first & 0x80 != 0 {
        let Some((index, end)) = decode_integer(input, pos, 7)? else {
            return Ok(None);
        };
        return Ok(Some((Field::Indexed(index as usize), end)));
    } else if first & 0x40 != 0 {
        (Indexing::Incremental, 6)
    } else if first & 0x20 != 0 {
        let Some((size, end)) = decode_integer(input, pos, 5)? else {
            return Ok(None);
        };
        return Ok(Some((Field::SizeUpdate(size as usize), end)));
    } else if first & 0x10 != 0 {
        (Indexing::Never, 4)
    } else {
        (Indexing::Without, 4)
    };
    let Some((index, mut at)) = decode_integer(input, pos, n)? else {
        return Ok(None);
    };
    let name = if index == 0 {
        let Some(s) = parse_string(input, at)? else {
            return Ok(None);
        };
        at = s.end;
        Name::Literal(s)
    } else {
        Name::Indexed(index as usize)
    };
    let Some(value) = parse_string(input, at)? else {
        return Ok(None);
    };
    Ok(Some((
        Field::Literal {
            indexing,
            name,
            value,
        },
        value.end,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BAD: &[u8] = b"%2Frun%2Flanyard%2Fagent.sock";

    fn plain(s: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_integer(s.len() as u64, 7, 0, &mut v);
        v.extend_from_slice(s);
        v
    }

    fn huff(s: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_integer(huffman::encoded_len(s) as u64, 7, 0x80, &mut v);
        huffman::encode(s, &mut v);
        v
    }

    /// A literal field: `first` is the representation's prefix octet pattern and bits.
    fn literal(flags: u8, bits: u32, name_index: u64, name: &[u8], value: Vec<u8>) -> Vec<u8> {
        let mut v = Vec::new();
        encode_integer(name_index, bits, flags, &mut v);
        if name_index == 0 {
            v.extend(plain(name));
        }
        v.extend(value);
        v
    }

    fn run(t: &mut HpackTracker, block: &[u8]) -> (Vec<u8>, usize) {
        t.begin_block();
        let mut out = Vec::new();
        let (consumed, n) = t.rewrite(block, &mut out).unwrap();
        assert_eq!(consumed, block.len(), "the whole block is complete fields");
        (out, n)
    }

    #[test]
    fn replacements_are_valid_authorities_of_the_same_length() {
        for len in 1..300 {
            let r = replacement_of_len(len);
            assert_eq!(r.len(), len);
            assert!(
                is_acceptable_authority(&r),
                "{:?}",
                String::from_utf8_lossy(&r)
            );
        }
        assert_eq!(replacement_of_len(9), b"localhost");
        assert_eq!(replacement_of_len(12), b"xx.localhost");
    }

    #[test]
    fn only_values_h2_refuses_are_replaced() {
        assert!(replacement_for(BAD).is_some());
        assert!(replacement_for(b"tmp%2Fx").is_some());
        assert!(replacement_for(b"a b").is_some());
        assert!(replacement_for(&[0xff, b'a']).is_some(), "not UTF-8");
        for ok in [
            &b"localhost"[..],
            b"localhost:8080",
            b"[::1]:80",
            b"example.org",
        ] {
            assert_eq!(replacement_for(ok), None, "{ok:?}");
        }
        assert_eq!(replacement_for(b""), None, "nothing of length 0 is better");
    }

    #[test]
    fn a_literal_name_authority_with_indexing_is_rewritten_and_enters_the_table() {
        let mut t = HpackTracker::new(DEFAULT_TABLE_SIZE);
        let block = literal(0x40, 6, 0, AUTHORITY, plain(BAD));
        let (out, n) = run(&mut t, &block);
        assert_eq!(n, 1);
        let expected_value = replacement_of_len(BAD.len());
        let mut expected = literal(0x40, 6, 0, AUTHORITY, Vec::new());
        encode_string(&expected_value, &mut expected);
        assert_eq!(out, expected);
        assert_eq!(t.table_len(), 1);
        assert_eq!(t.table_size(), AUTHORITY.len() + BAD.len() + 32);

        // Later references to it (indexed, or its name) are handled consistently.
        let (out, n) = run(&mut t, &[0x80 | 62]);
        assert_eq!(
            (out.as_slice(), n),
            (&[0x80 | 62][..], 0),
            "already sanitised"
        );
        let again = literal(0x00, 4, 62, b"", huff(b"tmp%2Fother.sock"));
        let (_, n) = run(&mut t, &again);
        assert_eq!(
            n, 1,
            "a dynamic name reference to :authority is checked too"
        );
    }

    #[test]
    fn every_representation_of_the_static_authority_name_is_checked() {
        // Static index 1 with incremental, without and never indexing; Huffman and plain.
        for (flags, bits) in [(0x40, 6), (0x00, 4), (0x10, 4)] {
            for value in [plain(BAD), huff(BAD)] {
                let mut t = HpackTracker::new(DEFAULT_TABLE_SIZE);
                let block = literal(flags, bits, 1, b"", value);
                let (out, n) = run(&mut t, &block);
                assert_eq!(n, 1);
                assert_eq!(out[0], block[0], "the representation is kept");
                let incremental = flags == 0x40;
                assert_eq!(t.table_len(), usize::from(incremental));
            }
        }
    }

    #[test]
    fn valid_authorities_and_other_headers_pass_unchanged() {
        let mut t = HpackTracker::new(DEFAULT_TABLE_SIZE);
        let mut block = literal(0x40, 6, 1, b"", huff(b"localhost:1234"));
        block.extend(literal(0x40, 6, 0, b"x-path", plain(BAD)));
        block.extend(literal(0x00, 4, 4, b"", huff(BAD)));
        block.push(0x82);
        let (out, n) = run(&mut t, &block);
        assert_eq!((out, n), (block, 0));
        assert_eq!(t.table_len(), 2);
        assert_eq!(
            t.table_size(),
            (10 + 14 + 32) + (6 + BAD.len() + 32),
            "Huffman values count at their decoded length"
        );
    }

    #[test]
    fn eviction_follows_the_table_size() {
        let mut t = HpackTracker::new(DEFAULT_TABLE_SIZE);
        // Size update to 100 at the start of the block, then three 42-octet entries.
        let mut block = Vec::new();
        encode_integer(100, 5, 0x20, &mut block);
        for name in [b"aaaaa", b"bbbbb", b"ccccc"] {
            block.extend(literal(0x40, 6, 0, name, plain(b"12345")));
        }
        run(&mut t, &block);
        assert_eq!((t.table_size(), t.table_len()), (84, 2));
        // Index 64 (the third entry) was evicted.
        t.begin_block();
        assert_eq!(
            t.rewrite(&[0x80 | 64], &mut Vec::new()),
            Err(HpackError::BadIndex)
        );
        // An entry larger than the table empties it.
        let big = literal(0x40, 6, 0, b"n", plain(&[b'v'; 100]));
        run(&mut t, &big);
        assert_eq!((t.table_size(), t.table_len()), (0, 0));
        // Size 0 empties it too.
        run(&mut t, &literal(0x40, 6, 0, b"n", plain(b"v")));
        run(&mut t, &[0x20]);
        assert_eq!(t.table_len(), 0);
    }

    #[test]
    fn an_incomplete_field_is_left_for_the_next_fragment() {
        let mut t = HpackTracker::new(DEFAULT_TABLE_SIZE);
        let mut block = vec![0x82];
        block.extend(literal(0x40, 6, 0, AUTHORITY, plain(BAD)));
        for cut in 1..block.len() {
            let mut t2 = HpackTracker::new(DEFAULT_TABLE_SIZE);
            t2.begin_block();
            let (consumed, n) = t2.rewrite(&block[..cut], &mut Vec::new()).unwrap();
            assert_eq!((consumed, n), (1, 0), "cut at {cut}");
            assert_eq!(t2.table_len(), 0, "nothing applied from a partial field");
        }
        run(&mut t, &block);
    }

    #[test]
    fn refusals() {
        let mut t = HpackTracker::new(DEFAULT_TABLE_SIZE);
        let mut check = |block: &[u8], err| {
            t.begin_block();
            assert_eq!(t.rewrite(block, &mut Vec::new()), Err(err), "{block:x?}");
        };
        check(&[0x80], HpackError::BadIndex);
        check(&[0x80 | 62], HpackError::BadIndex);
        check(&[0x40 | 63, 0x00, 0x00], HpackError::BadIndex);
        check(&[0x82, 0x20], HpackError::LateTableSizeUpdate);
        let mut too_big = Vec::new();
        encode_integer(DEFAULT_TABLE_SIZE as u64 + 1, 5, 0x20, &mut too_big);
        check(&too_big, HpackError::TableSizeTooLarge);
        check(
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
            HpackError::IntegerOverflow,
        );
        // :authority with a Huffman value made of EOS.
        check(
            &[0x41, 0x84, 0xff, 0xff, 0xff, 0xff],
            HpackError::Huffman(HuffmanError::Eos),
        );
    }

    #[test]
    fn error_labels_are_snake_case() {
        for e in [
            HpackError::BadIndex,
            HpackError::IntegerOverflow,
            HpackError::Huffman(HuffmanError::Eos),
            HpackError::Huffman(HuffmanError::BadPadding),
            HpackError::TableSizeTooLarge,
            HpackError::LateTableSizeUpdate,
        ] {
            assert!(
                e.label()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_')
            );
            assert!(!e.message().is_empty());
        }
    }
}
