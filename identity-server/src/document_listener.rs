//! Bounded serving of read-only documents over HTTP/1.1, through TLS or on plain TCP: what the
//! SPIFFE bundle endpoint ([`crate::federation::endpoint`]) and OIDC discovery
//! ([`crate::oidc`]) share. Each of them says which documents, at which paths, with which
//! headers, and which TLS; this module accepts, bounds and answers.
//!
//! - [`serve`]: the accept loop; [`Limits`] caps connections, the handshake's and the request
//!   head's time, the head's size and a connection's life; one request per connection.
//! - The answers every such listener gives: [`json`] for a document, and the plain-text
//!   refusals [`not_found`], [`method_not_allowed`] (only `GET` and `HEAD`, with `Allow`),
//!   [`ca_not_loaded`] (503 until the CA is loaded) and [`plain`].
//! - TLS: [`tls_server_config`] (no client authentication, no resumption, `http/1.1`) around a
//!   certificate resolver, such as [`PemCert`]: a PEM chain and key (the key file refused when
//!   group or others may read it), read again when either file changes.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use lanyard_daemon::private_file::{PrivateFileError, read_private};
use lanyard_svid::verify::crypto_provider;
use rustls::ServerConfig;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// Largest certificate chain file read.
const MAX_CERT_FILE: u64 = 1 << 20;
/// Largest key file read (the bundle endpoint's bound; OIDC allowed 1 MiB): a PEM key of any
/// algorithm rustls signs with is a few KiB.
const MAX_KEY_FILE: u64 = 64 * 1024;
/// How often a [`PemCert`]'s files are checked for a change, at most.
const PEM_CERT_RECHECK: Duration = Duration::from_secs(5);
/// After a failed `accept` (out of descriptors or buffers), a pause before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What a document listener allows. The defaults are the stricter of the two listeners'
/// earlier bounds: the bundle endpoint's 256 connections and 30 s connection life (OIDC had
/// 512 and 60 s plus a 5 s close grace), and OIDC's 8 KiB request head (the endpoint had
/// 16 KiB); both had 10 s for the handshake and for the head.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections; further ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// The TLS handshake must end within this.
    pub handshake_timeout: Duration,
    /// The request head must arrive within this.
    pub header_timeout: Duration,
    /// Largest request head, in bytes (hyper refuses less than 8192).
    pub max_header_bytes: usize,
    /// A connection is closed after this, whatever it is doing (handshake included).
    pub connection_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 8192,
            connection_lifetime: Duration::from_secs(30),
        }
    }
}

/// Serves `respond`'s answers on `listener` until aborted (aborting it closes every connection
/// too): through `tls` when given, else plain HTTP. `name` labels its logs.
///
/// One request per connection (OIDC allowed keep-alive before; the bundle endpoint did not):
/// the documents are small and fetched rarely, so no idle connection holds a slot.
pub async fn serve<F>(
    name: &'static str,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    respond: F,
) where
    F: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let respond = Arc::new(respond);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
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
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let (tls, limits, respond) = (tls.clone(), limits.clone(), respond.clone());
        connections.spawn(async move {
            let _slot = slot;
            let served = tokio::time::timeout(limits.connection_lifetime, async {
                match tls {
                    None => serve_connection(name, TokioIo::new(tcp), &limits, respond).await,
                    Some(acceptor) => {
                        let stream =
                            tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp))
                                .await
                                .map_err(|_| "TLS handshake timed out".to_owned())?
                                .map_err(|e| format!("TLS handshake: {e}"))?;
                        serve_connection(name, TokioIo::new(stream), &limits, respond).await
                    }
                }
            })
            .await;
            match served {
                Ok(Ok(())) => {}
                Ok(Err(why)) => tracing::debug!(listener = name, %peer, why, "connection failed"),
                Err(_) => {
                    tracing::debug!(listener = name, %peer, "connection closed at its lifetime")
                }
            }
        });
    }
}

/// One request on `io`, its head bounded in time and size.
async fn serve_connection<I, F>(
    name: &'static str,
    io: I,
    limits: &Limits,
    respond: Arc<F>,
) -> Result<(), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    F: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let response = respond(&request);
        tracing::debug!(
            listener = name,
            method = %request.method(),
            path = request.uri().path(),
            status = response.status().as_u16(),
            "document request"
        );
        async move { Ok::<_, Infallible>(response) }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(false)
        .serve_connection(io, service)
        .await
        .map_err(|e| format!("HTTP: {e}"))
}

/// Whether `method` reads: only `GET` and `HEAD` are answered.
pub fn is_read_only(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// A JSON document with `cache_control`. hyper leaves the body out of a `HEAD` answer and keeps
/// its `Content-Length`.
pub fn json(body: Bytes, cache_control: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static(cache_control),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    response
}

/// A plain-text answer.
pub fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// 404, with `text` saying where the documents are.
pub fn not_found(text: &'static str) -> Response<Full<Bytes>> {
    plain(StatusCode::NOT_FOUND, text)
}

/// 405 to anything but `GET` and `HEAD`, naming them in `Allow`.
pub fn method_not_allowed() -> Response<Full<Bytes>> {
    let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
    response
}

/// 503 before the CA is loaded: there is no bundle to serve yet.
pub fn ca_not_loaded() -> Response<Full<Bytes>> {
    plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "the CA is not loaded yet\n",
    )
}

