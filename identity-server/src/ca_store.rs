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
//!
//! The intermediate is replaced from the root at two thirds of its life
//! ([`DataDirCa::rotate_if_due`], run by [`crate::ca_rotation`]). The new pair is first written
//! as `intermediate.next.key` and `intermediate.next.crt`, then renamed over the old key, then
//! over the old certificate; a start finding leftovers of a rotation cut short finishes or
//! undoes it ([`recover_rotation`]), so every crash point leaves a matching pair. The root is
//! never rotated automatically: a new root must reach every relying party first.
//!
//! The JWT key is replaced with the intermediate, and on demand (`lanyard-server ca
//! rotate-jwt-key`, [`DataDirCa::rotate_jwt_key`]). The key it replaces keeps being published
//! until the tokens it signed have expired: its public half and that time are recorded in
//! `jwt-retired.json` (written before the new `jwt.key`, so a crash between the two only
//! lists the still-signing key, which is ignored), and a restart within the grace publishes
//! it again ([`DataDirCa::retired_jwt`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use lanyard_svid::ca::{Issuer, RootCa};
use lanyard_svid::jwt::JwtSigner;
use lanyard_svid::{JwtAuthority, TrustDomain};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

use lanyard_daemon::private_file::{
    PrivateFileError, ensure_dir, read_private, write_private_atomic,
};

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
/// JWT keys that stopped signing and until when they are published (optional).
const JWT_RETIRED: &str = "jwt-retired.json";
/// Largest CA file read (PEM certificates and keys, the manifest): far above any real one.
const MAX_CA_FILE_LEN: u64 = 1 << 20;
/// Most retired JWT keys recorded: more would mean rotations faster than tokens expire.
const MAX_RETIRED_JWT_KEYS: usize = 32;
/// A rotation's new pair, before it is renamed into place.
const NEXT_INTERMEDIATE_CRT: &str = "intermediate.next.crt";
const NEXT_INTERMEDIATE_KEY: &str = "intermediate.next.key";
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
    #[error(
        "{dir} holds no CA, but the data dir already existed: a volume that failed to mount, or a deleted CA, would otherwise silently become a new root that no agent trusts. Restore the CA, or pass --init to create a new one"
    )]
    Missing { dir: PathBuf },
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

/// `jwt-retired.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetiredJwtFile {
    keys: Vec<RetiredJwtKey>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetiredJwtKey {
    kid: String,
    /// SubjectPublicKeyInfo DER, standard base64.
    public_key: String,
    /// Published until then (Unix seconds).
    retire_at: u64,
}

/// Serialises the writes to a `ca/` directory (the hourly intermediate check and the admin
/// socket's JWT key rotation).
static CA_WRITES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// CA material of a data dir.
pub struct DataDirCa {
    pub root: RootCa,
    pub issuer: Issuer,
    pub jwt: JwtSigner,
    /// JWT keys that stopped signing and until when they stay published (not yet past at
    /// load time).
    pub retired_jwt: Vec<(JwtAuthority, SystemTime)>,
}

