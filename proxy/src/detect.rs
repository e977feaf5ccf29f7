//! ClientHello sniffing: does a client's first flight start a TLS handshake, and does its
//! ClientHello offer a given ALPN protocol (`lanyard/1`)?
//!
//! A small, bounded, panic-free parser of the TLS record layer, the handshake header and the
//! ClientHello fields up to the ALPN extension. It never allocates: a ClientHello split over
//! several records is read through a cursor that walks the record headers in place. It only
//! ever looks at the bytes it is given, so the inbound decision depends on the client's bytes
//! alone (ORIGIN.md: no stall between ClientHello and ServerHello can come from here).
//!
//! This file uses nothing outside `core`, so the fuzz target (`proxy/fuzz`) compiles it on its
//! own, without the proxy's dependency tree.

/// TLS record header: content type, legacy version, length.
pub const RECORD_HEADER_LEN: usize = 5;
/// The largest plaintext record payload TLS allows (2^14).
pub const MAX_RECORD_PAYLOAD: usize = 16 * 1024;
/// The longest ClientHello body we terminate: rustls's own limit on a handshake message
/// (`MAX_HANDSHAKE_SIZE`, 0xffff), so a longer one could never be ours and is foreign TLS at
/// once. Hellos over one record (16 KiB) are real: post-quantum key shares make them.
pub const MAX_HELLO_LEN: usize = 0xffff;
/// The most bytes detection ever reads: the longest hello, its 4-byte handshake header, and
/// the headers of up to 200 records carrying it (clients fill records; 16 KiB ones need 5).
/// A hello still undecided here is treated as foreign TLS.
pub const MAX_CLIENT_HELLO_BYTES: usize = MAX_HELLO_LEN + 4 + 200 * RECORD_HEADER_LEN;

const CONTENT_TYPE_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const EXTENSION_ALPN: u16 = 16;

/// What the bytes seen so far say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inspection {
    /// Undecided: nothing can be said before the buffer holds at least `at_least` bytes.
    NeedMore { at_least: usize },
    /// A TLS ClientHello; `offers_alpn` when its ALPN extension lists the protocol asked about.
    ClientHello { offers_alpn: bool },
    /// Not a TLS ClientHello (plaintext, SSLv2-style hello, a malformed record...).
    NotClientHello,
}

/// Inspects the first bytes a client sent. `alpn` is the protocol to look for.
///
/// Decides as early as the bytes allow: one byte tells plaintext such as HTTP apart, and a
/// ClientHello offering `alpn` is recognised once its ALPN extension has been read.
pub fn inspect(buf: &[u8], alpn: &[u8]) -> Inspection {
    let mut hello = Handshake::new(buf);
    match parse_client_hello(&mut hello, alpn) {
        Ok(offers_alpn) => Inspection::ClientHello { offers_alpn },
        Err(Stop::NeedMore(at_least)) => Inspection::NeedMore { at_least },
        Err(Stop::NotHello) => Inspection::NotClientHello,
    }
}

/// Why parsing stopped before a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The buffer ends too early; the total length needed to make progress.
    NeedMore(usize),
    NotHello,
}

/// A cursor over the handshake bytes carried by consecutive handshake records of `buf`,
/// bounded by the handshake message's own length once that is known.
struct Handshake<'a> {
    buf: &'a [u8],
    /// Next byte to read in `buf`.
    pos: usize,
    /// Bytes of the current record's payload not yet read.
    record_left: usize,
    /// Bytes of the handshake message not yet read (`usize::MAX` before its header).
    message_left: usize,
}

