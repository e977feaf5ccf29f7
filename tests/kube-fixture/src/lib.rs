//! A wire-compatible Kubernetes API server for tests: real REST paths, real JSON
//! (`k8s-openapi` types), real HTTPS, and the semantics Lanyard's code depends on, so the
//! server's Kubernetes mode can be tested through the real `kube` client with no cluster.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use k8s_openapi::api::core::v1::Pod;
//! use kube_fixture::{FixtureOptions, KubeFixture};
//!
//! let _ = rustls::crypto::ring::default_provider().install_default();
//! let fixture = KubeFixture::start(FixtureOptions::default()).await?;
//! let client = fixture.admin_client()?;
//! let pods: kube::Api<Pod> = kube::Api::namespaced(client, "default");
//! assert!(pods.list(&Default::default()).await?.items.is_empty());
//! # Ok(()) }
//! ```
//!
//! # What it serves
//! | API | resources | verbs |
//! |---|---|---|
//! | `v1` | pods, services, secrets, configmaps, serviceaccounts (namespaced); namespaces, nodes | get, list, watch, create, update, patch, delete; `status` for pods, services, namespaces, nodes |
//! | `discovery.k8s.io/v1` | endpointslices | same |
//! | `rbac.authorization.k8s.io/v1` | roles, rolebindings, clusterroles, clusterrolebindings | same; they drive authorization |
//! | `coordination.k8s.io/v1` | leases | same (optimistic concurrency makes them locks) |
//! | `apiextensions.k8s.io/v1` | customresourcedefinitions (cluster) | same; `status`; a CRD is checked and set `Established` at once |
//! | `GROUP/VERSION` of each stored CRD | its plural, cluster or namespaced | same; `status` when the version declares it; schema pruning and validation |
//! | `authentication.k8s.io/v1` | tokenreviews | create |
//!
//! plus `/version`, `/healthz`, `/livez`, `/readyz` without authentication.
//!
//! # How faithful it is, module by module
//! Each module's docs say which Kubernetes documentation it follows and what it simplifies:
//! - [`store`]: one global resourceVersion, optimistic concurrency (409), no-op writes,
//!   status subresource, server-owned `metadata.generation` for custom resources and CRDs
//!   (built-in types keep what clients write), bounded history and 410 for compacted versions
//!   (<https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions>).
//! - [`watch`]: chunked newline-delimited events, selector
//!   transitions, bookmarks, `timeoutSeconds`, in-stream 410
//!   (<https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes>).
//! - [`resources`]: the served types, shared as [`resources::TypeRef`]: built-in
//!   `k8s-openapi` types (strict decoding) and the versions of stored CRDs.
//! - [`router`]: paths, verbs, list semantics; **`limit` is ignored**
//!   (one complete page), `dryRun` refused.
//! - [`selectors`]: label and field selectors, per-type supported fields (`spec.nodeName`...).
//! - [`tokens`]: bound ServiceAccount tokens and TokenReview
//!   (<https://kubernetes.io/docs/reference/access-authn-authz/authentication/#service-account-tokens>).
//! - [`rbac`]: the RBAC authorizer
//!   (<https://kubernetes.io/docs/reference/access-authn-authz/rbac/>).
//! - [`patch`]: JSON patch and merge patch exactly; strategic merge and server-side apply as
//!   merge patch.
//! - [`custom_resources`]: CRD checks (name, scope, one storage version, schemas), status
//!   (`Established`, `NamesAccepted`, `acceptedNames`), serving and deleting their objects;
//!   versions share objects by rewriting `apiVersion`; no conversion webhooks or `scale`.
//! - [`schema`]: structural-schema pruning (unknown fields dropped, not refused), defaults
//!   and validation (`type`, `properties`, `required`, `items`, `enum`, `pattern`, lengths,
//!   item and property counts, bounds, `nullable`, `additionalProperties`,
//!   `x-kubernetes-preserve-unknown-fields`) with the API server's field-error wording and
//!   `details.causes`. **`x-kubernetes-validations` (CEL) rules are not evaluated**, nor
//!   `format`, `allOf`/`anyOf`/`oneOf`/`not`, `uniqueItems` or list and map types: an object
//!   only CEL would refuse is accepted (the LanyardIdentity CRD's rules are compiled and run
//!   by cel-python in `registration/tests/crd_cel.rs` instead).
//! - [`status`]: `metav1.Status` errors with the API server's codes and reasons; `422` with
//!   field causes.
//! - [`tls`], [`kubeconfig`]: the fixture's own CA, HTTPS (HTTP/1.1 and h2), kubeconfig.
//!
//! Not modelled at all: admission (defaulting and validation of built-in types beyond
//! decoding), namespaces having to exist, graceful deletion and finalizers, garbage
//! collection, aggregated ClusterRoles, API discovery documents (so `kube::Discovery` cannot
//! find custom resources: build their `ApiResource` from group, version, kind and plural),
//! protobuf, and any controller (nothing creates EndpointSlices for Services; tests seed
//! them).
//!
//! # Identities
//! Every request carries a bearer token: the admin token ([`KubeFixture::admin_token`],
//! group `system:masters`, bypasses RBAC) or a ServiceAccount token issued by
//! [`KubeFixture::issue_service_account_token`] / [`KubeFixture::issue_api_token`], which RBAC
//! then governs. Tests may also seed and mutate objects directly through [`KubeFixture::store`].