impl DataDirCa {
    /// Loads the CA of `data_dir`, generating it if the directory holds none.
    pub fn load_or_create(
        data_dir: &Path,
        trust_domain: &TrustDomain,
        now: SystemTime,
    ) -> Result<Self, CaStoreError> {
        let dir = data_dir.join("ca");
        recover_rotation(&dir).map_err(|source| CaStoreError::Io {
            path: dir.clone(),
            source,
        })?;
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

    /// True when `data_dir` holds any CA file (complete or not).
    pub fn exists(data_dir: &Path) -> bool {
        let dir = data_dir.join("ca");
        ALL_FILES.iter().any(|f| dir.join(f).exists())
    }

    /// Loads the CA of `data_dir`; never creates one ([`CaStoreError::Missing`] instead).
    pub fn load_existing(
        data_dir: &Path,
        trust_domain: &TrustDomain,
        now: SystemTime,
    ) -> Result<Self, CaStoreError> {
        if !Self::exists(data_dir) {
            return Err(CaStoreError::Missing {
                dir: data_dir.join("ca"),
            });
        }
        Self::load_or_create(data_dir, trust_domain, now)
    }

    /// When the intermediate is replaced: after two thirds of its life, so the last third
    /// (four months of a one-year intermediate) is margin for a server that was down.
    pub fn rotation_due(&self) -> SystemTime {
        let (from, to) = (self.issuer.not_before(), self.issuer.not_after());
        from + to.duration_since(from).unwrap_or_default() * 2 / 3
    }

    /// Replaces the intermediate of `data_dir` with a new one from the root when `now` is past
    /// [`DataDirCa::rotation_due`], and the JWT key with it (the old one published for
    /// `jwt_grace`); returns the CA as reloaded from disk if it did. The root stays: agents'
    /// X.509 bundles do not change.
    pub fn rotate_if_due(
        data_dir: &Path,
        trust_domain: &TrustDomain,
        now: SystemTime,
        jwt_grace: Duration,
    ) -> Result<Option<Self>, CaStoreError> {
        let _writing = CA_WRITES.lock().unwrap_or_else(|e| e.into_inner());
        // A CA deleted while the server runs is an error, never a new root.
        let current = Self::load_existing(data_dir, trust_domain, now)?;
        if now < current.rotation_due() {
            return Ok(None);
        }
        let dir = data_dir.join("ca");
        let next = current
            .root
            .issue_intermediate(INTERMEDIATE_TTL, now)
            .map_err(|e| CaStoreError::Invalid {
                path: dir.join(ROOT_CRT),
                message: format!("issuing a new intermediate: {}", e.message()),
            })?;
        let io = |path: PathBuf| move |source| CaStoreError::Io { path, source };
        let (next_key, next_crt) = (
            dir.join(NEXT_INTERMEDIATE_KEY),
            dir.join(NEXT_INTERMEDIATE_CRT),
        );
        write_private_atomic(&next_key, next.key_pem().as_bytes()).map_err(io(next_key.clone()))?;
        write_private_atomic(&next_crt, next.cert_chain_pem().as_bytes())
            .map_err(io(next_crt.clone()))?;
        // Key first: a crash after this rename is recognised by the certificate still waiting.
        std::fs::rename(&next_key, dir.join(INTERMEDIATE_KEY)).map_err(io(next_key))?;
        std::fs::rename(&next_crt, dir.join(INTERMEDIATE_CRT)).map_err(io(next_crt))?;
        sync_dir(&dir).map_err(io(dir.clone()))?;
        // A new JWT key with the new intermediate, so JWT keys rotate in data-dir mode too.
        replace_jwt_key(&dir, &current, now, jwt_grace)?;
        let rotated = Self::load(&dir, trust_domain, now)?;
        tracing::info!(
            serial = %rotated.issuer.serial_hex(),
            previous_serial = %current.issuer.serial_hex(),
            not_after = humantime::format_rfc3339_seconds(rotated.issuer.not_after()).to_string(),
            "rotated the intermediate CA"
        );
        let root_left = current
            .root
            .not_after()
            .duration_since(now)
            .unwrap_or_default();
        if root_left < INTERMEDIATE_TTL {
            tracing::warn!(
                root_not_after =
                    humantime::format_rfc3339_seconds(current.root.not_after()).to_string(),
                "the root CA expires within a year and limits every intermediate; plan a new root"
            );
        }
        Ok(Some(rotated))
    }

    /// Replaces the JWT key of `data_dir` with a new one; the old one stays published until
    /// `now + grace` (recorded in `jwt-retired.json`). Returns the CA as reloaded from disk.
    pub fn rotate_jwt_key(
        data_dir: &Path,
        trust_domain: &TrustDomain,
        now: SystemTime,
        grace: Duration,
    ) -> Result<Self, CaStoreError> {
        let _writing = CA_WRITES.lock().unwrap_or_else(|e| e.into_inner());
        let current = Self::load_existing(data_dir, trust_domain, now)?;
        let dir = data_dir.join("ca");
        replace_jwt_key(&dir, &current, now, grace)?;
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
        let jwt_pem = lanyard_svid::pem::encode_private_key(&jwt_pkcs8);
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
        Ok(Self {
            root,
            issuer,
            jwt,
            retired_jwt: Vec::new(),
        })
    }

    fn load(dir: &Path, td: &TrustDomain, now: SystemTime) -> Result<Self, CaStoreError> {
        let read = |name: &str| -> Result<Zeroizing<String>, CaStoreError> {
            let path = dir.join(name);
            let bytes = read_private(&path, MAX_CA_FILE_LEN).map_err(|e| match e {
                PrivateFileError::Exposed { mode } => CaStoreError::InsecureMode {
                    path: path.clone(),
                    mode,
                },
                PrivateFileError::Io(source) => CaStoreError::Io {
                    path: path.clone(),
                    source,
                },
                too_large @ PrivateFileError::TooLarge { .. } => CaStoreError::Invalid {
                    path: path.clone(),
                    message: too_large.to_string(),
                },
            })?;
            let text = std::str::from_utf8(&bytes).map_err(|_| CaStoreError::Invalid {
                path: path.clone(),
                message: "not UTF-8 text".into(),
            })?;
            Ok(Zeroizing::new(text.to_owned()))
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
        let retired_jwt = if dir.join(JWT_RETIRED).exists() {
            parse_retired(&read(JWT_RETIRED)?)
                .map_err(|m| invalid(JWT_RETIRED, m))?
                .into_iter()
                .filter(|(key, until)| *until > now && key.key_id != jwt.key_id())
                .collect()
        } else {
            Vec::new()
        };
        Ok(Self {
            root,
            issuer,
            jwt,
            retired_jwt,
        })
    }
}

/// Writes a new `jwt.key` in `dir`, recording `current`'s JWT key as retired until
/// `now + grace` first (with the retired keys still in their grace).
fn replace_jwt_key(
    dir: &Path,
    current: &DataDirCa,
    now: SystemTime,
    grace: Duration,
) -> Result<(), CaStoreError> {
    let (next, next_pkcs8) = JwtSigner::generate().map_err(|e| CaStoreError::Invalid {
        path: dir.join(JWT_KEY),
        message: format!("generating a JWT key: {e}"),
    })?;
    let mut retired: Vec<_> = current
        .retired_jwt
        .iter()
        .filter(|(_, until)| *until > now)
        .cloned()
        .collect();
    retired.push((current.jwt.authority(), now + grace));
    // The soonest to go are dropped first if rotations outpace the grace.
    retired.sort_by_key(|(_, until)| std::cmp::Reverse(*until));
    retired.truncate(MAX_RETIRED_JWT_KEYS);
    let file = RetiredJwtFile {
        keys: retired
            .iter()
            .map(|(key, until)| RetiredJwtKey {
                kid: key.key_id.clone(),
                public_key: BASE64.encode(&key.public_key),
                // Rounded up: never retired before the grace ends.
                retire_at: until
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0)),
            })
            .collect(),
    };
    let json = serde_json::to_vec_pretty(&file).expect("retired keys serialise");
    let write = |name: &str, contents: &[u8]| {
        let path = dir.join(name);
        write_private_atomic(&path, contents).map_err(|source| CaStoreError::Io { path, source })
    };
    // The record first: a crash before the key is replaced lists the signing key as retired,
    // which load ignores; the other order could lose the old key while its tokens live.
    write(JWT_RETIRED, &json)?;
    let pem = lanyard_svid::pem::encode_private_key(&next_pkcs8);
    write(JWT_KEY, pem.as_bytes())?;
    tracing::info!(
        kid = next.key_id(),
        previous_kid = current.jwt.key_id(),
        previous_published_until = humantime::format_rfc3339_seconds(now + grace).to_string(),
        "rotated the JWT signing key"
    );
    Ok(())
}

