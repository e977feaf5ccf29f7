//! `lanyard`: install Lanyard into a cluster and mesh workloads.

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand};
use lanyard_cli::ca::kube::{CaObjects, Cluster};
use lanyard_cli::ca::status::Output;
use lanyard_cli::ca::{CaError, init, issue_intermediate, rotate_root, status};
use lanyard_cli::identities::{
    self, DEFAULT_POD_ID_TEMPLATE, IdentitiesError, Output as IdentitiesOutput,
    Settings as IdentitySettings,
};
use lanyard_cli::images::{
    COMPONENTS, CSI_REGISTRAR_IMAGE, DEFAULT_REGISTRY, DigestFile, INJECT_COMPONENTS,
    INSTALL_CNI_COMPONENTS, INSTALL_COMPONENTS, Images, VERSION,
};
use lanyard_cli::inject::pod_security::{Level, satisfied_level};
use lanyard_cli::inject::{
    InjectOptions, Outcome, RedirectMode, SocketVolume, cluster, inject_stream,
};
use lanyard_cli::install::ca::GeneratedCa;
use lanyard_cli::install::{
    BUNDLE_CONFIGMAP_NAME, CA_SECRET_NAME, DEFAULT_NAMESPACE, DEFAULT_REPLICAS,
    DEFAULT_TRUST_DOMAIN, InstallOptions, Parts, render, to_text,
};
use lanyard_cli::yaml::MAX_STREAM_BYTES;
use lanyard_client::tap::TapError;
use lanyard_daemon::address::HostPort;
use lanyard_registration::ClassPolicy;
use lanyard_registration::resource::DEFAULT_CLASS;

/// Lanyard: SPIFFE identities and mTLS for every workload.
#[derive(Parser)]
#[command(name = "lanyard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the cluster manifests (`lanyard install | kubectl apply -f -`); the CA is created
    /// with `lanyard ca init`.
    Install(InstallArgs),
    /// The CA in the cluster: create it, issue intermediates, rotate the root in phases that
    /// wait for propagation, and watch it (`lanyard ca status`).
    Ca(CaArgs),
    /// What every pod is issued (SPIFFE ID, DNS names) and why (which LanyardIdentity, or the
    /// default template), or why it is refused; decided as the servers decide it.
    Identities(IdentitiesArgs),
    /// Add the Lanyard proxy to every workload in a YAML stream
    /// (`lanyard inject app.yml | kubectl apply -f -`).
    Inject(InjectArgs),
    /// Print the image references `install` and `inject` use, one per line: Lanyard's own
    /// (server, agent, proxy, proxy-init, cni: the names `deploy/images/build` builds and
    /// `--image-digests` pins), then the upstream CSI node-driver-registrar (stderr says so).
    Images(ImagesArgs),
    /// Check this node: server reachable, agent socket serving, local SVID valid.
    Check(CheckArgs),
    /// Print a proxy's connections as they finish, one line each.
    Tap(TapArgs),
}

#[derive(Args)]
struct CheckArgs {
    /// The agent's Workload API socket (a path or `unix:///path`) [default:
    /// SPIFFE_ENDPOINT_SOCKET, else /run/lanyard/sockets/agent.sock]
    #[arg(long, env = "LANYARD_SOCKET")]
    socket: Option<String>,
    /// The server to check, `HOST:PORT` (e.g. `lanyard-server.lanyard.svc:8081`); needs
    /// `--trust-bundle`. Not checked without it.
    #[arg(long, env = "LANYARD_SERVER")]
    server: Option<HostPort>,
    /// The roots (PEM) the server's certificate must chain to.
    #[arg(long, env = "LANYARD_TRUST_BUNDLE")]
    trust_bundle: Option<PathBuf>,
    /// Fail when the local SVID expires sooner than this.
    #[arg(long, env = "LANYARD_MIN_VALIDITY", value_parser = humantime::parse_duration, default_value = "1m")]
    min_validity: Duration,
    /// Also read the server replicas' CA reports from the cluster (KUBECONFIG or in-cluster):
    /// warn when a root or intermediate they name expires within 60 days, when replicas serve
    /// different bundles, or when agents lag the replicas' bundle.
    #[arg(long, env = "LANYARD_CLUSTER")]
    cluster: bool,
    /// With --cluster: the namespace the replicas report in.
    #[arg(long, env = "LANYARD_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    namespace: String,
    /// With --cluster: how long each call to the API server may take.
    #[arg(long, env = "LANYARD_CLUSTER_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10s")]
    cluster_timeout: Duration,
}

