//! JWT-SVIDs: minting (ES256, the one algorithm Lanyard signs with) and validation against the
//! JWT authorities of the subject's own trust domain (every algorithm the JWT-SVID standard
//! allows that ring can verify).
//!
//! Validation order matters: the token is size-checked before any decoding, the signature is
//! checked with the key of the *subject's* trust domain before any other claim is trusted, and
//! only then are audience and times checked. Each refusal is a [`JwtError`] variant whose
//! `Display` is a metric label; [`JwtError::message`] is the human explanation.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::bundle::{BundleSet, JwtAuthority};
use crate::id::SpiffeId;
use crate::jwks::JwtPublicKey;

/// Longest token accepted, checked before any decoding.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;
/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
pub const CLOCK_SKEW_LEEWAY_SECS: i64 = 30;
/// Most audiences a minted token may name.
pub const MAX_AUDIENCES: usize = 64;

/// A JWS `alg` the JWT-SVID standard allows. Anything else (`none`, `HS*`, ...) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Rs256,
    Rs384,
    Rs512,
    Es256,
    Es384,
    Es512,
    Ps256,
    Ps384,
    Ps512,
}

impl Algorithm {
    /// Parses a header `alg`; `None` for every value the standard does not allow.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            "ES512" => Self::Es512,
            "PS256" => Self::Ps256,
            "PS384" => Self::Ps384,
            "PS512" => Self::Ps512,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::Es512 => "ES512",
            Self::Ps256 => "PS256",
            Self::Ps384 => "PS384",
            Self::Ps512 => "PS512",
        }
    }
}

/// Why a JWT-SVID was refused. `Display` is the metric label; see [`JwtError::message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// Longer than [`MAX_TOKEN_LEN`].
    TooLong {
        len: usize,
    },
    /// Not three base64url parts of JSON objects.
    Malformed {
        reason: &'static str,
    },
    /// `alg` missing or not one the standard allows (`none`, `HS256`, ...).
    UnsupportedAlgorithm {
        alg: String,
    },
    /// `typ` present and neither `JWT` nor `JOSE`.
    BadType {
        typ: String,
    },
    /// A `crit` header: we understand no extensions, so must refuse (RFC 7515 4.1.11).
    CriticalHeader,
    MissingKeyId,
    MissingSubject,
    BadSubject {
        reason: String,
    },
    /// `sub` is a trust domain's own ID, which never names a workload.
    SubjectWithoutPath {
        subject: String,
    },
    /// No bundle for the subject's trust domain.
    NoBundle {
        trust_domain: String,
    },
    /// The subject's trust domain has no key with the header's `kid`.
    UnknownKeyId {
        kid: String,
        trust_domain: String,
    },
    /// The JWT authority's key has passed its `expires_at`.
    AuthorityExpired {
        kid: String,
    },
    /// The authority's key cannot be used (unparsable or unsupported SPKI).
    UnusableAuthorityKey {
        kid: String,
        reason: String,
    },
    /// `alg` does not fit the key named by `kid` (e.g. ES256 with an RSA key, ES512 always).
    AlgorithmKeyMismatch {
        alg: &'static str,
        kty: &'static str,
    },
    /// The signature does not verify.
    BadSignature,
    /// `aud` missing or an empty list.
    MissingAudience,
    /// `aud` neither a string nor an array of strings.
    MalformedAudience,
    /// `aud` does not contain the validator's audience.
    WrongAudience {
        expected: String,
    },
    MissingExpiry,
    /// A time claim that is not a number.
    MalformedTimeClaim {
        claim: &'static str,
    },
    Expired {
        expired_at: i64,
    },
    /// `nbf` is in the future.
    NotYetValid {
        not_before: i64,
    },
    /// `iat` is in the future.
    IssuedInFuture {
        issued_at: i64,
    },
}

