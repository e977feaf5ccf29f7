//! `lanyard-server run`: wires configuration, CA source, attestation, the gRPC service, the
//! admin socket and the health listener together, and runs them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lanyard_proto::convert::unix_seconds;
use lanyard_proto::discovery::v1::discovery_feed_server::DiscoveryFeedServer;
use lanyard_proto::identity::v1::node_identity_server::NodeIdentityServer;
use lanyard_svid::BundleSet;
use lanyard_svid::tls::{SvidStore, server_config_optional_client_auth};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::admin::{self, AdminHandler, AdminRequest, AdminResponse};
use crate::authority::{Authority, SigningMaterial};
use crate::bundle_acks::BundleAcks;
use crate::ca_store::DataDirCa;
use crate::config::{Mode, ServerConfig};
use crate::discovery::{DiscoveryFeedService, DiscoverySources, FeedLimits};
use crate::entry_store::EntryStore;
use crate::evictions::Evictions;
use crate::join_token::JoinTokens;
use crate::k8s::ca_report::{KubeReportSink, ReportSettings};
use crate::k8s::ca_source::KubeCaSource;
use crate::k8s::identities::IdentityInformer;
use crate::k8s::identity_status::{KubeStatusSink, StatusSettings};
use crate::k8s::pods::{PodIndex, PodLookup};
use crate::k8s::token_review::KubeTokenReviewer;
use crate::metrics::ServerMetrics;
use crate::node_attest::{K8sPsat, Method, NodeAttestor};
use crate::registry_view::Registrations;
use crate::service::{IdentityService, ServiceSettings};
use crate::{server_svid, tls_listener};
use lanyard_daemon::private_file::ensure_dir;

