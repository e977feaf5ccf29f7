//! The plugin's commands, as the runtime invokes them (CNI spec 1.0.0), chained after the
//! cluster's own plugin:
//!
//! - ADD: for a pod the [`decision`](crate::decision) says to redirect, installs
//!   [`lanyard_redirect::steps`] in the pod's network namespace (the same rules, through the
//!   same code, as the `lanyard-init` container), then prints `prevResult` unchanged, byte for
//!   byte; every other pod is left alone and gets the same echo. Without `prevResult` it is
//!   not chained, which is an error.
//! - DEL: removes the rules ([`lanyard_redirect::removal_steps`]) from the namespace. It needs
//!   no pod lookup (the pod may be gone from the API by then) and touches nothing but
//!   Lanyard's own chains. It succeeds when the namespace or `CNI_NETNS` is gone, and it never
//!   fails because of the rules themselves: they live only in the pod's namespace, which the
//!   runtime is tearing down, and a DEL that fails would keep every pod on the node from
//!   terminating; a removal that cannot run is logged as a warning.
//! - CHECK: for a pod the decision says to redirect, compares the namespace with the steps
//!   ([`lanyard_redirect::Iptables::check`]); a difference is a CNI error naming each one.
//! - VERSION: the versions supported.
//!
//! The node's own network namespace is never touched, whatever the pod says.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use lanyard_redirect::{Coverage, Iptables, removal_steps, steps};
use tracing::{debug, info, warn};

use crate::decision::{Decision, DecisionError, LeftAlone, decide};
use crate::netns::{self, NetnsError};
use crate::pods::{self, LookupError};
use crate::spec::{
    self, CniError, Command, ErrorCode, NetConf, parse_cni_args, parse_config, pod_of,
    version_result,
};

/// The `CNI_*` parameters of one invocation.
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    pub args: Option<String>,
}

impl Env {
    /// Reads `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS` through
    /// `lookup` (empty counts as unset). Values that are not UTF-8 are kept lossily and then
    /// refused where they matter.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Self {
        let text = |name: &str| {
            lookup(name)
                .filter(|v| !v.is_empty())
                .map(|v| v.to_string_lossy().into_owned())
        };
        Self {
            command: text("CNI_COMMAND"),
            container_id: text("CNI_CONTAINERID"),
            netns: lookup("CNI_NETNS")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            ifname: text("CNI_IFNAME"),
            args: text("CNI_ARGS"),
        }
    }

    /// The process environment.
    pub fn from_process() -> Self {
        Self::from_lookup(|name| std::env::var_os(name))
    }
}

/// What one invocation prints on success: ADD's result or VERSION's answer; DEL and CHECK
/// print nothing.
pub type Output = Option<String>;

/// Runs the invocation `env` with the configuration `config` (stdin's bytes).
pub fn execute(env: &Env, config: &[u8], iptables: &Iptables) -> Result<Output, CniError> {
    let command = Command::parse(env.command.as_deref().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidEnvironment,
            "CNI_COMMAND is not set",
            "lanyard-cni is a CNI plugin run by the container runtime; run \
             `lanyard-cni install --help` for the installer",
        )
    })?)?;
    if command == Command::Version {
        return Ok(Some(version_result()));
    }
    let conf = parse_config(config)?;
    let container_id = env.container_id.as_deref().ok_or_else(|| {
        missing_env(
            "CNI_CONTAINERID",
            "the runtime names the container it sets up",
        )
    })?;
    let args = parse_cni_args(env.args.as_deref().unwrap_or(""))?;
    let span = tracing::info_span!(
        "cni",
        command = %command,
        container_id,
        network = conf.name.as_str(),
    );
    let _entered = span.enter();
    match command {
        Command::Add => add(env, &conf, &args, iptables),
        Command::Del => {
            del(env, iptables);
            Ok(None)
        }
        Command::Check => check(env, &conf, &args, iptables).map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}

fn missing_env(name: &str, why: &str) -> CniError {
    CniError::new(
        ErrorCode::InvalidEnvironment,
        format!("{name} is not set"),
        why.to_owned(),
    )
}

fn netns_of(env: &Env) -> Result<&PathBuf, CniError> {
    env.netns.as_ref().ok_or_else(|| {
        missing_env(
            "CNI_NETNS",
            "the runtime names the pod's network namespace for ADD and CHECK",
        )
    })
}

