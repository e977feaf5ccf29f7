//! The original destination of a connection redirected by iptables or ip6tables (`REDIRECT`
//! in the `nat` table), read with `getsockopt`: `SO_ORIGINAL_DST` (level `SOL_IP`, a
//! `sockaddr_in`) on an IPv4 socket, `IP6T_SO_ORIGINAL_DST` (level `SOL_IPV6`, a
//! `sockaddr_in6`) on an IPv6 one. Both options are number 80; which one is asked follows the
//! accepted socket's own family (the IPv6 transparent listeners are `IPV6_V6ONLY`, so an IPv6
//! socket never carries an IPv4 connection). What transparent listeners forward to.
//!
//! A connection that was not redirected has no original destination of its own: the kernel
//! either refuses the option or reports the listener's own address. Both are
//! [`OriginalDstError::NotRedirected`], so a stray direct connection can never make the proxy
//! dial itself.
//!
//! The IPv6 answer's `sin6_flowinfo` is the accepting socket's own flow label, not part of
//! the destination, and is dropped; its scope ID is kept (link-local destinations need it).
//!
//! What the redirect rules (`lanyard-redirect`, in both families) do: send the pod's inbound
//! TCP ports to `--transparent-inbound` (PREROUTING; the proxy listens on `0.0.0.0` and `[::]`)
//! and the app's outbound TCP to `--transparent-outbound` (OUTPUT; `127.0.0.1` and `[::1]`),
//! exempting the proxy's own traffic (owner uid match) and loopback, or the proxy's upstream
//! connections would be redirected back to itself.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use tokio::net::TcpStream;

/// Why no original destination is known.
#[derive(Debug, thiserror::Error)]
pub enum OriginalDstError {
    #[error("the connection was not redirected to this listener (no SO_ORIGINAL_DST)")]
    NotRedirected,
    #[error("SO_ORIGINAL_DST failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("SO_ORIGINAL_DST is only available on Linux")]
    Unsupported,
    #[error("SO_ORIGINAL_DST answered address family {family}, not the socket's ({expected})")]
    WrongFamily { family: u16, expected: u16 },
}

/// `stream`'s destination before redirection.
pub fn original_dst(stream: &TcpStream) -> Result<SocketAddr, OriginalDstError> {
    let local = stream.local_addr()?;
    let original = query(stream, local.is_ipv6())?;
    // By address and port: an IPv6 local address may carry a scope ID the answer lacks.
    if (original.ip(), original.port()) == (local.ip(), local.port()) {
        return Err(OriginalDstError::NotRedirected);
    }
    Ok(original)
}

/// `SO_ORIGINAL_DST` (IPv4) and `IP6T_SO_ORIGINAL_DST` (IPv6) share this value.
#[cfg(target_os = "linux")]
const SO_ORIGINAL_DST: libc::c_int = 80;

#[cfg(target_os = "linux")]
fn query(stream: &TcpStream, ipv6: bool) -> Result<SocketAddr, OriginalDstError> {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    let not_redirected = |err: std::io::Error| match err.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOPROTOOPT) => OriginalDstError::NotRedirected,
        _ => OriginalDstError::Io(err),
    };
    if ipv6 {
        // SAFETY: `addr` is a plain C struct, valid when zeroed; the kernel writes at most
        // `len` bytes into it and `len` is its size.
        let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        // SAFETY: `fd` is this stream's open socket; `addr` and `len` are live locals and
        // `len` is `addr`'s size, so the kernel writes only inside `addr`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IPV6,
                SO_ORIGINAL_DST,
                (&mut addr as *mut libc::sockaddr_in6).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(not_redirected(std::io::Error::last_os_error()));
        }
        decode_v6(&addr).map(SocketAddr::V6)
    } else {
        // SAFETY: as above, for `sockaddr_in`.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: as for the IPv6 call above, with `sockaddr_in`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IP,
                SO_ORIGINAL_DST,
                (&mut addr as *mut libc::sockaddr_in).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(not_redirected(std::io::Error::last_os_error()));
        }
        decode_v4(&addr).map(SocketAddr::V4)
    }
}

/// The address in `IP6T_SO_ORIGINAL_DST`'s answer (network byte order fields; the flow info,
/// the accepting socket's own flow label, dropped).
#[cfg(target_os = "linux")]
fn decode_v6(addr: &libc::sockaddr_in6) -> Result<SocketAddrV6, OriginalDstError> {
    check_family(addr.sin6_family, libc::AF_INET6)?;
    Ok(SocketAddrV6::new(
        Ipv6Addr::from(addr.sin6_addr.s6_addr),
        u16::from_be(addr.sin6_port),
        0,
        addr.sin6_scope_id,
    ))
}

