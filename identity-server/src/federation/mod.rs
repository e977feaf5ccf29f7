//! Federation with other trust domains (SPIFFE Federation standard).
//!
//! - [`config`]: `[[federation]]` in `--config`, checked into federated domains.
//! - [`FederatedBundles`]: the federated trust domains' bundles this replica holds now, one
//!   per trust domain, watched by the agents' bundle feeds (`WatchBundleResponse.federated_bundles`).
//! - [`endpoint`]: this trust domain's bundle endpoint (`--bundle-endpoint`, `https_spiffe` or
//!   `https_web`).
//! - [`fetch`]: one fetch of a federated trust domain's bundle, checked; its typed outcome.
//! - [`schedule`]: when to fetch again (refresh hint, backoff) and the per-domain fetch task.
//! - [`domains`]: the desired set (configuration, plus `LanyardFederation` resources in
//!   cluster mode) and one fetch task per domain in it.
//! - [`persist`]: data-dir mode keeps each fetched bundle in `<data-dir>/federation/<td>.json`.
//!
//! [`start`] starts them from [`FederationSettings`].

pub mod config;
pub mod domains;
pub mod endpoint;
pub mod fetch;
pub mod persist;
pub mod schedule;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use lanyard_registration::federation::FederatedDomain;
use lanyard_svid::{BundleSet, TrustBundle, TrustDomain};
use tokio::sync::watch;

/// What `lanyard-server run` was told about federation.
#[derive(Debug, Clone, Default)]
pub struct FederationSettings {
    /// `--bundle-endpoint`: serve this trust domain's bundle there.
    pub bundle_endpoint: Option<BundleEndpointSettings>,
    /// `[[federation]]` in `--config`: trust domains to fetch bundles from.
    pub domains: Vec<FederatedDomain>,
    /// Cluster mode: also fetch the trust domains of `LanyardFederation` resources
    /// (`--watch-federations`, default true in cluster mode).
    pub watch_resources: bool,
    /// Refresh and backoff bounds of the fetches (no flag: tests shorten them).
    pub timing: schedule::FetchTiming,
}

/// This replica's bundle endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleEndpointSettings {
    pub listen: SocketAddr,
    pub profile: ServedProfile,
}

/// How the bundle endpoint authenticates itself to fetchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServedProfile {
    /// `https_spiffe`: the server's own SVID (`spiffe://<td>/lanyard/server`).
    HttpsSpiffe,
    /// `https_web`: `--bundle-endpoint-cert` and `--bundle-endpoint-key` (PEM).
    HttpsWeb {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
}

/// The federated bundles held now. Clones share one value; every replace is seen by
/// [`FederatedBundles::subscribe`]rs.
#[derive(Debug, Clone)]
pub struct FederatedBundles {
    current: watch::Sender<Arc<BundleSet>>,
}

impl Default for FederatedBundles {
    fn default() -> Self {
        Self::new()
    }
}

impl FederatedBundles {
    pub fn new() -> Self {
        Self {
            current: watch::Sender::new(Arc::new(BundleSet::new())),
        }
    }

    /// Every federated bundle held now.
    pub fn current(&self) -> Arc<BundleSet> {
        self.current.borrow().clone()
    }

    /// Sees every change after the current value.
    pub fn subscribe(&self) -> watch::Receiver<Arc<BundleSet>> {
        self.current.subscribe()
    }

    /// Holds `bundle` for its trust domain (replacing the one held); subscribers are told only
    /// when it differs.
    pub fn insert(&self, bundle: TrustBundle) {
        self.current.send_if_modified(|set| {
            if set.get(bundle.trust_domain()) == Some(&bundle) {
                return false;
            }
            let mut next = (**set).clone();
            next.insert(bundle);
            *set = Arc::new(next);
            true
        });
    }

    /// Stops holding `trust_domain`'s bundle (its federation was removed).
    pub fn remove(&self, trust_domain: &TrustDomain) {
        self.current.send_if_modified(|set| {
            if set.get(trust_domain).is_none() {
                return false;
            }
            let mut next = (**set).clone();
            next.remove(trust_domain);
            *set = Arc::new(next);
            true
        });
    }
}

/// Why federation could not start.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("bundle endpoint certificate (--bundle-endpoint-cert/-key) {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("bundle endpoint TLS: {0}")]
    Tls(String),
}

/// What [`start`] needs from the running server.
pub struct Context<'a, L: Fn(&'static str, SocketAddr)> {
    pub config: &'a crate::config::ServerConfig,
    pub authority: Arc<crate::authority::Authority>,
    /// The server's own SVID store (the `https_spiffe` endpoint presents it).
    pub server_svid: Arc<lanyard_svid::SvidStore>,
    pub federated: FederatedBundles,
    pub metrics: Arc<crate::metrics::ServerMetrics>,
    /// Cluster mode: the API client, to watch `LanyardFederation` resources.
    pub kube: Option<kube::Client>,
    /// `--bundle-endpoint`, bound.
    pub bundle_listener: Option<tokio::net::TcpListener>,
    pub on_listening: &'a L,
}

/// Starts what `config.federation` asks for: the bundle endpoint (announced to
/// `on_listening` as `"bundle-endpoint"`), the fetcher of every federated trust domain's
/// bundle into `federated`, and in cluster mode the `LanyardFederation` informer.
pub async fn start<L: Fn(&'static str, SocketAddr)>(
    cx: Context<'_, L>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, FederationError> {
    let settings = &cx.config.federation;
    let mut tasks = Vec::new();
    if let (Some(endpoint), Some(listener)) = (&settings.bundle_endpoint, cx.bundle_listener) {
        tasks.push(
            endpoint::start(
                endpoint,
                listener,
                cx.authority.clone(),
                cx.server_svid.clone(),
                cx.on_listening,
            )
            .await?,
        );
    }
    let resources = match (settings.watch_resources, cx.kube) {
        (true, Some(client)) => {
            // The same class policy as LanyardIdentity resources.
            let (rx, task) = crate::k8s::federations::spawn_for_class(
                client,
                cx.config.trust_domain.clone(),
                cx.config.registry_config().class,
            );
            tasks.push(task);
            Some(rx)
        }
        (true, None) => {
            tracing::warn!("LanyardFederation resources not watched: no Kubernetes client");
            None
        }
        (false, _) => None,
    };
    if settings.domains.is_empty() && resources.is_none() {
        return Ok(tasks);
    }
    // Cluster mode keeps fetched bundles in memory only (no data dir): a restarted replica
    // starts again from the bootstrap bundles.
    let persist_dir = match cx.config.mode {
        crate::config::Mode::DataDir => cx.config.data_dir.as_ref().map(|d| d.join(persist::DIR)),
        crate::config::Mode::Cluster(_) => None,
    };
    let sink = schedule::Sink {
        federated: cx.federated,
        metrics: Some(cx.metrics),
        persist_dir,
    };
    let domains = domains::Domains::new(settings.timing, sink);
    tasks.push(tokio::spawn(domains::run(
        domains,
        settings.domains.clone(),
        resources,
    )));
    Ok(tasks)
}
