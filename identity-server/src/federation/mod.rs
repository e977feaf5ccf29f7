//! Federation with other trust domains (SPIFFE Federation standard).
//!
//! - [`config`]: `[[federation]]` in `--config`, checked into federated domains.
//! - [`FederatedBundles`]: the federated trust domains' bundles this replica holds now, one
//!   per trust domain, watched by the agents' bundle feeds (`WatchBundleResponse.federated_bundles`).
//!
//! Serving this trust domain's bundle endpoint and fetching the others' are separate tasks
//! started by [`crate::run`] from [`FederationSettings`].

pub mod config;

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
    #[error("cannot listen on {addr} (--bundle-endpoint): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Starts what `config.federation` asks for: the bundle endpoint (announced to
/// `on_listening` as `"bundle-endpoint"`), the fetcher of every federated trust domain's
/// bundle into `federated`, and in cluster mode the `LanyardFederation` informer.
/// `server_svid` is the server's own SVID store (the `https_spiffe` endpoint presents it).
pub async fn start(
    config: &crate::config::ServerConfig,
    authority: Arc<crate::authority::Authority>,
    server_svid: Arc<lanyard_svid::SvidStore>,
    federated: FederatedBundles,
    on_listening: &impl Fn(&'static str, SocketAddr),
) -> Result<Vec<tokio::task::JoinHandle<()>>, FederationError> {
    // Filled in by the federation work (bundle endpoint, fetcher, informer).
    let _ = (config, authority, server_svid, federated, on_listening);
    Ok(Vec::new())
}
