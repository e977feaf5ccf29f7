//! `lanyard ca rotate-root add|switch|retire|abort`: moving the cluster from one root to
//! another in phases, each allowed only by [`lanyard_ca_lifecycle::propagation`] over the live
//! replicas' reports. Each command plans its writes without the cluster ([`plan_add`]...) and
//! [`apply`] writes them in the planned order:
//!
//! - add: the Secret gains `jwt-next.key`, then the bundle gains the new root and the
//!   annotation `added` (nothing signs under either yet);
//! - switch: the Secret's intermediate under the new root and the JWT keys moved along
//!   (`jwt.key` -> `jwt-previous.key`, `jwt-next.key` -> `jwt.key`), then the annotation
//!   `switched`; the bundle already trusts both (`may_switch` checked it everywhere);
//! - retire: the bundle loses the old root and the annotation, then the Secret loses
//!   `jwt-previous.key` (`may_retire`: nothing valid is left under either);
//! - abort from added: the bundle loses the new root and the annotation, then the Secret its
//!   `jwt-next.key`; from switched (with the OLD root's files): the Secret signs under the old
//!   root again and the JWT keys move back, then the annotation returns to `added`, with
//!   `switched_at` the time signing switched back, so a later abort from `added` waits (as
//!   retire does) until nothing under the new root is held or valid.
//!
//! A command interrupted between its two writes is completed by running it again: each plan
//! recognises the half-done state and writes only the rest.

use std::path::Path;
use std::time::{Duration, SystemTime};

use lanyard_ca_lifecycle::names::{SECRET_JWT_KEY, SECRET_JWT_NEXT_KEY, SECRET_JWT_PREVIOUS_KEY};
use lanyard_ca_lifecycle::propagation::{ClusterView, Refusal, may_add, may_retire, may_switch};
use lanyard_ca_lifecycle::report::{CertSummary, short};
use lanyard_ca_lifecycle::rotation::{Phase, RotationState};
use lanyard_ca_lifecycle::unix_seconds;
use lanyard_svid::bundle::certificate_fingerprint;

use super::material::{RootCert, RootWithKey, format_time, new_jwt_key};
use super::state::{CaState, Write, apply};
use super::{CaError, Cluster, Refused};

/// A command's writes, in order, and what to tell the user.
#[derive(Debug)]
pub struct Plan {
    pub writes: Vec<Write>,
    pub message: String,
}

/// The live replicas' reports, and the unreadable ones (named, for the user).
pub async fn cluster_view(
    cluster: &Cluster,
    now: SystemTime,
) -> Result<(ClusterView, Vec<String>), CaError> {
    let (reports, unreadable) = cluster.reports().await?;
    Ok((ClusterView::new(reports, unix_seconds(now)), unreadable))
}

pub async fn add(cluster: &Cluster, root_cert: &Path, now: SystemTime) -> Result<String, CaError> {
    let root = RootCert::read(root_cert, now)?;
    let state = CaState::read(cluster).await?;
    let plan = plan_add(&state, &root, &root_cert.display().to_string(), now)?;
    apply(cluster, &state, &plan.writes).await?;
    Ok(plan.message)
}

pub async fn switch(
    cluster: &Cluster,
    root_cert: &Path,
    root_key: &Path,
    intermediate_ttl: Duration,
    now: SystemTime,
) -> Result<String, CaError> {
    let root = RootWithKey::read(root_cert, root_key, now)?;
    let state = CaState::read(cluster).await?;
    let (view, _) = cluster_view(cluster, now).await?;
    let plan = plan_switch(&state, &root, &view, intermediate_ttl, now)?;
    apply(cluster, &state, &plan.writes).await?;
    Ok(plan.message)
}

pub async fn retire(cluster: &Cluster, now: SystemTime) -> Result<String, CaError> {
    let state = CaState::read(cluster).await?;
    let (view, _) = cluster_view(cluster, now).await?;
    let plan = plan_retire(&state, &view, now)?;
    apply(cluster, &state, &plan.writes).await?;
    Ok(plan.message)
}

