//! `lanyard-proxy validate-redirect`: proves, from inside the pod, that the outbound redirect
//! rules are in place, so that a pod whose rules are missing (the node's CNI plugin did not
//! run for it) fails at once instead of sending its traffic around the proxy in plaintext.
//!
//! `lanyard inject --redirect cni` runs it as the first init container, before the proxy, as
//! a uid that is neither root nor the proxy's (the rules exempt the proxy's uid). For each
//! address family it listens where the rules deliver the app's outbound connections (the
//! proxy's outbound port on the loopback address: `REDIRECT` of a locally opened connection
//! lands on 127.0.0.1, or ::1), connects to a documentation address (RFC 5737 192.0.2.1, RFC
//! 3849 2001:db8::1) that nothing but the redirect can deliver to that listener, at a port
//! the rules do not skip, and checks that its own connection arrived: the listener sees the
//! probe address as the connection's original destination (`SO_ORIGINAL_DST`) and echoes a
//! random token the prober sent. Everything is bounded by one timeout per family.
//!
//! A family whose probe address has no route in the pod's own routing table (asked with a
//! UDP connect, which sends nothing: an IPv4-only pod has no IPv6 route), or that the pod does
//! not have at all (no ::1), is skipped: no app traffic of that family can leave either. A
//! router's "unreachable" answer to a probe that left the pod is a missing redirect. At least one family must be checked. Only the outbound direction
//! can be checked from inside the pod: a connection the pod opens to itself never meets the
//! inbound (PREROUTING) rules, which the same plugin run installs with the outbound ones.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::original_dst::original_dst;

/// IPv4's probe address: TEST-NET-1 (RFC 5737), never a real destination.
pub const PROBE_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// IPv6's probe address: the documentation prefix (RFC 3849).
pub const PROBE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// The first probe port tried: the commonest destination, unless the rules skip it.
pub const FIRST_PROBE_PORT: u16 = 80;
/// How long each family's probe may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of random token the prober sends and the listener echoes.
const TOKEN_LEN: usize = 16;

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        })
    }
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    /// Where the outbound redirect delivers this family's connections.
    pub fn redirect_listen(self, outbound_port: u16) -> SocketAddr {
        match self {
            Family::Ipv4 => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), outbound_port),
            Family::Ipv6 => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), outbound_port),
        }
    }

    /// The documentation address probed, at `port`.
    pub fn probe_target(self, port: u16) -> SocketAddr {
        match self {
            Family::Ipv4 => SocketAddr::new(IpAddr::V4(PROBE_V4), port),
            Family::Ipv6 => SocketAddr::new(IpAddr::V6(PROBE_V6), port),
        }
    }
}

/// One family's probe.
#[derive(Clone, Debug)]
pub struct Probe {
    pub family: Family,
    /// Where the redirected connection must arrive.
    pub listen: SocketAddr,
    /// What the prober connects to.
    pub target: SocketAddr,
    pub timeout: Duration,
}

/// What one family's probe found; the text is its label.
#[derive(Debug)]
pub enum ProbeOutcome {
    /// The probe's own connection arrived at the listener, redirected from the target.
    Delivered { elapsed: Duration },
    /// The pod has no such family (its loopback address cannot be bound): skipped.
    NoFamily(io::Error),
    /// The pod's routing table has no route to the target: no traffic of the family leaves;
    /// skipped. (A router's "unreachable" answer to a probe that left is [`Self::Missing`].)
    NoRoute(io::Error),
    /// The redirect is missing: why the connection did not arrive.
    Missing(String),
    /// The listener could not be bound for another reason (the port taken).
    Listen(io::Error),
}

impl fmt::Display for ProbeOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeOutcome::Delivered { .. } => "delivered",
            ProbeOutcome::NoFamily(_) => "no_family",
            ProbeOutcome::NoRoute(_) => "no_route",
            ProbeOutcome::Missing(_) => "missing",
            ProbeOutcome::Listen(_) => "listen_failed",
        })
    }
}

impl ProbeOutcome {
    /// Whether the pod may start on this family's account.
    pub fn is_ok(&self) -> bool {
        matches!(
            self,
            ProbeOutcome::Delivered { .. } | ProbeOutcome::NoFamily(_) | ProbeOutcome::NoRoute(_)
        )
    }
}

impl Probe {
    /// The probe of `family` for the rules' outbound port and skipped ports.
    pub fn new(family: Family, outbound_port: u16, skip: &[u16], timeout: Duration) -> Self {
        Self {
            family,
            listen: family.redirect_listen(outbound_port),
            target: family.probe_target(probe_port(skip, &[outbound_port])),
            timeout,
        }
    }

