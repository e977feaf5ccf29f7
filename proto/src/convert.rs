//! Conversions between wire messages and the domain types of `lanyard-svid`, so that server
//! and agent encode bundles and SVIDs the same way.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lanyard_svid::{JwtAuthority, TrustBundle, TrustDomain};
use rustls_pki_types::CertificateDer;

use crate::identity::v1 as wire;

/// Why a wire message could not become a domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bundle trust domain: {0}")]
    TrustDomain(String),
    #[error("message lacks {0}")]
    Missing(&'static str),
}

/// Unix seconds of `t` (0 before the epoch).
pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The time `secs` Unix seconds name (the epoch for negative values).
pub fn from_unix_seconds(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
}

impl From<&TrustBundle> for wire::Bundle {
    fn from(bundle: &TrustBundle) -> Self {
        Self {
            trust_domain: bundle.trust_domain().to_string(),
            x509_authorities: bundle
                .x509_authorities()
                .iter()
                .map(|c| c.as_ref().to_vec())
                .collect(),
            jwt_authorities: bundle
                .jwt_authorities()
                .iter()
                .map(|a| wire::JwtAuthority {
                    key_id: a.key_id.clone(),
                    public_key: a.public_key.clone(),
                    expires_at: a.expires_at.unwrap_or(0),
                })
                .collect(),
            sequence: bundle.sequence(),
            refresh_hint_seconds: bundle
                .refresh_hint()
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        }
    }
}

impl TryFrom<&wire::Bundle> for TrustBundle {
    type Error = WireError;

    fn try_from(bundle: &wire::Bundle) -> Result<Self, WireError> {
        let td = TrustDomain::parse(&bundle.trust_domain)
            .map_err(|e| WireError::TrustDomain(e.to_string()))?;
        let mut out = TrustBundle::new(td);
        for der in &bundle.x509_authorities {
            out.add_x509_authority(CertificateDer::from(der.clone()));
        }
        for a in &bundle.jwt_authorities {
            out.add_jwt_authority(JwtAuthority {
                key_id: a.key_id.clone(),
                public_key: a.public_key.clone(),
                expires_at: (a.expires_at != 0).then_some(a.expires_at),
            });
        }
        out.set_sequence(bundle.sequence);
        out.set_refresh_hint(
            (bundle.refresh_hint_seconds > 0)
                .then(|| Duration::from_secs(bundle.refresh_hint_seconds as u64)),
        );
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_round_trip() {
        let mut b = TrustBundle::new(TrustDomain::new("example.org").unwrap());
        b.add_x509_authority(CertificateDer::from(vec![0x30, 0x00]));
        b.add_jwt_authority(JwtAuthority {
            key_id: "k1".into(),
            public_key: vec![1, 2, 3],
            expires_at: Some(42),
        });
        b.set_sequence(7);
        b.set_refresh_hint(Some(Duration::from_secs(300)));
        let w = wire::Bundle::from(&b);
        assert_eq!(TrustBundle::try_from(&w).unwrap(), b);
        let bad = wire::Bundle {
            trust_domain: "Not A Domain".into(),
            ..w
        };
        assert!(TrustBundle::try_from(&bad).is_err());
    }
}