#[derive(Args)]
struct IdentitiesArgs {
    /// Trust domain of the IDs [default: the installation's, from the roots in its bundle
    /// ConfigMap (--namespace, --bundle-configmap)]
    #[arg(long, env = "LANYARD_TRUST_DOMAIN")]
    trust_domain: Option<String>,
    /// The LanyardIdentity class the servers serve (their --identity-class).
    #[arg(long, env = "LANYARD_IDENTITY_CLASS", default_value = DEFAULT_CLASS)]
    identity_class: String,
    /// Whether resources without className are served (the servers' --watch-classless).
    #[arg(long, env = "LANYARD_WATCH_CLASSLESS", value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    watch_classless: bool,
    /// The identity of pods no LanyardIdentity selects (the servers' --pod-id-template).
    #[arg(long, env = "LANYARD_POD_ID_TEMPLATE", default_value = DEFAULT_POD_ID_TEMPLATE)]
    pod_id_template: String,
    /// No identity for pods no LanyardIdentity selects (the servers'
    /// --no-default-pod-identity).
    #[arg(
        long,
        env = "LANYARD_NO_DEFAULT_POD_IDENTITY",
        conflicts_with = "pod_id_template"
    )]
    no_default_pod_identity: bool,
    /// Only the pods of this namespace [default: every namespace]
    #[arg(long, env = "LANYARD_POD_NAMESPACE")]
    pod_namespace: Option<String>,
    /// Namespace of the installation (where its bundle ConfigMap is).
    #[arg(long, env = "LANYARD_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    namespace: String,
    /// The bundle ConfigMap the trust domain is read from without --trust-domain.
    #[arg(long, env = "LANYARD_BUNDLE_CONFIGMAP", default_value = BUNDLE_CONFIGMAP_NAME)]
    bundle_configmap: String,
    /// `table` for people, `json` for tools (one object; fields in `lanyard_cli::identities::report`).
    #[arg(long, env = "LANYARD_OUTPUT", value_enum, default_value = "table")]
    output: IdentitiesOutput,
    /// How long each call to the API server may take.
    #[arg(long, env = "LANYARD_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10s")]
    timeout: Duration,
}

#[derive(Args)]
struct TapArgs {
    /// The proxy's admin address (its `--admin`), `HOST:PORT`, e.g. `localhost:4191`.
    #[arg(long, env = "LANYARD_ADMIN")]
    admin: HostPort,
}

#[derive(Args)]
struct ImageArgs {
    /// Registry prefix of the images (`REGISTRY/lanyard-server:TAG`, ...) [default:
    /// ghcr.io/lanyard-dev; with --image-digests, the repositories the file names]
    #[arg(long, env = "LANYARD_IMAGE_REGISTRY")]
    image_registry: Option<String>,
    /// Tag of the images.
    #[arg(long, env = "LANYARD_IMAGE_TAG", default_value = VERSION, conflicts_with = "image_digests")]
    image_tag: String,
    /// Pin the images by digest: FILE is the `image-digests.json` that `deploy/images/build`
    /// writes, and each image becomes `REPOSITORY@sha256:...` (REPOSITORY as the file names it,
    /// or under --image-registry).
    #[arg(long, env = "LANYARD_IMAGE_DIGESTS", value_name = "FILE")]
    image_digests: Option<PathBuf>,
    /// Pin images whose digest file is of another lanyard version (refused otherwise: their
    /// flags may not be the ones these manifests give them).
    #[arg(
        long,
        env = "LANYARD_IMAGE_DIGESTS_ANY_VERSION",
        requires = "image_digests"
    )]
    image_digests_any_version: bool,
}

#[derive(Args)]
struct ImagesArgs {
    #[command(flatten)]
    images: ImageArgs,
    #[command(flatten)]
    upstream: UpstreamImageArgs,
    /// Print only Lanyard's own images (what deploy/images/build builds), not the upstream
    /// ones.
    #[arg(long, env = "LANYARD_LANYARD_ONLY")]
    lanyard_only: bool,
}

/// The images a cluster runs that are not Lanyard's; `--image-digests` does not pin them.
#[derive(Args)]
struct UpstreamImageArgs {
    /// The CSI node-driver-registrar sidecar of the agent DaemonSet (upstream's, not built
    /// by deploy/images/build): REPOSITORY:TAG, or REPOSITORY@sha256:... to pin it.
    #[arg(long, env = "LANYARD_CSI_REGISTRAR_IMAGE", value_name = "IMAGE", default_value = CSI_REGISTRAR_IMAGE)]
    csi_registrar_image: String,
}

