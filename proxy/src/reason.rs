//! Why a connection went without mTLS: one typed enum, whose `Display` is the label used in
//! tap lines (`tls=false reason=...`) and in the `reason` metric label.
//!
//! Labels, by what happened to the connection:
//!
//! | label | direction | connection |
//! |---|---|---|
//! | `no_tls_from_remote` | in | forwarded: the client's bytes are not TLS (or it closed before deciding) |
//! | `other_tls` | in | forwarded untouched: a TLS ClientHello without ALPN `lanyard/1` (the app's own TLS) |
//! | `detect_timeout` | in | forwarded: no decision before the detection timeout (e.g. server speaks first) |
//! | `opaque_port` | in | forwarded: `--opaque-port`, no detection |
//! | `not_meshed` | out | forwarded: the destination is configured without `id=` |
//! | `no_discovery` | out | forwarded: discovery answered `Unknown` (no pod or Service at that address), or discovery is off (`--no-discovery`) |
//! | `discovery_refused` | out | closed: discovery gave no answer (the agent unreachable, timed out, or refused the lookup, e.g. `too_many_destinations`): the destination may be meshed, so never plaintext |
//! | `meshed_downgrade_refused` | out | closed: discovery now answers unmeshed for a destination it answered meshed |
//! | `meshed_destination_gone` | out | closed: a destination discovery answered meshed is gone (pod deleted) or its answer expired |
//! | `no_ready_endpoint` | out | closed: a Service with no ready endpoint (or none reachable) |
//! | `bad_discovery_answer` | out | closed: discovery's answer could not be used |
//! | `plaintext_refused` | in | closed: non-mTLS bytes on a strict listener |
//! | `no_svid` | both | closed: meshed traffic before the first SVID |
//! | TLS refusal labels (`id_not_allowed`, `unexpected_id`, `unknown_trust_domain`, `untrusted_chain`, `expired`, ...) | both | closed: the peer's SVID was refused (from `lanyard_svid::tls::TlsRefusal`) |
//! | `handshake_failed` | both | closed: the TLS handshake failed for another reason |
//! | `handshake_timeout` | both | closed: the TLS handshake did not finish in time |
//! | `alpn_mismatch` | out | closed: the server did not select `lanyard/1` |
//! | `refused_by_peer` | out | closed: the server refused our SVID after the handshake (TLS 1.3 sends that alert after the client's Finished) and no byte came back |
//! | `target_unreachable` | both | closed: connecting to the target or destination failed |
//! | `connection_limit` | both | closed: the proxy is at its connection limit (`--max-connections`) |
//! | `source_limit` | in | closed: the client's address holds its share of the connection limit (a quarter) |
//! | `no_original_dst` | both | closed: transparent listener without a redirected destination |
//! | `client_error` | in | closed: reading the first flight failed (reset) |
//!
//! A connection that went through mTLS has no reason: its tap line carries `tls=true
//! peer=...` and its metric label is `reason="mtls"`.

use std::fmt;

use lanyard_svid::tls::TlsRefusal;

/// The `reason` metric label of mTLS connections.
pub const MTLS_LABEL: &str = "mtls";

/// Why a connection is plaintext or was closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoTlsReason {
    NoTlsFromRemote,
    OtherTls,
    DetectTimeout,
    OpaquePort,
    NotMeshed,
    NoDiscovery,
    DiscoveryRefused,
    MeshedDowngradeRefused,
    MeshedDestinationGone,
    NoReadyEndpoint,
    BadDiscoveryAnswer,
    PlaintextRefused,
    NoSvid,
    /// Our TLS verifier refused the peer's SVID.
    PeerRefused(TlsRefusal),
    HandshakeFailed,
    HandshakeTimeout,
    AlpnMismatch,
    RefusedByPeer,
    TargetUnreachable,
    ConnectionLimit,
    SourceLimit,
    NoOriginalDst,
    ClientError,
}