/// Reads `jwt-retired.json`.
fn parse_retired(text: &str) -> Result<Vec<(JwtAuthority, SystemTime)>, String> {
    let file: RetiredJwtFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if file.keys.len() > MAX_RETIRED_JWT_KEYS {
        return Err(format!("more than {MAX_RETIRED_JWT_KEYS} keys"));
    }
    file.keys
        .into_iter()
        .map(|key| {
            let public_key = BASE64
                .decode(&key.public_key)
                .map_err(|e| format!("key {:?}: public_key is not base64: {e}", key.kid))?;
            lanyard_svid::jwks::JwtPublicKey::from_spki_der(&public_key)
                .map_err(|e| format!("key {:?}: {e}", key.kid))?;
            let until = std::time::UNIX_EPOCH + Duration::from_secs(key.retire_at);
            Ok((
                JwtAuthority {
                    key_id: key.kid,
                    public_key,
                    expires_at: None,
                },
                until,
            ))
        })
        .collect()
}

/// Finishes or undoes a rotation that a crash cut short (see the module docs):
/// - both `next` files present: the renames never started; the old pair is whole, drop them;
/// - only the certificate: the key was renamed into place; rename the certificate too;
/// - only the key: the certificate was never written; drop the key.
fn recover_rotation(dir: &Path) -> std::io::Result<()> {
    let (next_key, next_crt) = (
        dir.join(NEXT_INTERMEDIATE_KEY),
        dir.join(NEXT_INTERMEDIATE_CRT),
    );
    match (next_key.exists(), next_crt.exists()) {
        (false, false) => return Ok(()),
        (true, true) => {
            std::fs::remove_file(&next_crt)?;
            std::fs::remove_file(&next_key)?;
            tracing::warn!(dir = %dir.display(), "an intermediate rotation was cut short before it took effect; keeping the current intermediate");
        }
        (false, true) => {
            std::fs::rename(&next_crt, dir.join(INTERMEDIATE_CRT))?;
            tracing::warn!(dir = %dir.display(), "finished an intermediate rotation that was cut short");
        }
        (true, false) => {
            std::fs::remove_file(&next_key)?;
            tracing::warn!(dir = %dir.display(), "an intermediate rotation was cut short before it took effect; keeping the current intermediate");
        }
    }
    sync_dir(dir)
}

