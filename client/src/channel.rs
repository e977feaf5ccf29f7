//! The gRPC channel over the agent's Unix socket: HTTP/2 without TLS (the kernel tells the
//! agent who the caller is), and the Workload API's request header.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use lanyard_proto::WORKLOAD_API_HEADER;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Why the socket could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error(
        "connecting to the agent's socket {}: {source} (is lanyard-agent running, and is the path right?)",
        path.display()
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error(
        "connecting to the agent's socket {}: no answer within {timeout:?}",
        path.display()
    )]
    Timeout { path: PathBuf, timeout: Duration },
}

fn endpoint() -> Endpoint {
    // The URI is never dialled; the connector is. "localhost" is a valid :authority.
    Endpoint::from_static("http://localhost")
}

fn connector(
    path: PathBuf,
) -> impl tower::Service<Uri, Response = TokioIo<UnixStream>, Error = std::io::Error, Future: Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move { UnixStream::connect(path).await.map(TokioIo::new) }
    })
}

/// A channel to the socket at `path`, connected now.
pub async fn connect(path: &Path) -> Result<Channel, ChannelError> {
    endpoint()
        .connect_with_connector(connector(path.to_owned()))
        .await
        .map_err(|source| ChannelError::Connect {
            path: path.to_owned(),
            source,
        })
}

/// [`connect`], giving up after `timeout`.
pub async fn connect_within(path: &Path, timeout: Duration) -> Result<Channel, ChannelError> {
    tokio::time::timeout(timeout, connect(path))
        .await
        .map_err(|_| ChannelError::Timeout {
            path: path.to_owned(),
            timeout,
        })?
}

/// A channel to the socket at `path` that connects on first use and reconnects as needed.
pub fn lazy(path: &Path) -> Channel {
    endpoint().connect_with_connector_lazy(connector(path.to_owned()))
}

/// A Workload API request: `message` with the `workload.spiffe.io: true` header.
pub fn workload_request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        WORKLOAD_API_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    request
}

/// [`workload_request`] with a gRPC deadline.
pub fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = workload_request(message);
    request.set_timeout(timeout);
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_socket_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.sock");
        let err = connect_within(&path, Duration::from_secs(10))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("connecting to the agent's socket"), "{text}");
        assert!(text.contains("none.sock"), "{text}");
    }

    #[test]
    fn requests_carry_the_header_and_deadline() {
        let r = request((), Duration::from_secs(3));
        assert_eq!(r.metadata().get(WORKLOAD_API_HEADER).unwrap(), "true");
        assert_eq!(r.metadata().get("grpc-timeout").unwrap(), "3000000u");
    }
}
