//! One fetch of a federated trust domain's bundle from its SPIFFE bundle endpoint.
//!
//! - `https_spiffe`: the endpoint must present an X.509-SVID that verifies against the bundle
//!   held for its trust domain (the last fetched, else the bootstrap one) and whose ID is
//!   exactly `endpoint_spiffe_id`. No bundle held: no fetch.
//! - `https_web`: Web PKI, the URL's host checked against the certificate, anchored in the
//!   configured CA roots or else the system's.
//!
//! The response must be a 200 whose body, at most [`MAX_DOCUMENT_LEN`] bytes (a larger one is
//! refused by its `Content-Length`, or as soon as it passes the bound, never read whole), is a
//! SPIFFE bundle document for the trust domain: at least one X.509 authority, and none that
//! names another trust domain in a `spiffe://` URI SAN.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use lanyard_registration::federation::{EndpointProfile, FederatedDomain};
use lanyard_svid::jwks::MAX_DOCUMENT_LEN;
use lanyard_svid::tls::{ExactId, SvidStore, client_config_optional_svid, refusal_from_io};
use lanyard_svid::{BundleSet, TrustBundle, TrustDomain};
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use super::schedule::Fetch;

/// A whole fetch (connect, handshake, response, body) must finish in this time.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// How a fetch ended. `Display` is the `result` label of
/// `lanyard_server_federation_fetch_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FetchOutcome {
    Ok,
    /// No TCP connection (DNS, refused, unreachable).
    Unreachable,
    /// Not done within [`FETCH_TIMEOUT`].
    Timeout,
    /// The TLS handshake failed: the endpoint was not authenticated.
    Tls,
    /// Not a valid HTTP/1.1 exchange.
    Http,
    /// A status other than 200.
    HttpStatus,
    /// A body larger than [`MAX_DOCUMENT_LEN`].
    TooLarge,
    /// Not a SPIFFE bundle document.
    Malformed,
    /// An X.509 authority names another trust domain.
    WrongTrustDomain,
    /// A document without any X.509 authority (it could never authenticate the endpoint again).
    NoX509Authority,
    /// `https_spiffe` with no bundle held to authenticate the endpoint with.
    NoBundleToVerify,
    /// The configuration cannot be used (URL, system roots).
    Config,
}

impl std::fmt::Display for FetchOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ok => "ok",
            Self::Unreachable => "unreachable",
            Self::Timeout => "timeout",
            Self::Tls => "tls",
            Self::Http => "http",
            Self::HttpStatus => "http_status",
            Self::TooLarge => "too_large",
            Self::Malformed => "malformed",
            Self::WrongTrustDomain => "wrong_trust_domain",
            Self::NoX509Authority => "no_x509_authority",
            Self::NoBundleToVerify => "no_bundle_to_verify",
            Self::Config => "config",
        })
    }
}

/// Why a fetch failed; [`FetchError::outcome`] is its metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("cannot connect: {0}")]
    Unreachable(String),
    #[error("no answer within {FETCH_TIMEOUT:?}")]
    Timeout,
    #[error("TLS handshake: {0}")]
    Tls(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("the endpoint answered HTTP status {0}, not 200")]
    Status(u16),
    #[error("the document is larger than {MAX_DOCUMENT_LEN} bytes")]
    TooLarge,
    #[error("{0}")]
    Malformed(String),
    #[error("an X.509 authority names trust domain {0}, not the one federated with")]
    WrongTrustDomain(String),
    #[error("the document holds no X.509 authority")]
    NoX509Authority,
    #[error(
        "no bundle to authenticate the https_spiffe endpoint with: give trust_domain_bundle_file (trustDomainBundle) to bootstrap it"
    )]
    NoBundleToVerify,
    #[error("{0}")]
    Config(String),
}

impl FetchError {
    pub fn outcome(&self) -> FetchOutcome {
        match self {
            Self::Unreachable(_) => FetchOutcome::Unreachable,
            Self::Timeout => FetchOutcome::Timeout,
            Self::Tls(_) => FetchOutcome::Tls,
            Self::Http(_) => FetchOutcome::Http,
            Self::Status(_) => FetchOutcome::HttpStatus,
            Self::TooLarge => FetchOutcome::TooLarge,
            Self::Malformed(_) => FetchOutcome::Malformed,
            Self::WrongTrustDomain(_) => FetchOutcome::WrongTrustDomain,
            Self::NoX509Authority => FetchOutcome::NoX509Authority,
            Self::NoBundleToVerify => FetchOutcome::NoBundleToVerify,
            Self::Config(_) => FetchOutcome::Config,
        }
    }
}

/// The parts of a bundle endpoint URL a fetch needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUrl {
    /// Host name or IP address, without IPv6 brackets.
    pub host: String,
    pub port: u16,
    /// The `Host` header value (`host[:port]` as written).
    pub authority: String,
    /// Path (and query, none is allowed), `/` when the URL has none.
    pub path: String,
}