/// Makes renames in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
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

fn pem_decode_private_key(pem: &str) -> Option<Zeroizing<Vec<u8>>> {
    use rustls_pki_types::PrivatePkcs8KeyDer;
    use rustls_pki_types::pem::PemObject;
    let key = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).ok()?;
    Some(Zeroizing::new(key.secret_pkcs8_der().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_daemon::private_file::mode_of;

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

    const DAY: Duration = Duration::from_secs(86_400);
    const GRACE: Duration = Duration::from_secs(330);

    /// Whole seconds, as `jwt-retired.json` records times.
    fn secs(t: SystemTime) -> SystemTime {
        std::time::UNIX_EPOCH
            + Duration::from_secs(t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs())
    }

    #[test]
    fn a_jwt_key_rotation_keeps_the_old_key_published_for_the_grace_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = secs(SystemTime::now());
        let first = DataDirCa::load_or_create(dir.path(), &td("example.org"), t0).unwrap();
        assert!(first.retired_jwt.is_empty());
        let second = DataDirCa::rotate_jwt_key(dir.path(), &td("example.org"), t0, GRACE).unwrap();
        assert_ne!(second.jwt.key_id(), first.jwt.key_id());
        assert_eq!(
            second.issuer.cert_der(),
            first.issuer.cert_der(),
            "the CA stays"
        );
        assert_eq!(second.retired_jwt, [(first.jwt.authority(), t0 + GRACE)]);
        let ca = dir.path().join("ca");
        assert_eq!(mode_of(&ca.join(JWT_KEY)).unwrap(), 0o600);
        assert_eq!(mode_of(&ca.join(JWT_RETIRED)).unwrap(), 0o600);

        // A second rotation a minute later: both old keys, each until its own time.
        let t1 = t0 + Duration::from_secs(60);
        let third = DataDirCa::rotate_jwt_key(dir.path(), &td("example.org"), t1, GRACE).unwrap();
        let mut kids: Vec<_> = third
            .retired_jwt
            .iter()
            .map(|(k, until)| (k.key_id.clone(), *until))
            .collect();
        kids.sort_by_key(|(_, until)| *until);
        assert_eq!(
            kids,
            [
                (first.jwt.key_id().to_owned(), t0 + GRACE),
                (second.jwt.key_id().to_owned(), t1 + GRACE)
            ]
        );

        // A restart within the grace of the second only: the first is gone.
        let restarted =
            DataDirCa::load_or_create(dir.path(), &td("example.org"), t0 + GRACE).unwrap();
        assert_eq!(restarted.jwt.key_id(), third.jwt.key_id());
        assert_eq!(
            restarted.retired_jwt,
            [(second.jwt.authority(), t1 + GRACE)]
        );
        // After it: none.
        let later = DataDirCa::load_or_create(dir.path(), &td("example.org"), t1 + GRACE).unwrap();
        assert!(later.retired_jwt.is_empty());
    }

    #[test]
    fn a_jwt_rotation_cut_short_after_the_record_keeps_the_signing_key() {
        let dir = tempfile::tempdir().unwrap();
        let now = secs(SystemTime::now());
        let ca = DataDirCa::load_or_create(dir.path(), &td("example.org"), now).unwrap();
        // The record written, the new key not: it lists the key still signing.
        let record = format!(
            r#"{{"keys":[{{"kid":"{}","public_key":"{}","retire_at":{}}}]}}"#,
            ca.jwt.key_id(),
            BASE64.encode(&ca.jwt.authority().public_key),
            (now + GRACE)
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        );
        write_private_atomic(&dir.path().join("ca").join(JWT_RETIRED), record.as_bytes()).unwrap();
        let loaded = DataDirCa::load_or_create(dir.path(), &td("example.org"), now).unwrap();
        assert_eq!(loaded.jwt.key_id(), ca.jwt.key_id());
        assert!(
            loaded.retired_jwt.is_empty(),
            "the signing key is not retired"
        );
    }

    #[test]
    fn a_bad_retired_key_record_refuses_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        DataDirCa::load_or_create(dir.path(), &td("example.org"), now).unwrap();
        let path = dir.path().join("ca").join(JWT_RETIRED);
        for bad in [
            "not json",
            r#"{"keys":[{"kid":"a","public_key":"AAAA","retire_at":1}]}"#,
            r#"{"keys":[],"extra":1}"#,
        ] {
            write_private_atomic(&path, bad.as_bytes()).unwrap();
            let err = DataDirCa::load_or_create(dir.path(), &td("example.org"), now)
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(err.to_string().contains(JWT_RETIRED), "{bad}: {err}");
        }
    }

    #[test]
    fn the_intermediate_is_rotated_at_two_thirds_of_its_life() {
        let dir = tempfile::tempdir().unwrap();
        let start = SystemTime::now();
        let first = DataDirCa::load_or_create(dir.path(), &td("example.org"), start).unwrap();
        let due = first.rotation_due();
        assert!(
            due > start + 240 * DAY && due < start + 245 * DAY,
            "{due:?}"
        );

        let before_due = due - DAY;
        let kept =
            DataDirCa::rotate_if_due(dir.path(), &td("example.org"), before_due, GRACE).unwrap();
        assert!(kept.is_none());
        let rotated = DataDirCa::rotate_if_due(dir.path(), &td("example.org"), due, GRACE)
            .unwrap()
            .expect("rotated when due");
        assert_ne!(rotated.issuer.cert_der(), first.issuer.cert_der());
        assert_eq!(
            rotated.root.cert_der(),
            first.root.cert_der(),
            "the root stays"
        );
        assert_ne!(
            rotated.jwt.key_id(),
            first.jwt.key_id(),
            "the JWT key is replaced with the intermediate"
        );
        let [(retired, until)] = rotated.retired_jwt.as_slice() else {
            panic!("one retired key: {:?}", rotated.retired_jwt)
        };
        assert_eq!(retired, &first.jwt.authority());
        assert!(
            *until >= due + GRACE && *until < due + GRACE + Duration::from_secs(1),
            "the old JWT key stays published for the grace (to the second, rounded up)"
        );
        assert!(rotated.issuer.not_after() >= due + 364 * DAY);
        check_signed_by(rotated.issuer.cert_der(), first.root.cert_der()).unwrap();
        // A restart loads the new pair, with private modes, and nothing left over.
        let reloaded = DataDirCa::load_or_create(dir.path(), &td("example.org"), due).unwrap();
        assert_eq!(reloaded.issuer.cert_der(), rotated.issuer.cert_der());
        let ca = dir.path().join("ca");
        assert_eq!(mode_of(&ca.join(INTERMEDIATE_KEY)).unwrap(), 0o600);
        assert!(!ca.join(NEXT_INTERMEDIATE_KEY).exists());
        assert!(!ca.join(NEXT_INTERMEDIATE_CRT).exists());
        // Not due again until two thirds of the new one's life.
        assert!(
            DataDirCa::rotate_if_due(dir.path(), &td("example.org"), due + DAY, GRACE)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_rotation_cut_short_at_any_point_leaves_a_matching_pair() {
        let now = SystemTime::now();
        // (files of the new pair left, after how many of the two renames)
        for crash_after in ["one next file", "both next files", "key renamed"] {
            let dir = tempfile::tempdir().unwrap();
            let old = DataDirCa::load_or_create(dir.path(), &td("example.org"), now).unwrap();
            let new = old.root.issue_intermediate(INTERMEDIATE_TTL, now).unwrap();
            let ca = dir.path().join("ca");
            write_private_atomic(&ca.join(NEXT_INTERMEDIATE_KEY), new.key_pem().as_bytes())
                .unwrap();
            if crash_after != "one next file" {
                write_private_atomic(
                    &ca.join(NEXT_INTERMEDIATE_CRT),
                    new.cert_chain_pem().as_bytes(),
                )
                .unwrap();
            }
            if crash_after == "key renamed" {
                std::fs::rename(ca.join(NEXT_INTERMEDIATE_KEY), ca.join(INTERMEDIATE_KEY)).unwrap();
            }
            let loaded = DataDirCa::load_or_create(dir.path(), &td("example.org"), now)
                .unwrap_or_else(|e| panic!("{crash_after}: {e}"));
            let expected = if crash_after == "key renamed" {
                new.cert_der()
            } else {
                old.issuer.cert_der()
            };
            assert_eq!(loaded.issuer.cert_der(), expected, "{crash_after}");
            assert!(!ca.join(NEXT_INTERMEDIATE_KEY).exists(), "{crash_after}");
            assert!(!ca.join(NEXT_INTERMEDIATE_CRT).exists(), "{crash_after}");
        }
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
