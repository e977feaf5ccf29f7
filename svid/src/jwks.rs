//! The SPIFFE bundle document: a trust bundle as a JWK Set, and the JWT-only JWK Set the
//! Workload API's `JWTBundlesResponse` carries.
//!
//! X.509 authorities are `use: "x509-svid"` entries with exactly one CA certificate in `x5c`;
//! JWT authorities are `use: "jwt-svid"` entries with a `kid`. On input, entries of an unknown
//! `use` or `kty` (or an EC curve we cannot verify) are skipped, as the standard asks, while a
//! malformed entry of a kind we know refuses the whole document: a half-read bundle would
//! silently trust less (or more) than its author meant.
//!
//! [`JwtAuthority`] keeps SubjectPublicKeyInfo DER; [`JwtPublicKey`] converts between that and
//! the JWK members, and gives the verifier the raw key.
//!
//! A third form, for relying parties outside SPIFFE: [`TrustBundle::to_oidc_jwks`], the JWT
//! authorities as an ordinary JWK Set (`use: "sig"`, `alg` set), which OIDC discovery serves.

use std::time::Duration;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Map, Value};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::bundle::{JwtAuthority, TrustBundle};
use crate::der;
use crate::id::TrustDomain;

/// Largest bundle document accepted, in bytes.
pub const MAX_DOCUMENT_LEN: usize = 1 << 20;
/// Most entries a document's `keys` may hold (known or not).
pub const MAX_KEYS: usize = 1_000;
/// Longest `kid` accepted.
pub const MAX_KEY_ID_LEN: usize = 256;

/// `use` of an X.509 authority entry.
const USE_X509_SVID: &str = "x509-svid";
/// `use` of a JWT authority entry.
const USE_JWT_SVID: &str = "jwt-svid";
/// `use` of a signature key in a plain (OIDC) JWK Set, RFC 7517 section 4.2.
const USE_SIG: &str = "sig";

/// Uncompressed-point lengths (`04 || x || y`).
const P256_POINT_LEN: usize = 65;
const P384_POINT_LEN: usize = 97;

/// SPKI DER up to the point's first byte: algorithm id-ecPublicKey with the named curve, then
/// the BIT STRING header. DER is canonical, so these prefixes are the only valid encodings.
const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const P384_SPKI_PREFIX: &[u8] = &[
    0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
    0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
];
/// AlgorithmIdentifier of rsaEncryption, with its NULL parameters.
const RSA_ALGORITHM_ID: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

/// JWK members are base64url; we write them unpadded and accept either on input.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
/// `x5c` is standard base64 (not url), RFC 7517 section 4.7.
const BASE64_X5C: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a public key cannot be used as (or converted to) a JWT authority key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublicKeyError {
    #[error("not a valid SubjectPublicKeyInfo: {0}")]
    Spki(String),
    #[error("unsupported key algorithm {0}; only EC P-256, EC P-384 and RSA are supported")]
    UnsupportedAlgorithm(String),
    #[error("unsupported EC curve {0}; only P-256 and P-384 are supported")]
    UnsupportedCurve(String),
    #[error("EC public key is not an uncompressed point of its curve's size")]
    BadPoint,
    #[error("RSA public key has an empty modulus or exponent")]
    BadRsaKey,
}

