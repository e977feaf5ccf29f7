//! Private keys: generating ECDSA keys, loading CA keys from PEM, and holding them so that
//! they are zeroised on drop and never printed.
//!
//! Only ECDSA P-256 and P-384 exist here: they are what every SPIFFE implementation accepts,
//! and ring signs both without any other crypto provider.

use std::fmt;

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use zeroize::{Zeroize, Zeroizing};

/// The largest private key PEM we read: a P-384 PKCS#8 key is well under 1 KiB.
pub const MAX_KEY_PEM_LEN: usize = 16 * 1024;

/// DER of the `id-ecPublicKey` algorithm identifier with its named-curve parameter, per curve.
/// Used to wrap a SEC1 key into PKCS#8, the only form ring loads.
const P256_ALGORITHM_ID: &[u8] = &[
    0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
    0xce, 0x3d, 0x03, 0x01, 0x07,
];
const P384_ALGORITHM_ID: &[u8] = &[
    0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04,
    0x00, 0x22,
];

/// The key algorithms Lanyard generates and accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256, signing with SHA-256 (the default everywhere).
    EcdsaP256,
    /// ECDSA on NIST P-384, signing with SHA-384.
    EcdsaP384,
}

impl KeyAlgorithm {
    /// A short label, usable as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa_p256",
            Self::EcdsaP384 => "ecdsa_p384",
        }
    }

    pub(crate) fn ring_signing(self) -> &'static signature::EcdsaSigningAlgorithm {
        match self {
            Self::EcdsaP256 => &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            Self::EcdsaP384 => &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        }
    }

    pub(crate) fn rcgen(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Self::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        }
    }

    fn algorithm_id(self) -> &'static [u8] {
        match self {
            Self::EcdsaP256 => P256_ALGORITHM_ID,
            Self::EcdsaP384 => P384_ALGORITHM_ID,
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Why a key could not be generated or loaded. `Display` is a snake_case label; see
/// [`KeyError::message`] for the human text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("too_large")]
    TooLarge { len: usize, max: usize },
    #[error("malformed")]
    Malformed(&'static str),
    #[error("unsupported_key")]
    Unsupported,
    #[error("generation_failed")]
    Generation,
}

impl KeyError {
    /// A human explanation of the refusal (never contains key material).
    pub fn message(&self) -> String {
        match self {
            Self::TooLarge { len, max } => {
                format!("private key PEM is {len} bytes, more than the {max} allowed")
            }
            Self::Malformed(why) => format!("private key is malformed: {why}"),
            Self::Unsupported => "private key is not ECDSA P-256 or P-384 (PKCS#8 \"PRIVATE KEY\" \
                                  or SEC1 \"EC PRIVATE KEY\" PEM)"
                .to_owned(),
            Self::Generation => "the system random generator failed to generate a key".to_owned(),
        }
    }
}

/// Generates a fresh key, returned as PKCS#8 DER.
pub fn generate_pkcs8(alg: KeyAlgorithm) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let rng = SystemRandom::new();
    let doc =
        EcdsaKeyPair::generate_pkcs8(alg.ring_signing(), &rng).map_err(|_| KeyError::Generation)?;
    // ring's Document cannot be wiped; the copy we hand out is.
    Ok(Zeroizing::new(doc.as_ref().to_vec()))
}

/// The first private key in `pem` as PKCS#8 DER (wiped on drop), for loaders that take only
/// PKCS#8 (ring, [`crate::jwt::JwtSigner::from_pkcs8`]): PKCS#8 (`PRIVATE KEY`) as it is, SEC1
/// (`EC PRIVATE KEY`, cert-manager's default) wrapped for `alg`'s curve. Whether the key is
/// really of that curve is for the loader to check.
pub fn pkcs8_from_pem(pem: &str, alg: KeyAlgorithm) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    if pem.len() > MAX_KEY_PEM_LEN {
        return Err(KeyError::TooLarge {
            len: pem.len(),
            max: MAX_KEY_PEM_LEN,
        });
    }
    let mut key = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| KeyError::Malformed("no PEM private key block could be read"))?;
    let result = match &key {
        PrivateKeyDer::Pkcs8(der) => Ok(Zeroizing::new(der.secret_pkcs8_der().to_vec())),
        PrivateKeyDer::Sec1(der) => Ok(wrap_sec1_in_pkcs8(alg, der.secret_sec1_der())),
        _ => Err(KeyError::Unsupported),
    };
    key.zeroize();
    result
}

