//! PEM encoding (RFC 7468): the one place in Lanyard that writes `-----BEGIN ...-----` blocks.
//!
//! Reading PEM is `rustls_pki_types::pem::PemObject`'s job (bounded callers wrap it, e.g.
//! [`crate::bundle::certificates_from_pem`]). Writing is done here rather than by the `pem`
//! crate because private keys pass through it: every buffer that holds key material, including
//! the base64 scratch, is wiped on drop, and the output is sized up front so it never
//! reallocates (a reallocation would leave an unwiped copy behind).

use rustls_pki_types::CertificateDer;
use zeroize::Zeroizing;

/// The PEM label of a PKCS#8 private key.
pub const PRIVATE_KEY: &str = "PRIVATE KEY";
/// The PEM label of an X.509 certificate.
pub const CERTIFICATE: &str = "CERTIFICATE";

/// One PEM block of `der` under `label`, 64 characters a line.
pub fn encode(label: &str, der: &[u8]) -> String {
    let mut out = String::with_capacity(encoded_len(label, der.len()));
    write(label, der, &mut out);
    out
}

/// A PKCS#8 private key as one `PRIVATE KEY` block, in a buffer wiped on drop.
pub fn encode_private_key(pkcs8_der: &[u8]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(encoded_len(
        PRIVATE_KEY,
        pkcs8_der.len(),
    )));
    write(PRIVATE_KEY, pkcs8_der, &mut out);
    out
}

/// Certificates as consecutive `CERTIFICATE` blocks, in the order given.
pub fn encode_certificates(certs: &[CertificateDer<'_>]) -> String {
    let len = certs
        .iter()
        .map(|c| encoded_len(CERTIFICATE, c.len()))
        .sum();
    let mut out = String::with_capacity(len);
    for cert in certs {
        write(CERTIFICATE, cert, &mut out);
    }
    out
}

/// Appends one PEM block of `der` under `label` to `out`, 64 characters a line. The base64
/// scratch buffer is wiped, since this also encodes private keys.
pub fn write(label: &str, der: &[u8], out: &mut String) {
    use base64::Engine as _;
    let mut b64 = Zeroizing::new(String::with_capacity(der.len().div_ceil(3) * 4));
    base64::engine::general_purpose::STANDARD.encode_string(der, &mut b64);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    let mut rest: &str = &b64;
    while !rest.is_empty() {
        // base64 is ASCII, so any byte index is a char boundary.
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
}

/// The exact length of one encoded block: armour lines, base64 and one newline per line.
fn encoded_len(label: &str, der_len: usize) -> usize {
    let b64 = der_len.div_ceil(3) * 4;
    let lines = b64.div_ceil(64);
    let armour = "-----BEGIN -----\n".len() + "-----END -----\n".len() + 2 * label.len();
    armour + b64 + lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject as _;

    #[test]
    fn blocks_are_64_columns_and_read_back() {
        let der: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let pem = encode(CERTIFICATE, &der);
        let lines: Vec<&str> = pem.lines().collect();
        assert_eq!(lines[0], "-----BEGIN CERTIFICATE-----");
        assert_eq!(*lines.last().unwrap(), "-----END CERTIFICATE-----");
        assert!(lines[1..lines.len() - 1].iter().all(|l| l.len() <= 64));
        assert_eq!(lines[1].len(), 64);
        let back = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(back.as_ref(), der.as_slice());
    }

    #[test]
    fn the_length_is_computed_exactly_so_key_buffers_never_reallocate() {
        for n in [0, 1, 2, 3, 47, 48, 49, 64, 121, 138, 1000] {
            let der = vec![0x5a; n];
            let key = encode_private_key(&der);
            assert_eq!(key.len(), encoded_len(PRIVATE_KEY, n), "der length {n}");
            assert_eq!(key.capacity(), key.len(), "der length {n}");
        }
    }

    #[test]
    fn certificates_are_written_in_order() {
        let a = CertificateDer::from(vec![1u8; 10]);
        let b = CertificateDer::from(vec![2u8; 20]);
        let pem = encode_certificates(&[a.clone(), b.clone()]);
        let back: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back, vec![a, b]);
    }
}