/// Why a bundle document was refused or could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("bundle document is {len} bytes, more than the {MAX_DOCUMENT_LEN} allowed")]
    TooLarge { len: usize },
    #[error("bundle document is not a valid JWK Set: {0}")]
    Json(String),
    #[error("bundle document has no \"keys\" array (it is required; an empty one revokes all)")]
    MissingKeys,
    #[error("bundle document has {count} keys, more than the {MAX_KEYS} allowed")]
    TooManyKeys { count: usize },
    #[error("keys[{index}] is not a JSON object")]
    NotAnObject { index: usize },
    #[error("keys[{index}] ({use_}) has no \"{member}\" member, which it requires")]
    MissingMember {
        index: usize,
        use_: &'static str,
        member: &'static str,
    },
    #[error("keys[{index}] member \"{member}\" is invalid: {reason}")]
    BadMember {
        index: usize,
        member: &'static str,
        reason: String,
    },
    #[error(
        "keys[{index}] (x509-svid) has {count} certificates in \"x5c\"; exactly one is required"
    )]
    X5cCount { index: usize, count: usize },
    #[error("keys[{index}] (x509-svid) certificate is not valid X.509: {reason}")]
    Certificate { index: usize, reason: String },
    #[error(
        "keys[{index}] (x509-svid) kty or key members do not match its certificate's public key"
    )]
    KeyMismatch { index: usize },
    #[error("keys[{index}] reuses kid {kid:?} for a different key")]
    DuplicateKeyId { index: usize, kid: String },
    #[error("X.509 authority number {index} cannot be written as a JWK: {reason}")]
    UnencodableX509Authority { index: usize, reason: String },
    #[error("JWT authority {kid:?} cannot be written as a JWK: {source}")]
    UnencodableJwtAuthority { kid: String, source: PublicKeyError },
}

/// A JWT authority's public key, in the forms JWKs and the verifier need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtPublicKey {
    /// ECDSA on P-256: the uncompressed point `04 || x || y`.
    EcP256 { point: Vec<u8> },
    /// ECDSA on P-384: the uncompressed point `04 || x || y`.
    EcP384 { point: Vec<u8> },
    /// RSA: big-endian modulus and public exponent, without leading zeros.
    Rsa { modulus: Vec<u8>, exponent: Vec<u8> },
}

