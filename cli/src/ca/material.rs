//! The CA's material as files and PEM, with no cluster in sight: reading and checking a root
//! (certificate file, key file), generating roots, intermediates and JWT keys, whether an
//! intermediate was signed by a root, and the CA Secret's contents ([`SecretData`]).
//!
//! Every certificate given on the command line is checked before anything is written: one
//! self-signed CA certificate, naming a SPIFFE trust domain, valid now; a key file must match
//! its certificate. Key material is read into buffers wiped on drop and never appears in an
//! error or a log line; a root key is written only to a new file, mode 0600.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use lanyard_ca_lifecycle::names::{SECRET_CERT_KEY, SECRET_JWT_KEY, SECRET_KEY_KEY};
use lanyard_ca_lifecycle::report::CertSummary;
use lanyard_ca_lifecycle::unix_seconds;
use lanyard_svid::TrustDomain;
use lanyard_svid::bundle::{certificate_fingerprint, certificates_from_pem, trust_domain_of};
use lanyard_svid::ca::{Issuer, RootCa};
use lanyard_svid::jwt::JwtSigner;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::{Zeroize, Zeroizing};

/// `lanyard ca new-root --ttl` and `lanyard install --root-ttl`.
pub const DEFAULT_ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// `--intermediate-ttl` and `issue-intermediate --ttl`.
pub const DEFAULT_INTERMEDIATE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// The largest certificate or key file read.
pub const MAX_FILE_BYTES: u64 = 64 * 1024;

/// Why material could not be read, checked, generated or written.
#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("writing {path}: {source} (the file must not exist yet)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A certificate or key that is not what it must be; `what` names the file or object.
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    #[error("generating {what}: {message}")]
    Generate { what: &'static str, message: String },
}

fn invalid(what: &str, message: impl Into<String>) -> MaterialError {
    MaterialError::Invalid {
        what: what.to_owned(),
        message: message.into(),
    }
}

/// Reads a file of at most [`MAX_FILE_BYTES`] as UTF-8, into a buffer wiped on drop.
pub fn read_small_file(path: &Path) -> Result<Zeroizing<String>, MaterialError> {
    let read = |source| MaterialError::Read {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Zeroizing::new(Vec::new());
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(read)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(MaterialError::TooLarge {
            path: path.to_owned(),
        });
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| invalid(&path.display().to_string(), "not UTF-8 PEM text"))?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// A root certificate, checked: one self-signed CA certificate naming a trust domain.
#[derive(Debug, Clone)]
pub struct RootCert {
    pub der: CertificateDer<'static>,
    pub trust_domain: TrustDomain,
    pub summary: CertSummary,
}

impl RootCert {
    /// Reads and checks a root certificate file, valid at `now`.
    pub fn read(path: &Path, now: SystemTime) -> Result<Self, MaterialError> {
        let pem = read_small_file(path)?;
        Self::from_pem(&path.display().to_string(), &pem, now)
    }

    /// Checks PEM text (`what` names it in errors).
    pub fn from_pem(what: &str, pem: &str, now: SystemTime) -> Result<Self, MaterialError> {
        let certs =
            certificates_from_pem(pem.as_bytes()).map_err(|e| invalid(what, e.to_string()))?;
        let [der] = <[CertificateDer<'static>; 1]>::try_from(certs).map_err(|certs| {
            invalid(
                what,
                format!(
                    "{} certificates; a root file holds exactly one",
                    certs.len()
                ),
            )
        })?;
        Self::from_der(what, der, now)
    }

    /// Checks one DER certificate.
    pub fn from_der(
        what: &str,
        der: CertificateDer<'static>,
        now: SystemTime,
    ) -> Result<Self, MaterialError> {
        let (_, cert) = X509Certificate::from_der(&der)
            .map_err(|e| invalid(what, format!("not X.509: {e}")))?;
        if cert.subject().as_raw() != cert.issuer().as_raw() || cert.verify_signature(None).is_err()
        {
            return Err(invalid(
                what,
                format!(
                    "{} is not a self-signed root (issued by {})",
                    cert.subject(),
                    cert.issuer()
                ),
            ));
        }
        let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        if !is_ca {
            return Err(invalid(
                what,
                format!(
                    "{} is not a CA certificate (basicConstraints cA is not true)",
                    cert.subject()
                ),
            ));
        }
        let trust_domain = trust_domain_of(std::slice::from_ref(&der))
            .map_err(|e| invalid(what, format!("no SPIFFE trust domain: {e}")))?;
        let summary = CertSummary::of(&der);
        check_valid(what, &cert, now)?;
        Ok(Self {
            der,
            trust_domain,
            summary,
        })
    }

    pub fn fingerprint(&self) -> &str {
        &self.summary.fingerprint
    }

    pub fn pem(&self) -> String {
        lanyard_svid::pem::encode_certificates(std::slice::from_ref(&self.der))
    }

    /// Refuses a root of another trust domain than `expected` (the bundle's).
    pub fn check_trust_domain(
        &self,
        what: &str,
        expected: &TrustDomain,
    ) -> Result<(), MaterialError> {
        if &self.trust_domain != expected {
            return Err(invalid(
                what,
                format!(
                    "the root is for trust domain {}, the cluster's bundle for {expected}",
                    self.trust_domain
                ),
            ));
        }
        Ok(())
    }
}

