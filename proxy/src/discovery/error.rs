//! Why a discovery lookup gave no usable answer, and how lookups are counted.

/// Why a lookup gave no usable answer. `Display` is the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The agent could not be asked or did not answer (no cached answer either). Fails
    /// closed: the destination may be meshed.
    #[error("discovery_unavailable")]
    Unavailable(String),
    /// The agent refused the lookup (its `lanyard-discovery-refusal` label, e.g.
    /// `too_many_destinations`, `caller_destination_budget`, `not_ready`). Fails closed: a
    /// refusal says nothing about whether the destination is meshed.
    #[error("discovery_refused")]
    Refused { label: String, message: String },
    /// A destination known as meshed was answered unmeshed: refused, not downgraded.
    #[error("meshed_downgrade_refused")]
    DowngradeRefused,
    /// A destination known as meshed is gone (pod deleted) or its answer expired.
    #[error("meshed_destination_gone")]
    MeshedGone,
    /// The agent's answer cannot be used.
    #[error("bad_discovery_answer")]
    BadAnswer(String),
}

impl DiscoveryError {
    pub fn message(&self) -> String {
        match self {
            Self::Unavailable(why) => format!("discovery gave no answer: {why}"),
            Self::Refused { label, message } => {
                format!("discovery refused the lookup ({label}): {message}")
            }
            Self::DowngradeRefused => {
                "the destination was meshed and is now answered unmeshed; refusing plaintext".into()
            }
            Self::MeshedGone => {
                "the destination was meshed and is gone or its answer expired; refusing plaintext"
                    .into()
            }
            Self::BadAnswer(why) => format!("unusable discovery answer: {why}"),
        }
    }
}

impl From<lanyard_client::discovery::ResolveError> for DiscoveryError {
    fn from(e: lanyard_client::discovery::ResolveError) -> Self {
        use lanyard_client::discovery::ResolveError;
        match e {
            ResolveError::TimedOut(_) => Self::Unavailable("resolve timed out".into()),
            ResolveError::Refused {
                code,
                message,
                refusal: Some(label),
            } => Self::Refused {
                label,
                message: format!("{code:?}: {message}"),
            },
            ResolveError::Refused {
                code,
                message,
                refusal: None,
            } => Self::Unavailable(format!("{code:?}: {message}")),
            ResolveError::BadAnswer(why) => Self::BadAnswer(why),
        }
    }
}

/// How a lookup was answered. `Display` is the metric label: `cached`, `resolved`, or the
/// [`DiscoveryError`] label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupOutcome<'a> {
    /// From the cache (kept current by a watch).
    Cached,
    /// By a `Resolve` call to the agent.
    Resolved,
    Failed(&'a DiscoveryError),
}

impl std::fmt::Display for LookupOutcome<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cached => f.write_str("cached"),
            Self::Resolved => f.write_str("resolved"),
            Self::Failed(e) => e.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_outcomes_are_labelled() {
        assert_eq!(LookupOutcome::Cached.to_string(), "cached");
        assert_eq!(LookupOutcome::Resolved.to_string(), "resolved");
        assert_eq!(
            LookupOutcome::Failed(&DiscoveryError::MeshedGone).to_string(),
            "meshed_destination_gone"
        );
        assert_eq!(
            LookupOutcome::Failed(&DiscoveryError::Unavailable("x".into())).to_string(),
            "discovery_unavailable"
        );
    }

    #[test]
    fn client_errors_keep_their_labels() {
        use lanyard_client::discovery::ResolveError;
        let timed_out = ResolveError::TimedOut(std::time::Duration::from_secs(4));
        assert_eq!(
            DiscoveryError::from(timed_out),
            DiscoveryError::Unavailable("resolve timed out".into())
        );
        let bad = DiscoveryError::from(ResolveError::BadAnswer("x".into()));
        assert_eq!(bad.to_string(), "bad_discovery_answer");
        let refused = DiscoveryError::from(ResolveError::Refused {
            code: tonic::Code::ResourceExhausted,
            message: "too_many_destinations: full".into(),
            refusal: Some("too_many_destinations".into()),
        });
        assert!(
            matches!(&refused, DiscoveryError::Refused { label, .. } if label == "too_many_destinations"),
            "{refused:?}"
        );
        assert_eq!(refused.to_string(), "discovery_refused");
    }
}
