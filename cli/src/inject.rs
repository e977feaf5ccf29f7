//! `lanyard inject`: meshes every workload in a multi-document YAML stream.
//!
//! For each Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job and CronJob (and each
//! item of a `List`), the pod template gets:
//! - the traffic redirect, by one of two [`RedirectMode`]s:
//!   - `cni` (the node's `lanyard-cni` plugin installs the rules when the pod's network is set
//!     up): the annotations [`REDIRECT_ANNOTATION`]` = cni` and the rules' parameters
//!     ([`RedirectConfig::to_annotations`]), and the `lanyard-validate` init container, first:
//!     the proxy image's `lanyard-proxy validate-redirect`, as uid [`VALIDATOR_UID`] with no
//!     capabilities, which fails the pod at once when the rules are missing (no silent
//!     plaintext);
//!   - `init`: the `lanyard-init` init container, first: runs the image's `lanyard-redirect`
//!     binary (the `lanyard-redirect` crate; no shell) as root with NET_ADMIN and NET_RAW,
//!     which Pod Security `baseline` forbids (the namespace must be `privileged`), and the
//!     annotation [`REDIRECT_ANNOTATION`]` = init`;
//! - the `lanyard-proxy` native sidecar right after it (an init container with
//!   `restartPolicy: Always`, Kubernetes 1.29+): it starts before the app and the app's own
//!   init containers, stops after them, and does not keep a Job from completing. Its
//!   startup probe is `/readyz`, so the app starts once the proxy holds its SVID. Its
//!   `/metrics` answer loopback callers only, unless the template is annotated
//!   [`METRICS_ANNOTATION`]` = expose` (the kubelet's probes reach `/healthz` and `/readyz`);
//! - the `lanyard-sockets` volume (the agent's Workload API), by one of two [`SocketVolume`]s:
//!   a CSI inline ephemeral volume of driver [`CSI_DRIVER`] (the default), or the node's socket
//!   directory as a hostPath (which Pod Security `baseline` forbids); mounted read-only into
//!   the proxy and every app container, with `SPIFFE_ENDPOINT_SOCKET` set for any SPIFFE
//!   client in the app (unless the container sets it already);
//! - the annotation [`INJECT_ANNOTATION`]` = enabled` and the label [`MESHED_LABEL`]` = "true"`,
//!   by which the server's discovery tells meshed pods (and their addresses) from others.
//!
//! Every container Lanyard adds, except `lanyard-init`, meets Pod Security `restricted`
//! (non-root uid, no privilege escalation, every capability dropped, seccomp `RuntimeDefault`,
//! read-only root filesystem). The user's own containers are not rewritten: where the pod's
//! own spec breaks `restricted`, the outcome carries each violation ([`pod_security`]) for the
//! command to warn about.
//!
//! Injecting is idempotent: Lanyard's containers, volumes and mounts are matched by name and
//! replaced in place (those of the other redirect mode removed), so injecting an injected
//! stream changes nothing (and re-injecting with other options updates it). Documents that are
//! not workloads are printed as given, byte for byte (comments included); injected documents
//! are re-emitted from their data, so their comments, anchors and quoting styles are lost.
//! Skipped: templates annotated `lanyard.dev/inject: disabled` and `hostNetwork` pods (the
//! redirect rules would apply to the node's own network). Empty documents are dropped; a
//! stream with no object at all is an error. Refused: a workload whose containers declare a
//! TCP `containerPort` the injected proxy listens on (the pod shares one network namespace, so
//! one of the two could not bind it), and an unknown [`METRICS_ANNOTATION`] value. Any error
//! (a document that does not parse, a workload whose pod template is malformed or refused)
//! names the document and nothing is printed.
//!
//! Module map:
//! - [`pod_security`]: the Pod Security Standards' controls (version 1.30).
//! - [`cluster`]: the default redirect mode, read from the installed `lanyard-config`.

pub mod cluster;
pub mod pod_security;

use std::fmt;
use std::str::FromStr;

use serde_json::json;