impl EndpointUrl {
    pub fn parse(url: &str) -> Result<Self, FetchError> {
        let bad = |why: &str| FetchError::Config(format!("bundle endpoint URL {url:?}: {why}"));
        let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("not https://"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user info is not allowed"));
        }
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Self {
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(443),
            authority: authority.as_str().to_owned(),
            path: uri
                .path_and_query()
                .map_or("/".to_owned(), |p| p.as_str().to_owned()),
        })
    }
}

/// Fetches one federated trust domain's bundle.
pub struct Fetcher {
    trust_domain: TrustDomain,
    url: EndpointUrl,
    how: How,
    timeout: Duration,
}

enum How {
    Spiffe { endpoint_id: lanyard_svid::SpiffeId },
    Web { tls: Arc<ClientConfig> },
}

impl Fetcher {
    /// Ready to fetch `domain`'s bundle; `https_web` without CA roots loads the system's here.
    pub fn new(domain: &FederatedDomain) -> Result<Self, FetchError> {
        let url = EndpointUrl::parse(&domain.bundle_endpoint_url)?;
        let how = match &domain.profile {
            EndpointProfile::HttpsSpiffe {
                endpoint_spiffe_id, ..
            } => How::Spiffe {
                endpoint_id: endpoint_spiffe_id.clone(),
            },
            EndpointProfile::HttpsWeb { ca_roots } => How::Web {
                tls: Arc::new(web_client_config(ca_roots.as_deref())?),
            },
        };
        Ok(Self {
            trust_domain: domain.trust_domain.clone(),
            url,
            how,
            timeout: FETCH_TIMEOUT,
        })
    }

