//! The signing authority in force: the issuing intermediate, the JWT key and the trust bundle
//! they belong to, swapped as one unit when the CA source changes (a new Secret, a new bundle
//! ConfigMap), and published to every `WatchBundle` stream.
//!
//! Invariant: material is installed only if its intermediate chains to a root in the bundle
//! being published with it, so nothing is ever signed under a root agents have not been given.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use lanyard_svid::ca::Issuer;
use lanyard_svid::jwt::JwtSigner;
use lanyard_svid::{JwtAuthority, TrustBundle, TrustDomain};
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use x509_parser::prelude::{FromDer, X509Certificate};

/// How long a retired JWT key stays in the bundle: longer than any JWT it signed lives.
const RETIRED_JWT_KEY_GRACE: Duration = Duration::from_secs(3600);
/// The `spiffe_refresh_hint` we publish.
pub const BUNDLE_REFRESH_HINT: Duration = Duration::from_secs(300);

/// What a CA source provides.
pub struct SigningMaterial {
    pub issuer: Issuer,
    /// The trust anchors (roots) of our trust domain.
    pub roots: Vec<CertificateDer<'static>>,
    pub jwt: JwtSigner,
}

/// The material currently used for signing, with the bundle published for it.
pub struct ActiveMaterial {
    pub issuer: Issuer,
    pub jwt: JwtSigner,
    pub bundle: Arc<TrustBundle>,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("the intermediate does not chain to any root in the bundle; publish its root first")]
    NotAnchored,
    #[error("the intermediate belongs to trust domain {0}, not ours")]
    WrongTrustDomain(String),
    #[error("the bundle has no roots")]
    NoRoots,
}

struct Inner {
    active: Option<Arc<ActiveMaterial>>,
    /// Retired JWT keys and when they stop being published.
    retired_jwt: Vec<(JwtAuthority, SystemTime)>,
    sequence: u64,
}

/// The server's signing state. Cheap to share behind an `Arc`.
pub struct Authority {
    trust_domain: TrustDomain,
    inner: RwLock<Inner>,
    bundle_tx: watch::Sender<Option<Arc<TrustBundle>>>,
}

impl Authority {
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            inner: RwLock::new(Inner {
                active: None,
                retired_jwt: Vec::new(),
                sequence: 0,
            }),
            bundle_tx: watch::channel(None).0,
        }
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The material in force, or `None` before the CA has been loaded (not ready).
    pub fn active(&self) -> Option<Arc<ActiveMaterial>> {
        self.inner.read().expect("authority lock").active.clone()
    }

    /// Bundle changes, starting with the current bundle (`None` before the CA is loaded).
    pub fn subscribe_bundle(&self) -> watch::Receiver<Option<Arc<TrustBundle>>> {
        self.bundle_tx.subscribe()
    }

    /// Installs new material after checking it, publishes its bundle, and returns that
    /// bundle. A refused install leaves the previous material in force.
    pub fn install(
        &self,
        material: SigningMaterial,
        now: SystemTime,
    ) -> Result<Arc<TrustBundle>, InstallError> {
        if material.issuer.trust_domain() != &self.trust_domain {
            return Err(InstallError::WrongTrustDomain(
                material.issuer.trust_domain().to_string(),
            ));
        }
        if material.roots.is_empty() {
            return Err(InstallError::NoRoots);
        }
        let top = material
            .issuer
            .chain()
            .last()
            .unwrap_or(material.issuer.cert_der());
        if !material.roots.iter().any(|root| signed_by(top, root)) {
            return Err(InstallError::NotAnchored);
        }

        let mut inner = self.inner.write().expect("authority lock");
        // A watch that re-delivers unchanged objects must not churn the bundle sequence.
        if let Some(active) = &inner.active {
            let same = active.issuer.cert_der() == material.issuer.cert_der()
                && active.jwt.key_id() == material.jwt.key_id()
                && active.bundle.x509_authorities() == material.roots.as_slice();
            if same {
                return Ok(active.bundle.clone());
            }
        }
        // Keep publishing the previous JWT key for a while: tokens it signed are still live.
        let retiring = inner
            .active
            .as_ref()
            .filter(|old| old.jwt.key_id() != material.jwt.key_id())
            .map(|old| old.jwt.authority());
        if let Some(old) = retiring {
            inner.retired_jwt.push((old, now + RETIRED_JWT_KEY_GRACE));
        }
        inner
            .retired_jwt
            .retain(|(a, until)| *until > now && a.key_id != material.jwt.key_id());
        inner.sequence += 1;

        let mut bundle = TrustBundle::new(self.trust_domain.clone());
        for root in &material.roots {
            bundle.add_x509_authority(root.clone());
        }
        bundle.add_jwt_authority(material.jwt.authority());
        for (retired, _) in &inner.retired_jwt {
            bundle.add_jwt_authority(retired.clone());
        }
        bundle.set_sequence(inner.sequence);
        bundle.set_refresh_hint(Some(BUNDLE_REFRESH_HINT));
        let bundle = Arc::new(bundle);

        inner.active = Some(Arc::new(ActiveMaterial {
            issuer: material.issuer,
            jwt: material.jwt,
            bundle: bundle.clone(),
        }));
        drop(inner);
        self.bundle_tx.send_replace(Some(bundle.clone()));
        Ok(bundle)
    }
}

