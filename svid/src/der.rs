//! The little DER we handle by hand: splitting concatenated certificates (the Workload API's
//! bundle form) and writing the few fixed structures we build (SubjectPublicKeyInfo).
//!
//! Splitting only walks the outer TLV headers; whether each element is really a certificate is
//! checked by the caller with a full X.509 parser. Every input is bounded before it is walked.

use rustls_pki_types::CertificateDer;

/// Most certificates one concatenated-DER bundle may hold.
pub const MAX_CERTIFICATES: usize = 1_000;
/// Largest concatenated-DER input accepted, in bytes.
pub const MAX_CONCATENATED_LEN: usize = 1 << 20;

/// DER tag of a constructed SEQUENCE, the outer type of every certificate.
const TAG_SEQUENCE: u8 = 0x30;
const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;

/// Why a byte string is not a well-formed concatenation of DER certificates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DerError {
    #[error("concatenated DER is {len} bytes, more than the {MAX_CONCATENATED_LEN} allowed")]
    TooLarge { len: usize },
    #[error("concatenated DER holds more than {MAX_CERTIFICATES} certificates")]
    TooManyCertificates,
    #[error("byte {offset}: expected a DER SEQUENCE (tag 0x30), found tag 0x{tag:02x}")]
    NotASequence { offset: usize, tag: u8 },
    #[error("byte {offset}: the element's header or content runs past the end of the input")]
    Truncated { offset: usize },
    #[error("byte {offset}: the length is not in DER's minimal definite form")]
    BadLength { offset: usize },
}

/// Splits back-to-back DER certificates (as the Workload API carries bundles) into one
/// element each. Empty input is an empty list: the caller decides whether that is allowed.
pub fn split_certificates(input: &[u8]) -> Result<Vec<CertificateDer<'static>>, DerError> {
    if input.len() > MAX_CONCATENATED_LEN {
        return Err(DerError::TooLarge { len: input.len() });
    }
    let mut certs = Vec::new();
    let mut offset = 0;
    while offset < input.len() {
        if certs.len() == MAX_CERTIFICATES {
            return Err(DerError::TooManyCertificates);
        }
        let tag = input[offset];
        if tag != TAG_SEQUENCE {
            return Err(DerError::NotASequence { offset, tag });
        }
        let (header_len, content_len) = read_length(input, offset)?;
        let end = offset
            .checked_add(header_len)
            .and_then(|n| n.checked_add(content_len))
            .filter(|&end| end <= input.len())
            .ok_or(DerError::Truncated { offset })?;
        certs.push(CertificateDer::from(input[offset..end].to_vec()));
        offset = end;
    }
    Ok(certs)
}

/// Joins certificates back to back: the inverse of [`split_certificates`].
pub fn concat_certificates<'a, I>(certs: I) -> Vec<u8>
where
    I: IntoIterator<Item = &'a CertificateDer<'a>>,
{
    let mut out = Vec::new();
    for cert in certs {
        out.extend_from_slice(cert.as_ref());
    }
    out
}

/// Reads the length of the element whose tag is at `offset`; returns (header length, content
/// length). Only minimal definite lengths of up to four bytes are DER (and fit our bounds).
fn read_length(input: &[u8], offset: usize) -> Result<(usize, usize), DerError> {
    let first = *input
        .get(offset + 1)
        .ok_or(DerError::Truncated { offset })?;
    if first < 0x80 {
        return Ok((2, usize::from(first)));
    }
    let count = usize::from(first & 0x7f);
    // 0x80 is BER's indefinite length; more than 4 bytes cannot fit in our size bound.
    if count == 0 || count > 4 {
        return Err(DerError::BadLength { offset });
    }
    let bytes = input
        .get(offset + 2..offset + 2 + count)
        .ok_or(DerError::Truncated { offset })?;
    if bytes[0] == 0 {
        return Err(DerError::BadLength { offset });
    }
    let len = bytes
        .iter()
        .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
    if len < 0x80 {
        return Err(DerError::BadLength { offset });
    }
    Ok((2 + count, len))
}

