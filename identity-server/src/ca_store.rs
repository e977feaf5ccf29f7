//! Data-dir mode: the CA lives in `<data-dir>/ca/`, generated on first start and reused after.
//!
//! Files (all 0600, in a 0700 directory, each written atomically):
//! `root.crt`, `root.key`, `intermediate.crt`, `intermediate.key`, `jwt.key`, and `ca.json`,
//! a manifest naming the trust domain, written *last*. So:
//! - no `ca/` files at all: a first start, generate;
//! - some files but no manifest: a start that crashed half way, refuse (never guess);
//! - a manifest for another trust domain, a key that does not match its certificate, an
//!   intermediate not signed by the root, a key file readable by others: refuse.
//!
//! A refusal names the file and what to do; the server never silently makes a new root.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use lanyard_svid::TrustDomain;
use lanyard_svid::ca::{Issuer, RootCa};
use lanyard_svid::jwt::JwtSigner;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

use lanyard_daemon::private_file::{ensure_dir, mode_of, write_private_atomic};

/// Root lifetime in data-dir mode.
pub const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Intermediate lifetime in data-dir mode.
pub const INTERMEDIATE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

const ROOT_CRT: &str = "root.crt";
const ROOT_KEY: &str = "root.key";
const INTERMEDIATE_CRT: &str = "intermediate.crt";
const INTERMEDIATE_KEY: &str = "intermediate.key";
const JWT_KEY: &str = "jwt.key";
const MANIFEST: &str = "ca.json";
const ALL_FILES: [&str; 6] = [
    ROOT_CRT,
    ROOT_KEY,
    INTERMEDIATE_CRT,
    INTERMEDIATE_KEY,
    JWT_KEY,
    MANIFEST,
];

#[derive(Debug, thiserror::Error)]
pub enum CaStoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{dir} holds a half-written CA (no {MANIFEST}); it was never completed. Move the directory away to start a new CA, or restore it from a backup"
    )]
    HalfWritten { dir: PathBuf },
    #[error(
        "{dir} holds the CA of trust domain {found:?}, not {expected:?}; use the data dir of that trust domain"
    )]
    ForeignTrustDomain {
        dir: PathBuf,
        found: String,
        expected: String,
    },
    #[error("{path} is readable by others (mode {mode:o}); run `chmod 600` on it")]
    InsecureMode { path: PathBuf, mode: u32 },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    trust_domain: String,
    version: u32,
}

/// CA material of a data dir.
pub struct DataDirCa {
    pub root: RootCa,
    pub issuer: Issuer,
    pub jwt: JwtSigner,
}

impl DataDirCa {
    /// Loads the CA of `data_dir`, generating it if the directory holds none.
    pub fn load_or_create(
        data_dir: &Path,
        trust_domain: &TrustDomain,
        now: SystemTime,
    ) -> Result<Self, CaStoreError> {
        let dir = data_dir.join("ca");
        let present: Vec<&str> = ALL_FILES
            .iter()
            .copied()
            .filter(|f| dir.join(f).exists())
            .collect();
        if present.is_empty() {
            return Self::create(&dir, trust_domain, now);
        }
        if !present.contains(&MANIFEST) || present.len() != ALL_FILES.len() {
            return Err(CaStoreError::HalfWritten { dir });
        }
        Self::load(&dir, trust_domain, now)
    }

