//! Acceptance: X.509-SVIDs from Lanyard's CA are accepted by independent implementations:
//! the Rust `spiffe` crate's X.509-SVID parser, `openssl verify` (with the TLS client and
//! server purposes) and rustls-webpki (what rustls, so the proxy, uses); a leaf from another
//! root is refused.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use lanyard_svid::ca::{Issuer, RootCa, SignedSvid};
use lanyard_svid::csr::{KeyAlgorithm, KeyAndCsr, VerifiedCsr};
use lanyard_svid::{SpiffeId, TrustDomain};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

struct Pki {
    root: RootCa,
    issuer: Issuer,
}

/// A root and intermediate valid now (openssl checks against the real clock).
fn pki() -> Pki {
    let td = TrustDomain::new("example.org").unwrap();
    let root = RootCa::generate(&td, 7 * DAY, SystemTime::now()).unwrap();
    let issuer = root.issue_intermediate(DAY, SystemTime::now()).unwrap();
    Pki { root, issuer }
}

fn issue(issuer: &Issuer, id: &str, alg: KeyAlgorithm) -> (KeyAndCsr, SignedSvid) {
    let key_and_csr = KeyAndCsr::generate(alg).unwrap();
    let csr = VerifiedCsr::from_der(&key_and_csr.csr_der).unwrap();
    let id = SpiffeId::parse(id).unwrap();
    let svid = issuer
        .sign_x509_svid(&csr, &id, HOUR, SystemTime::now())
        .unwrap();
    (key_and_csr, svid)
}

fn concat(svid: &SignedSvid) -> Vec<u8> {
    svid.cert_chain
        .iter()
        .flat_map(|c| c.as_ref().iter().copied())
        .collect()
}

#[test]
fn spiffe_crate_accepts_the_svid() {
    let pki = pki();
    for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384] {
        let (key, svid) = issue(&pki.issuer, "spiffe://example.org/ns/default/sa/web", alg);
        let parsed = spiffe::X509Svid::parse_from_der(&concat(&svid), &key.private_key_pkcs8)
            .unwrap_or_else(|e| panic!("spiffe crate refused our {alg} SVID: {e}"));
        assert_eq!(
            parsed.spiffe_id().to_string(),
            "spiffe://example.org/ns/default/sa/web"
        );
        assert_eq!(parsed.cert_chain().len(), 2);
        assert_eq!(parsed.leaf().as_ref(), svid.leaf().as_ref());
    }
    // The server's own SVID, with DNS SANs, is accepted too.
    let (key, _) = issue(
        &pki.issuer,
        "spiffe://example.org/x",
        KeyAlgorithm::EcdsaP256,
    );
    let csr = VerifiedCsr::from_der(&key.csr_der).unwrap();
    let server = SpiffeId::parse("spiffe://example.org/lanyard/server").unwrap();
    let svid = pki
        .issuer
        .sign_x509_svid_with_dns(
            &csr,
            &server,
            &["lanyard-server.lanyard.svc".to_owned()],
            HOUR,
            SystemTime::now(),
        )
        .unwrap();
    spiffe::X509Svid::parse_from_der(&concat(&svid), &key.private_key_pkcs8).unwrap();
    // And the crate's bundle parser takes our root.
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    spiffe::X509Bundle::parse_from_der(td, pki.root.cert_der().as_ref()).unwrap();
}

#[test]
fn spiffe_crate_check_can_fail() {
    // The same parser refuses a CA certificate presented as a leaf: the acceptance above
    // is a real check.
    let pki = pki();
    let (key, _) = issue(
        &pki.issuer,
        "spiffe://example.org/web",
        KeyAlgorithm::EcdsaP256,
    );
    let err =
        spiffe::X509Svid::parse_from_der(pki.issuer.cert_der().as_ref(), &key.private_key_pkcs8)
            .unwrap_err();
    assert!(
        matches!(
            err,
            spiffe::X509SvidError::LeafCertificateHasCaFlag
                | spiffe::X509SvidError::LeafCertificateHasKeyCertSign
                | spiffe::X509SvidError::LeafCertificateMissingDigitalSignature
        ),
        "{err:?}"
    );
}

