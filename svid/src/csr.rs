//! PKCS#10 certificate signing requests: agents make them ([`KeyAndCsr`]), the server checks
//! them ([`VerifiedCsr`]) before anything is signed.
//!
//! A CSR only proves possession of a key. Its subject, SANs and requested extensions are
//! ignored entirely: the server decides the SPIFFE ID itself, so nothing a CSR asks for can
//! leak into a certificate.

use std::fmt;

use ring::signature::{self, UnparsedPublicKey};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_SIG_ECDSA_WITH_SHA256,
    OID_SIG_ECDSA_WITH_SHA384,
};
use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

pub use crate::keys::KeyAlgorithm;
use crate::keys::{self, KeyError, SecretKey};

/// The largest CSR accepted. A P-384 CSR with a long subject is under 1 KiB; the bound stops
/// a caller from making the parser walk megabytes.
pub const MAX_CSR_LEN: usize = 8 * 1024;

/// Why a CSR was refused (or could not be made). `Display` is a snake_case label, usable as a
/// metric label; [`CsrError::message`] is the human explanation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// More than [`MAX_CSR_LEN`] bytes.
    #[error("too_large")]
    TooLarge { len: usize, max: usize },
    /// Not a DER PKCS#10 request.
    #[error("malformed")]
    Malformed(&'static str),
    /// The request's signature does not verify under its own public key.
    #[error("bad_signature")]
    BadSignature,
    /// The public key is not ECDSA P-256 or P-384.
    #[error("unsupported_key")]
    UnsupportedKey(String),
    /// The request is signed with something other than ECDSA with SHA-256 or SHA-384.
    #[error("unsupported_signature_algorithm")]
    UnsupportedSignatureAlgorithm(String),
    /// Making a key or a request failed (the system random generator, usually).
    #[error("generation_failed")]
    Generation(String),
}

impl CsrError {
    /// The snake_case label (same as `Display`).
    pub fn label(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Malformed(_) => "malformed",
            Self::BadSignature => "bad_signature",
            Self::UnsupportedKey(_) => "unsupported_key",
            Self::UnsupportedSignatureAlgorithm(_) => "unsupported_signature_algorithm",
            Self::Generation(_) => "generation_failed",
        }
    }

    /// A human explanation of the refusal.
    pub fn message(&self) -> String {
        match self {
            Self::TooLarge { len, max } => {
                format!("CSR is {len} bytes, more than the {max} allowed")
            }
            Self::Malformed(why) => format!("CSR is not a DER PKCS#10 request: {why}"),
            Self::BadSignature => {
                "CSR signature does not verify with the CSR's own public key".to_owned()
            }
            Self::UnsupportedKey(what) => {
                format!("CSR key is {what}; only ECDSA P-256 and P-384 keys are accepted")
            }
            Self::UnsupportedSignatureAlgorithm(oid) => format!(
                "CSR is signed with algorithm {oid}; only ECDSA with SHA-256 or SHA-384 is accepted"
            ),
            Self::Generation(why) => format!("could not generate a key and CSR: {why}"),
        }
    }
}

/// A fresh private key and a PKCS#10 CSR for it (what agents send to the server).
pub struct KeyAndCsr {
    /// The private key, PKCS#8 DER; wiped on drop.
    pub private_key_pkcs8: Zeroizing<Vec<u8>>,
    /// The CSR, DER. Its subject is empty and it requests nothing: the server ignores both.
    pub csr_der: Vec<u8>,
}

impl KeyAndCsr {
    /// Generates a key of `alg` and a CSR signed with it.
    pub fn generate(alg: KeyAlgorithm) -> Result<Self, CsrError> {
        let private_key_pkcs8 = keys::generate_pkcs8(alg).map_err(key_error)?;
        let key = SecretKey::from_pkcs8(&private_key_pkcs8).map_err(key_error)?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|e| CsrError::Generation(e.to_string()))?;
        Ok(Self {
            private_key_pkcs8,
            csr_der: csr.der().to_vec(),
        })
    }
}

impl fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyAndCsr")
            .field("csr_der_len", &self.csr_der.len())
            .finish_non_exhaustive()
    }
}

fn key_error(e: KeyError) -> CsrError {
    CsrError::Generation(e.message())
}

