//! The agent's own identity: node attestation, the node SVID on disk, and its renewal.
//!
//! - Attestation: a join token (`--join-token`, single use) or a projected ServiceAccount token
//!   (`--k8s-token-path`, read afresh at every attestation since kubelet rotates it). The key
//!   is generated here; only the CSR leaves the process.
//! - Persistence: with a data dir, the node SVID and its key are written to
//!   `<data-dir>/node-svid.pem` (one file, so SVID and key can never disagree; 0600, written to
//!   a temporary file and renamed; the directory is 0700). A join-token agent restarted on the
//!   same data dir loads it and needs no new token while it is valid.
//! - Renewal at half of the remaining lifetime (±10%), or at once when a loaded SVID is past
//!   half its life. Join-token agents renew by presenting their current SVID
//!   (`renew_with_node_svid`); `k8s_psat` agents attest again with a fresh token. Failures back
//!   off (exponential, jittered, capped) while the current SVID keeps being used; once it has
//!   expired the agent attests from scratch, which a spent join token cannot do: that is
//!   logged as needing a new token.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use lanyard_proto::convert::unix_seconds;
use lanyard_proto::identity::v1 as wire;
use lanyard_svid::TrustDomain;
use lanyard_svid::csr::KeyAndCsr;
use lanyard_svid::keys::KeyAlgorithm;
use lanyard_svid::reserved::{NodeAttestation, parse_agent_id};
use lanyard_svid::tls::SvidStore;
use lanyard_svid::x509::X509Svid;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::manager::backoff::{Backoff, random_unit};
use crate::manager::renew::SvidTimes;
use crate::metrics::AgentMetrics;
use crate::server_client::{AttestApi, ServerError};

/// The node SVID's file in the data dir.
pub const NODE_SVID_FILE: &str = "node-svid.pem";
/// Largest node SVID file read back, and largest token file read.
const MAX_FILE_BYTES: u64 = 64 * 1024;
/// Retry policy for attestation and renewal.
const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// How this agent proves it runs on its node.
pub enum AttestMethod {
    /// A single-use join token.
    JoinToken(Zeroizing<String>),
    /// A projected ServiceAccount token, re-read from this file at every attestation.
    K8sPsat { token_path: PathBuf },
}

impl AttestMethod {
    pub fn kind(&self) -> NodeAttestation {
        match self {
            Self::JoinToken(_) => NodeAttestation::JoinToken,
            Self::K8sPsat { .. } => NodeAttestation::K8sPsat,
        }
    }
}

impl std::fmt::Debug for AttestMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::JoinToken(_) => f.write_str("JoinToken(<redacted>)"),
            Self::K8sPsat { token_path } => f
                .debug_struct("K8sPsat")
                .field("token_path", token_path)
                .finish(),
        }
    }
}

/// Why node attestation failed. `Display` is a metric label.
#[derive(Debug, thiserror::Error)]
pub enum NodeAttestError {
    /// The server could not be reached or refused (its reason is the label).
    #[error("{0}")]
    Server(ServerError),
    /// The projected token file could not be read.
    #[error("token_file")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// No usable node SVID in the data dir and no attestation method configured.
    #[error("no_method")]
    NoMethod,
    /// The server's answer is not a node SVID of our trust domain.
    #[error("bad_response")]
    BadResponse(String),
    /// Generating the node key failed.
    #[error("key_generation")]
    Key(String),
}

impl NodeAttestError {
    /// A human explanation.
    pub fn message(&self) -> String {
        match self {
            Self::Server(e) => e.message(),
            Self::TokenFile { path, source } => {
                format!("reading the projected token {}: {source}", path.display())
            }
            Self::NoMethod => "no valid node SVID in the data dir, and neither --join-token nor \
                               --k8s-token-path was given"
                .into(),
            Self::BadResponse(why) => format!("unusable node SVID from the server: {why}"),
            Self::Key(why) => format!("generating the node key: {why}"),
        }
    }

    /// True when retrying may succeed without the operator doing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Server(e) => e.is_transient(),
            Self::TokenFile { .. } => true,
            Self::NoMethod | Self::BadResponse(_) | Self::Key(_) => false,
        }
    }
}

