//! Fuzzes the wire `Destination` check the agent and the server share
//! (`lanyard_proto::discovery_destination`) on arbitrary address strings and ports: it must
//! never panic; it refuses exactly what is not an IP literal or not a port in 1..65535 (the
//! length cap never refuses a literal `IpAddr` parses); an accepted destination round-trips
//! through its wire form and through `Display` read back as a `SocketAddr`.
//!
//! Input: the first four bytes are the port (little-endian `u32`, so out-of-range ports are
//! reached), the rest is the address (invalid UTF-8 replaced, as a protobuf decoder would
//! refuse it earlier).
#![no_main]

use std::net::{IpAddr, SocketAddr};

use lanyard_proto::discovery::v1 as wire;
use lanyard_proto::discovery_destination::{Destination, DestinationError, MAX_ADDRESS_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((port, address)) = data.split_first_chunk::<4>() else {
        return;
    };
    let port = u32::from_le_bytes(*port);
    let address = String::from_utf8_lossy(address).into_owned();
    let sent = wire::Destination {
        address: address.clone(),
        port,
    };
    let literal = address.parse::<IpAddr>().ok();
    let port_ok = (1..=u32::from(u16::MAX)).contains(&port);
    match Destination::from_wire(Some(&sent)) {
        Ok(d) => {
            assert!(address.len() <= MAX_ADDRESS_LEN);
            assert_eq!(Some(d.address), literal);
            assert_eq!(u32::from(d.port), port);
            assert_ne!(d.port, 0);

            let again = d.to_wire();
            assert_eq!(again.address, d.address.to_string());
            assert_eq!(Destination::from_wire(Some(&again)), Ok(d));

            let shown = d.to_string();
            assert_eq!(
                shown.parse::<SocketAddr>(),
                Ok(SocketAddr::from(d)),
                "{shown}"
            );
        }
        Err(e) => {
            let expected = if literal.is_none() {
                DestinationError::BadAddress
            } else if !port_ok {
                DestinationError::BadPort
            } else {
                panic!("{address:?}:{port} refused ({e}) though it is an IP literal and a port");
            };
            assert_eq!(e, expected, "{address:?}:{port}");
            assert!(!e.to_string().is_empty() && !e.message().is_empty());
        }
    }
});