/// A verified CSR: its signature checked, its public key of an allowed algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCsr {
    spki: Vec<u8>,
    /// The uncompressed EC point, as rcgen wants it.
    public_key: Vec<u8>,
    algorithm: KeyAlgorithm,
}

impl VerifiedCsr {
    /// Parses a DER CSR, checks its size, key algorithm and self-signature.
    pub fn from_der(der: &[u8]) -> Result<Self, CsrError> {
        if der.len() > MAX_CSR_LEN {
            return Err(CsrError::TooLarge {
                len: der.len(),
                max: MAX_CSR_LEN,
            });
        }
        let (rest, csr) = X509CertificationRequest::from_der(der)
            .map_err(|_| CsrError::Malformed("not a PKCS#10 CertificationRequest"))?;
        if !rest.is_empty() {
            return Err(CsrError::Malformed("trailing bytes after the request"));
        }
        let info = &csr.certification_request_info;
        if info.version.0 != 0 {
            return Err(CsrError::Malformed("version is not 1 (0)"));
        }

        let spki = &info.subject_pki;
        if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
            return Err(CsrError::UnsupportedKey(key_type_name(
                &spki.algorithm.algorithm,
            )));
        }
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| CsrError::UnsupportedKey("an EC key without a named curve".into()))?;
        let algorithm = if curve == OID_EC_P256 {
            KeyAlgorithm::EcdsaP256
        } else if curve == OID_NIST_EC_P384 {
            KeyAlgorithm::EcdsaP384
        } else {
            return Err(CsrError::UnsupportedKey(format!(
                "an EC key on curve {curve}"
            )));
        };

        let sig_oid = &csr.signature_algorithm.algorithm;
        let sha384 = if *sig_oid == OID_SIG_ECDSA_WITH_SHA256 {
            false
        } else if *sig_oid == OID_SIG_ECDSA_WITH_SHA384 {
            true
        } else {
            return Err(CsrError::UnsupportedSignatureAlgorithm(
                sig_oid.to_id_string(),
            ));
        };
        let verify_alg: &'static signature::EcdsaVerificationAlgorithm = match (algorithm, sha384) {
            (KeyAlgorithm::EcdsaP256, false) => &signature::ECDSA_P256_SHA256_ASN1,
            (KeyAlgorithm::EcdsaP256, true) => &signature::ECDSA_P256_SHA384_ASN1,
            (KeyAlgorithm::EcdsaP384, false) => &signature::ECDSA_P384_SHA256_ASN1,
            (KeyAlgorithm::EcdsaP384, true) => &signature::ECDSA_P384_SHA384_ASN1,
        };
        let public_key = spki.subject_public_key.data.as_ref();
        // ring also rejects a point that is not on the curve, so a bogus key fails here.
        UnparsedPublicKey::new(verify_alg, public_key)
            .verify(info.raw, csr.signature_value.data.as_ref())
            .map_err(|_| CsrError::BadSignature)?;

        Ok(Self {
            spki: spki.raw.to_vec(),
            public_key: public_key.to_vec(),
            algorithm,
        })
    }

    /// The requested public key as a DER SubjectPublicKeyInfo.
    pub fn public_key_spki(&self) -> &[u8] {
        &self.spki
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The key in the form rcgen signs over.
    pub(crate) fn as_rcgen_key(&self) -> CsrPublicKey<'_> {
        CsrPublicKey(self)
    }
}

/// Keeps the rcgen trait off the public type.
pub(crate) struct CsrPublicKey<'a>(&'a VerifiedCsr);

impl rcgen::PublicKeyData for CsrPublicKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.0.public_key
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.0.algorithm.rcgen()
    }
}

