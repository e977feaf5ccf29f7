//! rustls configurations for SPIFFE mTLS, shared by every Lanyard binary.
//!
//! All configs read a live [`SvidStore`] on every handshake: an SVID rotation or a bundle
//! change applies to the next handshake without rebuilding the config, and open connections
//! are untouched. Peers are verified with [`crate::verify::verify_peer`] against the bundle of
//! their own trust domain, then passed to an [`Authorizer`].
//!
//! Choices made here, once, for every binary:
//! - ring is the crypto provider, passed explicitly; no process-default provider is needed.
//! - TLS 1.3 and 1.2, 1.3 preferred.
//! - Session resumption is off on both sides: a resumed session skips certificate
//!   verification, so a removed root or a narrowed policy would not apply to it.
//! - SNI is not sent and the server name is ignored in verification. Clients still have to
//!   name a server to rustls: pass any syntactically valid name, e.g. [`unused_server_name`].
//! - A refusal made here surfaces as a rustls error carrying a [`TlsRefusal`]; get it back
//!   with [`refusal`] or [`refusal_from_io`]. Under TLS 1.3 a client's `connect()` can succeed
//!   although the server refused the client's certificate: the refusal shows on the first read.

mod authz;
mod store;
mod verifier;

use std::fmt;
use std::sync::Arc;

use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, CommonState, ServerConfig};
use rustls_pki_types::ServerName;

pub use authz::{
    AllowAuthorizer, AllowParseError, AllowPolicy, AllowRule, AnyId, AuthorizeFn, Authorizer,
    AuthzError, ExactId, IdPrefix, MemberOf, OneOf,
};
pub use store::{StoreError, SvidStore};

use crate::id::SpiffeId;
use crate::verify::{VerifyError, crypto_provider};
pub use verifier::{CurrentSvid, SpiffeClientVerifier, SpiffeServerVerifier};

/// The ALPN protocol of Lanyard's mTLS hop between proxies.
pub const LANYARD_ALPN: &[u8] = b"lanyard/1";

/// Why this side refused a TLS peer (or could not take part). `Display` is the metric label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsRefusal {
    /// We hold no SVID yet, so we cannot authenticate ourselves.
    NoSvid,
    /// The peer's chain is not a valid SVID of a trusted trust domain.
    Verify(VerifyError),
    /// The peer's ID is valid but not allowed.
    Unauthorized(AuthzError),
}

impl TlsRefusal {
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoSvid => "no_svid",
            Self::Verify(e) => e.label(),
            Self::Unauthorized(e) => e.label(),
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::NoSvid => "no X.509-SVID has been received yet".into(),
            Self::Verify(e) => e.message(),
            Self::Unauthorized(e) => e.message(),
        }
    }
}

impl fmt::Display for TlsRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl std::error::Error for TlsRefusal {}

impl From<TlsRefusal> for rustls::Error {
    fn from(refusal: TlsRefusal) -> Self {
        let other = rustls::OtherError(Arc::new(refusal.clone()));
        match refusal {
            // Not the peer's fault: a handshake_failure alert.
            TlsRefusal::NoSvid => rustls::Error::Other(other),
            // The peer's certificate: a bad_certificate alert.
            _ => rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)),
        }
    }
}

/// The [`TlsRefusal`] inside a rustls error raised by this side's verifier, if any.
pub fn refusal(err: &rustls::Error) -> Option<&TlsRefusal> {
    let other = match err {
        rustls::Error::Other(other) => other,
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => other,
        _ => return None,
    };
    other.0.downcast_ref::<TlsRefusal>()
}

/// [`refusal`] for the `io::Error` that tokio-rustls wraps rustls errors in.
pub fn refusal_from_io(err: &std::io::Error) -> Option<&TlsRefusal> {
    refusal(err.get_ref()?.downcast_ref::<rustls::Error>()?)
}

/// A server name to hand rustls when dialling: SPIFFE verification ignores it and SNI is not
/// sent, so any valid name does.
pub fn unused_server_name() -> ServerName<'static> {
    ServerName::try_from("lanyard.invalid").expect("constant is a valid DNS name")
}

/// The peer's SPIFFE ID, read from its leaf. Only meaningful on a connection made with one
/// of this module's configs, whose verifier has already validated that leaf; `None` when the
/// peer presented no certificate (optional client auth) or before the handshake completes.
pub fn peer_spiffe_id(conn: &CommonState) -> Option<SpiffeId> {
    let leaf = conn.peer_certificates()?.first()?;
    crate::x509::peek_spiffe_id(leaf).ok()
}