impl JwtPublicKey {
    /// Reads a SubjectPublicKeyInfo (the form [`JwtAuthority::public_key`] holds).
    pub fn from_spki_der(spki: &[u8]) -> Result<Self, PublicKeyError> {
        let (rest, info) = SubjectPublicKeyInfo::from_der(spki)
            .map_err(|e| PublicKeyError::Spki(e.to_string()))?;
        if !rest.is_empty() {
            return Err(PublicKeyError::Spki("trailing bytes".into()));
        }
        let algorithm = &info.algorithm.algorithm;
        let key_bytes = info.subject_public_key.data.as_ref();
        if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = info
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .ok_or_else(|| PublicKeyError::UnsupportedCurve("(not a named curve)".into()))?;
            let key = if curve == OID_EC_P256 {
                Self::EcP256 {
                    point: key_bytes.to_vec(),
                }
            } else if curve == OID_NIST_EC_P384 {
                Self::EcP384 {
                    point: key_bytes.to_vec(),
                }
            } else {
                return Err(PublicKeyError::UnsupportedCurve(curve.to_id_string()));
            };
            key.check_point()?;
            Ok(key)
        } else if *algorithm == OID_PKCS1_RSAENCRYPTION {
            match info.parsed() {
                Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
                    Self::rsa(rsa.modulus, rsa.exponent)
                }
                _ => Err(PublicKeyError::BadRsaKey),
            }
        } else {
            Err(PublicKeyError::UnsupportedAlgorithm(
                algorithm.to_id_string(),
            ))
        }
    }

    /// The SubjectPublicKeyInfo DER of this key.
    pub fn to_spki_der(&self) -> Vec<u8> {
        match self {
            Self::EcP256 { point } => [P256_SPKI_PREFIX, point].concat(),
            Self::EcP384 { point } => [P384_SPKI_PREFIX, point].concat(),
            Self::Rsa { modulus, exponent } => {
                let mut integers = Vec::new();
                der::write_unsigned_integer(&mut integers, modulus);
                der::write_unsigned_integer(&mut integers, exponent);
                let mut rsa_public_key = Vec::new();
                der::write_sequence(&mut rsa_public_key, &integers);
                let mut content = RSA_ALGORITHM_ID.to_vec();
                der::write_bit_string(&mut content, &rsa_public_key);
                let mut out = Vec::new();
                der::write_sequence(&mut out, &content);
                out
            }
        }
    }

    /// The JWS `alg` relying parties verify this key's signatures with: ES256 (P-256), ES384
    /// (P-384), RS256 (RSA), as SPIRE's OIDC discovery provider names them.
    pub fn jws_algorithm(&self) -> &'static str {
        match self {
            Self::EcP256 { .. } => "ES256",
            Self::EcP384 { .. } => "ES384",
            Self::Rsa { .. } => "RS256",
        }
    }

    /// The JWK `kty`.
    pub fn kty(&self) -> &'static str {
        match self {
            Self::EcP256 { .. } | Self::EcP384 { .. } => "EC",
            Self::Rsa { .. } => "RSA",
        }
    }

    fn rsa(modulus: &[u8], exponent: &[u8]) -> Result<Self, PublicKeyError> {
        let strip = |b: &[u8]| b[b.iter().take_while(|&&x| x == 0).count()..].to_vec();
        let (modulus, exponent) = (strip(modulus), strip(exponent));
        if modulus.is_empty() || exponent.is_empty() {
            return Err(PublicKeyError::BadRsaKey);
        }
        Ok(Self::Rsa { modulus, exponent })
    }

    fn check_point(&self) -> Result<(), PublicKeyError> {
        let (point, len) = match self {
            Self::EcP256 { point } => (point, P256_POINT_LEN),
            Self::EcP384 { point } => (point, P384_POINT_LEN),
            Self::Rsa { .. } => return Ok(()),
        };
        if point.len() != len || point[0] != 0x04 {
            return Err(PublicKeyError::BadPoint);
        }
        Ok(())
    }

    /// The key's JWK members (`kty` and `crv`/`x`/`y` or `n`/`e`).
    fn jwk_members(&self, jwk: &mut Map<String, Value>) {
        jwk.insert("kty".into(), self.kty().into());
        match self {
            Self::EcP256 { point } | Self::EcP384 { point } => {
                let crv = if matches!(self, Self::EcP256 { .. }) {
                    "P-256"
                } else {
                    "P-384"
                };
                let coordinate_len = (point.len() - 1) / 2;
                let (x, y) = point[1..].split_at(coordinate_len);
                jwk.insert("crv".into(), crv.into());
                jwk.insert("x".into(), BASE64URL.encode(x).into());
                jwk.insert("y".into(), BASE64URL.encode(y).into());
            }
            Self::Rsa { modulus, exponent } => {
                jwk.insert("n".into(), BASE64URL.encode(modulus).into());
                jwk.insert("e".into(), BASE64URL.encode(exponent).into());
            }
        }
    }
}

/// How entries without a `use` are read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DocumentKind {
    /// The SPIFFE bundle document: `use` decides everything, no `use` is an unknown use.
    Spiffe,
    /// The Workload API's JWT bundle: only JWT authorities, and a bare JWK (no `use`, as
    /// go-spiffe writes them) is one too.
    JwtOnly,
}

impl TrustBundle {
    /// The SPIFFE bundle document of this bundle: X.509 and JWT authorities, sequence and
    /// refresh hint.
    pub fn to_jwks(&self) -> Result<String, JwksError> {
        let mut keys = Vec::new();
        for (index, cert) in self.x509_authorities().iter().enumerate() {
            keys.push(x509_authority_jwk(index, cert.as_ref())?);
        }
        for authority in self.jwt_authorities() {
            keys.push(jwt_authority_jwk(authority)?);
        }
        let mut document = Map::new();
        document.insert("keys".into(), Value::Array(keys));
        document.insert("spiffe_sequence".into(), self.sequence().into());
        if let Some(hint) = self.refresh_hint() {
            document.insert("spiffe_refresh_hint".into(), hint.as_secs().into());
        }
        Ok(Value::Object(document).to_string())
    }

    /// Reads a SPIFFE bundle document for `trust_domain`.
    pub fn from_jwks(trust_domain: TrustDomain, document: &[u8]) -> Result<Self, JwksError> {
        parse_document(trust_domain, document, DocumentKind::Spiffe)
    }

