//! The server's own SVID, `spiffe://<td>/lanyard/server`: a fresh key in memory, signed by the
//! current issuer, renewed at half its life and whenever the issuer changes, and installed in
//! the [`SvidStore`] the TLS listener serves from.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lanyard_svid::csr::{KeyAndCsr, VerifiedCsr};
use lanyard_svid::keys::KeyAlgorithm;
use lanyard_svid::reserved::server_id;
use lanyard_svid::tls::SvidStore;
use lanyard_svid::x509::X509Svid;
use lanyard_svid::{BundleSet, TrustBundle};

use crate::authority::Authority;

/// Lifetime of the server's own SVID.
pub const SERVER_SVID_TTL: Duration = Duration::from_secs(3600);
/// If signing fails, try again after this long.
const RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServerSvidError {
    #[error("the CA is not loaded")]
    NoCa,
    #[error("making the server key: {0}")]
    Key(String),
    #[error("signing the server SVID: {0}")]
    Sign(String),
}

/// Signs a new server SVID with the current issuer and installs it (and the bundle).
pub fn refresh(authority: &Authority, store: &SvidStore) -> Result<SystemTime, ServerSvidError> {
    let material = authority.active().ok_or(ServerSvidError::NoCa)?;
    let key = KeyAndCsr::generate(KeyAlgorithm::EcdsaP256)
        .map_err(|e| ServerSvidError::Key(e.message()))?;
    let csr = VerifiedCsr::from_der(&key.csr_der).map_err(|e| ServerSvidError::Key(e.message()))?;
    let id = server_id(authority.trust_domain());
    let signed = material
        .issuer
        .sign_x509_svid(&csr, &id, SERVER_SVID_TTL, SystemTime::now())
        .map_err(|e| ServerSvidError::Sign(e.message()))?;
    let svid = X509Svid::parse(signed.cert_chain, Some(key.private_key_pkcs8))
        .map_err(|e| ServerSvidError::Sign(e.message()))?;
    store.update_bundles(BundleSet::from(TrustBundle::clone(&material.bundle)));
    store
        .update_svid(svid)
        .map_err(|e| ServerSvidError::Sign(e.message().to_owned()))?;
    Ok(signed.not_after)
}

/// Keeps the server SVID fresh until the task is dropped: renews at half life (the current
/// SVID expires at `not_after`), and at once when the authority publishes new material (a new
/// intermediate or new roots).
pub fn spawn_rotation(
    authority: Arc<Authority>,
    store: Arc<SvidStore>,
    not_after: SystemTime,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut bundles = authority.subscribe_bundle();
        bundles.mark_unchanged();
        let mut wait = half_life(not_after);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                changed = bundles.changed() => if changed.is_err() { return },
            }
            wait = match refresh(&authority, &store) {
                Ok(not_after) => half_life(not_after),
                Err(e) => {
                    tracing::warn!(error = %e, "server SVID not refreshed");
                    RETRY
                }
            };
        }
    })
}

fn half_life(not_after: SystemTime) -> Duration {
    not_after
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        / 2
}