use crate::images::Images;
use crate::install::SOCKET_DIR;
use crate::redirect::{
    IMAGE_BINARY_PATH, PROXY_ADMIN_PORT, PROXY_INBOUND_PORT, PROXY_METRICS_PORT,
    PROXY_OUTBOUND_PORT, PROXY_UID, RedirectConfig,
};
use crate::yaml::{Document, ReadError, Yaml, read_stream};

use lanyard_proto::SPIFFE_ENDPOINT_SOCKET;
use lanyard_proto::inject::{
    INIT_CONTAINER, INJECT_ANNOTATION, INJECT_DISABLED, INJECT_ENABLED, MESHED_LABEL,
    PROXY_CONTAINER, SOCKET_VOLUME,
};
pub use lanyard_redirect::{REDIRECT_ANNOTATION, REDIRECT_CNI, REDIRECT_INIT, RedirectMode};

use pod_security::Violation;

/// iptables-legacy's lock file lives in /run; the init container's root is read-only.
pub const XTABLES_VOLUME: &str = "lanyard-xtables";
pub const SPIFFE_ENDPOINT_VALUE: &str = "unix:///run/lanyard/sockets/agent.sock";
/// Ports per skip list: enough for any pod, small enough to bound the rules.
pub const MAX_SKIP_PORTS: usize = 64;
// The inbound list also carries the proxy's own ports; lanyard-redirect must accept it.
const _: () = assert!(MAX_SKIP_PORTS + 2 <= lanyard_redirect::MAX_SKIP_PORTS);
/// The init container that checks the CNI plugin's redirect (cni mode).
pub const VALIDATE_CONTAINER: &str = "lanyard-validate";
/// The uid `lanyard-validate` runs as: not root, and not the proxy's [`PROXY_UID`], whose
/// connections the redirect exempts (its probe would never be redirected).
pub const VALIDATOR_UID: u32 = 2103;
const _: () = assert!(VALIDATOR_UID != PROXY_UID && VALIDATOR_UID != 0);
/// The `lanyard-proxy` subcommand `lanyard-validate` runs (the image's entrypoint is the
/// proxy binary).
pub const VALIDATE_SUBCOMMAND: &str = "validate-redirect";
/// The CSI driver that serves the Workload API into pods (`lanyard install` registers it).
pub const CSI_DRIVER: &str = "csi.lanyard.dev";
/// On a pod template: [`METRICS_EXPOSE`] serves the proxy's `/metrics` to other pods too
/// (plaintext); [`METRICS_LOOPBACK`], the default, to the pod's own containers only.
pub const METRICS_ANNOTATION: &str = "lanyard.dev/proxy-metrics";
pub const METRICS_EXPOSE: &str = "expose";
pub const METRICS_LOOPBACK: &str = "loopback";
/// The proxy flag that serves `/metrics` to non-loopback callers.
pub const METRICS_ALLOW_REMOTE_FLAG: &str = "--metrics-allow-remote";

/// How the agent's Workload API socket reaches the pod; the text is the flag's value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SocketVolume {
    /// A CSI inline ephemeral volume of [`CSI_DRIVER`] (allowed by Pod Security `restricted`).
    #[default]
    Csi,
    /// The node's socket directory as a hostPath volume (forbidden by `baseline`).
    HostPath,
}

impl fmt::Display for SocketVolume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SocketVolume::Csi => "csi",
            SocketVolume::HostPath => "hostpath",
        })
    }
}

impl FromStr for SocketVolume {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "csi" => Ok(SocketVolume::Csi),
            "hostpath" => Ok(SocketVolume::HostPath),
            other => Err(format!(
                "{other:?} is not a socket volume: give csi or hostpath"
            )),
        }
    }
}

/// What injection adds beyond the fixed layout.
#[derive(Clone, Debug, Default)]
pub struct InjectOptions {
    pub images: Images,
    /// Inbound destination ports left alone (besides the proxy's own).
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone.
    pub skip_outbound_ports: Vec<u16>,
    /// Who installs the redirect rules.
    pub redirect: RedirectMode,
    /// How the Workload API socket reaches the pod.
    pub socket_volume: SocketVolume,
}