    /// A sentence for people: what was found and what it means.
    pub fn describe(&self, outcome: &ProbeOutcome) -> String {
        let Probe {
            family,
            listen,
            target,
            ..
        } = self;
        match outcome {
            ProbeOutcome::Delivered { elapsed } => format!(
                "{family} outbound redirect in place: a connection to {target} arrived at \
                 {listen} in {} ms",
                elapsed.as_millis()
            ),
            ProbeOutcome::NoFamily(e) => {
                format!("{family} skipped: the pod has no {family} loopback ({listen}: {e})")
            }
            ProbeOutcome::NoRoute(e) => {
                format!(
                    "{family} skipped: no route to {target} ({e}), so no {family} traffic leaves the pod"
                )
            }
            ProbeOutcome::Listen(e) => format!(
                "cannot listen on {listen} ({e}): the check must run before the proxy, whose \
                 outbound port this is, and alone"
            ),
            ProbeOutcome::Missing(why) => format!(
                "the {family} outbound redirect is missing (nat OUTPUT rules to {listen}): a \
                 connection to {target}, which only the redirect delivers there, {why}. The \
                 node's lanyard-cni plugin did not install this pod's rules (is `lanyard install \
                 --cni` applied, and lanyard-cni in the node's CNI configuration?); without \
                 them the app's connections would bypass the proxy in plaintext, so the pod \
                 stops here"
            ),
        }
    }

    /// Runs the probe.
    pub async fn run(&self) -> ProbeOutcome {
        let started = Instant::now();
        let listener = match TcpListener::bind(self.listen).await {
            Ok(listener) => listener,
            Err(e) if self.family == Family::Ipv6 && no_family(&e) => {
                return ProbeOutcome::NoFamily(e);
            }
            Err(e) => return ProbeOutcome::Listen(e),
        };
        // Whether the pod routes the family at all, asked of the routing table without sending
        // a packet: a TCP connect's ENETUNREACH may also be a router's ICMP answer to a probe
        // the missing rules let out, which must not pass for "no route".
        if let Err(e) = local_route(self.target) {
            return ProbeOutcome::NoRoute(e);
        }
        let token = match token() {
            Ok(token) => token,
            Err(e) => return ProbeOutcome::Missing(format!("could not be tried: no token: {e}")),
        };
        let target = self.target;
        let echo = tokio::spawn(async move { echo_redirected(listener, target).await });
        let outcome = match tokio::time::timeout(self.timeout, self.connect_and_check(&token)).await
        {
            Ok(Ok(())) => ProbeOutcome::Delivered {
                elapsed: started.elapsed(),
            },
            Ok(Err(ConnectError::Other(why))) => ProbeOutcome::Missing(why),
            Err(_) => ProbeOutcome::Missing(format!(
                "did not arrive within {}",
                humantime::format_duration(self.timeout)
            )),
        };
        echo.abort();
        outcome
    }

    async fn connect_and_check(&self, token: &[u8; TOKEN_LEN]) -> Result<(), ConnectError> {
        let mut stream = TcpStream::connect(self.target)
            .await
            .map_err(|e| ConnectError::Other(format!("failed: {e}")))?;
        let other =
            |what: &str| ConnectError::Other(format!("was answered by something else ({what})"));
        stream
            .write_all(token)
            .await
            .map_err(|e| other(&format!("writing: {e}")))?;
        let mut echoed = [0u8; TOKEN_LEN];
        stream
            .read_exact(&mut echoed)
            .await
            .map_err(|e| other(&format!("reading: {e}")))?;
        if &echoed != token {
            return Err(other("a wrong token"));
        }
        Ok(())
    }
}

enum ConnectError {
    Other(String),
}

/// `Err` when the pod has no route to `target`: a UDP socket's connect looks the route up
/// and sends nothing.
fn local_route(target: SocketAddr) -> io::Result<()> {
    let any: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    std::net::UdpSocket::bind(any)?.connect(target)
}

/// What the whole check found: a line per family, and whether the pod may start.
#[derive(Debug)]
pub struct Report {
    pub lines: Vec<String>,
    pub ok: bool,
}

