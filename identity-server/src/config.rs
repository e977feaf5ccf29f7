//! `lanyard-server run` configuration: flags, `LANYARD_*` environment variables and the TOML
//! file given by `--config`, merged in that order of precedence, then validated into a
//! [`ServerConfig`] whose fields can no longer be wrong.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use lanyard_daemon::address::{deserialize_listen, parse_listen};
use lanyard_daemon::config_file;
use lanyard_daemon::config_merge::{OptionError, Origin, Provenance, invalid};
use lanyard_svid::TrustDomain;
use serde::Deserialize;

use crate::duration::parse_duration;
use crate::entries::{EntryConfig, StaticEntry};
use crate::federation::config::FederationConfig;
use crate::federation::{BundleEndpointSettings, FederationSettings, ServedProfile};
use crate::oidc::{OidcSettings, OidcTransport};

/// Defaults from DESIGN §1.
pub const DEFAULT_X509_TTL: Duration = Duration::from_secs(3600);
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);
pub const DEFAULT_NODE_TTL: Duration = Duration::from_secs(3600);
pub const DEFAULT_K8S_AUDIENCE: &str = "lanyard-server";
/// SVIDs per second per node: far above what renewals need, low enough to stop a runaway loop.
pub const DEFAULT_MINT_RATE_LIMIT: f64 = 500.0;
/// Node attestations per second from one source address: generous for real agents (a node
/// attests about once an hour), tight for a guessing loop.
pub const DEFAULT_ATTEST_RATE_LIMIT: f64 = 5.0;
pub use lanyard_registration::resource::DEFAULT_POD_ID_TEMPLATE;

/// Why a configuration is refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Option(#[from] OptionError),
    #[error("static entry {index}: {message}")]
    Entry { index: usize, message: String },
    #[error(transparent)]
    Federation(#[from] crate::federation::config::FederationConfigError),
}