/// What happened to one document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The pod template(s) now carry the proxy.
    Injected,
    /// Not a kind that has a pod template: printed as given.
    NotAWorkload,
    /// Annotated `lanyard.dev/inject: disabled`: printed as given.
    OptedOut,
    /// A `hostNetwork` pod: printed as given.
    HostNetwork,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Injected => "injected",
            Outcome::NotAWorkload => "not_a_workload",
            Outcome::OptedOut => "opted_out",
            Outcome::HostNetwork => "host_network",
        })
    }
}

impl Outcome {
    /// A sentence for people.
    pub fn message(&self) -> &'static str {
        match self {
            Outcome::Injected => "injected",
            Outcome::NotAWorkload => "no pod template; passed through",
            Outcome::OptedOut => "annotated lanyard.dev/inject: disabled; passed through",
            Outcome::HostNetwork => {
                "uses hostNetwork; not injected (the redirect rules would change the node's network)"
            }
        }
    }
}

/// Why a stream could not be injected.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("{0}")]
    Read(#[from] ReadError),
    #[error("document {number} ({what}): {message}")]
    Malformed {
        number: usize,
        /// `Kind namespace/name`.
        what: String,
        message: String,
    },
    #[error("--{flag}: at most {MAX_SKIP_PORTS} ports")]
    TooManyPorts { flag: &'static str },
    #[error("document {number} ({what}): refused: {message}")]
    Refused {
        number: usize,
        /// `Kind namespace/name`.
        what: String,
        message: String,
    },
    #[error("--skip-inbound-ports: port 0 is not a port")]
    PortZero,
    #[error("no Kubernetes objects in the input")]
    Empty,
}

/// A workload whose own pod spec (before injection) breaks Pod Security `restricted`: a
/// namespace that enforces it refuses the pod, meshed or not.
#[derive(Clone, Debug)]
pub struct Warning {
    pub number: usize,
    /// `Kind namespace/name` (and `items[i]` within a `List`).
    pub what: String,
    pub violations: Vec<Violation>,
}

/// Why one document could not be injected, with the path to the fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DocumentError {
    /// Not the shape its kind has.
    Malformed(String),
    /// Well-formed, but meshing it would break the pod.
    Refused(String),
}

impl DocumentError {
    fn prefixed(self, prefix: impl fmt::Display) -> Self {
        match self {
            Self::Malformed(m) => Self::Malformed(format!("{prefix}{m}")),
            Self::Refused(m) => Self::Refused(format!("{prefix}{m}")),
        }
    }

    fn into_inject_error(self, number: usize, what: String) -> InjectError {
        match self {
            Self::Malformed(message) => InjectError::Malformed {
                number,
                what,
                message,
            },
            Self::Refused(message) => InjectError::Refused {
                number,
                what,
                message,
            },
        }
    }
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(m) => f.write_str(m),
            Self::Refused(m) => write!(f, "refused: {m}"),
        }
    }
}

impl From<String> for DocumentError {
    fn from(message: String) -> Self {
        Self::Malformed(message)
    }
}

impl From<&str> for DocumentError {
    fn from(message: &str) -> Self {
        Self::Malformed(message.to_owned())
    }
}

/// The result of injecting a stream: the text to print and each document's outcome.
#[derive(Debug)]
pub struct Injected {
    pub output: String,
    /// `(document number, Kind namespace/name, outcome)` of every non-empty document.
    pub outcomes: Vec<(usize, String, Outcome)>,
    /// The injected workloads whose own pod spec breaks Pod Security `restricted`.
    pub warnings: Vec<Warning>,
}