fn check_valid(
    what: &str,
    cert: &X509Certificate<'_>,
    now: SystemTime,
) -> Result<(), MaterialError> {
    let now = unix_seconds(now);
    if cert.validity().not_after.timestamp() <= now {
        return Err(invalid(
            what,
            format!(
                "{} expired at {}",
                cert.subject(),
                format_time(cert.validity().not_after.timestamp())
            ),
        ));
    }
    if cert.validity().not_before.timestamp() > now {
        return Err(invalid(
            what,
            format!(
                "{} is not valid before {}",
                cert.subject(),
                format_time(cert.validity().not_before.timestamp())
            ),
        ));
    }
    Ok(())
}

/// Unix seconds as RFC 3339 (UTC, whole seconds).
pub fn format_time(unix: i64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A root with its key, read from two files and checked: the certificate as [`RootCert`],
/// the key matching it. The key never leaves [`RootCa`] (wiped on drop, never printed).
#[derive(Debug)]
pub struct RootWithKey {
    pub cert: RootCert,
    pub ca: RootCa,
}

impl RootWithKey {
    pub fn read(cert_path: &Path, key_path: &Path, now: SystemTime) -> Result<Self, MaterialError> {
        let cert = RootCert::read(cert_path, now)?;
        let key = read_small_file(key_path)?;
        let ca = RootCa::from_pem(&cert.trust_domain, &cert.pem(), &key).map_err(|e| {
            invalid(
                &key_path.display().to_string(),
                format!("not the key of {}: {}", cert_path.display(), e.message()),
            )
        })?;
        Ok(Self { cert, ca })
    }

    /// A new signing intermediate under this root, valid from `now` for `ttl` (never past the
    /// root), as the Secret's `tls.crt` and `tls.key`.
    pub fn issue_intermediate(
        &self,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Issuer, MaterialError> {
        self.ca
            .issue_intermediate(ttl, now)
            .map_err(|e| MaterialError::Generate {
                what: "the intermediate",
                message: e.message(),
            })
    }
}

/// A new JWT-SVID signing key, PKCS#8 PEM, and its key ID.
pub fn new_jwt_key() -> Result<(Zeroizing<String>, String), MaterialError> {
    let (signer, pkcs8) = JwtSigner::generate().map_err(|e| MaterialError::Generate {
        what: "the JWT signing key",
        message: e.to_string(),
    })?;
    Ok((
        lanyard_svid::pem::encode_private_key(&pkcs8),
        signer.key_id().to_owned(),
    ))
}

/// The key ID a JWT key (PKCS#8 PEM) publishes under; `what` names it in errors.
pub fn jwt_key_id(what: &str, pem: &[u8]) -> Result<String, MaterialError> {
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem)
        .map_err(|_| invalid(what, "not a PKCS#8 PEM private key"))?;
    let signer =
        JwtSigner::from_pkcs8(der.secret_pkcs8_der()).map_err(|e| invalid(what, e.to_string()))?;
    Ok(signer.key_id().to_owned())
}

/// Whether `cert` carries a signature that verifies with `root`'s key (and names it as issuer).
pub fn issued_by(cert: &[u8], root: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, root))) = (
        X509Certificate::from_der(cert),
        X509Certificate::from_der(root),
    ) else {
        return false;
    };
    cert.issuer().as_raw() == root.subject().as_raw()
        && cert.verify_signature(Some(root.public_key())).is_ok()
}

