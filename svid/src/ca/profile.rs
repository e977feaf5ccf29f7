//! Certificate profiles (`spec/svid.md`): which fields and extensions a root, the signing
//! intermediate and an X.509-SVID leaf carry, expressed as rcgen parameters.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;

use super::{CaError, MAX_DNS_SANS};
use crate::id::{SpiffeId, TrustDomain};

/// Serial numbers are 16 random bytes with the top two bits fixed to `01`: positive, a fixed
/// DER length, and 126 bits of randomness (RFC 5280 and the CA/B forum ask for at least 64).
pub(super) type Serial = [u8; 16];

pub(super) fn random_serial() -> Result<Serial, CaError> {
    let mut serial = [0u8; 16];
    SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| CaError::Signing("the system random generator failed".to_owned()))?;
    serial[0] = (serial[0] & 0x3f) | 0x40;
    Ok(serial)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Whole Unix seconds (floor); times before 1970 are clamped to 0.
pub(super) fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(super) fn system_time(unix: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0))
}

fn datetime(unix: i64) -> Result<OffsetDateTime, CaError> {
    // Only a TTL pushing past year 9999 gets here.
    OffsetDateTime::from_unix_timestamp(unix).map_err(|_| CaError::InvalidTtl)
}

fn base_params(
    serial: &Serial,
    not_before: i64,
    not_after: i64,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.not_before = datetime(not_before)?;
    params.not_after = datetime(not_after)?;
    params.serial_number = Some(SerialNumber::from_slice(serial));
    params.distinguished_name = DistinguishedName::new();
    Ok(params)
}

fn uri_san(uri: String) -> Result<SanType, CaError> {
    // SPIFFE IDs are ASCII by construction, so this only fails on a bug.
    uri.try_into()
        .map(SanType::URI)
        .map_err(|e: rcgen::Error| CaError::Signing(e.to_string()))
}

/// A signing certificate: cA=true, keyCertSign + cRLSign, URI SAN `spiffe://<td>`. The
/// intermediate gets a path length of 0: it signs leaves only. The subject names the role
/// and a serial prefix so that successive CAs never share a name.
pub(super) fn ca_params(
    td: &TrustDomain,
    intermediate: bool,
    serial: &Serial,
    not_before: i64,
    not_after: i64,
) -> Result<CertificateParams, CaError> {
    let mut params = base_params(serial, not_before, not_after)?;
    let role = if intermediate { "intermediate" } else { "root" };
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Lanyard");
    params.distinguished_name.push(
        DnType::CommonName,
        format!("Lanyard {role} CA {}", hex(&serial[..8])),
    );
    params.subject_alt_names = vec![uri_san(td.id_string())?];
    params.is_ca = IsCa::Ca(if intermediate {
        BasicConstraints::Constrained(0)
    } else {
        BasicConstraints::Unconstrained
    });
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = intermediate;
    Ok(params)
}

/// An X.509-SVID leaf. The subject is empty, so rcgen marks the SAN extension critical (RFC
/// 5280 4.2.1.6); BasicConstraints is written explicitly with cA=false (`ExplicitNoCa`)
/// because the Rust `spiffe` crate refuses a leaf without it; that also makes rcgen write
/// the SKID.
pub(super) fn leaf_params(
    id: &SpiffeId,
    dns: &[String],
    serial: &Serial,
    not_before: i64,
    not_after: i64,
) -> Result<CertificateParams, CaError> {
    if dns.len() > MAX_DNS_SANS {
        return Err(CaError::BadDnsName(format!(
            "{} DNS names, more than the {MAX_DNS_SANS} allowed",
            dns.len()
        )));
    }
    let mut params = base_params(serial, not_before, not_after)?;
    let mut sans = Vec::with_capacity(1 + dns.len());
    sans.push(uri_san(id.to_string())?);
    for name in dns {
        // A wildcard is allowed as the whole first label only (RFC 6125 6.4.3); the rest must
        // be a DNS name (rustls's check, which refuses '*' itself).
        let checked = name.strip_prefix("*.").unwrap_or(name);
        if rustls_pki_types::DnsName::try_from(checked).is_err() {
            return Err(CaError::BadDnsName(format!("{name:?} is not a DNS name")));
        }
        let ia5 = name
            .as_str()
            .try_into()
            .map_err(|_| CaError::BadDnsName(format!("{name:?} is not ASCII")))?;
        sans.push(SanType::DnsName(ia5));
    }
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}