    fn create(dir: &Path, td: &TrustDomain, now: SystemTime) -> Result<Self, CaStoreError> {
        ensure_dir(dir, 0o700).map_err(|source| CaStoreError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let invalid = |what: &str, e: &dyn std::fmt::Display| CaStoreError::Invalid {
            path: dir.to_owned(),
            message: format!("generating {what}: {e}"),
        };
        let root = RootCa::generate(td, ROOT_TTL, now).map_err(|e| invalid("root", &e))?;
        let issuer = root
            .issue_intermediate(INTERMEDIATE_TTL, now)
            .map_err(|e| invalid("intermediate", &e))?;
        let (jwt, jwt_pkcs8) = JwtSigner::generate().map_err(|e| invalid("JWT key", &e))?;
        let jwt_pem = Zeroizing::new(pem_encode("PRIVATE KEY", &jwt_pkcs8));
        let manifest = serde_json::to_vec_pretty(&Manifest {
            trust_domain: td.to_string(),
            version: 1,
        })
        .expect("manifest serialises");
        let (root_crt, root_key) = (root.cert_pem(), root.key_pem());
        let (intermediate_crt, intermediate_key) = (issuer.cert_chain_pem(), issuer.key_pem());
        let files: [(&str, &[u8]); 6] = [
            (ROOT_CRT, root_crt.as_bytes()),
            (ROOT_KEY, root_key.as_bytes()),
            (INTERMEDIATE_CRT, intermediate_crt.as_bytes()),
            (INTERMEDIATE_KEY, intermediate_key.as_bytes()),
            (JWT_KEY, jwt_pem.as_bytes()),
            // Last: its presence means every other file is complete.
            (MANIFEST, &manifest),
        ];
        for (name, contents) in files {
            let path = dir.join(name);
            write_private_atomic(&path, contents)
                .map_err(|source| CaStoreError::Io { path, source })?;
        }
        tracing::info!(trust_domain = %td, dir = %dir.display(), "generated a new root and intermediate CA");
        Ok(Self { root, issuer, jwt })
    }

    fn load(dir: &Path, td: &TrustDomain, now: SystemTime) -> Result<Self, CaStoreError> {
        let read = |name: &str| -> Result<Zeroizing<String>, CaStoreError> {
            let path = dir.join(name);
            let mode = mode_of(&path).map_err(|source| CaStoreError::Io {
                path: path.clone(),
                source,
            })?;
            if mode & 0o077 != 0 {
                return Err(CaStoreError::InsecureMode { path, mode });
            }
            std::fs::read_to_string(&path)
                .map(Zeroizing::new)
                .map_err(|source| CaStoreError::Io { path, source })
        };
        let invalid = |name: &str, message: String| CaStoreError::Invalid {
            path: dir.join(name),
            message,
        };
        let manifest: Manifest =
            serde_json::from_str(&read(MANIFEST)?).map_err(|e| invalid(MANIFEST, e.to_string()))?;
        if manifest.trust_domain != td.name() {
            return Err(CaStoreError::ForeignTrustDomain {
                dir: dir.to_owned(),
                found: manifest.trust_domain,
                expected: td.to_string(),
            });
        }
        let root = RootCa::from_pem(td, &read(ROOT_CRT)?, &read(ROOT_KEY)?)
            .map_err(|e| invalid(ROOT_CRT, e.message()))?;
        let issuer =
            Issuer::from_pem_at(td, &read(INTERMEDIATE_CRT)?, &read(INTERMEDIATE_KEY)?, now)
                .map_err(|e| invalid(INTERMEDIATE_CRT, e.message()))?;
        check_signed_by(issuer.cert_der(), root.cert_der())
            .map_err(|m| invalid(INTERMEDIATE_CRT, m))?;
        let jwt_pem = read(JWT_KEY)?;
        let jwt_der = pem_decode_private_key(&jwt_pem)
            .ok_or_else(|| invalid(JWT_KEY, "not a PEM private key".into()))?;
        let jwt = JwtSigner::from_pkcs8(&jwt_der).map_err(|e| invalid(JWT_KEY, e.to_string()))?;
        Ok(Self { root, issuer, jwt })
    }
}

/// Checks that `cert` was signed by `issuer`'s key, so a data dir mixing two CAs is refused.
fn check_signed_by(cert: &CertificateDer<'_>, issuer: &CertificateDer<'_>) -> Result<(), String> {
    let (_, cert) = X509Certificate::from_der(cert).map_err(|e| e.to_string())?;
    let (_, issuer) = X509Certificate::from_der(issuer).map_err(|e| e.to_string())?;
    cert.verify_signature(Some(issuer.public_key()))
        .map_err(|_| {
            "the intermediate was not signed by root.crt (files from two different CAs?)".to_owned()
        })
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn pem_decode_private_key(pem: &str) -> Option<Zeroizing<Vec<u8>>> {
    use rustls_pki_types::PrivatePkcs8KeyDer;
    use rustls_pki_types::pem::PemObject;
    let key = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).ok()?;
    Some(Zeroizing::new(key.secret_pkcs8_der().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    #[test]
    fn first_start_generates_then_restart_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let first = DataDirCa::load_or_create(dir.path(), &td("example.org"), now).unwrap();
        for f in ALL_FILES {
            assert_eq!(
                mode_of(&dir.path().join("ca").join(f)).unwrap(),
                0o600,
                "{f}"
            );
        }
        assert_eq!(mode_of(&dir.path().join("ca")).unwrap(), 0o700);
        let second = DataDirCa::load_or_create(dir.path(), &td("example.org"), now).unwrap();
        assert_eq!(first.root.cert_der(), second.root.cert_der());
        assert_eq!(first.issuer.cert_der(), second.issuer.cert_der());
        assert_eq!(first.jwt.key_id(), second.jwt.key_id());
    }

    #[test]
    fn half_written_ca_refuses() {
        let dir = tempfile::tempdir().unwrap();
        DataDirCa::load_or_create(dir.path(), &td("example.org"), SystemTime::now()).unwrap();
        std::fs::remove_file(dir.path().join("ca").join(MANIFEST)).unwrap();
        let err = DataDirCa::load_or_create(dir.path(), &td("example.org"), SystemTime::now())
            .err()
            .unwrap();
        assert!(matches!(err, CaStoreError::HalfWritten { .. }), "{err}");
    }

    #[test]
    fn foreign_trust_domain_refuses() {
        let dir = tempfile::tempdir().unwrap();
        DataDirCa::load_or_create(dir.path(), &td("example.org"), SystemTime::now()).unwrap();
        let err = DataDirCa::load_or_create(dir.path(), &td("other.org"), SystemTime::now())
            .err()
            .unwrap();
        assert!(
            matches!(err, CaStoreError::ForeignTrustDomain { .. }),
            "{err}"
        );
    }

    #[test]
    fn mixed_cas_refuse() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        DataDirCa::load_or_create(a.path(), &td("example.org"), now).unwrap();
        DataDirCa::load_or_create(b.path(), &td("example.org"), now).unwrap();
        for f in [INTERMEDIATE_CRT, INTERMEDIATE_KEY] {
            std::fs::copy(b.path().join("ca").join(f), a.path().join("ca").join(f)).unwrap();
        }
        let err = DataDirCa::load_or_create(a.path(), &td("example.org"), now)
            .err()
            .unwrap();
        assert!(err.to_string().contains("not signed by root.crt"), "{err}");
        // A key that does not match its certificate.
        std::fs::copy(
            b.path().join("ca").join(ROOT_KEY),
            a.path().join("ca").join(ROOT_KEY),
        )
        .unwrap();
        assert!(DataDirCa::load_or_create(a.path(), &td("example.org"), now).is_err());
    }

    #[test]
    fn key_readable_by_others_refuses() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        DataDirCa::load_or_create(dir.path(), &td("example.org"), SystemTime::now()).unwrap();
        let key = dir.path().join("ca").join(ROOT_KEY);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = DataDirCa::load_or_create(dir.path(), &td("example.org"), SystemTime::now())
            .err()
            .unwrap();
        assert!(matches!(err, CaStoreError::InsecureMode { .. }), "{err}");
    }
}