#![forbid(unsafe_code)]

pub mod clock;
pub mod custom_resources;
mod ids;
pub mod kubeconfig;
pub mod patch;
pub mod rbac;
pub mod resources;
pub mod router;
pub mod schema;
pub mod selectors;
pub mod status;
pub mod store;
pub mod tls;
pub mod tokens;
pub mod watch;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

pub use crate::rbac::Decision;
pub use crate::resources::FixtureResource;
pub use crate::status::{ApiError, FieldError, FieldErrorKind, Reason};
pub use crate::store::{Store, StoreLimits};
pub use crate::tokens::{
    ADMIN_USER, DEFAULT_API_AUDIENCE, EXTRA_CREDENTIAL_ID, EXTRA_NODE_NAME, EXTRA_NODE_UID,
    EXTRA_POD_NAME, EXTRA_POD_UID, TokenBinding, TokenRejection,
};

use crate::clock::Clock;
use crate::tls::FixturePki;
use crate::tokens::Tokens;

/// Most documents one [`KubeFixture::apply_yaml`] call accepts.
const MAX_YAML_DOCUMENTS: usize = 1_000;
/// Longest YAML text [`KubeFixture::apply_yaml`] accepts.
const MAX_YAML_LEN: usize = 8 * 1024 * 1024;

/// How to start a fixture.
#[derive(Clone, Debug)]
pub struct FixtureOptions {
    /// Audiences the API server accepts for its own requests (`--api-audiences`), and the
    /// default for a TokenReview that names none.
    pub api_audiences: Vec<String>,
    /// Store bounds (objects, history, open watches).
    pub limits: StoreLimits,
    /// How often a watch with `allowWatchBookmarks` gets a BOOKMARK (the API server: about a
    /// minute; shorter here so tests see them).
    pub bookmark_interval: Duration,
    /// Whether a pod-bound token is valid only while its pod exists with the bound UID (the
    /// API server's behaviour).
    pub check_bound_pods: bool,
    /// Whether TokenReviews report the `node-name`/`node-uid` extras (Kubernetes 1.30+).
    pub node_name_extra: bool,
}

impl Default for FixtureOptions {
    fn default() -> Self {
        Self {
            api_audiences: vec![DEFAULT_API_AUDIENCE.to_string()],
            limits: StoreLimits::default(),
            bookmark_interval: Duration::from_secs(5),
            check_bound_pods: true,
            node_name_extra: true,
        }
    }
}

