//! OIDC discovery for JWT-SVIDs: `/.well-known/openid-configuration` and the JWK Set it points
//! to (`jwks_uri`), so relying parties that speak OIDC (cloud IAM, Vault) verify JWT-SVIDs
//! from the issuer URL alone. The keys are the trust bundle's JWT authorities, so they follow
//! every JWT key rotation (a retired key stays published until the tokens it signed expire).
//!
//! Served (under the issuer's own path, if it has one):
//! - `/.well-known/openid-configuration`: `issuer`, `jwks_uri` (`<issuer>/keys`),
//!   `authorization_endpoint` (empty: there is none), `response_types_supported: ["id_token"]`,
//!   `subject_types_supported: ["public"]`, `id_token_signing_alg_values_supported` (ES256,
//!   which Lanyard signs with, and the algorithms of any other published key), as SPIRE's
//!   OIDC discovery provider serves it;
//! - `/keys`: the JWT authorities as a plain JWK Set (`kid`, `use: "sig"`, `alg`; see
//!   [`lanyard_svid::TrustBundle::to_oidc_jwks`]).
//!
//! Documents are encoded once per bundle (read from the authority's bundle watch at each
//! request, so a rotation shows at once). Served by [`crate::document_listener`]: GET and HEAD
//! only, HTTP/1.1, its limits; over HTTPS its [`PemCert`] reads the certificate and key again
//! when either file changes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use lanyard_svid::TrustBundle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::authority::Authority;
use crate::document_listener::{self, Limits, PemCert, PemCertError};

/// `Cache-Control` of the discovery document: it changes only with the algorithms in use.
const DISCOVERY_CACHE_CONTROL: &str = "public, max-age=3600";
/// `Cache-Control` of the JWK Set: short, so a relying party that caches it and does not
/// refetch on an unknown `kid` still sees a new key soon after a rotation.
const KEYS_CACHE_CONTROL: &str = "public, max-age=60";
/// The discovery path, appended to the issuer's path.
const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// The JWK Set's path, appended to the issuer's path.
const KEYS_PATH: &str = "/keys";
/// What Lanyard signs JWT-SVIDs with, always listed.
const SIGNING_ALGORITHM: &str = "ES256";

/// `--oidc-listen` and what goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcSettings {
    pub listen: SocketAddr,
    /// `--jwt-issuer`: the discovery document's `issuer`, and the `iss` of every JWT-SVID.
    pub issuer: String,
    pub transport: OidcTransport,
}

/// How the discovery listener serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OidcTransport {
    /// HTTPS with `--oidc-cert` and `--oidc-key` (PEM; a Web PKI certificate for the issuer's
    /// host, as relying parties require).
    Https {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
    /// `--oidc-insecure-http`: plain HTTP, for a TLS-terminating ingress in front.
    InsecureHttp,
}

/// Why OIDC discovery could not start.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// A file of the pair: unreadable, not PEM, the key readable by others or not the
    /// certificate's.
    #[error("--oidc-cert/--oidc-key {0}")]
    Certificate(#[from] PemCertError),
    #[error("--oidc-cert and --oidc-key: {0}")]
    Tls(String),
}

