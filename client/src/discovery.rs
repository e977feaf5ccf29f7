//! The client of the agent's `lanyard.discovery.v1.Discovery` service (same Unix socket as
//! the Workload API): `Resolve` and `Watch` calls, their answers in the form callers use
//! ([`Answer`]), and why a `Watch` ended ([`WatchEnd`], read from the agent's
//! `lanyard-discovery-refusal` trailer, never from the status message).
//!
//! Caching, the no-downgrade rules and endpoint choice are the proxy's, not here. The
//! `workload.spiffe.io` header is not sent: the Discovery service does not need it.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use lanyard_proto::discovery::v1 as wire;
use lanyard_proto::discovery::v1::discovery_client::DiscoveryClient as WireClient;
use lanyard_svid::SpiffeId;
use tonic::transport::Channel;

use crate::channel;

/// The agent's response metadata naming why it refused a call or ended a `Watch`, and its
/// value for an expired answer (the wire crate's, shared with the agent).
pub use lanyard_proto::discovery::{REFUSAL_EXPIRED, REFUSAL_TRAILER};

/// Largest answer accepted (the agent sends at most 4 MiB).
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;
/// Endpoints kept from one Service answer.
pub const MAX_ENDPOINTS: usize = 2048;

/// One ready endpoint of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEndpoint {
    pub addr: SocketAddr,
    /// The ID it must present; `None` for an unmeshed endpoint.
    pub id: Option<SpiffeId>,
}

/// What is behind a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    MeshedPod(SpiffeId),
    Service(Vec<ServiceEndpoint>),
    UnmeshedPod,
    Unknown,
}

/// Why a `Resolve` gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("the agent did not answer Resolve within {0:?}")]
    TimedOut(Duration),
    /// `refusal`: the agent's [`REFUSAL_TRAILER`] label (e.g. `too_many_destinations`), when
    /// it sent one; `None` for a status without it (the socket gone, a proxy in between).
    #[error("the agent refused Resolve: {code:?}: {message}")]
    Refused {
        code: tonic::Code,
        message: String,
        refusal: Option<String>,
    },
    #[error("unusable discovery answer: {0}")]
    BadAnswer(String),
}

impl ResolveError {
    fn refused(status: &tonic::Status) -> Self {
        Self::Refused {
            code: status.code(),
            message: status.message().to_owned(),
            refusal: refusal_label(status).map(str::to_owned),
        }
    }
}

/// Why the agent ended a `Watch` or refused to open one. `Display` is a short label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WatchEnd {
    /// The agent's answer expired (its server unreachable past the agent's TTL): a cached
    /// answer must not be used any longer.
    #[error("expired")]
    Expired,
    /// Lost or refused for any other reason (the agent restarting, the socket gone, a
    /// refusal without the trailer): a cached answer may stay in use while re-watching.
    #[error("lost")]
    Lost,
}

impl WatchEnd {
    /// Reads the agent's [`REFUSAL_TRAILER`]; never the status message.
    pub fn from_status(status: &tonic::Status) -> Self {
        if refusal_label(status) == Some(REFUSAL_EXPIRED) {
            Self::Expired
        } else {
            Self::Lost
        }
    }
}

/// The agent's [`REFUSAL_TRAILER`] label on `status`, if any (printable ASCII, at most 64
/// bytes; anything else is treated as absent).
pub fn refusal_label(status: &tonic::Status) -> Option<&str> {
    status
        .metadata()
        .get(REFUSAL_TRAILER)
        .and_then(|v| v.to_str().ok())
        .filter(|label| label.len() <= 64)
}

/// A Discovery client on the agent's socket; cheap to clone.
#[derive(Clone)]
pub struct Discovery {
    channel: Channel,
}

impl Discovery {
    /// A client of the agent at `socket` that connects on first use and reconnects as needed.
    pub fn lazy(socket: &Path) -> Self {
        Self::from_channel(channel::lazy(socket))
    }

    /// A client over an existing channel to the agent's socket.
    pub fn from_channel(channel: Channel) -> Self {
        Self { channel }
    }

    fn wire(&self) -> WireClient<Channel> {
        WireClient::new(self.channel.clone()).max_decoding_message_size(MAX_ANSWER_BYTES)
    }