/// Probes every family for the rules' `outbound_port` and `skip` list (outbound ports left
/// alone). Refuses to run as `proxy_uid`, whose connections the rules exempt, and passes only
/// when some family was checked and none is missing.
pub async fn validate(
    outbound_port: u16,
    skip: &[u16],
    proxy_uid: u32,
    timeout: Duration,
) -> Report {
    let uid = effective_uid();
    if uid == Some(proxy_uid) {
        return Report {
            lines: vec![format!(
                "running as uid {proxy_uid}, the proxy's, whose connections the redirect \
                 exempts: run the check as another non-root uid (lanyard inject uses 2103)"
            )],
            ok: false,
        };
    }
    let mut lines = Vec::new();
    let mut ok = true;
    let mut checked = false;
    for family in Family::ALL {
        let probe = Probe::new(family, outbound_port, skip, timeout);
        let outcome = probe.run().await;
        ok &= outcome.is_ok();
        checked |= matches!(outcome, ProbeOutcome::Delivered { .. });
        lines.push(probe.describe(&outcome));
    }
    if ok && !checked {
        lines.push(
            "no address family could be checked (no route to either probe address): the \
             redirect cannot be proven"
                .into(),
        );
        ok = false;
    }
    Report { lines, ok }
}

/// This process's effective uid (the owner of `/proc/self`), if known.
fn effective_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// The pod has no such family: the address cannot be assigned or the family is not built in.
fn no_family(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EADDRNOTAVAIL | libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT)
    )
}

/// Echoes the token of the first connection redirected from `target`; others (direct
/// connections, anything not from the probe) are closed unanswered.
async fn echo_redirected(listener: TcpListener, target: SocketAddr) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        if !matches!(original_dst(&stream), Ok(dst) if dst == target) {
            continue;
        }
        let mut token = [0u8; TOKEN_LEN];
        if stream.read_exact(&mut token).await.is_ok() && stream.write_all(&token).await.is_ok() {
            return;
        }
    }
}

fn token() -> io::Result<[u8; TOKEN_LEN]> {
    use std::io::Read;
    let mut token = [0u8; TOKEN_LEN];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut token)?;
    Ok(token)
}

/// The probe's destination port: [`FIRST_PROBE_PORT`] or the next port the rules neither skip
/// nor use themselves (`avoid`).
pub fn probe_port(skip: &[u16], avoid: &[u16]) -> u16 {
    (FIRST_PROBE_PORT..=u16::MAX)
        .chain(1..FIRST_PROBE_PORT)
        .find(|p| !skip.contains(p) && !avoid.contains(p))
        .expect("the skip lists are bounded far below 65535 ports")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_port_avoids_skipped_ports() {
        assert_eq!(probe_port(&[], &[4140]), 80);
        assert_eq!(probe_port(&[80, 81, 443], &[4140]), 82);
        assert_eq!(probe_port(&[80], &[81]), 82);
        let all_but_7: Vec<u16> = (1..=u16::MAX).filter(|p| *p != 7).collect();
        assert_eq!(probe_port(&all_but_7, &[]), 7);
    }

    #[test]
    fn probes_listen_on_loopback_and_target_documentation_addresses() {
        let v4 = Probe::new(Family::Ipv4, 4140, &[80], DEFAULT_TIMEOUT);
        assert_eq!(v4.listen.to_string(), "127.0.0.1:4140");
        assert_eq!(v4.target.to_string(), "192.0.2.1:81");
        let v6 = Probe::new(Family::Ipv6, 4140, &[], DEFAULT_TIMEOUT);
        assert_eq!(v6.listen.to_string(), "[::1]:4140");
        assert_eq!(v6.target.to_string(), "[2001:db8::1]:80");
    }

    /// A connection straight to the listener is not the redirect: it is not echoed, and the
    /// probe (here aimed at the listener itself) reports the redirect missing.
    #[tokio::test]
    async fn a_direct_connection_is_not_taken_for_the_redirect() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let probe = Probe {
            family: Family::Ipv4,
            listen: addr,
            target: addr,
            timeout: Duration::from_millis(300),
        };
        let outcome = probe.run().await;
        assert!(matches!(outcome, ProbeOutcome::Missing(_)), "{outcome:?}");
        assert!(!outcome.is_ok());
        let text = probe.describe(&outcome);
        assert!(
            text.starts_with("the IPv4 outbound redirect is missing (nat OUTPUT rules to"),
            "{text}"
        );
        assert!(text.contains("was answered by something else"), "{text}");
    }

    #[tokio::test]
    async fn a_taken_port_is_a_listen_failure() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let probe = Probe {
            family: Family::Ipv4,
            listen: addr,
            target: Family::Ipv4.probe_target(80),
            timeout: Duration::from_millis(300),
        };
        let outcome = probe.run().await;
        assert!(matches!(outcome, ProbeOutcome::Listen(_)), "{outcome:?}");
        assert_eq!(outcome.to_string(), "listen_failed");
        assert!(probe.describe(&outcome).contains("before the proxy"));
    }
}
