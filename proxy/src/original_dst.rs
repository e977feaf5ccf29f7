//! The original destination of a connection redirected by iptables (`REDIRECT` in the `nat`
//! table), read with `getsockopt(SO_ORIGINAL_DST)`: what transparent listeners forward to.
//!
//! A connection that was not redirected has no original destination of its own: the kernel
//! either refuses the option or reports the listener's own address. Both are
//! [`OriginalDstError::NotRedirected`], so a stray direct connection can never make the proxy
//! dial itself.
//!
//! What the redirect rules (a later `lanyard inject` init container) must do: send the pod's
//! inbound TCP ports to `--transparent-inbound` (PREROUTING) and the app's outbound TCP to
//! `--transparent-outbound` (OUTPUT), exempting the proxy's own traffic (owner uid match) and
//! loopback, or the proxy's upstream connections would be redirected back to itself.

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
}

/// `stream`'s destination before redirection.
pub fn original_dst(stream: &TcpStream) -> Result<SocketAddr, OriginalDstError> {
    let local = stream.local_addr()?;
    let original = query(stream, local.is_ipv6())?;
    if original == local {
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
        Ok(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(addr.sin6_addr.s6_addr),
            u16::from_be(addr.sin6_port),
            addr.sin6_flowinfo,
            addr.sin6_scope_id,
        )))
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
        Ok(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
            u16::from_be(addr.sin_port),
        )))
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
}
