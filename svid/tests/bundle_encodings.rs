//! X.509 authorities as concatenated DER (the Workload API's form) and PEM: round trips and
//! refusals.

use lanyard_svid::bundle::{self, BundleError, MAX_PEM_LEN};
use lanyard_svid::der::{self, DerError};
use lanyard_svid::{TrustBundle, TrustDomain, pem};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls_pki_types::CertificateDer;

fn td() -> TrustDomain {
    TrustDomain::parse("example.org").unwrap()
}

fn ca_cert(name: &str) -> CertificateDer<'static> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().der().clone()
}

#[test]
fn concatenated_der_round_trips() {
    let (a, b) = (ca_cert("root a"), ca_cert("root b"));
    let bundle = TrustBundle::from_x509_authorities(td(), [a.clone(), b.clone(), a.clone()]);
    assert_eq!(bundle.x509_authorities(), [a.clone(), b.clone()]);
    let der = bundle.x509_authorities_der();
    assert_eq!(der, [a.as_ref(), b.as_ref()].concat());
    let parsed = TrustBundle::from_x509_der(td(), &der).unwrap();
    assert_eq!(parsed.x509_authorities(), [a, b]);
    assert_eq!(parsed.trust_domain(), &td());
}

#[test]
fn empty_der_is_a_bundle_without_authorities() {
    let parsed = TrustBundle::from_x509_der(td(), &[]).unwrap();
    assert!(parsed.x509_authorities().is_empty());
}

#[test]
fn der_with_trailing_garbage_is_refused() {
    let mut der = ca_cert("root").as_ref().to_vec();
    let len = der.len();
    der.extend_from_slice(&[0xde, 0xad]);
    assert_eq!(
        TrustBundle::from_x509_der(td(), &der),
        Err(BundleError::Der(DerError::NotASequence {
            offset: len,
            tag: 0xde
        }))
    );
}

#[test]
fn truncated_der_is_refused() {
    let der = ca_cert("root");
    let cut = &der.as_ref()[..der.as_ref().len() - 1];
    assert_eq!(
        TrustBundle::from_x509_der(td(), cut),
        Err(BundleError::Der(DerError::Truncated { offset: 0 }))
    );
}

#[test]
fn a_sequence_that_is_not_a_certificate_is_refused() {
    let key = KeyPair::generate().unwrap();
    // A SubjectPublicKeyInfo is a well-formed SEQUENCE, but no certificate.
    let mut der = ca_cert("root").as_ref().to_vec();
    der.extend_from_slice(&rcgen::PublicKeyData::subject_public_key_info(&key));
    assert!(matches!(
        bundle::certificates_from_der(&der),
        Err(BundleError::NotACertificate { index: 1, .. })
    ));
}

#[test]
fn oversized_der_is_refused() {
    let der = vec![0u8; der::MAX_CONCATENATED_LEN + 1];
    assert!(matches!(
        TrustBundle::from_x509_der(td(), &der),
        Err(BundleError::Der(DerError::TooLarge { .. }))
    ));
}

#[test]
fn pem_round_trips_in_64_columns() {
    let (a, b) = (ca_cert("root a"), ca_cert("root b"));
    let bundle = TrustBundle::from_x509_authorities(td(), [a.clone(), b.clone()]);
    let pem = bundle.x509_authorities_pem();
    assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----\n").count(), 2);
    assert_eq!(pem.matches("-----END CERTIFICATE-----\n").count(), 2);
    assert!(pem.lines().all(|line| line.len() <= 64), "{pem}");
    let parsed = TrustBundle::from_pem(td(), pem.as_bytes()).unwrap();
    assert_eq!(parsed.x509_authorities(), [a, b]);
}

#[test]
fn pem_skips_other_blocks() {
    let cert = ca_cert("root");
    let key = KeyPair::generate().unwrap();
    let pem = format!(
        "{}{}",
        key.serialize_pem(),
        pem::encode_certificates(std::slice::from_ref(&cert))
    );
    let parsed = bundle::certificates_from_pem(pem.as_bytes()).unwrap();
    assert_eq!(parsed, [cert]);
}

#[test]
fn pem_without_certificates_is_refused() {
    assert_eq!(
        bundle::certificates_from_pem(b""),
        Err(BundleError::NoCertificates)
    );
    let key = KeyPair::generate().unwrap();
    assert_eq!(
        TrustBundle::from_pem(td(), key.serialize_pem().as_bytes()),
        Err(BundleError::NoCertificates)
    );
}

#[test]
fn broken_pem_is_refused() {
    let pem = pem::encode_certificates(&[ca_cert("root")]);
    let without_end = pem.replace("-----END CERTIFICATE-----\n", "");
    assert!(matches!(
        bundle::certificates_from_pem(without_end.as_bytes()),
        Err(BundleError::Pem(_))
    ));
    // Valid PEM armour around bytes that are no certificate.
    let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    assert!(matches!(
        bundle::certificates_from_pem(garbage.as_bytes()),
        Err(BundleError::NotACertificate { index: 0, .. })
    ));
}

#[test]
fn oversized_pem_is_refused() {
    let pem = vec![b' '; MAX_PEM_LEN + 1];
    assert_eq!(
        bundle::certificates_from_pem(&pem),
        Err(BundleError::PemTooLarge {
            len: MAX_PEM_LEN + 1
        })
    );
}

#[test]
fn pem_output_is_read_by_openssl() {
    // An independent reader, when the machine has one (CI installs openssl).
    let Ok(openssl) = which_openssl() else {
        eprintln!("openssl not found; skipping the independent PEM check");
        return;
    };
    let pem = pem::encode_certificates(&[ca_cert("independent root")]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.pem");
    std::fs::write(&path, pem).unwrap();
    let output = std::process::Command::new(openssl)
        .args(["x509", "-noout", "-subject", "-in"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("independent root"));
}

fn which_openssl() -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("openssl"))
        .find(|path| path.is_file())
        .ok_or(())
}
