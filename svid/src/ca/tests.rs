//! Unit tests: every issued certificate is parsed back with x509-parser and each rule of
//! `spec/svid.md` asserted; every refusal is provoked.

use std::time::{Duration, SystemTime};

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER, OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_KEY_USAGE,
    OID_X509_EXT_SUBJECT_ALT_NAME, OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
};
use x509_parser::prelude::FromDer;

use super::*;
use crate::csr::{KeyAlgorithm, KeyAndCsr, VerifiedCsr};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

fn secs(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty());
    cert
}

fn ca() -> (RootCa, Issuer) {
    let root = RootCa::generate(&td(), 30 * DAY, now()).unwrap();
    let issuer = root.issue_intermediate(DAY, now()).unwrap();
    (root, issuer)
}

fn csr() -> VerifiedCsr {
    VerifiedCsr::from_der(
        &KeyAndCsr::generate(KeyAlgorithm::EcdsaP256)
            .unwrap()
            .csr_der,
    )
    .unwrap()
}

fn skid<'a>(cert: &'a X509Certificate<'_>) -> Option<&'a [u8]> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0),
            _ => None,
        })
}

fn akid<'a>(cert: &'a X509Certificate<'_>) -> Option<&'a [u8]> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0),
            _ => None,
        })
}

fn uris<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect()
}

fn dns_names<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(*d),
            _ => None,
        })
        .collect()
}

fn is_critical(cert: &X509Certificate<'_>, oid: &x509_parser::der_parser::oid::Oid<'_>) -> bool {
    cert.extensions()
        .iter()
        .find(|e| e.oid == *oid)
        .unwrap_or_else(|| panic!("extension {oid} missing"))
        .critical
}

#[test]
fn leaf_meets_every_svid_rule() {
    let (_root, issuer) = ca();
    let csr = csr();
    let workload = id("spiffe://example.org/ns/default/sa/web");
    let svid = issuer.sign_x509_svid(&csr, &workload, HOUR, now()).unwrap();

    assert_eq!(svid.spiffe_id, workload);
    assert_eq!(svid.cert_chain.len(), 2);
    assert_eq!(&svid.cert_chain[1..], issuer.chain());
    let leaf = parse(svid.leaf());
    let intermediate = parse(issuer.cert_der());

    assert_eq!(leaf.version(), x509_parser::x509::X509Version::V3);
    // Empty subject, so the SAN extension is critical; exactly one URI SAN, the ID.
    assert_eq!(leaf.subject().iter().count(), 0);
    assert!(is_critical(&leaf, &OID_X509_EXT_SUBJECT_ALT_NAME));
    assert_eq!(uris(&leaf), vec![workload.to_string().as_str()]);
    assert!(dns_names(&leaf).is_empty());
    // BasicConstraints present, cA=false.
    let bc = leaf.basic_constraints().unwrap().expect("BasicConstraints");
    assert!(!bc.value.ca);
    assert!(bc.critical);
    // KeyUsage critical: digitalSignature, never keyCertSign or cRLSign.
    assert!(is_critical(&leaf, &OID_X509_EXT_KEY_USAGE));
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature());
    assert!(!ku.key_cert_sign());
    assert!(!ku.crl_sign());
    // EKU serverAuth + clientAuth.
    assert!(!is_critical(&leaf, &OID_X509_EXT_EXTENDED_KEY_USAGE));
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    // SKID and AKID; the AKID names the intermediate's key.
    assert!(
        leaf.extensions()
            .iter()
            .any(|e| e.oid == OID_X509_EXT_SUBJECT_KEY_IDENTIFIER)
    );
    assert!(
        leaf.extensions()
            .iter()
            .any(|e| e.oid == OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER)
    );
    assert!(skid(&leaf).is_some_and(|k| !k.is_empty()));
    assert_eq!(akid(&leaf), skid(&intermediate));
    // Issuer name and signature are the intermediate's; the key is the CSR's.
    assert_eq!(leaf.issuer().as_raw(), intermediate.subject().as_raw());
    leaf.verify_signature(Some(intermediate.public_key()))
        .unwrap();
    assert_eq!(leaf.public_key().raw, csr.public_key_spki());
    // Random positive serial, at least 64 bits, reported in hex.
    let serial = leaf.raw_serial();
    assert!(serial.len() >= 8 && serial[0] & 0x80 == 0 && serial[0] != 0);
    assert_eq!(svid.serial_hex, profile::hex(serial));
    // NotBefore backdated, NotAfter now + ttl.
    assert_eq!(
        leaf.validity().not_before.timestamp(),
        secs(now()) - CLOCK_SKEW_BACKDATE.as_secs() as i64
    );
    assert_eq!(leaf.validity().not_after.timestamp(), secs(now() + HOUR));
    assert_eq!(svid.not_after, now() + HOUR);
}