#[derive(Args)]
struct InstallArgs {
    /// Trust domain of the SPIFFE IDs.
    #[arg(long, env = "LANYARD_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Namespace of the server and agents.
    #[arg(long, env = "LANYARD_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    namespace: String,
    /// Server replicas.
    #[arg(long, env = "LANYARD_REPLICAS", default_value_t = DEFAULT_REPLICAS)]
    replicas: u16,
    #[command(flatten)]
    images: ImageArgs,
    #[command(flatten)]
    upstream: UpstreamImageArgs,
    /// Install the CNI plugin (the `lanyard-cni` installer DaemonSet, its ServiceAccount and
    /// RBAC) and make `redirect: cni` the cluster's default for `lanyard inject` (in the
    /// `lanyard-config` ConfigMap); without it injected pods use the init container.
    #[arg(long, env = "LANYARD_CNI")]
    cni: bool,
    /// The default, kept for scripts: leave out the CA Secret and bundle ConfigMap (create
    /// them with `lanyard ca init`, or let cert-manager write the Secret).
    #[arg(long, env = "LANYARD_WITHOUT_CA", conflicts_with_all = ["include_ca", "ca_only", "write_root_key"])]
    without_ca: bool,
    /// Also print a newly generated CA Secret and bundle ConfigMap. Piped to `kubectl apply`,
    /// the Secret's key is copied into its last-applied annotation, and applying this output
    /// again replaces the CA (and would undo a root rotation): prefer `lanyard ca init`.
    #[arg(long, env = "LANYARD_INCLUDE_CA", conflicts_with = "ca_only")]
    include_ca: bool,
    /// Print only a newly generated CA Secret and bundle ConfigMap (same caveats as
    /// --include-ca; `kubectl create -f -` keeps the key out of annotations).
    #[arg(long, env = "LANYARD_CA_ONLY")]
    ca_only: bool,
    /// With --include-ca or --ca-only: also write the generated root's private key to FILE
    /// (created 0600; must not exist). Without it the root key is discarded. (For a root kept
    /// on file see `lanyard ca new-root`.)
    #[arg(long, env = "LANYARD_WRITE_ROOT_KEY", value_name = "FILE")]
    write_root_key: Option<PathBuf>,
    /// Lifetime of the generated root (e.g. `3650d`).
    #[arg(long, env = "LANYARD_ROOT_TTL", value_parser = parse_ttl, default_value = "3650d")]
    root_ttl: Duration,
    /// Lifetime of the generated issuing intermediate (e.g. `365d`).
    #[arg(long, env = "LANYARD_INTERMEDIATE_TTL", value_parser = parse_ttl, default_value = "365d")]
    intermediate_ttl: Duration,
}

/// Where the CA lives, and how long each API call may take.
#[derive(Args)]
struct CaObjectArgs {
    /// Namespace of the CA Secret, the bundle ConfigMap and the replicas' reports.
    #[arg(long, env = "LANYARD_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    namespace: String,
    /// The CA Secret (the server's --ca-secret).
    #[arg(long, env = "LANYARD_CA_SECRET", default_value = CA_SECRET_NAME)]
    ca_secret: String,
    /// The bundle ConfigMap (the server's --bundle-configmap).
    #[arg(long, env = "LANYARD_BUNDLE_CONFIGMAP", default_value = BUNDLE_CONFIGMAP_NAME)]
    bundle_configmap: String,
    /// How long each call to the API server may take.
    #[arg(long, env = "LANYARD_CA_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10s")]
    timeout: Duration,
}

impl CaObjectArgs {
    fn objects(&self) -> CaObjects {
        CaObjects {
            namespace: self.namespace.clone(),
            secret: self.ca_secret.clone(),
            configmap: self.bundle_configmap.clone(),
        }
    }
}

#[derive(Args)]
struct CaArgs {
    #[command(subcommand)]
    command: CaCommand,
}

#[derive(Subcommand)]
enum CaCommand {
    /// Generate a root: its certificate and key, each to a new file (the key 0600). Touches
    /// no cluster.
    NewRoot(NewRootArgs),
    /// Create the cluster's CA from a root: the bundle ConfigMap (the root) and the CA Secret
    /// (a new intermediate under it, a new JWT key). Refuses when either exists.
    Init(InitArgs),
    /// Roots, intermediate, rotation phase, which replicas and agents serve which bundle
    /// version, the next step's propagation, and expiry warnings.
    Status(StatusArgs),
    /// Replace the Secret's intermediate with a new one from the root it chains to.
    IssueIntermediate(IssueIntermediateArgs),
    /// Move to a new root in phases: add, switch, retire (or abort), each refused until the
    /// previous one has propagated.
    #[command(subcommand)]
    RotateRoot(RotateRootCommand),
}

