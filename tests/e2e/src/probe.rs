//! An mTLS client in the test process that speaks to proxies as a meshed peer would: an
//! X.509-SVID and bundle fetched from a real agent (`lanyard-agent api fetch x509 --write`),
//! lanyard-svid's client configuration (ALPN `lanyard/1`, the server's ID checked), and the
//! certificate the proxy presented, for tests that watch rotations.

use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use lanyard_svid::bundle::certificates_from_pem;
use lanyard_svid::tls::{ExactId, LANYARD_ALPN, client_config, unused_server_name};
use lanyard_svid::{BundleSet, SpiffeId, SvidStore, TrustBundle, X509Svid};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConnection, StreamOwned};

use crate::DEADLINE;
use crate::client::{RunAs, api_until};

/// An SVID with its key and the bundles its holder trusts.
pub struct Identity {
    pub svid: X509Svid,
    pub bundles: BundleSet,
}

impl Identity {
    /// The identity the agent on `socket` gives `who` (retried until it has one).
    pub fn fetch(socket: &Path, who: RunAs<'_>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().to_str().expect("utf-8 path");
        api_until(socket, &["fetch", "x509", "--write", out], who, |o| {
            o.success
        });
        let read = |name: &str| std::fs::read(dir.path().join(name)).expect(name);
        let chain = certificates_from_pem(&read("svid.pem")).expect("svid.pem");
        let key = match PrivateKeyDer::from_pem_slice(&read("svid.key")).expect("svid.key") {
            PrivateKeyDer::Pkcs8(key) => zeroize::Zeroizing::new(key.secret_pkcs8_der().to_vec()),
            _ => panic!("svid.key is not PKCS#8"),
        };
        let svid = X509Svid::parse(chain, Some(key)).expect("a valid X.509-SVID");
        let bundle =
            TrustBundle::from_pem(svid.spiffe_id().trust_domain().clone(), &read("bundle.pem"))
                .expect("bundle.pem");
        Self {
            svid,
            bundles: BundleSet::from(bundle),
        }
    }

    /// Also trusts `bundle` (federation done by the test, where the servers have none).
    pub fn trusting(mut self, bundle: TrustBundle) -> Self {
        self.bundles.insert(bundle);
        self
    }

    /// An mTLS connection over `tcp`, expecting the server `expected`; the handshake is
    /// complete when this returns. Under TLS 1.3 the server judges our certificate after
    /// that: its refusal arrives as an alert on the first read.
    pub fn dial(&self, tcp: TcpStream, expected: &str) -> Result<MtlsStream, rustls::Error> {
        let store =
            SvidStore::with_svid(self.svid.clone(), self.bundles.clone()).expect("a usable SVID");
        let expected = SpiffeId::parse(expected).expect("a SPIFFE ID");
        // A fresh configuration each time: no session resumption, a full handshake in
        // which the server presents its current certificate.
        let config = client_config(
            Arc::new(store),
            Arc::new(ExactId(expected)),
            vec![LANYARD_ALPN.to_vec()],
        );
        tcp.set_read_timeout(Some(DEADLINE)).expect("read timeout");
        let conn = ClientConnection::new(Arc::new(config), unused_server_name())?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).map_err(|e| {
                e.into_inner()
                    .and_then(|inner| inner.downcast::<rustls::Error>().ok())
                    .map(|boxed| *boxed)
                    .unwrap_or(rustls::Error::HandshakeNotComplete)
            })?;
        }
        Ok(stream)
    }
}

/// An established mTLS connection.
pub type MtlsStream = StreamOwned<ClientConnection, TcpStream>;

/// The leaf certificate the server presented on `stream`.
pub fn server_leaf(stream: &MtlsStream) -> CertificateDer<'static> {
    stream
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("the server presented a certificate")
        .clone()
        .into_owned()
}

/// The roots in a PEM file (`lanyard-server bundle show`) as `trust_domain`'s bundle.
pub fn bundle_from_pem_file(trust_domain: &str, path: &Path) -> TrustBundle {
    let roots = certificates_from_pem(&std::fs::read(path).expect("read bundle")).expect("PEM");
    TrustBundle::from_x509_authorities(
        lanyard_svid::TrustDomain::new(trust_domain).expect("a trust domain"),
        roots,
    )
}
