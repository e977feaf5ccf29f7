//! `lanyard-agent run`: wires the server connection, node attestation, the feeds, the
//! certificate manager, the health listener and the Workload API together.
//!
//! [`Agent::start`] is everything but the listeners (tests drive it directly); [`run`] adds
//! the health listener, the CSI plugin's socket when configured (up before attestation, so
//! the kubelet can publish while the agent attests), and the Workload API socket (with
//! `lanyard.discovery.v1` on it, fed by the server's `DiscoveryFeed`, and the pod sockets the
//! CSI plugin published) and runs until shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use futures::StreamExt;
use lanyard_proto::identity::v1 as wire;
use lanyard_svid::tls::SvidStore;
use lanyard_svid::{BundleSet, TrustBundle, TrustDomain};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::WatchStream;

use crate::attest::WorkloadAttestor;
use crate::config::AgentConfig;
use crate::csi::{self, CsiError, CsiMetrics, CsiNode};
use crate::identities::WorkloadIdentities;
use crate::manager::resolve::NodeView;
use crate::manager::{CertificateManager, ManagerSettings};
use crate::metrics::AgentMetrics;
use crate::node_svid::{NodeAttestError, NodeSvidKeeper};
use crate::server_client::bundle_ack::bundle_ack;
use crate::server_client::bundle_file::{self, BundleFile};
use crate::server_client::discovery_cache::{CacheSettings, DiscoveryCache};
use crate::server_client::federated::FederatedFeed;
use crate::server_client::feeds::{self, AckSource, BundleFeed};
use crate::server_client::{ServerClient, ServerError, discovery_feed};
use crate::socket::{self, ConnectionLimits, PodSockets, Services};
use crate::workload_api::{self, WorkloadApiMetrics};

/// Why the agent could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("trust bundle {path}: {message}")]
    TrustBundle { path: PathBuf, message: String },
    #[error("{0}")]
    Server(ServerError),
    #[error("node attestation failed ({0}): {msg}", msg = .0.message())]
    Attest(NodeAttestError),
    #[error("binding {role} listener on {addr}: {source}")]
    Bind {
        role: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Socket(#[from] socket::ServeError),
    #[error("{0}")]
    Csi(#[from] CsiError),
    #[error(
        "the server attested this agent as node {attested:?}, but --node-name says {expected:?}: the token or join token belongs to another node"
    )]
    WrongNode { expected: String, attested: String },
}

/// What `/readyz` checks: attested, and a bundle from the server is in.
#[derive(Debug, Default)]
pub struct Readiness {
    attested: AtomicBool,
    server_bundle: AtomicBool,
}

impl Readiness {
    pub fn check(&self) -> Result<(), String> {
        if !self.attested.load(Ordering::Relaxed) {
            return Err("not attested to the server yet".into());
        }
        if !self.server_bundle.load(Ordering::Relaxed) {
            return Err("no trust bundle from the server yet".into());
        }
        Ok(())
    }
}