#[test]
fn serials_differ_between_leaves() {
    let (_root, issuer) = ca();
    let csr = csr();
    let workload = id("spiffe://example.org/web");
    let a = issuer.sign_x509_svid(&csr, &workload, HOUR, now()).unwrap();
    let b = issuer.sign_x509_svid(&csr, &workload, HOUR, now()).unwrap();
    assert_ne!(a.serial_hex, b.serial_hex);
}

#[test]
fn csr_subject_and_sans_are_ignored() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://example.org/admin".try_into().unwrap(),
    ));
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "admin");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let der = params.serialize_request(&key).unwrap().der().to_vec();
    let csr = VerifiedCsr::from_der(&der).unwrap();

    let (_root, issuer) = ca();
    let workload = id("spiffe://example.org/web");
    let svid = issuer.sign_x509_svid(&csr, &workload, HOUR, now()).unwrap();
    let leaf = parse(svid.leaf());
    assert_eq!(uris(&leaf), vec!["spiffe://example.org/web"]);
    assert!(dns_names(&leaf).is_empty());
    assert_eq!(leaf.subject().iter().count(), 0);
    assert!(!leaf.basic_constraints().unwrap().unwrap().value.ca);
    assert!(!leaf.key_usage().unwrap().unwrap().value.key_cert_sign());
}

#[test]
fn p384_csr_is_signed() {
    let (_root, issuer) = ca();
    let kc = KeyAndCsr::generate(KeyAlgorithm::EcdsaP384).unwrap();
    let csr = VerifiedCsr::from_der(&kc.csr_der).unwrap();
    let svid = issuer
        .sign_x509_svid(&csr, &id("spiffe://example.org/web"), HOUR, now())
        .unwrap();
    assert_eq!(parse(svid.leaf()).public_key().raw, csr.public_key_spki());
}

#[test]
fn dns_sans_are_added_after_the_uri() {
    let (_root, issuer) = ca();
    let dns = vec![
        "lanyard-server".to_owned(),
        "lanyard.svc.cluster.local".to_owned(),
        "*.lanyard.example".to_owned(),
    ];
    let server = id("spiffe://example.org/lanyard/server");
    let svid = issuer
        .sign_x509_svid_with_dns(&csr(), &server, &dns, HOUR, now())
        .unwrap();
    let leaf = parse(svid.leaf());
    assert_eq!(uris(&leaf), vec!["spiffe://example.org/lanyard/server"]);
    assert_eq!(
        dns_names(&leaf),
        vec![
            "lanyard-server",
            "lanyard.svc.cluster.local",
            "*.lanyard.example"
        ]
    );
    assert!(is_critical(&leaf, &OID_X509_EXT_SUBJECT_ALT_NAME));
}

#[test]
fn refuses_bad_dns_sans() {
    let (_root, issuer) = ca();
    let server = id("spiffe://example.org/lanyard/server");
    // A wildcard only as the whole first label.
    for bad in [
        "",
        "has space",
        "ünïcode.example",
        "a..b",
        "*",
        "*.*.example",
        "a.*.example",
        "w*.example",
    ] {
        let err = issuer
            .sign_x509_svid_with_dns(&csr(), &server, &[bad.to_owned()], HOUR, now())
            .unwrap_err();
        assert_eq!(err.label(), "bad_dns_name", "{bad:?}");
    }
    let many: Vec<String> = (0..=MAX_DNS_SANS)
        .map(|i| format!("h{i}.example"))
        .collect();
    let err = issuer
        .sign_x509_svid_with_dns(&csr(), &server, &many, HOUR, now())
        .unwrap_err();
    assert_eq!(err.to_string(), "bad_dns_name");
}

#[test]
fn refuses_ids_outside_the_trust_domain_or_without_path() {
    let (_root, issuer) = ca();
    let csr = csr();
    let err = issuer
        .sign_x509_svid(&csr, &id("spiffe://other.org/web"), HOUR, now())
        .unwrap_err();
    assert_eq!(
        err,
        CaError::WrongTrustDomain {
            expected: "example.org".into(),
            found: "spiffe://other.org/web".into()
        }
    );
    assert_eq!(err.to_string(), "wrong_trust_domain");
    let err = issuer
        .sign_x509_svid(&csr, &id("spiffe://example.org"), HOUR, now())
        .unwrap_err();
    assert_eq!(err, CaError::IdWithoutPath("spiffe://example.org".into()));
    assert!(err.message().contains("path"));
}