/// Called with every bundle the server sends along with a node SVID.
pub type BundleSink = Box<dyn Fn(&wire::Bundle) + Send + Sync>;

/// Obtains, persists and renews the node SVID, and installs it in the shared [`SvidStore`].
pub struct NodeSvidKeeper {
    client: Arc<dyn AttestApi>,
    store: Arc<SvidStore>,
    trust_domain: TrustDomain,
    method: Option<AttestMethod>,
    data_dir: Option<PathBuf>,
    metrics: Arc<AgentMetrics>,
    on_bundle: BundleSink,
    current: watch::Sender<Option<Arc<X509Svid>>>,
    times: Mutex<Option<SvidTimes>>,
    join_token_spent: AtomicBool,
}

impl NodeSvidKeeper {
    pub fn new(
        client: Arc<dyn AttestApi>,
        store: Arc<SvidStore>,
        trust_domain: TrustDomain,
        method: Option<AttestMethod>,
        data_dir: Option<PathBuf>,
        metrics: Arc<AgentMetrics>,
        on_bundle: BundleSink,
    ) -> Self {
        Self {
            client,
            store,
            trust_domain,
            method,
            data_dir,
            metrics,
            on_bundle,
            current: watch::channel(None).0,
            times: Mutex::new(None),
            join_token_spent: AtomicBool::new(false),
        }
    }

    /// The node SVID in use (`None` before attestation and after expiry).
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<X509Svid>>> {
        self.current.subscribe()
    }

    pub fn current(&self) -> Option<Arc<X509Svid>> {
        self.current.borrow().clone()
    }

    /// Loads a valid node SVID from the data dir, or else attests, retrying transient failures
    /// with backoff. Returns once the agent holds a node SVID; fails for a refused join token
    /// or when there is no way to attest.
    pub async fn start(&self) -> Result<(), NodeAttestError> {
        if let Some(svid) = self.load_persisted() {
            tracing::info!(
                spiffe_id = %svid.spiffe_id(),
                "using the node SVID from the data dir; no attestation needed"
            );
            if let Some(AttestMethod::JoinToken(_)) = &self.method {
                tracing::info!("--join-token not used: a valid node SVID was found");
                self.join_token_spent.store(true, Ordering::Relaxed);
            }
            self.install(svid, true);
            return Ok(());
        }
        let mut backoff = Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX);
        loop {
            match self.attest_once().await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    self.metrics.attestation_failed(&e);
                    let fatal = !e.is_transient()
                        && !matches!(self.method, Some(AttestMethod::K8sPsat { .. }));
                    if fatal {
                        return Err(e);
                    }
                    let delay = backoff.fail();
                    tracing::warn!(reason = %e, retry_in_ms = delay.as_millis() as u64, "node attestation failed: {}", e.message());
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Renews the node SVID for as long as the task runs (after [`NodeSvidKeeper::start`]).
    pub async fn run_renewals(self: Arc<Self>) {
        let mut backoff = Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX);
        loop {
            let times = *self.times.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(t) = times {
                tokio::time::sleep_until(t.renew_at).await;
            }
            loop {
                match self.attest_once().await {
                    Ok(_) => {
                        backoff.reset();
                        break;
                    }
                    Err(e) => {
                        self.metrics.attestation_failed(&e);
                        let expired = self.expire_if_due();
                        let delay = backoff.fail();
                        if expired && matches!(self.method_kind(), Some(NodeAttestation::JoinToken))
                        {
                            tracing::error!(
                                reason = %e,
                                "the node SVID expired and could not be renewed; join tokens are \
                                 single use, so this agent needs a new one: run `lanyard-server \
                                 token generate` and restart the agent with --join-token ({})",
                                e.message()
                            );
                        } else {
                            tracing::warn!(
                                reason = %e,
                                still_valid = !expired,
                                retry_in_ms = delay.as_millis() as u64,
                                "node SVID renewal failed: {}",
                                e.message()
                            );
                        }
                        // Wake at the expiry too, so the SVID is withdrawn when it expires
                        // (the next attempt checks first), not a backoff period later.
                        let retry_at = Instant::now() + delay;
                        let wake = match self.expiry() {
                            Some(expires) if !expired => retry_at.min(expires),
                            _ => retry_at,
                        };
                        tokio::time::sleep_until(wake).await;
                    }
                }
            }
        }
    }