/// Why the fixture could not do what a test asked.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// Certificates or the listener could not be set up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Writing a kubeconfig failed.
    #[error("writing the kubeconfig {path} failed: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The temporary directory for kubeconfigs could not be created.
    #[error("creating the fixture's temporary directory failed: {0}")]
    TempDir(#[source] std::io::Error),
    /// Building a `kube::Client` failed (is the ring crypto provider installed?).
    #[error("building a kube client failed: {0}")]
    Client(#[from] kube::Error),
    /// A YAML manifest could not be parsed.
    #[error("parsing the YAML manifests failed: {0}")]
    Yaml(String),
    /// The store refused an object.
    #[error("the fixture refused an object: {0}")]
    Api(#[from] ApiError),
}

/// What [`KubeFixture::apply_yaml`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// `Kind namespace/name` (or `Kind name`) of each object created or replaced.
    pub applied: Vec<String>,
    /// `apiVersion/Kind name` of each document of a type the fixture does not serve
    /// (Deployments, DaemonSets...), skipped.
    pub skipped: Vec<String>,
}

/// A running fixture. Dropping it stops the server and removes its kubeconfig files.
pub struct KubeFixture {
    addr: SocketAddr,
    url: http::Uri,
    pki: FixturePki,
    store: Arc<Store>,
    tokens: Arc<Tokens>,
    clock: Arc<Clock>,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    shutdown: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for KubeFixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeFixture")
            .field("url", &self.url)
            .field("kubeconfig", &self.kubeconfig)
            .finish_non_exhaustive()
    }
}

impl KubeFixture {
    /// Generates a CA, binds `127.0.0.1:0`, starts serving and writes an admin kubeconfig.
    /// Must be called inside a tokio runtime.
    pub async fn start(options: FixtureOptions) -> Result<Self, FixtureError> {
        let clock = Arc::new(Clock::default());
        let store = Arc::new(Store::new(clock.clone(), options.limits.clone()));
        let tokens = Arc::new(Tokens::new(
            clock.clone(),
            options.api_audiences.clone(),
            options.check_bound_pods,
        )?);
        tokens.set_node_name_extra(options.node_name_extra);
        let pki = FixturePki::generate()?;
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let api = Arc::new(router::Api {
            store: store.clone(),
            tokens: tokens.clone(),
            bookmark_interval: options.bookmark_interval,
            shutdown: shutdown_rx.clone(),
        });
        let (addr, server) =
            tls::serve(&pki, move |req| api.clone().handle(req), shutdown_rx).await?;
        let url: http::Uri = format!("https://{addr}")
            .parse()
            .expect("a socket address makes a valid URI");
        let dir = tempfile::Builder::new()
            .prefix("kube-fixture")
            .tempdir()
            .map_err(FixtureError::TempDir)?;
        let mut fixture = Self {
            addr,
            url,
            pki,
            store,
            tokens,
            clock,
            kubeconfig: PathBuf::new(),
            dir,
            shutdown,
            server,
        };
        fixture.kubeconfig = fixture.write_kubeconfig("admin", fixture.admin_token())?;
        tracing::info!(url = %fixture.url, "kube-fixture: serving");
        Ok(fixture)
    }

    /// The listening address (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT/`.
    pub fn url(&self) -> &http::Uri {
        &self.url
    }

    /// The fixture's CA certificate (PEM); the server certificate is valid for `127.0.0.1`,
    /// `::1`, `localhost` and `kubernetes.default.svc`.
    pub fn ca_pem(&self) -> &str {
        self.pki.ca_pem()
    }