#[test]
fn not_after_is_clamped_to_the_issuer() {
    let (_root, issuer) = ca();
    let svid = issuer
        .sign_x509_svid(&csr(), &id("spiffe://example.org/web"), 10 * DAY, now())
        .unwrap();
    assert_eq!(svid.not_after, issuer.not_after());
    assert_eq!(svid.not_after, now() + DAY);
    let leaf = parse(svid.leaf());
    assert_eq!(
        leaf.validity().not_after.timestamp(),
        secs(issuer.not_after())
    );
}

#[test]
fn refuses_zero_ttl_and_an_expired_issuer() {
    let (_root, issuer) = ca();
    let web = id("spiffe://example.org/web");
    assert_eq!(
        issuer.sign_x509_svid(&csr(), &web, Duration::ZERO, now()),
        Err(CaError::InvalidTtl)
    );
    assert_eq!(
        issuer.sign_x509_svid(&csr(), &web, Duration::from_millis(999), now()),
        Err(CaError::InvalidTtl)
    );
    let err = issuer
        .sign_x509_svid(&csr(), &web, HOUR, issuer.not_after())
        .unwrap_err();
    assert_eq!(err.label(), "issuer_expired");
    // One second before the end still works, and lives one second.
    let svid = issuer
        .sign_x509_svid(
            &csr(),
            &web,
            HOUR,
            issuer.not_after() - Duration::from_secs(1),
        )
        .unwrap();
    assert_eq!(svid.not_after, issuer.not_after());
}

#[test]
fn root_and_intermediate_are_signing_certificates() {
    let (root, issuer) = ca();
    let r = parse(root.cert_der());
    let i = parse(issuer.cert_der());
    for (cert, path_len) in [(&r, None), (&i, Some(0))] {
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.value.ca);
        assert_eq!(bc.value.path_len_constraint, path_len);
        let ku = cert.key_usage().unwrap().unwrap();
        assert!(ku.critical);
        assert!(ku.value.key_cert_sign() && ku.value.crl_sign());
        assert!(!ku.value.digital_signature());
        assert_eq!(uris(cert), vec!["spiffe://example.org"]);
        assert!(skid(cert).is_some());
        assert!(cert.subject().iter().count() > 0);
        assert!(cert.raw_serial()[0] & 0x80 == 0);
    }
    // Root self-signed; intermediate signed by the root, named by its AKID.
    assert_eq!(r.subject().as_raw(), r.issuer().as_raw());
    r.verify_signature(None).unwrap();
    assert_eq!(i.issuer().as_raw(), r.subject().as_raw());
    i.verify_signature(Some(r.public_key())).unwrap();
    assert_eq!(akid(&i), skid(&r));
    assert_ne!(r.subject().as_raw(), i.subject().as_raw());
    // The chain sent with leaves does not include the root.
    assert_eq!(issuer.chain(), std::slice::from_ref(issuer.cert_der()));
    // Validity.
    assert_eq!(r.validity().not_after.timestamp(), secs(now() + 30 * DAY));
    assert_eq!(i.validity().not_after.timestamp(), secs(now() + DAY));
    assert_eq!(
        i.validity().not_before.timestamp(),
        secs(now()) - CLOCK_SKEW_BACKDATE.as_secs() as i64
    );
}

#[test]
fn intermediate_not_after_is_clamped_to_the_root() {
    let root = RootCa::generate(&td(), DAY, now()).unwrap();
    let issuer = root.issue_intermediate(30 * DAY, now()).unwrap();
    assert_eq!(issuer.not_after(), root.not_after());
    assert_eq!(
        root.issue_intermediate(HOUR, root.not_after())
            .unwrap_err()
            .label(),
        "issuer_expired"
    );
}

