//! `lanyard ca`: the CA's whole life in a cluster. The CA Secret and bundle ConfigMap are
//! written directly with the kube client (never through `kubectl apply`, whose last-applied
//! annotation would copy the key), and a root rotation moves on only when the replicas'
//! reports show the previous phase everywhere (the rules are
//! [`lanyard_ca_lifecycle::propagation`]'s; nothing here decides a phase on its own).
//!
//! Module map:
//! - [`material`]: certificates and keys as files and PEM: checking a root and its key,
//!   generating roots, intermediates and JWT keys, the Secret's contents. No cluster.
//! - [`kube`]: the Secret, the bundle ConfigMap and the replicas' reports through the kube
//!   client, each call bounded, writes guarded by `resourceVersion`.
//! - [`state`]: the CA as the cluster holds it (roots, intermediate, rotation phase), read and
//!   checked, and how a command's writes are applied in a safe order.
//! - [`init`]: `new-root` (files) and `init` (creates the Secret and the ConfigMap).
//! - [`issue_intermediate`]: a new intermediate under the root the current one chains to.
//! - [`rotate_root`]: `rotate-root add|switch|retire|abort`.
//! - [`status`]: `status` (text and JSON), and the cluster warnings `lanyard check --cluster`
//!   shares.
//!
//! Every command either does all it says or, refused, writes nothing: [`CaError::Refused`]
//! (`refused (<label>): <message>`).

pub mod init;
pub mod issue_intermediate;
pub mod kube;
pub mod material;
pub mod rotate_root;
pub mod state;
pub mod status;

use lanyard_ca_lifecycle::propagation::Refusal;
use lanyard_ca_lifecycle::report::short;

pub use self::kube::{CaObjects, Cluster, KubeError};
pub use self::material::MaterialError;

/// Why a command will not do what it was asked (nothing was written). `Display` is the
/// snake_case label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// A rotation phase out of turn, or before the previous one propagated.
    Phase(Refusal),
    /// `init` over an existing CA.
    CaExists { what: String },
    /// `issue-intermediate` with a root the current intermediate does not chain to.
    ForeignRoot { given: String, signing: String },
    /// The Secret's intermediate chains to no root of the bundle.
    UnknownSigningRoot,
    /// The Secret signs under the new root while the annotation still says `added`: a switch
    /// was interrupted between its two writes.
    InterruptedSwitch,
    /// `abort` from `added` after an abort from `switched`: SVIDs under the root being removed
    /// may still be held or valid.
    AbortNotPropagated(Refusal),
    /// A root the bundle does not hold.
    RootNotInBundle { given: String },
    /// `rotate-root add` with a root the bundle already trusts.
    RootAlreadyTrusted { given: String },
    /// `switch` with another root than the one `add` added.
    NotTheNewRoot { given: String, expected: String },
    /// `abort` (from switched) with another root than the one being retired.
    NotTheOldRoot { given: String, expected: String },
    /// `abort` from `switched` without the old root's certificate and key.
    NeedsOldRoot,
    /// The Secret lacks a key the phase needs (edited by hand?).
    SecretIncomplete { key: &'static str, phase: String },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Phase(refusal) => write!(f, "{refusal}"),
            Self::CaExists { .. } => f.write_str("ca_exists"),
            Self::ForeignRoot { .. } => f.write_str("foreign_root"),
            Self::UnknownSigningRoot => f.write_str("unknown_signing_root"),
            Self::InterruptedSwitch => f.write_str("interrupted_switch"),
            Self::AbortNotPropagated(refusal) => write!(f, "{refusal}"),
            Self::RootNotInBundle { .. } => f.write_str("root_not_in_bundle"),
            Self::RootAlreadyTrusted { .. } => f.write_str("root_already_trusted"),
            Self::NotTheNewRoot { .. } => f.write_str("not_the_new_root"),
            Self::NotTheOldRoot { .. } => f.write_str("not_the_old_root"),
            Self::NeedsOldRoot => f.write_str("needs_old_root"),
            Self::SecretIncomplete { .. } => f.write_str("secret_incomplete"),
        }
    }
}

impl Refused {
    /// What happened and what to do, for people.
    pub fn message(&self) -> String {
        match self {
            Self::Phase(refusal) => refusal.message(),
            Self::CaExists { what } => format!(
                "{what} already exists; `lanyard ca init` creates a CA only where there is none (see `lanyard ca status`; a new intermediate is `lanyard ca issue-intermediate`, a new root `lanyard ca rotate-root`)"
            ),
            Self::ForeignRoot { given, signing } => format!(
                "root {} is not the root the current intermediate chains to ({}); give that root's certificate and key",
                short(given),
                short(signing)
            ),
            Self::UnknownSigningRoot => "the CA Secret's intermediate chains to no root of the bundle ConfigMap; inspect both (`lanyard ca status`) before going on".to_owned(),
            Self::InterruptedSwitch => "the CA Secret already signs under the new root but the rotation still says `added`: a switch was interrupted. Run `lanyard ca rotate-root switch` again to complete it (then abort from `switched` if that is what you want)".to_owned(),
            Self::AbortNotPropagated(refusal) => match refusal {
                Refusal::NotPropagated { propagation, .. } => format!(
                    "refusing to abort: signing back under the old root has reached {propagation}; still waiting for: {}. Watch `lanyard ca status` and retry",
                    propagation.waiting_for.join(", ")
                ),
                Refusal::OldSvidsUnexpired { until, now } => format!(
                    "refusing to abort: SVIDs issued under the root being removed may be valid for {} more seconds (until unix {until}); retry then",
                    until - now
                ),
                other => other.message(),
            },
            Self::RootNotInBundle { given } => format!(
                "root {} is not in the bundle ConfigMap's bundle.pem: nothing would trust what it signs",
                short(given)
            ),
            Self::RootAlreadyTrusted { given } => format!(
                "root {} is already in the bundle; a rotation needs a new root (`lanyard ca new-root`)",
                short(given)
            ),
            Self::NotTheNewRoot { given, expected } => format!(
                "root {} is not the root this rotation added ({}); give that root's certificate and key",
                short(given),
                short(expected)
            ),
            Self::NotTheOldRoot { given, expected } => format!(
                "root {} is not the root this rotation is retiring ({}); aborting from `switched` signs again under the old root: give its certificate and key",
                short(given),
                short(expected)
            ),
            Self::NeedsOldRoot => "the rotation has switched signing to the new root; aborting signs again under the old one: give --root-cert and --root-key of the OLD root".to_owned(),
            Self::SecretIncomplete { key, phase } => format!(
                "the CA Secret has no `{key}`, which phase {phase} needs (was it edited by hand?); `lanyard ca rotate-root abort` and start again"
            ),
        }
    }
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Self {
        Self::Phase(refusal)
    }
}

/// Why a `lanyard ca` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("refused ({0}): {msg}", msg = .0.message())]
    Refused(Refused),
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error(transparent)]
    Material(#[from] MaterialError),
    /// The cluster has no CA (or an unreadable one).
    #[error("{0}")]
    State(#[from] state::StateError),
    /// A write after an earlier one of the same command failed.
    #[error("{done}; then {failed}. {next}")]
    Incomplete {
        done: String,
        failed: Box<KubeError>,
        next: String,
    },
}

impl From<Refused> for CaError {
    fn from(refused: Refused) -> Self {
        Self::Refused(refused)
    }
}

impl From<Refusal> for CaError {
    fn from(refusal: Refusal) -> Self {
        Self::Refused(Refused::Phase(refusal))
    }
}
