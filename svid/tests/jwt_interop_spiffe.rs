//! Interop with an independent SPIFFE library (the Rust `spiffe` crate): it must read our
//! JWT-only JWK Set and validate the JWT-SVIDs we mint, and refuse them for another audience.

use std::time::{Duration, SystemTime};

use lanyard_svid::jwt::JwtSigner;
use lanyard_svid::{SpiffeId, TrustBundle, TrustDomain};

const AUDIENCE: &str = "spiffe://example.org/db";

fn their_bundles(ours: &TrustBundle) -> spiffe::JwtBundleSet {
    let document = ours.to_jwt_jwks().unwrap();
    let td = spiffe::TrustDomain::new(ours.trust_domain().name()).unwrap();
    let bundle = spiffe::JwtBundle::from_jwt_authorities(td, document.as_bytes()).unwrap();
    let mut set = spiffe::JwtBundleSet::new();
    set.add_bundle(bundle);
    set
}

#[test]
fn spiffe_crate_validates_our_tokens_against_our_jwks() {
    let (signer, _) = JwtSigner::generate().unwrap();
    let mut bundle = TrustBundle::new(TrustDomain::parse("example.org").unwrap());
    bundle.add_jwt_authority(signer.authority());
    let theirs = their_bundles(&bundle);
    assert!(
        theirs
            .get(&spiffe::TrustDomain::new("example.org").unwrap())
            .unwrap()
            .find_jwt_authority(signer.key_id())
            .is_some()
    );

    // The crate checks expiry against the real clock, so mint against it too.
    let subject = SpiffeId::parse("spiffe://example.org/web").unwrap();
    let token = signer
        .mint(
            &subject,
            &[AUDIENCE.to_owned()],
            Duration::from_secs(300),
            SystemTime::now(),
        )
        .unwrap();
    let svid = spiffe::JwtSvid::parse_and_validate(&token, &theirs, &[AUDIENCE]).unwrap();
    assert_eq!(svid.spiffe_id().to_string(), subject.to_string());
    assert_eq!(svid.audience(), [AUDIENCE]);
    assert_eq!(svid.key_id(), signer.key_id());

    assert!(spiffe::JwtSvid::parse_and_validate(&token, &theirs, &["someone-else"]).is_err());
}

#[test]
fn spiffe_crate_refuses_a_token_from_a_key_not_in_our_jwks() {
    let (trusted, _) = JwtSigner::generate().unwrap();
    let (untrusted, _) = JwtSigner::generate().unwrap();
    let mut bundle = TrustBundle::new(TrustDomain::parse("example.org").unwrap());
    bundle.add_jwt_authority(trusted.authority());
    let theirs = their_bundles(&bundle);
    let token = untrusted
        .mint(
            &SpiffeId::parse("spiffe://example.org/web").unwrap(),
            &[AUDIENCE.to_owned()],
            Duration::from_secs(300),
            SystemTime::now(),
        )
        .unwrap();
    assert!(spiffe::JwtSvid::parse_and_validate(&token, &theirs, &[AUDIENCE]).is_err());
}
