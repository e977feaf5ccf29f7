//! rustls configurations for the handshake benchmark, built from the PEM files that
//! `lanyard-agent api fetch x509 --write DIR` leaves (svid.pem, svid.key, bundle.pem).
//!
//! Two servers are compared with the Lanyard proxy's inbound listener: rustls with its own
//! WebPKI client verifier ("rustls alone"), and rustls with Lanyard's SPIFFE verifier
//! (`lanyard_svid::tls::server_config`, the proxy's config without the proxy). The load
//! generator's client does not verify the server at all: it exists to make the server work,
//! and verification would double its cost on a 2-core machine. It must never leave this crate.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use lanyard_svid::tls::{AnyId, LANYARD_ALPN, SvidStore};
use lanyard_svid::{BundleSet, TrustBundle, X509Svid};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use zeroize::Zeroizing;

/// An SVID and the bundle read from a `--write` directory.
pub struct Material {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: Vec<CertificateDer<'static>>,
}

impl Material {
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let chain = CertificateDer::pem_file_iter(dir.join("svid.pem"))
            .context("opening svid.pem")?
            .collect::<Result<Vec<_>, _>>()
            .context("parsing svid.pem")?;
        let key = PrivateKeyDer::from_pem_file(dir.join("svid.key")).context("parsing svid.key")?;
        let roots = CertificateDer::pem_file_iter(dir.join("bundle.pem"))
            .context("opening bundle.pem")?
            .collect::<Result<Vec<_>, _>>()
            .context("parsing bundle.pem")?;
        anyhow::ensure!(!chain.is_empty(), "svid.pem holds no certificate");
        anyhow::ensure!(!roots.is_empty(), "bundle.pem holds no certificate");
        Ok(Self { chain, key, roots })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Resumption off and ALPN `lanyard/1`, as in the proxy, so every connection is a full
/// handshake.
fn like_the_proxy(mut config: ServerConfig) -> ServerConfig {
    config.alpn_protocols = vec![LANYARD_ALPN.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config
}

/// rustls alone: its WebPKI client verifier over the bundle's roots.
pub fn webpki_server(m: &Material) -> anyhow::Result<ServerConfig> {
    let mut roots = RootCertStore::empty();
    for root in &m.roots {
        roots.add(root.clone()).context("adding a bundle root")?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .context("building the WebPKI client verifier")?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(m.chain.clone(), m.key.clone_key())
        .context("loading the server SVID")?;
    Ok(like_the_proxy(config))
}

/// The proxy's own server config (SPIFFE verifier, any ID allowed), outside the proxy.
pub fn lanyard_server(m: &Material) -> anyhow::Result<ServerConfig> {
    let key = Zeroizing::new(m.key.secret_der().to_vec());
    let svid = X509Svid::parse(m.chain.clone(), Some(key)).context("parsing the SVID")?;
    let td = svid.spiffe_id().trust_domain().clone();
    let mut bundles = BundleSet::new();
    bundles.insert(TrustBundle::from_x509_authorities(td, m.roots.clone()));
    let store = Arc::new(SvidStore::with_svid(svid, bundles).context("loading the SVID")?);
    Ok(lanyard_svid::tls::server_config(
        store,
        Arc::new(AnyId),
        vec![LANYARD_ALPN.to_vec()],
    ))
}

/// The load generator's client: presents the SVID, offers `lanyard/1`, trusts any server.
pub fn load_client(m: &Material) -> anyhow::Result<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(TrustAnyServer))
        .with_client_auth_cert(m.chain.clone(), m.key.clone_key())
        .context("loading the client SVID")?;
    config.alpn_protocols = vec![LANYARD_ALPN.to_vec()];
    config.enable_sni = false;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// Any name works: SNI is off and the server is not verified.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from("bench.invalid").expect("valid DNS name")
}

/// Accepts every server without looking: the load generator's side of the benchmark only.
#[derive(Debug)]
struct TrustAnyServer;

impl ServerCertVerifier for TrustAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::ED25519,
            SignatureScheme::RSA_PSS_SHA256,
        ]
    }
}
