//! Address options, the one parser of them for every Lanyard binary (flags, `LANYARD_*`
//! variables and `--config` keys alike):
//!
//! - [`HostPort`]: where to connect, `HOST:PORT`: a DNS name (`lanyard-server.lanyard.svc:8081`),
//!   an IPv4 address (`10.0.0.1:8081`) or an IPv6 address in brackets (`[fd00::1]:8081`). Names
//!   are resolved when dialled, so a name that changes address is followed.
//! - [`parse_listen`]: where to listen, `IP:PORT`. A name is refused rather than resolved: a
//!   name may resolve to several addresses, or to different ones later, and a listener binds
//!   exactly one. Port 0 picks a free port.
//!
//! Every refusal quotes the value, says what is wrong and shows the form to write.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::Deserialize as _;

/// Longest host name (RFC 1035), without a trailing dot.
const MAX_NAME_LEN: usize = 253;

/// Examples shown with every refusal.
const CONNECT_EXAMPLES: &str =
    "e.g. lanyard-server.lanyard.svc:8081, 10.0.0.1:8081 or [fd00::1]:8081";
const LISTEN_EXAMPLES: &str = "e.g. 0.0.0.0:8081, 127.0.0.1:4191 or [::]:8081";

/// Why an address option was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("{text:?} is not HOST:PORT: {why}; {CONNECT_EXAMPLES}")]
    Connect { text: String, why: String },
    #[error("{text:?}: give an IP address and port to listen on, {LISTEN_EXAMPLES}{}", note(.why))]
    Listen { text: String, why: Option<String> },
}

fn note(why: &Option<String>) -> String {
    why.as_ref().map(|w| format!(" ({w})")).unwrap_or_default()
}

/// An address to connect to: a host (name or IP address) and a non-zero port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// A host name, or an IP address without brackets.
    host: String,
    port: u16,
}

impl HostPort {
    /// The host: a name, or an IP address (an IPv6 one without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host's IP address, when it is one rather than a name.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// The socket addresses the host resolves to now (an IP address resolves to itself), in
    /// the resolver's order.
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .collect();
        if addrs.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} resolves to no address", self.host),
            ));
        }
        Ok(addrs)
    }
}

