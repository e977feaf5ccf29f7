//! The SPIFFE bundle document (JWK Set) and the Workload API's JWT-only JWK Set: every trust
//! bundle line of spec/svid.md, accepted and refused.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use lanyard_svid::jwks::{JwksError, JwtPublicKey, MAX_DOCUMENT_LEN, MAX_KEYS, PublicKeyError};
use lanyard_svid::jwt::JwtSigner;
use lanyard_svid::{JwtAuthority, TrustBundle, TrustDomain};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, PublicKeyData};
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};

const RSA_PKCS8_PEM: &str = include_str!("data/test-only-rsa-2048-pkcs8.pem");
const RSA_SPKI_DER: &[u8] = include_bytes!("data/test-only-rsa-2048-spki.der");

fn td() -> TrustDomain {
    TrustDomain::parse("example.org").unwrap()
}

fn ca(key: &KeyPair) -> CertificateDer<'static> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.self_signed(key).unwrap().der().clone()
}

fn p256_ca() -> CertificateDer<'static> {
    ca(&KeyPair::generate().unwrap())
}

fn rsa_key() -> KeyPair {
    KeyPair::from_pem_and_sign_algo(RSA_PKCS8_PEM, &rcgen::PKCS_RSA_SHA256).unwrap()
}

fn authority(kid: &str, spki: Vec<u8>) -> JwtAuthority {
    JwtAuthority {
        key_id: kid.into(),
        public_key: spki,
        expires_at: None,
    }
}

fn full_bundle() -> TrustBundle {
    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut bundle =
        TrustBundle::from_x509_authorities(td(), [p256_ca(), ca(&rsa_key()), ca(&p384)]);
    let (signer, _) = JwtSigner::generate().unwrap();
    bundle.add_jwt_authority(signer.authority());
    bundle.add_jwt_authority(authority("p384", p384.subject_public_key_info()));
    bundle.add_jwt_authority(authority("rsa", RSA_SPKI_DER.to_vec()));
    bundle.set_sequence(42);
    bundle.set_refresh_hint(Some(Duration::from_secs(300)));
    bundle
}

fn parse(document: &Value) -> Result<TrustBundle, JwksError> {
    TrustBundle::from_jwks(td(), document.to_string().as_bytes())
}

/// A valid `jwt-svid` entry for a fresh P-256 key.
fn jwt_entry(kid: &str) -> Value {
    let (signer, _) = JwtSigner::generate().unwrap();
    let mut bundle = TrustBundle::new(td());
    bundle.add_jwt_authority(authority(kid, signer.public_key_spki().to_vec()));
    let doc: Value = serde_json::from_str(&bundle.to_jwt_jwks().unwrap()).unwrap();
    doc["keys"][0].clone()
}

/// A valid `x509-svid` entry for a fresh P-256 CA.
fn x509_entry(cert: &CertificateDer<'_>) -> Value {
    let bundle = TrustBundle::from_x509_authorities(td(), [cert.clone().into_owned()]);
    let doc: Value = serde_json::from_str(&bundle.to_jwks().unwrap()).unwrap();
    doc["keys"][0].clone()
}

// --- Round trips and shape -------------------------------------------------------------------

#[test]
fn full_document_round_trips() {
    let bundle = full_bundle();
    let document = bundle.to_jwks().unwrap();
    let parsed = TrustBundle::from_jwks(td(), document.as_bytes()).unwrap();
    assert_eq!(parsed, bundle);
}