fn key_type_name(oid: &x509_parser::der_parser::oid::Oid<'_>) -> String {
    use x509_parser::oid_registry::{OID_PKCS1_RSAENCRYPTION, OID_SIG_ED448, OID_SIG_ED25519};
    if *oid == OID_PKCS1_RSAENCRYPTION {
        "RSA".to_owned()
    } else if *oid == OID_SIG_ED25519 {
        "Ed25519".to_owned()
    } else if *oid == OID_SIG_ED448 {
        "Ed448".to_owned()
    } else {
        format!("of type {oid}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2048-bit RSA key (PKCS#8), only to make an RSA CSR: ring cannot generate RSA keys.
    const RSA_KEY_PEM: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCgFRyVUW3E6r38\n\
LFCjVSlnCIg1K1XiAB17jdEAAMLOKaXWxprd/QKOJaBn6UG5r18Q3vzN04p+RF8R\n\
PuWeOsFC8PId1AalAcu+q1JGh3ZXe1tSMzDDweRIS5CKqvaaSnz/sniiG3jd4qTH\n\
dF6UGXU9aEKgoqSE+C1Lshc3ccTtC/zB9+1rnArHISkSJ+dwzzbwCrQWofBKbL5z\n\
FeAgkXNvwXgcGUp53bB5Lo1J1s0YbwqtKi2Ku2M9GLbMyBu721x/XIGgAbLDozJ0\n\
DymDzFsluIVB1UEo81GPtoHrm/KsfmfZnC2yiIWUztlGEizHsshO4QNPXVXEddEo\n\
Y7LnT5mXAgMBAAECggEAAO0zsHw7gcDyFJGVGJJCSRcNjXE7cAbGz5OZ5WwbtIxy\n\
f0nAVQ9FLS7JPOYRZqe93x/LSs2x/C/HymvDcc+ulVqbrCcxWqcmAhaFGroR/0j2\n\
1a+iKp/mrbHHm7sy7jWxf4a4QrKcrSbGBA7dCp0TG/s3LNgu0kOKz5NaUGHXh/UK\n\
y4oha8I6P//wv8Kmg7R5fDWjWTEsZ3Wn41IxcvIehBD7hpNl374wgvwJuRmbZHXp\n\
Z02FKpjCAB6d6sP0L+u7ncBNFmzjPEVWo1R8z7jr7mfpuEZntHS6o7jB7IuDsDGR\n\
8eRLbrFw4U9UjDLKH2815jZYk2zQx0LHhlKJpHIJIQKBgQDL05sFwONSnPg2hdBx\n\
eQ04OB/+lAqLqDByZgOg8I7BQ1fPTYPHPFn7mBNIqN9rV6ZwjSbvBeQFTzYMy3up\n\
jruYuzFJBnl3rclr0/nJRPc5d54K6GrbSi+LIr7XPO0VmHQdEruX2815c5WdL8dQ\n\
Ys+SPU5Y3+J2qzBbf/37n16L/wKBgQDJDwgfh92bN4dfoP4xV18cZp/fPdpAqdf1\n\
Ajf4O4y7fxXNGRiVXd2EZXWsPYm4il0qLVYpS029nkjE93zX8OPJ9p1h84gCg7Ee\n\
zpCOcdpQeZGeqlDEOHRNGFdJhauOimruAhqhUd36hsMBBEsYFM2dfO+3MADO2a6o\n\
p3SWOU/SaQKBgCOx0gMm7WhpTtqVgpRso5EF2yyFFnewo5NVJCuKFSXpOjZ2l65L\n\
dmKmFjJySHYO6nnpbjkLqgv3/DovZF+kPFwZ5B6qwJjh2VVF0QebSURKG2ZDn3r5\n\
ueu+0Pb2l3phsWvp/OoyNwCe6kOVu2zrcPhmPhM4Wft4LUbI2ly3YyJXAoGBAIlx\n\
hisP1PUjm55Kzxnp0XH30bhpbwafVKr/zkUaaFVQRhYD3uNU3HaCaVPKaZhGtfN8\n\
NJdcDBPg3XwQdz6jRQSuWt43/bVCU1Vs/jLyL7ytrldZtIa+1PpS9nCjOSjjBMAZ\n\
nhzDe0ykzS+nwLIAnqLXYoPHA/ZjpttSRgffu+ppAoGAIp1LseGfrD6lNd6n7bfu\n\
tPoPe0P4I+urdelnRmWD7Le8Aou2DLmwf6AOca6u9UaVsVSQ7ZMmFlA40kvMPilF\n\
UFGz2Cg1ZZyEIMyhIgK5L60bMEJpkF8+d/IUedKKQTLwcf2+BL9Iz2Fk2j2Xv8Qq\n\
H6HNG/9AO5bK4txYoS789Wk=\n\
-----END PRIVATE KEY-----\n\
";

    fn csr_with_key(key: &rcgen::KeyPair, cn: &str) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.serialize_request(key).unwrap().der().to_vec()
    }

    #[test]
    fn generated_csrs_verify() {
        for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384] {
            let kc = KeyAndCsr::generate(alg).unwrap();
            let csr = VerifiedCsr::from_der(&kc.csr_der).unwrap();
            assert_eq!(csr.algorithm(), alg);
            let key = SecretKey::from_pkcs8(&kc.private_key_pkcs8).unwrap();
            assert_eq!(csr.public_key_spki(), key.public_key_spki().as_slice());
            assert!(!format!("{kc:?}").contains("private_key_pkcs8"));
        }
    }

    #[test]
    fn accepts_rcgen_csr_with_subject_and_sans() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let der = csr_with_key(&key, "anything");
        assert!(VerifiedCsr::from_der(&der).is_ok());
    }

    #[test]
    fn refuses_tampered_request_info() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut der = csr_with_key(&key, "aaaaaaaa");
        let at = der
            .windows(8)
            .position(|w| w == b"aaaaaaaa")
            .expect("CN in the DER");
        der[at] = b'b';
        assert_eq!(VerifiedCsr::from_der(&der), Err(CsrError::BadSignature));
    }

    #[test]
    fn refuses_tampered_signature() {
        let kc = KeyAndCsr::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let mut der = kc.csr_der.clone();
        // The last byte is the last byte of the signature's `s` integer.
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let err = VerifiedCsr::from_der(&der).unwrap_err();
        assert_eq!(err, CsrError::BadSignature);
        assert_eq!(err.to_string(), "bad_signature");
        assert!(err.message().contains("signature"));
    }

    #[test]
    fn refuses_a_key_swapped_for_another() {
        // A valid signature by key A over a request naming key B is refused: splice B's SPKI
        // into A's request.
        let a = KeyAndCsr::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let b = KeyAndCsr::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let a_spki = VerifiedCsr::from_der(&a.csr_der).unwrap().spki;
        let b_spki = VerifiedCsr::from_der(&b.csr_der).unwrap().spki;
        let at = a
            .csr_der
            .windows(a_spki.len())
            .position(|w| w == a_spki.as_slice())
            .unwrap();
        let mut der = a.csr_der.clone();
        der[at..at + b_spki.len()].copy_from_slice(&b_spki);
        assert_eq!(VerifiedCsr::from_der(&der), Err(CsrError::BadSignature));
    }

    #[test]
    fn refuses_ed25519() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let der = csr_with_key(&key, "ed");
        let err = VerifiedCsr::from_der(&der).unwrap_err();
        assert_eq!(err, CsrError::UnsupportedKey("Ed25519".into()));
        assert_eq!(err.to_string(), "unsupported_key");
    }

    #[test]
    fn refuses_rsa() {
        let key = rcgen::KeyPair::from_pem(RSA_KEY_PEM).unwrap();
        let der = csr_with_key(&key, "rsa");
        assert_eq!(
            VerifiedCsr::from_der(&der),
            Err(CsrError::UnsupportedKey("RSA".into()))
        );
    }

    #[test]
    fn refuses_oversize_garbage_and_trailing_bytes() {
        let big = vec![0x30; MAX_CSR_LEN + 1];
        assert_eq!(
            VerifiedCsr::from_der(&big),
            Err(CsrError::TooLarge {
                len: MAX_CSR_LEN + 1,
                max: MAX_CSR_LEN
            })
        );
        for garbage in [
            &b""[..],
            b"\x30\x03\x02\x01\x00",
            b"hello, world",
            &[0xff; 64],
        ] {
            let err = VerifiedCsr::from_der(garbage).unwrap_err();
            assert_eq!(err.label(), "malformed", "{garbage:?}");
        }
        let mut der = KeyAndCsr::generate(KeyAlgorithm::EcdsaP256)
            .unwrap()
            .csr_der;
        der.push(0);
        assert_eq!(
            VerifiedCsr::from_der(&der),
            Err(CsrError::Malformed("trailing bytes after the request"))
        );
    }
}