/// Serves the discovery document and JWKS of `authority`'s bundle on `listener` (bound by
/// `run` with the other listeners, before anything is written), announced to `on_listening`
/// as `"oidc"`.
pub async fn start(
    settings: &OidcSettings,
    listener: TcpListener,
    authority: std::sync::Arc<crate::authority::Authority>,
    on_listening: &impl Fn(&'static str, SocketAddr),
) -> Result<tokio::task::JoinHandle<()>, OidcError> {
    let tls = match &settings.transport {
        OidcTransport::Https {
            cert_file,
            key_file,
        } => Some(TlsAcceptor::from(Arc::new(tls_config(
            cert_file.clone(),
            key_file.clone(),
        )?))),
        OidcTransport::InsecureHttp => None,
    };
    let documents = Documents::new(&settings.issuer, &authority);
    on_listening("oidc", listener.local_addr().unwrap_or(settings.listen));
    Ok(tokio::spawn(document_listener::serve(
        "oidc",
        listener,
        tls,
        Limits::default(),
        move |request| documents.respond(request),
    )))
}

/// The listener's TLS: the `--oidc-cert` chain and `--oidc-key`, reloaded when they change.
fn tls_config(cert_file: PathBuf, key_file: PathBuf) -> Result<rustls::ServerConfig, OidcError> {
    let resolver = PemCert::load(cert_file, key_file, "oidc")?;
    document_listener::tls_server_config(Arc::new(resolver))
        .map_err(|e| OidcError::Tls(e.to_string()))
}

/// The documents of one bundle, encoded.
struct Encoded {
    discovery: Bytes,
    /// `Err` when a key cannot be written as a JWK (then `/keys` answers 500, not a partial
    /// set).
    keys: Result<Bytes, String>,
}

/// What the listener serves, following the authority's bundle.
struct Documents {
    issuer: String,
    jwks_uri: String,
    discovery_path: String,
    keys_path: String,
    bundles: watch::Receiver<Option<Arc<TrustBundle>>>,
    /// The last bundle encoded, and its documents.
    cache: Mutex<Option<(Arc<TrustBundle>, Arc<Encoded>)>>,
}

impl Documents {
    fn new(issuer: &str, authority: &Authority) -> Self {
        // The issuer is checked (https, a host, no query, fragment or trailing '/'), so its
        // path is what follows the host.
        let after_scheme = issuer.split_once("://").map_or(issuer, |(_, rest)| rest);
        let prefix = after_scheme.find('/').map_or("", |i| &after_scheme[i..]);
        Self {
            issuer: issuer.to_owned(),
            jwks_uri: format!("{issuer}{KEYS_PATH}"),
            discovery_path: format!("{prefix}{DISCOVERY_PATH}"),
            keys_path: format!("{prefix}{KEYS_PATH}"),
            bundles: authority.subscribe_bundle(),
            cache: Mutex::new(None),
        }
    }

    /// The documents of the current bundle; `None` before the CA is loaded.
    fn current(&self) -> Option<Arc<Encoded>> {
        let bundle = self.bundles.borrow().clone()?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cached, encoded)) = cache.as_ref()
            && Arc::ptr_eq(cached, &bundle)
        {
            return Some(encoded.clone());
        }
        let encoded = Arc::new(self.encode(&bundle));
        *cache = Some((bundle, encoded.clone()));
        Some(encoded)
    }

    fn encode(&self, bundle: &TrustBundle) -> Encoded {
        let mut algorithms = vec![SIGNING_ALGORITHM];
        for algorithm in bundle.jwt_algorithms() {
            if !algorithms.contains(&algorithm) {
                algorithms.push(algorithm);
            }
        }
        let discovery = serde_json::json!({
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            // Required by OIDC Discovery; there is no authorization flow, only ID-token-like
            // JWT-SVIDs (SPIRE's provider serves the same).
            "authorization_endpoint": "",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": algorithms,
        });
        let keys = bundle.to_oidc_jwks().map(Bytes::from).map_err(|e| {
            tracing::error!(error = %e, "the JWT keys cannot be served as a JWK Set");
            e.to_string()
        });
        Encoded {
            discovery: Bytes::from(discovery.to_string()),
            keys,
        }
    }

    fn respond<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        let document = if path == self.discovery_path {
            Document::Discovery
        } else if path == self.keys_path {
            Document::Keys
        } else {
            return document_listener::not_found("not found\n");
        };
        if !document_listener::is_read_only(request.method()) {
            return document_listener::method_not_allowed();
        }
        let Some(encoded) = self.current() else {
            return document_listener::ca_not_loaded();
        };
        let (body, cache_control) = match document {
            Document::Discovery => (encoded.discovery.clone(), DISCOVERY_CACHE_CONTROL),
            Document::Keys => match &encoded.keys {
                Ok(keys) => (keys.clone(), KEYS_CACHE_CONTROL),
                Err(_) => {
                    return document_listener::plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "a JWT key cannot be written as a JWK; see the server's log\n",
                    );
                }
            },
        };
        document_listener::json(body, cache_control)
    }
}

/// Which document a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Document {
    Discovery,
    Keys,
}

impl std::fmt::Display for Document {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Discovery => "discovery",
            Self::Keys => "keys",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;
    use lanyard_svid::TrustDomain;
    use lanyard_svid::ca::RootCa;
    use lanyard_svid::jwt::JwtSigner;
    use std::time::{Duration, SystemTime};