/// The roots of a `bundle.pem` and the one trust domain they name.
pub fn bundle_roots(
    what: &str,
    pem: &str,
) -> Result<(Vec<CertificateDer<'static>>, TrustDomain), MaterialError> {
    let roots = certificates_from_pem(pem.as_bytes()).map_err(|e| invalid(what, e.to_string()))?;
    let td = trust_domain_of(&roots).map_err(|e| invalid(what, e))?;
    Ok((roots, td))
}

/// `bundle.pem` for these roots, in order.
pub fn bundle_pem(roots: &[CertificateDer<'_>]) -> String {
    lanyard_svid::pem::encode_certificates(roots)
}

/// The fingerprints of these roots.
pub fn fingerprints(roots: &[CertificateDer<'_>]) -> Vec<String> {
    roots.iter().map(|r| certificate_fingerprint(r)).collect()
}

/// The CA Secret's data, key by key (`tls.crt`, `tls.key`, `jwt.key`, and during a rotation
/// `jwt-next.key` or `jwt-previous.key`). Values are wiped on drop; `Debug` shows keys only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretData(pub BTreeMap<String, Vec<u8>>);

impl Drop for SecretData {
    fn drop(&mut self) {
        for value in self.0.values_mut() {
            value.zeroize();
        }
    }
}

impl std::fmt::Debug for SecretData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl SecretData {
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.0.get(key).map(Vec::as_slice)
    }

    pub fn set(&mut self, key: &str, value: &[u8]) {
        if let Some(mut old) = self.0.insert(key.to_owned(), value.to_vec()) {
            old.zeroize();
        }
    }

    pub fn remove(&mut self, key: &str) {
        if let Some(mut old) = self.0.remove(key) {
            old.zeroize();
        }
    }

    /// Moves `from`'s value to `to` (replacing it); nothing when `from` is absent.
    pub fn rename(&mut self, from: &str, to: &str) {
        if let Some(value) = self.0.remove(from)
            && let Some(mut old) = self.0.insert(to.to_owned(), value)
        {
            old.zeroize();
        }
    }

    /// Sets `tls.crt` and `tls.key` to `issuer`'s chain and key.
    pub fn set_intermediate(&mut self, issuer: &Issuer) {
        self.set(SECRET_CERT_KEY, issuer.cert_chain_pem().as_bytes());
        self.set(SECRET_KEY_KEY, issuer.key_pem().as_bytes());
    }

    /// The first certificate of `tls.crt`: the signing intermediate.
    pub fn intermediate(&self, what: &str) -> Result<CertificateDer<'static>, MaterialError> {
        let pem = self
            .get(SECRET_CERT_KEY)
            .ok_or_else(|| invalid(what, format!("no `{SECRET_CERT_KEY}`")))?;
        let certs = certificates_from_pem(pem)
            .map_err(|e| invalid(what, format!("`{SECRET_CERT_KEY}`: {e}")))?;
        Ok(certs
            .into_iter()
            .next()
            .expect("certificates_from_pem refuses none"))
    }

    /// The key ID of the JWT key under `key`, if present.
    pub fn jwt_key_id(&self, what: &str, key: &str) -> Result<Option<String>, MaterialError> {
        self.get(key)
            .map(|pem| jwt_key_id(&format!("{what} `{key}`"), pem))
            .transpose()
    }
}