    async fn fetch_once(&self, held: Option<&TrustBundle>) -> Result<TrustBundle, FetchError> {
        let (tls, name) = match &self.how {
            How::Spiffe { endpoint_id } => {
                let held = held
                    .filter(|b| !b.x509_authorities().is_empty())
                    .ok_or(FetchError::NoBundleToVerify)?;
                // Only the federated domain's own bundle: its endpoint's SVID must chain to it.
                let store = Arc::new(SvidStore::new(BundleSet::from(held.clone())));
                let config = client_config_optional_svid(
                    store,
                    Arc::new(ExactId(endpoint_id.clone())),
                    vec![],
                );
                (Arc::new(config), lanyard_svid::tls::unused_server_name())
            }
            How::Web { tls } => {
                let name = ServerName::try_from(self.url.host.clone()).map_err(|_| {
                    FetchError::Config(format!("{:?} is not a valid host name", self.url.host))
                })?;
                (tls.clone(), name)
            }
        };
        let tcp = TcpStream::connect((self.url.host.as_str(), self.url.port))
            .await
            .map_err(|e| FetchError::Unreachable(e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| match refusal_from_io(&e) {
                Some(refusal) => FetchError::Tls(format!("{refusal}: {}", refusal.message())),
                None => FetchError::Tls(e.to_string()),
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let conn = AbortOnDrop(tokio::spawn(conn));
        let request = http::Request::get(self.url.path.as_str())
            .header(http::header::HOST, self.url.authority.as_str())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Config(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| FetchError::Http(e.to_string()))?;
        if response.status() != http::StatusCode::OK {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        let declared = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > MAX_DOCUMENT_LEN as u64) {
            return Err(FetchError::TooLarge);
        }
        let body = read_bounded(response.into_body(), MAX_DOCUMENT_LEN).await?;
        drop(conn);
        check_document(&self.trust_domain, &body)
    }
}

impl Fetch for Fetcher {
    async fn fetch(&self, held: Option<&TrustBundle>) -> Result<TrustBundle, FetchError> {
        tokio::time::timeout(self.timeout, self.fetch_once(held))
            .await
            .map_err(|_| FetchError::Timeout)?
    }
}

/// Aborts the HTTP connection's task when the fetch is over (or dropped by its timeout).
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The body, refused as soon as it passes `max` bytes.
async fn read_bounded<B>(mut body: B, max: usize) -> Result<Vec<u8>, FetchError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| FetchError::Http(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err(FetchError::TooLarge);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// The bundle in `document`, if it is a valid bundle document of `trust_domain`.
pub fn check_document(
    trust_domain: &TrustDomain,
    document: &[u8],
) -> Result<TrustBundle, FetchError> {
    if document.len() > MAX_DOCUMENT_LEN {
        return Err(FetchError::TooLarge);
    }
    let bundle = TrustBundle::from_jwks(trust_domain.clone(), document)
        .map_err(|e| FetchError::Malformed(e.to_string()))?;
    if bundle.x509_authorities().is_empty() {
        return Err(FetchError::NoX509Authority);
    }
    for cert in bundle.x509_authorities() {
        if let Some(other) = other_trust_domain(trust_domain, cert) {
            return Err(FetchError::WrongTrustDomain(other));
        }
    }
    Ok(bundle)
}

/// A trust domain other than `expected` that `cert` names in a `spiffe://` URI SAN (an
/// unparsable `spiffe://` URI counts as another). CA certificates without one are fine.
/// Not [`lanyard_svid::bundle::trust_domain_of`], which guesses a bundle file's one trust
/// domain and skips an unparsable `spiffe://` URI; here the domain is known and such a URI
/// refuses the document.
fn other_trust_domain(expected: &TrustDomain, cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok().flatten()?;
    san.value.general_names.iter().find_map(|name| {
        let GeneralName::URI(uri) = name else {
            return None;
        };
        if !uri
            .get(..9)
            .is_some_and(|s| s.eq_ignore_ascii_case("spiffe://"))
        {
            return None;
        }
        match lanyard_svid::SpiffeId::parse(uri) {
            Ok(id) if id.trust_domain() == expected => None,
            Ok(id) => Some(id.trust_domain().to_string()),
            Err(_) => Some(format!("{uri:?} (not a valid SPIFFE ID)")),
        }
    })
}

/// The Web PKI client config of `https_web`: `ca_roots` (DER) or the system's roots.
fn web_client_config(ca_roots: Option<&[Vec<u8>]>) -> Result<ClientConfig, FetchError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_roots {
        Some(certs) => {
            for cert in certs {
                roots
                    .add(CertificateDer::from(cert.clone()))
                    .map_err(|e| FetchError::Config(format!("CA root: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "reading the system's CA roots");
            }
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(FetchError::Config(
                    "no system CA roots found for https_web; give ca_file (caBundle)".into(),
                ));
            }
        }
    }
    ClientConfig::builder_with_provider(lanyard_svid::verify::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Config(e.to_string()))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    fn root(name: &str) -> CertificateDer<'static> {
        lanyard_svid::ca::RootCa::generate(&td(name), Duration::from_secs(3600), SystemTime::now())
            .unwrap()
            .cert_der()
            .clone()
    }

    #[test]
    fn urls_split_into_host_port_and_path() {
        let u = EndpointUrl::parse("https://bundles.example:8443").unwrap();
        assert_eq!(
            (
                u.host.as_str(),
                u.port,
                u.authority.as_str(),
                u.path.as_str()
            ),
            ("bundles.example", 8443, "bundles.example:8443", "/")
        );
        let u = EndpointUrl::parse("https://[::1]/td/bundle").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 443, "/td/bundle")
        );
        for bad in ["http://x", "https://", "https://u@x/", "not a url"] {
            assert!(EndpointUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn documents_are_checked_for_their_trust_domain_and_authorities() {
        let b = td("b.test");
        let good = TrustBundle::from_x509_authorities(b.clone(), [root("b.test")]);
        let parsed = check_document(&b, good.to_jwks().unwrap().as_bytes()).unwrap();
        assert_eq!(parsed.x509_authorities(), good.x509_authorities());

        let other = TrustBundle::from_x509_authorities(b.clone(), [root("b.test"), root("c.test")]);
        let err = check_document(&b, other.to_jwks().unwrap().as_bytes()).unwrap_err();
        assert_eq!(err, FetchError::WrongTrustDomain("c.test".into()));
        assert_eq!(err.outcome().to_string(), "wrong_trust_domain");

        let empty = TrustBundle::new(b.clone());
        let err = check_document(&b, empty.to_jwks().unwrap().as_bytes()).unwrap_err();
        assert_eq!(err.outcome(), FetchOutcome::NoX509Authority);

        let err = check_document(&b, b"<html>").unwrap_err();
        assert_eq!(err.outcome().to_string(), "malformed");
        let err = check_document(&b, &vec![b' '; MAX_DOCUMENT_LEN + 1]).unwrap_err();
        assert_eq!(err.outcome().to_string(), "too_large");
    }

    #[tokio::test]
    async fn bodies_are_refused_past_the_bound_without_reading_on() {
        use futures::StreamExt;
        use http_body_util::StreamBody;
        use hyper::body::Frame;
        // An endless body: reading it whole would never end.
        let chunks = futures::stream::repeat_with(|| {
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![b'x'; 4096])))
        });
        let body = StreamBody::new(chunks.boxed());
        let err = read_bounded(body, 64 * 1024).await.unwrap_err();
        assert_eq!(err, FetchError::TooLarge);
        let small = StreamBody::new(
            futures::stream::iter([Ok::<_, std::convert::Infallible>(Frame::data(
                Bytes::from_static(b"{}"),
            ))])
            .boxed(),
        );
        assert_eq!(read_bounded(small, 2).await.unwrap(), b"{}");
    }

    #[tokio::test]
    async fn https_spiffe_without_a_bundle_does_not_connect() {
        let domain = FederatedDomain {
            trust_domain: td("b.test"),
            // Nothing listens there: a connection attempt would be `unreachable`.
            bundle_endpoint_url: "https://127.0.0.1:1".into(),
            profile: EndpointProfile::HttpsSpiffe {
                endpoint_spiffe_id: lanyard_svid::SpiffeId::parse("spiffe://b.test/x").unwrap(),
                bootstrap: None,
            },
            source: "test".into(),
        };
        let fetcher = Fetcher::new(&domain).unwrap();
        assert_eq!(
            fetcher.fetch(None).await.unwrap_err(),
            FetchError::NoBundleToVerify
        );
    }
}