/// Injects every workload of `text`. Nothing is returned unless every document succeeded.
pub fn inject_stream(text: &str, options: &InjectOptions) -> Result<Injected, InjectError> {
    for (flag, ports) in [
        ("skip-inbound-ports", &options.skip_inbound_ports),
        ("skip-outbound-ports", &options.skip_outbound_ports),
    ] {
        if ports.len() > MAX_SKIP_PORTS {
            return Err(InjectError::TooManyPorts { flag });
        }
        if ports.contains(&0) {
            return Err(InjectError::PortZero);
        }
    }
    let documents = read_stream(text)?;
    let mut pieces = Vec::new();
    let mut outcomes = Vec::new();
    let mut warnings = Vec::new();
    for Document {
        number,
        text,
        value,
        ..
    } in documents
    {
        let Some(mut value) = value else { continue };
        let what = describe(&value);
        let mut found = Vec::new();
        let outcome = inject_document(&mut value, options, &mut found)
            .map_err(|e| e.into_inject_error(number, what.clone()))?;
        warnings.extend(found.into_iter().map(|(place, violations)| Warning {
            number,
            what: format!("{what}{place}"),
            violations,
        }));
        pieces.push(match outcome {
            Outcome::Injected => crate::yaml::write_stream([&value]),
            _ => with_newline(text),
        });
        outcomes.push((number, what, outcome));
    }
    // An empty stream is more likely a wrong file or a failed pipe than a wish to apply
    // nothing; printing nothing would hide that.
    if outcomes.is_empty() {
        return Err(InjectError::Empty);
    }
    Ok(Injected {
        output: pieces.join("---\n"),
        outcomes,
        warnings,
    })
}

fn with_newline(mut text: String) -> String {
    let trimmed = text.trim_end_matches('\n').len();
    text.truncate(trimmed);
    text.push('\n');
    text
}