pub async fn abort(
    cluster: &Cluster,
    old_root: Option<(&Path, &Path)>,
    intermediate_ttl: Duration,
    now: SystemTime,
) -> Result<String, CaError> {
    let old_root = old_root
        .map(|(cert, key)| RootWithKey::read(cert, key, now))
        .transpose()?;
    let state = CaState::read(cluster).await?;
    let (view, _) = cluster_view(cluster, now).await?;
    let plan = plan_abort(&state, old_root.as_ref(), &view, intermediate_ttl, now)?;
    apply(cluster, &state, &plan.writes).await?;
    Ok(plan.message)
}

fn cert_text(c: &CertSummary) -> String {
    format!(
        "{} ({}, expires {})",
        c.short(),
        c.subject,
        format_time(c.not_after)
    )
}

/// `add`: the new root into the bundle, the next JWT key into the Secret.
pub fn plan_add(
    state: &CaState,
    root: &RootCert,
    what: &str,
    now: SystemTime,
) -> Result<Plan, CaError> {
    root.check_trust_domain(what, &state.trust_domain)?;
    may_add(state.rotation.as_ref())?;
    let new_root = root.fingerprint().to_owned();
    if state.has_root(&new_root) {
        return Err(Refused::RootAlreadyTrusted { given: new_root }.into());
    }
    let old_root = state.signing_root().ok_or(Refused::UnknownSigningRoot)?;
    let (jwt_pem, kid) = new_jwt_key()?;
    let mut data = state.data.clone();
    data.set(SECRET_JWT_NEXT_KEY, jwt_pem.as_bytes());
    let mut roots = state.roots.clone();
    roots.push(root.der.clone());
    let rotation = RotationState {
        phase: Phase::Added,
        old_root: old_root.clone(),
        new_root,
        added_at: unix_seconds(now),
        switched_at: None,
    };
    Ok(Plan {
        writes: vec![
            Write::Secret(data),
            Write::Bundle {
                roots,
                rotation: Some(rotation),
            },
        ],
        message: format!(
            "added root {} to the bundle next to {}, and the next JWT key {kid}; signing is unchanged.\n\
             Next: when `lanyard ca status` shows the new root on every replica and agent, \
             `lanyard ca rotate-root switch --root-cert {what} --root-key KEY`.\n",
            cert_text(&root.summary),
            short(&old_root),
        ),
    })
}

/// `switch`: signing under the new root, once every replica and agent trusts it.
pub fn plan_switch(
    state: &CaState,
    root: &RootWithKey,
    view: &ClusterView,
    intermediate_ttl: Duration,
    now: SystemTime,
) -> Result<Plan, CaError> {
    let given = root.cert.fingerprint().to_owned();
    let now_unix = unix_seconds(now);
    // No rotation, or the wrong phase: the rules say which.
    let Some(rotation) = state.rotation.as_ref().filter(|r| r.phase == Phase::Added) else {
        let refusal = may_switch(state.rotation.as_ref(), view, None)
            .err()
            .unwrap_or(Refusal::NoRotation);
        return Err(refusal.into());
    };
    if given != rotation.new_root {
        return Err(Refused::NotTheNewRoot {
            given,
            expected: rotation.new_root.clone(),
        }
        .into());
    }
    let switched = RotationState {
        phase: Phase::Switched,
        switched_at: Some(now_unix),
        ..rotation.clone()
    };
    if state.signing_root().as_deref() == Some(given.as_str())
        && state.data.get(SECRET_JWT_NEXT_KEY).is_none()
    {
        // The Secret was switched and the annotation write failed: finish it.
        return Ok(Plan {
            writes: vec![Write::Bundle {
                roots: state.roots.clone(),
                rotation: Some(switched),
            }],
            message: "completed an interrupted switch: the rotation is now `switched`.\n"
                .to_owned(),
        });
    }
    let next_kid = state
        .data
        .jwt_key_id(&state.objects.secret_ref(), SECRET_JWT_NEXT_KEY)?
        .ok_or(Refused::SecretIncomplete {
            key: SECRET_JWT_NEXT_KEY,
            phase: Phase::Added.to_string(),
        })?;
    may_switch(state.rotation.as_ref(), view, Some(&next_kid))?;
    let issuer = root.issue_intermediate(intermediate_ttl, now)?;
    let mut data = state.data.clone();
    data.set_intermediate(&issuer);
    data.rename(SECRET_JWT_KEY, SECRET_JWT_PREVIOUS_KEY);
    data.rename(SECRET_JWT_NEXT_KEY, SECRET_JWT_KEY);
    let intermediate = CertSummary::of(issuer.cert_der());
    Ok(Plan {
        writes: vec![
            Write::Secret(data),
            Write::Bundle {
                roots: state.roots.clone(),
                rotation: Some(switched),
            },
        ],
        message: format!(
            "switched signing to intermediate {} under root {}, and JWT-SVIDs to key {next_kid}; \
             the old root and JWT key stay trusted.\n\
             Next: when `lanyard ca status` shows every replica signing under the new root, \
             no agent holding an SVID under the old one, and the old SVIDs' lifetime past, \
             `lanyard ca rotate-root retire`.\n",
            cert_text(&intermediate),
            short(&given),
        ),
    })
}