impl JwtError {
    /// The short snake_case label, fit for a metric.
    pub fn label(&self) -> &'static str {
        match self {
            Self::TooLong { .. } => "too_long",
            Self::Malformed { .. } => "malformed",
            Self::UnsupportedAlgorithm { .. } => "unsupported_alg",
            Self::BadType { .. } => "bad_typ",
            Self::CriticalHeader => "crit_header",
            Self::MissingKeyId => "missing_kid",
            Self::MissingSubject => "missing_sub",
            Self::BadSubject { .. } => "bad_sub",
            Self::SubjectWithoutPath { .. } => "sub_without_path",
            Self::NoBundle { .. } => "no_bundle",
            Self::UnknownKeyId { .. } => "unknown_kid",
            Self::AuthorityExpired { .. } => "authority_expired",
            Self::UnusableAuthorityKey { .. } => "unusable_authority_key",
            Self::AlgorithmKeyMismatch { .. } => "alg_key_mismatch",
            Self::BadSignature => "bad_signature",
            Self::MissingAudience => "missing_aud",
            Self::MalformedAudience => "malformed_aud",
            Self::WrongAudience { .. } => "wrong_aud",
            Self::MissingExpiry => "missing_exp",
            Self::MalformedTimeClaim { .. } => "malformed_time_claim",
            Self::Expired { .. } => "expired",
            Self::NotYetValid { .. } => "not_yet_valid",
            Self::IssuedInFuture { .. } => "iat_in_future",
        }
    }

    /// A sentence for humans (logs, CLI output, gRPC status messages).
    pub fn message(&self) -> String {
        match self {
            Self::TooLong { len } => {
                format!("token is {len} bytes, more than the {MAX_TOKEN_LEN} allowed")
            }
            Self::Malformed { reason } => format!("token is not a JWS compact JWT: {reason}"),
            Self::UnsupportedAlgorithm { alg } => {
                format!("alg {alg:?} is not allowed for JWT-SVIDs (RS/ES/PS 256/384/512 only)")
            }
            Self::BadType { typ } => format!("typ {typ:?} is not allowed (absent, JWT or JOSE)"),
            Self::CriticalHeader => "token has a crit header, and no extension is supported".into(),
            Self::MissingKeyId => "token header has no kid".into(),
            Self::MissingSubject => "token has no sub claim".into(),
            Self::BadSubject { reason } => format!("sub is not a SPIFFE ID: {reason}"),
            Self::SubjectWithoutPath { subject } => {
                format!("sub {subject} is a trust domain ID, not a workload ID")
            }
            Self::NoBundle { trust_domain } => {
                format!("no trust bundle for the subject's trust domain {trust_domain}")
            }
            Self::UnknownKeyId { kid, trust_domain } => {
                format!("kid {kid:?} is not a JWT authority of trust domain {trust_domain}")
            }
            Self::AuthorityExpired { kid } => format!("JWT authority {kid:?} has expired"),
            Self::UnusableAuthorityKey { kid, reason } => {
                format!("JWT authority {kid:?} has an unusable key: {reason}")
            }
            Self::AlgorithmKeyMismatch { alg, kty } => {
                format!("alg {alg} cannot be verified with the authority's {kty} key")
            }
            Self::BadSignature => "signature does not verify".into(),
            Self::MissingAudience => "aud is missing or empty".into(),
            Self::MalformedAudience => "aud is neither a string nor an array of strings".into(),
            Self::WrongAudience { expected } => format!("aud does not contain {expected:?}"),
            Self::MissingExpiry => "token has no exp claim".into(),
            Self::MalformedTimeClaim { claim } => format!("{claim} is not a number"),
            Self::Expired { expired_at } => format!("token expired at unix time {expired_at}"),
            Self::NotYetValid { not_before } => {
                format!("token is not valid before unix time {not_before}")
            }
            Self::IssuedInFuture { issued_at } => {
                format!("token claims to be issued in the future (unix time {issued_at})")
            }
        }
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl std::error::Error for JwtError {}

/// Why a token could not be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    #[error("a JWT-SVID needs at least one audience")]
    NoAudience,
    #[error("audience {index} is empty")]
    EmptyAudience { index: usize },
    #[error("more than {MAX_AUDIENCES} audiences")]
    TooManyAudiences,
    #[error("{subject} is a trust domain ID; JWT-SVIDs are for workload IDs")]
    SubjectWithoutPath { subject: String },
    #[error("the TTL must be at least one second")]
    TtlTooShort,
    #[error("the clock or TTL is out of range for a JWT time")]
    TimeOutOfRange,
    #[error("the token would be {len} bytes, more than the {MAX_TOKEN_LEN} validators accept")]
    TooLong { len: usize },
    #[error("ECDSA signing failed")]
    Signing,
}

