//! `lanyard check`: is this node's Lanyard working? Each check prints one line, `ok` or
//! `FAIL` with the reason, and the command fails if any check failed.
//!
//! - the server: a TLS handshake to `--server` that verifies the server's certificate against
//!   `--trust-bundle` and its SPIFFE ID against the one agents pin (`/lanyard/server`);
//! - the socket: a Workload API `FetchX509SVID` on the agent's socket answers;
//! - the local SVID: the caller's SVID is valid now and for at least `--min-validity`; a
//!   `WARN` line when its intermediate or a root of its bundle expires within 60 days;
//! - with `--cluster`: the replicas' CA reports (through the kube client, as `lanyard ca
//!   status` reads them), with a `WARN` line for each root or intermediate they name that
//!   expires within 60 days, replicas serving different bundle versions, and agents lagging
//!   the bundle the replicas serve.
//!
//! Warnings never change the exit status; only a failed check does.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lanyard_ca_lifecycle::expiry;
use lanyard_ca_lifecycle::propagation::ClusterView;
use lanyard_ca_lifecycle::report::CertSummary;
use lanyard_ca_lifecycle::unix_seconds;
use lanyard_client::fetch::{FetchError, FetchedSvid, WorkloadClient};
use lanyard_daemon::address::HostPort;
use lanyard_svid::bundle::{certificates_from_der, certificates_from_pem, trust_domain_of};
use lanyard_svid::reserved::server_id;
use lanyard_svid::tls::{ExactId, SvidStore, client_config_optional_svid, unused_server_name};
use lanyard_svid::{BundleSet, TrustBundle, X509Svid};

/// How long each check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// One check's outcome, and its warnings (which do not fail it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub name: &'static str,
    pub outcome: Result<String, String>,
    pub warnings: Vec<String>,
}

impl CheckResult {
    fn new(name: &'static str, outcome: Result<String, String>) -> Self {
        Self {
            name,
            outcome,
            warnings: Vec::new(),
        }
    }
}

impl std::fmt::Display for CheckResult {
    /// `ok` or `FAIL` with the detail, then one `WARN` line per warning.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.outcome {
            Ok(detail) => write!(f, "ok    {:<10} {detail}", self.name)?,
            Err(why) => write!(f, "FAIL  {:<10} {why}", self.name)?,
        }
        for warning in &self.warnings {
            write!(f, "\nWARN  {:<10} {warning}", self.name)?;
        }
        Ok(())
    }
}

/// What to check.
pub struct CheckOptions {
    /// `HOST:PORT`; a name is resolved, and each of its addresses tried in turn.
    pub server: Option<HostPort>,
    pub trust_bundle: Option<PathBuf>,
    pub socket: PathBuf,
    pub min_validity: Duration,
    /// `--cluster`: where the replicas report, and the API call bound.
    pub cluster: Option<(crate::ca::CaObjects, Duration)>,
}

/// Runs every applicable check.
pub async fn run_checks(options: &CheckOptions) -> Vec<CheckResult> {
    let mut results = Vec::new();
    if let Some(server) = &options.server {
        let outcome = match &options.trust_bundle {
            Some(bundle) => check_server(server, bundle).await,
            None => Err("--server needs --trust-bundle to verify the server".to_owned()),
        };
        results.push(CheckResult::new("server", outcome));
    }
    match fetch_svids(&options.socket).await {
        Err(why) => results.push(CheckResult::new("socket", Err(why))),
        Ok(fetched) => {
            results.push(CheckResult::new(
                "socket",
                Ok(format!(
                    "{} answers the Workload API",
                    options.socket.display()
                )),
            ));
            let now = SystemTime::now();
            let svids: Vec<X509Svid> = fetched.iter().map(|f| f.svid.clone()).collect();
            let mut svid =
                CheckResult::new("svid", check_validity(&svids, now, options.min_validity));
            if let Some(first) = fetched.first() {
                svid.warnings = ca_expiry_warnings(first, now);
            }
            results.push(svid);
        }
    }
    if let Some((objects, timeout)) = &options.cluster {
        results.push(check_cluster(objects.clone(), *timeout).await);
    }
    results
}

