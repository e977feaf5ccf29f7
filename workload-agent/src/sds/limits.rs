//! The SDS service's own bounds.

/// Bounds of the SDS service (the socket's connection bounds apply too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdsLimits {
    /// Open `StreamSecrets` streams per caller (uid, pod). Envoy opens one per distinct
    /// secret name it uses (usually two: `default` and a validation context).
    pub streams_per_caller: usize,
    /// Largest `DiscoveryRequest`. Envoy's `Node` lists every extension compiled in, tens of
    /// KiB; the default leaves room for that.
    pub max_request_bytes: usize,
    /// Largest `DiscoveryResponse` (certificates and every entitled bundle, in PEM).
    pub max_response_bytes: usize,
}

impl Default for SdsLimits {
    fn default() -> Self {
        Self {
            streams_per_caller: 64,
            max_request_bytes: 512 * 1024,
            max_response_bytes: 4 * 1024 * 1024,
        }
    }
}
