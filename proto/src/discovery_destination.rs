//! A `lanyard.discovery.v1.Destination` checked into an IP and a TCP port: the one conversion
//! the agent (its `Discovery` service and cache) and the server (its `DiscoveryFeed`) both use,
//! so they accept and refuse the same destinations.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::discovery::v1 as wire;

/// Longest IP literal accepted (an IPv4-mapped IPv6 address in full form is 45 bytes); a
/// longer address is refused before parsing.
pub const MAX_ADDRESS_LEN: usize = 45;

/// A destination: an IP and a TCP port (never 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination {
    pub address: IpAddr,
    pub port: u16,
}

/// Why a wire destination is refused. `Display` is a metric label; [`Self::message`] says
/// what a valid one looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    #[error("missing_destination")]
    Missing,
    #[error("bad_address")]
    BadAddress,
    #[error("bad_port")]
    BadPort,
}

impl DestinationError {
    /// The refusal text for people (a status message after the label).
    pub fn message(&self) -> &'static str {
        match self {
            Self::Missing => "a destination is required",
            Self::BadAddress => "address must be an IPv4 or IPv6 literal (no brackets, no zone)",
            Self::BadPort => "port must be 1..65535",
        }
    }
}

impl Destination {
    /// Checks a wire destination: `address` an IPv4 or IPv6 literal (no brackets, no zone),
    /// `port` in 1..65535.
    pub fn from_wire(d: Option<&wire::Destination>) -> Result<Self, DestinationError> {
        let d = d.ok_or(DestinationError::Missing)?;
        if d.address.len() > MAX_ADDRESS_LEN {
            return Err(DestinationError::BadAddress);
        }
        let address = d
            .address
            .parse()
            .map_err(|_| DestinationError::BadAddress)?;
        let port = u16::try_from(d.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or(DestinationError::BadPort)?;
        Ok(Self { address, port })
    }

    /// The wire form (the address in its canonical text).
    pub fn to_wire(self) -> wire::Destination {
        wire::Destination {
            address: self.address.to_string(),
            port: u32::from(self.port),
        }
    }
}

impl From<Destination> for SocketAddr {
    fn from(d: Destination) -> Self {
        SocketAddr::new(d.address, d.port)
    }
}

/// `10.0.0.1:80`, `[fd00::1]:80`: the [`SocketAddr`] form.
impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        SocketAddr::from(*self).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(address: &str, port: u32) -> Result<Destination, DestinationError> {
        Destination::from_wire(Some(&wire::Destination {
            address: address.into(),
            port,
        }))
    }

    #[test]
    fn wire_destinations_are_checked() {
        assert!(d("10.0.0.1", 80).is_ok());
        assert!(d("fd00::1", 80).is_ok());
        let longest = "0000:0000:0000:0000:0000:ffff:255.255.255.255";
        assert_eq!(longest.len(), MAX_ADDRESS_LEN);
        assert!(d(longest, 65535).is_ok());
        assert_eq!(d("[fd00::1]", 80), Err(DestinationError::BadAddress));
        assert_eq!(d("fe80::1%eth0", 80), Err(DestinationError::BadAddress));
        assert_eq!(d("web.default", 80), Err(DestinationError::BadAddress));
        assert_eq!(d("", 80), Err(DestinationError::BadAddress));
        assert_eq!(
            d(&"0".repeat(MAX_ADDRESS_LEN + 1), 80),
            Err(DestinationError::BadAddress)
        );
        assert_eq!(d("10.0.0.1", 0), Err(DestinationError::BadPort));
        assert_eq!(d("10.0.0.1", 70000), Err(DestinationError::BadPort));
        assert_eq!(Destination::from_wire(None), Err(DestinationError::Missing));
    }

    #[test]
    fn labels_and_messages() {
        let all = [
            DestinationError::Missing,
            DestinationError::BadAddress,
            DestinationError::BadPort,
        ];
        let labels: Vec<String> = all.iter().map(ToString::to_string).collect();
        assert_eq!(labels, ["missing_destination", "bad_address", "bad_port"]);
        assert_eq!(
            DestinationError::BadAddress.message(),
            "address must be an IPv4 or IPv6 literal (no brackets, no zone)"
        );
        assert_eq!(DestinationError::BadPort.message(), "port must be 1..65535");
        assert_eq!(
            DestinationError::Missing.message(),
            "a destination is required"
        );
    }

    #[test]
    fn round_trips() {
        for (address, port) in [("10.0.0.1", 80), ("fd00::1", 443), ("0:0::1", 1)] {
            let dst = d(address, port).unwrap();
            assert_eq!(Destination::from_wire(Some(&dst.to_wire())), Ok(dst));
            assert_eq!(dst.to_string().parse::<SocketAddr>(), Ok(dst.into()));
        }
        assert_eq!(d("fd00::1", 80).unwrap().to_string(), "[fd00::1]:80");
        assert_eq!(d("0:0::1", 80).unwrap().to_wire().address, "::1");
    }
}