/// The openssl binary, or a failure that says what to install.
fn openssl() -> &'static str {
    match Command::new("openssl").arg("version").output() {
        Ok(out) if out.status.success() => "openssl",
        _ => panic!(
            "`openssl` is not on PATH: this acceptance test needs it (apt-get install openssl)"
        ),
    }
}

fn write_pem(dir: &Path, name: &str, pem: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Runs `openssl verify`; returns (success, combined output).
fn verify(ca: &str, untrusted: &str, leaf: &str, purpose: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(openssl());
    cmd.args([
        "verify",
        "-x509_strict",
        "-CAfile",
        ca,
        "-untrusted",
        untrusted,
    ]);
    if let Some(purpose) = purpose {
        cmd.args(["-purpose", purpose]);
    }
    let out = cmd.arg(leaf).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn openssl_verifies_the_chain_for_client_and_server_use() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let (_key, svid) = issue(
        &pki.issuer,
        "spiffe://example.org/web",
        KeyAlgorithm::EcdsaP256,
    );
    let root = write_pem(dir.path(), "root.pem", &pki.root.cert_pem());
    let intermediate = write_pem(dir.path(), "intermediate.pem", &pki.issuer.cert_chain_pem());
    let leaf = write_pem(dir.path(), "leaf.pem", &svid.leaf_pem());

    for purpose in [None, Some("sslclient"), Some("sslserver")] {
        let (ok, out) = verify(&root, &intermediate, &leaf, purpose);
        assert!(ok, "openssl verify ({purpose:?}) refused our leaf:\n{out}");
        assert!(out.contains(": OK"), "{out}");
    }
}

#[test]
fn openssl_refuses_a_leaf_from_another_root() {
    let dir = tempfile::tempdir().unwrap();
    let ours = pki();
    let theirs = pki();
    let (_key, svid) = issue(
        &theirs.issuer,
        "spiffe://example.org/web",
        KeyAlgorithm::EcdsaP256,
    );
    let root = write_pem(dir.path(), "root.pem", &ours.root.cert_pem());
    let their_intermediate = write_pem(
        dir.path(),
        "their-intermediate.pem",
        &theirs.issuer.cert_chain_pem(),
    );
    let our_intermediate = write_pem(
        dir.path(),
        "our-intermediate.pem",
        &ours.issuer.cert_chain_pem(),
    );
    let leaf = write_pem(dir.path(), "leaf.pem", &svid.leaf_pem());

    // Their intermediate does not chain to our root; our intermediate did not sign the leaf.
    for intermediate in [&their_intermediate, &our_intermediate] {
        let (ok, out) = verify(&root, intermediate, &leaf, None);
        assert!(
            !ok,
            "openssl accepted a foreign leaf via {intermediate}:\n{out}"
        );
        assert!(out.contains("error"), "{out}");
    }
    // Sanity: with their own root it verifies, so the refusal above is about the root.
    let their_root = write_pem(dir.path(), "their-root.pem", &theirs.root.cert_pem());
    let (ok, out) = verify(&their_root, &their_intermediate, &leaf, None);
    assert!(ok, "{out}");
}

/// rustls-webpki path validation for both TLS usages, at `now`.
fn webpki_verify(
    root: &rustls_pki_types::CertificateDer<'_>,
    intermediates: &[rustls_pki_types::CertificateDer<'static>],
    leaf: &rustls_pki_types::CertificateDer<'_>,
) -> Result<(), webpki::Error> {
    let anchor = webpki::anchor_from_trusted_cert(root)?;
    let leaf = webpki::EndEntityCert::try_from(leaf)?;
    let now = rustls_pki_types::UnixTime::now();
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            std::slice::from_ref(&anchor),
            intermediates,
            now,
            usage,
            None,
            None,
        )?;
    }
    Ok(())
}

#[test]
fn rustls_webpki_verifies_the_chain_and_refuses_another_root() {
    let ours = pki();
    let theirs = pki();
    for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384] {
        let (_key, svid) = issue(&ours.issuer, "spiffe://example.org/web", alg);
        webpki_verify(ours.root.cert_der(), &svid.cert_chain[1..], svid.leaf())
            .unwrap_or_else(|e| panic!("webpki refused our {alg} leaf: {e:?}"));
        let err =
            webpki_verify(theirs.root.cert_der(), &svid.cert_chain[1..], svid.leaf()).unwrap_err();
        assert_eq!(err, webpki::Error::UnknownIssuer);
    }
}
