//! The CA's life in a cluster: the facts `lanyard-server` (which publishes and reports them) and
//! `lanyard ca` (which reads them and moves a rotation on) must agree on.
//!
//! Module map:
//! - [`names`]: where the CA lives (the Secret's and bundle ConfigMap's keys, the rotation
//!   annotation) and where replicas report.
//! - [`report`]: what each server replica reports: the bundle it serves, what it signs with,
//!   and which bundle each of its agents acknowledged.
//! - [`rotation`]: the root rotation in progress (`added`, then `switched`), as recorded on the
//!   bundle ConfigMap.
//! - [`propagation`]: how far a bundle has reached, and whether the next phase may start
//!   ([`propagation::Refusal`] says why not).
//! - [`expiry`]: when a root or intermediate is close enough to expiry to warn.

pub mod expiry;
pub mod names;
pub mod propagation;
pub mod report;
pub mod rotation;

/// Whole Unix seconds (0 before 1970): every time in reports and annotations.
pub fn unix_seconds(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