/// A TLS server config presenting `resolver`'s certificate: no client authentication, no
/// session resumption (each connection is one small request), `http/1.1` only.
pub fn tls_server_config(
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Why a PEM certificate chain and key could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct PemCertError {
    /// The file at fault.
    pub path: PathBuf,
    pub problem: PemProblem,
}

/// What is wrong with one of a [`PemCert`]'s files.
#[derive(Debug, thiserror::Error)]
pub enum PemProblem {
    /// The key file: missing, unreadable, readable by group or others, or too large.
    #[error(transparent)]
    KeyFile(#[from] PrivateFileError),
    #[error("{0}")]
    CertFile(std::io::Error),
    #[error("larger than {0} bytes")]
    CertTooLarge(u64),
    #[error("not PEM certificates: {0}")]
    NotPemCertificates(String),
    #[error("holds no certificate (no CERTIFICATE block)")]
    NoCertificate,
    #[error("no PEM private key: {0}")]
    NotPemKey(String),
    #[error("unusable private key: {0}")]
    UnusableKey(String),
    #[error("does not match the first certificate of {cert_file}: {reason}")]
    KeyMismatch { cert_file: PathBuf, reason: String },
}

/// A certificate resolver presenting a PEM chain and key, both read again when either file
/// changes (looked at, at most every 5 s, at a handshake), so a renewed
/// certificate applies without a restart. A change that cannot be used is logged and the last
/// good pair kept.
#[derive(Debug)]
pub struct PemCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    /// Names the listener in logs.
    name: &'static str,
    recheck: Duration,
    loaded: Mutex<LoadedPemCert>,
}

#[derive(Debug)]
struct LoadedPemCert {
    key: Arc<CertifiedKey>,
    stamp: Option<[(SystemTime, u64); 2]>,
    checked: Instant,
}

impl PemCert {
    /// Reads both files now: a listener does not start without a usable pair.
    pub fn load(
        cert_file: PathBuf,
        key_file: PathBuf,
        name: &'static str,
    ) -> Result<Self, PemCertError> {
        Self::load_rechecking(cert_file, key_file, name, PEM_CERT_RECHECK)
    }

    fn load_rechecking(
        cert_file: PathBuf,
        key_file: PathBuf,
        name: &'static str,
        recheck: Duration,
    ) -> Result<Self, PemCertError> {
        let stamp = stamp(&cert_file, &key_file);
        let key = load_pem_cert(&cert_file, &key_file)?;
        Ok(Self {
            cert_file,
            key_file,
            name,
            recheck,
            loaded: Mutex::new(LoadedPemCert {
                key: Arc::new(key),
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// The pair to present now, read again first if a file changed.
    fn current(&self) -> Arc<CertifiedKey> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if loaded.checked.elapsed() >= self.recheck {
            loaded.checked = Instant::now();
            let now = stamp(&self.cert_file, &self.key_file);
            if now.is_some() && now != loaded.stamp {
                match load_pem_cert(&self.cert_file, &self.key_file) {
                    Ok(key) => {
                        tracing::info!(listener = self.name, cert = %self.cert_file.display(), "certificate reloaded");
                        loaded.key = Arc::new(key);
                        loaded.stamp = now;
                    }
                    // Keep serving the one that worked; say why the new one does not.
                    Err(e) => {
                        tracing::warn!(listener = self.name, error = %e, "certificate not reloaded")
                    }
                }
            }
        }
        loaded.key.clone()
    }
}

impl ResolvesServerCert for PemCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
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

/// A PEM chain and its key, checked to match; the key file must be private.
pub fn load_pem_cert(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, PemCertError> {
    let cert_err = |problem| PemCertError {
        path: cert_file.to_owned(),
        problem,
    };
    let key_err = |problem| PemCertError {
        path: key_file.to_owned(),
        problem,
    };
    let pem = read_cert_file(cert_file).map_err(cert_err)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(PemProblem::NotPemCertificates(e.to_string())))?;
    if chain.is_empty() {
        return Err(cert_err(PemProblem::NoCertificate));
    }
    let key_pem = read_private(key_file, MAX_KEY_FILE).map_err(|e| key_err(e.into()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| key_err(PemProblem::NotPemKey(e.to_string())))?;
    let key = crypto_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_err(PemProblem::UnusableKey(e.to_string())))?;
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        // A key whose public half rustls cannot extract is not known to mismatch.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => {
            return Err(key_err(PemProblem::KeyMismatch {
                cert_file: cert_file.to_owned(),
                reason: e.to_string(),
            }));
        }
    }
    Ok(certified)
}

/// A certificate file's bytes, at most [`MAX_CERT_FILE`]; it may be readable by anyone.
fn read_cert_file(path: &Path) -> Result<Vec<u8>, PemProblem> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_CERT_FILE + 1).read_to_end(&mut bytes))
        .map_err(PemProblem::CertFile)?;
    if bytes.len() as u64 > MAX_CERT_FILE {
        return Err(PemProblem::CertTooLarge(MAX_CERT_FILE));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const DEADLINE: Duration = Duration::from_secs(10);

    /// A self-signed pair for `host` written to `dir` (key 0600).
    fn pem_files(dir: &Path, host: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![host.into()])
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
    fn the_key_must_be_private_and_match_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = pem_files(dir.path(), "docs.test");
        load_pem_cert(&cert_file, &key_file).unwrap();

        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = load_pem_cert(&cert_file, &key_file).unwrap_err();
        assert!(
            matches!(
                err.problem,
                PemProblem::KeyFile(PrivateFileError::Exposed { mode: 0o640 })
            ),
            "{err}"
        );
        assert_eq!(err.path, key_file);
        let message = err.to_string();
        assert!(
            message.contains("readable by group or others") && message.contains("chmod 600"),
            "{message}"
        );
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();

        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        let (_, other_key) = pem_files(&other, "docs.test");
        let err = load_pem_cert(&cert_file, &other_key).unwrap_err();
        assert!(
            matches!(err.problem, PemProblem::KeyMismatch { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("does not match"), "{err}");

        // The key file given as the chain: no certificate in it.
        let err = load_pem_cert(&key_file, &other_key).unwrap_err();
        assert!(matches!(err.problem, PemProblem::NoCertificate), "{err}");
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
    }

    #[test]
    fn a_changed_pair_is_reloaded_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = pem_files(dir.path(), "docs.test");
        let pem_cert =
            PemCert::load_rechecking(cert_file.clone(), key_file.clone(), "test", Duration::ZERO)
                .unwrap();
        let first = pem_cert.current();
        assert!(Arc::ptr_eq(&first, &pem_cert.current()), "unchanged files");

        // Renewed: a new pair, stamped later than the first (the clock's tick may be coarse).
        let later = SystemTime::now() + Duration::from_secs(60);
        let renewed = dir.path().join("renewed");
        std::fs::create_dir(&renewed).unwrap();
        let (new_cert, new_key) = pem_files(&renewed, "docs.test");
        std::fs::rename(&new_cert, &cert_file).unwrap();
        std::fs::rename(&new_key, &key_file).unwrap();
        for file in [&cert_file, &key_file] {
            std::fs::File::options()
                .append(true)
                .open(file)
                .unwrap()
                .set_modified(later)
                .unwrap();
        }
        let second = pem_cert.current();
        assert_ne!(
            second.cert, first.cert,
            "the renewed certificate is presented"
        );

        // A broken change keeps the last good pair.
        std::fs::write(&cert_file, "not a certificate\n").unwrap();
        std::fs::File::options()
            .append(true)
            .open(&cert_file)
            .unwrap()
            .set_modified(later + Duration::from_secs(60))
            .unwrap();
        assert_eq!(pem_cert.current().cert, second.cert);
    }

    #[test]
    fn refusals_are_plain_text() {
        let response = method_not_allowed();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "GET, HEAD");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        assert_eq!(ca_not_loaded().status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(not_found("at /\n").status(), StatusCode::NOT_FOUND);
        assert!(is_read_only(&Method::HEAD) && is_read_only(&Method::GET));
        assert!(!is_read_only(&Method::POST));
        let document = json(Bytes::from_static(b"{}"), "no-store");
        assert_eq!(document.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(document.headers()[header::CONTENT_TYPE], "application/json");
    }

    async fn get(addr: std::net::SocketAddr) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        // Without `Connection: close` asked for, the server still closes after one answer.
        tokio::time::timeout(DEADLINE, stream.read_to_string(&mut answer))
            .await
            .expect("closed after one request")
            .unwrap();
        answer
    }

    #[tokio::test]
    async fn a_connection_is_closed_at_its_lifetime_freeing_its_slot() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            max_connections: 1,
            connection_lifetime: Duration::from_millis(300),
            ..Limits::default()
        };
        let server = tokio::spawn(serve("test", listener, None, limits, |_| {
            json(Bytes::from_static(b"{}"), "no-store")
        }));
        let answer = get(addr).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("{}"), "{answer}");

        // A silent connection takes the only slot; it is closed at its lifetime (well before
        // the 10 s head timeout), and the next connection is answered then.
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let waiting = tokio::spawn(get(addr));
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest))
            .await
            .expect("closed at its lifetime, not at the head timeout");
        assert!(read.is_ok_and(|n| n == 0), "closed without an answer");
        let answer = waiting.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        server.abort();
    }
}