/// The address in `SO_ORIGINAL_DST`'s answer (network byte order fields).
#[cfg(target_os = "linux")]
fn decode_v4(addr: &libc::sockaddr_in) -> Result<SocketAddrV4, OriginalDstError> {
    check_family(addr.sin_family, libc::AF_INET)?;
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    ))
}

#[cfg(target_os = "linux")]
fn check_family(family: libc::sa_family_t, expected: libc::c_int) -> Result<(), OriginalDstError> {
    if libc::c_int::from(family) == expected {
        Ok(())
    } else {
        Err(OriginalDstError::WrongFamily {
            family,
            expected: expected as u16,
        })
    }
}

#[cfg(not(target_os = "linux"))]
fn query(_stream: &TcpStream, _ipv6: bool) -> Result<SocketAddr, OriginalDstError> {
    Err(OriginalDstError::Unsupported)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn a_direct_connection_has_no_original_destination() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let err = original_dst(&accepted).unwrap_err();
        assert!(
            matches!(err, OriginalDstError::NotRedirected),
            "expected NotRedirected, got {err}"
        );
    }

    #[tokio::test]
    async fn a_direct_ipv6_connection_has_no_original_destination() {
        // A host without IPv6 on loopback cannot run this; the decoding test below still runs.
        let Ok(listener) = TcpListener::bind("[::1]:0").await else {
            return;
        };
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let err = original_dst(&accepted).unwrap_err();
        assert!(
            matches!(err, OriginalDstError::NotRedirected),
            "expected NotRedirected, got {err}"
        );
    }

    /// A `sockaddr_in6` as the kernel's `ipv6_getorigdst` fills it.
    #[cfg(target_os = "linux")]
    fn sockaddr_in6(ip: Ipv6Addr, port: u16, flowinfo: u32, scope_id: u32) -> libc::sockaddr_in6 {
        // SAFETY: `sockaddr_in6` is a plain C struct, valid when zeroed.
        let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        addr.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        addr.sin6_port = port.to_be();
        addr.sin6_flowinfo = flowinfo;
        addr.sin6_addr.s6_addr = ip.octets();
        addr.sin6_scope_id = scope_id;
        addr
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn ipv6_original_destinations_decode_from_network_order() {
        let ip: Ipv6Addr = "fd00:251:7::2".parse().unwrap();
        let decoded = decode_v6(&sockaddr_in6(ip, 8080, 0, 0)).unwrap();
        assert_eq!(decoded, "[fd00:251:7::2]:8080".parse().unwrap());
        assert_eq!(SocketAddr::V6(decoded).to_string(), "[fd00:251:7::2]:8080");
        // Byte order: port 0x1f90 is not 0x901f, and the address bytes stay in order.
        assert_eq!(decoded.port(), 8080);
        assert_eq!(decoded.ip().segments()[..3], [0xfd00, 0x251, 0x7]);

        // The flow label is the socket's, not the destination's: dropped, so the same
        // destination is one discovery key whatever the label.
        let labelled = decode_v6(&sockaddr_in6(ip, 8080, 0x000a_bcde_u32.to_be(), 0)).unwrap();
        assert_eq!(labelled, decoded);

        // A link-local destination keeps its scope (the interface to dial it through).
        let link_local: Ipv6Addr = "fe80::1".parse().unwrap();
        let scoped = decode_v6(&sockaddr_in6(link_local, 443, 0, 3)).unwrap();
        assert_eq!(scoped.scope_id(), 3);
        assert_eq!(scoped.to_string(), "[fe80::1%3]:443");

        let mut wrong = sockaddr_in6(ip, 8080, 0, 0);
        wrong.sin6_family = libc::AF_INET as libc::sa_family_t;
        assert!(matches!(
            decode_v6(&wrong),
            Err(OriginalDstError::WrongFamily { .. })
        ));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn ipv4_original_destinations_decode_from_network_order() {
        // SAFETY: `sockaddr_in` is a plain C struct, valid when zeroed.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_port = 8080u16.to_be();
        addr.sin_addr.s_addr = u32::from(Ipv4Addr::new(10, 251, 7, 2)).to_be();
        assert_eq!(
            decode_v4(&addr).unwrap(),
            "10.251.7.2:8080".parse().unwrap()
        );
    }
}
