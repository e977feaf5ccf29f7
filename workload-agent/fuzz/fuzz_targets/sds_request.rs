//! Fuzzes what the agent reads from an Envoy SDS request (untrusted bytes from any local
//! process on the socket): the protobuf `DiscoveryRequest`, its resource names and its node's
//! metadata and version. Nothing may panic; accepted names stay within their bounds.
#![no_main]

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use lanyard_agent::sds::names::{MAX_RESOURCE_NAME_LEN, MAX_RESOURCE_NAMES, Requested};
use lanyard_agent::sds::node::ValidationMode;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = DiscoveryRequest::decode(data) else {
        return;
    };
    let _ = ValidationMode::of(request.node.as_ref());
    match Requested::parse(&request.resource_names) {
        Ok(requested) => {
            match &requested {
                Requested::Everything => {
                    assert!(request.resource_names.iter().all(String::is_empty));
                }
                Requested::Names(names) => {
                    assert!(!names.is_empty() && names.len() <= MAX_RESOURCE_NAMES);
                    assert!(
                        names
                            .iter()
                            .all(|n| !n.is_empty() && n.len() <= MAX_RESOURCE_NAME_LEN)
                    );
                }
            }
            let _ = requested.wants_certificates();
        }
        Err(e) => assert!(!e.message().is_empty()),
    }
});