/// The raw `run` options. Every field is optional here so the three sources can be merged;
/// [`RunArgs::resolve`] applies defaults and validates.
#[derive(Args, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunArgs {
    /// TOML file with any of these options (keys use `_` for `-`) and `[[entries]]`.
    #[arg(long, env = "LANYARD_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Trust domain, e.g. `example.org`.
    #[arg(long, env = "LANYARD_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,

    /// IP address and port of the gRPC (mTLS) listener, e.g. `0.0.0.0:8081`; port 0 picks a
    /// free port.
    #[arg(long, env = "LANYARD_LISTEN", value_parser = parse_listen)]
    #[serde(default, deserialize_with = "deserialize_listen")]
    pub listen: Option<SocketAddr>,

    /// Directory for the CA material and the admin socket (`token generate`, `bundle show`,
    /// `agent evict` talk to it). Required without --kube; with --kube it only holds the admin
    /// socket, and without it there is none.
    #[arg(long, env = "LANYARD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Cluster mode: CA from a Kubernetes Secret, node attestation by TokenReview.
    #[arg(long, env = "LANYARD_KUBE")]
    #[serde(default)]
    pub kube: bool,

    /// Secret (`NS/NAME`, type kubernetes.io/tls) holding the issuing intermediate.
    #[arg(long, env = "LANYARD_CA_SECRET")]
    pub ca_secret: Option<String>,

    /// ConfigMap (`NS/NAME`) holding the trust anchors under `bundle.pem`.
    #[arg(long, env = "LANYARD_BUNDLE_CONFIGMAP")]
    pub bundle_configmap: Option<String>,

    /// Secret (`NS/NAME`) whose `jwt.key`, or else `tls.key` (ECDSA P-256), signs JWT-SVIDs,
    /// for a CA Secret that cannot hold `jwt.key` (cert-manager's) [default: the CA Secret's
    /// `jwt.key`]
    #[arg(long, env = "LANYARD_CA_JWT_SECRET")]
    pub ca_jwt_secret: Option<String>,

    /// This replica's name: it reports in ConfigMap `lanyard-ca-report-<NAME>` in the CA
    /// Secret's namespace (`lanyard install` passes the pod name) [default: the host name]
    #[arg(long, env = "LANYARD_REPLICA_NAME")]
    pub replica_name: Option<String>,

    /// ServiceAccounts (`NS:SA`) whose tokens may attest agents; repeatable.
    #[arg(long, env = "LANYARD_AGENT_SA", value_delimiter = ',')]
    #[serde(default)]
    pub agent_sa: Vec<String>,

    /// Audience agents' projected tokens must carry [default: lanyard-server]
    #[arg(long, env = "LANYARD_K8S_AUDIENCE")]
    pub k8s_audience: Option<String>,

    /// Lifetime of workload X.509-SVIDs (e.g. `1h`, `10m`) [default: 1h]
    #[arg(long, env = "LANYARD_X509_TTL")]
    pub x509_ttl: Option<String>,

    /// Lifetime of JWT-SVIDs [default: 5m]
    #[arg(long, env = "LANYARD_JWT_TTL")]
    pub jwt_ttl: Option<String>,

    /// Lifetime of node (agent) SVIDs [default: 1h]
    #[arg(long, env = "LANYARD_NODE_TTL")]
    pub node_ttl: Option<String>,

    /// SPIFFE ID of pods no LanyardIdentity selects: a path in the trust domain where
    /// `{namespace}`, `{service_account}`, `{pod_name}`, `{pod_uid}`, `{node_name}`,
    /// `{label:KEY}`, `{namespace_label:KEY}` expand
    /// [default: /ns/{namespace}/sa/{service_account}]
    #[arg(long, env = "LANYARD_POD_ID_TEMPLATE")]
    pub pod_id_template: Option<String>,

    /// Pods no LanyardIdentity selects get no identity (the --pod-id-template is off).
    #[arg(long, env = "LANYARD_NO_DEFAULT_POD_IDENTITY")]
    #[serde(default)]
    pub no_default_pod_identity: bool,

    /// The `className` of the LanyardIdentity resources this server serves; others belong to
    /// another installation [default: lanyard]
    #[arg(long, env = "LANYARD_IDENTITY_CLASS")]
    pub identity_class: Option<String>,

    /// Also serve LanyardIdentity resources without a `className` [default: true]
    #[arg(long, env = "LANYARD_WATCH_CLASSLESS", action = clap::ArgAction::Set, value_name = "BOOL")]
    pub watch_classless: Option<bool>,

    /// IP address and port of the HTTP listener for /healthz, /readyz and /metrics
    /// (e.g. `0.0.0.0:9090`); none without it.
    #[arg(long, env = "LANYARD_HEALTH", value_parser = parse_listen)]
    #[serde(default, deserialize_with = "deserialize_listen")]
    pub health: Option<SocketAddr>,

    /// SVIDs per second each node may have signed (bursts of 4x are allowed) [default: 500]
    #[arg(long, env = "LANYARD_MINT_RATE_LIMIT")]
    pub mint_rate_limit: Option<f64>,

    /// Node attestations per second from one source address (bursts of 4x are allowed);
    /// raise it when many agents reach the server through one NAT address [default: 5]
    #[arg(long, env = "LANYARD_ATTEST_RATE_LIMIT")]
    pub attest_rate_limit: Option<f64>,

    /// Data-dir mode: create a new CA if the data dir holds none. Without it a CA is created
    /// only when the data dir does not exist yet (a first start); an existing data dir without
    /// `ca/` (a volume that failed to mount, a deleted CA) is refused.
    #[arg(long, env = "LANYARD_INIT")]
    #[serde(default)]
    pub init: bool,

    /// IP address and port of this trust domain's SPIFFE bundle endpoint (e.g.
    /// `0.0.0.0:8443`), authenticated by the server's SVID (`https_spiffe`), or with
    /// --bundle-endpoint-cert and --bundle-endpoint-key by that certificate (`https_web`);
    /// none without it.
    #[arg(long, env = "LANYARD_BUNDLE_ENDPOINT", value_parser = parse_listen)]
    #[serde(default, deserialize_with = "deserialize_listen")]
    pub bundle_endpoint: Option<SocketAddr>,

    /// PEM certificate chain of the bundle endpoint's `https_web` profile.
    #[arg(long, env = "LANYARD_BUNDLE_ENDPOINT_CERT")]
    pub bundle_endpoint_cert: Option<PathBuf>,

    /// PEM private key of --bundle-endpoint-cert (a 0600 file).
    #[arg(long, env = "LANYARD_BUNDLE_ENDPOINT_KEY")]
    pub bundle_endpoint_key: Option<PathBuf>,

    /// Cluster mode: fetch the bundles of the trust domains named by LanyardFederation
    /// resources too (beside `[[federation]]` in --config) [default: true]
    #[arg(long, env = "LANYARD_WATCH_FEDERATIONS", action = clap::ArgAction::Set, value_name = "BOOL")]
    pub watch_federations: Option<bool>,

    /// The `iss` claim of every JWT-SVID and the `issuer` of the OIDC discovery document: an
    /// https:// URL (e.g. `https://oidc.example.org`); JWT-SVIDs carry no `iss` without it.
    #[arg(long, env = "LANYARD_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// IP address and port serving OIDC discovery (`/.well-known/openid-configuration` and
    /// `/keys`) for JWT-SVIDs; needs --jwt-issuer and either --oidc-cert and --oidc-key or
    /// --oidc-insecure-http.
    #[arg(long, env = "LANYARD_OIDC_LISTEN", value_parser = parse_listen)]
    #[serde(default, deserialize_with = "deserialize_listen")]
    pub oidc_listen: Option<SocketAddr>,

    /// PEM certificate chain the OIDC listener serves (for the issuer's host name).
    #[arg(long, env = "LANYARD_OIDC_CERT")]
    pub oidc_cert: Option<PathBuf>,

    /// PEM private key of --oidc-cert (a 0600 file).
    #[arg(long, env = "LANYARD_OIDC_KEY")]
    pub oidc_key: Option<PathBuf>,

    /// Serve OIDC discovery over plain HTTP, for a TLS-terminating ingress in front.
    #[arg(long, env = "LANYARD_OIDC_INSECURE_HTTP")]
    #[serde(default)]
    pub oidc_insecure_http: bool,

    /// Static workload entries (config file only).
    #[arg(skip)]
    #[serde(default)]
    pub entries: Vec<EntryConfig>,

    /// Federated trust domains (config file only; see [`crate::federation::config`]).
    #[arg(skip)]
    #[serde(default)]
    pub federation: Vec<FederationConfig>,
}