/// A private key that signs certificates: wiped on drop, elided from `Debug`.
pub(crate) struct SecretKey {
    pair: rcgen::KeyPair,
    alg: KeyAlgorithm,
}

impl SecretKey {
    /// Loads a PKCS#8 DER key of one of our algorithms.
    pub(crate) fn from_pkcs8(der: &[u8]) -> Result<Self, KeyError> {
        for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384] {
            let pkcs8 = rustls_pki_types::PrivatePkcs8KeyDer::from(der);
            if let Ok(pair) = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, alg.rcgen()) {
                return Ok(Self { pair, alg });
            }
        }
        Err(KeyError::Unsupported)
    }

    /// Generates a fresh key.
    pub(crate) fn generate(alg: KeyAlgorithm) -> Result<Self, KeyError> {
        Self::from_pkcs8(&generate_pkcs8(alg)?)
    }

    /// Loads the first private key in `pem`: PKCS#8 (`PRIVATE KEY`) or SEC1
    /// (`EC PRIVATE KEY`, what cert-manager and `openssl ecparam` write).
    pub(crate) fn from_pem(pem: &str) -> Result<Self, KeyError> {
        if pem.len() > MAX_KEY_PEM_LEN {
            return Err(KeyError::TooLarge {
                len: pem.len(),
                max: MAX_KEY_PEM_LEN,
            });
        }
        let mut key = PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|_| KeyError::Malformed("no PEM private key block could be read"))?;
        let result = match &key {
            PrivateKeyDer::Pkcs8(der) => Self::from_pkcs8(der.secret_pkcs8_der()),
            PrivateKeyDer::Sec1(der) => Self::from_sec1(der.secret_sec1_der()),
            _ => Err(KeyError::Unsupported),
        };
        key.zeroize();
        result
    }

    /// Wraps a SEC1 `ECPrivateKey` in PKCS#8 for each curve in turn; ring checks the curve
    /// (from the key's own parameters, or from the scalar's length) and refuses a mismatch.
    fn from_sec1(sec1: &[u8]) -> Result<Self, KeyError> {
        for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384] {
            let pkcs8 = wrap_sec1_in_pkcs8(alg, sec1);
            let pkcs8_der = rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8.as_slice());
            if let Ok(pair) = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8_der, alg.rcgen())
            {
                return Ok(Self { pair, alg });
            }
        }
        Err(KeyError::Unsupported)
    }

    #[cfg(test)]
    pub(crate) fn algorithm(&self) -> KeyAlgorithm {
        self.alg
    }

    /// The key's SubjectPublicKeyInfo, DER.
    #[cfg(test)]
    pub(crate) fn public_key_spki(&self) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(&self.pair)
    }

    /// The key as PKCS#8 PEM; the text is wiped when dropped.
    pub(crate) fn to_pem(&self) -> Zeroizing<String> {
        crate::pem::encode_private_key(self.pair.serialized_der())
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.pair.zeroize();
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("algorithm", &self.alg)
            .finish_non_exhaustive()
    }
}

impl rcgen::PublicKeyData for SecretKey {
    fn der_bytes(&self) -> &[u8] {
        self.pair.der_bytes()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.alg.rcgen()
    }
}

impl rcgen::SigningKey for SecretKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.pair.sign(msg)
    }
}

