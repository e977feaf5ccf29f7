//! This trust domain's SPIFFE bundle endpoint (`--bundle-endpoint`): `GET /` answers the
//! current bundle as a SPIFFE bundle document (`application/json`: `x509-svid` and `jwt-svid`
//! keys, `spiffe_sequence`, `spiffe_refresh_hint`).
//!
//! - `https_spiffe`: the server's own SVID is presented, read from its store at every
//!   handshake (so a rotation applies at once); no client certificate is asked for.
//! - `https_web`: the `--bundle-endpoint-cert` chain and `--bundle-endpoint-key` (refused when
//!   readable by group or others), read again when either file changes.
//!
//! Bounded: [`Limits`] caps connections, the handshake's and the request head's time, the head's
//! size and a connection's life; one request per connection; only `GET` and `HEAD`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use lanyard_svid::tls::{CurrentSvid, SvidStore};
use lanyard_svid::verify::crypto_provider;
use rustls::ServerConfig;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use zeroize::Zeroizing;

use super::{BundleEndpointSettings, FederationError, ServedProfile};
use crate::authority::Authority;

/// The `spiffe_refresh_hint` served when the bundle carries none.
pub const DEFAULT_REFRESH_HINT: Duration = Duration::from_secs(300);
/// Largest certificate chain file read.
const MAX_CERT_FILE: u64 = 1 << 20;
/// Largest key file read.
const MAX_KEY_FILE: u64 = 64 * 1024;
/// How often the `https_web` files are checked for a change, at most.
const WEB_CERT_RECHECK: Duration = Duration::from_secs(5);

/// What the bundle endpoint allows.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections; further ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// The TLS handshake must end within this.
    pub handshake_timeout: Duration,
    /// The request head must arrive within this.
    pub header_timeout: Duration,
    /// Largest request head, in bytes.
    pub max_header_bytes: usize,
    /// A connection is closed after this, whatever it is doing.
    pub connection_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            connection_lifetime: Duration::from_secs(30),
        }
    }
}

/// Serves on `listener` (bound by `run` with the other listeners, before anything is
/// written), announced as `"bundle-endpoint"`, until aborted.
pub async fn start(
    settings: &BundleEndpointSettings,
    listener: TcpListener,
    authority: Arc<Authority>,
    server_svid: Arc<SvidStore>,
    on_listening: &impl Fn(&'static str, SocketAddr),
) -> Result<tokio::task::JoinHandle<()>, FederationError> {
    let tls = Arc::new(tls_config(&settings.profile, server_svid)?);
    let addr = listener.local_addr().unwrap_or(settings.listen);
    on_listening("bundle-endpoint", addr);
    tracing::info!(%addr, profile = profile_name(&settings.profile), "serving the SPIFFE bundle endpoint");
    Ok(tokio::spawn(serve(
        listener,
        tls,
        authority,
        Limits::default(),
    )))
}

fn profile_name(profile: &ServedProfile) -> &'static str {
    match profile {
        ServedProfile::HttpsSpiffe => lanyard_registration::federation::PROFILE_HTTPS_SPIFFE,
        ServedProfile::HttpsWeb { .. } => lanyard_registration::federation::PROFILE_HTTPS_WEB,
    }
}

/// The endpoint's TLS server config: no client authentication, no resumption.
pub fn tls_config(
    profile: &ServedProfile,
    server_svid: Arc<SvidStore>,
) -> Result<ServerConfig, FederationError> {
    let resolver: Arc<dyn ResolvesServerCert> = match profile {
        ServedProfile::HttpsSpiffe => Arc::new(CurrentSvid(server_svid)),
        ServedProfile::HttpsWeb {
            cert_file,
            key_file,
        } => Arc::new(WebCert::load(cert_file.clone(), key_file.clone())?),
    };
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| FederationError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// Accepts connections until aborted; aborting it closes every connection too.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    authority: Arc<Authority>,
    limits: Limits,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    // Owns the connections: dropped with this task, they are aborted.
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors or buffers: give others a moment to close theirs.
                tracing::warn!(error = %e, "bundle endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let authority = authority.clone();
        let limits = limits.clone();
        connections.spawn(async move {
            let _slot = slot;
            let lifetime = limits.connection_lifetime;
            let served = tokio::time::timeout(lifetime, async {
                let tls = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp))
                    .await
                    .map_err(|_| "handshake timed out".to_owned())?
                    .map_err(|e| format!("handshake: {e}"))?;
                let service = hyper::service::service_fn(move |request| {
                    let authority = authority.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(&authority, &request)) }
                });
                hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_timeout)
                    .max_buf_size(limits.max_header_bytes)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(tls), service)
                    .await
                    .map_err(|e| format!("HTTP: {e}"))
            })
            .await;
            match served {
                Ok(Ok(())) => {}
                Ok(Err(why)) => tracing::debug!(%peer, why, "bundle endpoint connection failed"),
                Err(_) => {
                    tracing::debug!(%peer, "bundle endpoint connection closed at its lifetime")
                }
            }
        });
    }
}