#[test]
fn document_has_the_spiffe_shape() {
    let bundle = full_bundle();
    let doc: Value = serde_json::from_str(&bundle.to_jwks().unwrap()).unwrap();
    assert_eq!(doc["spiffe_sequence"], json!(42));
    assert_eq!(doc["spiffe_refresh_hint"], json!(300));
    let keys = doc["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 6);
    let (x509, jwt): (Vec<&Value>, Vec<&Value>) =
        keys.iter().partition(|k| k["use"] == json!("x509-svid"));
    assert_eq!(x509.len(), 3);
    for (entry, cert) in x509.iter().zip(bundle.x509_authorities()) {
        assert!(entry.get("kid").is_none(), "{entry}");
        let x5c = entry["x5c"].as_array().unwrap();
        assert_eq!(x5c.len(), 1);
        // Standard base64 with padding, not base64url.
        assert_eq!(
            STANDARD.decode(x5c[0].as_str().unwrap()).unwrap(),
            cert.as_ref()
        );
    }
    assert_eq!(x509[0]["kty"], json!("EC"));
    assert_eq!(x509[0]["crv"], json!("P-256"));
    assert_eq!(x509[1]["kty"], json!("RSA"));
    assert_eq!(x509[2]["crv"], json!("P-384"));
    assert_eq!(jwt.len(), 3);
    for entry in &jwt {
        assert_eq!(entry["use"], json!("jwt-svid"));
        assert!(entry["kid"].is_string(), "{entry}");
    }
    let es256 = jwt[0];
    assert_eq!(es256["kty"], json!("EC"));
    assert_eq!(es256["crv"], json!("P-256"));
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(es256["x"].as_str().unwrap())
            .unwrap()
            .len(),
        32
    );
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(es256["y"].as_str().unwrap())
            .unwrap()
            .len(),
        32
    );
    let rsa = jwt[2];
    assert_eq!(rsa["kty"], json!("RSA"));
    assert_eq!(rsa["e"], json!("AQAB"));
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(rsa["n"].as_str().unwrap())
            .unwrap()
            .len(),
        256
    );
}

#[test]
fn refresh_hint_and_sequence_are_optional() {
    let doc = json!({"keys": [jwt_entry("a")]});
    let parsed = parse(&doc).unwrap();
    assert_eq!(parsed.sequence(), 0);
    assert_eq!(parsed.refresh_hint(), None);
    let written: Value = serde_json::from_str(&parsed.to_jwks().unwrap()).unwrap();
    assert!(written.get("spiffe_refresh_hint").is_none());
}

#[test]
fn empty_keys_revoke_everything() {
    let parsed = parse(&json!({"keys": [], "spiffe_sequence": 7})).unwrap();
    assert!(parsed.x509_authorities().is_empty());
    assert!(parsed.jwt_authorities().is_empty());
    assert_eq!(parsed.sequence(), 7);
}

#[test]
fn keys_are_required() {
    assert_eq!(
        parse(&json!({"spiffe_sequence": 1})),
        Err(JwksError::MissingKeys)
    );
    assert!(matches!(
        parse(&json!({"keys": {}})),
        Err(JwksError::Json(_))
    ));
    assert!(matches!(parse(&json!([])), Err(JwksError::Json(_))));
    assert!(matches!(
        TrustBundle::from_jwks(td(), b"{\"keys\": ["),
        Err(JwksError::Json(_))
    ));
}

#[test]
fn bad_sequence_and_refresh_hint_are_refused() {
    for doc in [
        json!({"keys": [], "spiffe_refresh_hint": -1}),
        json!({"keys": [], "spiffe_refresh_hint": "5m"}),
        json!({"keys": [], "spiffe_sequence": -3}),
    ] {
        assert!(matches!(parse(&doc), Err(JwksError::Json(_))), "{doc}");
    }
}

#[test]
fn hand_written_document_with_ec_and_rsa_keys_is_read() {
    let rsa = JwtPublicKey::from_spki_der(RSA_SPKI_DER).unwrap();
    let JwtPublicKey::Rsa { modulus, exponent } = &rsa else {
        panic!("not RSA: {rsa:?}");
    };
    let cert = p256_ca();
    let doc = json!({
        "keys": [
            {"use": "x509-svid", "kty": "EC", "x5c": [STANDARD.encode(&cert)]},
            {"use": "jwt-svid", "kty": "RSA", "kid": "r1",
             "n": URL_SAFE_NO_PAD.encode(modulus), "e": URL_SAFE_NO_PAD.encode(exponent)},
            // RFC 7518 allows (but does not need) a leading zero; it is dropped.
            {"use": "jwt-svid", "kty": "RSA", "kid": "r2",
             "n": URL_SAFE_NO_PAD.encode([&[0u8][..], modulus].concat()), "e": "AQAB"},
            jwt_entry("e1"),
        ],
        "spiffe_sequence": 3,
        "spiffe_refresh_hint": 60,
    });
    let parsed = parse(&doc).unwrap();
    assert_eq!(parsed.x509_authorities(), [cert]);
    assert_eq!(parsed.jwt_authority("r1").unwrap().public_key, RSA_SPKI_DER);
    assert_eq!(parsed.jwt_authority("r2").unwrap().public_key, RSA_SPKI_DER);
    assert!(parsed.jwt_authority("e1").is_some());
    assert_eq!(parsed.refresh_hint(), Some(Duration::from_secs(60)));
}