/// Warnings for the CA behind `fetched`: its intermediates and the roots of its bundle that
/// expire within 60 days ([`expiry::warnings`]).
pub fn ca_expiry_warnings(fetched: &FetchedSvid, now: SystemTime) -> Vec<String> {
    let intermediates = fetched
        .svid
        .chain()
        .iter()
        .skip(1)
        .map(|c| CertSummary::of(c));
    let roots = certificates_from_der(&fetched.bundle_der)
        .unwrap_or_default()
        .into_iter()
        .map(|c| CertSummary::of(&c));
    let certs: Vec<(&'static str, CertSummary)> = intermediates
        .map(|c| ("intermediate", c))
        .chain(roots.map(|c| ("root", c)))
        .collect();
    expiry::warnings(certs.iter().map(|(k, c)| (*k, c)), unix_seconds(now))
}

/// `--cluster`: the replicas' reports, summarised, with the warnings `lanyard ca status` gives.
async fn check_cluster(objects: crate::ca::CaObjects, timeout: Duration) -> CheckResult {
    let namespace = objects.namespace.clone();
    let reports = async {
        let cluster = crate::ca::Cluster::connect(objects, timeout).await?;
        cluster.reports().await
    };
    match reports.await {
        Err(e) => CheckResult::new("cluster", Err(e.to_string())),
        Ok((reports, unreadable)) => {
            let now = unix_seconds(SystemTime::now());
            let view = ClusterView::new(reports, now);
            let versions = view.versions();
            let served: Vec<String> = versions
                .iter()
                .filter(|(_, c)| c.replicas > 0)
                .map(|(v, c)| format!("{v} by {} replicas", c.replicas))
                .collect();
            let mut result = CheckResult::new(
                "cluster",
                Ok(format!(
                    "{} replicas report in namespace {namespace} (bundle {}), {} agents acknowledged",
                    view.replicas.len(),
                    if served.is_empty() {
                        "none".to_owned()
                    } else {
                        served.join(", ")
                    },
                    view.agents().len()
                )),
            );
            result.warnings = crate::ca::status::cluster_warnings(&view, &[], now);
            result.warnings.extend(unreadable);
            result
        }
    }
}

async fn check_server(server: &HostPort, bundle: &Path) -> Result<String, String> {
    let pem = std::fs::read(bundle).map_err(|e| format!("reading {}: {e}", bundle.display()))?;
    let roots = certificates_from_pem(&pem).map_err(|e| format!("{}: {e}", bundle.display()))?;
    let td = trust_domain_of(&roots).map_err(|e| format!("{}: {e}", bundle.display()))?;
    let bundles = BundleSet::from(TrustBundle::from_x509_authorities(td.clone(), roots));
    let store = Arc::new(SvidStore::new(bundles));
    let expected = server_id(&td);
    let config = client_config_optional_svid(
        store,
        Arc::new(ExactId(expected.clone())),
        vec![b"h2".to_vec()],
    );
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect((server.host(), server.port()))
            .await
            .map_err(|e| format!("cannot connect to {server}: {e}"))?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(unused_server_name(), tcp)
            .await
            .map_err(|e| format!("TLS with {server} failed: {e}"))
    };
    tokio::time::timeout(CHECK_TIMEOUT, handshake)
        .await
        .map_err(|_| format!("no TLS answer from {server} in {CHECK_TIMEOUT:?}"))??;
    Ok(format!("{server} is {expected}"))
}

async fn fetch_svids(socket: &Path) -> Result<Vec<FetchedSvid>, String> {
    let fetch = async {
        let mut client = WorkloadClient::connect(socket, CHECK_TIMEOUT).await?;
        client.x509_svids().await
    };
    match fetch.await {
        Ok(svids) => Ok(svids),
        Err(FetchError::Connect(e)) => Err(format!("cannot reach the agent: {e}")),
        Err(FetchError::Status { status, .. }) => {
            Err(format!("the agent refused: {}", status.message()))
        }
        Err(FetchError::Timeout { .. }) => Err("the agent did not answer in time".to_owned()),
        Err(FetchError::StreamEnded { .. }) => {
            Err("the agent closed the stream without an answer".to_owned())
        }
        Err(FetchError::Empty { .. }) => Err("the agent returned no SVID".to_owned()),
        Err(e @ FetchError::Unusable { .. }) => Err(format!("unusable SVID from the agent: {e}")),
    }
}

/// Whether the default SVID is valid at `now` and for at least `min_validity` more.
pub fn check_validity(
    svids: &[X509Svid],
    now: SystemTime,
    min_validity: Duration,
) -> Result<String, String> {
    let svid = svids
        .first()
        .ok_or_else(|| "the agent returned no SVID".to_owned())?;
    let id = svid.spiffe_id();
    if now < svid.not_before() {
        return Err(format!("{id} is not valid yet"));
    }
    let left = svid
        .not_after()
        .duration_since(now)
        .map_err(|_| format!("{id} has expired"))?;
    let left_text = humantime::format_duration(Duration::from_secs(left.as_secs()));
    if left < min_validity {
        return Err(format!(
            "{id} expires in {left_text}, less than the required {}",
            humantime::format_duration(min_validity)
        ));
    }
    Ok(format!("{id} valid for {left_text}"))
}