/// `retire`: the old root out of the bundle, the previous JWT key out of the Secret.
pub fn plan_retire(state: &CaState, view: &ClusterView, now: SystemTime) -> Result<Plan, CaError> {
    if state.rotation.is_none() && state.data.get(SECRET_JWT_PREVIOUS_KEY).is_some() {
        // The bundle was retired and the Secret write failed: finish it.
        let mut data = state.data.clone();
        data.remove(SECRET_JWT_PREVIOUS_KEY);
        return Ok(Plan {
            writes: vec![Write::Secret(data)],
            message: format!(
                "completed an interrupted retire: removed `{SECRET_JWT_PREVIOUS_KEY}` from {}.\n",
                state.objects.secret_ref()
            ),
        });
    }
    may_retire(state.rotation.as_ref(), view, unix_seconds(now))?;
    let rotation = state
        .rotation
        .as_ref()
        .expect("may_retire needs a rotation");
    let roots: Vec<_> = state
        .roots
        .iter()
        .filter(|r| certificate_fingerprint(r) == rotation.new_root)
        .cloned()
        .collect();
    if roots.is_empty() {
        return Err(Refused::RootNotInBundle {
            given: rotation.new_root.clone(),
        }
        .into());
    }
    let mut data = state.data.clone();
    data.remove(SECRET_JWT_PREVIOUS_KEY);
    Ok(Plan {
        writes: vec![
            Write::Bundle {
                roots,
                rotation: None,
            },
            Write::Secret(data),
        ],
        message: format!(
            "retired root {}: the bundle holds only root {}, and the previous JWT key is gone. The rotation is complete.\n",
            short(&rotation.old_root),
            short(&rotation.new_root),
        ),
    })
}

/// `abort`: one phase back.
pub fn plan_abort(
    state: &CaState,
    old_root: Option<&RootWithKey>,
    view: &ClusterView,
    intermediate_ttl: Duration,
    now: SystemTime,
) -> Result<Plan, CaError> {
    let Some(rotation) = state.rotation.as_ref() else {
        if state.data.get(SECRET_JWT_NEXT_KEY).is_some() {
            // An abort (or an add) stopped between its writes: the next key is all that is left.
            let mut data = state.data.clone();
            data.remove(SECRET_JWT_NEXT_KEY);
            return Ok(Plan {
                writes: vec![Write::Secret(data)],
                message: format!(
                    "no rotation is in progress; removed the leftover `{SECRET_JWT_NEXT_KEY}` of an interrupted add or abort from {}.\n",
                    state.objects.secret_ref()
                ),
            });
        }
        return Err(Refusal::NoRotation.into());
    };
    match rotation.phase {
        Phase::Added => abort_added(state, rotation, view, now),
        Phase::Switched => {
            let old_root = old_root.ok_or(Refused::NeedsOldRoot)?;
            abort_switched(state, rotation, old_root, intermediate_ttl, now)
        }
    }
}