/// Where the CA comes from and how agents attest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// One server; CA generated into and reused from the data dir; join-token attestation.
    DataDir,
    /// Replicas; CA from a Secret, anchors from a ConfigMap; TokenReview attestation.
    Cluster(Box<ClusterConfig>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub ca_secret: ObjectRef,
    pub bundle_configmap: ObjectRef,
    /// `--ca-jwt-secret`.
    pub ca_jwt_secret: Option<ObjectRef>,
    /// `--replica-name`, or the host name: names this replica's CA report.
    pub replica_name: String,
    /// `(namespace, service account)` pairs allowed to attest as agents.
    pub agent_service_accounts: Vec<(String, String)>,
    pub audience: String,
}

/// A namespaced object name, `NS/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A validated server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub trust_domain: TrustDomain,
    pub listen: SocketAddr,
    /// Always set in data-dir mode; in cluster mode only where the admin socket goes.
    pub data_dir: Option<PathBuf>,
    pub mode: Mode,
    pub x509_ttl: Duration,
    pub jwt_ttl: Duration,
    pub node_ttl: Duration,
    /// `--pod-id-template`, checked; `None` with `--no-default-pod-identity`.
    pub pod_id_template: Option<String>,
    /// `--identity-class`.
    pub identity_class: String,
    /// `--watch-classless`.
    pub watch_classless: bool,
    pub health: Option<SocketAddr>,
    pub mint_rate_limit: f64,
    pub attest_rate_limit: f64,
    pub entries: Vec<StaticEntry>,
    /// `--config`: where [`crate::entry_reload`] reads `[[entries]]` again.
    pub config_file: Option<PathBuf>,
    /// Connection, handshake and stream bounds of the gRPC listener (not an option: tests
    /// lower them).
    pub listener_limits: crate::tls_listener::Limits,
    /// `--init`: create a CA in an existing data dir that has none.
    pub init: bool,
    /// Bundle endpoint and federated trust domains.
    pub federation: FederationSettings,
    /// `--jwt-issuer`: the `iss` of JWT-SVIDs.
    pub jwt_issuer: Option<String>,
    /// `--oidc-listen` and its transport.
    pub oidc: Option<OidcSettings>,
}

impl RunArgs {
    /// Merges the `--config` file under the flags and environment, then validates.
    pub fn resolve(mut self) -> Result<ServerConfig, ConfigError> {
        let mut provenance = Provenance::default();
        if let Some(path) = self.config.clone() {
            let file: RunArgs = config_file::read(&path).map_err(OptionError::from)?;
            lanyard_daemon::fill_unset!(provenance, Origin::File(path), self, file;
                trust_domain, listen, data_dir, kube, ca_secret, bundle_configmap, ca_jwt_secret,
                replica_name, agent_sa,
                k8s_audience, x509_ttl, jwt_ttl, node_ttl, pod_id_template, health,
                mint_rate_limit, attest_rate_limit, init, no_default_pod_identity,
                identity_class, watch_classless, bundle_endpoint, bundle_endpoint_cert,
                bundle_endpoint_key, watch_federations, jwt_issuer, oidc_listen, oidc_cert,
                oidc_key, oidc_insecure_http);
            // Entries and federations exist only in the file.
            self.entries = file.entries;
            self.federation = file.federation;
        }
        self.validate().map_err(|e| match e {
            ConfigError::Option(e) => provenance.name_origin(e).into(),
            other => other,
        })
    }