/// Appends a DER length.
fn write_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    out.push(0x80 | (bytes.len() - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

/// Appends one TLV element.
pub(crate) fn write_tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    write_length(out, content.len());
    out.extend_from_slice(content);
}

/// Appends a SEQUENCE holding `content`.
pub(crate) fn write_sequence(out: &mut Vec<u8>, content: &[u8]) {
    write_tlv(out, TAG_SEQUENCE, content);
}

/// Appends a BIT STRING with no unused bits.
pub(crate) fn write_bit_string(out: &mut Vec<u8>, bits: &[u8]) {
    let mut content = Vec::with_capacity(bits.len() + 1);
    content.push(0);
    content.extend_from_slice(bits);
    write_tlv(out, TAG_BIT_STRING, &content);
}

/// Appends a non-negative INTEGER from big-endian magnitude bytes: leading zeros stripped,
/// one zero added back when the top bit is set so the value stays positive.
pub(crate) fn write_unsigned_integer(out: &mut Vec<u8>, magnitude: &[u8]) {
    let skip = magnitude.iter().take_while(|&&b| b == 0).count();
    let magnitude = &magnitude[skip..];
    let mut content = Vec::with_capacity(magnitude.len() + 1);
    if magnitude.first().is_none_or(|&b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(magnitude);
    write_tlv(out, TAG_INTEGER, &content);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(content_len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        write_sequence(&mut out, &vec![0x05; content_len]);
        out
    }

    #[test]
    fn splits_short_and_long_form_elements() {
        let a = element(3);
        let b = element(200);
        let c = element(70_000);
        let joined = [a.clone(), b.clone(), c.clone()].concat();
        let parts = split_certificates(&joined).unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].as_ref(), a.as_slice());
        assert_eq!(parts[1].as_ref(), b.as_slice());
        assert_eq!(parts[2].as_ref(), c.as_slice());
        assert_eq!(concat_certificates(&parts), joined);
    }

    #[test]
    fn empty_input_is_an_empty_list() {
        assert_eq!(split_certificates(&[]).unwrap(), vec![]);
    }

    #[test]
    fn refuses_trailing_garbage() {
        let mut input = element(10);
        input.push(0x00);
        assert_eq!(
            split_certificates(&input),
            Err(DerError::NotASequence { offset: 12, tag: 0 })
        );
    }

    #[test]
    fn refuses_a_non_sequence() {
        assert_eq!(
            split_certificates(&[0x04, 0x01, 0x00]),
            Err(DerError::NotASequence { offset: 0, tag: 4 })
        );
    }

    #[test]
    fn refuses_lengths_past_the_end() {
        let mut input = element(300);
        input.pop();
        assert_eq!(
            split_certificates(&input),
            Err(DerError::Truncated { offset: 0 })
        );
        // A header cut inside its length bytes.
        assert_eq!(
            split_certificates(&[0x30, 0x82, 0x01]),
            Err(DerError::Truncated { offset: 0 })
        );
        assert_eq!(
            split_certificates(&[0x30]),
            Err(DerError::Truncated { offset: 0 })
        );
    }

    #[test]
    fn refuses_non_der_lengths() {
        // Indefinite length (BER only).
        assert_eq!(
            split_certificates(&[0x30, 0x80, 0x00, 0x00]),
            Err(DerError::BadLength { offset: 0 })
        );
        // Long form for a length that fits the short form.
        assert_eq!(
            split_certificates(&[0x30, 0x81, 0x01, 0x00]),
            Err(DerError::BadLength { offset: 0 })
        );
        // A leading zero length byte.
        assert_eq!(
            split_certificates(&[0x30, 0x82, 0x00, 0x90]),
            Err(DerError::BadLength { offset: 0 })
        );
        // More length bytes than any bounded input needs.
        assert_eq!(
            split_certificates(&[0x30, 0x85, 1, 0, 0, 0, 0]),
            Err(DerError::BadLength { offset: 0 })
        );
    }

    #[test]
    fn refuses_too_many_certificates() {
        let one = element(0);
        let ok = one.repeat(MAX_CERTIFICATES);
        assert_eq!(split_certificates(&ok).unwrap().len(), MAX_CERTIFICATES);
        let too_many = one.repeat(MAX_CERTIFICATES + 1);
        assert_eq!(
            split_certificates(&too_many),
            Err(DerError::TooManyCertificates)
        );
    }

    #[test]
    fn refuses_too_large_input() {
        let input = vec![0x30; MAX_CONCATENATED_LEN + 1];
        assert_eq!(
            split_certificates(&input),
            Err(DerError::TooLarge {
                len: MAX_CONCATENATED_LEN + 1
            })
        );
    }

    #[test]
    fn writes_unsigned_integers_minimally() {
        let mut out = Vec::new();
        write_unsigned_integer(&mut out, &[0x00, 0x00, 0x01, 0x00, 0x01]);
        assert_eq!(out, [0x02, 0x03, 0x01, 0x00, 0x01]);
        out.clear();
        write_unsigned_integer(&mut out, &[0x80]);
        assert_eq!(out, [0x02, 0x02, 0x00, 0x80]);
        out.clear();
        write_unsigned_integer(&mut out, &[]);
        assert_eq!(out, [0x02, 0x01, 0x00]);
    }

    #[test]
    fn writes_long_lengths() {
        let mut out = Vec::new();
        write_length(&mut out, 0x1234);
        assert_eq!(out, [0x82, 0x12, 0x34]);
    }
}