/// Why a signing key could not be made or loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignerError {
    #[error("could not generate an ECDSA P-256 key")]
    Generate,
    #[error("not a PKCS#8 ECDSA P-256 private key")]
    BadKey,
}

/// Signs JWT-SVIDs with an ECDSA P-256 key (ES256).
pub struct JwtSigner {
    key_pair: EcdsaKeyPair,
    key_id: String,
    public_key: Vec<u8>,
    rng: SystemRandom,
}

impl JwtSigner {
    /// Generates a new key; returns the signer and the PKCS#8 to persist (zeroised on drop).
    pub fn generate() -> Result<(Self, Zeroizing<Vec<u8>>), SignerError> {
        let rng = SystemRandom::new();
        let document =
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| SignerError::Generate)?;
        let pkcs8 = Zeroizing::new(document.as_ref().to_vec());
        let signer = Self::from_pkcs8(&pkcs8)?;
        Ok((signer, pkcs8))
    }

    /// Loads a PKCS#8 ECDSA P-256 key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, SignerError> {
        let rng = SystemRandom::new();
        let key_pair =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
                .map_err(|_| SignerError::BadKey)?;
        let public_key = JwtPublicKey::EcP256 {
            point: key_pair.public_key().as_ref().to_vec(),
        }
        .to_spki_der();
        Ok(Self {
            key_id: key_id_for(&public_key),
            key_pair,
            public_key,
            rng,
        })
    }

    /// The `kid` this signer puts in its tokens; derived from the public key, so replicas
    /// sharing a key agree on it.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public key as SubjectPublicKeyInfo DER.
    pub fn public_key_spki(&self) -> &[u8] {
        &self.public_key
    }

    /// The bundle entry validators need for this signer's tokens.
    pub fn authority(&self) -> JwtAuthority {
        JwtAuthority {
            key_id: self.key_id.clone(),
            public_key: self.public_key.clone(),
            expires_at: None,
        }
    }

    /// Mints a JWT-SVID for `subject`: header `{"alg":"ES256","kid":..,"typ":"JWT"}`, claims
    /// `sub`, `aud` (always an array), `exp` (`now + ttl`) and `iat` (`now`).
    pub fn mint(
        &self,
        subject: &SpiffeId,
        audiences: &[String],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<String, MintError> {
        self.mint_with_issuer(subject, audiences, ttl, now, None)
    }

    /// As [`Self::mint`], with an `iss` claim when `issuer` is given (the server's
    /// `--jwt-issuer`, which OIDC relying parties match against their discovery URL).
    pub fn mint_with_issuer(
        &self,
        subject: &SpiffeId,
        audiences: &[String],
        ttl: Duration,
        now: SystemTime,
        issuer: Option<&str>,
    ) -> Result<String, MintError> {
        if subject.is_trust_domain_id() {
            return Err(MintError::SubjectWithoutPath {
                subject: subject.to_string(),
            });
        }
        if audiences.is_empty() {
            return Err(MintError::NoAudience);
        }
        if audiences.len() > MAX_AUDIENCES {
            return Err(MintError::TooManyAudiences);
        }
        if let Some(index) = audiences.iter().position(String::is_empty) {
            return Err(MintError::EmptyAudience { index });
        }
        if ttl < Duration::from_secs(1) {
            return Err(MintError::TtlTooShort);
        }
        let issued_at = unix_seconds(now)
            .filter(|&secs| secs >= 0)
            .ok_or(MintError::TimeOutOfRange)?;
        let expires_at = i64::try_from(ttl.as_secs())
            .ok()
            .and_then(|ttl| issued_at.checked_add(ttl))
            .ok_or(MintError::TimeOutOfRange)?;

        let header = serde_json::json!({"alg": "ES256", "kid": self.key_id, "typ": "JWT"});
        let mut claims = serde_json::json!({
            "sub": subject.to_string(),
            "aud": audiences,
            "exp": expires_at,
            "iat": issued_at,
        });
        if let Some(issuer) = issuer {
            claims["iss"] = serde_json::Value::String(issuer.to_owned());
        }
        let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = self
            .key_pair
            .sign(&self.rng, token.as_bytes())
            .map_err(|_| MintError::Signing)?;
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.as_ref()));
        if token.len() > MAX_TOKEN_LEN {
            return Err(MintError::TooLong { len: token.len() });
        }
        Ok(token)
    }
}