/// A running agent, minus its listeners. Dropping it stops its tasks.
pub struct Agent {
    pub trust_domain: TrustDomain,
    pub manager: CertificateManager,
    pub node: Arc<NodeSvidKeeper>,
    pub store: Arc<SvidStore>,
    pub client: Arc<ServerClient>,
    pub metrics: Arc<AgentMetrics>,
    pub readiness: Arc<Readiness>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Agent {
    /// Reads the bootstrap bundle, attests (or loads the saved node SVID), then starts the
    /// manager, the node SVID renewal and the server feeds. Returns once attested; transient
    /// failures are retried meanwhile (see [`NodeSvidKeeper::start`]).
    pub async fn start(
        config: &AgentConfig,
        metrics: Arc<AgentMetrics>,
        readiness: Arc<Readiness>,
    ) -> Result<Self, RunError> {
        let (trust_domain, bootstrap) = read_trust_bundle(config)?;
        let store = Arc::new(SvidStore::new(bootstrap.clone()));
        let bundle_file = BundleFile {
            path: config.trust_bundle.clone(),
            trust_domain: trust_domain.clone(),
        };
        let client = Arc::new(
            ServerClient::new(&config.server, store.clone(), &trust_domain)
                .map_err(RunError::Server)?
                .with_bundle_file(bundle_file),
        );
        let manager =
            CertificateManager::new(client.clone(), ManagerSettings::default(), metrics.clone());
        manager.set_bundles(bootstrap);
        let mut tasks = vec![manager.spawn()];

        let apply = BundleApplier {
            trust_domain: trust_domain.clone(),
            store: store.clone(),
            manager: manager.clone(),
            readiness: readiness.clone(),
        };
        let node = Arc::new(NodeSvidKeeper::new(
            client.clone(),
            store.clone(),
            trust_domain.clone(),
            config.method.as_ref().map(clone_method),
            config.data_dir.clone(),
            metrics.clone(),
            Box::new({
                let apply = apply.clone();
                move |b: &wire::Bundle| apply.apply(b)
            }),
        ));
        tracing::info!(server = %client.address(), trust_domain = %trust_domain, "attesting to the server");
        node.start().await.map_err(RunError::Attest)?;
        if let Some(expected) = &config.node_name {
            let attested = node
                .current()
                .and_then(|svid| lanyard_svid::reserved::parse_agent_id(svid.spiffe_id()))
                .map(|agent| agent.node)
                .unwrap_or_default();
            if &attested != expected {
                return Err(RunError::WrongNode {
                    expected: expected.clone(),
                    attested,
                });
            }
        }
        readiness.attested.store(true, Ordering::Relaxed);
        manager.set_attested(true);
        tasks.push(tokio::spawn(node.clone().run_renewals()));

        // The manager mints only while the node SVID is valid.
        let mut node_svid = node.subscribe();
        let (watch_manager, watch_ready) = (manager.clone(), readiness.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let attested = node_svid.borrow_and_update().is_some();
                watch_manager.set_attested(attested);
                watch_ready.attested.store(attested, Ordering::Relaxed);
                if node_svid.changed().await.is_err() {
                    return;
                }
            }
        }));

        let acks = HeldRoots {
            trust_domain: trust_domain.clone(),
            manager: manager.clone(),
            node: node.clone(),
        };
        let changes = futures::stream::select(
            WatchStream::from_changes(manager.changes()).map(|_| ()),
            WatchStream::from_changes(node.subscribe()).map(|_| ()),
        )
        .boxed();
        let bundle_feed = BundleFeed {
            api: client.clone(),
            acks: Arc::new(acks),
            changes,
            metrics: metrics.clone(),
            // Federated bundles go to the Workload API only, never to the TLS `store`.
            federated: FederatedFeed::new(trust_domain.clone(), {
                let manager = manager.clone();
                move |set| manager.set_federated_bundles(set)
            }),
        };
        tasks.push(bundle_feed.spawn(move |b| apply.apply(b)));
        let (view_manager, view_td) = (manager.clone(), trust_domain.clone());
        tasks.push(feeds::spawn_node_feed(client.clone(), move |msg| {
            view_manager.set_view(NodeView::from_wire(msg, &view_td));
        }));

        Ok(Self {
            trust_domain,
            manager,
            node,
            store,
            client,
            metrics,
            readiness,
            tasks,
        })
    }

    /// The agent as the Workload API sees it.
    pub fn identities(&self) -> Arc<dyn WorkloadIdentities> {
        Arc::new(self.manager.clone())
    }
}

/// Runs the agent until `shutdown` resolves. `on_listening` sees the health listener; the
/// Workload API announces its socket itself.
pub async fn run(
    config: AgentConfig,
    on_listening: impl Fn(&'static str, SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let connection_limits = ConnectionLimits::default();
    socket::open_files::raise_for(&connection_limits);
    let mut registry = Registry::default();
    let metrics = AgentMetrics::register(&mut registry);
    let api_metrics = WorkloadApiMetrics::register(&mut registry);
    let csi_metrics = config
        .csi
        .as_ref()
        .map(|_| CsiMetrics::register(&mut registry));
    let readiness = Arc::new(Readiness::default());

    // Health first, so /readyz answers (not ready) while we attest.
    let mut health_task = None;
    if let Some(addr) = config.health {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::Bind {
                role: "health",
                addr,
                source,
            })?;
        on_listening("health", listener.local_addr().unwrap_or(addr));
        let ready = readiness.clone();
        health_task = Some(tokio::spawn(lanyard_telemetry::serve_health(
            listener,
            Arc::new(registry),
            Arc::new(move || ready.check()),
        )));
    }

    // Shutdown also ends attestation: an agent that cannot reach its server must still stop
    // when asked, not at the end of the kubelet's grace period.
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));

    // The CSI plugin: what an earlier run published is restored first (its pod sockets are
    // bound once the Workload API serves), then the kubelet's socket.
    let pod_sockets = PodSockets::new();
    let mut csi_task = None;
    if let (Some(csi_config), Some(csi_metrics)) = (&config.csi, csi_metrics) {
        let node = CsiNode::restore(
            csi_config.node_id.clone(),
            &csi_config.pods_dir,
            csi_config.state_dir.clone(),
            pod_sockets.clone(),
            csi_metrics,
        )
        .map_err(CsiError::from)?;
        let socket_path = csi_config.socket.clone();
        let stop = shutdown.clone();
        csi_task = Some(AbortOnDrop(tokio::spawn(async move {
            csi::serve(&socket_path, Arc::new(node), stop).await
        })));
    }

    let result: Result<(), RunError> = async {
        let discovery_metrics = metrics.discovery.clone();
        let agent = tokio::select! {
            started = Agent::start(&config, metrics, readiness) => started?,
            () = shutdown.clone() => {
                tracing::info!("shutting down before the node was attested");
                return Ok(());
            }
        };
        let cache = Arc::new(DiscoveryCache::with_metrics(
            CacheSettings::default(),
            discovery_metrics,
        ));
        let discovery_feed = discovery_feed::spawn(
            cache.clone(),
            discovery_feed::FeedTarget {
                address: agent.client.address().to_owned(),
                store: agent.store.clone(),
                trust_domain: agent.trust_domain.clone(),
            },
        );
        let services = Services::new()
            .workload_api(
                agent.identities(),
                workload_api::Limits::default(),
                api_metrics,
            )
            .discovery(cache, agent.identities())
            .pod_sockets(pod_sockets);
        let served = socket::serve(
            &config.socket,
            Arc::new(WorkloadAttestor::default()),
            connection_limits,
            services,
            shutdown,
        )
        .await;
        discovery_feed.abort();
        served?;
        drop(agent);
        Ok(())
    }
    .await;
    if let Some(task) = health_task {
        task.abort();
    }
    result?;
    // Stopped by the same shutdown: wait for it to drain and remove its socket. (On an
    // error above, dropping the task's guard aborts it, which removes the socket too.)
    if let Some(mut task) = csi_task {
        match (&mut task.0).await {
            Ok(served) => served?,
            Err(e) => tracing::error!(error = %e, "the CSI plugin's task failed"),
        }
    }
    Ok(())
}