    fn authority() -> Arc<Authority> {
        let td = TrustDomain::new("example.org").unwrap();
        let now = SystemTime::now();
        let root = RootCa::generate(&td, Duration::from_secs(86_400), now).unwrap();
        let authority = Arc::new(Authority::new(td));
        authority
            .install(
                crate::authority::SigningMaterial {
                    issuer: root
                        .issue_intermediate(Duration::from_secs(86_400), now)
                        .unwrap(),
                    roots: vec![root.cert_der().clone()],
                    jwt: JwtSigner::generate().unwrap().0,
                    published_jwt: Vec::new(),
                },
                now,
            )
            .unwrap();
        authority
    }

    fn get(documents: &Documents, method: Method, path: &str) -> Response<Full<Bytes>> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        documents.respond(&request)
    }

    #[test]
    fn an_issuer_with_a_path_serves_under_it() {
        let authority = authority();
        let documents = Documents::new("https://auth.example.org/lanyard/prod", &authority);
        assert_eq!(
            documents.discovery_path,
            "/lanyard/prod/.well-known/openid-configuration"
        );
        assert_eq!(
            documents.jwks_uri,
            "https://auth.example.org/lanyard/prod/keys"
        );
        assert_eq!(
            get(&documents, Method::GET, "/lanyard/prod/keys").status(),
            StatusCode::OK
        );
        assert_eq!(
            get(&documents, Method::GET, "/keys").status(),
            StatusCode::NOT_FOUND
        );
        let plain = Documents::new("https://auth.example.org", &authority);
        assert_eq!(plain.discovery_path, DISCOVERY_PATH);
        assert_eq!(plain.keys_path, KEYS_PATH);
    }

    #[test]
    fn documents_follow_the_bundle_and_are_encoded_once_per_bundle() {
        let authority = authority();
        let documents = Documents::new("https://auth.example.org", &authority);
        let first = documents.current().unwrap();
        assert!(Arc::ptr_eq(&first, &documents.current().unwrap()));
        let kid = authority.active().unwrap().jwt.key_id().to_owned();
        assert!(String::from_utf8_lossy(first.keys.as_ref().unwrap()).contains(&kid));
        // A JWT key rotation: the next request sees the new bundle.
        let active = authority.active().unwrap();
        authority
            .install(
                crate::authority::SigningMaterial {
                    issuer: lanyard_svid::Issuer::from_pem(
                        authority.trust_domain(),
                        &active.issuer.cert_chain_pem(),
                        &active.issuer.key_pem(),
                    )
                    .unwrap(),
                    roots: active.bundle.x509_authorities().to_vec(),
                    jwt: JwtSigner::generate().unwrap().0,
                    published_jwt: Vec::new(),
                },
                SystemTime::now(),
            )
            .unwrap();
        let second = documents.current().unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        let keys: serde_json::Value =
            serde_json::from_slice(second.keys.as_ref().unwrap()).unwrap();
        assert_eq!(keys["keys"].as_array().unwrap().len(), 2, "{keys}");
    }

    #[test]
    fn before_the_ca_is_loaded_both_documents_are_unavailable() {
        let authority = Authority::new(TrustDomain::new("example.org").unwrap());
        let documents = Documents::new("https://auth.example.org", &authority);
        for path in [DISCOVERY_PATH, KEYS_PATH] {
            assert_eq!(
                get(&documents, Method::GET, path).status(),
                StatusCode::SERVICE_UNAVAILABLE
            );
        }
    }

    #[test]
    fn a_group_readable_key_is_refused() {
        use lanyard_daemon::private_file::PrivateFileError;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let pair = rcgen::generate_simple_self_signed(vec!["oidc.example.org".into()]).unwrap();
        std::fs::write(&cert, pair.cert.pem()).unwrap();
        std::fs::write(&key, pair.signing_key.serialize_pem()).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = tls_config(cert.clone(), key.clone()).unwrap_err();
        assert!(
            matches!(
                &err,
                OidcError::Certificate(PemCertError {
                    problem: document_listener::PemProblem::KeyFile(PrivateFileError::Exposed {
                        mode: 0o640
                    }),
                    ..
                })
            ),
            "{err}"
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        tls_config(cert.clone(), key.clone()).expect("a private key file is accepted");
        // A certificate file holding no certificate.
        std::fs::write(&cert, "nothing here\n").unwrap();
        let err = tls_config(cert, key).unwrap_err();
        assert!(err.to_string().contains("no certificate"), "{err}");
    }
}
