//! OIDC discovery for JWT-SVIDs: `/.well-known/openid-configuration` and the JWK Set it points
//! to (`jwks_uri`), so relying parties that speak OIDC (cloud IAM, Vault) verify JWT-SVIDs
//! from the issuer URL alone. The keys are the trust bundle's JWT authorities, so they follow
//! every JWT key rotation (a retired key stays published until the tokens it signed expire).

use std::net::SocketAddr;
use std::path::PathBuf;

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
    #[error("cannot listen on {addr} (--oidc-listen): {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Serves the discovery document and JWKS of `authority`'s bundle on `settings.listen`,
/// announced to `on_listening` as `"oidc"`.
pub async fn start(
    settings: &OidcSettings,
    authority: std::sync::Arc<crate::authority::Authority>,
    on_listening: &impl Fn(&'static str, SocketAddr),
) -> Result<tokio::task::JoinHandle<()>, OidcError> {
    // Filled in by the OIDC work.
    let _ = (settings, authority, on_listening);
    Ok(tokio::spawn(async {}))
}