impl fmt::Debug for JwtSigner {
    // Never the key: only what names it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// The `kid` of a public key: base64url of the SHA-256 of its SubjectPublicKeyInfo DER.
pub fn key_id_for(spki_der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, spki_der))
}

/// A JWT-SVID that passed [`validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedJwt {
    /// The `sub` claim.
    pub spiffe_id: SpiffeId,
    /// The `aud` claim, always as a list.
    pub audiences: Vec<String>,
    /// The `exp` claim.
    pub expires_at: SystemTime,
    /// Every claim as received (the Workload API returns them as a protobuf Struct).
    pub claims: Map<String, Value>,
}

/// Validates a JWT-SVID for `audience` against the JWT authorities of its subject's trust
/// domain in `bundles`, at time `now`.
pub fn validate(
    token: &str,
    audience: &str,
    bundles: &BundleSet,
    now: SystemTime,
) -> Result<ValidatedJwt, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::TooLong { len: token.len() });
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed {
            reason: "not three dot-separated parts",
        });
    };
    let header = decode_json_object(header_b64, "header")?;
    let claims = decode_json_object(claims_b64, "claims")?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| JwtError::Malformed {
            reason: "signature is not base64url",
        })?;

    // Header.
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => Algorithm::from_name(alg)
            .ok_or_else(|| JwtError::UnsupportedAlgorithm { alg: alg.clone() })?,
        Some(other) => {
            return Err(JwtError::UnsupportedAlgorithm {
                alg: other.to_string(),
            });
        }
        None => {
            return Err(JwtError::UnsupportedAlgorithm { alg: String::new() });
        }
    };
    match header.get("typ") {
        None => {}
        Some(Value::String(typ)) if typ == "JWT" || typ == "JOSE" => {}
        Some(other) => {
            return Err(JwtError::BadType {
                typ: other
                    .as_str()
                    .map_or_else(|| other.to_string(), str::to_owned),
            });
        }
    }
    if header.contains_key("crit") {
        return Err(JwtError::CriticalHeader);
    }
    let kid = match header.get("kid") {
        Some(Value::String(kid)) if !kid.is_empty() => kid,
        _ => return Err(JwtError::MissingKeyId),
    };

    // The subject picks the only bundle the token may be verified against.
    let subject = match claims.get("sub") {
        Some(Value::String(sub)) => sub,
        Some(_) => {
            return Err(JwtError::BadSubject {
                reason: "not a string".into(),
            });
        }
        None => return Err(JwtError::MissingSubject),
    };
    let spiffe_id = SpiffeId::parse(subject).map_err(|e| JwtError::BadSubject {
        reason: e.to_string(),
    })?;
    if spiffe_id.is_trust_domain_id() {
        return Err(JwtError::SubjectWithoutPath {
            subject: spiffe_id.to_string(),
        });
    }
    let trust_domain = spiffe_id.trust_domain();
    let bundle = bundles
        .get(trust_domain)
        .ok_or_else(|| JwtError::NoBundle {
            trust_domain: trust_domain.to_string(),
        })?;
    let authority = bundle
        .jwt_authority(kid)
        .ok_or_else(|| JwtError::UnknownKeyId {
            kid: kid.clone(),
            trust_domain: trust_domain.to_string(),
        })?;
    // A clock beyond i64 seconds is treated as the far future: everything has expired.
    let now_secs = unix_seconds(now).unwrap_or(i64::MAX);
    if authority
        .expires_at
        .is_some_and(|expires_at| expires_at.saturating_add(CLOCK_SKEW_LEEWAY_SECS) < now_secs)
    {
        return Err(JwtError::AuthorityExpired { kid: kid.clone() });
    }
    let signed = &token[..header_b64.len() + 1 + claims_b64.len()];
    verify_signature(alg, authority, signed.as_bytes(), &signature)?;

    // Claims, now that they are known to come from the authority.
    let audiences = audiences(&claims)?;
    if !audiences.iter().any(|a| a == audience) {
        return Err(JwtError::WrongAudience {
            expected: audience.to_owned(),
        });
    }
    let expires_at = time_claim(&claims, "exp")?.ok_or(JwtError::MissingExpiry)?;
    if expires_at.saturating_add(CLOCK_SKEW_LEEWAY_SECS) < now_secs {
        return Err(JwtError::Expired {
            expired_at: expires_at,
        });
    }
    if let Some(not_before) = time_claim(&claims, "nbf")?
        && not_before > now_secs.saturating_add(CLOCK_SKEW_LEEWAY_SECS)
    {
        return Err(JwtError::NotYetValid { not_before });
    }
    if let Some(issued_at) = time_claim(&claims, "iat")?
        && issued_at > now_secs.saturating_add(CLOCK_SKEW_LEEWAY_SECS)
    {
        return Err(JwtError::IssuedInFuture { issued_at });
    }
    Ok(ValidatedJwt {
        spiffe_id,
        audiences,
        expires_at: from_unix_seconds(expires_at),
        claims,
    })
}