    /// The JWT-only JWK Set of this bundle, as the Workload API's `JWTBundlesResponse` carries
    /// it: `jwt-svid` keys only, no SPIFFE members.
    pub fn to_jwt_jwks(&self) -> Result<String, JwksError> {
        let keys = self
            .jwt_authorities()
            .iter()
            .map(jwt_authority_jwk)
            .collect::<Result<Vec<_>, _>>()?;
        let mut document = Map::new();
        document.insert("keys".into(), Value::Array(keys));
        Ok(Value::Object(document).to_string())
    }

    /// The JWT authorities as a plain JWK Set for OIDC relying parties (cloud IAM, Vault,
    /// PyJWT): each key with `kid`, `use: "sig"` and its `alg`
    /// ([`JwtPublicKey::jws_algorithm`]), no SPIFFE members. OIDC clients pick keys by `kid`
    /// and some refuse a `use` other than `sig`, so this is not the `jwt-svid` form.
    pub fn to_oidc_jwks(&self) -> Result<String, JwksError> {
        let keys = self
            .jwt_authorities()
            .iter()
            .map(|authority| {
                let (key, mut jwk) = jwt_authority_key(authority)?;
                jwk.insert("use".into(), USE_SIG.into());
                jwk.insert("alg".into(), key.jws_algorithm().into());
                Ok(Value::Object(jwk))
            })
            .collect::<Result<Vec<_>, JwksError>>()?;
        let mut document = Map::new();
        document.insert("keys".into(), Value::Array(keys));
        Ok(Value::Object(document).to_string())
    }

    /// The JWS algorithms of this bundle's JWT authorities, each once, in key order; keys that
    /// cannot be read are left out (the encoders refuse them).
    pub fn jwt_algorithms(&self) -> Vec<&'static str> {
        let mut algorithms = Vec::new();
        for authority in self.jwt_authorities() {
            if let Ok(key) = JwtPublicKey::from_spki_der(&authority.public_key)
                && !algorithms.contains(&key.jws_algorithm())
            {
                algorithms.push(key.jws_algorithm());
            }
        }
        algorithms
    }

    /// Reads a JWT-only JWK Set (the Workload API's form) into a bundle with JWT authorities
    /// only; `x509-svid` entries are skipped.
    pub fn from_jwt_jwks(trust_domain: TrustDomain, document: &[u8]) -> Result<Self, JwksError> {
        parse_document(trust_domain, document, DocumentKind::JwtOnly)
    }
}

fn x509_authority_jwk(index: usize, cert: &[u8]) -> Result<Value, JwksError> {
    let unencodable = |reason: String| JwksError::UnencodableX509Authority { index, reason };
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| unencodable(e.to_string()))?;
    // go-jose (and so go-spiffe) wants the key members next to x5c, matching the certificate.
    let key = JwtPublicKey::from_spki_der(parsed.public_key().raw)
        .map_err(|e| unencodable(e.to_string()))?;
    let mut jwk = Map::new();
    jwk.insert("use".into(), USE_X509_SVID.into());
    key.jwk_members(&mut jwk);
    jwk.insert(
        "x5c".into(),
        Value::Array(vec![STANDARD.encode(cert).into()]),
    );
    Ok(Value::Object(jwk))
}

fn jwt_authority_jwk(authority: &JwtAuthority) -> Result<Value, JwksError> {
    let (_, mut jwk) = jwt_authority_key(authority)?;
    jwk.insert("use".into(), USE_JWT_SVID.into());
    Ok(Value::Object(jwk))
}

/// A JWT authority's key, and its JWK with `kid` and the key members (no `use`).
fn jwt_authority_key(
    authority: &JwtAuthority,
) -> Result<(JwtPublicKey, Map<String, Value>), JwksError> {
    let key = JwtPublicKey::from_spki_der(&authority.public_key).map_err(|source| {
        JwksError::UnencodableJwtAuthority {
            kid: authority.key_id.clone(),
            source,
        }
    })?;
    let mut jwk = Map::new();
    jwk.insert("kid".into(), authority.key_id.clone().into());
    key.jwk_members(&mut jwk);
    Ok((key, jwk))
}