    /// When the node SVID in use expires.
    fn expiry(&self) -> Option<Instant> {
        let times = *self.times.lock().unwrap_or_else(|e| e.into_inner());
        times.map(|t| t.expires)
    }

    fn method_kind(&self) -> Option<NodeAttestation> {
        match &self.method {
            Some(m) => Some(m.kind()),
            // A persisted join-token SVID with no method given.
            None => Some(NodeAttestation::JoinToken),
        }
    }

    /// Withdraws the node SVID once it has expired; true if it is gone.
    fn expire_if_due(&self) -> bool {
        let times = *self.times.lock().unwrap_or_else(|e| e.into_inner());
        let expired = times.is_none_or(|t| t.is_expired(Instant::now()));
        if expired && self.current.borrow().is_some() {
            tracing::warn!("the node SVID expired; no longer presented to the server");
            self.store.clear_svid();
            self.current.send_replace(None);
        }
        expired
    }

    /// One attestation (or join-token renewal); installs and persists the result.
    pub async fn attest_once(&self) -> Result<Arc<X509Svid>, NodeAttestError> {
        use wire::attest_node_request::Method;
        let valid_now = self.current().filter(|_| !self.expire_if_due());
        let method = match (&self.method, valid_now) {
            (Some(AttestMethod::K8sPsat { token_path }), _) => {
                Method::K8sPsatToken(read_token(token_path)?)
            }
            (Some(AttestMethod::JoinToken(_)) | None, Some(_)) => Method::RenewWithNodeSvid(true),
            (Some(AttestMethod::JoinToken(token)), None) => {
                if self.join_token_spent.load(Ordering::Relaxed) {
                    tracing::error!(
                        "attesting again with the join token, which was already used; the server \
                         will refuse it (tokens are single use): generate a new one"
                    );
                }
                Method::JoinToken(token.as_str().to_owned())
            }
            (None, None) => return Err(NodeAttestError::NoMethod),
        };
        let used_join_token = matches!(method, Method::JoinToken(_));
        let key = KeyAndCsr::generate(KeyAlgorithm::EcdsaP256)
            .map_err(|e| NodeAttestError::Key(e.to_string()))?;
        let response = self
            .client
            .attest_node(wire::AttestNodeRequest {
                method: Some(method),
                csr: key.csr_der.clone(),
            })
            .await
            .map_err(NodeAttestError::Server)?;
        if used_join_token {
            // Accepted or not, the server has now seen it; it will not work twice.
            self.join_token_spent.store(true, Ordering::Relaxed);
        }
        let svid = self.check_response(&response, key)?;
        if let Some(bundle) = &response.bundle {
            (self.on_bundle)(bundle);
        }
        self.install(svid, false);
        Ok(self.current().expect("just installed"))
    }

    fn check_response(
        &self,
        response: &wire::AttestNodeResponse,
        key: KeyAndCsr,
    ) -> Result<X509Svid, NodeAttestError> {
        let w = response
            .svid
            .as_ref()
            .ok_or_else(|| NodeAttestError::BadResponse("no SVID in the answer".into()))?;
        let chain = w
            .cert_chain
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect();
        let svid = X509Svid::parse(chain, Some(key.private_key_pkcs8))
            .map_err(|e| NodeAttestError::BadResponse(e.message()))?;
        self.check_agent_id(&svid)
            .map_err(NodeAttestError::BadResponse)?;
        Ok(svid)
    }

    fn check_agent_id(&self, svid: &X509Svid) -> Result<(), String> {
        let id = svid.spiffe_id();
        match parse_agent_id(id) {
            Some(_) if id.trust_domain() == &self.trust_domain => Ok(()),
            _ => Err(format!(
                "{id} is not an agent ID of trust domain {}",
                self.trust_domain
            )),
        }
    }