/// The response to one request.
fn answer(authority: &Authority, request: &http::Request<Incoming>) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    if request.uri().path() != "/" {
        return plain(StatusCode::NOT_FOUND, "the bundle is at /\n");
    }
    let Some(document) = document(authority) else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the CA is not loaded yet\n",
        );
    };
    let len = document.len();
    let body = if request.method() == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(document)
    };
    let mut response = Response::new(Full::new(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// The bundle document served now, `None` before the CA is loaded.
pub fn document(authority: &Authority) -> Option<String> {
    let active = authority.active()?;
    let mut bundle = (*active.bundle).clone();
    if bundle.refresh_hint().is_none() {
        bundle.set_refresh_hint(Some(DEFAULT_REFRESH_HINT));
    }
    match bundle.to_jwks() {
        Ok(document) => Some(document),
        Err(e) => {
            tracing::error!(error = %e, "the bundle cannot be written as a bundle document");
            None
        }
    }
}

/// The `https_web` certificate and key, read again when either file changes.
#[derive(Debug)]
struct WebCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    loaded: Mutex<LoadedWebCert>,
}

#[derive(Debug)]
struct LoadedWebCert {
    key: Arc<CertifiedKey>,
    stamp: Option<[(SystemTime, u64); 2]>,
    checked: std::time::Instant,
}

impl WebCert {
    fn load(cert_file: PathBuf, key_file: PathBuf) -> Result<Self, FederationError> {
        let stamp = stamp(&cert_file, &key_file);
        let key = load_web_cert(&cert_file, &key_file)?;
        Ok(Self {
            cert_file,
            key_file,
            loaded: Mutex::new(LoadedWebCert {
                key: Arc::new(key),
                stamp,
                checked: std::time::Instant::now(),
            }),
        })
    }
}

/// Modification time and length of both files, to notice a change.
fn stamp(cert: &Path, key: &Path) -> Option<[(SystemTime, u64); 2]> {
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    Some([one(cert)?, one(key)?])
}

impl ResolvesServerCert for WebCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut loaded = self.loaded.lock().expect("web cert lock");
        if loaded.checked.elapsed() >= WEB_CERT_RECHECK {
            loaded.checked = std::time::Instant::now();
            let now = stamp(&self.cert_file, &self.key_file);
            if now.is_some() && now != loaded.stamp {
                match load_web_cert(&self.cert_file, &self.key_file) {
                    Ok(key) => {
                        tracing::info!(cert = %self.cert_file.display(), "bundle endpoint certificate reloaded");
                        loaded.key = Arc::new(key);
                        loaded.stamp = now;
                    }
                    // Keep serving the one that worked; say why the new one does not.
                    Err(e) => {
                        tracing::warn!(error = %e, "bundle endpoint certificate not reloaded")
                    }
                }
            }
        }
        Some(loaded.key.clone())
    }
}

/// The chain and key of `https_web`, checked to match.
fn load_web_cert(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, FederationError> {
    let cert_err = |reason: String| FederationError::Certificate {
        path: cert_file.to_owned(),
        reason,
    };
    let key_err = |reason: String| FederationError::Certificate {
        path: key_file.to_owned(),
        reason,
    };
    let pem = read_file(cert_file, MAX_CERT_FILE, false).map_err(cert_err)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(format!("not PEM certificates: {e}")))?;
    if chain.is_empty() {
        return Err(cert_err("no CERTIFICATE block".into()));
    }
    let key_pem = read_file(key_file, MAX_KEY_FILE, true).map_err(key_err)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| key_err(format!("no PEM private key: {e}")))?;
    let key = crypto_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_err(format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => {
            return Err(key_err(format!(
                "does not match the first certificate of {}: {e}",
                cert_file.display()
            )));
        }
    }
    Ok(certified)
}

/// A file's bytes, at most `max`; a `private` one is refused when group or others may read it.
fn read_file(path: &Path, max: u64, private: bool) -> Result<Zeroizing<Vec<u8>>, String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    // The mode of the file opened, not of whatever the path names a moment later.
    let meta = file.metadata().map_err(|e| e.to_string())?;
    let mode = meta.permissions().mode() & 0o777;
    if private && mode & 0o077 != 0 {
        return Err(format!(
            "readable by group or others (mode {mode:o}); a private key must be 0600 (chmod 600)"
        ));
    }
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > max {
        return Err(format!("larger than {max} bytes"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn web_files(dir: &Path) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["bundles.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_file = dir.join("tls.crt");
        let key_file = dir.join("tls.key");
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        (cert_file, key_file)
    }

    #[test]
    fn web_key_must_be_private_and_match() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = web_files(dir.path());
        load_web_cert(&cert_file, &key_file).unwrap();

        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = load_web_cert(&cert_file, &key_file)
            .unwrap_err()
            .to_string();
        assert!(err.contains("readable by group or others"), "{err}");

        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        let (_, other_key) = web_files(&other);
        let err = load_web_cert(&cert_file, &other_key)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not match"), "{err}");

        let err = load_web_cert(&key_file, &other_key)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no CERTIFICATE"), "{err}");
    }

    #[test]
    fn the_document_carries_a_refresh_hint() {
        let td = lanyard_svid::TrustDomain::new("a.test").unwrap();
        let authority = Authority::new(td.clone());
        assert!(document(&authority).is_none(), "no CA yet");
        let now = SystemTime::now();
        let root =
            lanyard_svid::ca::RootCa::generate(&td, Duration::from_secs(86_400), now).unwrap();
        let issuer = root
            .issue_intermediate(Duration::from_secs(3600), now)
            .unwrap();
        let (jwt, _) = lanyard_svid::jwt::JwtSigner::generate().unwrap();
        authority
            .install(
                crate::authority::SigningMaterial {
                    roots: vec![root.cert_der().clone()],
                    issuer,
                    jwt,
                    published_jwt: Vec::new(),
                },
                now,
            )
            .unwrap();
        let text = document(&authority).unwrap();
        let bundle = lanyard_svid::TrustBundle::from_jwks(td, text.as_bytes()).unwrap();
        assert!(bundle.refresh_hint().is_some());
        assert_eq!(bundle.x509_authorities(), [root.cert_der().clone()]);
        assert_eq!(bundle.jwt_authorities().len(), 1);
    }
}