/// Aborts a task when dropped (its future dropped: its guards run).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Applies a bundle from the server to the TLS store and the Workload API, after checks.
#[derive(Clone)]
struct BundleApplier {
    trust_domain: TrustDomain,
    store: Arc<SvidStore>,
    manager: CertificateManager,
    readiness: Arc<Readiness>,
}

impl BundleApplier {
    fn apply(&self, wire: &wire::Bundle) {
        let bundle = match TrustBundle::try_from(wire) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("ignoring a bundle from the server: {e}");
                return;
            }
        };
        if bundle.trust_domain() != &self.trust_domain {
            tracing::warn!(got = %bundle.trust_domain(), "ignoring a bundle for another trust domain");
            return;
        }
        if bundle.x509_authorities().is_empty() {
            tracing::warn!("ignoring a bundle without X.509 authorities (it would trust nothing)");
            return;
        }
        let set = BundleSet::from(bundle);
        if *self.store.bundles() != set {
            tracing::info!(
                roots = wire.x509_authorities.len(),
                sequence = wire.sequence,
                "trust bundle from the server in use"
            );
        }
        self.store.update_bundles(set.clone());
        self.manager.set_bundles(set);
        self.readiness.server_bundle.store(true, Ordering::Relaxed);
    }
}

/// What the agent acknowledges on `SyncBundle`: the bundle the Workload API serves, and the
/// roots of it that the node SVID and the workload SVIDs held chain to.
struct HeldRoots {
    trust_domain: TrustDomain,
    manager: CertificateManager,
    node: Arc<NodeSvidKeeper>,
}

impl AckSource for HeldRoots {
    fn current(&self) -> Option<wire::BundleAck> {
        let bundles = self.manager.bundles();
        let bundle = bundles.get(&self.trust_domain)?;
        let node = self.node.current();
        let workloads = self.manager.held_svids();
        let chains = node.iter().chain(&workloads).map(|svid| svid.chain());
        Some(bundle_ack(bundle, chains, SystemTime::now()))
    }
}

fn clone_method(m: &crate::node_svid::AttestMethod) -> crate::node_svid::AttestMethod {
    use crate::node_svid::AttestMethod;
    match m {
        AttestMethod::JoinToken(t) => AttestMethod::JoinToken(t.clone()),
        AttestMethod::K8sPsat { token_path } => AttestMethod::K8sPsat {
            token_path: token_path.clone(),
        },
    }
}

/// The `--trust-bundle` roots, and the trust domain (given, or from the roots' URI SAN).
fn read_trust_bundle(config: &AgentConfig) -> Result<(TrustDomain, BundleSet), RunError> {
    let path = &config.trust_bundle;
    let fail = |message: String| RunError::TrustBundle {
        path: path.clone(),
        message,
    };
    let roots = bundle_file::read_roots(path).map_err(|e| fail(e.to_string()))?;
    let trust_domain = match &config.trust_domain {
        Some(td) => td.clone(),
        None => trust_domain_of(&roots).map_err(fail)?,
    };
    let bundle = TrustBundle::from_x509_authorities(trust_domain.clone(), roots);
    Ok((trust_domain, BundleSet::from(bundle)))
}

pub use lanyard_svid::bundle::trust_domain_of;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_attestation_and_a_server_bundle() {
        let r = Readiness::default();
        assert!(r.check().unwrap_err().contains("not attested"));
        r.attested.store(true, Ordering::Relaxed);
        assert!(r.check().unwrap_err().contains("bundle"));
        r.server_bundle.store(true, Ordering::Relaxed);
        assert!(r.check().is_ok());
    }
}