/// `Kind namespace/name`, for messages.
fn describe(doc: &Yaml) -> String {
    let kind = doc
        .get("kind")
        .and_then(Yaml::as_str)
        .unwrap_or("(no kind)");
    let name = doc
        .at(&["metadata", "name"])
        .and_then(Yaml::as_str)
        .unwrap_or("(no name)");
    match doc.at(&["metadata", "namespace"]).and_then(Yaml::as_str) {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// Where a kind keeps its pod template, relative to the document.
fn template_path(api_version: &str, kind: &str) -> Option<&'static [&'static str]> {
    match (api_version, kind) {
        ("v1", "Pod") => Some(&[]),
        ("apps/v1", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
        | ("batch/v1", "Job") => Some(&["spec", "template"]),
        ("batch/v1", "CronJob") => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// What a document's pod templates break of Pod Security `restricted`: `(where within the
/// document, e.g. ` items[2]`, violations)`.
pub type Found = Vec<(String, Vec<Violation>)>;

/// Injects one document in place, adding to `found` what its own pod specs break of Pod
/// Security `restricted`. `Err` is why it is malformed or refused.
pub fn inject_document(
    doc: &mut Yaml,
    options: &InjectOptions,
    found: &mut Found,
) -> Result<Outcome, DocumentError> {
    let api_version = doc
        .get("apiVersion")
        .and_then(Yaml::as_str)
        .unwrap_or("")
        .to_owned();
    let kind = doc
        .get("kind")
        .and_then(Yaml::as_str)
        .unwrap_or("")
        .to_owned();
    if api_version == "v1" && kind == "List" {
        return inject_list(doc, options, found);
    }
    let Some(path) = template_path(&api_version, &kind) else {
        return Ok(Outcome::NotAWorkload);
    };
    let template = doc
        .at_mut(path)
        .filter(|t| matches!(t, Yaml::Map(_)))
        .ok_or_else(|| format!("{} is missing or not a map", dotted(path)))?;
    // A Pod's own fields need no prefix.
    let prefix: String = path.iter().map(|p| format!("{p}.")).collect();
    let mut violations = Vec::new();
    let outcome =
        inject_template(template, options, &mut violations).map_err(|e| e.prefixed(prefix))?;
    if !violations.is_empty() {
        found.push((String::new(), violations));
    }
    Ok(outcome)
}

fn dotted(path: &[&str]) -> String {
    if path.is_empty() {
        "the document".to_owned()
    } else {
        path.join(".")
    }
}

fn inject_list(
    doc: &mut Yaml,
    options: &InjectOptions,
    found: &mut Found,
) -> Result<Outcome, DocumentError> {
    let Some(items) = doc.get_mut("items").and_then(Yaml::as_seq_mut) else {
        return Ok(Outcome::NotAWorkload);
    };
    let mut any = false;
    for (i, item) in items.iter_mut().enumerate() {
        let mut item_found = Vec::new();
        let outcome = inject_document(item, options, &mut item_found)
            .map_err(|e| e.prefixed(format_args!("items[{i}]: ")))?;
        let what = describe(item);
        found.extend(
            item_found
                .into_iter()
                .map(|(place, v)| (format!(" items[{i}] ({what}){place}"), v)),
        );
        any |= outcome == Outcome::Injected;
    }
    Ok(if any {
        Outcome::Injected
    } else {
        Outcome::NotAWorkload
    })
}

/// Injects a pod template (or a Pod): a map with `metadata` and `spec`. `violations`: what
/// the template's own spec breaks of Pod Security `restricted`.
fn inject_template(
    template: &mut Yaml,
    options: &InjectOptions,
    violations: &mut Vec<Violation>,
) -> Result<Outcome, DocumentError> {
    let opted_out = template
        .at(&["metadata", "annotations", INJECT_ANNOTATION])
        .and_then(Yaml::as_str)
        == Some(INJECT_DISABLED);
    if opted_out {
        return Ok(Outcome::OptedOut);
    }
    let expose_metrics = match template
        .at(&["metadata", "annotations", METRICS_ANNOTATION])
        .and_then(Yaml::as_str)
    {
        None | Some(METRICS_LOOPBACK) => false,
        Some(METRICS_EXPOSE) => true,
        Some(other) => {
            return Err(DocumentError::Refused(format!(
                "metadata.annotations.{METRICS_ANNOTATION} is {other:?}: give {METRICS_EXPOSE} \
                 (serve the proxy's /metrics to other pods, plaintext) or {METRICS_LOOPBACK} \
                 (the default: the pod's own containers only)"
            )));
        }
    };
    let spec = template
        .get_mut("spec")
        .filter(|s| matches!(s, Yaml::Map(_)))
        .ok_or("spec is missing or not a map")?;
    if spec.get("hostNetwork") == Some(&Yaml::Bool(true)) {
        return Ok(Outcome::HostNetwork);
    }
    check_containers(spec, "containers", true)?;
    check_containers(spec, "initContainers", false)?;
    check_named_list(spec, "volumes")?;
    check_proxy_ports(spec)?;
    *violations = own_violations(template);
    let spec = template.get_mut("spec").expect("checked above");

    // App containers: the socket and the standard variable for SPIFFE clients.
    for container in spec
        .get_mut("containers")
        .and_then(Yaml::as_seq_mut)
        .into_iter()
        .flatten()
    {
        let mounts = list(container, "volumeMounts")?;
        upsert_named(mounts, socket_mount(), None);
        let env = list(container, "env")?;
        let has_endpoint = env
            .iter()
            .any(|e| name_of(e) == Some(SPIFFE_ENDPOINT_SOCKET));
        if !has_endpoint {
            env.push(Yaml::from_json(
                &json!({"name": SPIFFE_ENDPOINT_SOCKET, "value": SPIFFE_ENDPOINT_VALUE}),
            ));
        }
    }
    // Init containers: the redirect (or its check) first, then the proxy.
    let init = list(spec, "initContainers")?;
    let first = match options.redirect {
        RedirectMode::Cni => {
            remove_named(init, INIT_CONTAINER);
            validate_container(options)
        }
        RedirectMode::Init => {
            remove_named(init, VALIDATE_CONTAINER);
            init_container(options)
        }
    };
    let at = upsert_named(init, first, Some(0));
    upsert_named(init, proxy_container(options, expose_metrics), Some(at + 1));
    let volumes = list(spec, "volumes")?;
    upsert_named(volumes, socket_volume(options.socket_volume), None);
    match options.redirect {
        RedirectMode::Cni => remove_named(volumes, XTABLES_VOLUME),
        RedirectMode::Init => {
            upsert_named(volumes, xtables_volume(), None);
        }
    }

    let metadata = template
        .entry("metadata", Yaml::map)
        .filter(|m| matches!(m, Yaml::Map(_)))
        .ok_or("metadata is not a map")?;
    let annotations = metadata
        .entry("annotations", Yaml::map)
        .filter(|m| matches!(m, Yaml::Map(_)))
        .ok_or("metadata.annotations is not a map")?;
    annotations.set(INJECT_ANNOTATION, INJECT_ENABLED.into());
    annotations.set(
        REDIRECT_ANNOTATION,
        options.redirect.to_string().as_str().into(),
    );
    for (key, value) in redirect_config(options).to_annotations() {
        match options.redirect {
            // What the CNI plugin reads.
            RedirectMode::Cni => annotations.set(key, value.as_str().into()),
            // The init container has them in its environment; stale ones would mislead.
            RedirectMode::Init => remove_key(annotations, key),
        }
    }
    metadata
        .entry("labels", Yaml::map)
        .ok_or("metadata is not a map")?
        .set(MESHED_LABEL, "true".into());
    Ok(Outcome::Injected)
}

/// What the template's own spec breaks of Pod Security `restricted`: Lanyard's containers and
/// volumes from an earlier injection are left out (they are this command's to answer for).
fn own_violations(template: &Yaml) -> Vec<Violation> {
    let Ok(mut json) = serde_json::to_value(template) else {
        return Vec::new();
    };
    if let Some(spec) = json.get_mut("spec") {
        for (field, ours) in [
            (
                "initContainers",
                &[INIT_CONTAINER, VALIDATE_CONTAINER, PROXY_CONTAINER][..],
            ),
            ("volumes", &[SOCKET_VOLUME, XTABLES_VOLUME][..]),
        ] {
            if let Some(serde_json::Value::Array(items)) = spec.get_mut(field) {
                items.retain(|item| {
                    !item
                        .get("name")
                        .and_then(serde_json::Value::as_str)
                        .is_some_and(|name| ours.contains(&name))
                });
            }
        }
    }
    pod_security::check(&json)
}

fn check_containers(spec: &Yaml, field: &str, required: bool) -> Result<(), String> {
    match spec.get(field) {
        None | Some(Yaml::Null) if !required => Ok(()),
        Some(Yaml::Seq(items)) if !(required && items.is_empty()) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, c)| match (c, name_of(c)) {
                (Yaml::Map(_), Some(_)) => Ok(()),
                _ => Err(format!("spec.{field}[{i}] is not a container with a name")),
            }),
        _ => Err(format!("spec.{field} is missing, empty or not a list")),
    }
}

/// Refuses an app container (or app init container) that declares a TCP port the proxy
/// listens on: the pod's containers share one network namespace.
fn check_proxy_ports(spec: &Yaml) -> Result<(), DocumentError> {
    for field in ["initContainers", "containers"] {
        let Some(Yaml::Seq(containers)) = spec.get(field) else {
            continue;
        };
        for (i, container) in containers.iter().enumerate() {
            let name = name_of(container).unwrap_or("");
            // Ours, from an earlier injection.
            if [INIT_CONTAINER, VALIDATE_CONTAINER, PROXY_CONTAINER].contains(&name) {
                continue;
            }
            let Some(Yaml::Seq(ports)) = container.get("ports") else {
                continue;
            };
            for port in ports {
                let tcp = port
                    .get("protocol")
                    .and_then(Yaml::as_str)
                    .is_none_or(|p| p == "TCP");
                let Some(&Yaml::Int(number)) = port.get("containerPort") else {
                    continue;
                };
                let used = proxy_ports()
                    .into_iter()
                    .find(|(p, _)| i64::from(*p) == number);
                if let (true, Some((_, purpose))) = (tcp, used) {
                    return Err(DocumentError::Refused(format!(
                        "spec.{field}[{i}] (container {name}) declares containerPort {number}, \
                         which the injected proxy uses for {purpose}; move the container to \
                         another port, or opt the pod out with the annotation \
                         {INJECT_ANNOTATION}: {INJECT_DISABLED}"
                    )));
                }
            }
        }
    }
    Ok(())
}

fn check_named_list(spec: &Yaml, field: &str) -> Result<(), String> {
    match spec.get(field) {
        None | Some(Yaml::Null) => Ok(()),
        Some(Yaml::Seq(items)) if items.iter().all(|v| name_of(v).is_some()) => Ok(()),
        _ => Err(format!("spec.{field} is not a list of named items")),
    }
}

/// The list under `key` (created when missing or null).
fn list<'a>(map: &'a mut Yaml, key: &str) -> Result<&'a mut Vec<Yaml>, String> {
    map.entry(key, || Yaml::Seq(Vec::new()))
        .and_then(Yaml::as_seq_mut)
        .ok_or_else(|| format!("{key} is not a list"))
}