/// `PrivateKeyInfo { version 0, algorithm, privateKey OCTET STRING (sec1) }`.
fn wrap_sec1_in_pkcs8(alg: KeyAlgorithm, sec1: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut body = Zeroizing::new(Vec::with_capacity(sec1.len() + 32));
    body.extend_from_slice(&[0x02, 0x01, 0x00]);
    body.extend_from_slice(alg.algorithm_id());
    body.push(0x04);
    push_der_len(&mut body, sec1.len());
    body.extend_from_slice(sec1);
    let mut out = Zeroizing::new(Vec::with_capacity(body.len() + 4));
    out.push(0x30);
    push_der_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

fn push_der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xff {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        // Keys are bounded by MAX_KEY_PEM_LEN, far below 64 KiB.
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkcs8_from_pem_takes_both_forms() {
        let pkcs8 = generate_pkcs8(KeyAlgorithm::EcdsaP256).unwrap();
        let pem = crate::pem::encode_private_key(&pkcs8);
        assert_eq!(
            *pkcs8_from_pem(&pem, KeyAlgorithm::EcdsaP256).unwrap(),
            *pkcs8
        );
        // The SEC1 key inside it, as `EC PRIVATE KEY`, comes back as an equivalent PKCS#8.
        let sec1_pem = pem_block("EC PRIVATE KEY", inner_octet_string(&pkcs8));
        let wrapped = pkcs8_from_pem(&sec1_pem, KeyAlgorithm::EcdsaP256).unwrap();
        let rng = SystemRandom::new();
        let a =
            EcdsaKeyPair::from_pkcs8(KeyAlgorithm::EcdsaP256.ring_signing(), &pkcs8, &rng).unwrap();
        let b = EcdsaKeyPair::from_pkcs8(KeyAlgorithm::EcdsaP256.ring_signing(), &wrapped, &rng)
            .unwrap();
        assert_eq!(
            ring::signature::KeyPair::public_key(&a).as_ref(),
            ring::signature::KeyPair::public_key(&b).as_ref()
        );
        assert!(matches!(
            pkcs8_from_pem("nothing", KeyAlgorithm::EcdsaP256),
            Err(KeyError::Malformed(_))
        ));
    }

    #[test]
    fn generated_keys_load_and_round_trip_through_pem() {
        for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384] {
            let key = SecretKey::generate(alg).unwrap();
            assert_eq!(key.algorithm(), alg);
            let pem = key.to_pem();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
            let again = SecretKey::from_pem(&pem).unwrap();
            assert_eq!(again.public_key_spki(), key.public_key_spki());
            assert_eq!(again.algorithm(), alg);
        }
    }

    #[test]
    fn sec1_keys_load() {
        // A SEC1 key is the PKCS#8 key's inner ECPrivateKey: strip the wrapper ring made.
        for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384] {
            let pkcs8 = generate_pkcs8(alg).unwrap();
            let key = SecretKey::from_pkcs8(&pkcs8).unwrap();
            let sec1 = inner_octet_string(&pkcs8);
            let pem = pem_block("EC PRIVATE KEY", sec1);
            let loaded = SecretKey::from_pem(&pem).unwrap();
            assert_eq!(loaded.algorithm(), alg);
            assert_eq!(loaded.public_key_spki(), key.public_key_spki());
        }
    }

    #[test]
    fn refuses_other_keys_and_garbage() {
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert_eq!(
            SecretKey::from_pem(&ed.serialize_pem()).unwrap_err(),
            KeyError::Unsupported
        );
        assert!(matches!(
            SecretKey::from_pem("not a key").unwrap_err(),
            KeyError::Malformed(_)
        ));
        let garbage = pem_block("PRIVATE KEY", &[0x30, 0x03, 0x02, 0x01, 0x00]);
        assert_eq!(
            SecretKey::from_pem(&garbage).unwrap_err(),
            KeyError::Unsupported
        );
        let huge = "A".repeat(MAX_KEY_PEM_LEN + 1);
        assert!(matches!(
            SecretKey::from_pem(&huge).unwrap_err(),
            KeyError::TooLarge { .. }
        ));
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let key = SecretKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let pem = key.to_pem();
        let body: String = pem.lines().nth(1).unwrap().chars().take(20).collect();
        let debug = format!("{key:?}");
        assert!(!debug.contains(&body), "{debug}");
        assert!(debug.contains("EcdsaP256"), "{debug}");
    }

    /// The `privateKey` OCTET STRING of a PKCS#8 document from ring:
    /// `30 len 02 01 00 <algid> 04 len <ECPrivateKey>`.
    fn inner_octet_string(pkcs8: &[u8]) -> &[u8] {
        let (_, rest) = der_header(pkcs8);
        let rest = &rest[3..]; // version
        let (algid_len, after) = der_header(rest);
        let rest = &after[algid_len..];
        assert_eq!(rest[0], 0x04);
        let (len, body) = der_header(rest);
        &body[..len]
    }

    /// Returns (content length, bytes after the tag and length).
    fn der_header(der: &[u8]) -> (usize, &[u8]) {
        match der[1] {
            0x81 => (der[2] as usize, &der[3..]),
            0x82 => ((der[2] as usize) << 8 | der[3] as usize, &der[4..]),
            l => (l as usize, &der[2..]),
        }
    }

    fn pem_block(label: &str, der: &[u8]) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n")
    }
}