/// An mTLS server: clients must present an SVID that verifies against the store's current
/// bundles and that `authorizer` allows; the store's current SVID is served.
pub fn server_config(
    store: Arc<SvidStore>,
    authorizer: Arc<dyn Authorizer>,
    alpn: Vec<Vec<u8>>,
) -> ServerConfig {
    let verifier = SpiffeClientVerifier::required(store.clone(), authorizer);
    build_server(store, verifier, alpn)
}

/// A server that authenticates itself but lets clients come without a certificate (the
/// identity server's `AttestNode`, called before the agent has an SVID). A certificate that
/// *is* presented must verify (any trusted ID); the application then decides per request
/// with [`peer_spiffe_id`].
pub fn server_config_optional_client_auth(
    store: Arc<SvidStore>,
    alpn: Vec<Vec<u8>>,
) -> ServerConfig {
    let verifier = SpiffeClientVerifier::optional(store.clone());
    build_server(store, verifier, alpn)
}

/// An mTLS client: presents the store's current SVID and accepts only a server whose SVID
/// verifies against the current bundles and that `expected` allows (e.g. [`ExactId`]).
/// Without an SVID in the store, handshakes fail at once with [`TlsRefusal::NoSvid`].
pub fn client_config(
    store: Arc<SvidStore>,
    expected: Arc<dyn Authorizer>,
    alpn: Vec<Vec<u8>>,
) -> ClientConfig {
    build_client(store, expected, alpn, true)
}

/// Like [`client_config`], but proceeds without a client certificate while the store has no
/// SVID (an agent attesting for the first time). The server is verified all the same.
pub fn client_config_optional_svid(
    store: Arc<SvidStore>,
    expected: Arc<dyn Authorizer>,
    alpn: Vec<Vec<u8>>,
) -> ClientConfig {
    build_client(store, expected, alpn, false)
}

fn build_server(
    store: Arc<SvidStore>,
    verifier: SpiffeClientVerifier,
    alpn: Vec<Vec<u8>>,
) -> ServerConfig {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .expect("the ring provider supports TLS 1.3 and 1.2")
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(CurrentSvid(store)));
    config.alpn_protocols = alpn;
    // No resumption: every connection is verified against the current bundles and policy.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config
}

fn build_client(
    store: Arc<SvidStore>,
    expected: Arc<dyn Authorizer>,
    alpn: Vec<Vec<u8>>,
    require_own_svid: bool,
) -> ClientConfig {
    let verifier = SpiffeServerVerifier::new(store.clone(), expected, require_own_svid);
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .expect("the ring provider supports TLS 1.3 and 1.2")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(CurrentSvid(store)));
    config.alpn_protocols = alpn;
    config.enable_sni = false;
    config.resumption = rustls::client::Resumption::disabled();
    config
}

/// TLS 1.3 first: rustls prefers the first version both sides support.
const PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_round_trip_through_rustls_and_io_errors() {
        let cases = [
            TlsRefusal::NoSvid,
            TlsRefusal::Verify(VerifyError::Expired),
            TlsRefusal::Unauthorized(AuthzError::NotAllowed {
                id: SpiffeId::parse("spiffe://td/x").unwrap(),
            }),
        ];
        for refusal_in in cases {
            let err: rustls::Error = refusal_in.clone().into();
            assert_eq!(refusal(&err), Some(&refusal_in));
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, err);
            assert_eq!(refusal_from_io(&io), Some(&refusal_in));
            assert!(!refusal_in.message().is_empty());
        }
        assert_eq!(refusal(&rustls::Error::DecryptError), None);
        assert_eq!(refusal_from_io(&std::io::Error::other("x")), None);
        assert_eq!(TlsRefusal::NoSvid.to_string(), "no_svid");
    }

    #[test]
    fn configs_build_without_a_process_default_provider() {
        let store = Arc::new(SvidStore::new(crate::BundleSet::new()));
        let server = server_config(store.clone(), Arc::new(AnyId), vec![LANYARD_ALPN.to_vec()]);
        assert_eq!(server.alpn_protocols, vec![LANYARD_ALPN.to_vec()]);
        assert_eq!(server.send_tls13_tickets, 0);
        let client = client_config(store, Arc::new(AnyId), vec![]);
        assert!(!client.enable_sni);
    }
}