impl<'a> Handshake<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            record_left: 0,
            message_left: usize::MAX,
        }
    }

    /// Moves past the next record header, checking it is a plausible handshake record.
    fn next_record(&mut self) -> Result<(), Stop> {
        let start = self.pos;
        let header = self.buf.get(start..).unwrap_or(&[]);
        // Check what has arrived before asking for more: plaintext is refused on byte one.
        if let Some(&content_type) = header.first()
            && content_type != CONTENT_TYPE_HANDSHAKE
        {
            return Err(Stop::NotHello);
        }
        if let Some(&major) = header.get(1)
            && major != 3
        {
            return Err(Stop::NotHello);
        }
        if let Some(&minor) = header.get(2)
            && minor > 4
        {
            return Err(Stop::NotHello);
        }
        let (Some(&hi), Some(&lo)) = (header.get(3), header.get(4)) else {
            return Err(Stop::NeedMore(start.saturating_add(RECORD_HEADER_LEN)));
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len == 0 || len > MAX_RECORD_PAYLOAD {
            return Err(Stop::NotHello);
        }
        self.pos = start + RECORD_HEADER_LEN;
        self.record_left = len;
        Ok(())
    }

    fn byte(&mut self) -> Result<u8, Stop> {
        if self.message_left == 0 {
            // A field runs past the end of the ClientHello: malformed.
            return Err(Stop::NotHello);
        }
        if self.record_left == 0 {
            self.next_record()?;
        }
        let Some(&b) = self.buf.get(self.pos) else {
            // The whole current record is needed before anything more can be said.
            return Err(Stop::NeedMore(self.pos.saturating_add(self.record_left)));
        };
        self.pos += 1;
        self.record_left -= 1;
        if self.message_left != usize::MAX {
            self.message_left -= 1;
        }
        Ok(b)
    }

    fn u16(&mut self) -> Result<u16, Stop> {
        Ok(u16::from_be_bytes([self.byte()?, self.byte()?]))
    }

    /// Skips `n` bytes, a record's worth at a time.
    fn skip(&mut self, mut n: usize) -> Result<(), Stop> {
        while n > 0 {
            if n > self.message_left {
                return Err(Stop::NotHello);
            }
            if self.record_left == 0 {
                self.next_record()?;
            }
            let available = self.buf.len().saturating_sub(self.pos);
            let step = n.min(self.record_left).min(available);
            if step == 0 {
                return Err(Stop::NeedMore(self.pos.saturating_add(self.record_left)));
            }
            self.pos += step;
            self.record_left -= step;
            if self.message_left != usize::MAX {
                self.message_left -= step;
            }
            n -= step;
        }
        Ok(())
    }
}

/// Reads a ClientHello up to its ALPN extension; `Ok(true)` when that lists `alpn`.
fn parse_client_hello(hs: &mut Handshake<'_>, alpn: &[u8]) -> Result<bool, Stop> {
    if hs.byte()? != HANDSHAKE_CLIENT_HELLO {
        return Err(Stop::NotHello);
    }
    let length = usize::from(hs.byte()?) << 16 | usize::from(hs.u16()?);
    // Version, random, and the session id, suites and compression fields at their smallest.
    if length < 2 + 32 + 1 + 4 + 2 {
        return Err(Stop::NotHello);
    }
    if length > MAX_HELLO_LEN {
        // Longer than rustls accepts: a hello, but never one we terminate.
        return Ok(false);
    }
    hs.message_left = length;
    let legacy_version = hs.u16()?;
    if legacy_version >> 8 != 3 {
        return Err(Stop::NotHello);
    }
    hs.skip(32)?; // random
    let session_id_len = usize::from(hs.byte()?);
    if session_id_len > 32 {
        return Err(Stop::NotHello);
    }
    hs.skip(session_id_len)?;
    let suites_len = usize::from(hs.u16()?);
    if suites_len < 2 || suites_len % 2 != 0 {
        return Err(Stop::NotHello);
    }
    hs.skip(suites_len)?;
    let compression_len = usize::from(hs.byte()?);
    if compression_len < 1 {
        return Err(Stop::NotHello);
    }
    hs.skip(compression_len)?;
    if hs.message_left == 0 {
        // No extensions at all (allowed before TLS 1.3): no ALPN.
        return Ok(false);
    }
    let extensions_len = usize::from(hs.u16()?);
    if extensions_len != hs.message_left {
        return Err(Stop::NotHello);
    }
    while hs.message_left > 0 {
        let ext_type = hs.u16()?;
        let ext_len = usize::from(hs.u16()?);
        if ext_len > hs.message_left {
            return Err(Stop::NotHello);
        }
        if ext_type == EXTENSION_ALPN {
            return alpn_lists(hs, ext_len, alpn);
        }
        hs.skip(ext_len)?;
    }
    Ok(false)
}