fn add(
    env: &Env,
    conf: &NetConf,
    args: &BTreeMap<String, String>,
    iptables: &Iptables,
) -> Result<Output, CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidConfig,
            "no prevResult: lanyard-cni must be chained after the cluster's network plugin",
            "add it at the end of the plugins list of the node's conflist (lanyard-cni install \
             does)",
        )
    })?;
    let netns = netns_of(env)?;
    match pod_decision(netns, conf, args)? {
        Decision::Redirect(config) => {
            let steps = steps(&config).map_err(|e| annotations_error(e.into()))?;
            let coverage = netns::run_in(netns, || {
                iptables.apply(&steps, |step| debug!(%step, "installed"))
            })
            .map_err(netns_error)?
            .map_err(iptables_error)?;
            log_coverage("redirect installed", &coverage);
        }
        Decision::LeaveAlone(why) => info!(decision = %why, "left alone"),
    }
    Ok(Some(prev.get().to_owned()))
}

fn del(env: &Env, iptables: &Iptables) {
    let Some(netns) = env.netns.as_ref() else {
        info!(decision = "no_netns", "nothing to remove");
        return;
    };
    match netns::is_own_namespace(netns) {
        Ok(true) => {
            info!(decision = %LeftAlone::HostNetwork, "left alone");
            return;
        }
        Ok(false) => {}
        Err(NetnsError::Gone(_)) => {
            info!(decision = "netns_gone", "nothing to remove");
            return;
        }
        Err(e) => {
            warn!(error = %e, "the rules were not removed");
            return;
        }
    }
    let steps = removal_steps();
    match netns::run_in(netns, || iptables.apply(&steps, |_| {})) {
        Ok(Ok(coverage)) => log_coverage("redirect removed", &coverage),
        Ok(Err(e)) => warn!(error = %e, "the rules were not removed"),
        Err(NetnsError::Gone(_)) => info!(decision = "netns_gone", "nothing to remove"),
        Err(e) => warn!(error = %e, "the rules were not removed"),
    }
}

fn check(
    env: &Env,
    conf: &NetConf,
    args: &BTreeMap<String, String>,
    iptables: &Iptables,
) -> Result<(), CniError> {
    if matches!(conf.cni_version.as_str(), "0.3.0" | "0.3.1") {
        return Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!("CHECK is not part of cniVersion {}", conf.cni_version),
            "CHECK exists from cniVersion 0.4.0",
        ));
    }
    if conf.prev_result.is_none() {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            "no prevResult",
            "the runtime passes the result of the preceding ADD to CHECK",
        ));
    }
    let netns = netns_of(env)?;
    let config = match pod_decision(netns, conf, args)? {
        Decision::Redirect(config) => config,
        Decision::LeaveAlone(why) => {
            info!(decision = %why, "nothing to check");
            return Ok(());
        }
    };
    let steps = steps(&config).map_err(|e| annotations_error(e.into()))?;
    let checked = netns::run_in(netns, || iptables.check(&steps))
        .map_err(netns_error)?
        .map_err(iptables_error)?;
    if checked.differences.is_empty() {
        log_coverage("redirect in place", &checked.coverage);
        return Ok(());
    }
    let details: Vec<String> = checked
        .differences
        .iter()
        .map(ToString::to_string)
        .collect();
    Err(CniError::new(
        ErrorCode::RulesDiffer,
        "the pod's redirect rules are missing or different",
        details.join("; "),
    ))
}

/// The decision for the pod `CNI_ARGS` names: the node's namespace and non-pods are left
/// alone before any lookup.
fn pod_decision(
    netns: &Path,
    conf: &NetConf,
    args: &BTreeMap<String, String>,
) -> Result<Decision, CniError> {
    let Some((namespace, name)) = pod_of(args) else {
        return Ok(Decision::LeaveAlone(LeftAlone::NotKubernetes));
    };
    if netns::is_own_namespace(netns).map_err(netns_error)? {
        return Ok(Decision::LeaveAlone(LeftAlone::HostNetwork));
    }
    let pod = pods::get_pod(&conf.kubeconfig, &namespace, &name, conf.kube_timeout)
        .map_err(lookup_error)?;
    let decision = decide(&pod).map_err(annotations_error)?;
    info!(pod = %format!("{namespace}/{name}"), decision = %decision, "decided");
    Ok(decision)
}

fn log_coverage(what: &str, coverage: &Coverage) {
    match coverage {
        Coverage::Both => info!(coverage = %coverage, "{what}"),
        Coverage::Ipv4Only { why } => {
            warn!(coverage = %coverage, why = why.as_str(), "{what}; IPv6 left alone")
        }
    }
}

fn lookup_error(e: LookupError) -> CniError {
    let code = if e.is_transient() {
        ErrorCode::TryAgainLater
    } else {
        ErrorCode::Kubeconfig
    };
    CniError::new(code, "looking up the pod failed", e.to_string())
}

fn annotations_error(e: DecisionError) -> CniError {
    CniError::new(
        ErrorCode::PodAnnotations,
        "the pod's Lanyard annotations are invalid",
        e.to_string(),
    )
}

fn netns_error(e: NetnsError) -> CniError {
    CniError::new(
        ErrorCode::Netns,
        "the pod's network namespace could not be used",
        e.to_string(),
    )
}