// --- Unknown entries are skipped -------------------------------------------------------------

#[test]
fn unknown_kty_use_and_curves_are_ignored() {
    let doc = json!({"keys": [
        {"use": "jwt-svid", "kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "AAAA"},
        {"use": "jwt-svid", "kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
        {"use": "x509-svid", "kty": "OKP", "x5c": ["not even base64"]},
        {"use": "enc", "kty": "EC", "kid": "other"},
        {"use": "something-new", "kty": "whatever"},
        {"kty": "EC", "kid": "no-use"},
        jwt_entry("known"),
    ]});
    let parsed = parse(&doc).unwrap();
    assert!(parsed.x509_authorities().is_empty());
    let kids: Vec<&str> = parsed
        .jwt_authorities()
        .iter()
        .map(|a| a.key_id.as_str())
        .collect();
    assert_eq!(kids, ["known"]);
}

// --- X.509 authorities -----------------------------------------------------------------------

#[test]
fn x5c_must_hold_exactly_one_certificate() {
    let (a, b) = (p256_ca(), p256_ca());
    let mut entry = x509_entry(&a);
    entry["x5c"] = json!([STANDARD.encode(&a), STANDARD.encode(&b)]);
    assert_eq!(
        parse(&json!({"keys": [entry.clone()]})),
        Err(JwksError::X5cCount { index: 0, count: 2 })
    );
    entry["x5c"] = json!([]);
    assert_eq!(
        parse(&json!({"keys": [entry.clone()]})),
        Err(JwksError::X5cCount { index: 0, count: 0 })
    );
    entry.as_object_mut().unwrap().remove("x5c");
    assert!(matches!(
        parse(&json!({"keys": [entry]})),
        Err(JwksError::MissingMember { member: "x5c", .. })
    ));
}

#[test]
fn x5c_must_be_standard_base64_of_a_certificate() {
    // Find a certificate whose base64 uses the characters the two alphabets disagree on.
    let cert = std::iter::repeat_with(p256_ca)
        .find(|c| STANDARD.encode(c).contains(['+', '/']))
        .unwrap();
    let mut entry = x509_entry(&cert);
    let url_safe = STANDARD.encode(&cert).replace('+', "-").replace('/', "_");
    entry["x5c"] = json!([url_safe]);
    assert!(matches!(
        parse(&json!({"keys": [entry.clone()]})),
        Err(JwksError::BadMember { member: "x5c", .. })
    ));
    entry["x5c"] = json!([STANDARD.encode(b"not a certificate")]);
    assert!(matches!(
        parse(&json!({"keys": [entry.clone()]})),
        Err(JwksError::Certificate { index: 0, .. })
    ));
    entry["x5c"] = json!([1]);
    assert!(matches!(
        parse(&json!({"keys": [entry]})),
        Err(JwksError::BadMember { member: "x5c", .. })
    ));
}

#[test]
fn x509_key_members_must_match_the_certificate() {
    let mut entry = x509_entry(&p256_ca());
    let other = x509_entry(&p256_ca());
    entry["x"] = other["x"].clone();
    entry["y"] = other["y"].clone();
    assert_eq!(
        parse(&json!({"keys": [entry]})),
        Err(JwksError::KeyMismatch { index: 0 })
    );
    // An RSA CA cannot be declared an EC key, with or without key members.
    let mut entry = x509_entry(&ca(&rsa_key()));
    entry["kty"] = json!("EC");
    let bare = json!({"use": "x509-svid", "kty": "EC", "x5c": entry["x5c"].clone()});
    assert_eq!(
        parse(&json!({"keys": [bare]})),
        Err(JwksError::KeyMismatch { index: 0 })
    );
    entry["crv"] = other["crv"].clone();
    entry["x"] = other["x"].clone();
    entry["y"] = other["y"].clone();
    assert_eq!(
        parse(&json!({"keys": [entry]})),
        Err(JwksError::KeyMismatch { index: 0 })
    );
}

#[test]
fn x509_certificate_with_an_unsupported_key_is_refused_under_a_known_kty() {
    let ed25519 = ca(&KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap());
    let entry = json!({"use": "x509-svid", "kty": "EC", "x5c": [STANDARD.encode(&ed25519)]});
    assert_eq!(
        parse(&json!({"keys": [entry]})),
        Err(JwksError::KeyMismatch { index: 0 })
    );
    // Under its own (unknown to us) kty it is skipped, as the standard asks.
    let entry = json!({"use": "x509-svid", "kty": "OKP", "x5c": [STANDARD.encode(&ed25519)]});
    assert!(
        parse(&json!({"keys": [entry]}))
            .unwrap()
            .x509_authorities()
            .is_empty()
    );
}

#[test]
fn x509_entry_kid_is_tolerated_on_input_and_never_written() {
    let cert = p256_ca();
    let mut entry = x509_entry(&cert);
    entry["kid"] = json!("ignored");
    let parsed = parse(&json!({"keys": [entry]})).unwrap();
    assert_eq!(parsed.x509_authorities(), [cert]);
    assert!(!parsed.to_jwks().unwrap().contains("kid"));
}

// --- JWT authorities -------------------------------------------------------------------------

#[test]
fn jwt_entry_without_kid_is_refused() {
    let mut entry = jwt_entry("k");
    entry.as_object_mut().unwrap().remove("kid");
    assert_eq!(
        parse(&json!({"keys": [entry.clone()]})),
        Err(JwksError::MissingMember {
            index: 0,
            use_: "jwt-svid",
            member: "kid"
        })
    );
    entry["kid"] = json!("");
    assert!(matches!(
        parse(&json!({"keys": [entry.clone()]})),
        Err(JwksError::BadMember { member: "kid", .. })
    ));
    entry["kid"] = json!(5);
    assert!(matches!(
        parse(&json!({"keys": [entry]})),
        Err(JwksError::BadMember { member: "kid", .. })
    ));
}

#[test]
fn malformed_jwt_keys_are_refused() {
    let good = jwt_entry("k");
    let cases: Vec<(Value, &str)> = vec![
        (json!({"x": null}), "x"),
        (json!({"y": "AAAA"}), "y"),
        (json!({"x": "***"}), "x"),
        (json!({"crv": 256}), "crv"),
        (json!({"kty": "RSA", "crv": null}), "n"),
        (json!({"kty": "RSA", "n": "AAAA"}), "e"),
        (json!({"kty": "RSA", "n": "AAAA", "e": "AA"}), "n"),
        (json!({"kty": 1}), "kty"),
        (json!({"use": 1}), "use"),
    ];
    for (patch, member) in cases {
        let mut entry = good.clone();
        for (name, value) in patch.as_object().unwrap() {
            if value.is_null() {
                entry.as_object_mut().unwrap().remove(name);
            } else {
                entry[name] = value.clone();
            }
        }
        let err = parse(&json!({"keys": [entry]})).expect_err(&patch.to_string());
        let named = match &err {
            JwksError::BadMember { member, .. } | JwksError::MissingMember { member, .. } => {
                *member
            }
            other => panic!("{patch}: unexpected {other:?}"),
        };
        assert_eq!(named, member, "{patch}: {err}");
    }
    assert_eq!(
        parse(&json!({"keys": ["not an object"]})),
        Err(JwksError::NotAnObject { index: 0 })
    );
}

#[test]
fn one_kid_for_two_keys_is_refused() {
    let (a, b) = (jwt_entry("same"), jwt_entry("same"));
    assert_eq!(
        parse(&json!({"keys": [a.clone(), b]})),
        Err(JwksError::DuplicateKeyId {
            index: 1,
            kid: "same".into()
        })
    );
    // The same key twice is harmless.
    assert_eq!(
        parse(&json!({"keys": [a.clone(), a]}))
            .unwrap()
            .jwt_authorities()
            .len(),
        1
    );
}

#[test]
fn unencodable_authority_is_an_error_not_a_silent_drop() {
    let mut bundle = TrustBundle::new(td());
    bundle.add_jwt_authority(authority("broken", b"not an spki".to_vec()));
    assert!(matches!(
        bundle.to_jwks(),
        Err(JwksError::UnencodableJwtAuthority { .. })
    ));
    assert!(matches!(
        bundle.to_jwt_jwks(),
        Err(JwksError::UnencodableJwtAuthority { .. })
    ));
}

// --- Bounds ----------------------------------------------------------------------------------

#[test]
fn oversized_documents_are_refused() {
    let document = vec![b' '; MAX_DOCUMENT_LEN + 1];
    assert_eq!(
        TrustBundle::from_jwks(td(), &document),
        Err(JwksError::TooLarge {
            len: MAX_DOCUMENT_LEN + 1
        })
    );
    let unknown = json!({"use": "other"});
    let ok = json!({"keys": vec![unknown.clone(); MAX_KEYS]});
    assert!(parse(&ok).is_ok());
    let too_many = json!({"keys": vec![unknown; MAX_KEYS + 1]});
    assert_eq!(
        parse(&too_many),
        Err(JwksError::TooManyKeys {
            count: MAX_KEYS + 1
        })
    );
}

// --- The Workload API's JWT-only form --------------------------------------------------------

#[test]
fn jwt_only_document_has_jwt_keys_only() {
    let bundle = full_bundle();
    let document = bundle.to_jwt_jwks().unwrap();
    let doc: Value = serde_json::from_str(&document).unwrap();
    assert_eq!(doc.as_object().unwrap().len(), 1, "{doc}");
    let keys = doc["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3);
    assert!(
        keys.iter()
            .all(|k| k["use"] == json!("jwt-svid") && k.get("x5c").is_none())
    );
    let parsed = TrustBundle::from_jwt_jwks(td(), document.as_bytes()).unwrap();
    assert_eq!(parsed.jwt_authorities(), bundle.jwt_authorities());
    assert!(parsed.x509_authorities().is_empty());
}

#[test]
fn jwt_only_document_reads_bare_jwks_and_skips_x509_entries() {
    // go-spiffe writes JWT bundles without `use`.
    let mut bare = jwt_entry("bare");
    bare.as_object_mut().unwrap().remove("use");
    let doc = json!({"keys": [bare.clone(), x509_entry(&p256_ca())]});
    let parsed = TrustBundle::from_jwt_jwks(td(), doc.to_string().as_bytes()).unwrap();
    assert!(parsed.jwt_authority("bare").is_some());
    assert!(parsed.x509_authorities().is_empty());
    // In the full SPIFFE document a JWK without `use` is of unknown use.
    let parsed = parse(&json!({"keys": [bare]})).unwrap();
    assert!(parsed.jwt_authorities().is_empty());
}

// --- SPKI conversions ------------------------------------------------------------------------

#[test]
fn spki_built_by_hand_matches_other_encoders() {
    // RSA: against openssl's own output.
    let rsa = JwtPublicKey::from_spki_der(RSA_SPKI_DER).unwrap();
    assert_eq!(rsa.to_spki_der(), RSA_SPKI_DER);
    // EC: against rcgen's.
    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
    ] {
        let key = KeyPair::generate_for(alg).unwrap();
        let spki = key.subject_public_key_info();
        let parsed = JwtPublicKey::from_spki_der(&spki).unwrap();
        assert_eq!(parsed.to_spki_der(), spki);
    }
}

#[test]
fn unsupported_spki_is_refused() {
    let ed25519 = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    assert!(matches!(
        JwtPublicKey::from_spki_der(&ed25519.subject_public_key_info()),
        Err(PublicKeyError::UnsupportedAlgorithm(_))
    ));
    assert!(matches!(
        JwtPublicKey::from_spki_der(b"\x30\x00"),
        Err(PublicKeyError::Spki(_))
    ));
    let mut spki = KeyPair::generate().unwrap().subject_public_key_info();
    spki.push(0);
    assert!(matches!(
        JwtPublicKey::from_spki_der(&spki),
        Err(PublicKeyError::Spki(_))
    ));
}