    /// `Resolve` as the agent answered it (names included), within `timeout`.
    pub async fn resolve_wire(
        &self,
        dst: SocketAddr,
        timeout: Duration,
    ) -> Result<wire::ResolveResponse, ResolveError> {
        let mut request = tonic::Request::new(request(dst));
        request.set_timeout(timeout);
        let mut client = self.wire();
        match tokio::time::timeout(timeout, client.resolve(request)).await {
            Err(_) => Err(ResolveError::TimedOut(timeout)),
            Ok(Err(status)) if status.code() == tonic::Code::DeadlineExceeded => {
                Err(ResolveError::TimedOut(timeout))
            }
            Ok(Err(status)) => Err(ResolveError::refused(&status)),
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }

    /// What is behind `dst`, within `timeout`.
    pub async fn resolve(
        &self,
        dst: SocketAddr,
        timeout: Duration,
    ) -> Result<Answer, ResolveError> {
        answer_from_wire(self.resolve_wire(dst, timeout).await?)
    }

    /// Opens a `Watch` of `dst`: each message is the full current answer ([`answer_from_wire`]).
    /// A refusal is read with [`WatchEnd::from_status`].
    pub async fn watch(
        &self,
        dst: SocketAddr,
    ) -> Result<tonic::Streaming<wire::ResolveResponse>, tonic::Status> {
        self.wire()
            .watch(request(dst))
            .await
            .map(tonic::Response::into_inner)
    }
}

/// The wire request for `dst`.
pub fn request(dst: SocketAddr) -> wire::ResolveRequest {
    wire::ResolveRequest {
        destination: Some(wire::Destination {
            address: dst.ip().to_string(),
            port: u32::from(dst.port()),
        }),
    }
}

/// A wire answer as an [`Answer`]; at most [`MAX_ENDPOINTS`] endpoints are kept.
pub fn answer_from_wire(response: wire::ResolveResponse) -> Result<Answer, ResolveError> {
    use wire::resolution::Kind;
    let bad = ResolveError::BadAnswer;
    let kind = response
        .resolution
        .and_then(|r| r.kind)
        .ok_or_else(|| bad("no resolution".into()))?;
    Ok(match kind {
        Kind::MeshedPod(pod) => Answer::MeshedPod(
            SpiffeId::parse(&pod.spiffe_id)
                .map_err(|e| bad(format!("meshed pod ID {:?}: {e}", pod.spiffe_id)))?,
        ),
        Kind::UnmeshedPod(_) => Answer::UnmeshedPod,
        Kind::Unknown(_) => Answer::Unknown,
        Kind::Service(service) => {
            let mut endpoints = Vec::new();
            for e in service.endpoints.into_iter().take(MAX_ENDPOINTS) {
                let ip: IpAddr = e
                    .address
                    .parse()
                    .map_err(|_| bad(format!("endpoint address {:?}", e.address)))?;
                let port = u16::try_from(e.port)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad(format!("endpoint port {}", e.port)))?;
                let id = if e.meshed {
                    Some(
                        SpiffeId::parse(&e.spiffe_id)
                            .map_err(|err| bad(format!("endpoint ID {:?}: {err}", e.spiffe_id)))?,
                    )
                } else {
                    None
                };
                endpoints.push(ServiceEndpoint {
                    addr: SocketAddr::new(ip, port),
                    id,
                });
            }
            Answer::Service(endpoints)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_expired_trailer_means_expired() {
        let with_trailer = |code, message: &str, label: &str| {
            let mut status = tonic::Status::new(code, message);
            status
                .metadata_mut()
                .insert(REFUSAL_TRAILER, label.parse().unwrap());
            status
        };
        assert_eq!(
            REFUSAL_TRAILER, "lanyard-discovery-refusal",
            "the documented key"
        );
        let expired = with_trailer(tonic::Code::Unavailable, "whatever", "expired");
        assert_eq!(WatchEnd::from_status(&expired), WatchEnd::Expired);
        // The message is for people: a bare Unavailable is a lost stream, whatever it says.
        for status in [
            tonic::Status::unavailable("expired: the cached answer expired"),
            tonic::Status::unavailable("connection reset"),
            with_trailer(tonic::Code::Unavailable, "expired", "shutting_down"),
            with_trailer(tonic::Code::Unavailable, "", "expired_or_not"),
        ] {
            assert_eq!(WatchEnd::from_status(&status), WatchEnd::Lost, "{status:?}");
        }
    }

    #[test]
    fn bad_answers_are_refused() {
        let wire_answer = |kind| wire::ResolveResponse {
            destination: None,
            resolution: Some(wire::Resolution { kind: Some(kind) }),
        };
        use wire::resolution::Kind;
        let bad_id = Kind::MeshedPod(wire::MeshedPod {
            spiffe_id: "not an id".into(),
            ..Default::default()
        });
        let bad_port = Kind::Service(wire::Service {
            endpoints: vec![wire::Endpoint {
                address: "10.0.0.1".into(),
                port: 70000,
                ..Default::default()
            }],
            ..Default::default()
        });
        for kind in [bad_id, bad_port] {
            let err = answer_from_wire(wire_answer(kind)).unwrap_err();
            assert!(matches!(err, ResolveError::BadAnswer(_)), "{err}");
        }
        let empty = wire::ResolveResponse::default();
        assert!(answer_from_wire(empty).is_err());
    }

    #[test]
    fn a_service_answer_keeps_ids_of_meshed_endpoints_only() {
        use wire::resolution::Kind;
        let answer = answer_from_wire(wire::ResolveResponse {
            destination: None,
            resolution: Some(wire::Resolution {
                kind: Some(Kind::Service(wire::Service {
                    endpoints: vec![
                        wire::Endpoint {
                            address: "10.0.0.1".into(),
                            port: 80,
                            meshed: true,
                            spiffe_id: "spiffe://td/a".into(),
                        },
                        wire::Endpoint {
                            address: "fd00::2".into(),
                            port: 81,
                            meshed: false,
                            spiffe_id: String::new(),
                        },
                    ],
                    ..Default::default()
                })),
            }),
        })
        .unwrap();
        assert_eq!(
            answer,
            Answer::Service(vec![
                ServiceEndpoint {
                    addr: "10.0.0.1:80".parse().unwrap(),
                    id: Some(SpiffeId::parse("spiffe://td/a").unwrap()),
                },
                ServiceEndpoint {
                    addr: "[fd00::2]:81".parse().unwrap(),
                    id: None,
                },
            ])
        );
    }
}
