//! Why a Workload API call was refused: [`Refusal`], whose `Display` is the metric label,
//! [`Refusal::code`] the gRPC code and [`Refusal::message`] the status message.

use lanyard_proto::WORKLOAD_API_HEADER;
use lanyard_svid::jwt::JwtError;
use tonic::{Code, Status};

use super::convert::ConvertError;
use super::jwt_cache::RateLimited;
use crate::attest::AttestError;
use crate::identities::IdentityError;
use crate::socket::{AdmissionRefusal, TooManyStreams};

/// Why a call was refused. `Display` is a snake_case metric label; [`Refusal::message`] is
/// the status message, [`Refusal::code`] its gRPC code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    #[error("missing_header")]
    MissingHeader,
    #[error("bad_header")]
    BadHeader,
    /// The kernel gave no credentials for the connection.
    #[error("no_peer_credentials")]
    NoPeerCredentials,
    /// Attestation failed; `label` is the [`AttestError`] label.
    #[error("attestation_{label}")]
    Attestation {
        label: &'static str,
        message: String,
        denied: bool,
    },
    #[error("no_identity")]
    NoIdentity,
    /// A `spiffe_id` the caller is not entitled to.
    #[error("not_entitled")]
    NotEntitled { spiffe_id: String },
    #[error("not_ready")]
    NotReady(String),
    #[error("agent_not_attested")]
    AgentNotAttested,
    #[error("server_refused")]
    ServerRefused(String),
    #[error("too_many_streams")]
    TooManyStreams(TooManyStreams),
    /// FetchJWTSVID: the caller used up its share of the node's mint budget.
    #[error("rate_limited")]
    RateLimited(RateLimited),
    #[error("missing_audience")]
    MissingAudience,
    #[error("bad_audience")]
    BadAudience(String),
    #[error("bad_spiffe_id")]
    BadSpiffeId(String),
    #[error("missing_svid")]
    MissingSvid,
    /// ValidateJWTSVID refused the token; the label is the [`JwtError`] label.
    #[error("jwt_{0}")]
    InvalidJwt(JwtError),
    #[error("unimplemented")]
    Unimplemented,
    #[error("shutting_down")]
    ShuttingDown,
    /// The identity source stopped (the agent is going down).
    #[error("source_stopped")]
    SourceStopped,
    /// What the manager handed over cannot be served.
    #[error("{0}")]
    Convert(ConvertError),
}

impl Refusal {
    pub fn code(&self) -> Code {
        match self {
            Self::MissingHeader
            | Self::BadHeader
            | Self::MissingAudience
            | Self::BadAudience(_)
            | Self::BadSpiffeId(_)
            | Self::MissingSvid
            | Self::InvalidJwt(_) => Code::InvalidArgument,
            Self::Attestation { denied: true, .. }
            | Self::NoIdentity
            | Self::NotEntitled { .. }
            | Self::ServerRefused(_) => Code::PermissionDenied,
            Self::NoPeerCredentials
            | Self::Attestation { denied: false, .. }
            | Self::NotReady(_)
            | Self::AgentNotAttested
            | Self::ShuttingDown
            | Self::SourceStopped
            | Self::Convert(_) => Code::Unavailable,
            Self::TooManyStreams(_) | Self::RateLimited(_) => Code::ResourceExhausted,
            Self::Unimplemented => Code::Unimplemented,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::MissingHeader => {
                format!("security header missing: set metadata {WORKLOAD_API_HEADER}: true")
            }
            Self::BadHeader => format!(
                "security header invalid: metadata {WORKLOAD_API_HEADER} must be exactly one \
                 value `true`"
            ),
            Self::NoPeerCredentials => {
                "the kernel gave no peer credentials for this connection".to_owned()
            }
            Self::Attestation { label, message, .. } => {
                format!("workload attestation failed ({label}): {message}")
            }
            // Exactly this text: the Rust client matches it to retry with backoff.
            Self::NoIdentity => "no identity issued".to_owned(),
            Self::NotEntitled { spiffe_id } => {
                format!("this workload is not entitled to {spiffe_id}")
            }
            Self::NotReady(why) => IdentityError::NotReady(why.clone()).message(),
            Self::AgentNotAttested => IdentityError::AgentNotAttested.message(),
            Self::ServerRefused(why) => IdentityError::Refused(why.clone()).message(),
            Self::TooManyStreams(e) => e.message(),
            Self::RateLimited(e) => e.message(),
            Self::MissingAudience => "audience is required".to_owned(),
            Self::BadAudience(why) => format!("bad audience: {why}"),
            Self::BadSpiffeId(why) => format!("spiffe_id is not a SPIFFE ID: {why}"),
            Self::MissingSvid => "svid (the token to validate) is required".to_owned(),
            Self::InvalidJwt(e) => format!("invalid JWT-SVID ({}): {}", e.label(), e.message()),
            Self::Unimplemented => "Lanyard does not serve WIT-SVIDs".to_owned(),
            Self::ShuttingDown => "the agent is shutting down; reconnect".to_owned(),
            Self::SourceStopped => "the agent's identity source stopped; reconnect".to_owned(),
            Self::Convert(e) => e.message(),
        }
    }