/// A CA's first signing material under `root`: a new intermediate and a new JWT key.
pub fn first_secret(
    root: &RootCa,
    intermediate_ttl: Duration,
    now: SystemTime,
) -> Result<SecretData, MaterialError> {
    let issuer = root
        .issue_intermediate(intermediate_ttl, now)
        .map_err(|e| MaterialError::Generate {
            what: "the intermediate",
            message: e.message(),
        })?;
    let (jwt, _) = new_jwt_key()?;
    let mut data = SecretData::default();
    data.set_intermediate(&issuer);
    data.set(SECRET_JWT_KEY, jwt.as_bytes());
    Ok(data)
}

/// A freshly generated CA (`lanyard ca new-root`, and `lanyard install --include-ca`): a P-256
/// root, and the Secret's first signing material under it. Keys are wiped on drop and never
/// shown by `Debug`.
pub struct GeneratedCa {
    root: RootCa,
    root_cert_pem: String,
    secret: SecretData,
}

impl std::fmt::Debug for GeneratedCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedCa").finish_non_exhaustive()
    }
}

impl GeneratedCa {
    /// A root for `td` valid for `root_ttl` and an intermediate for `intermediate_ttl`
    /// (capped at the root's lifetime), both from `now`.
    pub fn new(
        td: &TrustDomain,
        root_ttl: Duration,
        intermediate_ttl: Duration,
        now: SystemTime,
    ) -> Result<Self, MaterialError> {
        let root = generate_root(td, root_ttl, now)?;
        let secret = first_secret(&root, intermediate_ttl, now)?;
        Ok(Self {
            root_cert_pem: root.cert_pem(),
            root,
            secret,
        })
    }

    /// The root certificate (what `bundle.pem` holds).
    pub fn root_cert_pem(&self) -> &str {
        &self.root_cert_pem
    }

    /// The CA Secret's data.
    pub fn secret_data(&self) -> &SecretData {
        &self.secret
    }

    /// Writes the root key (PKCS#8 PEM) to a new file with mode 0600; refuses to overwrite.
    pub fn write_root_key(&self, path: &Path) -> Result<(), MaterialError> {
        write_new_file(path, self.root.key_pem().as_bytes(), 0o600)
    }
}

/// A new self-signed root for `td`.
pub fn generate_root(
    td: &TrustDomain,
    ttl: Duration,
    now: SystemTime,
) -> Result<RootCa, MaterialError> {
    RootCa::generate(td, ttl, now).map_err(|e| MaterialError::Generate {
        what: "the root",
        message: e.message(),
    })
}

