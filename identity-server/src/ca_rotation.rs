//! Data-dir mode: keeps the issuing intermediate fresh. Once an hour the data dir's CA is
//! checked ([`DataDirCa::rotate_if_due`]: a new intermediate from the root at two thirds of the
//! old one's life) and a rotated intermediate is installed in the [`Authority`] at once. SVIDs
//! the old intermediate signed stay valid: the root, and so every agent's bundle, is the same.
//!
//! A failed check or rotation is logged and changes nothing; the next hour tries again, with
//! a third of the intermediate's life (four months by default) left for it to succeed.
//!
//! The JWT key is replaced with the intermediate, and on demand ([`rotate_jwt_key`], the admin
//! socket's `ca rotate-jwt-key`); the key replaced stays in the bundle for the authority's
//! retired-key grace, so tokens it signed keep validating until they expire.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lanyard_svid::TrustDomain;

use crate::authority::{Authority, SigningMaterial};
use crate::ca_store::DataDirCa;

/// How often the intermediate's age is checked.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(3600);

/// Starts the hourly check for the CA in `data_dir`, on the wall clock.
pub fn spawn(
    data_dir: PathBuf,
    trust_domain: TrustDomain,
    authority: Arc<Authority>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(data_dir, trust_domain, authority, SystemTime::now))
}

/// The check loop; `wall_clock` says what time certificates are judged at (tests move it).
pub async fn run(
    data_dir: PathBuf,
    trust_domain: TrustDomain,
    authority: Arc<Authority>,
    wall_clock: impl Fn() -> SystemTime,
) {
    let mut ticks = tokio::time::interval(CHECK_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the CA was loaded at startup.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let now = wall_clock();
        let grace = authority.retired_jwt_grace();
        let rotated = match DataDirCa::rotate_if_due(&data_dir, &trust_domain, now, grace) {
            Ok(Some(ca)) => ca,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(error = %e, "checking the intermediate CA for rotation failed; signing continues with the current one");
                continue;
            }
        };
        let material = SigningMaterial {
            roots: vec![rotated.root.cert_der().clone()],
            issuer: rotated.issuer,
            jwt: rotated.jwt,
            published_jwt: Vec::new(),
        };
        if let Err(e) = authority.install(material, now) {
            tracing::error!(error = %e, "the rotated intermediate CA was refused; signing continues with the current one");
        }
    }
}

/// What [`rotate_jwt_key`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtKeyRotated {
    /// The key signing from now on.
    pub kid: String,
    /// The key it replaced, still published until `previous_until`.
    pub previous_kid: String,
    pub previous_until: SystemTime,
}

/// Why a JWT key rotation did not happen (nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum RotateJwtKeyError {
    #[error("{0}")]
    CaStore(#[from] crate::ca_store::CaStoreError),
    #[error(
        "the new JWT key was written but refused by the running CA ({0}); restart the server to load it"
    )]
    Install(#[from] crate::authority::InstallError),
}

/// Replaces the data dir's JWT key with a new one and installs it in `authority`: new tokens
/// are signed with it at once, and the old key stays published (in the running bundle and
/// on disk, for a restart) for the authority's retired-key grace.
pub fn rotate_jwt_key(
    data_dir: &std::path::Path,
    authority: &Authority,
    now: SystemTime,
) -> Result<JwtKeyRotated, RotateJwtKeyError> {
    let grace = authority.retired_jwt_grace();
    let previous_kid = authority
        .active()
        .map(|active| active.jwt.key_id().to_owned())
        .unwrap_or_default();
    let rotated = DataDirCa::rotate_jwt_key(data_dir, authority.trust_domain(), now, grace)?;
    let kid = rotated.jwt.key_id().to_owned();
    authority.install(
        SigningMaterial {
            roots: vec![rotated.root.cert_der().clone()],
            issuer: rotated.issuer,
            jwt: rotated.jwt,
            published_jwt: Vec::new(),
        },
        now,
    )?;
    Ok(JwtKeyRotated {
        kid,
        previous_kid,
        previous_until: now + grace,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[tokio::test(start_paused = true)]
    async fn a_due_intermediate_is_replaced_in_the_authority_and_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let start = SystemTime::now();
        let ca = DataDirCa::load_or_create(dir.path(), &td, start).unwrap();
        let due = ca.rotation_due();
        let root = ca.root.cert_der().clone();
        let authority = Arc::new(Authority::new(td.clone()));
        authority
            .install(
                SigningMaterial {
                    roots: vec![root.clone()],
                    issuer: ca.issuer,
                    jwt: ca.jwt,
                    published_jwt: Vec::new(),
                },
                start,
            )
            .unwrap();
        let first_issuer = authority.active().unwrap().issuer.cert_der().clone();
        let first_kid = authority.active().unwrap().jwt.key_id().to_owned();
        let mut bundles = authority.subscribe_bundle();
        bundles.borrow_and_update();

        // The wall clock the loop sees: `start` plus the days set here.
        let days = Arc::new(AtomicU64::new(0));
        let clock = {
            let days = days.clone();
            move || start + DAY * days.load(Ordering::SeqCst) as u32
        };
        let task = tokio::spawn(run(
            dir.path().to_owned(),
            td.clone(),
            authority.clone(),
            clock,
        ));

        // Three hourly checks a day before it is due: nothing changes.
        days.store(
            due.duration_since(start).unwrap().as_secs() / 86_400 - 1,
            Ordering::SeqCst,
        );
        let quiet = tokio::time::timeout(CHECK_INTERVAL * 3, bundles.changed()).await;
        assert!(quiet.is_err(), "rotated before it was due");
        assert_eq!(authority.active().unwrap().issuer.cert_der(), &first_issuer);

        // Past due: the next check installs a new intermediate under the same root.
        days.fetch_add(2, Ordering::SeqCst);
        tokio::time::timeout(CHECK_INTERVAL * 2, bundles.changed())
            .await
            .expect("rotated at the next check")
            .unwrap();
        let active = authority.active().unwrap();
        assert_ne!(active.issuer.cert_der(), &first_issuer);
        assert_eq!(
            active.bundle.x509_authorities(),
            std::slice::from_ref(&root)
        );
        // The JWT key rotates with it; the old one stays published for the grace.
        assert_ne!(active.jwt.key_id(), first_kid);
        assert!(active.bundle.jwt_authority(&first_kid).is_some());
        assert!(active.bundle.jwt_authority(active.jwt.key_id()).is_some());
        task.abort();
    }
}
