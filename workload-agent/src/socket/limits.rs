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
    /// Open connections on the socket, all callers together; beyond it, a new connection is
    /// accepted and closed at once (never left waiting, unpinned, in the kernel's backlog).
    pub max_connections: usize,
    /// Open connections of one uid: a quarter of [`ConnectionLimits::max_connections`], so one
    /// local user (or every pod running as one uid) cannot take the socket from the others;
    /// three more uids would have to join in to fill it, and idle ones are closed after
    /// [`ConnectionLimits::idle_timeout`].
    pub max_connections_per_uid: usize,
    /// A connection with no open stream for this long is closed (keepalive pings do not
    /// count). Long enough for a client calling every 30 s to keep its connection; a watch
    /// (FetchX509SVID) is an open stream and keeps it forever.
    pub idle_timeout: Duration,
    /// HTTP/2 receive window of one stream, and of one connection (all its streams): what a
    /// client may send before the agent reads it. Request bodies wait in these windows while
    /// the header check and attestation run, so they bound what an unadmitted connection can
    /// make the agent buffer. The largest legitimate request (a JWT to validate, at most
    /// [`crate::workload_api::Limits::max_request_bytes`]) still passes, paced by flow control.
    pub stream_window_bytes: u32,
    pub connection_window_bytes: u32,
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
            max_connections_per_uid: 1024,
            idle_timeout: Duration::from_secs(60),
            stream_window_bytes: 64 * 1024,
            connection_window_bytes: 64 * 1024,
            max_concurrent_streams_per_connection: 64,
            max_header_list_bytes: 16 * 1024,
            preface_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// A tonic server builder with the HTTP/2 bounds of `limits` (header list size, concurrent
/// streams per connection, receive windows, keepalive to find dead peers).
pub fn server_builder(limits: &ConnectionLimits) -> Server {
    Server::builder()
        .initial_stream_window_size(limits.stream_window_bytes)
        .initial_connection_window_size(limits.connection_window_bytes)
        .http2_adaptive_window(Some(false))
        .http2_max_header_list_size(limits.max_header_list_bytes)
        .max_concurrent_streams(limits.max_concurrent_streams_per_connection)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
}
