//! Serving: [`WorkloadIdentities`] for the certificate manager: resolving callers, handing
//! out SVIDs (waiting, bounded, for a first mint), minting JWT-SVIDs, bundles and changes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use lanyard_proto::identity::v1 as wire;
use lanyard_svid::x509::X509Svid;
use lanyard_svid::{BundleSet, SpiffeId};
use tokio::sync::watch;
use tokio::time::Instant;

use super::CertificateManager;
use super::slot::Slot;
use crate::attest::Attested;
use crate::identities::{Entitlement, IdentityError, WorkloadIdentities};
use crate::server_client::ServerError;

#[tonic::async_trait]
impl WorkloadIdentities for CertificateManager {
    fn resolve(&self, attested: &Attested) -> Vec<Entitlement> {
        self.view().resolve(attested)
    }

    async fn x509_svids(
        &self,
        entitlements: &[Entitlement],
    ) -> Result<Vec<Arc<X509Svid>>, IdentityError> {
        if entitlements.is_empty() {
            return Err(IdentityError::NoIdentity);
        }
        let shared = &self.shared;
        let now = Instant::now();
        let deadline = now + shared.settings.first_mint_wait;
        let mut outcomes = shared.outcomes.subscribe();
        let mut wake = false;
        let mut started = Vec::with_capacity(entitlements.len());
        {
            let mut slots = shared.lock();
            for e in entitlements {
                if !slots.contains_key(&e.spiffe_id) {
                    if slots.len() >= shared.settings.max_identities {
                        return Err(IdentityError::NotReady(format!(
                            "the agent already holds {} identities, its limit",
                            shared.settings.max_identities
                        )));
                    }
                    slots.insert(e.spiffe_id.clone(), Slot::new(&shared.settings, now));
                }
                let slot = slots.get_mut(&e.spiffe_id).expect("inserted");
                slot.last_requested = now;
                if slot.servable(now).is_some() {
                    slot.current_read = true;
                }
                let had = slot.workloads.len();
                slot.remember(&e.workload);
                if slot.servable(now).is_none() || slot.workloads.len() != had {
                    wake = true;
                }
                started.push(slot.attempts);
            }
        }
        if wake {
            shared.wake.notify_one();
        }
        loop {
            {
                let now = Instant::now();
                let slots = shared.lock();
                let mut out = Vec::with_capacity(entitlements.len());
                let mut failed: Vec<(&SpiffeId, String)> = Vec::new();
                let mut pending = 0;
                for (e, start) in entitlements.iter().zip(&started) {
                    let Some(slot) = slots.get(&e.spiffe_id) else {
                        failed.push((&e.spiffe_id, "the identity was dropped".to_owned()));
                        continue;
                    };
                    match slot.servable(now) {
                        Some(svid) => out.push(svid),
                        // Failed since we asked, or backing off past our deadline: say why now.
                        None if slot.attempts > *start
                            || slot.retry_at.is_some_and(|r| r >= deadline) =>
                        {
                            let why = slot.last_error.clone();
                            failed
                                .push((&e.spiffe_id, why.unwrap_or_else(|| "mint failed".into())));
                        }
                        None => pending += 1,
                    }
                }
                if pending == 0 {
                    return partial_or_refused(out, &failed);
                }
            }
            if !*shared.attested.borrow() {
                return Err(IdentityError::AgentNotAttested);
            }
            match tokio::time::timeout_at(deadline, outcomes.changed()).await {
                Ok(Ok(())) => continue,
                _ => {
                    // Out of time: serve what is held; the stream gets the rest as it arrives.
                    let now = Instant::now();
                    let slots = shared.lock();
                    let out: Vec<_> = entitlements
                        .iter()
                        .filter_map(|e| slots.get(&e.spiffe_id)?.servable(now))
                        .collect();
                    let waited = format!(
                        "no X.509-SVID from the server within {} s",
                        shared.settings.first_mint_wait.as_secs_f32()
                    );
                    let missing: Vec<(&SpiffeId, String)> = entitlements
                        .iter()
                        .filter(|e| {
                            slots
                                .get(&e.spiffe_id)
                                .and_then(|s| s.servable(now))
                                .is_none()
                        })
                        .map(|e| (&e.spiffe_id, waited.clone()))
                        .collect();
                    return partial_or_refused(out, &missing);
                }
            }
        }
    }

    async fn jwt_svid(
        &self,
        entitlement: &Entitlement,
        audience: &[String],
    ) -> Result<String, IdentityError> {
        let shared = &self.shared;
        if !*shared.attested.borrow() {
            return Err(IdentityError::AgentNotAttested);
        }
        if audience.is_empty() {
            return Err(IdentityError::Refused(
                "a JWT-SVID needs an audience".into(),
            ));
        }
        let request = wire::MintJwtSvidRequest {
            workload: Some(entitlement.workload.clone()),
            audience: audience.to_vec(),
        };
        let response = tokio::time::timeout(
            shared.settings.jwt_timeout,
            shared.server.mint_jwt_svid(request),
        )
        .await
        .map_err(|_| IdentityError::NotReady("the server did not answer in time".into()))?
        .map_err(|e| {
            tracing::info!(spiffe_id = %entitlement.spiffe_id, reason = %e, "JWT-SVID mint failed");
            match e {
                ServerError::Refused { .. } => IdentityError::Refused(e.message()),
                _ => IdentityError::NotReady(e.message()),
            }
        })?;
        if response.spiffe_id != entitlement.spiffe_id.to_string() {
            return Err(IdentityError::Refused(format!(
                "asked for {}, the server issued {}",
                entitlement.spiffe_id, response.spiffe_id
            )));
        }
        Ok(response.token)
    }

    fn bundles(&self) -> Arc<BundleSet> {
        self.held_bundles().all
    }

    fn own_bundles(&self) -> Arc<BundleSet> {
        self.held_bundles().own
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    fn view_version(&self) -> Option<u64> {
        Some(self.shared.view_version.load(Ordering::Acquire))
    }
}

/// A caller's SVIDs once nothing is pending: those it holds, even when some of its identities
/// were refused (one bad entry must not cost a workload all its others), or the first refusal
/// when it holds none. Each missing identity is logged.
fn partial_or_refused(
    held: Vec<Arc<X509Svid>>,
    missing: &[(&SpiffeId, String)],
) -> Result<Vec<Arc<X509Svid>>, IdentityError> {
    if held.is_empty() {
        let why = missing
            .first()
            .map_or_else(|| "mint failed".to_owned(), |(_, why)| why.clone());
        return Err(IdentityError::NotReady(why));
    }
    for (id, why) in missing {
        tracing::warn!(spiffe_id = %id, reason = %why, "serving the caller's other identities without this one");
    }
    Ok(held)
}