fn abort_added(
    state: &CaState,
    rotation: &RotationState,
    view: &ClusterView,
    now: SystemTime,
) -> Result<Plan, CaError> {
    if state.signing_root().as_deref() == Some(rotation.new_root.as_str()) {
        return Err(Refused::InterruptedSwitch.into());
    }
    if let Some(switched_back_at) = rotation.switched_at {
        // Signing was under the new root once: removing it waits as retire does, mirrored.
        let mirror = RotationState {
            phase: Phase::Switched,
            old_root: rotation.new_root.clone(),
            new_root: rotation.old_root.clone(),
            added_at: rotation.added_at,
            switched_at: Some(switched_back_at),
        };
        may_retire(Some(&mirror), view, unix_seconds(now)).map_err(Refused::AbortNotPropagated)?;
    }
    let roots: Vec<_> = state
        .roots
        .iter()
        .filter(|r| certificate_fingerprint(r) != rotation.new_root)
        .cloned()
        .collect();
    let mut data = state.data.clone();
    data.remove(SECRET_JWT_NEXT_KEY);
    Ok(Plan {
        writes: vec![
            Write::Bundle {
                roots,
                rotation: None,
            },
            Write::Secret(data),
        ],
        message: format!(
            "aborted the rotation: root {} and the next JWT key are gone; signing stays under root {}.\n",
            short(&rotation.new_root),
            short(&rotation.old_root),
        ),
    })
}

fn abort_switched(
    state: &CaState,
    rotation: &RotationState,
    old_root: &RootWithKey,
    intermediate_ttl: Duration,
    now: SystemTime,
) -> Result<Plan, CaError> {
    let given = old_root.cert.fingerprint().to_owned();
    if given != rotation.old_root {
        return Err(Refused::NotTheOldRoot {
            given,
            expected: rotation.old_root.clone(),
        }
        .into());
    }
    if !state.has_root(&given) {
        return Err(Refused::RootNotInBundle { given }.into());
    }
    let back = RotationState {
        phase: Phase::Added,
        switched_at: Some(unix_seconds(now)),
        ..rotation.clone()
    };
    if state.signing_root().as_deref() == Some(given.as_str())
        && state.data.get(SECRET_JWT_PREVIOUS_KEY).is_none()
    {
        return Ok(Plan {
            writes: vec![Write::Bundle {
                roots: state.roots.clone(),
                rotation: Some(back),
            }],
            message: "completed an interrupted abort: the rotation is back to `added`.\n"
                .to_owned(),
        });
    }
    if state.data.get(SECRET_JWT_PREVIOUS_KEY).is_none() {
        return Err(Refused::SecretIncomplete {
            key: SECRET_JWT_PREVIOUS_KEY,
            phase: Phase::Switched.to_string(),
        }
        .into());
    }
    let issuer = old_root.issue_intermediate(intermediate_ttl, now)?;
    let mut data = state.data.clone();
    data.set_intermediate(&issuer);
    data.rename(SECRET_JWT_KEY, SECRET_JWT_NEXT_KEY);
    data.rename(SECRET_JWT_PREVIOUS_KEY, SECRET_JWT_KEY);
    let intermediate = CertSummary::of(issuer.cert_der());
    Ok(Plan {
        writes: vec![
            Write::Secret(data),
            Write::Bundle {
                roots: state.roots.clone(),
                rotation: Some(back),
            },
        ],
        message: format!(
            "switched signing back to intermediate {} under the old root {}, and JWT-SVIDs to the old key; \
             both roots stay trusted (phase `added`).\n\
             Next: `lanyard ca rotate-root switch` to try again, or `lanyard ca rotate-root abort` once \
             `lanyard ca status` shows nothing left under root {}.\n",
            cert_text(&intermediate),
            short(&given),
            short(&rotation.new_root),
        ),
    })
}
