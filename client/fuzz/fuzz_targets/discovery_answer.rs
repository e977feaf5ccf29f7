//! Fuzzes the proxy's reading of the agent's discovery answers: arbitrary bytes decoded as a
//! `lanyard.discovery.v1.ResolveResponse` (prost), then `answer_from_wire`. It must never
//! panic, and an accepted answer holds only what the wire said, checked:
//! - a meshed pod's ID is the wire ID (scheme and trust domain lowercased), and re-parses to
//!   itself;
//! - a Service keeps the first `MAX_ENDPOINTS` endpoints in order (one bad endpoint refuses
//!   the whole answer), each at the wire address and a non-zero port that the shared
//!   `Destination` check accepts too, with an ID exactly when the wire says meshed.
#![no_main]

use std::net::IpAddr;

use lanyard_client::discovery::{Answer, MAX_ENDPOINTS, answer_from_wire};
use lanyard_proto::discovery::v1 as wire;
use lanyard_proto::discovery_destination::Destination;
use lanyard_svid::SpiffeId;
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// `id`, parsed from `text`, is `text` up to case in the scheme and trust domain.
fn check_id(id: &SpiffeId, text: &str) {
    let written = id.to_string();
    assert!(
        written.eq_ignore_ascii_case(text),
        "{written:?} from {text:?}"
    );
    assert!(text.ends_with(id.path()));
    assert!(id.path().is_empty() || id.path().starts_with('/'));
    assert!(
        id.segments()
            .all(|s| !s.is_empty() && s != "." && s != "..")
    );
    assert_eq!(SpiffeId::parse(&written).as_ref(), Ok(id));
}

fuzz_target!(|data: &[u8]| {
    let Ok(response) = wire::ResolveResponse::decode(data) else {
        return;
    };
    let kind = response.resolution.as_ref().and_then(|r| r.kind.clone());
    let Ok(answer) = answer_from_wire(response) else {
        return;
    };
    use wire::resolution::Kind;
    match (answer, kind) {
        (Answer::MeshedPod(id), Some(Kind::MeshedPod(pod))) => check_id(&id, &pod.spiffe_id),
        (Answer::UnmeshedPod, Some(Kind::UnmeshedPod(_))) => {}
        (Answer::Unknown, Some(Kind::Unknown(_))) => {}
        (Answer::Service(endpoints), Some(Kind::Service(service))) => {
            assert!(endpoints.len() <= MAX_ENDPOINTS);
            assert_eq!(endpoints.len(), service.endpoints.len().min(MAX_ENDPOINTS));
            for (endpoint, sent) in endpoints.iter().zip(&service.endpoints) {
                assert_ne!(endpoint.addr.port(), 0);
                assert_eq!(u32::from(endpoint.addr.port()), sent.port);
                assert_eq!(sent.address.parse::<IpAddr>(), Ok(endpoint.addr.ip()));
                // What the client accepts, the agent and server would accept as a destination.
                let checked = Destination::from_wire(Some(&wire::Destination {
                    address: sent.address.clone(),
                    port: sent.port,
                }));
                assert_eq!(
                    checked.map(std::net::SocketAddr::from),
                    Ok(endpoint.addr),
                    "{sent:?}"
                );
                match &endpoint.id {
                    Some(id) => {
                        assert!(sent.meshed);
                        check_id(id, &sent.spiffe_id);
                    }
                    None => assert!(!sent.meshed),
                }
            }
        }
        (answer, kind) => panic!("{kind:?} read as {answer:?}"),
    }
});
