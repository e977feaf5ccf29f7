//! Loading CA material from PEM (a data dir, or a `kubernetes.io/tls` Secret made by
//! cert-manager or an operator's own PKI), with every check that keeps a bad Secret from
//! turning into certificates nobody can verify.

use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::{Authority, CaError, MAX_CHAIN_CERTS, MAX_CHAIN_PEM_LEN, profile};
use crate::id::{SpiffeId, TrustDomain};
use crate::keys::SecretKey;

/// Reads a CA certificate (optionally followed by the rest of its chain) and its key.
/// With `now`, every certificate in the chain must be valid at that time.
pub(super) fn authority(
    td: &TrustDomain,
    cert_pem: &str,
    key_pem: &str,
    now: Option<SystemTime>,
) -> Result<Authority, CaError> {
    let chain = parse_chain_pem(cert_pem)?;
    let key = SecretKey::from_pem(key_pem)?;

    let parsed = chain
        .iter()
        .map(|der| parse_cert(der))
        .collect::<Result<Vec<_>, _>>()?;
    for (position, cert) in parsed.iter().enumerate() {
        check_is_ca(cert, position)?;
        if let Some(now) = now {
            check_validity(cert, now)?;
        }
    }
    for pair in parsed.windows(2) {
        check_link(&pair[0], &pair[1])?;
    }
    let ca = &parsed[0];
    if ca.public_key().subject_public_key.data.as_ref() != rcgen::PublicKeyData::der_bytes(&key)
        || ca.public_key().algorithm.algorithm
            != x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
    {
        return Err(CaError::KeyMismatch);
    }
    check_trust_domain(ca, td)?;

    let not_before = ca.validity().not_before.timestamp();
    let not_after = ca.validity().not_after.timestamp();
    let serial_hex = profile::hex(ca.raw_serial());
    let subject = ca.subject().as_raw().to_vec();

    // rcgen re-encodes the CA's subject as the issuer of what it signs; a name it cannot
    // reproduce byte for byte would yield leaves that no verifier chains.
    let signer = rcgen::Issuer::from_ca_cert_der(&chain[0], key)
        .map_err(|_| CaError::UnsupportedCaSubject)?;
    probe(&signer, &subject, &chain[0])?;

    Ok(Authority {
        trust_domain: td.clone(),
        chain,
        signer,
        not_before,
        not_after,
        serial_hex,
    })
}

/// True when the certificate names itself as its issuer.
pub(super) fn is_self_signed(der: &CertificateDer<'_>) -> bool {
    parse_cert(der)
        .map(|c| c.subject().as_raw() == c.issuer().as_raw())
        .unwrap_or(false)
}

fn parse_chain_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, CaError> {
    if pem.len() > MAX_CHAIN_PEM_LEN {
        return Err(CaError::TooLarge {
            what: "certificate PEM (bytes)",
            limit: MAX_CHAIN_PEM_LEN,
        });
    }
    let mut chain = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|_| CaError::BadPem("a CERTIFICATE block is not valid base64"))?;
        if chain.len() == MAX_CHAIN_CERTS {
            return Err(CaError::TooLarge {
                what: "certificate chain (certificates)",
                limit: MAX_CHAIN_CERTS,
            });
        }
        chain.push(cert);
    }
    if chain.is_empty() {
        return Err(CaError::BadPem("no CERTIFICATE block found"));
    }
    Ok(chain)
}

fn parse_cert<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, CaError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(CaError::BadCertificate(
            "trailing bytes after the certificate".to_owned(),
        )),
        Err(e) => Err(CaError::BadCertificate(e.to_string())),
    }
}

fn check_is_ca(cert: &X509Certificate<'_>, position: usize) -> Result<(), CaError> {
    let which = |what: &str| format!("certificate {position} ({}) {what}", cert.subject());
    let bc = cert
        .basic_constraints()
        .map_err(|e| CaError::BadCertificate(e.to_string()))?;
    if !bc.is_some_and(|bc| bc.value.ca) {
        return Err(CaError::NotCa(which("does not have cA=true")));
    }
    let ku = cert
        .key_usage()
        .map_err(|e| CaError::BadCertificate(e.to_string()))?;
    if !ku.is_some_and(|ku| ku.value.key_cert_sign()) {
        return Err(CaError::NotCa(which("does not allow keyCertSign")));
    }
    Ok(())
}

fn check_validity(cert: &X509Certificate<'_>, now: SystemTime) -> Result<(), CaError> {
    let now = profile::unix_seconds(now);
    let validity = cert.validity();
    if now > validity.not_after.timestamp() {
        return Err(CaError::Expired {
            subject: cert.subject().to_string(),
            not_after: profile::system_time(validity.not_after.timestamp()),
        });
    }
    if now < validity.not_before.timestamp() {
        return Err(CaError::NotYetValid {
            subject: cert.subject().to_string(),
            not_before: profile::system_time(validity.not_before.timestamp()),
        });
    }
    Ok(())
}

/// `child` must name `parent` as its issuer and carry a signature by `parent`'s key.
fn check_link(child: &X509Certificate<'_>, parent: &X509Certificate<'_>) -> Result<(), CaError> {
    if child.issuer().as_raw() != parent.subject().as_raw() {
        return Err(CaError::BrokenChain(format!(
            "{} is issued by {}, but the next certificate is {}",
            child.subject(),
            child.issuer(),
            parent.subject()
        )));
    }
    child
        .verify_signature(Some(parent.public_key()))
        .map_err(|_| {
            CaError::BrokenChain(format!(
                "{}'s signature does not verify with {}'s key",
                child.subject(),
                parent.subject()
            ))
        })
}

/// A SPIFFE URI SAN on a CA certificate must be exactly `spiffe://<td>`. Other URIs (an
/// operator's own PKI may add some) are not ours to judge.
fn check_trust_domain(cert: &X509Certificate<'_>, td: &TrustDomain) -> Result<(), CaError> {
    let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| CaError::BadCertificate(e.to_string()))?
    else {
        return Ok(());
    };
    for name in &san.value.general_names {
        let GeneralName::URI(uri) = name else {
            continue;
        };
        if !uri
            .get(..9)
            .is_some_and(|s| s.eq_ignore_ascii_case("spiffe://"))
        {
            continue;
        }
        let id = SpiffeId::parse(uri).map_err(|e| {
            CaError::BadCertificate(format!("CA certificate has an invalid SPIFFE ID: {e}"))
        })?;
        if id.trust_domain() != td {
            return Err(CaError::WrongTrustDomain {
                expected: td.to_string(),
                found: id.to_string(),
            });
        }
        if !id.is_trust_domain_id() {
            return Err(CaError::BadCaId(id.to_string()));
        }
    }
    Ok(())
}

/// Signs a throwaway certificate and checks that its issuer field is the CA's subject, byte
/// for byte, and that its signature verifies with the CA certificate's key.
fn probe(
    signer: &rcgen::Issuer<'static, SecretKey>,
    subject: &[u8],
    ca_der: &CertificateDer<'_>,
) -> Result<(), CaError> {
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    let probe = params
        .signed_by(signer.key(), signer)
        .map_err(|e| CaError::Signing(e.to_string()))?;
    let probe = parse_cert(probe.der())?;
    if probe.issuer().as_raw() != subject {
        return Err(CaError::UnsupportedCaSubject);
    }
    let ca = parse_cert(ca_der)?;
    probe
        .verify_signature(Some(ca.public_key()))
        .map_err(|_| CaError::KeyMismatch)
}