    fn validate(self) -> Result<ServerConfig, ConfigError> {
        let trust_domain = TrustDomain::new(
            self.trust_domain
                .as_deref()
                .ok_or(OptionError::Missing("trust-domain"))?,
        )
        .map_err(|e| invalid("trust-domain", e))?;
        let listen = self.listen.ok_or(OptionError::Missing("listen"))?;
        // The CA lives in the data dir only in data-dir mode; cluster mode reads a Secret.
        if !self.kube && self.data_dir.is_none() {
            return Err(OptionError::Missing("data-dir").into());
        }
        let data_dir = self.data_dir;

        let mode = if self.kube {
            let agent_service_accounts = self
                .agent_sa
                .iter()
                .map(|s| parse_namespaced(s, ':', "agent-sa"))
                .collect::<Result<Vec<_>, _>>()?;
            if agent_service_accounts.is_empty() {
                return Err(OptionError::Missing("agent-sa").into());
            }
            Mode::Cluster(Box::new(ClusterConfig {
                ca_secret: parse_object_ref(
                    self.ca_secret
                        .as_deref()
                        .ok_or(OptionError::Missing("ca-secret"))?,
                    "ca-secret",
                )?,
                bundle_configmap: parse_object_ref(
                    self.bundle_configmap
                        .as_deref()
                        .ok_or(OptionError::Missing("bundle-configmap"))?,
                    "bundle-configmap",
                )?,
                ca_jwt_secret: self
                    .ca_jwt_secret
                    .as_deref()
                    .map(|s| parse_object_ref(s, "ca-jwt-secret"))
                    .transpose()?,
                replica_name: replica_name(self.replica_name)?,
                agent_service_accounts,
                audience: self
                    .k8s_audience
                    .unwrap_or_else(|| DEFAULT_K8S_AUDIENCE.to_owned()),
            }))
        } else {
            for (flag, given) in [
                ("ca-secret", self.ca_secret.is_some()),
                ("bundle-configmap", self.bundle_configmap.is_some()),
                ("ca-jwt-secret", self.ca_jwt_secret.is_some()),
                ("replica-name", self.replica_name.is_some()),
                ("agent-sa", !self.agent_sa.is_empty()),
            ] {
                if given {
                    return Err(invalid(flag, "only meaningful with --kube").into());
                }
            }
            Mode::DataDir
        };

        let pod_id_template = match (self.no_default_pod_identity, self.pod_id_template) {
            (true, Some(_)) => {
                return Err(invalid(
                    "pod-id-template",
                    "conflicts with --no-default-pod-identity (which turns it off)",
                )
                .into());
            }
            (true, None) => None,
            (false, template) => {
                let template = template.unwrap_or_else(|| DEFAULT_POD_ID_TEMPLATE.to_owned());
                lanyard_registration::Registry::check_default_template(&template)
                    .map_err(|e| invalid("pod-id-template", e))?;
                Some(template)
            }
        };
        let identity_class = self
            .identity_class
            .unwrap_or_else(|| lanyard_registration::resource::DEFAULT_CLASS.to_owned());
        if !is_dns_subdomain(&identity_class) {
            return Err(invalid(
                "identity-class",
                format!("{identity_class:?}: use lowercase letters, digits, '-' and '.'"),
            )
            .into());
        }

        let entries =
            crate::entries::validate_entries(self.entries, &trust_domain).map_err(|e| {
                ConfigError::Entry {
                    index: e.index,
                    message: format!("{}: {}", e.spiffe_id, e.reason),
                }
            })?;

        let config_dir = self
            .config
            .as_deref()
            .and_then(|p| p.parent())
            .map(|p| p.to_path_buf())
            .unwrap_or_default();
        let federation = FederationSettings {
            bundle_endpoint: bundle_endpoint_settings(
                self.bundle_endpoint,
                self.bundle_endpoint_cert,
                self.bundle_endpoint_key,
            )?,
            domains: crate::federation::config::validate(
                self.federation,
                &trust_domain,
                &config_dir,
            )?,
            watch_resources: self.kube && self.watch_federations.unwrap_or(true),
            timing: Default::default(),
        };
        if !self.kube && self.watch_federations.is_some() {
            return Err(invalid("watch-federations", "only meaningful with --kube").into());
        }
        let jwt_issuer = self
            .jwt_issuer
            .map(|issuer| check_issuer(&issuer).map(|()| issuer))
            .transpose()?;
        let oidc = oidc_settings(
            self.oidc_listen,
            jwt_issuer.as_deref(),
            self.oidc_cert,
            self.oidc_key,
            self.oidc_insecure_http,
        )?;

        Ok(ServerConfig {
            trust_domain,
            listen,
            data_dir,
            mode,
            x509_ttl: parse_ttl(self.x509_ttl.as_deref(), "x509-ttl", DEFAULT_X509_TTL)?,
            jwt_ttl: parse_ttl(self.jwt_ttl.as_deref(), "jwt-ttl", DEFAULT_JWT_TTL)?,
            node_ttl: parse_ttl(self.node_ttl.as_deref(), "node-ttl", DEFAULT_NODE_TTL)?,
            pod_id_template,
            identity_class,
            watch_classless: self.watch_classless.unwrap_or(true),
            health: self.health,
            mint_rate_limit: parse_rate(
                self.mint_rate_limit,
                "mint-rate-limit",
                DEFAULT_MINT_RATE_LIMIT,
            )?,
            attest_rate_limit: parse_rate(
                self.attest_rate_limit,
                "attest-rate-limit",
                DEFAULT_ATTEST_RATE_LIMIT,
            )?,
            entries,
            config_file: self.config,
            listener_limits: Default::default(),
            init: self.init,
            federation,
            jwt_issuer,
            oidc,
        })
    }
}