fn name_of(item: &Yaml) -> Option<&str> {
    item.get("name").and_then(Yaml::as_str)
}

/// Removes `key` from a map, if there.
fn remove_key(map: &mut Yaml, key: &str) {
    if let Yaml::Map(entries) = map {
        entries.retain(|(k, _)| k != key);
    }
}

/// Removes the item named `name`, if any.
fn remove_named(items: &mut Vec<Yaml>, name: &str) {
    items.retain(|item| name_of(item) != Some(name));
}

/// Replaces the item with `item`'s name in place, or inserts it at `at` (else at the end);
/// returns its index.
fn upsert_named(items: &mut Vec<Yaml>, item: Yaml, at: Option<usize>) -> usize {
    let name = name_of(&item).map(str::to_owned);
    if let Some(i) = items.iter().position(|x| name_of(x) == name.as_deref()) {
        items[i] = item;
        return i;
    }
    let i = at.unwrap_or(items.len()).min(items.len());
    items.insert(i, item);
    i
}

fn socket_mount() -> Yaml {
    Yaml::from_json(&json!({"name": SOCKET_VOLUME, "mountPath": SOCKET_DIR, "readOnly": true}))
}

/// The Workload API volume: the CSI driver's inline ephemeral volume (the driver serves the
/// socket `agent.sock` in it), or the node's socket directory.
pub fn socket_volume(kind: SocketVolume) -> Yaml {
    Yaml::from_json(&match kind {
        SocketVolume::Csi => {
            json!({"name": SOCKET_VOLUME, "csi": {"driver": CSI_DRIVER, "readOnly": true}})
        }
        SocketVolume::HostPath => {
            json!({"name": SOCKET_VOLUME, "hostPath": {"path": SOCKET_DIR, "type": "DirectoryOrCreate"}})
        }
    })
}