    /// Serves `svid` from now on: TLS store, timers, watchers, connection, disk.
    fn install(&self, svid: X509Svid, loaded: bool) {
        let now = Instant::now();
        let now_wall = SystemTime::now();
        let mut times = SvidTimes::schedule(now, now_wall, svid.not_after(), random_unit());
        if loaded {
            let life = svid
                .not_after()
                .duration_since(svid.not_before())
                .unwrap_or_default();
            if now_wall >= svid.not_before() + life / 2 {
                times.renew_at = now;
            }
        }
        if let Err(e) = self.store.update_svid(svid.clone()) {
            tracing::error!(reason = %e, "cannot use the node SVID for TLS: {}", e.message());
        }
        if let (false, Some(dir)) = (loaded, &self.data_dir) {
            match save(dir, &svid) {
                Ok(()) => tracing::debug!(dir = %dir.display(), "node SVID saved"),
                Err(e) => tracing::error!(
                    dir = %dir.display(),
                    "could not save the node SVID ({e}); a restarted agent will need to attest again"
                ),
            }
        }
        self.metrics.node_svids.inc();
        self.metrics
            .node_svid_expiry
            .set(unix_seconds(svid.not_after()));
        tracing::info!(
            spiffe_id = %svid.spiffe_id(),
            expires_at = unix_seconds(svid.not_after()),
            renew_in_s = (times.renew_at - now).as_secs(),
            "node SVID in use"
        );
        *self.times.lock().unwrap_or_else(|e| e.into_inner()) = Some(times);
        // New connections present the new SVID.
        self.client.reconnect();
        self.current.send_replace(Some(Arc::new(svid)));
    }

    /// The persisted node SVID, if there is one this agent can use now.
    fn load_persisted(&self) -> Option<X509Svid> {
        let dir = self.data_dir.as_ref()?;
        let svid = match load(dir) {
            Ok(Some(svid)) => svid,
            Ok(None) => return None,
            Err(why) => {
                tracing::warn!(dir = %dir.display(), "ignoring the saved node SVID: {why}");
                return None;
            }
        };
        if let Err(why) = self.check_agent_id(&svid) {
            tracing::warn!("ignoring the saved node SVID: {why}");
            return None;
        }
        let method = parse_agent_id(svid.spiffe_id()).map(|a| a.method);
        if let Some(configured) = &self.method
            && method != Some(configured.kind())
        {
            tracing::info!(
                "the saved node SVID was obtained by another attestation method; attesting afresh"
            );
            return None;
        }
        if svid.not_after() <= SystemTime::now() + Duration::from_secs(5) {
            tracing::info!("the saved node SVID has expired; attesting afresh");
            return None;
        }
        Some(svid)
    }
}

fn read_token(path: &Path) -> Result<String, NodeAttestError> {
    let err = |source| NodeAttestError::TokenFile {
        path: path.to_owned(),
        source,
    };
    let len = fs::metadata(path).map_err(err)?.len();
    if len > MAX_FILE_BYTES {
        return Err(err(std::io::Error::other("larger than 64 KiB")));
    }
    let text = fs::read_to_string(path).map_err(err)?;
    let token = text.trim();
    if token.is_empty() {
        return Err(err(std::io::Error::other("the file is empty")));
    }
    Ok(token.to_owned())
}

/// Writes `svid` (chain, then key) to `<dir>/node-svid.pem`: dir 0700, file 0600, atomically.
pub fn save(dir: &Path, svid: &X509Svid) -> std::io::Result<()> {
    let key = svid
        .private_key_pkcs8()
        .ok_or_else(|| std::io::Error::other("the node SVID has no private key"))?;
    lanyard_daemon::private_file::ensure_dir(dir, 0o700)?;
    let mut pem = Zeroizing::new(lanyard_svid::pem::encode_certificates(svid.chain()));
    pem.push_str(&lanyard_svid::pem::encode_private_key(key));
    lanyard_daemon::private_file::write_private_atomic(&dir.join(NODE_SVID_FILE), pem.as_bytes())
}