#[derive(Args)]
struct NewRootArgs {
    #[command(flatten)]
    objects: CaObjectArgs,
    /// Trust domain the root certifies.
    #[arg(long, env = "LANYARD_TRUST_DOMAIN")]
    trust_domain: String,
    /// Where to write the root certificate (PEM; must not exist).
    #[arg(long, env = "LANYARD_CERT", value_name = "FILE")]
    cert: PathBuf,
    /// Where to write the root key (PKCS#8 PEM, mode 0600; must not exist).
    #[arg(long, env = "LANYARD_KEY", value_name = "FILE")]
    key: PathBuf,
    /// Lifetime of the root.
    #[arg(long, env = "LANYARD_TTL", value_parser = parse_ttl, default_value = "10y")]
    ttl: Duration,
}

#[derive(Args)]
struct RootFileArgs {
    /// The root certificate (PEM).
    #[arg(long, env = "LANYARD_ROOT_CERT", value_name = "FILE")]
    root_cert: PathBuf,
    /// The root's private key (PEM; read only, never logged).
    #[arg(long, env = "LANYARD_ROOT_KEY", value_name = "FILE")]
    root_key: PathBuf,
}

#[derive(Args)]
struct InitArgs {
    #[command(flatten)]
    objects: CaObjectArgs,
    #[command(flatten)]
    root: RootFileArgs,
    /// Lifetime of the intermediate (never past the root's).
    #[arg(long, env = "LANYARD_INTERMEDIATE_TTL", value_parser = parse_ttl, default_value = "365d")]
    intermediate_ttl: Duration,
}

#[derive(Args)]
struct StatusArgs {
    #[command(flatten)]
    objects: CaObjectArgs,
    /// `text` for people, `json` for tools (one object).
    #[arg(long, env = "LANYARD_OUTPUT", value_enum, default_value = "text")]
    output: Output,
}

#[derive(Args)]
struct IssueIntermediateArgs {
    #[command(flatten)]
    objects: CaObjectArgs,
    /// The root the current intermediate chains to, and its key.
    #[command(flatten)]
    root: RootFileArgs,
    /// Lifetime of the intermediate (never past the root's).
    #[arg(long, env = "LANYARD_TTL", value_parser = parse_ttl, default_value = "365d")]
    ttl: Duration,
}

#[derive(Subcommand)]
enum RotateRootCommand {
    /// Phase 1: add the new root (and the next JWT key) to the bundle; signing is unchanged.
    Add(RotateAddArgs),
    /// Phase 2: sign under the new root (a new intermediate, the next JWT key); refused until
    /// every replica and agent trusts the new root.
    Switch(RotateSwitchArgs),
    /// Phase 3: remove the old root (and the previous JWT key); refused until every replica
    /// signs under the new root, no agent holds an SVID under the old one, and the longest
    /// SVID lifetime has passed since the switch.
    Retire(RotateRetireArgs),
    /// One phase back: from added, remove the new root; from switched (with the OLD root's
    /// certificate and key), sign under the old root again.
    Abort(RotateAbortArgs),
}

#[derive(Args)]
struct RotateAddArgs {
    #[command(flatten)]
    objects: CaObjectArgs,
    /// The new root's certificate (PEM; `lanyard ca new-root` writes one).
    #[arg(long, env = "LANYARD_ROOT_CERT", value_name = "FILE")]
    root_cert: PathBuf,
}

#[derive(Args)]
struct RotateSwitchArgs {
    #[command(flatten)]
    objects: CaObjectArgs,
    /// The new root (the one `add` added) and its key.
    #[command(flatten)]
    root: RootFileArgs,
    /// Lifetime of the new intermediate (never past the root's).
    #[arg(long, env = "LANYARD_INTERMEDIATE_TTL", value_parser = parse_ttl, default_value = "365d")]
    intermediate_ttl: Duration,
}

#[derive(Args)]
struct RotateRetireArgs {
    #[command(flatten)]
    objects: CaObjectArgs,
}