#[derive(serde::Deserialize)]
struct RawDocument {
    keys: Option<Vec<Value>>,
    spiffe_sequence: Option<u64>,
    spiffe_refresh_hint: Option<u64>,
}

fn parse_document(
    trust_domain: TrustDomain,
    document: &[u8],
    kind: DocumentKind,
) -> Result<TrustBundle, JwksError> {
    if document.len() > MAX_DOCUMENT_LEN {
        return Err(JwksError::TooLarge {
            len: document.len(),
        });
    }
    let raw: RawDocument =
        serde_json::from_slice(document).map_err(|e| JwksError::Json(e.to_string()))?;
    let keys = raw.keys.ok_or(JwksError::MissingKeys)?;
    if keys.len() > MAX_KEYS {
        return Err(JwksError::TooManyKeys { count: keys.len() });
    }
    let mut bundle = TrustBundle::new(trust_domain);
    bundle.set_sequence(raw.spiffe_sequence.unwrap_or(0));
    bundle.set_refresh_hint(raw.spiffe_refresh_hint.map(Duration::from_secs));
    for (index, entry) in keys.iter().enumerate() {
        let jwk = entry.as_object().ok_or(JwksError::NotAnObject { index })?;
        let use_ = optional_str(jwk, index, "use")?;
        let use_ = match (use_, kind) {
            (None, DocumentKind::JwtOnly) => Some(USE_JWT_SVID),
            (use_, _) => use_,
        };
        match use_ {
            Some(USE_X509_SVID) if kind == DocumentKind::Spiffe => {
                if let Some(cert) = parse_x509_entry(index, jwk)? {
                    bundle.add_x509_authority(cert.into());
                }
            }
            Some(USE_JWT_SVID) => {
                if let Some(authority) = parse_jwt_entry(index, jwk)? {
                    if let Some(existing) = bundle.jwt_authority(&authority.key_id)
                        && existing.public_key != authority.public_key
                    {
                        return Err(JwksError::DuplicateKeyId {
                            index,
                            kid: authority.key_id,
                        });
                    }
                    bundle.add_jwt_authority(authority);
                }
            }
            other => {
                tracing::debug!(index, use_ = ?other, "skipping bundle entry of an unknown use");
            }
        }
    }
    Ok(bundle)
}

/// An `x509-svid` entry's certificate, or `None` for an unknown `kty`.
fn parse_x509_entry(index: usize, jwk: &Map<String, Value>) -> Result<Option<Vec<u8>>, JwksError> {
    let kty = required_str(jwk, index, USE_X509_SVID, "kty")?;
    if !matches!(kty, "EC" | "RSA") {
        tracing::debug!(index, kty, "skipping x509-svid entry of an unknown kty");
        return Ok(None);
    }
    let x5c = jwk.get("x5c").ok_or(JwksError::MissingMember {
        index,
        use_: USE_X509_SVID,
        member: "x5c",
    })?;
    let chain = x5c
        .as_array()
        .ok_or_else(|| bad(index, "x5c", "not an array"))?;
    if chain.len() != 1 {
        return Err(JwksError::X5cCount {
            index,
            count: chain.len(),
        });
    }
    let encoded = chain[0]
        .as_str()
        .ok_or_else(|| bad(index, "x5c", "not an array of strings"))?;
    let cert = BASE64_X5C
        .decode(encoded)
        .map_err(|e| bad(index, "x5c", &format!("not standard base64: {e}")))?;
    let parsed = match x509_parser::parse_x509_certificate(&cert) {
        Ok(([], parsed)) => parsed,
        Ok(_) => {
            return Err(JwksError::Certificate {
                index,
                reason: "trailing bytes after the certificate".into(),
            });
        }
        Err(e) => {
            return Err(JwksError::Certificate {
                index,
                reason: e.to_string(),
            });
        }
    };
    // The certificate's key must be of the declared kty (so the bundle can be written back),
    // and key members, optional here, must describe it when present.
    let cert_key = JwtPublicKey::from_spki_der(parsed.public_key().raw)
        .ok()
        .filter(|key| key.kty() == kty)
        .ok_or(JwksError::KeyMismatch { index })?;
    let has_key_members = ["crv", "x", "y", "n", "e"]
        .iter()
        .any(|m| jwk.contains_key(*m));
    if has_key_members && parse_jwk_key(index, kty, jwk)? != Some(cert_key) {
        return Err(JwksError::KeyMismatch { index });
    }
    Ok(Some(cert))
}