/// `lanyard ca new-root`: a new root's certificate and key, each to a new file (the key 0600,
/// the certificate 0644). Neither is written when either exists.
pub fn write_new_root(
    root: &RootCa,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), MaterialError> {
    for path in [cert_path, key_path] {
        if path.symlink_metadata().is_ok() {
            return Err(MaterialError::Write {
                path: path.to_owned(),
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
    }
    write_new_file(key_path, root.key_pem().as_bytes(), 0o600)?;
    if let Err(e) = write_new_file(cert_path, root.cert_pem().as_bytes(), 0o644) {
        // A key without its certificate is of no use: leave neither.
        let _ = std::fs::remove_file(key_path);
        return Err(e);
    }
    Ok(())
}

/// Creates `path` (never over an existing file or link) with `mode`, writes `bytes`, syncs.
pub fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), MaterialError> {
    let err = |source| MaterialError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    #[test]
    fn a_root_is_checked_before_use() {
        let now = SystemTime::now();
        let root = generate_root(&td("example.org"), Duration::from_secs(86_400), now).unwrap();
        let cert = RootCert::from_pem("root.pem", &root.cert_pem(), now).unwrap();
        assert_eq!(cert.trust_domain.name(), "example.org");
        assert_eq!(cert.fingerprint(), certificate_fingerprint(root.cert_der()));
        let err = cert
            .check_trust_domain("root.pem", &td("other.org"))
            .unwrap_err();
        assert!(
            err.to_string().contains("trust domain example.org"),
            "{err}"
        );

        // Expired, two certificates, an intermediate instead of a root: all refused by name.
        let later = now + Duration::from_secs(2 * 86_400);
        let expired = RootCert::from_pem("root.pem", &root.cert_pem(), later).unwrap_err();
        assert!(expired.to_string().starts_with("root.pem: "), "{expired}");
        assert!(expired.to_string().contains("expired at"), "{expired}");
        let two = format!("{}{}", root.cert_pem(), root.cert_pem());
        assert!(
            RootCert::from_pem("x", &two, now)
                .unwrap_err()
                .to_string()
                .contains("2 certificates")
        );
        let issuer = root
            .issue_intermediate(Duration::from_secs(3600), now)
            .unwrap();
        let not_root = RootCert::from_pem("int.pem", &issuer.cert_chain_pem(), now).unwrap_err();
        assert!(
            not_root.to_string().contains("not a self-signed root"),
            "{not_root}"
        );
        assert!(issued_by(issuer.cert_der(), root.cert_der()));
        let other = generate_root(&td("example.org"), Duration::from_secs(86_400), now).unwrap();
        assert!(!issued_by(issuer.cert_der(), other.cert_der()));
    }

    #[test]
    fn a_key_must_match_its_root_and_files_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let (a, b) = (
            generate_root(&td("example.org"), Duration::from_secs(86_400), now).unwrap(),
            generate_root(&td("example.org"), Duration::from_secs(86_400), now).unwrap(),
        );
        let (cert, key) = (dir.path().join("a.pem"), dir.path().join("a.key"));
        write_new_root(&a, &cert, &key).unwrap();
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = RootWithKey::read(&cert, &key, now).unwrap();
        assert_eq!(
            loaded.cert.fingerprint(),
            certificate_fingerprint(a.cert_der())
        );
        // Never over an existing file, and nothing half-written.
        let again = write_new_root(&b, &dir.path().join("b.pem"), &key).unwrap_err();
        assert!(again.to_string().contains("must not exist"), "{again}");
        assert!(!dir.path().join("b.pem").exists());
        // B's key with A's certificate.
        let b_key = dir.path().join("b.key");
        write_new_file(&b_key, b.key_pem().as_bytes(), 0o600).unwrap();
        let err = RootWithKey::read(&cert, &b_key, now)
            .unwrap_err()
            .to_string();
        assert!(err.contains("b.key: not the key of"), "{err}");
        assert!(!err.contains("PRIVATE KEY"), "{err}");
    }

    #[test]
    fn secret_data_moves_keys_and_reads_its_intermediate() {
        let now = SystemTime::now();
        let ca = GeneratedCa::new(
            &td("example.org"),
            Duration::from_secs(86_400),
            Duration::from_secs(3600),
            now,
        )
        .unwrap();
        let mut data = ca.secret_data().clone();
        let kid = data.jwt_key_id("s", SECRET_JWT_KEY).unwrap().unwrap();
        data.rename(SECRET_JWT_KEY, "jwt-previous.key");
        assert_eq!(data.get(SECRET_JWT_KEY), None);
        assert_eq!(data.jwt_key_id("s", "jwt-previous.key").unwrap(), Some(kid));
        let (roots, found) = bundle_roots("bundle", ca.root_cert_pem()).unwrap();
        assert_eq!(found.name(), "example.org");
        assert!(issued_by(&data.intermediate("s").unwrap(), &roots[0]));
        assert_eq!(
            format!("{data:?}"),
            "{\"jwt-previous.key\", \"tls.crt\", \"tls.key\"}"
        );
        assert!(jwt_key_id("k", b"garbage").is_err());
    }
}