    pub fn to_status(&self) -> Status {
        Status::new(self.code(), self.message())
    }

    /// Whether an open stream ends on this refusal (else the last state stays served and
    /// the next change is awaited).
    pub(super) fn ends_stream(&self) -> bool {
        matches!(self, Self::NoIdentity | Self::NotEntitled { .. })
    }
}

impl From<IdentityError> for Refusal {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::NoIdentity => Self::NoIdentity,
            IdentityError::NotReady(why) => Self::NotReady(why),
            IdentityError::Refused(why) => Self::ServerRefused(why),
            IdentityError::AgentNotAttested => Self::AgentNotAttested,
        }
    }
}

impl From<AttestError> for Refusal {
    fn from(e: AttestError) -> Self {
        attestation_refusal(&e)
    }
}

impl From<AdmissionRefusal> for Refusal {
    fn from(refusal: AdmissionRefusal) -> Self {
        match refusal {
            AdmissionRefusal::MissingHeader => Self::MissingHeader,
            AdmissionRefusal::BadHeader => Self::BadHeader,
            AdmissionRefusal::NoPeerCredentials => Self::NoPeerCredentials,
            AdmissionRefusal::Attestation(e) => attestation_refusal(&e),
        }
    }
}

fn attestation_refusal(e: &AttestError) -> Refusal {
    // A different process behind the PID, a cgroup claiming a pod it cannot prove, or a
    // caller of another pod on a pod's socket, is a denial; anything else (gone, unreadable)
    // is a temporary failure the client may retry.
    let denied = matches!(
        e,
        AttestError::PidReused { .. }
            | AttestError::BinaryChanged { .. }
            | AttestError::Cgroup(..)
            | AttestError::PodMismatch { .. }
    );
    Refusal::Attestation {
        label: e.label(),
        message: e.message(),
        denied,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_identity_text_and_codes() {
        assert_eq!(Refusal::NoIdentity.message(), "no identity issued");
        assert_eq!(Refusal::NoIdentity.code(), Code::PermissionDenied);
        assert_eq!(Refusal::MissingHeader.code(), Code::InvalidArgument);
        assert_eq!(
            Refusal::TooManyStreams(TooManyStreams { limit: 1 }).code(),
            Code::ResourceExhausted
        );
        assert_eq!(
            Refusal::from(IdentityError::NotReady("x".into())).code(),
            Code::Unavailable
        );
        assert_eq!(Refusal::NoIdentity.to_string(), "no_identity");
    }

    #[test]
    fn admission_refusals_keep_their_labels_and_codes() {
        assert_eq!(
            Refusal::from(AdmissionRefusal::BadHeader).code(),
            Code::InvalidArgument
        );
        let reused = AdmissionRefusal::Attestation(std::sync::Arc::new(AttestError::PidReused {
            pid: 1,
            expected: 1,
            found: 2,
        }));
        let refusal = Refusal::from(reused.clone());
        assert_eq!(refusal.code(), Code::PermissionDenied);
        assert_eq!(refusal.to_string(), reused.to_string());
    }
}
