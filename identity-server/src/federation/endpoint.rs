//! This trust domain's SPIFFE bundle endpoint (`--bundle-endpoint`): `GET /` answers the
//! current bundle as a SPIFFE bundle document (`application/json`: `x509-svid` and `jwt-svid`
//! keys, `spiffe_sequence`, `spiffe_refresh_hint`).
//!
//! - `https_spiffe`: the server's own SVID is presented, read from its store at every
//!   handshake (so a rotation applies at once); no client certificate is asked for.
//! - `https_web`: the `--bundle-endpoint-cert` chain and `--bundle-endpoint-key` (refused when
//!   readable by group or others), read again when either file changes.
//!
//! Served by [`crate::document_listener`] (its limits, refusals and certificate reloading);
//! only `GET /` answers, with `Cache-Control: no-store`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::body::Incoming;
use lanyard_svid::tls::{CurrentSvid, SvidStore};
use rustls::ServerConfig;
use rustls::server::ResolvesServerCert;
use tokio::net::TcpListener;

use super::{BundleEndpointSettings, FederationError, ServedProfile};
use crate::authority::Authority;
use crate::document_listener::{self, Limits, PemCert};

/// The `spiffe_refresh_hint` served when the bundle carries none.
pub const DEFAULT_REFRESH_HINT: Duration = Duration::from_secs(300);

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
    Ok(tokio::spawn(document_listener::serve(
        "bundle-endpoint",
        listener,
        Some(tokio_rustls::TlsAcceptor::from(tls)),
        Limits::default(),
        move |request| answer(&authority, request),
    )))
}

fn profile_name(profile: &ServedProfile) -> &'static str {
    match profile {
        ServedProfile::HttpsSpiffe => lanyard_registration::federation::PROFILE_HTTPS_SPIFFE,
        ServedProfile::HttpsWeb { .. } => lanyard_registration::federation::PROFILE_HTTPS_WEB,
    }
}

/// The endpoint's TLS server config ([`document_listener::tls_server_config`]): the server's SVID or the
/// `https_web` PEM pair.
pub fn tls_config(
    profile: &ServedProfile,
    server_svid: Arc<SvidStore>,
) -> Result<ServerConfig, FederationError> {
    let resolver: Arc<dyn ResolvesServerCert> = match profile {
        ServedProfile::HttpsSpiffe => Arc::new(CurrentSvid(server_svid)),
        ServedProfile::HttpsWeb {
            cert_file,
            key_file,
        } => Arc::new(
            PemCert::load(cert_file.clone(), key_file.clone(), "bundle-endpoint").map_err(|e| {
                FederationError::Certificate {
                    path: e.path,
                    reason: e.problem.to_string(),
                }
            })?,
        ),
    };
    document_listener::tls_server_config(resolver).map_err(|e| FederationError::Tls(e.to_string()))
}

/// The response to one request.
fn answer(authority: &Authority, request: &http::Request<Incoming>) -> Response<Full<Bytes>> {
    if !document_listener::is_read_only(request.method()) {
        return document_listener::method_not_allowed();
    }
    if request.uri().path() != "/" {
        return document_listener::not_found("the bundle is at /\n");
    }
    match document(authority) {
        Some(document) => document_listener::json(Bytes::from(document), "no-store"),
        None => document_listener::ca_not_loaded(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

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