    /// A kubeconfig (0600) for the admin identity.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Writes a kubeconfig (0600) for `token` into the fixture's temporary directory, named
    /// `kubeconfig-<user>` (`user` must be a plain file-name fragment), and returns its path.
    pub fn write_kubeconfig(&self, user: &str, token: &str) -> Result<PathBuf, FixtureError> {
        let safe: String = user
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = self.dir.path().join(format!("kubeconfig-{safe}"));
        let server = format!("https://{}", self.addr);
        let text = kubeconfig::render(&server, self.ca_pem(), user, token);
        kubeconfig::write_private(&path, &text).map_err(|source| FixtureError::Kubeconfig {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// The admin bearer token (`system:masters`: bypasses RBAC).
    pub fn admin_token(&self) -> &str {
        self.tokens.admin_token()
    }

    /// A `kube::Config` for `token`, trusting the fixture's CA.
    pub fn client_config(&self, token: &str) -> kube::Config {
        kubeconfig::client_config(&self.url, self.pki.ca_der(), token)
    }

    /// A `kube::Client` authenticating with `token`.
    pub fn client_for(&self, token: &str) -> Result<kube::Client, FixtureError> {
        Ok(kube::Client::try_from(self.client_config(token))?)
    }

    /// A `kube::Client` for the admin identity.
    pub fn admin_client(&self) -> Result<kube::Client, FixtureError> {
        self.client_for(self.admin_token())
    }

    /// Issues a ServiceAccount token for `namespace/service_account`, optionally bound to a pod
    /// (and node), for `audiences`, valid for `ttl` of fixture time (see
    /// [`KubeFixture::advance_clock`]).
    pub fn issue_service_account_token(
        &self,
        namespace: &str,
        service_account: &str,
        binding: Option<TokenBinding>,
        audiences: &[&str],
        ttl: Duration,
    ) -> String {
        self.tokens.issue(
            &self.store,
            namespace,
            service_account,
            binding,
            audiences.iter().map(|s| s.to_string()).collect(),
            ttl,
        )
    }

    /// Issues an unbound token for the API server's own audience, valid for an hour: what a
    /// pod's mounted token is when it talks to the API (the identity RBAC sees).
    pub fn issue_api_token(&self, namespace: &str, service_account: &str) -> String {
        self.tokens.issue(
            &self.store,
            namespace,
            service_account,
            None,
            self.tokens.api_audiences().to_vec(),
            Duration::from_secs(3600),
        )
    }

    /// Whether TokenReviews report `node-name`/`node-uid` (on: Kubernetes 1.30+; off: older).
    pub fn set_node_name_extra(&self, enabled: bool) {
        self.tokens.set_node_name_extra(enabled);
    }

    /// Moves the fixture's clock forward (token expiry, creation timestamps).
    pub fn advance_clock(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// The object store, for seeding and mutating objects directly (no auth, no RBAC).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Compacts the history and ends every open watch: clients re-watch from a
    /// resourceVersion that is now too old, get `410 Expired` and must relist.
    pub fn expire_watches(&self) {
        self.store.compact_history();
        self.store.disconnect_watches();
    }

    /// Creates or replaces every object of a served type in a multi-document YAML text
    /// (e.g. the project's rendered manifests, RBAC included); other kinds are skipped and
    /// reported. Namespaced objects without a namespace go to `default`. Documents apply in
    /// order, so a CRD serves its kind to the documents after it.
    pub fn apply_yaml(&self, yaml: &str) -> Result<Applied, FixtureError> {
        if yaml.len() > MAX_YAML_LEN {
            return Err(FixtureError::Yaml(format!(
                "the text is longer than {MAX_YAML_LEN} bytes"
            )));
        }
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(yaml).map_err(|e| FixtureError::Yaml(e.to_string()))?;
        if docs.len() > MAX_YAML_DOCUMENTS {
            return Err(FixtureError::Yaml(format!(
                "more than {MAX_YAML_DOCUMENTS} documents"
            )));
        }
        let mut summary = Applied::default();
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
            let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
            let name = doc
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let Some(rt) = self.store.resolve_kind(api_version, kind) else {
                summary.skipped.push(format!("{api_version}/{kind} {name}"));
                continue;
            };
            let label = self.store.apply_value(&rt, doc)?;
            summary.applied.push(label);
        }
        Ok(summary)
    }

    /// The built-in resource types served, as `(apiVersion, kind, plural)` (custom resources
    /// are served while their CRD exists).
    pub fn served_types() -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
        crate::resources::builtin()
            .iter()
            .map(|t| (&*t.api_version, &*t.kind, &*t.plural))
    }
}

impl Drop for KubeFixture {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.server.abort();
    }
}