/// A `jwt-svid` entry's authority, or `None` for an unknown `kty` or curve.
fn parse_jwt_entry(
    index: usize,
    jwk: &Map<String, Value>,
) -> Result<Option<JwtAuthority>, JwksError> {
    let kid = required_str(jwk, index, USE_JWT_SVID, "kid")?;
    if kid.is_empty() || kid.len() > MAX_KEY_ID_LEN {
        return Err(bad(
            index,
            "kid",
            &format!("must be 1 to {MAX_KEY_ID_LEN} bytes"),
        ));
    }
    let kty = required_str(jwk, index, USE_JWT_SVID, "kty")?;
    let Some(key) = parse_jwk_key(index, kty, jwk)? else {
        tracing::debug!(
            index,
            kty,
            "skipping jwt-svid entry of an unsupported key type"
        );
        return Ok(None);
    };
    Ok(Some(JwtAuthority {
        key_id: kid.to_owned(),
        public_key: key.to_spki_der(),
        expires_at: None,
    }))
}

/// The key a JWK's members describe; `None` when its `kty` or curve is not one we verify.
fn parse_jwk_key(
    index: usize,
    kty: &str,
    jwk: &Map<String, Value>,
) -> Result<Option<JwtPublicKey>, JwksError> {
    let use_ = if jwk.get("use").and_then(Value::as_str) == Some(USE_X509_SVID) {
        USE_X509_SVID
    } else {
        USE_JWT_SVID
    };
    let member = |name: &'static str| -> Result<Vec<u8>, JwksError> {
        let text = required_str(jwk, index, use_, name)?;
        BASE64URL
            .decode(text)
            .map_err(|e| bad(index, name, &format!("not base64url: {e}")))
    };
    match kty {
        "EC" => {
            let crv = required_str(jwk, index, use_, "crv")?;
            let coordinate_len = match crv {
                "P-256" => 32,
                "P-384" => 48,
                _ => return Ok(None),
            };
            let (x, y) = (member("x")?, member("y")?);
            for (name, value) in [("x", &x), ("y", &y)] {
                if value.len() != coordinate_len {
                    return Err(bad(
                        index,
                        name,
                        &format!("{crv} coordinates are {coordinate_len} bytes"),
                    ));
                }
            }
            let point = [&[0x04][..], &x, &y].concat();
            Ok(Some(if crv == "P-256" {
                JwtPublicKey::EcP256 { point }
            } else {
                JwtPublicKey::EcP384 { point }
            }))
        }
        "RSA" => {
            let (n, e) = (member("n")?, member("e")?);
            JwtPublicKey::rsa(&n, &e)
                .map(Some)
                .map_err(|err| bad(index, "n", &err.to_string()))
        }
        _ => Ok(None),
    }
}

fn optional_str<'a>(
    jwk: &'a Map<String, Value>,
    index: usize,
    member: &'static str,
) -> Result<Option<&'a str>, JwksError> {
    match jwk.get(member) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(index, member, "not a string")),
    }
}

fn required_str<'a>(
    jwk: &'a Map<String, Value>,
    index: usize,
    use_: &'static str,
    member: &'static str,
) -> Result<&'a str, JwksError> {
    optional_str(jwk, index, member)?.ok_or(JwksError::MissingMember {
        index,
        use_,
        member,
    })
}