fn xtables_volume() -> Yaml {
    Yaml::from_json(&json!({"name": XTABLES_VOLUME, "emptyDir": {"sizeLimit": "1Mi"}}))
}

fn sorted(ports: impl IntoIterator<Item = u16>) -> Vec<u16> {
    let mut ports: Vec<u16> = ports.into_iter().collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// What the init container's `lanyard-redirect` is told: the proxy's uid and ports, and the
/// skipped ports (inbound always includes the proxy's own listeners).
pub fn redirect_config(options: &InjectOptions) -> RedirectConfig {
    RedirectConfig {
        proxy_uid: PROXY_UID,
        inbound_port: PROXY_INBOUND_PORT,
        outbound_port: PROXY_OUTBOUND_PORT,
        skip_inbound_ports: sorted(
            [PROXY_INBOUND_PORT, PROXY_METRICS_PORT]
                .into_iter()
                .chain(options.skip_inbound_ports.iter().copied()),
        ),
        skip_outbound_ports: sorted(options.skip_outbound_ports.iter().copied()),
    }
}

/// The rules' parameters as a container's `env` (what `lanyard-redirect` and
/// `lanyard-proxy validate-redirect` read).
fn redirect_env(options: &InjectOptions) -> Vec<serde_json::Value> {
    redirect_config(options)
        .to_env()
        .into_iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect()
}

/// The init container that installs the redirect rules: the image's `lanyard-redirect`
/// binary (no shell), parameters in its environment.
pub fn init_container(options: &InjectOptions) -> Yaml {
    let env = redirect_env(options);
    Yaml::from_json(&json!({
        "name": INIT_CONTAINER,
        "image": options.images.proxy_init(),
        "command": [IMAGE_BINARY_PATH],
        "env": env,
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "64Mi"},
        },
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
        },
        "volumeMounts": [{"name": XTABLES_VOLUME, "mountPath": "/run"}],
    }))
}

