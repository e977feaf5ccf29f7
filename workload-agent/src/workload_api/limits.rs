//! The Workload API's own bounds: per caller and per call. Connection bounds are the
//! socket's ([`crate::socket::ConnectionLimits`]).

/// The bounds of the Workload API service. [`Limits::default`] suits a node agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Open streaming RPCs (FetchX509SVID, FetchX509Bundles, FetchJWTBundles) per caller;
    /// the next one is refused with `ResourceExhausted`.
    pub streams_per_caller: usize,
    /// Largest request message (the biggest legitimate one is a JWT to validate).
    pub max_request_bytes: usize,
    /// Largest response message (bundles of many federated trust domains).
    pub max_response_bytes: usize,
    /// FetchJWTSVID's token cache and per-caller mint budget.
    pub jwt: super::JwtLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            streams_per_caller: 64,
            max_request_bytes: 128 * 1024,
            max_response_bytes: 16 * 1024 * 1024,
            jwt: super::JwtLimits::default(),
        }
    }
}