fn bad(index: usize, member: &'static str, reason: &str) -> JwksError {
    JwksError::BadMember {
        index,
        member,
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::JwtSigner;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    #[test]
    fn oidc_jwks_is_a_plain_signature_key_set() {
        let signer = JwtSigner::generate().unwrap().0;
        let mut bundle = TrustBundle::new(td());
        bundle.add_jwt_authority(signer.authority());
        // A P-384 and an RSA authority, as a rotation from another source could publish.
        let p384 = JwtPublicKey::EcP384 {
            point: [&[0x04][..], &[7; 96]].concat(),
        };
        let rsa = JwtPublicKey::Rsa {
            modulus: vec![0xc5; 256],
            exponent: vec![1, 0, 1],
        };
        for (kid, key) in [("p384", &p384), ("rsa", &rsa)] {
            bundle.add_jwt_authority(JwtAuthority {
                key_id: kid.into(),
                public_key: key.to_spki_der(),
                expires_at: None,
            });
        }
        let doc: Value = serde_json::from_str(&bundle.to_oidc_jwks().unwrap()).unwrap();
        let keys = doc["keys"].as_array().unwrap();
        assert_eq!(doc.as_object().unwrap().len(), 1, "only keys: {doc}");
        assert_eq!(keys.len(), 3);
        let ec = keys
            .iter()
            .find(|k| k["kid"] == signer.key_id())
            .expect("the signer's kid");
        let mut members: Vec<_> = ec.as_object().unwrap().keys().cloned().collect();
        members.sort();
        assert_eq!(members, ["alg", "crv", "kid", "kty", "use", "x", "y"]);
        assert_eq!(
            (&ec["kty"], &ec["crv"], &ec["alg"], &ec["use"]),
            (
                &Value::from("EC"),
                &Value::from("P-256"),
                &Value::from("ES256"),
                &Value::from("sig")
            )
        );
        let by_kid = |kid: &str| keys.iter().find(|k| k["kid"] == kid).unwrap().clone();
        assert_eq!(by_kid("p384")["alg"], "ES384");
        assert_eq!(by_kid("p384")["crv"], "P-384");
        let rsa_jwk = by_kid("rsa");
        assert_eq!(
            (&rsa_jwk["alg"], &rsa_jwk["kty"]),
            (&"RS256".into(), &"RSA".into())
        );
        assert_eq!(rsa_jwk["e"], "AQAB");
        assert!(rsa_jwk.get("crv").is_none());
        assert_eq!(bundle.jwt_algorithms(), ["ES256", "ES384", "RS256"]);

        // The keys are the same ones the SPIFFE form carries: read back as a JWT bundle (bare
        // entries are JWT authorities there; `sig` is not), the points match.
        let spiffe: Value = serde_json::from_str(&bundle.to_jwt_jwks().unwrap()).unwrap();
        assert_eq!(spiffe["keys"][0]["x"], keys[0]["x"]);
        assert_eq!(spiffe["keys"][0]["use"], "jwt-svid");
    }

    #[test]
    fn oidc_jwks_of_a_bundle_without_jwt_keys_is_empty_and_x509_only_is_left_out() {
        let bundle = TrustBundle::new(td());
        assert_eq!(bundle.to_oidc_jwks().unwrap(), r#"{"keys":[]}"#);
        assert!(bundle.jwt_algorithms().is_empty());
    }

    #[test]
    fn an_unreadable_jwt_authority_refuses_the_oidc_document() {
        let mut bundle = TrustBundle::new(td());
        bundle.add_jwt_authority(JwtAuthority {
            key_id: "bad".into(),
            public_key: vec![1, 2, 3],
            expires_at: None,
        });
        assert!(matches!(
            bundle.to_oidc_jwks(),
            Err(JwksError::UnencodableJwtAuthority { .. })
        ));
        assert!(bundle.jwt_algorithms().is_empty());
    }
}