#[test]
fn issuer_round_trips_through_pem() {
    let (root, issuer) = ca();
    let loaded =
        Issuer::from_pem_at(&td(), &issuer.cert_chain_pem(), &issuer.key_pem(), now()).unwrap();
    assert_eq!(loaded.cert_der(), issuer.cert_der());
    assert_eq!(loaded.chain(), issuer.chain());
    assert_eq!(loaded.not_after(), issuer.not_after());
    assert_eq!(loaded.serial_hex(), issuer.serial_hex());
    assert_eq!(loaded.trust_domain(), &td());

    let svid = loaded
        .sign_x509_svid(&csr(), &id("spiffe://example.org/web"), HOUR, now())
        .unwrap();
    let leaf = parse(svid.leaf());
    let intermediate = parse(issuer.cert_der());
    assert_eq!(leaf.issuer().as_raw(), intermediate.subject().as_raw());
    assert_eq!(akid(&leaf), skid(&intermediate));
    leaf.verify_signature(Some(intermediate.public_key()))
        .unwrap();

    // The root round-trips too, and can still issue.
    let root2 = RootCa::from_pem(&td(), &root.cert_pem(), &root.key_pem()).unwrap();
    assert_eq!(root2.cert_der(), root.cert_der());
    let again = root2.issue_intermediate(HOUR, now()).unwrap();
    parse(again.cert_der())
        .verify_signature(Some(parse(root.cert_der()).public_key()))
        .unwrap();
}

#[test]
fn issuer_loads_a_chain_with_the_root_appended() {
    let (root, issuer) = ca();
    let pem = issuer.cert_chain_pem() + &root.cert_pem();
    let loaded = Issuer::from_pem_at(&td(), &pem, &issuer.key_pem(), now()).unwrap();
    assert_eq!(loaded.chain().len(), 2);
    let svid = loaded
        .sign_x509_svid(&csr(), &id("spiffe://example.org/web"), HOUR, now())
        .unwrap();
    assert_eq!(svid.cert_chain.len(), 3);
}

#[test]
fn issuer_refuses_a_mismatched_key() {
    let (_root, issuer) = ca();
    let (_root2, other) = ca();
    let err =
        Issuer::from_pem_at(&td(), &issuer.cert_chain_pem(), &other.key_pem(), now()).unwrap_err();
    assert_eq!(err, CaError::KeyMismatch);
    assert_eq!(err.to_string(), "key_mismatch");
    let (root, _) = ca();
    assert_eq!(
        RootCa::from_pem(&td(), &root.cert_pem(), &other.key_pem()).unwrap_err(),
        CaError::KeyMismatch
    );
}

#[test]
fn issuer_refuses_a_leaf_certificate() {
    let (_root, issuer) = ca();
    let kc = KeyAndCsr::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr = VerifiedCsr::from_der(&kc.csr_der).unwrap();
    let svid = issuer
        .sign_x509_svid(&csr, &id("spiffe://example.org/web"), HOUR, now())
        .unwrap();
    let mut leaf_pem = String::new();
    crate::pem::write(crate::pem::CERTIFICATE, svid.leaf(), &mut leaf_pem);
    let key_pem = crate::pem::encode_private_key(&kc.private_key_pkcs8);
    let err = Issuer::from_pem_at(&td(), &leaf_pem, &key_pem, now()).unwrap_err();
    assert!(
        matches!(&err, CaError::NotCa(m) if m.contains("cA=true")),
        "{err:?}"
    );
    assert_eq!(err.label(), "not_ca");
}

#[test]
fn issuer_refuses_a_ca_without_key_cert_sign() {
    let key = SecretKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).unwrap();
    let err = Issuer::from_pem_at(&td(), &cert.pem(), &key.to_pem(), now()).unwrap_err();
    assert!(
        matches!(&err, CaError::NotCa(m) if m.contains("keyCertSign")),
        "{err:?}"
    );
}

#[test]
fn issuer_refuses_expired_and_not_yet_valid_certificates() {
    let (_root, issuer) = ca();
    let (chain, key) = (issuer.cert_chain_pem(), issuer.key_pem());
    let later = issuer.not_after() + Duration::from_secs(1);
    let err = Issuer::from_pem_at(&td(), &chain, &key, later).unwrap_err();
    assert!(matches!(err, CaError::Expired { not_after, .. } if not_after == issuer.not_after()));
    assert_eq!(err.to_string(), "expired");
    let earlier = now() - HOUR;
    let err = Issuer::from_pem_at(&td(), &chain, &key, earlier).unwrap_err();
    assert_eq!(err.label(), "not_yet_valid");
    // The clock-reading constructor refuses a certificate that expired long ago.
    let old = RootCa::generate(&td(), DAY, now() - 30 * DAY).unwrap();
    let old_issuer = old.issue_intermediate(DAY, now() - 30 * DAY).unwrap();
    assert_eq!(
        Issuer::from_pem(&td(), &old_issuer.cert_chain_pem(), &old_issuer.key_pem())
            .unwrap_err()
            .label(),
        "expired"
    );
}

