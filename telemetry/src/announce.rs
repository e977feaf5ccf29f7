//! `listening on IP:PORT (role)`: printed on stdout once a listener accepts, one line per
//! listener, so a daemon started with port 0 tells its caller where it is (DESIGN §2).

use std::io::Write;
use std::net::SocketAddr;

/// The line for one listener; `role` is e.g. `grpc`, `health`, `inbound`.
pub fn listener_line(role: &str, addr: SocketAddr) -> String {
    format!("listening on {addr} ({role})")
}

/// Prints [`listener_line`] to stdout and flushes, so a parent reading a pipe sees it at once.
pub fn announce_listener(role: &str, addr: SocketAddr) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", listener_line(role, addr));
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    #[test]
    fn line_format() {
        let addr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(
            super::listener_line("grpc", addr),
            "listening on 127.0.0.1:4000 (grpc)"
        );
    }
}
