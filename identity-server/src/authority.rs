//! The signing authority in force: the issuing intermediate, the JWT key and the trust bundle
//! they belong to, swapped as one unit when the CA source changes (a new Secret, a new bundle
//! ConfigMap), and published to every `WatchBundle` stream.
//!
//! Invariant: material is installed only if its intermediate chains to a root in the bundle
//! being published with it, so nothing is ever signed under a root agents have not been given.
//!
//! The bundle holds the roots, the signing JWT key, the JWT keys the source publishes without
//! signing with them (a root rotation's next and previous keys), and each JWT key that stopped
//! signing here for the *retired-key grace* (unless the source still publishes it: then the
//! source says when it goes). The grace is the longest JWT-SVID lifetime the server can issue
//! plus clock skew ([`retired_jwt_grace`]), so a key stays published until every token it
//! signed has expired (the SPIFFE JWT-SVID standard and OIDC relying parties need it), and goes
//! then: [`spawn_retirer`] republishes the bundle without it. The authority also keeps
//! *since when* it has signed under its current root ([`ActiveMaterial::signing_since`]): a new
//! intermediate under the same root keeps that time, a switch to another root resets it, and
//! a process starting counts as a switch (it signed nothing before).

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use lanyard_svid::ca::Issuer;
use lanyard_svid::jwt::JwtSigner;
use lanyard_svid::{JwtAuthority, TrustBundle, TrustDomain};
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use x509_parser::prelude::{FromDer, X509Certificate};

/// How long a retired JWT key stays in the bundle when no grace is given
/// ([`Authority::new`]): the default JWT-SVID lifetime cap (one hour) plus skew.
pub const DEFAULT_RETIRED_JWT_KEY_GRACE: Duration = Duration::from_secs(3600 + JWT_CLOCK_SKEW_SECS);
/// Skew allowed between our clock and a relying party's: the leeway our own validator gives
/// `exp` ([`lanyard_svid::jwt::CLOCK_SKEW_LEEWAY_SECS`]).
const JWT_CLOCK_SKEW_SECS: u64 = lanyard_svid::jwt::CLOCK_SKEW_LEEWAY_SECS as u64;

/// The retired-key grace for a server whose JWT-SVIDs live at most `longest_jwt_svid_ttl`: a
/// retired key is published until every token it signed has expired, plus clock skew.
pub fn retired_jwt_grace(longest_jwt_svid_ttl: Duration) -> Duration {
    longest_jwt_svid_ttl + Duration::from_secs(JWT_CLOCK_SKEW_SECS)
}
/// The `spiffe_refresh_hint` we publish.
pub const BUNDLE_REFRESH_HINT: Duration = Duration::from_secs(300);

/// What a CA source provides.
pub struct SigningMaterial {
    pub issuer: Issuer,
    /// The trust anchors (roots) of our trust domain.
    pub roots: Vec<CertificateDer<'static>>,
    pub jwt: JwtSigner,
    /// More JWT keys to publish (their public halves), never to sign with.
    pub published_jwt: Vec<JwtAuthority>,
}

/// The material currently used for signing, with the bundle published for it.
pub struct ActiveMaterial {
    pub issuer: Arc<Issuer>,
    pub jwt: Arc<JwtSigner>,
    pub bundle: Arc<TrustBundle>,
    /// The root in `bundle` that the intermediate chains to.
    pub signing_root: CertificateDer<'static>,
    /// Since when this process has signed under `signing_root`.
    pub signing_since: SystemTime,
    /// The JWT keys published beside the signing key ([`SigningMaterial::published_jwt`]).
    pub published_jwt: Vec<JwtAuthority>,
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
    /// How long a JWT key that stopped signing stays published.
    retired_jwt_grace: Duration,
    inner: RwLock<Inner>,
    bundle_tx: watch::Sender<Option<Arc<TrustBundle>>>,
}