#[derive(Args)]
struct RotateAbortArgs {
    #[command(flatten)]
    objects: CaObjectArgs,
    /// From switched: the OLD root's certificate (PEM).
    #[arg(
        long,
        env = "LANYARD_ROOT_CERT",
        value_name = "FILE",
        requires = "root_key"
    )]
    root_cert: Option<PathBuf>,
    /// From switched: the OLD root's key.
    #[arg(
        long,
        env = "LANYARD_ROOT_KEY",
        value_name = "FILE",
        requires = "root_cert"
    )]
    root_key: Option<PathBuf>,
    /// From switched: lifetime of the intermediate under the old root.
    #[arg(long, env = "LANYARD_INTERMEDIATE_TTL", value_parser = parse_ttl, default_value = "365d")]
    intermediate_ttl: Duration,
}

#[derive(Args)]
struct InjectArgs {
    /// The YAML stream: a file, or `-` for standard input.
    #[arg(value_name = "FILE|-")]
    input: String,
    #[command(flatten)]
    images: ImageArgs,
    /// Inbound destination ports the proxy leaves alone; repeatable or comma separated.
    #[arg(long, env = "LANYARD_SKIP_INBOUND_PORTS", value_delimiter = ',')]
    skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports the proxy leaves alone; repeatable or comma separated.
    #[arg(long, env = "LANYARD_SKIP_OUTBOUND_PORTS", value_delimiter = ',')]
    skip_outbound_ports: Vec<u16>,
    /// Who installs the pod's redirect rules: `cni` (the node's lanyard-cni plugin; pods need
    /// no privileges and get a check that fails them when the rules are missing) or `init`
    /// (an init container with NET_ADMIN and NET_RAW: Pod Security `privileged`) [default:
    /// the installed Lanyard's, from ConfigMap lanyard-config in --namespace; `init` without a
    /// reachable cluster or with --ignore-cluster]
    #[arg(long, env = "LANYARD_REDIRECT", value_name = "cni|init")]
    redirect: Option<RedirectMode>,
    /// Do not ask the cluster for the default --redirect (use `init`).
    #[arg(long, env = "LANYARD_IGNORE_CLUSTER")]
    ignore_cluster: bool,
    /// The namespace Lanyard is installed in, where the default --redirect is read.
    #[arg(long, env = "LANYARD_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    namespace: String,
    /// How long reading the default --redirect from the cluster may take.
    #[arg(long, env = "LANYARD_CLUSTER_TIMEOUT", value_parser = humantime::parse_duration, default_value = "5s")]
    cluster_timeout: Duration,
    /// How the agent's Workload API reaches the pod: `csi` (an inline volume of the
    /// csi.lanyard.dev driver) or `hostpath` (the node's socket directory: Pod Security
    /// `privileged`).
    #[arg(
        long,
        env = "LANYARD_SOCKET_VOLUME",
        value_name = "csi|hostpath",
        default_value = "csi"
    )]
    socket_volume: SocketVolume,
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))?;
    if d < Duration::from_secs(3600) || d > Duration::from_secs(100 * 366 * 24 * 3600) {
        return Err(format!("{text:?}: give between 1h and 100 years"));
    }
    Ok(d)
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Install(args) => install(args),
        Command::Ca(args) => return ca(args),
        Command::Inject(args) => inject(args),
        Command::Images(args) => list_images(&args),
        Command::Identities(args) => return identities(args),
        Command::Check(args) => return check(args),
        Command::Tap(args) => return tap(args),
    };
    match result {
        // Printed only once everything succeeded: never a half-done stream.
        Ok(text) => print_output(&text, "lanyard"),
        Err(message) => {
            eprintln!("lanyard: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Writes a command's whole output to stdout; a failed write (a closed pipe) fails the command,
/// named by `command` on stderr.
fn print_output(text: &str, command: &str) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{command}: writing the output: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The images, pinned by `--image-digests` when given; pinning needs `components` in the file.
fn images(args: &ImageArgs, components: &[&str]) -> Result<Images, String> {
    let registry = args.image_registry.as_deref();
    let Some(path) = &args.image_digests else {
        return Images::new(registry.unwrap_or(DEFAULT_REGISTRY), &args.image_tag)
            .map_err(|e| e.to_string());
    };
    let file = DigestFile::read(path).map_err(|e| e.to_string())?;
    if !args.image_digests_any_version {
        file.check_version(VERSION).map_err(|e| e.to_string())?;
    }
    Images::pinned(&file, registry, components).map_err(|e| e.to_string())
}

/// `lanyard images`: Lanyard's images, then (unless `--lanyard-only`) the upstream ones,
/// one reference per line; stderr names the upstream ones as such.
fn list_images(args: &ImagesArgs) -> Result<String, String> {
    let images = images(&args.images, &COMPONENTS)?
        .with_registrar(&args.upstream.csi_registrar_image)
        .map_err(|e| e.to_string())?;
    let mut lines = images.all();
    if !args.lanyard_only {
        for (reference, what) in images.upstream() {
            eprintln!(
                "lanyard: {reference} is upstream's, {what}: not built by deploy/images/build, \
                 not pinned by --image-digests"
            );
            lines.push(reference);
        }
    }
    Ok(lines.join("\n") + "\n")
}

fn install(args: InstallArgs) -> Result<String, String> {
    let components: &[&str] = if args.cni {
        &INSTALL_CNI_COMPONENTS
    } else {
        &INSTALL_COMPONENTS
    };
    let images = images(&args.images, components)?
        .with_registrar(&args.upstream.csi_registrar_image)
        .map_err(|e| e.to_string())?;
    let mut options =
        InstallOptions::new(&args.trust_domain, &args.namespace, args.replicas, images)
            .map_err(|e| e.to_string())?;
    if args.cni {
        options = options.with_cni();
    }
    let parts = if args.ca_only {
        Parts::CaOnly
    } else if args.include_ca {
        Parts::All
    } else {
        Parts::WithoutCa
    };
    let ca = match parts {
        Parts::WithoutCa => {
            if args.write_root_key.is_some() {
                return Err(format!(
                    "--write-root-key: the CA is no longer part of `lanyard install`'s output \
                     (add --include-ca for the old behaviour). To keep a root on file: `lanyard \
                     ca new-root --trust-domain {td} --cert root.pem --key root.key`, then \
                     `lanyard ca init --namespace {ns} --root-cert root.pem --root-key root.key`",
                    td = options.trust_domain,
                    ns = options.namespace,
                ));
            }
            eprintln!(
                "lanyard: the CA is not in this output. After applying it, create the CA: \
                 `lanyard ca new-root --trust-domain {td} --cert root.pem --key root.key` and \
                 `lanyard ca init --namespace {ns} --root-cert root.pem --root-key root.key` \
                 (or have cert-manager write Secret {ns}/{CA_SECRET_NAME}; docs/OPERATIONS.md)",
                td = options.trust_domain,
                ns = options.namespace,
            );
            None
        }
        _ => {
            eprintln!(
                "lanyard: warning: this output holds a new CA's private keys (Secret {ns}/\
                 {CA_SECRET_NAME}): `kubectl apply` copies them into the last-applied \
                 annotation, and applying it again replaces the CA and overwrites the bundle \
                 (undoing any root rotation). `lanyard ca init` creates the CA without either",
                ns = options.namespace,
            );
            let ca = GeneratedCa::generate(
                &options,
                args.root_ttl,
                args.intermediate_ttl,
                SystemTime::now(),
            )
            .map_err(|e| e.to_string())?;
            if let Some(path) = &args.write_root_key {
                ca.write_root_key(path).map_err(|e| e.to_string())?;
                eprintln!("lanyard: wrote the root key to {}", path.display());
            }
            Some(ca)
        }
    };
    let docs = render(&options, parts, ca.as_ref());
    Ok(to_text(&docs))
}

fn ca(args: CaArgs) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match runtime().block_on(run_ca(args.command)) {
        Ok(text) => print_output(&text, "lanyard ca"),
        Err(e) => {
            eprintln!("lanyard ca: {e}");
            ExitCode::FAILURE
        }
    }
}

fn identities(args: IdentitiesArgs) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match runtime().block_on(run_identities(args)) {
        Ok(text) => print_output(&text, "lanyard identities"),
        Err(e) => {
            eprintln!("lanyard identities: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_identities(args: IdentitiesArgs) -> Result<String, IdentitiesError> {
    // When the trust domain is given, a bad one fails before any API call.
    let given = args
        .trust_domain
        .as_deref()
        .map(|td| {
            lanyard_svid::TrustDomain::new(td).map_err(|e| IdentitiesError::TrustDomain {
                given: td.to_owned(),
                message: e.to_string(),
            })
        })
        .transpose()?;
    let settings = IdentitySettings {
        trust_domain: args.trust_domain,
        class: ClassPolicy {
            class_name: args.identity_class,
            watch_classless: args.watch_classless,
        },
        default_template: (!args.no_default_pod_identity).then_some(args.pod_id_template),
        pod_namespace: args.pod_namespace,
    };
    let objects = CaObjects {
        namespace: args.namespace,
        secret: CA_SECRET_NAME.to_owned(),
        configmap: args.bundle_configmap,
    };
    let cluster = Cluster::connect(objects, args.timeout).await?;
    let read = identities::cluster::read(&cluster, settings.pod_namespace.as_deref()).await?;
    let trust_domain = match given {
        Some(td) => td,
        None => identities::cluster::trust_domain(&cluster).await?,
    };
    let report = identities::Report::build(&settings, trust_domain, &read)?;
    Ok(report.render(args.output))
}

async fn connect(objects: &CaObjectArgs) -> Result<Cluster, CaError> {
    Ok(Cluster::connect(objects.objects(), objects.timeout).await?)
}

async fn run_ca(command: CaCommand) -> Result<String, CaError> {
    let now = SystemTime::now();
    match command {
        CaCommand::NewRoot(args) => {
            let td = lanyard_svid::TrustDomain::new(&args.trust_domain).map_err(|e| {
                lanyard_cli::ca::MaterialError::Invalid {
                    what: format!("--trust-domain {:?}", args.trust_domain),
                    message: e.to_string(),
                }
            })?;
            init::new_root(&td, &args.cert, &args.key, args.ttl, now)
        }
        CaCommand::Init(args) => {
            let cluster = connect(&args.objects).await?;
            init::init(
                &cluster,
                &args.root.root_cert,
                &args.root.root_key,
                args.intermediate_ttl,
                now,
            )
            .await
        }
        CaCommand::Status(args) => {
            let cluster = connect(&args.objects).await?;
            let status = status::status(&cluster, now).await?;
            Ok(match args.output {
                Output::Text => status.text(lanyard_ca_lifecycle::unix_seconds(now)),
                Output::Json => {
                    serde_json::to_string_pretty(&status).expect("a status always serialises")
                        + "\n"
                }
            })
        }
        CaCommand::IssueIntermediate(args) => {
            let cluster = connect(&args.objects).await?;
            issue_intermediate::issue_intermediate(
                &cluster,
                &args.root.root_cert,
                &args.root.root_key,
                args.ttl,
                now,
            )
            .await
        }
        CaCommand::RotateRoot(RotateRootCommand::Add(args)) => {
            let cluster = connect(&args.objects).await?;
            rotate_root::add(&cluster, &args.root_cert, now).await
        }
        CaCommand::RotateRoot(RotateRootCommand::Switch(args)) => {
            let cluster = connect(&args.objects).await?;
            rotate_root::switch(
                &cluster,
                &args.root.root_cert,
                &args.root.root_key,
                args.intermediate_ttl,
                now,
            )
            .await
        }
        CaCommand::RotateRoot(RotateRootCommand::Retire(args)) => {
            let cluster = connect(&args.objects).await?;
            rotate_root::retire(&cluster, now).await
        }
        CaCommand::RotateRoot(RotateRootCommand::Abort(args)) => {
            let cluster = connect(&args.objects).await?;
            let old_root = args.root_cert.as_deref().zip(args.root_key.as_deref());
            rotate_root::abort(&cluster, old_root, args.intermediate_ttl, now).await
        }
    }
}

fn inject(args: InjectArgs) -> Result<String, String> {
    let redirect = match args.redirect {
        Some(mode) => mode,
        None => default_redirect(&args)?,
    };
    // The cni mode runs no lanyard-init: its image need not be pinned.
    let components: &[&str] = match redirect {
        RedirectMode::Cni => &["proxy"],
        RedirectMode::Init => &INJECT_COMPONENTS,
    };
    let options = InjectOptions {
        images: images(&args.images, components)?,
        skip_inbound_ports: args.skip_inbound_ports,
        skip_outbound_ports: args.skip_outbound_ports,
        redirect,
        socket_volume: args.socket_volume,
    };
    let (name, text) = read_input(&args.input)?;
    let injected = inject_stream(&text, &options).map_err(|e| format!("{name}: {e}"))?;
    for (number, what, outcome) in &injected.outcomes {
        if matches!(outcome, Outcome::HostNetwork | Outcome::OptedOut) {
            eprintln!(
                "lanyard: {name}: document {number} ({what}): {}",
                outcome.message()
            );
        }
    }
    // The user's own pod specs: a namespace enforcing `restricted` would refuse them anyway.
    for warning in &injected.warnings {
        let level = satisfied_level(&warning.violations);
        let needs = match level {
            Level::Baseline => "baseline",
            _ => "privileged",
        };
        eprintln!(
            "lanyard: warning: {name}: document {} ({}): the pod's own spec breaks Pod Security \
             restricted (it needs {needs}; a namespace labelled \
             pod-security.kubernetes.io/enforce=restricted refuses it):",
            warning.number, warning.what
        );
        for violation in &warning.violations {
            eprintln!("lanyard: warning:   {violation}");
        }
    }
    Ok(injected.output)
}

/// The installed Lanyard's redirect mode, else `init` with one line on stderr saying why.
fn default_redirect(args: &InjectArgs) -> Result<RedirectMode, String> {
    if args.ignore_cluster {
        eprintln!("lanyard: --ignore-cluster: using --redirect init");
        return Ok(RedirectMode::Init);
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    match runtime().block_on(cluster::redirect_mode(
        &args.namespace,
        args.cluster_timeout,
    )) {
        Ok(mode) => Ok(mode),
        Err(e) if e.is_fatal() => Err(e.to_string()),
        Err(e) => {
            eprintln!("lanyard: using --redirect init: {e}");
            Ok(RedirectMode::Init)
        }
    }
}

/// Reads `-` (standard input) or a file, at most [`MAX_STREAM_BYTES`].
fn read_input(input: &str) -> Result<(String, String), String> {
    let limit = MAX_STREAM_BYTES as u64 + 1;
    let mut bytes = Vec::new();
    let name = if input == "-" {
        std::io::stdin()
            .lock()
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("reading standard input: {e}"))?;
        "<stdin>".to_owned()
    } else {
        std::fs::File::open(input)
            .and_then(|f| f.take(limit).read_to_end(&mut bytes))
            .map_err(|e| format!("reading {input}: {e}"))?;
        input.to_owned()
    };
    if bytes.len() > MAX_STREAM_BYTES {
        return Err(format!("{name}: larger than {MAX_STREAM_BYTES} bytes"));
    }
    let text = String::from_utf8(bytes).map_err(|_| format!("{name}: not UTF-8 text"))?;
    Ok((name, text))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn check(args: CheckArgs) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let socket = match lanyard_client::endpoint::socket_path(args.socket.as_deref()) {
        Ok(socket) => socket,
        Err(e) => {
            eprintln!("lanyard check: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = lanyard_cli::check::CheckOptions {
        server: args.server,
        trust_bundle: args.trust_bundle,
        socket,
        min_validity: args.min_validity,
        cluster: args.cluster.then(|| {
            (
                CaObjects {
                    namespace: args.namespace.clone(),
                    secret: CA_SECRET_NAME.to_owned(),
                    configmap: BUNDLE_CONFIGMAP_NAME.to_owned(),
                },
                args.cluster_timeout,
            )
        }),
    };
    let results = runtime().block_on(lanyard_cli::check::run_checks(&options));
    for result in &results {
        println!("{result}");
    }
    if results.iter().all(|r| r.outcome.is_ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn tap(args: TapArgs) -> ExitCode {
    match runtime().block_on(follow_tap(&args.admin)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lanyard tap: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Follows the tap at the first of `admin`'s addresses that accepts (`localhost` may resolve
/// to `::1` before the `127.0.0.1` a proxy listens on by default).
async fn follow_tap(admin: &HostPort) -> Result<(), String> {
    let addrs = admin
        .resolve()
        .await
        .map_err(|e| format!("resolving --admin {admin}: {e}"))?;
    let mut last = None;
    for addr in addrs {
        match lanyard_client::tap::follow(addr, &mut tokio::io::stdout()).await {
            Err(e @ TapError::Connect { .. }) => last = Some(e),
            other => return other.map_err(|e| e.to_string()),
        }
    }
    Err(last.map_or_else(
        || format!("{admin} resolves to no address"),
        |e| e.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Options of every subcommand that take a value, are optional and have no default: each
    /// is either off without it, or its absence is the behaviour the help describes.
    const WITHOUT_DEFAULT: &[&str] = &[
        "install --write-root-key",
        "ca rotate-root abort --root-cert",
        "ca rotate-root abort --root-key",
        "install --image-digests",
        "inject --image-digests",
        "inject --skip-inbound-ports",
        "inject --skip-outbound-ports",
        "images --image-digests",
        "check --server",
        "check --trust-bundle",
    ];

    /// Every optional option with a value shows its default in `--help`: clap's own, or
    /// `[default: ...]` in the help text where the default is applied after parsing.
    #[test]
    fn help_shows_every_default() {
        let missing = lanyard_daemon::help_defaults::options_missing_default(
            &Cli::command(),
            WITHOUT_DEFAULT,
        );
        assert!(
            missing.is_empty(),
            "no default shown in --help: {missing:?}"
        );
    }
}