/// Reads `<dir>/node-svid.pem` back; `Ok(None)` when there is none.
pub fn load(dir: &Path) -> Result<Option<X509Svid>, String> {
    let path = dir.join(NODE_SVID_FILE);
    let pem = match lanyard_daemon::private_file::read_private(&path, MAX_FILE_BYTES) {
        Ok(pem) => pem,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificates: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate".into());
    }
    let key = match PrivateKeyDer::from_pem_slice(&pem).map_err(|e| format!("key: {e}"))? {
        PrivateKeyDer::Pkcs8(k) => Zeroizing::new(k.secret_pkcs8_der().to_vec()),
        _ => return Err("the key is not PKCS#8".into()),
    };
    X509Svid::parse(chain, Some(key))
        .map(Some)
        .map_err(|e| e.message())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_svid::RootCa;
    use lanyard_svid::csr::VerifiedCsr;
    use lanyard_svid::reserved::agent_id;
    use std::os::unix::fs::PermissionsExt;

    fn node_svid(ttl: Duration) -> X509Svid {
        let td = TrustDomain::new("example.org").unwrap();
        let now = SystemTime::now();
        let root = RootCa::generate(&td, Duration::from_secs(86400), now).unwrap();
        let issuer = root
            .issue_intermediate(Duration::from_secs(3600 * 12), now)
            .unwrap();
        let key = KeyAndCsr::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let id = agent_id(&td, NodeAttestation::JoinToken, "node-1").unwrap();
        let signed = issuer
            .sign_x509_svid(&VerifiedCsr::from_der(&key.csr_der).unwrap(), &id, ttl, now)
            .unwrap();
        X509Svid::parse(signed.cert_chain, Some(key.private_key_pkcs8)).unwrap()
    }

    #[test]
    fn saved_svid_round_trips_privately() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("agent");
        assert_eq!(load(&data).unwrap().map(|s| s.spiffe_id().clone()), None);
        let svid = node_svid(Duration::from_secs(3600));
        save(&data, &svid).unwrap();
        save(&data, &svid).unwrap();
        let file = data.join(NODE_SVID_FILE);
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(&data).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            fs::read_dir(&data).unwrap().count(),
            1,
            "temporary file left behind"
        );
        let back = load(&data).unwrap().unwrap();
        assert_eq!(back.chain(), svid.chain());
        assert_eq!(back.private_key_pkcs8(), svid.private_key_pkcs8());
    }

    #[test]
    fn unsafe_or_damaged_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let svid = node_svid(Duration::from_secs(3600));
        save(dir.path(), &svid).unwrap();
        let file = dir.path().join(NODE_SVID_FILE);
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            load(dir.path())
                .unwrap_err()
                .contains("readable by group or others")
        );
        // A key that belongs to another certificate.
        let other = node_svid(Duration::from_secs(3600));
        let mut pem = lanyard_svid::pem::encode_certificates(svid.chain());
        pem.push_str(&lanyard_svid::pem::encode_private_key(
            other.private_key_pkcs8().unwrap(),
        ));
        fs::remove_file(&file).unwrap();
        lanyard_daemon::private_file::write_private_atomic(&file, pem.as_bytes()).unwrap();
        assert!(load(dir.path()).is_err());
        lanyard_daemon::private_file::write_private_atomic(&file, b"garbage").unwrap();
        assert!(load(dir.path()).is_err());
    }

    #[test]
    fn token_file_is_read_trimmed_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        fs::write(&path, "abc.def.ghi\n").unwrap();
        assert_eq!(read_token(&path).unwrap(), "abc.def.ghi");
        fs::write(&path, "  \n").unwrap();
        assert_eq!(read_token(&path).unwrap_err().to_string(), "token_file");
        fs::write(&path, vec![b'a'; 70_000]).unwrap();
        assert!(read_token(&path).is_err());
        assert!(read_token(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn join_token_never_shows_in_debug() {
        let m = AttestMethod::JoinToken(Zeroizing::new("s3cret-token".into()));
        assert!(!format!("{m:?}").contains("s3cret"));
    }
}