impl Authority {
    /// An authority keeping retired JWT keys for [`DEFAULT_RETIRED_JWT_KEY_GRACE`].
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self::with_retired_jwt_grace(trust_domain, DEFAULT_RETIRED_JWT_KEY_GRACE)
    }

    /// An authority keeping each retired JWT key published for `grace` (see
    /// [`retired_jwt_grace`]).
    pub fn with_retired_jwt_grace(trust_domain: TrustDomain, grace: Duration) -> Self {
        Self {
            trust_domain,
            retired_jwt_grace: grace,
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

    /// How long a JWT key that stopped signing stays published.
    pub fn retired_jwt_grace(&self) -> Duration {
        self.retired_jwt_grace
    }

    /// Retired JWT keys and when each stops being published, soonest first.
    pub fn retired_jwt(&self) -> Vec<(JwtAuthority, SystemTime)> {
        let mut retired = self
            .inner
            .read()
            .expect("authority lock")
            .retired_jwt
            .clone();
        retired.sort_by_key(|(_, until)| *until);
        retired
    }

    /// Publishes JWT keys retired before this process started (a data dir's record of them)
    /// until their own time; those past it at `now` are dropped. Call before the first
    /// [`Authority::install`], or the bundle is republished with them.
    pub fn keep_retired_jwt(&self, keys: Vec<(JwtAuthority, SystemTime)>, now: SystemTime) {
        let mut inner = self.inner.write().expect("authority lock");
        for (key, until) in keys {
            if until > now
                && !inner
                    .retired_jwt
                    .iter()
                    .any(|(k, _)| k.key_id == key.key_id)
            {
                inner.retired_jwt.push((key, until));
            }
        }
        self.republish(inner, now);
    }

    /// Drops the retired JWT keys whose grace has ended at `now` and republishes the bundle
    /// without them; returns whether any went.
    pub fn expire_retired_jwt(&self, now: SystemTime) -> bool {
        let mut inner = self.inner.write().expect("authority lock");
        let before = inner.retired_jwt.len();
        inner.retired_jwt.retain(|(_, until)| *until > now);
        if inner.retired_jwt.len() == before {
            return false;
        }
        self.republish(inner, now);
        true
    }

    /// Rebuilds the active material's bundle from `inner` (a new sequence) and publishes it.
    fn republish(&self, mut inner: std::sync::RwLockWriteGuard<'_, Inner>, now: SystemTime) {
        let Some(active) = inner.active.clone() else {
            return;
        };
        inner.retired_jwt.retain(|(_, until)| *until > now);
        inner.sequence += 1;
        let bundle = Arc::new(self.bundle_of(
            &inner,
            active.bundle.x509_authorities(),
            &active.published_jwt,
            &active.jwt,
        ));
        inner.active = Some(Arc::new(ActiveMaterial {
            issuer: active.issuer.clone(),
            jwt: active.jwt.clone(),
            bundle: bundle.clone(),
            signing_root: active.signing_root.clone(),
            signing_since: active.signing_since,
            published_jwt: active.published_jwt.clone(),
        }));
        drop(inner);
        self.bundle_tx.send_replace(Some(bundle));
    }

    /// The bundle of `roots`, `inner`'s retired JWT keys, the `published` ones and the signer.
    fn bundle_of(
        &self,
        inner: &Inner,
        roots: &[CertificateDer<'static>],
        published: &[JwtAuthority],
        signer: &JwtSigner,
    ) -> TrustBundle {
        let mut bundle = TrustBundle::new(self.trust_domain.clone());
        for root in roots {
            bundle.add_x509_authority(root.clone());
        }
        for (retired, _) in &inner.retired_jwt {
            bundle.add_jwt_authority(retired.clone());
        }
        for published in published {
            bundle.add_jwt_authority(published.clone());
        }
        // Last: an entry with the signing key's ID is exactly the signer's.
        bundle.add_jwt_authority(signer.authority());
        bundle.set_sequence(inner.sequence);
        bundle.set_refresh_hint(Some(BUNDLE_REFRESH_HINT));
        bundle
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
        let Some(signing_root) = material
            .roots
            .iter()
            .find(|root| signed_by(top, root))
            .cloned()
        else {
            return Err(InstallError::NotAnchored);
        };

        let mut inner = self.inner.write().expect("authority lock");
        // A watch that re-delivers unchanged objects must not churn the bundle sequence.
        if let Some(active) = &inner.active {
            let same = active.issuer.cert_der() == material.issuer.cert_der()
                && active.jwt.key_id() == material.jwt.key_id()
                && active.bundle.x509_authorities() == material.roots.as_slice()
                && active.published_jwt == material.published_jwt;
            if same {
                return Ok(active.bundle.clone());
            }
        }
        let signing_since = match &inner.active {
            Some(active) if active.signing_root == signing_root => active.signing_since,
            _ => now,
        };
        // Keep publishing the previous JWT key for a while: tokens it signed are still live.
        // Not when the source publishes it itself (a rotation's `jwt-previous.key`): it then
        // decides when it goes, and every replica's bundle stays the same whenever it started.
        let published = |kid: &str| material.published_jwt.iter().any(|p| p.key_id == kid);
        let retiring = inner
            .active
            .as_ref()
            .filter(|old| old.jwt.key_id() != material.jwt.key_id() && !published(old.jwt.key_id()))
            .map(|old| old.jwt.authority());
        if let Some(old) = retiring {
            inner.retired_jwt.push((old, now + self.retired_jwt_grace));
        }
        inner.retired_jwt.retain(|(a, until)| {
            *until > now && a.key_id != material.jwt.key_id() && !published(&a.key_id)
        });
        inner.sequence += 1;

        let bundle = Arc::new(self.bundle_of(
            &inner,
            &material.roots,
            &material.published_jwt,
            &material.jwt,
        ));

        inner.active = Some(Arc::new(ActiveMaterial {
            issuer: Arc::new(material.issuer),
            jwt: Arc::new(material.jwt),
            bundle: bundle.clone(),
            signing_root,
            signing_since,
            published_jwt: material.published_jwt,
        }));
        drop(inner);
        self.bundle_tx.send_replace(Some(bundle.clone()));
        Ok(bundle)
    }
}

/// Keeps the bundle free of retired JWT keys past their grace, on the wall clock.
pub fn spawn_retirer(authority: Arc<Authority>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run_retirer(authority, SystemTime::now))
}

/// Longest wait between two looks at the retired keys: a wall clock that jumps (a suspended
/// machine, a stepped clock) is caught up with within this.
const RETIRER_MAX_WAIT: Duration = Duration::from_secs(60);

/// The retirer loop: sleeps until the next retired key's time (or a bundle change, which may
/// retire another key), then drops what is due. `wall_clock` is what the times are judged at
/// (tests derive it from tokio's paused clock).
pub async fn run_retirer(authority: Arc<Authority>, wall_clock: impl Fn() -> SystemTime) {
    let mut bundles = authority.subscribe_bundle();
    loop {
        // Marked seen first: a change from here on (an install retiring a key) wakes us.
        bundles.borrow_and_update();
        let now = wall_clock();
        authority.expire_retired_jwt(now);
        let next = authority
            .retired_jwt()
            .first()
            .map(|(_, until)| until.duration_since(now).unwrap_or_default())
            .unwrap_or(RETIRER_MAX_WAIT)
            .min(RETIRER_MAX_WAIT);
        tokio::select! {
            () = tokio::time::sleep(next) => {}
            changed = bundles.changed() => if changed.is_err() { return },
        }
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
            published_jwt: Vec::new(),
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
            published_jwt: Vec::new(),
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
        let later = now + DEFAULT_RETIRED_JWT_KEY_GRACE + Duration::from_secs(1);
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
            published_jwt: Vec::new(),
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

    #[test]
    fn published_jwt_keys_are_in_the_bundle_but_never_sign() {
        let now = SystemTime::now();
        let root = RootCa::generate(&td(), DAY, now).unwrap();
        let authority = Authority::new(td());
        let next = JwtSigner::generate().unwrap().0.authority();
        let previous = JwtSigner::generate().unwrap().0.authority();
        let (jwt, jwt_pkcs8) = JwtSigner::generate().unwrap();
        let signing_kid = jwt.key_id().to_owned();
        let signing = SigningMaterial {
            jwt,
            published_jwt: vec![next.clone(), previous.clone()],
            ..material(&root, now)
        };
        let bundle = authority.install(signing, now).unwrap();
        let mut kids: Vec<_> = bundle
            .jwt_authorities()
            .iter()
            .map(|a| a.key_id.clone())
            .collect();
        kids.sort();
        let mut want = vec![
            signing_kid.clone(),
            next.key_id.clone(),
            previous.key_id.clone(),
        ];
        want.sort();
        assert_eq!(kids, want);
        assert_eq!(authority.active().unwrap().jwt.key_id(), signing_kid);

        // The same material again (the watch re-delivered it): nothing changes.
        let active = authority.active().unwrap();
        let again = SigningMaterial {
            issuer: Issuer::from_pem(
                &td(),
                &active.issuer.cert_chain_pem(),
                &active.issuer.key_pem(),
            )
            .unwrap(),
            roots: vec![root.cert_der().clone()],
            jwt: JwtSigner::from_pkcs8(&jwt_pkcs8).unwrap(),
            published_jwt: vec![next.clone(), previous.clone()],
        };
        assert_eq!(
            authority.install(again, now).unwrap().sequence(),
            bundle.sequence(),
            "unchanged material keeps the bundle"
        );

        // The switch: next signs, the old signer is published as previous.
        let (next_signer, next_pkcs8) = JwtSigner::generate().unwrap();
        let switched = SigningMaterial {
            jwt: JwtSigner::from_pkcs8(&next_pkcs8).unwrap(),
            published_jwt: vec![authority.active().unwrap().jwt.authority()],
            ..material(&root, now)
        };
        let b = authority.install(switched, now).unwrap();
        assert_eq!(
            b.jwt_authorities().len(),
            2,
            "the new signer and the previous one"
        );
        assert!(b.jwt_authority(next_signer.key_id()).is_some());
        // The retire: the previous key leaves with it (the source kept it published, so it was
        // never kept in memory, and a replica started after the switch publishes the same).
        let retired = SigningMaterial {
            jwt: JwtSigner::from_pkcs8(&next_pkcs8).unwrap(),
            ..material(&root, now)
        };
        let b = authority.install(retired, now).unwrap();
        assert_eq!(
            b.jwt_authorities()
                .iter()
                .map(|a| a.key_id.as_str())
                .collect::<Vec<_>>(),
            [next_signer.key_id()]
        );
    }

    #[test]
    fn signing_since_follows_the_root_not_the_intermediate() {
        let t0 = SystemTime::UNIX_EPOCH + DAY * 20_000;
        let root = RootCa::generate(&td(), DAY * 30, t0).unwrap();
        let new_root = RootCa::generate(&td(), DAY * 30, t0).unwrap();
        let both = vec![root.cert_der().clone(), new_root.cert_der().clone()];
        let authority = Authority::new(td());
        authority.install(material(&root, t0), t0).unwrap();
        let active = authority.active().unwrap();
        assert_eq!(active.signing_since, t0);
        assert_eq!(&active.signing_root, root.cert_der());

        // A new intermediate under the same root, and the new root added: still since t0.
        let t1 = t0 + DAY;
        let reissued = SigningMaterial {
            roots: both.clone(),
            ..material(&root, t1)
        };
        authority.install(reissued, t1).unwrap();
        assert_eq!(authority.active().unwrap().signing_since, t0);

        // Signing under the new root: since the switch.
        let t2 = t0 + DAY * 2;
        let switched = SigningMaterial {
            roots: both,
            ..material(&new_root, t2)
        };
        authority.install(switched, t2).unwrap();
        let active = authority.active().unwrap();
        assert_eq!(active.signing_since, t2);
        assert_eq!(&active.signing_root, new_root.cert_der());
    }

    fn kids(bundle: &TrustBundle) -> Vec<String> {
        let mut kids: Vec<_> = bundle
            .jwt_authorities()
            .iter()
            .map(|a| a.key_id.clone())
            .collect();
        kids.sort();
        kids
    }

    #[test]
    fn the_grace_is_the_longest_lifetime_plus_skew() {
        assert_eq!(
            retired_jwt_grace(Duration::from_secs(300)),
            Duration::from_secs(330)
        );
        assert_eq!(
            Authority::new(td()).retired_jwt_grace(),
            retired_jwt_grace(Duration::from_secs(3600))
        );
    }

    /// The retirer on tokio's paused clock, the wall clock derived from it: a retired key is
    /// published until exactly its grace ends, then the bundle is republished without it.
    #[tokio::test(start_paused = true)]
    async fn a_retired_key_leaves_the_bundle_when_its_grace_ends() {
        const GRACE: Duration = Duration::from_secs(330);
        let start = SystemTime::now();
        let t0 = tokio::time::Instant::now();
        let clock = move || start + t0.elapsed();
        let root = RootCa::generate(&td(), DAY, start).unwrap();
        let authority = Arc::new(Authority::with_retired_jwt_grace(td(), GRACE));
        authority.install(material(&root, start), start).unwrap();
        let old_kid = authority.active().unwrap().jwt.key_id().to_owned();
        let task = tokio::spawn(run_retirer(authority.clone(), clock));

        // A minute in, the key is replaced: both are published.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let rotated_at = clock();
        let rotated = authority
            .install(material(&root, start), rotated_at)
            .unwrap();
        let new_kid = authority.active().unwrap().jwt.key_id().to_owned();
        let mut both = vec![old_kid.clone(), new_kid.clone()];
        both.sort();
        assert_eq!(kids(&rotated), both);
        let mut bundles = authority.subscribe_bundle();
        bundles.borrow_and_update();

        // Nothing changes until a second before the grace ends.
        let quiet = tokio::time::timeout(GRACE - Duration::from_secs(1), bundles.changed()).await;
        assert!(quiet.is_err(), "the retired key left early");
        // Then it goes, with a new sequence, and the signer stays.
        tokio::time::timeout(Duration::from_secs(2), bundles.changed())
            .await
            .expect("retired when the grace ended")
            .unwrap();
        let after = bundles.borrow().clone().unwrap();
        assert_eq!(kids(&after), std::slice::from_ref(&new_kid));
        assert!(after.sequence() > rotated.sequence());
        assert!(clock() >= rotated_at + GRACE);
        assert_eq!(authority.active().unwrap().jwt.key_id(), new_kid);
        assert!(authority.retired_jwt().is_empty());
        task.abort();
    }

    #[test]
    fn keys_retired_before_a_restart_are_published_until_their_time() {
        let now = SystemTime::now();
        let root = RootCa::generate(&td(), DAY, now).unwrap();
        let authority = Authority::new(td());
        let old = JwtSigner::generate().unwrap().0.authority();
        let expired = JwtSigner::generate().unwrap().0.authority();
        authority.keep_retired_jwt(
            vec![
                (old.clone(), now + Duration::from_secs(100)),
                (expired, now - Duration::from_secs(1)),
            ],
            now,
        );
        let bundle = authority.install(material(&root, now), now).unwrap();
        let signer = authority.active().unwrap().jwt.key_id().to_owned();
        let mut want = vec![old.key_id.clone(), signer.clone()];
        want.sort();
        assert_eq!(kids(&bundle), want);
        assert!(!authority.expire_retired_jwt(now + Duration::from_secs(99)));
        assert!(authority.expire_retired_jwt(now + Duration::from_secs(100)));
        assert_eq!(kids(&authority.active().unwrap().bundle), [signer]);
    }
}
