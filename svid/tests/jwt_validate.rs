//! JWT-SVID minting and validation: every JWT-SVID line of spec/svid.md, accepted and refused.
//!
//! Tokens with arbitrary headers and claims are built here by hand and signed with ring, so
//! each refusal is shown on a token that is otherwise valid.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lanyard_svid::jwks::JwtPublicKey;
use lanyard_svid::jwt::{
    self, CLOCK_SKEW_LEEWAY_SECS, JwtError, JwtSigner, MAX_TOKEN_LEN, MintError,
};
use lanyard_svid::{BundleSet, JwtAuthority, SpiffeId, TrustBundle, TrustDomain};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};

const AUDIENCE: &str = "spiffe://example.org/db";
const RSA_PKCS8_PEM: &[u8] = include_bytes!("data/test-only-rsa-2048-pkcs8.pem");

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn now_secs() -> i64 {
    now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn td(name: &str) -> TrustDomain {
    TrustDomain::parse(name).unwrap()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// A signing key of any kind the validator supports, and how to sign with it.
enum TestKey {
    Ec(EcdsaKeyPair, JwtPublicKey),
    Rsa(RsaKeyPair),
}

impl TestKey {
    fn p256() -> Self {
        Self::ec(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, true)
    }

    fn p384() -> Self {
        Self::ec(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, false)
    }

    fn ec(alg: &'static signature::EcdsaSigningAlgorithm, p256: bool) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let public = if p256 {
            JwtPublicKey::EcP256 { point }
        } else {
            JwtPublicKey::EcP384 { point }
        };
        Self::Ec(pair, public)
    }

    fn rsa() -> Self {
        let der = PrivatePkcs8KeyDer::from_pem_slice(RSA_PKCS8_PEM).unwrap();
        Self::Rsa(RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap())
    }

    fn public(&self) -> JwtPublicKey {
        match self {
            Self::Ec(_, public) => public.clone(),
            Self::Rsa(pair) => {
                let c: signature::RsaPublicKeyComponents<Vec<u8>> = pair.public().into();
                JwtPublicKey::Rsa {
                    modulus: c.n,
                    exponent: c.e,
                }
            }
        }
    }

    fn authority(&self, kid: &str) -> JwtAuthority {
        JwtAuthority {
            key_id: kid.into(),
            public_key: self.public().to_spki_der(),
            expires_at: None,
        }
    }

    /// Signs with the scheme `alg` names (the key must fit it).
    fn sign(&self, alg: &str, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Self::Ec(pair, _) => pair.sign(&rng, message).unwrap().as_ref().to_vec(),
            Self::Rsa(pair) => {
                let padding: &'static dyn signature::RsaEncoding = match alg {
                    "RS256" => &signature::RSA_PKCS1_SHA256,
                    "RS384" => &signature::RSA_PKCS1_SHA384,
                    "RS512" => &signature::RSA_PKCS1_SHA512,
                    "PS256" => &signature::RSA_PSS_SHA256,
                    "PS384" => &signature::RSA_PSS_SHA384,
                    "PS512" => &signature::RSA_PSS_SHA512,
                    other => panic!("no RSA scheme for {other}"),
                };
                let mut sig = vec![0; pair.public().modulus_len()];
                pair.sign(padding, &rng, message, &mut sig).unwrap();
                sig
            }
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A compact JWS of `header` and `claims`, signed by `key` as `sign_as` says.
fn token_signed_as(key: &TestKey, sign_as: &str, header: &Value, claims: &Value) -> String {
    let signed = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = key.sign(sign_as, signed.as_bytes());
    format!("{signed}.{}", b64(&sig))
}

fn token(key: &TestKey, header: &Value, claims: &Value) -> String {
    let alg = header["alg"].as_str().unwrap_or("ES256");
    token_signed_as(key, alg, header, claims)
}

fn header(alg: &str, kid: &str) -> Value {
    json!({"alg": alg, "kid": kid, "typ": "JWT"})
}

fn claims() -> Value {
    json!({
        "sub": "spiffe://example.org/web",
        "aud": [AUDIENCE],
        "exp": now_secs() + 300,
        "iat": now_secs(),
    })
}

/// Bundles for example.org (trusting `key` as `kid`) and other.org (a key of its own).
fn bundles_trusting(key: &TestKey, kid: &str) -> BundleSet {
    let mut example = TrustBundle::new(td("example.org"));
    example.add_jwt_authority(key.authority(kid));
    let mut other = TrustBundle::new(td("other.org"));
    other.add_jwt_authority(TestKey::p256().authority("other-kid"));
    let mut set = BundleSet::from(example);
    set.insert(other);
    set
}

fn refusal(token: &str, bundles: &BundleSet) -> JwtError {
    jwt::validate(token, AUDIENCE, bundles, now()).expect_err("token must be refused")
}

// --- Minting ---------------------------------------------------------------------------------

#[test]
fn minted_token_validates_with_all_claims() {
    let (signer, _pkcs8) = JwtSigner::generate().unwrap();
    let bundles = BundleSet::from({
        let mut b = TrustBundle::new(td("example.org"));
        b.add_jwt_authority(signer.authority());
        b
    });
    let audiences = vec![AUDIENCE.to_owned(), "other-aud".to_owned()];
    let token = signer
        .mint(
            &id("spiffe://example.org/web"),
            &audiences,
            Duration::from_secs(300),
            now(),
        )
        .unwrap();
    let valid = jwt::validate(&token, AUDIENCE, &bundles, now()).unwrap();
    assert_eq!(valid.spiffe_id, id("spiffe://example.org/web"));
    assert_eq!(valid.audiences, audiences);
    assert_eq!(valid.expires_at, now() + Duration::from_secs(300));
    assert_eq!(valid.claims["iat"], json!(now_secs()));
    assert_eq!(valid.claims["sub"], json!("spiffe://example.org/web"));
    // Another audience in the list validates too; one not in it does not.
    assert!(jwt::validate(&token, "other-aud", &bundles, now()).is_ok());
    assert!(matches!(
        jwt::validate(&token, "third", &bundles, now()),
        Err(JwtError::WrongAudience { .. })
    ));
}

#[test]
fn minted_header_and_claims_have_the_lanyard_shape() {
    let (signer, _) = JwtSigner::generate().unwrap();
    let token = signer
        .mint(
            &id("spiffe://example.org/web"),
            &[AUDIENCE.into()],
            Duration::from_secs(60),
            now(),
        )
        .unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(
        header,
        json!({"alg": "ES256", "kid": signer.key_id(), "typ": "JWT"})
    );
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(
        claims,
        json!({
            "sub": "spiffe://example.org/web",
            "aud": [AUDIENCE],
            "exp": now_secs() + 60,
            "iat": now_secs(),
        })
    );
    // ES256 signatures are the fixed-size r || s form.
    assert_eq!(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().len(), 64);
}

#[test]
fn key_id_is_derived_from_the_public_key() {
    let (a, pkcs8) = JwtSigner::generate().unwrap();
    let a_again = JwtSigner::from_pkcs8(&pkcs8).unwrap();
    let (b, _) = JwtSigner::generate().unwrap();
    assert_eq!(a.key_id(), a_again.key_id());
    assert_eq!(a.authority(), a_again.authority());
    assert_ne!(a.key_id(), b.key_id());
    assert_eq!(a.key_id(), jwt::key_id_for(a.public_key_spki()));
    // A key a replica loaded validates tokens the other minted.
    let token = a
        .mint(
            &id("spiffe://example.org/web"),
            &[AUDIENCE.into()],
            Duration::from_secs(60),
            now(),
        )
        .unwrap();
    let bundles = BundleSet::from({
        let mut bundle = TrustBundle::new(td("example.org"));
        bundle.add_jwt_authority(a_again.authority());
        bundle
    });
    assert!(jwt::validate(&token, AUDIENCE, &bundles, now()).is_ok());
}

#[test]
fn signer_debug_shows_no_key() {
    let (signer, pkcs8) = JwtSigner::generate().unwrap();
    let debug = format!("{signer:?}");
    assert!(debug.contains(signer.key_id()), "{debug}");
    assert!(!debug.contains(&b64(&pkcs8)), "{debug}");
    assert!(!debug.to_lowercase().contains("pair"), "{debug}");
}

#[test]
fn from_pkcs8_refuses_other_keys() {
    assert!(JwtSigner::from_pkcs8(b"not a key").is_err());
    let rsa = PrivatePkcs8KeyDer::from_pem_slice(RSA_PKCS8_PEM).unwrap();
    assert!(JwtSigner::from_pkcs8(rsa.secret_pkcs8_der()).is_err());
}

#[test]
fn mint_refuses_bad_requests() {
    let (signer, _) = JwtSigner::generate().unwrap();
    let web = id("spiffe://example.org/web");
    let ttl = Duration::from_secs(60);
    assert_eq!(
        signer.mint(&web, &[], ttl, now()),
        Err(MintError::NoAudience)
    );
    assert_eq!(
        signer.mint(&web, &["a".into(), String::new()], ttl, now()),
        Err(MintError::EmptyAudience { index: 1 })
    );
    assert_eq!(
        signer.mint(&web, &vec!["a".to_owned(); 65], ttl, now()),
        Err(MintError::TooManyAudiences)
    );
    assert!(matches!(
        signer.mint(&id("spiffe://example.org"), &["a".into()], ttl, now()),
        Err(MintError::SubjectWithoutPath { .. })
    ));
    assert_eq!(
        signer.mint(&web, &["a".into()], Duration::ZERO, now()),
        Err(MintError::TtlTooShort)
    );
    assert_eq!(
        signer.mint(
            &web,
            &["a".into()],
            ttl,
            UNIX_EPOCH - Duration::from_secs(1)
        ),
        Err(MintError::TimeOutOfRange)
    );
    assert!(matches!(
        signer.mint(&web, &vec!["a".repeat(2000); 40], ttl, now()),
        Err(MintError::TooLong { .. })
    ));
}

// --- Algorithms ------------------------------------------------------------------------------

#[test]
fn every_allowed_rsa_algorithm_verifies() {
    let key = TestKey::rsa();
    let bundles = bundles_trusting(&key, "rsa");
    for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
        let token = token(&key, &header(alg, "rsa"), &claims());
        let valid = jwt::validate(&token, AUDIENCE, &bundles, now())
            .unwrap_or_else(|e| panic!("{alg}: {}", e.message()));
        assert_eq!(valid.spiffe_id, id("spiffe://example.org/web"));
    }
}

#[test]
fn rsa_signature_under_another_algorithm_is_refused() {
    let key = TestKey::rsa();
    let bundles = bundles_trusting(&key, "rsa");
    for (claimed, used) in [("PS256", "RS256"), ("RS256", "PS256"), ("RS384", "RS256")] {
        let token = token_signed_as(&key, used, &header(claimed, "rsa"), &claims());
        assert_eq!(
            refusal(&token, &bundles),
            JwtError::BadSignature,
            "{claimed}/{used}"
        );
    }
}

#[test]
fn es384_verifies_with_a_p384_key() {
    let key = TestKey::p384();
    let bundles = bundles_trusting(&key, "p384");
    let token = token(&key, &header("ES384", "p384"), &claims());
    assert!(jwt::validate(&token, AUDIENCE, &bundles, now()).is_ok());
    // The same key claimed as ES256 does not fit.
    let token = token_signed_as(&key, "ES384", &header("ES256", "p384"), &claims());
    assert!(matches!(
        refusal(&token, &bundles),
        JwtError::AlgorithmKeyMismatch {
            alg: "ES256",
            kty: "EC"
        }
    ));
}

#[test]
fn algorithm_must_fit_the_key() {
    let rsa = TestKey::rsa();
    let bundles = bundles_trusting(&rsa, "rsa");
    let es_with_rsa = token_signed_as(&rsa, "RS256", &header("ES256", "rsa"), &claims());
    assert!(matches!(
        refusal(&es_with_rsa, &bundles),
        JwtError::AlgorithmKeyMismatch {
            alg: "ES256",
            kty: "RSA"
        }
    ));
    let ec = TestKey::p256();
    let bundles = bundles_trusting(&ec, "ec");
    let rs_with_ec = token_signed_as(&ec, "ES256", &header("RS256", "ec"), &claims());
    assert!(matches!(
        refusal(&rs_with_ec, &bundles),
        JwtError::AlgorithmKeyMismatch {
            alg: "RS256",
            kty: "EC"
        }
    ));
    // ES512 is allowed by the standard, but no P-521 key is ever trusted.
    let es512 = token_signed_as(&ec, "ES256", &header("ES512", "ec"), &claims());
    assert!(matches!(
        refusal(&es512, &bundles),
        JwtError::AlgorithmKeyMismatch { alg: "ES512", .. }
    ));
}

#[test]
fn alg_none_and_hmac_are_refused() {
    let key = TestKey::p256();
    let bundles = bundles_trusting(&key, "k");
    let unsigned = format!(
        "{}.{}.",
        b64(header("none", "k").to_string().as_bytes()),
        b64(claims().to_string().as_bytes())
    );
    assert_eq!(
        refusal(&unsigned, &bundles),
        JwtError::UnsupportedAlgorithm { alg: "none".into() }
    );
    for alg in ["HS256", "HS384", "HS512", "EdDSA", "es256", ""] {
        let token = token_signed_as(&key, "ES256", &header(alg, "k"), &claims());
        assert_eq!(
            refusal(&token, &bundles).label(),
            "unsupported_alg",
            "{alg:?}"
        );
    }
    let no_alg = token_signed_as(&key, "ES256", &json!({"kid": "k"}), &claims());
    assert_eq!(refusal(&no_alg, &bundles).label(), "unsupported_alg");
}

// --- Header ----------------------------------------------------------------------------------

#[test]
fn typ_may_be_absent_jwt_or_jose_only() {
    let key = TestKey::p256();
    let bundles = bundles_trusting(&key, "k");
    for typ in [None, Some("JWT"), Some("JOSE")] {
        let mut h = json!({"alg": "ES256", "kid": "k"});
        if let Some(typ) = typ {
            h["typ"] = typ.into();
        }
        let token = token(&key, &h, &claims());
        assert!(
            jwt::validate(&token, AUDIENCE, &bundles, now()).is_ok(),
            "{typ:?}"
        );
    }
    for typ in [json!("at+jwt"), json!("jwt"), json!(1)] {
        let h = json!({"alg": "ES256", "kid": "k", "typ": typ});
        let token = token(&key, &h, &claims());
        assert_eq!(refusal(&token, &bundles).label(), "bad_typ", "{typ}");
    }
}

#[test]
fn kid_is_required_and_must_name_a_key_of_the_subjects_domain() {
    let key = TestKey::p256();
    let bundles = bundles_trusting(&key, "k");
    let no_kid = token(&key, &json!({"alg": "ES256", "typ": "JWT"}), &claims());
    assert_eq!(refusal(&no_kid, &bundles), JwtError::MissingKeyId);
    let empty_kid = token(&key, &header("ES256", ""), &claims());
    assert_eq!(refusal(&empty_kid, &bundles), JwtError::MissingKeyId);
    let wrong_kid = token(&key, &header("ES256", "nope"), &claims());
    assert!(matches!(
        refusal(&wrong_kid, &bundles),
        JwtError::UnknownKeyId { .. }
    ));
}

#[test]
fn another_domains_key_is_refused() {
    // Signed by example.org's key, claiming to be other.org's workload.
    let key = TestKey::p256();
    let bundles = bundles_trusting(&key, "k");
    let mut c = claims();
    c["sub"] = json!("spiffe://other.org/web");
    let token = token(&key, &header("ES256", "k"), &c);
    assert_eq!(
        refusal(&token, &bundles),
        JwtError::UnknownKeyId {
            kid: "k".into(),
            trust_domain: "other.org".into()
        }
    );
    // Even when other.org happens to publish the same kid, its key is another key.
    let mut other = TrustBundle::new(td("other.org"));
    other.add_jwt_authority(TestKey::p256().authority("k"));
    let mut bundles = bundles;
    bundles.insert(other);
    assert_eq!(refusal(&token, &bundles), JwtError::BadSignature);
}

#[test]
fn no_bundle_for_the_subjects_domain_is_refused() {
    let key = TestKey::p256();
    let bundles = bundles_trusting(&key, "k");
    let mut c = claims();
    c["sub"] = json!("spiffe://unknown.org/web");
    let token = token(&key, &header("ES256", "k"), &c);
    assert_eq!(
        refusal(&token, &bundles),
        JwtError::NoBundle {
            trust_domain: "unknown.org".into()
        }
    );
}

#[test]
fn crit_header_is_refused() {
    let key = TestKey::p256();
    let bundles = bundles_trusting(&key, "k");
    let h = json!({"alg": "ES256", "kid": "k", "crit": ["exp"]});
    assert_eq!(
        refusal(&token(&key, &h, &claims()), &bundles),
        JwtError::CriticalHeader
    );
}

#[test]
fn expired_authority_is_refused() {
    let key = TestKey::p256();
    let mut authority = key.authority("k");
    authority.expires_at = Some(now_secs() - CLOCK_SKEW_LEEWAY_SECS - 1);
    let bundles = BundleSet::from({
        let mut b = TrustBundle::new(td("example.org"));
        b.add_jwt_authority(authority);
        b
    });
    let token = token(&key, &header("ES256", "k"), &claims());
    assert!(matches!(
        refusal(&token, &bundles),
        JwtError::AuthorityExpired { .. }
    ));
}

// --- Signature -------------------------------------------------------------------------------

#[test]
fn forged_signatures_are_refused() {
    let key = TestKey::p256();
    let bundles = bundles_trusting(&key, "k");
    let good = token(&key, &header("ES256", "k"), &claims());
    assert!(jwt::validate(&good, AUDIENCE, &bundles, now()).is_ok());

    // A flipped signature bit.
    let (signed, sig) = good.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    sig[10] ^= 1;
    let flipped = format!("{signed}.{}", b64(&sig));
    assert_eq!(refusal(&flipped, &bundles), JwtError::BadSignature);

    // Signed by another key under the trusted kid.
    let impostor = token(&TestKey::p256(), &header("ES256", "k"), &claims());
    assert_eq!(refusal(&impostor, &bundles), JwtError::BadSignature);

    // Claims swapped after signing.
    let mut c = claims();
    c["aud"] = json!(["spiffe://example.org/db", "evil"]);
    let parts: Vec<&str> = good.split('.').collect();
    let swapped = format!(
        "{}.{}.{}",
        parts[0],
        b64(c.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(refusal(&swapped, &bundles), JwtError::BadSignature);

    // No signature at all.
    let empty = format!("{signed}.");
    assert_eq!(refusal(&empty, &bundles), JwtError::BadSignature);
}

// --- Claims ----------------------------------------------------------------------------------

fn refusal_for_claims(c: &Value) -> JwtError {
    let key = TestKey::p256();
    let bundles = bundles_trusting(&key, "k");
    refusal(&token(&key, &header("ES256", "k"), c), &bundles)
}

fn accepts_claims(c: &Value) -> bool {
    let key = TestKey::p256();
    let bundles = bundles_trusting(&key, "k");
    jwt::validate(
        &token(&key, &header("ES256", "k"), c),
        AUDIENCE,
        &bundles,
        now(),
    )
    .is_ok()
}

#[test]
fn sub_must_be_a_spiffe_id_with_a_path() {
    let mut c = claims();
    c.as_object_mut().unwrap().remove("sub");
    assert_eq!(refusal_for_claims(&c), JwtError::MissingSubject);
    for bad in [
        json!("https://example.org/web"),
        json!("web"),
        json!(7),
        json!("spiffe://example.org/a//b"),
    ] {
        c["sub"] = bad.clone();
        assert_eq!(refusal_for_claims(&c).label(), "bad_sub", "{bad}");
    }
    c["sub"] = json!("spiffe://example.org");
    assert_eq!(refusal_for_claims(&c).label(), "sub_without_path");
    // Input IDs compare the trust domain case-insensitively.
    c["sub"] = json!("spiffe://EXAMPLE.org/web");
    assert!(accepts_claims(&c));
}

#[test]
fn aud_is_required_non_empty_and_must_contain_the_audience() {
    let mut c = claims();
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(refusal_for_claims(&c), JwtError::MissingAudience);
    c["aud"] = json!([]);
    assert_eq!(refusal_for_claims(&c), JwtError::MissingAudience);
    c["aud"] = json!(["someone-else"]);
    assert_eq!(
        refusal_for_claims(&c),
        JwtError::WrongAudience {
            expected: AUDIENCE.into()
        }
    );
    c["aud"] = json!("someone-else");
    assert_eq!(refusal_for_claims(&c).label(), "wrong_aud");
    c["aud"] = json!(42);
    assert_eq!(refusal_for_claims(&c), JwtError::MalformedAudience);
    c["aud"] = json!([AUDIENCE, 42]);
    assert_eq!(refusal_for_claims(&c), JwtError::MalformedAudience);
    // A single string is a valid aud.
    c["aud"] = json!(AUDIENCE);
    assert!(accepts_claims(&c));
}

#[test]
fn exp_is_required_and_refused_when_past_the_leeway() {
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(refusal_for_claims(&c), JwtError::MissingExpiry);
    c["exp"] = json!("tomorrow");
    assert_eq!(refusal_for_claims(&c).label(), "malformed_time_claim");
    c["exp"] = json!(now_secs() - CLOCK_SKEW_LEEWAY_SECS - 1);
    assert!(matches!(refusal_for_claims(&c), JwtError::Expired { .. }));
    // Within the leeway: still accepted.
    c["exp"] = json!(now_secs() - CLOCK_SKEW_LEEWAY_SECS + 1);
    assert!(accepts_claims(&c));
    // NumericDate may carry a fraction.
    c["exp"] = json!(now_secs() as f64 + 10.5);
    assert!(accepts_claims(&c));
}

#[test]
fn nbf_and_iat_in_the_future_are_refused() {
    let mut c = claims();
    c["nbf"] = json!(now_secs() + CLOCK_SKEW_LEEWAY_SECS + 5);
    assert!(matches!(
        refusal_for_claims(&c),
        JwtError::NotYetValid { .. }
    ));
    c["nbf"] = json!(now_secs() + 5);
    assert!(accepts_claims(&c));
    let mut c = claims();
    c["iat"] = json!(now_secs() + CLOCK_SKEW_LEEWAY_SECS + 5);
    assert!(matches!(
        refusal_for_claims(&c),
        JwtError::IssuedInFuture { .. }
    ));
}

// --- Encoding --------------------------------------------------------------------------------

#[test]
fn malformed_tokens_are_refused() {
    let key = TestKey::p256();
    let bundles = bundles_trusting(&key, "k");
    let good = token(&key, &header("ES256", "k"), &claims());
    let parts: Vec<&str> = good.split('.').collect();
    let not_json = b64(b"not json");
    let array = b64(b"[1,2]");
    let cases = [
        String::new(),
        parts[..2].join("."),
        format!("{good}.extra"),
        format!("{}.{}.{}", not_json, parts[1], parts[2]),
        format!("{}.{}.{}", parts[0], array, parts[2]),
        format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}!", parts[0], parts[1], parts[2]),
    ];
    for case in cases {
        assert_eq!(refusal(&case, &bundles).label(), "malformed", "{case:?}");
    }
}

#[test]
fn oversized_tokens_are_refused_before_decoding() {
    let key = TestKey::p256();
    let bundles = bundles_trusting(&key, "k");
    let long = "a".repeat(MAX_TOKEN_LEN + 1);
    assert_eq!(
        refusal(&long, &bundles),
        JwtError::TooLong {
            len: MAX_TOKEN_LEN + 1
        }
    );
}

#[test]
fn labels_are_snake_case_and_messages_explain() {
    let key = TestKey::p256();
    let bundles = bundles_trusting(&key, "k");
    let mut c = claims();
    c["aud"] = json!(["x"]);
    let err = refusal(&token(&key, &header("ES256", "k"), &c), &bundles);
    assert_eq!(err.to_string(), "wrong_aud");
    assert!(err.message().contains(AUDIENCE), "{}", err.message());
    for err in [
        JwtError::BadSignature,
        JwtError::MissingExpiry,
        JwtError::TooLong { len: 1 },
        JwtError::IssuedInFuture { issued_at: 1 },
    ] {
        let label = err.to_string();
        assert!(
            label.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'),
            "{label}"
        );
        assert!(err.message().len() > label.len());
    }
}

#[test]
fn tokens_validate_against_a_bundle_read_from_its_jwks() {
    let (signer, _) = JwtSigner::generate().unwrap();
    let mut bundle = TrustBundle::new(td("example.org"));
    bundle.add_jwt_authority(signer.authority());
    let document = bundle.to_jwt_jwks().unwrap();
    let parsed = TrustBundle::from_jwt_jwks(td("example.org"), document.as_bytes()).unwrap();
    assert_eq!(parsed.jwt_authorities(), bundle.jwt_authorities());
    let token = signer
        .mint(
            &id("spiffe://example.org/web"),
            &[AUDIENCE.into()],
            Duration::from_secs(60),
            now(),
        )
        .unwrap();
    assert!(jwt::validate(&token, AUDIENCE, &BundleSet::from(parsed), now()).is_ok());
}
