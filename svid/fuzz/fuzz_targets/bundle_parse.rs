//! Fuzzes every bundle decoder: the SPIFFE bundle document, the JWT-only JWK Set,
//! concatenated DER and PEM. Whatever is accepted must round-trip.
#![no_main]

use lanyard_svid::bundle::{self, BundleError};
use lanyard_svid::{TrustBundle, TrustDomain, der, pem};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let td = TrustDomain::parse("example.org").unwrap();

    if let Ok(parsed) = TrustBundle::from_jwks(td.clone(), data) {
        let written = parsed
            .to_jwks()
            .expect("a bundle that was read can be written");
        let again = TrustBundle::from_jwks(td.clone(), written.as_bytes()).expect("re-read");
        assert_eq!(again, parsed);
    }

    if let Ok(parsed) = TrustBundle::from_jwt_jwks(td.clone(), data) {
        assert!(parsed.x509_authorities().is_empty());
        let written = parsed
            .to_jwt_jwks()
            .expect("a JWT bundle that was read can be written");
        let again = TrustBundle::from_jwt_jwks(td.clone(), written.as_bytes()).expect("re-read");
        assert_eq!(again.jwt_authorities(), parsed.jwt_authorities());
    }

    if let Ok(certs) = der::split_certificates(data) {
        assert_eq!(der::concat_certificates(&certs), data);
    }
    match bundle::certificates_from_der(data) {
        Ok(certs) => assert_eq!(der::concat_certificates(&certs), data),
        Err(BundleError::NotACertificate { .. } | BundleError::Der(_)) => {}
        Err(other) => panic!("unexpected DER error {other:?}"),
    }

    if let Ok(certs) = bundle::certificates_from_pem(data) {
        let pem = pem::encode_certificates(&certs);
        assert_eq!(
            bundle::certificates_from_pem(pem.as_bytes()).unwrap(),
            certs
        );
    }
});