impl fmt::Display for HostPort {
    /// `host:port`, or `[v6]:port`: the form [`FromStr`] reads and `TcpStream::connect` takes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl From<SocketAddr> for HostPort {
    fn from(addr: SocketAddr) -> Self {
        Self {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

impl FromStr for HostPort {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let refuse = |why: String| AddressError::Connect {
            text: text.to_owned(),
            why,
        };
        if text.is_empty() {
            return Err(refuse("it is empty".into()));
        }
        if text.contains("://") {
            return Err(refuse("give the host and port without a scheme".into()));
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (v6, after) = rest
                .split_once(']')
                .ok_or_else(|| refuse("the '[' has no closing ']'".into()))?;
            if v6.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(refuse(format!("{v6:?} in brackets is not an IPv6 address")));
            }
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| refuse("there is no port after the ']'".into()))?;
            (v6, port)
        } else {
            let (host, port) = text
                .rsplit_once(':')
                .ok_or_else(|| refuse("there is no port".into()))?;
            if host.contains(':') {
                return Err(refuse(
                    "an IPv6 address goes in brackets, as in [::1]:4191".into(),
                ));
            }
            (host, port)
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => {
                return Err(refuse(format!(
                    "the port {port:?} is not a number from 1 to 65535"
                )));
            }
        };
        if host.is_empty() {
            return Err(refuse("the host is empty".into()));
        }
        if host.parse::<IpAddr>().is_err() && !is_host_name(host) {
            return Err(refuse(format!("{host:?} is not a host name or IP address")));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl<'de> serde::Deserialize<'de> for HostPort {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A DNS name as resolvers take it: dot-separated labels of letters, digits, `-` and `_`, each
/// 1 to 63 long and not starting or ending with `-`; an optional trailing dot.
fn is_host_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// An address to listen on: `IP:PORT` (`[v6]:PORT`); port 0 picks a free port.
pub fn parse_listen(text: &str) -> Result<SocketAddr, AddressError> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let why = match text.rsplit_once(':') {
        _ if text.is_empty() => Some("it is empty".to_owned()),
        None => Some("there is no port".to_owned()),
        Some((host, _)) if host.contains(':') && !host.starts_with('[') => {
            Some("an IPv6 address goes in brackets, as in [::]:8081".to_owned())
        }
        Some((host, port)) if port.parse::<u16>().is_err() => Some(if host.is_empty() {
            "there is no IP address".to_owned()
        } else {
            format!("the port {port:?} is not a number from 0 to 65535")
        }),
        Some(("", _)) => Some("there is no IP address; 0.0.0.0 listens on all of them".to_owned()),
        Some((host, _)) if is_host_name(host) => Some(format!(
            "{host:?} is a name; a listener binds one address, so give it as an IP address"
        )),
        Some(_) => None,
    };
    Err(AddressError::Listen {
        text: text.to_owned(),
        why,
    })
}

/// For `#[serde(default, deserialize_with = "...")]` on an `Option<SocketAddr>` listen option
/// in a `--config` file: the same parser and refusal as the flag.
pub fn deserialize_listen<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    parse_listen(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_addresses_take_names_ipv4_and_bracketed_ipv6() {
        for (text, host, port) in [
            (
                "lanyard-server.lanyard.svc:8081",
                "lanyard-server.lanyard.svc",
                8081,
            ),
            ("localhost:4191", "localhost", 4191),
            ("db_1.internal.:5432", "db_1.internal.", 5432),
            ("10.0.0.1:8081", "10.0.0.1", 8081),
            ("[fd00::1]:443", "fd00::1", 443),
            ("[::1]:4191", "::1", 4191),
        ] {
            let hp: HostPort = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!((hp.host(), hp.port()), (host, port), "{text}");
            assert_eq!(hp.to_string(), text, "round trip");
        }
        let v4: HostPort = "10.0.0.1:1".parse().unwrap();
        assert_eq!(v4.ip(), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(
            HostPort::from("[::1]:9".parse::<SocketAddr>().unwrap()).to_string(),
            "[::1]:9"
        );
    }

    #[test]
    fn refused_connect_addresses_say_why_and_show_the_form() {
        for (text, why) in [
            ("", "it is empty"),
            ("lanyard-server", "there is no port"),
            ("host:", "the port \"\" is not a number from 1 to 65535"),
            ("host:0", "the port \"0\" is not a number from 1 to 65535"),
            (
                "host:99999",
                "the port \"99999\" is not a number from 1 to 65535",
            ),
            (":8081", "the host is empty"),
            ("::1:4191", "an IPv6 address goes in brackets"),
            ("[::1]", "there is no port after the ']'"),
            ("[::1:4191", "the '[' has no closing ']'"),
            ("[host]:1", "\"host\" in brackets is not an IPv6 address"),
            (
                "bad host:1",
                "\"bad host\" is not a host name or IP address",
            ),
            ("-x.org:1", "\"-x.org\" is not a host name or IP address"),
            ("https://host:1", "without a scheme"),
        ] {
            let err = text.parse::<HostPort>().unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("{text:?} is not HOST:PORT: ")) && err.contains(why),
                "{text}: {err}"
            );
            assert!(err.ends_with(CONNECT_EXAMPLES), "{err}");
        }
        let long = format!("{}.org:1", "a".repeat(254));
        assert!(long.parse::<HostPort>().is_err());
    }

    #[tokio::test]
    async fn names_and_addresses_resolve() {
        let ip: HostPort = "127.0.0.1:7".parse().unwrap();
        assert_eq!(
            ip.resolve().await.unwrap(),
            ["127.0.0.1:7".parse().unwrap()]
        );
        let name: HostPort = "localhost:7".parse().unwrap();
        let addrs = name.resolve().await.unwrap();
        assert!(
            addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 7),
            "{addrs:?}"
        );
    }

    #[test]
    fn listen_addresses_are_ip_and_port() {
        for text in ["0.0.0.0:8081", "127.0.0.1:0", "[::]:8081", "[::1]:4191"] {
            assert_eq!(
                parse_listen(text).unwrap(),
                text.parse::<SocketAddr>().unwrap()
            );
        }
        for (text, why) in [
            ("localhost:4191", Some("\"localhost\" is a name")),
            ("8081", Some("there is no port")),
            ("0.0.0.0", Some("there is no port")),
            (":8081", Some("there is no IP address")),
            ("0.0.0.0:x", Some("the port \"x\" is not a number")),
            ("::1:4191", Some("an IPv6 address goes in brackets")),
            ("", Some("it is empty")),
            ("1.2.3.4.5:1", None),
        ] {
            let err = parse_listen(text).unwrap_err();
            let message = err.to_string();
            assert!(
                message.starts_with(&format!(
                    "{text:?}: give an IP address and port to listen on, e.g. 0.0.0.0:8081"
                )),
                "{message}"
            );
            if let Some(why) = why {
                assert!(message.contains(why), "{text}: {message}");
            }
        }
    }

    #[test]
    fn config_file_values_use_the_same_parsers() {
        #[derive(serde::Deserialize)]
        struct File {
            #[serde(default, deserialize_with = "deserialize_listen")]
            listen: Option<SocketAddr>,
            server: Option<HostPort>,
        }
        let ok: File = toml::from_str("listen = \"0.0.0.0:1\"\nserver = \"s.svc:2\"\n").unwrap();
        assert_eq!(ok.listen, Some("0.0.0.0:1".parse().unwrap()));
        assert_eq!(ok.server.unwrap().host(), "s.svc");
        let none: File = toml::from_str("").unwrap();
        assert!(none.listen.is_none() && none.server.is_none());
        let err = toml::from_str::<File>("listen = \"localhost:1\"\n")
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("give an IP address and port to listen on"),
            "{err}"
        );
        let err = toml::from_str::<File>("server = \"s.svc\"\n")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("is not HOST:PORT"), "{err}");
    }
}