/// Largest gRPC message accepted (a batch of 500 CSRs is well under this).
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// How long shutdown waits for open calls before closing them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long shutdown waits for the CA report to be deleted and the status Lease released.
const REPORT_DELETE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest join-token lifetime an operator may ask for.
const MAX_JOIN_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "data dir {path} is in use by another lanyard-server (it holds {lock}); stop that one first, or give this one its own --data-dir"
    )]
    DataDirInUse {
        path: std::path::PathBuf,
        lock: std::path::PathBuf,
    },
    #[error("{0}")]
    CaStore(#[from] crate::ca_store::CaStoreError),
    #[error("{0}")]
    Evictions(#[from] crate::evictions::EvictionError),
    #[error("{0}")]
    Install(#[from] crate::authority::InstallError),
    #[error("Kubernetes client: {0} (set KUBECONFIG, or run in a pod)")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    CaSource(#[from] crate::k8s::ca_source::CaSourceError),
    #[error("server SVID: {0}")]
    ServerSvid(#[from] server_svid::ServerSvidError),
    #[error("cannot listen on {addr} (--{flag}, the {role} listener): {source}", flag = listen_flag(role))]
    Bind {
        role: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin socket: {0}")]
    Admin(#[from] admin::AdminError),
    #[error("federation: {0}")]
    Federation(#[from] crate::federation::FederationError),
    #[error("OIDC discovery: {0}")]
    Oidc(#[from] crate::oidc::OidcError),
}

/// Runs the server until `shutdown` resolves. `on_listening` sees each bound listener. In
/// cluster mode `kube` is the API client to use; `None` takes it from `KUBECONFIG` or the
/// in-cluster environment.
pub async fn run(
    config: ServerConfig,
    kube: Option<kube::Client>,
    on_listening: impl Fn(&'static str, SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    // The listeners first: a start that cannot listen fails before it writes anything, so a
    // port in use never leaves a new CA (or a lock file) in a data dir. They are announced
    // below, when they serve.
    let grpc_listener = bind("grpc", config.listen).await?;
    let health_listener = match config.health {
        Some(addr) => Some(bind("health", addr).await?),
        None => None,
    };
    let bundle_listener = match &config.federation.bundle_endpoint {
        Some(endpoint) => Some(bind("bundle-endpoint", endpoint.listen).await?.0),
        None => None,
    };
    let oidc_listener = match &config.oidc {
        Some(oidc) => Some(bind("oidc", oidc.listen).await?.0),
        None => None,
    };
    // A data dir that does not exist yet is a first start: the only time a CA is created
    // without --init.
    let first_start = config.data_dir.as_ref().is_some_and(|dir| !dir.exists());
    // Held until this function returns: one server per data dir.
    let _lock = match &config.data_dir {
        Some(dir) => {
            ensure_dir(dir, 0o700).map_err(|source| RunError::DataDir {
                path: dir.clone(),
                source,
            })?;
            Some(lock_data_dir(dir)?)
        }
        None => None,
    };
    let mut registry = Registry::default();
    let metrics = ServerMetrics::register(&mut registry);
    let reload_status = crate::entry_reload::ReloadStatus::register(&mut registry);
    // A JWT key that stops signing stays published until the tokens it signed expire.
    let authority = Arc::new(Authority::with_retired_jwt_grace(
        config.trust_domain.clone(),
        crate::authority::retired_jwt_grace(longest_svid_ttl(&config)),
    ));
    // A departed agent's workloads live on its last bundle until their SVIDs run out.
    let acks = BundleAcks::remembering_departed(longest_svid_ttl(&config));

    let mut tasks = vec![crate::authority::spawn_retirer(authority.clone())];
    // Cluster mode: where this replica's CA report goes.
    let mut report_sink = None;
    let entries = EntryStore::new(config.entries.clone());
    // Cluster mode: the LanyardIdentity informers and, on one replica at a time, the status.
    let mut status_writer = None;
    // Cluster mode: the API client, for federation's LanyardFederation watch.
    let mut kube_client = None;
    let (attestor, pods, join_tokens, evictions, discovery) = match &config.mode {
        Mode::DataDir => {
            let Some(data_dir) = &config.data_dir else {
                unreachable!("the configuration requires --data-dir in data-dir mode")
            };
            let now = SystemTime::now();
            let had_ca = DataDirCa::exists(data_dir);
            let ca = if first_start || config.init {
                DataDirCa::load_or_create(data_dir, &config.trust_domain, now)?
            } else {
                DataDirCa::load_existing(data_dir, &config.trust_domain, now)?
            };
            authority.keep_retired_jwt(ca.retired_jwt.clone(), now);
            authority.install(
                SigningMaterial {
                    roots: vec![ca.root.cert_der().clone()],
                    issuer: ca.issuer,
                    jwt: ca.jwt,
                    published_jwt: Vec::new(),
                },
                now,
            )?;
            tasks.push(crate::ca_rotation::spawn(
                data_dir.clone(),
                config.trust_domain.clone(),
                authority.clone(),
            ));
            let tokens = Arc::new(JoinTokens::new());
            let evictions = Arc::new(Evictions::load(data_dir, !had_ca)?);
            let method = Method::JoinToken {
                tokens: tokens.clone(),
                evictions: evictions.clone(),
            };
            (
                NodeAttestor::new(config.trust_domain.clone(), method),
                None,
                Some(tokens),
                Some(evictions),
                DiscoverySources::empty_with(
                    config.trust_domain.clone(),
                    Registrations::fixed(config.registry_config()),
                ),
            )
        }
        Mode::Cluster(cluster) => {
            let client = match kube {
                Some(client) => client,
                None => kube::Client::try_default().await?,
            };
            kube_client = Some(client.clone());
            let pods = PodIndex::new();
            tasks.push(pods.spawn_watcher(client.clone()));
            let registrations = Registrations::unsynced(config.registry_config());
            let informer = IdentityInformer::new(config.registry_config(), registrations.clone());
            tasks.extend(informer.spawn(client.clone()));
            status_writer = Some((
                KubeStatusSink::new(client.clone(), &cluster.ca_secret.namespace),
                StatusSettings::new(&cluster.replica_name),
                informer,
                registrations.clone(),
            ));
            let discovery = DiscoverySources {
                trust_domain: config.trust_domain.clone(),
                registrations,
                pods: pods.clone(),
                services: Default::default(),
                slices: Default::default(),
            };
            tasks.push(discovery.services.spawn_watcher(
                client.clone(),
                "services",
                crate::k8s::services::ServiceInfo::from_service,
            ));
            tasks.push(discovery.slices.spawn_watcher(
                client.clone(),
                "endpointslices",
                crate::k8s::endpoint_slices::SliceInfo::from_slice,
            ));
            let source = KubeCaSource {
                client: client.clone(),
                trust_domain: config.trust_domain.clone(),
                secret: cluster.ca_secret.clone(),
                configmap: cluster.bundle_configmap.clone(),
                jwt_secret: cluster.ca_jwt_secret.clone(),
            };
            tasks.push(source.start(authority.clone()).await?);
            report_sink = Some(KubeReportSink::new(
                client.clone(),
                &cluster.ca_secret.namespace,
                &cluster.replica_name,
            ));
            let method = Method::K8sPsat(K8sPsat {
                reviewer: Arc::new(KubeTokenReviewer::new(client.clone())),
                pods: Arc::new(pods.clone()),
                allowed: cluster.agent_service_accounts.clone(),
                audience: cluster.audience.clone(),
            });
            (
                NodeAttestor::new(config.trust_domain.clone(), method),
                Some(pods),
                None,
                None,
                discovery,
            )
        }
    };
    tasks.push(spawn_ca_metrics(
        authority.clone(),
        acks.clone(),
        metrics.clone(),
    ));

    // Our own SVID first, so the listener never serves a handshake without one.
    let store = Arc::new(SvidStore::new(BundleSet::new()));
    let not_after = server_svid::refresh(&authority, &store)?;
    tasks.push(server_svid::spawn_rotation(
        authority.clone(),
        store.clone(),
        not_after,
    ));

    // Without a data dir (cluster mode only) there is no admin socket: its commands are
    // data-dir mode's, but `bundle show`, and the bundle is in the ConfigMap.
    // `[[entries]]` follow the --config file (and SIGHUP) from here on.
    tasks.push(crate::entry_reload::spawn(
        config.config_file.clone(),
        config.trust_domain.clone(),
        entries.clone(),
        reload_status.clone(),
    ));
    if let Some(data_dir) = &config.data_dir {
        tasks.push(admin::serve(
            data_dir,
            Arc::new(Admin {
                authority: authority.clone(),
                data_dir: matches!(config.mode, Mode::DataDir).then(|| data_dir.clone()),
                join_tokens,
                evictions,
                entry_show: admin::EntryShow {
                    entries: entries.clone(),
                    reload: reload_status,
                    default_x509_ttl: config.x509_ttl,
                    default_jwt_ttl: config.jwt_ttl,
                    k8s_nodes: matches!(config.mode, Mode::Cluster(_)),
                },
            }),
        )?);
    }

    if let Some((listener, addr)) = health_listener {
        let ready_authority = authority.clone();
        let ready_pods = pods.clone();
        let ready_registrations = discovery.registrations.clone();
        let readiness = move || -> Result<(), String> {
            if ready_authority.active().is_none() {
                return Err("CA not loaded".into());
            }
            if ready_pods.as_ref().is_some_and(|p| !p.is_synced()) {
                return Err("pods not listed yet".into());
            }
            if !ready_registrations.current().synced {
                return Err("LanyardIdentity resources or namespaces not listed yet".into());
            }
            Ok(())
        };
        on_listening("health", listener.local_addr().unwrap_or(addr));
        tasks.push(tokio::spawn(lanyard_telemetry::serve_health(
            listener,
            Arc::new(registry),
            Arc::new(readiness),
        )));
    }

    // Federation: the bundles of other trust domains (fetched from their bundle endpoints),
    // this trust domain's bundle endpoint, and OIDC discovery for JWT-SVIDs.
    let federated = crate::federation::FederatedBundles::new();
    tasks.extend(
        crate::federation::start(crate::federation::Context {
            config: &config,
            authority: authority.clone(),
            server_svid: store.clone(),
            federated: federated.clone(),
            metrics: metrics.clone(),
            kube: kube_client,
            bundle_listener,
            on_listening: &on_listening,
        })
        .await?,
    );
    if let (Some(oidc), Some(listener)) = (&config.oidc, oidc_listener) {
        tasks.push(crate::oidc::start(oidc, listener, authority.clone(), &on_listening).await?);
    }

    let service = Arc::new(IdentityService::new(
        ServiceSettings {
            trust_domain: config.trust_domain.clone(),
            x509_ttl: config.x509_ttl,
            jwt_ttl: config.jwt_ttl,
            node_ttl: config.node_ttl,
            max_svid_ttl: longest_svid_ttl(&config),
            entries: entries.clone(),
            registrations: discovery.registrations.clone(),
            mint_rate_limit: config.mint_rate_limit,
            attest_rate_limit: config.attest_rate_limit,
            jwt_issuer: config.jwt_issuer.clone(),
            federated: federated.clone(),
        },
        authority.clone(),
        Arc::new(attestor),
        pods.clone(),
        metrics.clone(),
        acks.clone(),
    ));
    // Feeds never end on their own: tell them at shutdown, so the graceful drain finishes.
    let (stop_feeds, feeds_stopping) = tokio::sync::watch::channel(false);
    // The status writer gives its Lease up at shutdown, so it is awaited, not aborted.
    let status_task = match (status_writer, &pods) {
        (Some((sink, settings, informer, registrations)), Some(pods)) => {
            Some(tokio::spawn(crate::k8s::identity_status::run(
                sink,
                settings,
                informer,
                registrations,
                pods.clone(),
                metrics.clone(),
                feeds_stopping.clone(),
            )))
        }
        _ => None,
    };
    // The report is deleted when the server stops, so its task is awaited, not aborted.
    let report_task = report_sink.map(|sink| {
        let settings = ReportSettings {
            replica: match &config.mode {
                Mode::Cluster(cluster) => cluster.replica_name.clone(),
                Mode::DataDir => unreachable!("reports are written in cluster mode only"),
            },
            longest_svid_ttl: longest_svid_ttl(&config),
        };
        tokio::spawn(crate::k8s::ca_report::run(
            sink,
            settings,
            authority.clone(),
            acks.clone(),
            feeds_stopping.clone(),
        ))
    });
    let shutdown = async move {
        shutdown.await;
        let _ = stop_feeds.send(true);
    };
    let discovery = DiscoveryFeedService::new(
        service.clone(),
        discovery,
        FeedLimits::default(),
        metrics.clone(),
        feeds_stopping,
    );
    let (listener, addr) = grpc_listener;
    on_listening("grpc", listener.local_addr().unwrap_or(addr));
    let tls = Arc::new(server_config_optional_client_auth(
        store,
        vec![b"h2".to_vec()],
    ));
    // Graceful shutdown waits for open calls, but agents hold their watch streams open forever:
    // after the grace period the server stops regardless.
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        let _ = stopping_tx.send(());
    };
    let routes = tonic::service::Routes::new(
        NodeIdentityServer::from_arc(service)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    )
    .add_service(
        DiscoveryFeedServer::new(discovery)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    );
    let serve = tls_listener::serve(
        listener,
        tls,
        routes,
        config.trust_domain.clone(),
        config.listener_limits.clone(),
        metrics.clone(),
        shutdown,
    );
    // The grace period runs beside the drain (a select on `stopping_rx` alone would drop
    // `serve` at the first signal and always wait out the whole grace period).
    let grace = async move {
        if stopping_rx.await.is_err() {
            return std::future::pending().await;
        }
        tokio::time::sleep(SHUTDOWN_GRACE).await;
        tracing::info!("grace period over; closing the remaining streams");
    };
    tokio::select! {
        () = serve => {}
        () = grace => {}
    }
    for task in tasks {
        task.abort();
    }
    // `stop_feeds` was dropped with the shutdown future, or sent: the CA report is being
    // deleted and the status Lease released, at once. A hung API server must not hold the exit.
    let report = async {
        if let Some(task) = report_task
            && tokio::time::timeout(REPORT_DELETE_TIMEOUT, task)
                .await
                .is_err()
        {
            tracing::warn!("CA report not deleted within {REPORT_DELETE_TIMEOUT:?}; it goes stale");
        }
    };
    let status = async {
        if let Some(task) = status_task
            && tokio::time::timeout(REPORT_DELETE_TIMEOUT, task)
                .await
                .is_err()
        {
            tracing::warn!(
                "status Lease not released within {REPORT_DELETE_TIMEOUT:?}; another replica takes it when it expires"
            );
        }
    };
    tokio::join!(report, status);
    Ok(())
}

/// The longest lifetime of anything the server issues: the default workload X.509 and JWT
/// TTLs, the node SVID TTL, and the static entries' own TTLs at start. Per-identity TTLs set
/// later (LanyardIdentity, reloaded entries) are capped to it when minting.
fn longest_svid_ttl(config: &ServerConfig) -> Duration {
    config
        .entries
        .iter()
        .flat_map(|e| [e.x509_ttl, e.jwt_ttl])
        .flatten()
        .chain([config.x509_ttl, config.node_ttl, config.jwt_ttl])
        .max()
        .unwrap_or_default()
}

/// The option that gives a listener's address.
fn listen_flag(role: &str) -> &'static str {
    match role {
        "health" => "health",
        "bundle-endpoint" => "bundle-endpoint",
        "oidc" => "oidc-listen",
        _ => "listen",
    }
}

/// A listener on `addr`, or the error naming its role and address.
async fn bind(role: &'static str, addr: SocketAddr) -> Result<(TcpListener, SocketAddr), RunError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { role, addr, source })?;
    Ok((listener, addr))
}

/// The data dir's lock file, locked exclusively (released when the file is closed, so also
/// when the process dies).
fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File, RunError> {
    use std::os::unix::fs::OpenOptionsExt;
    let lock = data_dir.join("server.lock");
    let io = |source| RunError::DataDir {
        path: lock.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(RunError::DataDirInUse {
            path: data_dir.to_owned(),
            lock,
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(io(source)),
    }
}

/// Keeps the CA gauges current: the expiry of the intermediate and of the first trust anchor
/// to expire (`ca_expiry`), of each certificate in use (`ca_cert_expiry`), and where this
/// replica's agents are against the bundle it serves, updated whenever the authority installs
/// new material or an agent's acknowledgement or stream changes.
fn spawn_ca_metrics(
    authority: Arc<Authority>,
    acks: Arc<BundleAcks>,
    metrics: Arc<ServerMetrics>,
) -> tokio::task::JoinHandle<()> {
    use crate::metrics::CertKind;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let not_after = |der: &[u8]| {
        X509Certificate::from_der(der)
            .ok()
            .map(|(_, c)| c.validity().not_after.timestamp())
    };
    let mut bundles = authority.subscribe_bundle();
    let mut ack_changes = acks.subscribe();
    tokio::spawn(async move {
        loop {
            if let Some(active) = authority.active() {
                let intermediate = unix_seconds(active.issuer.not_after());
                metrics.set_ca_expiry("intermediate", intermediate);
                let roots = active.bundle.x509_authorities();
                if let Some(at) = roots.iter().filter_map(|c| not_after(c.as_ref())).min() {
                    metrics.set_ca_expiry("anchor", at);
                }
                let fingerprint = |der: &[u8]| lanyard_svid::bundle::certificate_fingerprint(der);
                metrics.set_cert_expiries(
                    roots
                        .iter()
                        .map(|c| {
                            let at = not_after(c.as_ref()).unwrap_or(0);
                            (CertKind::Root, fingerprint(c.as_ref()), at)
                        })
                        .chain([(
                            CertKind::Intermediate,
                            fingerprint(active.issuer.cert_der().as_ref()),
                            intermediate,
                        )]),
                );
                metrics.set_bundle_agents(&active.bundle.version(), &acks.counts());
            }
            tokio::select! {
                changed = bundles.changed() => if changed.is_err() { return },
                changed = ack_changes.changed() => if changed.is_err() { return },
            }
        }
    })
}

/// The admin socket's requests, answered from the running server's state.
struct Admin {
    authority: Arc<Authority>,
    /// Data-dir mode: where the CA lives (`ca rotate-jwt-key` writes there).
    data_dir: Option<std::path::PathBuf>,
    join_tokens: Option<Arc<JoinTokens>>,
    evictions: Option<Arc<Evictions>>,
    entry_show: admin::EntryShow,
}

impl AdminHandler for Admin {
    fn handle(&self, request: AdminRequest) -> AdminResponse {
        let error = |message: String| AdminResponse::Error { message };
        match request {
            AdminRequest::TokenGenerate { node, ttl_secs } => {
                let Some(tokens) = &self.join_tokens else {
                    return error("join tokens exist only in data-dir mode; cluster mode attests by TokenReview".into());
                };
                let ttl = Duration::from_secs(ttl_secs);
                if ttl.is_zero() || ttl > MAX_JOIN_TOKEN_TTL {
                    return error("ttl must be between 1s and 7 days".into());
                }
                let node = node.unwrap_or_else(random_node_name);
                if lanyard_svid::reserved::agent_id(
                    self.authority.trust_domain(),
                    lanyard_svid::reserved::NodeAttestation::JoinToken,
                    &node,
                )
                .is_err()
                {
                    return error(format!(
                        "node name {node:?} must be letters, digits, '.', '-' or '_'"
                    ));
                }
                match tokens.generate(&node, ttl, SystemTime::now()) {
                    Ok(token) => {
                        tracing::info!(node, ttl_secs, "join token generated");
                        AdminResponse::Token { token, node }
                    }
                    Err(e) => error(e.message().into()),
                }
            }
            AdminRequest::AgentEvict { node } => {
                let Some(evictions) = &self.evictions else {
                    return error(
                        "eviction applies to join-token agents, which exist only in data-dir mode"
                            .into(),
                    );
                };
                match evictions.evict(&node, SystemTime::now()) {
                    Ok(()) => {
                        tracing::info!(node, "agent evicted");
                        AdminResponse::Evicted { node }
                    }
                    Err(e) => error(e.to_string()),
                }
            }
            AdminRequest::EntryShow { node } => self.entry_show.answer(node),
            AdminRequest::CaRotateJwtKey => match &self.data_dir {
                Some(data_dir) => admin::rotate_jwt_key(data_dir, &self.authority),
                None => error("in cluster mode the JWT key rotates with `lanyard ca rotate-root` (jwt-next.key, jwt-previous.key)".into()),
            },
            AdminRequest::BundleShow => match self.authority.active() {
                Some(active) => AdminResponse::Bundle {
                    pem: lanyard_svid::pem::encode_certificates(active.bundle.x509_authorities()),
                },
                None => error("the CA is not loaded yet".into()),
            },
        }
    }
}

fn random_node_name() -> String {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 6];
    let _ = SystemRandom::new().fill(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("node-{hex}")
}