fn decode_json_object(part: &str, what: &'static str) -> Result<Map<String, Value>, JwtError> {
    let (not_base64, not_object) = match what {
        "header" => ("header is not base64url", "header is not a JSON object"),
        _ => ("claims are not base64url", "claims are not a JSON object"),
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed { reason: not_base64 })?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtError::Malformed { reason: not_object }),
    }
}

fn verify_signature(
    alg: Algorithm,
    authority: &JwtAuthority,
    message: &[u8],
    signature: &[u8],
) -> Result<(), JwtError> {
    let key = JwtPublicKey::from_spki_der(&authority.public_key).map_err(|e| {
        JwtError::UnusableAuthorityKey {
            kid: authority.key_id.clone(),
            reason: e.to_string(),
        }
    })?;
    let mismatch = || JwtError::AlgorithmKeyMismatch {
        alg: alg.name(),
        kty: key.kty(),
    };
    let verified = match (&key, alg) {
        (JwtPublicKey::EcP256 { point }, Algorithm::Es256) => {
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(message, signature)
        }
        (JwtPublicKey::EcP384 { point }, Algorithm::Es384) => {
            signature::UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                .verify(message, signature)
        }
        (JwtPublicKey::Rsa { modulus, exponent }, _) => {
            let parameters: &signature::RsaParameters = match alg {
                Algorithm::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                Algorithm::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                Algorithm::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                Algorithm::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
                Algorithm::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
                Algorithm::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
                _ => return Err(mismatch()),
            };
            signature::RsaPublicKeyComponents {
                n: modulus,
                e: exponent,
            }
            .verify(parameters, message, signature)
        }
        // ES512 lands here too: ring has no P-521, and we never accept a P-521 key.
        _ => return Err(mismatch()),
    };
    verified.map_err(|_| JwtError::BadSignature)
}

fn audiences(claims: &Map<String, Value>) -> Result<Vec<String>, JwtError> {
    let audiences = match claims.get("aud") {
        None => return Err(JwtError::MissingAudience),
        Some(Value::String(aud)) => vec![aud.clone()],
        Some(Value::Array(values)) => values
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or(JwtError::MalformedAudience)?,
        Some(_) => return Err(JwtError::MalformedAudience),
    };
    if audiences.is_empty() {
        return Err(JwtError::MissingAudience);
    }
    Ok(audiences)
}

/// A NumericDate claim in whole seconds (fractions are allowed by RFC 7519 and truncated).
fn time_claim(claims: &Map<String, Value>, claim: &'static str) -> Result<Option<i64>, JwtError> {
    match claims.get(claim) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite() && f.abs() < 1e15)
                    .map(|f| f as i64)
            })
            .map(Some)
            .ok_or(JwtError::MalformedTimeClaim { claim }),
        Some(_) => Err(JwtError::MalformedTimeClaim { claim }),
    }
}

/// Seconds since the Unix epoch, negative before it; `None` past the range of `i64`.
fn unix_seconds(time: SystemTime) -> Option<i64> {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).ok(),
        Err(before) => i64::try_from(before.duration().as_secs()).ok().map(|s| -s),
    }
}

fn from_unix_seconds(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH,
    }
}