/// Reads an ALPN extension body (`ProtocolNameList`) of `ext_len` bytes.
fn alpn_lists(hs: &mut Handshake<'_>, ext_len: usize, alpn: &[u8]) -> Result<bool, Stop> {
    if ext_len < 2 {
        return Err(Stop::NotHello);
    }
    let list_len = usize::from(hs.u16()?);
    if list_len != ext_len - 2 || list_len == 0 {
        return Err(Stop::NotHello);
    }
    let mut left = list_len;
    let mut found = false;
    while left > 0 {
        let name_len = usize::from(hs.byte()?);
        if name_len == 0 || name_len + 1 > left {
            return Err(Stop::NotHello);
        }
        if name_len == alpn.len() {
            let mut equal = true;
            for &expected in alpn {
                equal &= hs.byte()? == expected;
            }
            found |= equal;
        } else {
            hs.skip(name_len)?;
        }
        left -= name_len + 1;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALPN: &[u8] = b"lanyard/1";

    /// A ClientHello body (without handshake header) with the given extensions.
    fn hello_body(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one suite
        body.extend([1, 0]); // null compression
        if !extensions.is_empty() {
            let mut ext = Vec::new();
            for (ty, data) in extensions {
                ext.extend(ty.to_be_bytes());
                ext.extend((data.len() as u16).to_be_bytes());
                ext.extend(data);
            }
            body.extend((ext.len() as u16).to_be_bytes());
            body.extend(ext);
        }
        body
    }

    fn alpn_ext(names: &[&[u8]]) -> (u16, Vec<u8>) {
        let mut list = Vec::new();
        for n in names {
            list.push(n.len() as u8);
            list.extend(*n);
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend(list);
        (EXTENSION_ALPN, data)
    }

    fn handshake(body: &[u8]) -> Vec<u8> {
        let mut hs = vec![HANDSHAKE_CLIENT_HELLO];
        hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend(body);
        hs
    }

    /// Wraps handshake bytes into records of at most `chunk` payload bytes.
    fn records(hs: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for part in hs.chunks(chunk) {
            out.extend([CONTENT_TYPE_HANDSHAKE, 3, 1]);
            out.extend((part.len() as u16).to_be_bytes());
            out.extend(part);
        }
        out
    }

    #[test]
    fn finds_the_alpn_in_a_whole_hello() {
        let sni = (0u16, vec![0, 0]);
        let body = hello_body(&[sni, alpn_ext(&[b"h2", ALPN])]);
        let wire = records(&handshake(&body), MAX_RECORD_PAYLOAD);
        assert_eq!(
            inspect(&wire, ALPN),
            Inspection::ClientHello { offers_alpn: true }
        );
        let other = records(
            &handshake(&hello_body(&[alpn_ext(&[b"h2", b"http/1.1"])])),
            MAX_RECORD_PAYLOAD,
        );
        assert_eq!(
            inspect(&other, ALPN),
            Inspection::ClientHello { offers_alpn: false }
        );
        // A name that only starts like ours.
        let longer = records(
            &handshake(&hello_body(&[alpn_ext(&[b"lanyard/10"])])),
            MAX_RECORD_PAYLOAD,
        );
        assert_eq!(
            inspect(&longer, ALPN),
            Inspection::ClientHello { offers_alpn: false }
        );
    }

    #[test]
    fn every_prefix_asks_for_more_and_never_lies() {
        let body = hello_body(&[(0x000a, vec![0, 2, 0, 0x17]), alpn_ext(&[ALPN])]);
        let wire = records(&handshake(&body), MAX_RECORD_PAYLOAD);
        for cut in 0..wire.len() {
            match inspect(&wire[..cut], ALPN) {
                Inspection::NeedMore { at_least } => {
                    assert!(
                        at_least > cut && at_least <= wire.len(),
                        "{cut}: {at_least}"
                    )
                }
                other => panic!("prefix of {cut} bytes decided {other:?}"),
            }
        }
    }

    #[test]
    fn a_hello_split_over_records_is_reassembled() {
        let body = hello_body(&[(0x000a, vec![0, 2, 0, 0x17]), alpn_ext(&[ALPN])]);
        for chunk in [1, 2, 3, 7, 40] {
            let wire = records(&handshake(&body), chunk);
            assert_eq!(
                inspect(&wire, ALPN),
                Inspection::ClientHello { offers_alpn: true },
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn plaintext_is_decided_on_the_first_byte() {
        assert_eq!(inspect(b"G", ALPN), Inspection::NotClientHello);
        assert_eq!(
            inspect(b"GET / HTTP/1.1\r\n\r\n", ALPN),
            Inspection::NotClientHello
        );
        assert_eq!(inspect(b"", ALPN), Inspection::NeedMore { at_least: 5 });
        assert_eq!(inspect(&[0x16], ALPN), Inspection::NeedMore { at_least: 5 });
        // SSLv2-compatible hello: high bit set.
        assert_eq!(
            inspect(&[0x80, 0x2e, 0x01, 0x03, 0x01], ALPN),
            Inspection::NotClientHello
        );
        // Handshake content type but a non-TLS version byte.
        assert_eq!(inspect(&[0x16, 0x02], ALPN), Inspection::NotClientHello);
        assert_eq!(
            inspect(&[0x16, 0x03, 0x09], ALPN),
            Inspection::NotClientHello
        );
    }

    #[test]
    fn hellos_without_alpn() {
        let no_ext = records(&handshake(&hello_body(&[])), MAX_RECORD_PAYLOAD);
        assert_eq!(
            inspect(&no_ext, ALPN),
            Inspection::ClientHello { offers_alpn: false }
        );
        let sni_only = records(
            &handshake(&hello_body(&[(0, vec![0, 0])])),
            MAX_RECORD_PAYLOAD,
        );
        assert_eq!(
            inspect(&sni_only, ALPN),
            Inspection::ClientHello { offers_alpn: false }
        );
    }

    #[test]
    fn malformed_hellos_are_not_hellos() {
        // Not a ClientHello handshake type.
        let mut server_hello = handshake(&hello_body(&[]));
        server_hello[0] = 2;
        assert_eq!(
            inspect(&records(&server_hello, 100), ALPN),
            Inspection::NotClientHello
        );
        // Zero-length and oversized record lengths.
        assert_eq!(
            inspect(&[0x16, 3, 1, 0, 0], ALPN),
            Inspection::NotClientHello
        );
        assert_eq!(
            inspect(&[0x16, 3, 1, 0x40, 0x01], ALPN),
            Inspection::NotClientHello
        );
        // An extension longer than the message.
        let mut body = hello_body(&[alpn_ext(&[ALPN])]);
        let ext_len_at = body.len() - alpn_ext(&[ALPN]).1.len() - 2;
        body[ext_len_at] = 0x10;
        assert_eq!(
            inspect(&records(&handshake(&body), 1000), ALPN),
            Inspection::NotClientHello
        );
        // An empty ALPN name.
        let bad_alpn = (EXTENSION_ALPN, vec![0, 1, 0]);
        assert_eq!(
            inspect(&records(&handshake(&hello_body(&[bad_alpn])), 1000), ALPN),
            Inspection::NotClientHello
        );
        // A handshake record followed by an application-data record mid-hello.
        let hs = handshake(&hello_body(&[alpn_ext(&[ALPN])]));
        let mut wire = records(&hs[..10], 100);
        wire.extend([0x17, 3, 3, 0, 5, 1, 2, 3, 4, 5]);
        assert_eq!(inspect(&wire, ALPN), Inspection::NotClientHello);
    }

    #[test]
    fn a_long_hello_asks_for_one_record_at_a_time() {
        // A record header announcing the largest payload: the next step needs that record.
        let mut wire = vec![
            0x16,
            3,
            1,
            0x40,
            0x00,
            HANDSHAKE_CLIENT_HELLO,
            0x00,
            0x80,
            0x00,
        ];
        wire.extend([3, 3]);
        match inspect(&wire, ALPN) {
            Inspection::NeedMore { at_least } => {
                assert_eq!(at_least, RECORD_HEADER_LEN + MAX_RECORD_PAYLOAD)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_hello_over_one_record_offering_ours_is_found_in_its_last_record() {
        // 40 KiB of another extension before ALPN, as large key shares put it there.
        let body = hello_body(&[(0xfe0d, vec![0xab; 40 * 1024]), alpn_ext(&[ALPN])]);
        let wire = records(&handshake(&body), MAX_RECORD_PAYLOAD);
        assert!(wire.len() > 2 * MAX_RECORD_PAYLOAD && wire.len() <= MAX_CLIENT_HELLO_BYTES);
        assert_eq!(
            inspect(&wire, ALPN),
            Inspection::ClientHello { offers_alpn: true }
        );
        // Every step asks for at most one more record.
        let mut have = 0;
        while let Inspection::NeedMore { at_least } = inspect(&wire[..have], ALPN) {
            assert!(at_least > have && at_least - have <= RECORD_HEADER_LEN + MAX_RECORD_PAYLOAD);
            have = at_least;
        }
    }

    #[test]
    fn a_hello_longer_than_rustls_accepts_is_foreign_at_once() {
        let wire = [
            0x16,
            3,
            1,
            0x40,
            0x00,
            HANDSHAKE_CLIENT_HELLO,
            0x01,
            0x00,
            0x00,
        ];
        assert_eq!(
            inspect(&wire, ALPN),
            Inspection::ClientHello { offers_alpn: false }
        );
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic sweep; the fuzz target does the real work.
        let mut state = 0x2545_f491_u32;
        let mut buf = [0u8; 64];
        for _ in 0..20_000 {
            for b in buf.iter_mut() {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                *b = state as u8;
            }
            buf[0] = 0x16;
            buf[1] = 3;
            for len in [0, 5, 9, 20, 64] {
                let _ = inspect(&buf[..len], ALPN);
            }
        }
    }
}