impl NoTlsReason {
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoTlsFromRemote => "no_tls_from_remote",
            Self::OtherTls => "other_tls",
            Self::DetectTimeout => "detect_timeout",
            Self::OpaquePort => "opaque_port",
            Self::NotMeshed => "not_meshed",
            Self::NoDiscovery => "no_discovery",
            Self::DiscoveryRefused => "discovery_refused",
            Self::MeshedDowngradeRefused => "meshed_downgrade_refused",
            Self::MeshedDestinationGone => "meshed_destination_gone",
            Self::NoReadyEndpoint => "no_ready_endpoint",
            Self::BadDiscoveryAnswer => "bad_discovery_answer",
            Self::PlaintextRefused => "plaintext_refused",
            Self::NoSvid => "no_svid",
            Self::PeerRefused(refusal) => refusal.label(),
            Self::HandshakeFailed => "handshake_failed",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::AlpnMismatch => "alpn_mismatch",
            Self::RefusedByPeer => "refused_by_peer",
            Self::TargetUnreachable => "target_unreachable",
            Self::ConnectionLimit => "connection_limit",
            Self::SourceLimit => "source_limit",
            Self::NoOriginalDst => "no_original_dst",
            Self::ClientError => "client_error",
        }
    }

    /// A sentence for logs.
    pub fn message(&self) -> String {
        match self {
            Self::NoTlsFromRemote => "the client did not start TLS; forwarded as plaintext".into(),
            Self::OtherTls => {
                "the client's TLS does not offer lanyard/1; forwarded untouched".into()
            }
            Self::DetectTimeout => {
                "no bytes decided the protocol before the detection timeout; forwarded as plaintext"
                    .into()
            }
            Self::OpaquePort => "opaque port: forwarded without detection".into(),
            Self::NotMeshed => "the destination has no expected identity (no id=)".into(),
            Self::NoDiscovery => "the destination's identity is unknown".into(),
            Self::DiscoveryRefused => {
                "discovery gave no answer (agent unreachable or refusing); not risking plaintext to a meshed destination"
                    .into()
            }
            Self::MeshedDowngradeRefused => {
                "discovery answered a once-meshed destination unmeshed; not downgrading to plaintext"
                    .into()
            }
            Self::MeshedDestinationGone => {
                "the meshed destination is gone or its discovery answer expired".into()
            }
            Self::NoReadyEndpoint => "the Service has no ready, reachable endpoint".into(),
            Self::BadDiscoveryAnswer => "the discovery answer could not be used".into(),
            Self::PlaintextRefused => {
                "the listener is strict and the client did not start mTLS".into()
            }
            Self::NoSvid => "no X.509-SVID has been received from the Workload API yet".into(),
            Self::PeerRefused(refusal) => refusal.message(),
            Self::HandshakeFailed => "the TLS handshake failed".into(),
            Self::HandshakeTimeout => "the TLS handshake did not finish in time".into(),
            Self::AlpnMismatch => "the server did not select ALPN lanyard/1".into(),
            Self::RefusedByPeer => "the server refused our X.509-SVID".into(),
            Self::TargetUnreachable => "could not connect to the target".into(),
            Self::ConnectionLimit => "the proxy is at its connection limit".into(),
            Self::SourceLimit => {
                "the client's address holds its share of the connection limit".into()
            }
            Self::NoOriginalDst => {
                "the connection was not redirected (no SO_ORIGINAL_DST destination)".into()
            }
            Self::ClientError => "reading the client's first bytes failed".into(),
        }
    }

    /// True when the connection was closed rather than forwarded.
    pub fn is_refusal(&self) -> bool {
        !matches!(
            self,
            Self::NoTlsFromRemote
                | Self::OtherTls
                | Self::DetectTimeout
                | Self::OpaquePort
                | Self::NotMeshed
                | Self::NoDiscovery
        )
    }

    /// The reason a TLS handshake error stands for: our verifier's refusal when it raised
    /// one, else a generic failure.
    pub fn from_handshake_error(err: &std::io::Error) -> Self {
        match lanyard_svid::tls::refusal_from_io(err) {
            Some(refusal) => Self::PeerRefused(refusal.clone()),
            None => Self::HandshakeFailed,
        }
    }

    /// True for an I/O error that is a TLS alert from the peer (e.g. its refusal of our
    /// certificate, which under TLS 1.3 arrives after our handshake has completed).
    pub fn is_peer_alert(err: &std::io::Error) -> bool {
        err.get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .is_some_and(|e| matches!(e, rustls::Error::AlertReceived(_)))
    }
}

impl fmt::Display for NoTlsReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl std::error::Error for NoTlsReason {}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_svid::SpiffeId;
    use lanyard_svid::tls::AuthzError;

    #[test]
    fn labels_are_snake_case_and_distinct() {
        let all = [
            NoTlsReason::NoTlsFromRemote,
            NoTlsReason::OtherTls,
            NoTlsReason::DetectTimeout,
            NoTlsReason::OpaquePort,
            NoTlsReason::NotMeshed,
            NoTlsReason::NoDiscovery,
            NoTlsReason::DiscoveryRefused,
            NoTlsReason::MeshedDowngradeRefused,
            NoTlsReason::MeshedDestinationGone,
            NoTlsReason::NoReadyEndpoint,
            NoTlsReason::BadDiscoveryAnswer,
            NoTlsReason::PlaintextRefused,
            NoTlsReason::NoSvid,
            NoTlsReason::HandshakeFailed,
            NoTlsReason::HandshakeTimeout,
            NoTlsReason::AlpnMismatch,
            NoTlsReason::RefusedByPeer,
            NoTlsReason::TargetUnreachable,
            NoTlsReason::ConnectionLimit,
            NoTlsReason::SourceLimit,
            NoTlsReason::NoOriginalDst,
            NoTlsReason::ClientError,
        ];
        let mut seen = std::collections::HashSet::new();
        for r in &all {
            let label = r.to_string();
            assert!(
                label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{label}"
            );
            assert!(seen.insert(label), "duplicate label {r}");
            assert!(!r.message().is_empty());
        }
        assert!(!seen.contains(MTLS_LABEL));
        assert!(!NoTlsReason::DetectTimeout.is_refusal());
        assert!(NoTlsReason::PlaintextRefused.is_refusal());
        assert!(NoTlsReason::MeshedDowngradeRefused.is_refusal());
        assert!(NoTlsReason::MeshedDestinationGone.is_refusal());
        assert!(NoTlsReason::DiscoveryRefused.is_refusal());
    }

    #[test]
    fn peer_refusals_carry_the_verifier_label() {
        let refusal = TlsRefusal::Unauthorized(AuthzError::NotAllowed {
            id: SpiffeId::parse("spiffe://td/x").unwrap(),
        });
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::from(refusal.clone()),
        );
        let reason = NoTlsReason::from_handshake_error(&io);
        assert_eq!(reason, NoTlsReason::PeerRefused(refusal));
        assert_eq!(reason.to_string(), "id_not_allowed");
        assert_eq!(
            NoTlsReason::from_handshake_error(&std::io::Error::other("reset")),
            NoTlsReason::HandshakeFailed
        );
    }
}