/// Every port the injected proxy listens on in the pod's network namespace, and what for
/// (the listeners of [`proxy_args`]).
pub fn proxy_ports() -> [(u16, &'static str); 4] {
    [
        (
            PROXY_INBOUND_PORT,
            "its transparent inbound listener (every inbound TCP connection is redirected there)",
        ),
        (
            PROXY_OUTBOUND_PORT,
            "its transparent outbound listener (every outbound TCP connection is redirected there)",
        ),
        (PROXY_ADMIN_PORT, "its admin listener (the tap)"),
        (
            PROXY_METRICS_PORT,
            "its metrics and health listener (the kubelet's probes)",
        ),
    ]
}

/// `lanyard-proxy run` in transparent mode (the Workload API from `SPIFFE_ENDPOINT_SOCKET`).
/// The metrics listener is on every address for the kubelet's probes; the proxy answers
/// `/metrics` there to loopback callers only, unless `expose_metrics`.
pub fn proxy_args(expose_metrics: bool) -> Vec<String> {
    let mut args: Vec<String> = [
        "run".to_owned(),
        "--transparent-inbound".into(),
        PROXY_INBOUND_PORT.to_string(),
        "--transparent-outbound".into(),
        PROXY_OUTBOUND_PORT.to_string(),
        "--admin".into(),
        format!("127.0.0.1:{PROXY_ADMIN_PORT}"),
        "--metrics".into(),
        format!("0.0.0.0:{PROXY_METRICS_PORT}"),
    ]
    .to_vec();
    if expose_metrics {
        args.push(METRICS_ALLOW_REMOTE_FLAG.into());
    }
    args
}

/// What Pod Security `restricted` asks of a container, for uid `uid`.
fn restricted_security_context(uid: u32) -> serde_json::Value {
    json!({
        "runAsUser": uid,
        "runAsGroup": uid,
        "runAsNonRoot": true,
        "readOnlyRootFilesystem": true,
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

/// The cni mode's check: `lanyard-proxy validate-redirect` with the rules' parameters in its
/// environment (as `lanyard-init` has them), as an unprivileged uid the rules do redirect.
pub fn validate_container(options: &InjectOptions) -> Yaml {
    let env = redirect_env(options);
    Yaml::from_json(&json!({
        "name": VALIDATE_CONTAINER,
        "image": options.images.proxy(),
        "args": [VALIDATE_SUBCOMMAND],
        "env": env,
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "32Mi"},
        },
        "securityContext": restricted_security_context(VALIDATOR_UID),
    }))
}

/// The proxy as a native sidecar.
pub fn proxy_container(options: &InjectOptions, expose_metrics: bool) -> Yaml {
    let probe = |path: &str, period: u32, failures: u32| json!({"httpGet": {"path": path, "port": PROXY_METRICS_PORT}, "periodSeconds": period, "failureThreshold": failures});
    Yaml::from_json(&json!({
        "name": PROXY_CONTAINER,
        "image": options.images.proxy(),
        "restartPolicy": "Always",
        "args": proxy_args(expose_metrics),
        "env": [{"name": SPIFFE_ENDPOINT_SOCKET, "value": SPIFFE_ENDPOINT_VALUE}],
        "ports": [{"name": "lanyard-metrics", "containerPort": PROXY_METRICS_PORT, "protocol": "TCP"}],
        // Up to two minutes for the first SVID before the app starts.
        "startupProbe": probe("/readyz", 1, 120),
        "readinessProbe": probe("/readyz", 5, 3),
        "livenessProbe": probe("/healthz", 10, 6),
        "resources": {
            "requests": {"cpu": "10m", "memory": "32Mi"},
            "limits": {"cpu": "1", "memory": "128Mi"},
        },
        "securityContext": restricted_security_context(PROXY_UID),
        "volumeMounts": [socket_mount_json()],
    }))
}

fn socket_mount_json() -> serde_json::Value {
    json!({"name": SOCKET_VOLUME, "mountPath": SOCKET_DIR, "readOnly": true})
}
