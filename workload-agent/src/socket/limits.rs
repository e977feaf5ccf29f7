//! Connection-level bounds of the agent's socket, the same for every service on it.
//!
//! Every caller shares one agent, so one misbehaving workload must not be able to starve the
//! others: open connections, HTTP/2 streams per connection and header sizes are bounded for
//! everyone. What a service allows per call or per caller (message sizes, open streams) is
//! that service's own (e.g. [`crate::workload_api::Limits`]).

use std::time::Duration;

use tonic::transport::Server;

/// The connection bounds of the agent's socket. [`ConnectionLimits::default`] suits a node
/// agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections on the socket, all callers together; beyond it, new connections wait
    /// in the kernel's backlog until one closes.
    pub max_connections: usize,
    /// HTTP/2 concurrent streams per connection.
    pub max_concurrent_streams_per_connection: u32,
    /// HTTP/2 header list size (all request headers of one call, decoded).
    pub max_header_list_bytes: u32,
    /// How long a new connection has to send the HTTP/2 connection preface; a silent or
    /// truncated one is closed after it.
    pub preface_timeout: Duration,
    /// HTTP/2 keepalive ping interval, to find dead peers holding streams open.
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_concurrent_streams_per_connection: 64,
            max_header_list_bytes: 16 * 1024,
            preface_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// A tonic server builder with the HTTP/2 bounds of `limits` (header list size, concurrent
/// streams per connection, keepalive to find dead peers).
pub fn server_builder(limits: &ConnectionLimits) -> Server {
    Server::builder()
        .http2_max_header_list_size(limits.max_header_list_bytes)
        .max_concurrent_streams(limits.max_concurrent_streams_per_connection)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
}
