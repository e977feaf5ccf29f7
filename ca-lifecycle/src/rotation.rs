//! The root rotation in progress, recorded as JSON in the bundle ConfigMap's
//! [`ROTATION_ANNOTATION`](crate::names::ROTATION_ANNOTATION), so every `lanyard ca` run (from
//! any machine) sees the same phase:
//!
//! 1. `added`: the new root is in `bundle.pem` next to the old one, and the next JWT key is
//!    published (`jwt-next.key` in the Secret). Signing is unchanged.
//! 2. `switched`: the Secret's intermediate chains to the new root and `jwt.key` is the new
//!    key (the old one stays published as `jwt-previous.key`). Both roots are still trusted.
//! 3. retired (no annotation): `bundle.pem` holds only the new root; the old JWT key is gone.
//!
//! Each phase may start only once the previous one has propagated
//! ([`crate::propagation`]). `abort` steps back one phase.

use serde::{Deserialize, Serialize};

/// Which phase a rotation is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The new root is trusted; signing is still under the old one.
    Added,
    /// Signing is under the new root; the old root is still trusted.
    Switched,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Added => "added",
            Self::Switched => "switched",
        })
    }
}

/// A rotation in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationState {
    pub phase: Phase,
    /// Fingerprint of the root being retired.
    pub old_root: String,
    /// Fingerprint of the root being introduced.
    pub new_root: String,
    /// Unix seconds when the new root was added.
    pub added_at: i64,
    /// Unix seconds when signing switched (phase `switched`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched_at: Option<i64>,
}

/// Why the annotation could not be read.
#[derive(Debug, thiserror::Error)]
#[error(
    "the bundle ConfigMap's rotation annotation is unreadable ({0}); inspect it with `kubectl get configmap -o yaml` before going on"
)]
pub struct AnnotationError(#[from] serde_json::Error);

impl RotationState {
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).expect("a rotation state always serialises")
    }

    pub fn from_annotation(text: &str) -> Result<Self, AnnotationError> {
        Ok(serde_json::from_str(text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_annotation_round_trips_and_garbage_is_an_error() {
        let state = RotationState {
            phase: Phase::Switched,
            old_root: "aa".into(),
            new_root: "bb".into(),
            added_at: 1,
            switched_at: Some(2),
        };
        let text = state.to_annotation();
        assert!(text.contains("\"phase\":\"switched\""), "{text}");
        assert_eq!(RotationState::from_annotation(&text).unwrap(), state);
        let err = RotationState::from_annotation("{\"phase\":\"later\"}").unwrap_err();
        assert!(err.to_string().contains("unreadable"), "{err}");
    }
}