/// `--bundle-endpoint` with its `https_web` certificate, if any.
fn bundle_endpoint_settings(
    listen: Option<SocketAddr>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<BundleEndpointSettings>, OptionError> {
    let profile = match (cert, key) {
        (None, None) => ServedProfile::HttpsSpiffe,
        (Some(cert_file), Some(key_file)) => ServedProfile::HttpsWeb {
            cert_file,
            key_file,
        },
        (Some(_), None) => return Err(OptionError::Missing("bundle-endpoint-key")),
        (None, Some(_)) => return Err(OptionError::Missing("bundle-endpoint-cert")),
    };
    match listen {
        Some(listen) => Ok(Some(BundleEndpointSettings { listen, profile })),
        None if profile == ServedProfile::HttpsSpiffe => Ok(None),
        None => Err(invalid(
            "bundle-endpoint-cert",
            "only meaningful with --bundle-endpoint",
        )),
    }
}

/// `--jwt-issuer`: an `https://` URL with a host and no query or fragment (OIDC Discovery
/// section 3: relying parties compare it byte for byte with the token's `iss`).
fn check_issuer(issuer: &str) -> Result<(), OptionError> {
    lanyard_registration::federation::check_endpoint_url(issuer).map_err(|_| {
        invalid(
            "jwt-issuer",
            format!("{issuer:?} is not an https:// URL with a host (and no query or fragment)"),
        )
    })?;
    if issuer.ends_with('/') {
        return Err(invalid(
            "jwt-issuer",
            format!(
                "{issuer:?}: leave out the trailing '/' (the discovery path is appended to it)"
            ),
        ));
    }
    Ok(())
}

/// `--oidc-listen` and its transport, checked against the issuer.
fn oidc_settings(
    listen: Option<SocketAddr>,
    issuer: Option<&str>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    insecure_http: bool,
) -> Result<Option<OidcSettings>, OptionError> {
    let Some(listen) = listen else {
        for (flag, given) in [
            ("oidc-cert", cert.is_some()),
            ("oidc-key", key.is_some()),
            ("oidc-insecure-http", insecure_http),
        ] {
            if given {
                return Err(invalid(flag, "only meaningful with --oidc-listen"));
            }
        }
        return Ok(None);
    };
    let issuer = issuer.ok_or(OptionError::Missing("jwt-issuer"))?;
    let transport = match (cert, key, insecure_http) {
        (Some(cert_file), Some(key_file), false) => OidcTransport::Https {
            cert_file,
            key_file,
        },
        (None, None, true) => OidcTransport::InsecureHttp,
        (Some(_), None, false) => return Err(OptionError::Missing("oidc-key")),
        (None, Some(_), false) => return Err(OptionError::Missing("oidc-cert")),
        (None, None, false) => {
            return Err(invalid(
                "oidc-listen",
                "give --oidc-cert and --oidc-key (HTTPS), or --oidc-insecure-http behind a TLS-terminating ingress",
            ));
        }
        (_, _, true) => {
            return Err(invalid(
                "oidc-insecure-http",
                "conflicts with --oidc-cert and --oidc-key",
            ));
        }
    };
    Ok(Some(OidcSettings {
        listen,
        issuer: issuer.to_owned(),
        transport,
    }))
}

impl ServerConfig {
    /// How pods' identities are decided.
    pub fn registry_config(&self) -> lanyard_registration::RegistryConfig {
        lanyard_registration::RegistryConfig {
            trust_domain: self.trust_domain.clone(),
            class: lanyard_registration::ClassPolicy {
                class_name: self.identity_class.clone(),
                watch_classless: self.watch_classless,
            },
            default_template: self.pod_id_template.clone(),
        }
    }
}

/// `--replica-name`, or the host name (lowercased). It ends a ConfigMap name
/// (`lanyard-ca-report-<replica>`), so it must be a DNS subdomain that leaves room for the
/// prefix, as pod names are.
fn replica_name(given: Option<String>) -> Result<String, OptionError> {
    let name = match given {
        Some(name) => name,
        None => host_name()
            .map(|h| h.to_ascii_lowercase())
            .ok_or(OptionError::Missing("replica-name"))?,
    };
    let report = lanyard_ca_lifecycle::names::report_configmap_name(&name);
    if name.is_empty() || !is_dns_subdomain(&report) {
        return Err(invalid(
            "replica-name",
            format!(
                "{name:?} cannot name ConfigMap {report:?}: use lowercase letters, digits, '-' and '.' (the pod name)"
            ),
        ));
    }
    Ok(name)
}

/// The kernel's host name (a pod's is its name), or `$HOSTNAME`.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

/// A per-second rate of at least 1 (the limiter's burst is 4x), or `default`.
fn parse_rate(value: Option<f64>, flag: &'static str, default: f64) -> Result<f64, OptionError> {
    match value {
        None => Ok(default),
        Some(r) if r.is_finite() && r >= 1.0 => Ok(r),
        Some(_) => Err(invalid(flag, "must be at least 1")),
    }
}

fn parse_ttl(
    text: Option<&str>,
    flag: &'static str,
    default: Duration,
) -> Result<Duration, OptionError> {
    text.map_or(Ok(default), |t| {
        parse_duration(t).map_err(|e| invalid(flag, e))
    })
}

fn parse_object_ref(text: &str, flag: &'static str) -> Result<ObjectRef, OptionError> {
    let (namespace, name) = parse_namespaced(text, '/', flag)?;
    Ok(ObjectRef { namespace, name })
}

fn parse_namespaced(
    text: &str,
    separator: char,
    flag: &'static str,
) -> Result<(String, String), OptionError> {
    match text.split_once(separator) {
        Some((ns, name)) if is_dns_label(ns) && is_dns_subdomain(name) => {
            Ok((ns.to_owned(), name.to_owned()))
        }
        _ => Err(invalid(
            flag,
            format!("{text:?} is not NAMESPACE{separator}NAME"),
        )),
    }
}

/// RFC 1123 label: what Kubernetes allows for namespace names.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: what Kubernetes allows for most object names.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> RunArgs {
        RunArgs {
            trust_domain: Some("example.org".into()),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            data_dir: Some("/tmp/x".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_apply() {
        let c = args().resolve().unwrap();
        assert_eq!(c.mode, Mode::DataDir);
        assert_eq!(c.x509_ttl, DEFAULT_X509_TTL);
        assert_eq!(c.jwt_ttl, DEFAULT_JWT_TTL);
        assert_eq!(c.pod_id_template.as_deref(), Some(DEFAULT_POD_ID_TEMPLATE));
        let registry = c.registry_config();
        assert_eq!(registry.class.class_name, "lanyard");
        assert!(registry.class.watch_classless);
    }

    #[test]
    fn registration_options() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "identity_class = \"team-a\"\nwatch_classless = false\nno_default_pod_identity = true\n",
        )
        .unwrap();
        let c = RunArgs {
            config: Some(path),
            ..args()
        }
        .resolve()
        .unwrap();
        let registry = c.registry_config();
        assert_eq!(registry.class.class_name, "team-a");
        assert!(!registry.class.watch_classless);
        assert_eq!(registry.default_template, None);
        // Turned off and given at once is a contradiction.
        let err = RunArgs {
            no_default_pod_identity: true,
            pod_id_template: Some("/x/{namespace}".into()),
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("pod-id-template"), "{err}");
        for bad in ["/lanyard/{namespace}", "/ns/{nope}"] {
            let err = RunArgs {
                pod_id_template: Some(bad.into()),
                ..args()
            }
            .resolve()
            .unwrap_err();
            assert!(err.to_string().contains("pod-id-template"), "{bad}: {err}");
        }
        let err = RunArgs {
            identity_class: Some("Not A Class".into()),
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("identity-class"), "{err}");
    }

    #[test]
    fn missing_required_flag_is_named() {
        let err = RunArgs::default().resolve().unwrap_err();
        assert_eq!(
            err.to_string(),
            "--trust-domain is required (flag, LANYARD_TRUST_DOMAIN or `trust_domain` in --config)"
        );
    }

    #[test]
    fn flags_win_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "trust_domain = \"file.org\"\nx509_ttl = \"10m\"\n[[entries]]\nspiffe_id = \"spiffe://example.org/web\"\nselectors = [\"unix:uid:1001\"]\nnodes = [\"*\"]\n",
        )
        .unwrap();
        let c = RunArgs {
            config: Some(path),
            ..args()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.trust_domain.name(), "example.org");
        assert_eq!(c.x509_ttl, Duration::from_secs(600));
        assert_eq!(c.entries.len(), 1);
    }

    #[test]
    fn unknown_config_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "trust_domian = \"x\"\n").unwrap();
        let err = RunArgs {
            config: Some(path),
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("trust_domian"), "{err}");
    }

    #[test]
    fn cluster_mode_needs_its_flags() {
        let err = RunArgs {
            kube: true,
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(
            matches!(err, ConfigError::Option(OptionError::Missing("agent-sa"))),
            "{err}"
        );
        let c = RunArgs {
            kube: true,
            agent_sa: vec!["lanyard:lanyard-agent".into()],
            ca_secret: Some("lanyard/lanyard-ca".into()),
            bundle_configmap: Some("lanyard/lanyard-bundle".into()),
            ..args()
        }
        .resolve()
        .unwrap();
        let Mode::Cluster(cluster) = c.mode else {
            panic!("not cluster mode")
        };
        assert_eq!(cluster.audience, DEFAULT_K8S_AUDIENCE);
        assert_eq!(cluster.ca_secret.to_string(), "lanyard/lanyard-ca");
        assert_eq!(cluster.ca_jwt_secret, None);
        assert_eq!(
            Some(cluster.replica_name),
            host_name().map(|h| h.to_ascii_lowercase())
        );
        assert_eq!(
            cluster.agent_service_accounts,
            [("lanyard".to_owned(), "lanyard-agent".to_owned())]
        );
    }

    #[test]
    fn replica_name_and_jwt_secret() {
        let cluster = |replica: &str, jwt: Option<&str>| {
            RunArgs {
                kube: true,
                agent_sa: vec!["lanyard:lanyard-agent".into()],
                ca_secret: Some("lanyard/lanyard-ca".into()),
                bundle_configmap: Some("lanyard/lanyard-bundle".into()),
                ca_jwt_secret: jwt.map(Into::into),
                replica_name: Some(replica.into()),
                ..args()
            }
            .resolve()
        };
        let Mode::Cluster(c) = cluster("lanyard-server-5d8f-x2x", Some("lanyard/lanyard-jwt"))
            .unwrap()
            .mode
        else {
            panic!("not cluster mode")
        };
        assert_eq!(c.replica_name, "lanyard-server-5d8f-x2x");
        assert_eq!(
            c.ca_jwt_secret.map(|o| o.to_string()).as_deref(),
            Some("lanyard/lanyard-jwt")
        );
        for bad in ["", "Server_1", &"a".repeat(250)] {
            let err = cluster(bad, None).unwrap_err().to_string();
            assert!(err.starts_with("--replica-name: "), "{err}");
        }
        assert!(
            cluster("s", Some("no-slash"))
                .unwrap_err()
                .to_string()
                .contains("--ca-jwt-secret")
        );
        let stray = RunArgs {
            replica_name: Some("s".into()),
            ..args()
        };
        assert!(stray.resolve().unwrap_err().to_string().contains("--kube"));
    }

    #[test]
    fn only_data_dir_mode_needs_a_data_dir() {
        let err = RunArgs {
            data_dir: None,
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(
            matches!(err, ConfigError::Option(OptionError::Missing("data-dir"))),
            "{err}"
        );
        let c = RunArgs {
            data_dir: None,
            kube: true,
            agent_sa: vec!["lanyard:lanyard-agent".into()],
            ca_secret: Some("lanyard/lanyard-ca".into()),
            bundle_configmap: Some("lanyard/lanyard-bundle".into()),
            ..args()
        }
        .resolve()
        .unwrap();
        assert!(matches!(c.mode, Mode::Cluster(_)));
        assert_eq!(c.data_dir, None);
    }

    #[test]
    fn listen_addresses_are_parsed_by_the_shared_parser() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        let err = Cli::try_parse_from(["x", "--listen", "localhost:8081"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("give an IP address and port to listen on, e.g. 0.0.0.0:8081"),
            "{err}"
        );
        let cli =
            Cli::try_parse_from(["x", "--listen", "[::]:8081", "--health", "0.0.0.0:0"]).unwrap();
        assert_eq!(cli.run.listen, Some("[::]:8081".parse().unwrap()));
        // The same refusal from the file, naming the file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "health = \"localhost:9090\"\n").unwrap();
        let err = RunArgs {
            config: Some(path),
            ..args()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("give an IP address and port to listen on") && err.contains("c.toml"),
            "{err}"
        );
    }

    /// Defaults applied after merging (so that the file can still set them) are not clap
    /// defaults: the help states them, and says what the code applies.
    #[test]
    fn help_states_the_defaults_applied_after_parsing() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        let help = Cli::command().render_help().to_string();
        let rate = |r: f64| format!("{r}");
        for (flag, default) in [
            (
                "--x509-ttl",
                humantime::format_duration(DEFAULT_X509_TTL).to_string(),
            ),
            (
                "--jwt-ttl",
                humantime::format_duration(DEFAULT_JWT_TTL).to_string(),
            ),
            (
                "--node-ttl",
                humantime::format_duration(DEFAULT_NODE_TTL).to_string(),
            ),
            ("--k8s-audience", DEFAULT_K8S_AUDIENCE.to_owned()),
            ("--pod-id-template", DEFAULT_POD_ID_TEMPLATE.to_owned()),
            ("--mint-rate-limit", rate(DEFAULT_MINT_RATE_LIMIT)),
            ("--attest-rate-limit", rate(DEFAULT_ATTEST_RATE_LIMIT)),
        ] {
            let start = help.find(&format!("{flag} <")).expect(flag);
            let end = help[start + 2..]
                .find("\n  -")
                .map_or(help.len(), |i| i + start + 2);
            let entry = &help[start..end];
            assert!(
                entry.contains(&format!("[default: {default}]")),
                "{flag} must show [default: {default}]:\n{entry}"
            );
        }
    }

    #[test]
    fn bad_values_are_refused() {
        let bad_sa = RunArgs {
            kube: true,
            agent_sa: vec!["no-colon".into()],
            ..args()
        };
        assert!(
            bad_sa
                .resolve()
                .unwrap_err()
                .to_string()
                .contains("--agent-sa")
        );
        let bad_ttl = RunArgs {
            x509_ttl: Some("0s".into()),
            ..args()
        };
        assert!(
            bad_ttl
                .resolve()
                .unwrap_err()
                .to_string()
                .contains("--x509-ttl")
        );
        let bad_td = RunArgs {
            trust_domain: Some("Example.org".into()),
            ..args()
        };
        assert!(bad_td.resolve().is_err());
        let stray = RunArgs {
            ca_secret: Some("a/b".into()),
            ..args()
        };
        assert!(stray.resolve().unwrap_err().to_string().contains("--kube"));
    }

    #[test]
    fn a_bad_value_names_where_it_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "x509_ttl = \"0s\"\n").unwrap();
        let err = RunArgs {
            config: Some(path.clone()),
            ..args()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        let from_file = format!("(from `x509_ttl` in {})", path.display());
        assert!(
            err.starts_with("--x509-ttl: ") && err.ends_with(&from_file),
            "{err}"
        );
        // The same value given by flag (or LANYARD_X509_TTL) beats the file and is named so.
        let err = RunArgs {
            config: Some(path),
            x509_ttl: Some("0s".into()),
            ..args()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(
            err.ends_with("(from the flag or LANYARD_X509_TTL)"),
            "{err}"
        );
    }

    #[test]
    fn jwt_issuer_and_oidc_options_are_checked_together() {
        let listen: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        let issuer = || Some("https://oidc.example.org".to_owned());
        let refusal = |a: RunArgs| a.resolve().unwrap_err().to_string();

        // --jwt-issuer alone: JWT-SVIDs carry it, nothing is served.
        let c = RunArgs {
            jwt_issuer: issuer(),
            ..args()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.jwt_issuer.as_deref(), Some("https://oidc.example.org"));
        assert_eq!(c.oidc, None);

        // HTTPS and plain HTTP.
        let c = RunArgs {
            jwt_issuer: issuer(),
            oidc_listen: Some(listen),
            oidc_cert: Some("/etc/oidc/tls.crt".into()),
            oidc_key: Some("/etc/oidc/tls.key".into()),
            ..args()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            c.oidc,
            Some(OidcSettings {
                listen,
                issuer: "https://oidc.example.org".into(),
                transport: OidcTransport::Https {
                    cert_file: "/etc/oidc/tls.crt".into(),
                    key_file: "/etc/oidc/tls.key".into(),
                },
            })
        );
        let c = RunArgs {
            jwt_issuer: issuer(),
            oidc_listen: Some(listen),
            oidc_insecure_http: true,
            ..args()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.oidc.unwrap().transport, OidcTransport::InsecureHttp);

        // --oidc-listen needs the issuer, and exactly one transport.
        let err = refusal(RunArgs {
            oidc_listen: Some(listen),
            oidc_insecure_http: true,
            ..args()
        });
        assert!(err.starts_with("--jwt-issuer is required"), "{err}");
        let err = refusal(RunArgs {
            jwt_issuer: issuer(),
            oidc_listen: Some(listen),
            ..args()
        });
        assert!(
            err.starts_with("--oidc-listen: ") && err.contains("--oidc-insecure-http"),
            "{err}"
        );
        let err = refusal(RunArgs {
            jwt_issuer: issuer(),
            oidc_listen: Some(listen),
            oidc_cert: Some("/c".into()),
            oidc_key: Some("/k".into()),
            oidc_insecure_http: true,
            ..args()
        });
        assert!(err.starts_with("--oidc-insecure-http: conflicts"), "{err}");
        let err = refusal(RunArgs {
            jwt_issuer: issuer(),
            oidc_listen: Some(listen),
            oidc_cert: Some("/c".into()),
            ..args()
        });
        assert!(err.starts_with("--oidc-key is required"), "{err}");
        let err = refusal(RunArgs {
            jwt_issuer: issuer(),
            oidc_listen: Some(listen),
            oidc_key: Some("/k".into()),
            ..args()
        });
        assert!(err.starts_with("--oidc-cert is required"), "{err}");

        // Transport flags without a listener.
        for stray in [
            RunArgs {
                jwt_issuer: issuer(),
                oidc_cert: Some("/c".into()),
                ..args()
            },
            RunArgs {
                jwt_issuer: issuer(),
                oidc_insecure_http: true,
                ..args()
            },
        ] {
            let err = refusal(stray);
            assert!(err.contains("only meaningful with --oidc-listen"), "{err}");
        }

        // The issuer: https, a host, no query, fragment or trailing '/'.
        for bad in [
            "http://oidc.example.org",
            "https://",
            "https://oidc.example.org/",
            "https://oidc.example.org?x=1",
            "https://oidc.example.org#f",
            "oidc.example.org",
        ] {
            let err = refusal(RunArgs {
                jwt_issuer: Some(bad.into()),
                ..args()
            });
            assert!(err.starts_with("--jwt-issuer: "), "{bad}: {err}");
        }
        // A path is fine (discovery is served under it).
        RunArgs {
            jwt_issuer: Some("https://auth.example.org/lanyard".into()),
            ..args()
        }
        .resolve()
        .unwrap();
    }
}