fn iptables_error(e: lanyard_redirect::ApplyError) -> CniError {
    CniError::new(
        ErrorCode::Iptables,
        "installing the redirect rules in the pod's network namespace failed",
        format!("{e} (the node needs iptables and ip6tables)"),
    )
}

/// The configuration's answer version, for error results (see [`spec::answer_version`]).
pub fn answer_version(config: &[u8]) -> String {
    spec::answer_version(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(command: &str) -> Env {
        Env {
            command: Some(command.into()),
            container_id: Some("c1".into()),
            netns: Some("/proc/self/ns/net".into()),
            ifname: Some("eth0".into()),
            args: Some("K8S_POD_NAMESPACE=default;K8S_POD_NAME=p".into()),
        }
    }

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"k8s","type":"lanyard-cni","kubeconfig":"/nonexistent/kc","prevResult":{"cniVersion":"1.0.0","ips":[]}}"#;

    /// Never used: every case here is decided before a rule would be run.
    fn no_iptables() -> Iptables {
        Iptables::new("/nonexistent/iptables", "/nonexistent/ip6tables")
    }

    #[test]
    fn version_needs_no_configuration() {
        let out = execute(&env("VERSION"), b"", &no_iptables())
            .unwrap()
            .unwrap();
        assert!(out.contains("\"supportedVersions\""), "{out}");
    }

    #[test]
    fn the_nodes_own_namespace_is_left_alone_before_any_lookup() {
        // The kubeconfig does not exist: reaching the lookup would fail.
        let out = execute(&env("ADD"), CONF.as_bytes(), &no_iptables()).unwrap();
        assert_eq!(out.as_deref(), Some(r#"{"cniVersion":"1.0.0","ips":[]}"#));
        assert_eq!(
            execute(&env("CHECK"), CONF.as_bytes(), &no_iptables()).unwrap(),
            None
        );
        assert_eq!(
            execute(&env("DEL"), CONF.as_bytes(), &no_iptables()).unwrap(),
            None
        );
    }

    #[test]
    fn not_a_pod_is_echoed() {
        let mut e = env("ADD");
        e.args = Some("IgnoreUnknown=1".into());
        e.netns = Some("/nonexistent/netns".into());
        let out = execute(&e, CONF.as_bytes(), &no_iptables()).unwrap();
        assert_eq!(out.as_deref(), Some(r#"{"cniVersion":"1.0.0","ips":[]}"#));
    }

    #[test]
    fn refusals_and_their_codes() {
        let code = |e: &Env, conf: &str| {
            execute(e, conf.as_bytes(), &no_iptables())
                .unwrap_err()
                .code
        };
        let mut no_command = env("ADD");
        no_command.command = None;
        assert_eq!(code(&no_command, CONF), ErrorCode::InvalidEnvironment);
        assert_eq!(code(&env("STATUS"), CONF), ErrorCode::InvalidEnvironment);
        let mut no_netns = env("ADD");
        no_netns.netns = None;
        assert_eq!(code(&no_netns, CONF), ErrorCode::InvalidEnvironment);
        let mut no_container = env("ADD");
        no_container.container_id = None;
        assert_eq!(code(&no_container, CONF), ErrorCode::InvalidEnvironment);
        assert_eq!(code(&env("ADD"), "{not json"), ErrorCode::DecodeFailure);
        let unchained = CONF.replace(r#","prevResult":{"cniVersion":"1.0.0","ips":[]}"#, "");
        assert_eq!(code(&env("ADD"), &unchained), ErrorCode::InvalidConfig);
        assert_eq!(code(&env("CHECK"), &unchained), ErrorCode::InvalidConfig);
        let old = CONF.replace(
            r#""cniVersion":"1.0.0","name""#,
            r#""cniVersion":"0.3.1","name""#,
        );
        assert_eq!(code(&env("CHECK"), &old), ErrorCode::IncompatibleVersion);
        let mut missing_ns = env("ADD");
        missing_ns.netns = Some("/nonexistent/netns".into());
        assert_eq!(code(&missing_ns, CONF), ErrorCode::Netns);
        let mut bad_args = env("ADD");
        bad_args.args = Some("K8S_POD_NAME".into());
        assert_eq!(code(&bad_args, CONF), ErrorCode::InvalidEnvironment);
    }

    /// DEL succeeds without a namespace, with a vanished one, and without CNI_NETNS at all.
    #[test]
    fn del_is_permissive() {
        let mut e = env("DEL");
        e.netns = Some("/nonexistent/netns".into());
        assert_eq!(execute(&e, CONF.as_bytes(), &no_iptables()).unwrap(), None);
        e.netns = None;
        assert_eq!(execute(&e, CONF.as_bytes(), &no_iptables()).unwrap(), None);
    }
}
