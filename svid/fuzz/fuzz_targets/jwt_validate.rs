//! Fuzzes JWT-SVID validation against a fixed bundle set.
//!
//! The input is tried twice: as a whole token (reaching everything before the signature), and,
//! split at its first NUL byte, as header and claims that the harness signs with a trusted key
//! (reaching the checks after the signature) under the fixed kid `ec`. Whatever is accepted
//! must satisfy the rules. A useful seed (not committed):
//! `{"alg":"ES256","kid":"ec"}\0{"sub":"spiffe://example.org/w","aud":"spiffe://example.org/db","exp":1800000100}`
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lanyard_svid::jwt::{self, CLOCK_SKEW_LEEWAY_SECS, JwtSigner};
use lanyard_svid::{BundleSet, JwtAuthority, TrustBundle, TrustDomain};
use libfuzzer_sys::fuzz_target;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair};

const AUDIENCE: &str = "spiffe://example.org/db";
const RSA_SPKI_DER: &[u8] = include_bytes!("../../tests/data/test-only-rsa-2048-spki.der");

struct Fixture {
    /// The trusted JwtSigner's key, loaded into ring to sign arbitrary header/claims bytes.
    key: EcdsaKeyPair,
    bundles: BundleSet,
    now: SystemTime,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let (signer, pkcs8) = JwtSigner::generate().expect("key generation");
        let key = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &pkcs8,
            &SystemRandom::new(),
        )
        .expect("the signer's own PKCS#8");
        let mut example = TrustBundle::new(TrustDomain::parse("example.org").unwrap());
        // A fixed kid, so the fuzzer (and seed inputs) can name the trusted key.
        example.add_jwt_authority(JwtAuthority {
            key_id: "ec".into(),
            ..signer.authority()
        });
        example.add_jwt_authority(JwtAuthority {
            key_id: "rsa".into(),
            public_key: RSA_SPKI_DER.to_vec(),
            expires_at: None,
        });
        let mut other = TrustBundle::new(TrustDomain::parse("other.org").unwrap());
        other.add_jwt_authority(JwtAuthority {
            key_id: "rsa".into(),
            public_key: RSA_SPKI_DER.to_vec(),
            expires_at: Some(0),
        });
        let mut bundles = BundleSet::from(example);
        bundles.insert(other);
        Fixture {
            key,
            bundles,
            now: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let fx = fixture();
    if let Ok(token) = std::str::from_utf8(data) {
        // Nobody but the harness holds a trusted key, so nothing arbitrary may validate.
        assert!(jwt::validate(token, AUDIENCE, &fx.bundles, fx.now).is_err());
    }
    if let Some(split) = data.iter().position(|&b| b == 0) {
        let (header, claims) = (&data[..split], &data[split + 1..]);
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let signature = fx
            .key
            .sign(&SystemRandom::new(), signed.as_bytes())
            .expect("signing");
        let token = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()));
        if let Ok(valid) = jwt::validate(&token, AUDIENCE, &fx.bundles, fx.now) {
            assert!(valid.audiences.iter().any(|a| a == AUDIENCE));
            assert!(!valid.spiffe_id.is_trust_domain_id());
            assert_eq!(valid.spiffe_id.trust_domain().name(), "example.org");
            let grace = Duration::from_secs(CLOCK_SKEW_LEEWAY_SECS as u64);
            assert!(valid.expires_at + grace >= fx.now);
        }
    }
});