/// True when `cert`'s signature verifies under `issuer`'s public key.
fn signed_by(cert: &CertificateDer<'_>, issuer: &CertificateDer<'_>) -> bool {
    let (Ok((_, cert)), Ok((_, issuer))) = (
        X509Certificate::from_der(cert),
        X509Certificate::from_der(issuer),
    ) else {
        return false;
    };
    cert.issuer() == issuer.subject() && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_svid::ca::RootCa;

    const DAY: Duration = Duration::from_secs(86_400);

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn material(root: &RootCa, now: SystemTime) -> SigningMaterial {
        SigningMaterial {
            issuer: root.issue_intermediate(DAY, now).unwrap(),
            roots: vec![root.cert_der().clone()],
            jwt: JwtSigner::generate().unwrap().0,
        }
    }

    #[test]
    fn install_publishes_bundle_with_growing_sequence() {
        let now = SystemTime::now();
        let root = RootCa::generate(&td(), DAY, now).unwrap();
        let authority = Authority::new(td());
        let rx = authority.subscribe_bundle();
        assert!(authority.active().is_none());
        let (jwt, jwt_pkcs8) = JwtSigner::generate().unwrap();
        let first = SigningMaterial {
            jwt,
            ..material(&root, now)
        };
        let b1 = authority.install(first, now).unwrap();
        assert_eq!(b1.x509_authorities(), [root.cert_der().clone()]);
        assert_eq!(b1.jwt_authorities().len(), 1);
        assert_eq!(rx.borrow().as_ref().unwrap().sequence(), b1.sequence());
        let again = SigningMaterial {
            issuer: Issuer::from_pem(
                &td(),
                &authority.active().unwrap().issuer.cert_chain_pem(),
                &authority.active().unwrap().issuer.key_pem(),
            )
            .unwrap(),
            roots: vec![root.cert_der().clone()],
            jwt: JwtSigner::from_pkcs8(&jwt_pkcs8).unwrap(),
        };
        assert_eq!(
            authority.install(again, now).unwrap().sequence(),
            b1.sequence(),
            "unchanged material keeps the sequence"
        );
        let b2 = authority.install(material(&root, now), now).unwrap();
        assert!(b2.sequence() > b1.sequence());
        // The retired JWT key is still published next to the new one.
        assert_eq!(b2.jwt_authorities().len(), 2);
        let later = now + RETIRED_JWT_KEY_GRACE + Duration::from_secs(1);
        let b3 = authority.install(material(&root, now), later).unwrap();
        assert_eq!(
            b3.jwt_authorities().len(),
            2,
            "only the one just retired remains"
        );
    }

    #[test]
    fn unanchored_intermediate_is_refused_and_old_material_stays() {
        let now = SystemTime::now();
        let root = RootCa::generate(&td(), DAY, now).unwrap();
        let other = RootCa::generate(&td(), DAY, now).unwrap();
        let authority = Authority::new(td());
        let b1 = authority.install(material(&root, now), now).unwrap();
        let mismatched = SigningMaterial {
            issuer: other.issue_intermediate(DAY, now).unwrap(),
            roots: vec![root.cert_der().clone()],
            jwt: JwtSigner::generate().unwrap().0,
        };
        assert!(matches!(
            authority.install(mismatched, now),
            Err(InstallError::NotAnchored)
        ));
        assert_eq!(authority.active().unwrap().bundle.sequence(), b1.sequence());
        let foreign_root =
            RootCa::generate(&TrustDomain::new("other.org").unwrap(), DAY, now).unwrap();
        assert!(matches!(
            authority.install(material(&foreign_root, now), now),
            Err(InstallError::WrongTrustDomain(_))
        ));
    }
}