#[test]
fn issuer_refuses_another_trust_domain() {
    let (_root, issuer) = ca();
    let other = TrustDomain::new("other.org").unwrap();
    let err = Issuer::from_pem_at(&other, &issuer.cert_chain_pem(), &issuer.key_pem(), now())
        .unwrap_err();
    assert_eq!(
        err,
        CaError::WrongTrustDomain {
            expected: "other.org".into(),
            found: "spiffe://example.org".into()
        }
    );
    let err = RootCa::from_pem(&other, &_root.cert_pem(), &_root.key_pem()).unwrap_err();
    assert_eq!(err.label(), "wrong_trust_domain");
}

#[test]
fn issuer_refuses_a_broken_chain() {
    let (_root, issuer) = ca();
    let (other_root, _) = ca();
    let pem = issuer.cert_chain_pem() + &other_root.cert_pem();
    let err = Issuer::from_pem_at(&td(), &pem, &issuer.key_pem(), now()).unwrap_err();
    assert_eq!(err.label(), "broken_chain");
}

#[test]
fn issuer_refuses_bad_pem_and_oversize_input() {
    let (_root, issuer) = ca();
    let key = issuer.key_pem();
    assert_eq!(
        Issuer::from_pem_at(&td(), "", &key, now()).unwrap_err(),
        CaError::BadPem("no CERTIFICATE block found")
    );
    let garbage = "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n";
    assert_eq!(
        Issuer::from_pem_at(&td(), garbage, &key, now())
            .unwrap_err()
            .label(),
        "bad_certificate"
    );
    let huge = "x".repeat(MAX_CHAIN_PEM_LEN + 1);
    assert_eq!(
        Issuer::from_pem_at(&td(), &huge, &key, now())
            .unwrap_err()
            .label(),
        "too_large"
    );
    let many = issuer.cert_chain_pem().repeat(MAX_CHAIN_CERTS + 1);
    assert_eq!(
        Issuer::from_pem_at(&td(), &many, &key, now())
            .unwrap_err()
            .label(),
        "too_large"
    );
    let err = Issuer::from_pem_at(&td(), &issuer.cert_chain_pem(), "nope", now()).unwrap_err();
    assert_eq!(err.label(), "bad_key");
    assert_eq!(err.to_string(), "bad_key");
    assert!(err.message().contains("malformed"), "{}", err.message());
}

#[test]
fn issuer_loads_a_foreign_ca_and_its_leaves_chain() {
    // An operator's own PKI: a P-384 CA with a richer subject and no SPIFFE SAN.
    let key = SecretKey::generate(KeyAlgorithm::EcdsaP384).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CountryName, "DE");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Example Corp");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Mesh Issuing CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    params.not_before = time::OffsetDateTime::from_unix_timestamp(secs(now()) - 60).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp(secs(now() + DAY)).unwrap();
    let cert = params.self_signed(&key).unwrap();

    let issuer = Issuer::from_pem_at(&td(), &cert.pem(), &key.to_pem(), now()).unwrap();
    let svid = issuer
        .sign_x509_svid(&csr(), &id("spiffe://example.org/web"), HOUR, now())
        .unwrap();
    let leaf = parse(svid.leaf());
    let ca = parse(cert.der());
    assert_eq!(leaf.issuer().as_raw(), ca.subject().as_raw());
    assert_eq!(akid(&leaf), skid(&ca));
    leaf.verify_signature(Some(ca.public_key())).unwrap();
}

#[test]
fn debug_output_has_no_key_material() {
    let (root, issuer) = ca();
    for (debug, key) in [
        (format!("{root:?}"), root.key_pem()),
        (format!("{issuer:?}"), issuer.key_pem()),
    ] {
        let body: String = key.lines().nth(1).unwrap().chars().take(24).collect();
        assert!(!debug.contains(&body), "{debug}");
        assert!(debug.contains("example.org"));
    }
}

#[test]
fn pem_outputs_parse_back() {
    let (_root, issuer) = ca();
    let svid = issuer
        .sign_x509_svid(&csr(), &id("spiffe://example.org/web"), HOUR, now())
        .unwrap();
    use rustls_pki_types::pem::PemObject;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(svid.cert_chain_pem().as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(certs, svid.cert_chain);
    assert!(issuer.key_pem().lines().all(|l| l.len() <= 64));
}
