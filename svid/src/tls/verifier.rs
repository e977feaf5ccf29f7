//! The rustls hooks: certificate verifiers that run SPIFFE peer validation against the
//! store's *current* bundles and then an [`Authorizer`], and certificate resolvers that
//! present the store's *current* SVID.
//!
//! The server name (SNI) plays no part: a SPIFFE peer is identified by its URI SAN only.

use std::fmt;
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::TlsRefusal;
use super::authz::Authorizer;
use super::store::SvidStore;
use crate::id::SpiffeId;
use crate::verify::{PeerRole, crypto_provider, from_unix_time, verify_peer_parts};

/// Verification then authorisation, shared by both verifiers.
fn check_peer(
    store: &SvidStore,
    authorizer: Option<&dyn Authorizer>,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    role: PeerRole,
) -> Result<SpiffeId, TlsRefusal> {
    let bundles = store.bundles();
    let id = verify_peer_parts(
        end_entity,
        intermediates,
        &bundles,
        from_unix_time(now),
        role,
    )
    .map_err(TlsRefusal::Verify)?;
    if let Some(authorizer) = authorizer {
        authorizer
            .authorize(&id)
            .map_err(TlsRefusal::Unauthorized)?;
    }
    Ok(id)
}

fn refuse(refusal: TlsRefusal, role: PeerRole) -> rustls::Error {
    tracing::debug!(reason = %refusal, peer = ?role, detail = %refusal.message(), "refusing TLS peer");
    refusal.into()
}

fn verify_tls12(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls12_signature(
        message,
        cert,
        dss,
        &crypto_provider().signature_verification_algorithms,
    )
}

fn verify_tls13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &crypto_provider().signature_verification_algorithms,
    )
}

fn supported_schemes() -> Vec<SignatureScheme> {
    crypto_provider()
        .signature_verification_algorithms
        .supported_schemes()
}

/// Server side: verifies client SVIDs. Public for callers assembling their own rustls
/// config; [`super::server_config`] is the usual way.
pub struct SpiffeClientVerifier {
    store: Arc<SvidStore>,
    /// `None`: any verified ID; the application decides per request.
    authorizer: Option<Arc<dyn Authorizer>>,
    /// False for servers that also accept clients without a certificate.
    mandatory: bool,
}

impl SpiffeClientVerifier {
    /// Clients must present an SVID that verifies and that `authorizer` allows.
    pub fn required(store: Arc<SvidStore>, authorizer: Arc<dyn Authorizer>) -> Self {
        Self {
            store,
            authorizer: Some(authorizer),
            mandatory: true,
        }
    }

    /// Clients may come without a certificate; one that is presented must verify.
    pub fn optional(store: Arc<SvidStore>) -> Self {
        Self {
            store,
            authorizer: None,
            mandatory: false,
        }
    }
}

impl fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeClientVerifier")
            .field("mandatory", &self.mandatory)
            .field("authorizer", &self.authorizer.is_some())
            .finish()
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // SPIFFE clients present their one SVID whatever the hints say.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        check_peer(
            &self.store,
            self.authorizer.as_deref(),
            end_entity,
            intermediates,
            now,
            PeerRole::Client,
        )
        .map(|_| ClientCertVerified::assertion())
        .map_err(|r| refuse(r, PeerRole::Client))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        supported_schemes()
    }
}

/// Client side: verifies the server's SVID and that it is the server we meant. Public for
/// callers assembling their own rustls config; [`super::client_config`] is the usual way.
pub struct SpiffeServerVerifier {
    store: Arc<SvidStore>,
    authorizer: Arc<dyn Authorizer>,
    /// Fail early (before our certificate would be needed) when we hold no SVID.
    require_own_svid: bool,
}

impl SpiffeServerVerifier {
    /// `require_own_svid`: refuse with [`TlsRefusal::NoSvid`] while the store has no SVID.
    pub fn new(
        store: Arc<SvidStore>,
        expected: Arc<dyn Authorizer>,
        require_own_svid: bool,
    ) -> Self {
        Self {
            store,
            authorizer: expected,
            require_own_svid,
        }
    }
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeServerVerifier")
            .field("require_own_svid", &self.require_own_svid)
            .finish()
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.require_own_svid && !self.store.has_svid() {
            return Err(refuse(TlsRefusal::NoSvid, PeerRole::Server));
        }
        check_peer(
            &self.store,
            Some(self.authorizer.as_ref()),
            end_entity,
            intermediates,
            now,
            PeerRole::Server,
        )
        .map(|_| ServerCertVerified::assertion())
        .map_err(|r| refuse(r, PeerRole::Server))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        supported_schemes()
    }
}

/// Presents the store's current SVID, as server ([`ResolvesServerCert`]) or as client
/// ([`ResolvesClientCert`]).
#[derive(Debug)]
pub struct CurrentSvid(pub Arc<SvidStore>);

impl ResolvesServerCert for CurrentSvid {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let key = self.0.certified_key();
        if key.is_none() {
            tracing::warn!(
                reason = "no_svid",
                "refusing TLS client: no X.509-SVID to serve yet"
            );
        }
        key
    }
}

impl ResolvesClientCert for CurrentSvid {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.certified_key()
    }

    fn has_certs(&self) -> bool {
        // Asked once per connection before the SVID may arrive; keeping the transcript for
        // client auth costs little.
        true
    }
}
