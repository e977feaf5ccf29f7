//! Why an SDS call was refused or a stream ended: [`SdsRefusal`], whose `Display` is the log
//! label, [`SdsRefusal::code`] the gRPC code and [`SdsRefusal::message`] the status message.
//! Attestation and "no identity" are worded exactly as the Workload API words them.

use tonic::{Code, Status};

use super::names::NamesError;
use crate::identities::IdentityError;
use crate::socket::{AdmissionRefusal, TooManyStreams};
use crate::workload_api::Refusal;

/// Most names quoted in a refusal's message (the status message travels in a header).
const QUOTED_NAMES: usize = 8;
/// Longest name quoted in a refusal's message, in bytes.
const QUOTED_NAME_LEN: usize = 256;

/// Why an SDS call was refused. `Display` is a snake_case label.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SdsRefusal {
    /// Refused by the socket's admission layer (attestation), as the Workload API refuses.
    #[error("{0}")]
    Admission(Refusal),
    /// The caller holds no identity.
    #[error("no_identity")]
    NoIdentity,
    /// Names the caller is not entitled to, or that name nothing (SPIRE's refusal).
    #[error("not_authorized")]
    NotAuthorized { names: Vec<String> },
    #[error("{0}")]
    Names(NamesError),
    /// A `type_url` other than the Secret's.
    #[error("wrong_type_url")]
    WrongTypeUrl(String),
    /// No X.509 authorities for a trust domain the answer needs (not received yet).
    #[error("no_bundle")]
    NoBundle { trust_domain: String },
    /// The certificate manager handed over an SVID without its key (a bug).
    #[error("svid_without_key")]
    SvidWithoutKey { spiffe_id: String },
    /// Entitled, but the identities could not be had now (see [`IdentityError`]).
    #[error("{}", .0)]
    Identity(IdentityError),
    #[error("too_many_streams")]
    TooManyStreams(TooManyStreams),
    #[error("delta_unimplemented")]
    DeltaUnimplemented,
    #[error("shutting_down")]
    ShuttingDown,
    #[error("source_stopped")]
    SourceStopped,
    /// Reading the client's next request failed (e.g. over the size bound).
    #[error("bad_request_stream")]
    RequestStream(Status),
}

impl SdsRefusal {
    pub fn code(&self) -> Code {
        match self {
            Self::Admission(refusal) => refusal.code(),
            Self::NoIdentity => Code::PermissionDenied,
            Self::NotAuthorized { .. } | Self::Names(_) | Self::WrongTypeUrl(_) => {
                Code::InvalidArgument
            }
            Self::Identity(e) => Refusal::from(e.clone()).code(),
            Self::NoBundle { .. }
            | Self::SvidWithoutKey { .. }
            | Self::ShuttingDown
            | Self::SourceStopped => Code::Unavailable,
            Self::TooManyStreams(_) => Code::ResourceExhausted,
            Self::DeltaUnimplemented => Code::Unimplemented,
            Self::RequestStream(status) => status.code(),
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::Admission(refusal) => refusal.message(),
            // The Workload API's words (clients match them).
            Self::NoIdentity => Refusal::NoIdentity.message(),
            Self::NotAuthorized { names } => format!(
                "workload is not authorized for the requested identities {}",
                quoted(names)
            ),
            Self::Names(e) => e.message(),
            Self::WrongTypeUrl(url) => format!(
                "this SDS serves only {}, not {:?}",
                super::secrets::secret_type_url(),
                truncated(url)
            ),
            Self::NoBundle { trust_domain } => {
                format!("no X.509 trust bundle for {trust_domain} yet")
            }
            Self::SvidWithoutKey { spiffe_id } => {
                format!("the SVID for {spiffe_id} has no private key")
            }
            Self::Identity(e) => e.message(),
            Self::TooManyStreams(e) => format!(
                "this caller already has {} open SDS streams; close one first",
                e.limit
            ),
            Self::DeltaUnimplemented => {
                "DeltaSecrets is not served: use StreamSecrets (state of the world), as with \
                 SPIRE's agent"
                    .to_owned()
            }
            Self::ShuttingDown => "the agent is shutting down; reconnect".to_owned(),
            Self::SourceStopped => "the agent's identity source stopped; reconnect".to_owned(),
            Self::RequestStream(status) => format!("reading the request: {}", status.message()),
        }
    }

    pub fn to_status(&self) -> Status {
        Status::new(self.code(), self.message())
    }

    /// Whether an open stream ends on this refusal. Else it is temporary (as the Workload
    /// API's streams treat it): the stream keeps what it sent (or has not sent anything yet)
    /// and tries again at the next change.
    pub fn ends_stream(&self) -> bool {
        !matches!(
            self,
            Self::NoBundle { .. } | Self::SvidWithoutKey { .. } | Self::Identity(_)
        )
    }
}

impl From<AdmissionRefusal> for SdsRefusal {
    fn from(refusal: AdmissionRefusal) -> Self {
        Self::Admission(Refusal::from(refusal))
    }
}

impl From<IdentityError> for SdsRefusal {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::NoIdentity => Self::NoIdentity,
            other => Self::Identity(other),
        }
    }
}

impl From<NamesError> for SdsRefusal {
    fn from(e: NamesError) -> Self {
        Self::Names(e)
    }
}

/// `names` as SPIRE quotes them (`["a" "b"]`), bounded.
fn quoted(names: &[String]) -> String {
    let mut out: Vec<String> = names
        .iter()
        .take(QUOTED_NAMES)
        .map(|n| format!("{:?}", truncated(n)))
        .collect();
    if names.len() > QUOTED_NAMES {
        out.push(format!("and {} more", names.len() - QUOTED_NAMES));
    }
    format!("[{}]", out.join(" "))
}

fn truncated(s: &str) -> &str {
    if s.len() <= QUOTED_NAME_LEN {
        return s;
    }
    let mut end = QUOTED_NAME_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_words() {
        assert_eq!(SdsRefusal::NoIdentity.code(), Code::PermissionDenied);
        assert_eq!(SdsRefusal::NoIdentity.message(), "no identity issued");
        let unknown = SdsRefusal::NotAuthorized {
            names: vec!["spiffe://example.org/other".into()],
        };
        assert_eq!(unknown.code(), Code::InvalidArgument);
        assert_eq!(
            unknown.message(),
            "workload is not authorized for the requested identities \
             [\"spiffe://example.org/other\"]"
        );
        assert_eq!(
            SdsRefusal::from(IdentityError::NotReady("x".into())).code(),
            Code::Unavailable
        );
        assert_eq!(SdsRefusal::DeltaUnimplemented.code(), Code::Unimplemented);
    }

    #[test]
    fn quoted_names_are_bounded() {
        let names: Vec<String> = (0..100).map(|_| "x".repeat(5000)).collect();
        let message = SdsRefusal::NotAuthorized { names }.message();
        assert!(message.len() < 4096, "{}", message.len());
        assert!(message.ends_with("and 92 more]"));
    }

    #[test]
    fn temporary_refusals_keep_the_stream() {
        assert!(!SdsRefusal::from(IdentityError::NotReady("x".into())).ends_stream());
        assert!(!SdsRefusal::from(IdentityError::Refused("x".into())).ends_stream());
        assert!(SdsRefusal::from(IdentityError::NoIdentity).ends_stream());
        assert!(
            !SdsRefusal::NoBundle {
                trust_domain: "spiffe://a.test".into()
            }
            .ends_stream()
        );
        assert!(SdsRefusal::NoIdentity.ends_stream());
        assert!(SdsRefusal::NotAuthorized { names: vec![] }.ends_stream());
    }
}
