//! `lanyard ca issue-intermediate`: a new signing intermediate from a root key file, replacing
//! the Secret's `tls.crt` and `tls.key` only (JWT keys and the bundle stay). The root must be
//! in the bundle and be the one the current intermediate chains to: anything else would make
//! the replicas sign under a root some peers may not trust yet (that is `rotate-root`).

use std::path::Path;
use std::time::{Duration, SystemTime};

use lanyard_ca_lifecycle::report::CertSummary;
use lanyard_ca_lifecycle::unix_seconds;

use super::material::{RootWithKey, format_time};
use super::state::{CaState, Write, apply};
use super::{CaError, Cluster, Refused};

/// What [`plan`] decided: the write, and what to tell the user.
#[derive(Debug)]
pub struct Plan {
    pub writes: Vec<Write>,
    pub message: String,
}

/// `lanyard ca issue-intermediate`.
pub async fn issue_intermediate(
    cluster: &Cluster,
    root_cert: &Path,
    root_key: &Path,
    ttl: Duration,
    now: SystemTime,
) -> Result<String, CaError> {
    let root = RootWithKey::read(root_cert, root_key, now)?;
    let state = CaState::read(cluster).await?;
    let plan = plan(&state, &root, &root_cert.display().to_string(), ttl, now)?;
    apply(cluster, &state, &plan.writes).await?;
    Ok(plan.message)
}

/// The checks and the new Secret data, without the cluster.
pub fn plan(
    state: &CaState,
    root: &RootWithKey,
    what: &str,
    ttl: Duration,
    now: SystemTime,
) -> Result<Plan, CaError> {
    root.cert.check_trust_domain(what, &state.trust_domain)?;
    let given = root.cert.fingerprint().to_owned();
    if !state.has_root(&given) {
        return Err(Refused::RootNotInBundle { given }.into());
    }
    match state.signing_root() {
        None => return Err(Refused::UnknownSigningRoot.into()),
        Some(signing) if signing != given => {
            return Err(Refused::ForeignRoot { given, signing }.into());
        }
        Some(_) => {}
    }
    let issuer = root.issue_intermediate(ttl, now)?;
    let mut data = state.data.clone();
    data.set_intermediate(&issuer);
    let summary = CertSummary::of(issuer.cert_der());
    let mut message = format!(
        "wrote a new intermediate {} (expires {}) under root {} to {}; every replica signs with it once it sees the Secret (`lanyard ca status`).\n",
        summary.short(),
        format_time(summary.not_after),
        root.cert.summary.short(),
        state.objects.secret_ref(),
    );
    let asked = unix_seconds(now).saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
    if summary.not_after < asked.saturating_sub(60) {
        message.push_str(&format!(
            "note: it ends with its root at {}, before the {} asked for: rotate the root (`lanyard ca rotate-root`).\n",
            format_time(summary.not_after),
            humantime::format_duration(ttl)
        ));
    }
    Ok(Plan {
        writes: vec![Write::Secret(data)],
        message,
    })
}
