//! `lanyard check`: is this node's Lanyard working? Each check prints one line, `ok` or
//! `FAIL` with the reason, and the command fails if any check failed.
//!
//! - the server: a TLS handshake to `--server` that verifies the server's certificate against
//!   `--trust-bundle` and its SPIFFE ID against the one agents pin (`/lanyard/server`);
//! - the socket: a Workload API `FetchX509SVID` on the agent's socket answers;
//! - the local SVID: the caller's SVID is valid now and for at least `--min-validity`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lanyard_client::fetch::{FetchError, WorkloadClient};
use lanyard_daemon::address::HostPort;
use lanyard_svid::bundle::{certificates_from_pem, trust_domain_of};
use lanyard_svid::reserved::server_id;
use lanyard_svid::tls::{ExactId, SvidStore, client_config_optional_svid, unused_server_name};
use lanyard_svid::{BundleSet, TrustBundle, X509Svid};

/// How long each check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub name: &'static str,
    pub outcome: Result<String, String>,
}

impl std::fmt::Display for CheckResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.outcome {
            Ok(detail) => write!(f, "ok    {:<10} {detail}", self.name),
            Err(why) => write!(f, "FAIL  {:<10} {why}", self.name),
        }
    }
}

/// What to check.
pub struct CheckOptions {
    /// `HOST:PORT`; a name is resolved, and each of its addresses tried in turn.
    pub server: Option<HostPort>,
    pub trust_bundle: Option<PathBuf>,
    pub socket: PathBuf,
    pub min_validity: Duration,
}

/// Runs every applicable check.
pub async fn run_checks(options: &CheckOptions) -> Vec<CheckResult> {
    let mut results = Vec::new();
    if let Some(server) = &options.server {
        let outcome = match &options.trust_bundle {
            Some(bundle) => check_server(server, bundle).await,
            None => Err("--server needs --trust-bundle to verify the server".to_owned()),
        };
        results.push(CheckResult {
            name: "server",
            outcome,
        });
    }
    match fetch_svids(&options.socket).await {
        Err(why) => results.push(CheckResult {
            name: "socket",
            outcome: Err(why),
        }),
        Ok(svids) => {
            results.push(CheckResult {
                name: "socket",
                outcome: Ok(format!(
                    "{} answers the Workload API",
                    options.socket.display()
                )),
            });
            results.push(CheckResult {
                name: "svid",
                outcome: check_validity(&svids, SystemTime::now(), options.min_validity),
            });
        }
    }
    results
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

async fn fetch_svids(socket: &Path) -> Result<Vec<X509Svid>, String> {
    let fetch = async {
        let mut client = WorkloadClient::connect(socket, CHECK_TIMEOUT).await?;
        client.x509_svids().await
    };
    match fetch.await {
        Ok(svids) => Ok(svids.into_iter().map(|fetched| fetched.svid).collect()),
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
