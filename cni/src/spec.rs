//! The CNI protocol as this plugin speaks it (CNI spec 1.0.0, "CNI Plugin" and "Well-known
//! Error Codes"): the commands, the parameters in the environment (`CNI_*`, `CNI_ARGS`), the
//! network configuration on stdin (bounded, never trusted), the error result, and VERSION's
//! answer.
//!
//! This file uses nothing else of the crate, so the fuzz target compiles it on its own.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;

/// The spec version this plugin implements, and the version of its own answers when the
/// configuration names none it supports.
pub const SPEC_VERSION: &str = "1.0.0";
/// The configuration versions accepted: chaining and `prevResult` exist since 0.3.0.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// The plugin's `type` in a conflist (and its binary's name in the CNI bin dir).
pub const PLUGIN_TYPE: &str = "lanyard-cni";
/// Largest configuration read from stdin. The runtime sends the plugin's own entry plus the
/// previous plugin's result: kilobytes.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;
/// Longest `CNI_ARGS` taken apart.
pub const MAX_CNI_ARGS_BYTES: usize = 64 * 1024;
/// The kubeconfig the plugin reads when its entry names none (where the installer writes it).
pub const DEFAULT_KUBECONFIG: &str = "/etc/cni/net.d/lanyard-cni.d/kubeconfig";
/// How long the pod lookup may take when the entry does not say.
pub const DEFAULT_KUBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds of `kube_timeout_seconds`.
pub const MAX_KUBE_TIMEOUT_SECONDS: u64 = 60;
/// The log levels `log_level` takes.
pub const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// The `CNI_ARGS` keys the kubelet's runtime passes.
pub const ARG_POD_NAMESPACE: &str = "K8S_POD_NAMESPACE";
pub const ARG_POD_NAME: &str = "K8S_POD_NAME";

/// `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
}

impl Command {
    /// `CNI_COMMAND`'s value. STATUS and GC (spec 1.1) are unknown to a 1.0.0 plugin; a
    /// runtime that asked VERSION first never sends them.
    pub fn parse(value: &str) -> Result<Self, CniError> {
        match value {
            "ADD" => Ok(Command::Add),
            "DEL" => Ok(Command::Del),
            "CHECK" => Ok(Command::Check),
            "VERSION" => Ok(Command::Version),
            other => Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("CNI_COMMAND {other:?} is not a command of CNI {SPEC_VERSION}"),
                "lanyard-cni answers ADD, DEL, CHECK and VERSION",
            )),
        }
    }
}

/// `ADD`, `DEL`, ...: also the label in logs.
impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
        })
    }
}

/// The spec's well-known error codes this plugin returns, and its own (100 and up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1: the configuration's `cniVersion` is not one this plugin supports.
    IncompatibleVersion,
    /// 4: a `CNI_*` variable is missing or malformed.
    InvalidEnvironment,
    /// 5: stdin could not be read.
    IoFailure,
    /// 6: the configuration is not JSON of the expected shape.
    DecodeFailure,
    /// 7: the configuration is JSON but invalid (too large, missing `prevResult`, a bad
    /// field value).
    InvalidConfig,
    /// 11: the pod could not be looked up now; the runtime retries.
    TryAgainLater,
    /// 100: the kubeconfig named by the configuration could not be used, or the API server
    /// refuses its identity.
    Kubeconfig,
    /// 101: the pod's Lanyard annotations are invalid.
    PodAnnotations,
    /// 102: the pod's network namespace could not be entered.
    Netns,
    /// 103: an iptables or ip6tables command failed in the pod's namespace.
    Iptables,
    /// 104: CHECK: the pod's redirect rules are missing or different.
    RulesDiffer,
}

impl ErrorCode {
    pub fn code(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::InvalidEnvironment => 4,
            ErrorCode::IoFailure => 5,
            ErrorCode::DecodeFailure => 6,
            ErrorCode::InvalidConfig => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::Kubeconfig => 100,
            ErrorCode::PodAnnotations => 101,
            ErrorCode::Netns => 102,
            ErrorCode::Iptables => 103,
            ErrorCode::RulesDiffer => 104,
        }
    }
}

/// A failure as the runtime receives it: the error result on stdout.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}: {details} (CNI error {})", .code.code())]
pub struct CniError {
    pub code: ErrorCode,
    /// What failed, short.
    pub msg: String,
    /// Why, and what to do.
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error result: `{"cniVersion", "code", "msg", "details"}`.
    pub fn to_json(&self, cni_version: &str) -> String {
        serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code.code(),
            "msg": self.msg,
            "details": self.details,
        })
        .to_string()
    }
}

/// VERSION's answer.
pub fn version_result() -> String {
    serde_json::json!({
        "cniVersion": SPEC_VERSION,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
    .to_string()
}

/// The plugin's network configuration: the runtime's fields it uses and its own.
#[derive(Debug)]
pub struct NetConf {
    pub cni_version: String,
    /// The network's name (required by the spec; only logged).
    pub name: String,
    /// Where the pod lookup's kubeconfig is.
    pub kubeconfig: PathBuf,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub log_level: String,
    /// Bound on the whole pod lookup.
    pub kube_timeout: Duration,
    /// The previous plugin's result, exactly as received (ADD echoes it).
    pub prev_result: Option<Box<RawValue>>,
}

/// The JSON as sent. Fields of other plugins and runtimes (`args`, `runtimeConfig`, `dns`...)
/// are allowed and ignored.
#[derive(Deserialize)]
struct Wire {
    #[serde(rename = "cniVersion")]
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    kubeconfig: Option<String>,
    log_level: Option<String>,
    kube_timeout_seconds: Option<u64>,
    #[serde(rename = "prevResult")]
    prev_result: Option<Box<RawValue>>,
}

/// Reads at most [`MAX_CONFIG_BYTES`] from `input` (more is an error, not a truncation).
pub fn read_config(input: impl Read) -> Result<Vec<u8>, CniError> {
    let mut bytes = Vec::new();
    input
        .take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| {
            CniError::new(
                ErrorCode::IoFailure,
                "reading the network configuration from stdin failed",
                e.to_string(),
            )
        })?;
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            "the network configuration is too large",
            format!("more than {MAX_CONFIG_BYTES} bytes on stdin"),
        ));
    }
    Ok(bytes)
}

/// The `cniVersion` to answer in: the configuration's when it is one this plugin supports,
/// else [`SPEC_VERSION`]. Never fails: it is used for error results too.
pub fn answer_version(bytes: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Version {
        #[serde(rename = "cniVersion")]
        cni_version: Option<String>,
    }
    serde_json::from_slice::<Version>(bytes)
        .ok()
        .and_then(|v| v.cni_version)
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| SPEC_VERSION.to_owned())
}

/// Parses and checks the configuration.
pub fn parse_config(bytes: &[u8]) -> Result<NetConf, CniError> {
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            "the network configuration is too large",
            format!("more than {MAX_CONFIG_BYTES} bytes"),
        ));
    }
    let wire: Wire = serde_json::from_slice(bytes).map_err(|e| {
        CniError::new(
            ErrorCode::DecodeFailure,
            "the network configuration is not valid JSON of a CNI plugin configuration",
            e.to_string(),
        )
    })?;
    let invalid =
        |msg: String, details: &str| CniError::new(ErrorCode::InvalidConfig, msg, details);
    let cni_version = wire.cni_version.ok_or_else(|| {
        invalid(
            "the network configuration has no cniVersion".into(),
            "the runtime sets it from the conflist's cniVersion",
        )
    })?;
    if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
        return Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!("cniVersion {cni_version:?} is not supported"),
            format!("lanyard-cni supports {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    let name = wire.name.ok_or_else(|| {
        invalid(
            "the network configuration has no name".into(),
            "the runtime sets it from the conflist's name",
        )
    })?;
    match wire.plugin_type.as_deref() {
        Some(PLUGIN_TYPE) => {}
        other => {
            return Err(invalid(
                format!("the plugin type is {other:?}, not {PLUGIN_TYPE:?}"),
                "the runtime runs the plugin named by the entry's type",
            ));
        }
    }
    let kubeconfig = match wire.kubeconfig {
        None => PathBuf::from(DEFAULT_KUBECONFIG),
        Some(path) if path.starts_with('/') && !path.contains('\0') => PathBuf::from(path),
        Some(path) => {
            return Err(invalid(
                format!("kubeconfig {path:?} is not an absolute path"),
                "name the file the installer wrote, e.g. /etc/cni/net.d/lanyard-cni.d/kubeconfig",
            ));
        }
    };
    let log_level = wire.log_level.unwrap_or_else(|| "info".to_owned());
    if !LOG_LEVELS.contains(&log_level.as_str()) {
        return Err(invalid(
            format!("log_level {log_level:?} is not a level"),
            "use error, warn, info, debug or trace",
        ));
    }
    let kube_timeout = match wire.kube_timeout_seconds {
        None => DEFAULT_KUBE_TIMEOUT,
        Some(s) if (1..=MAX_KUBE_TIMEOUT_SECONDS).contains(&s) => Duration::from_secs(s),
        Some(s) => {
            return Err(invalid(
                format!("kube_timeout_seconds {s} is out of range"),
                "use 1 to 60",
            ));
        }
    };
    if let Some(prev) = &wire.prev_result
        && !prev.get().trim_start().starts_with('{')
    {
        return Err(invalid(
            "prevResult is not a JSON object".into(),
            "the runtime passes the previous plugin's result",
        ));
    }
    Ok(NetConf {
        cni_version,
        name,
        kubeconfig,
        log_level,
        kube_timeout,
        prev_result: wire.prev_result,
    })
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`. Keys are unique; an item without `=` or
/// with an empty key is an error (a pod name lost to a typo must not look like "not a pod").
pub fn parse_cni_args(value: &str) -> Result<BTreeMap<String, String>, CniError> {
    let bad = |details: String| {
        CniError::new(
            ErrorCode::InvalidEnvironment,
            "CNI_ARGS is malformed",
            details,
        )
    };
    if value.len() > MAX_CNI_ARGS_BYTES {
        return Err(bad(format!("longer than {MAX_CNI_ARGS_BYTES} bytes")));
    }
    let mut args = BTreeMap::new();
    for item in value.split(';').filter(|item| !item.is_empty()) {
        let Some((key, val)) = item.split_once('=') else {
            return Err(bad(format!("{item:?} is not KEY=VALUE")));
        };
        if key.is_empty() {
            return Err(bad(format!("{item:?} has no key")));
        }
        if args.insert(key.to_owned(), val.to_owned()).is_some() {
            return Err(bad(format!("{key} is given twice")));
        }
    }
    Ok(args)
}

/// The pod a `CNI_ARGS` names, when it names one (both keys, non-empty).
pub fn pod_of(args: &BTreeMap<String, String>) -> Option<(String, String)> {
    let namespace = args.get(ARG_POD_NAMESPACE).filter(|v| !v.is_empty())?;
    let name = args.get(ARG_POD_NAME).filter(|v| !v.is_empty())?;
    Some((namespace.clone(), name.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: &str) -> String {
        format!(r#"{{"cniVersion":"1.0.0","name":"k8s","type":"lanyard-cni"{extra}}}"#)
    }

    #[test]
    fn a_full_configuration() {
        let text = conf(
            r#","kubeconfig":"/k/kc","log_level":"debug","kube_timeout_seconds":2,
            "runtimeConfig":{"x":1},"prevResult":{"cniVersion":"1.0.0", "ips":[ {"address":"10.0.0.2/24"} ]}"#,
        );
        let c = parse_config(text.as_bytes()).unwrap();
        assert_eq!(c.cni_version, "1.0.0");
        assert_eq!(c.name, "k8s");
        assert_eq!(c.kubeconfig, PathBuf::from("/k/kc"));
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.kube_timeout, Duration::from_secs(2));
        // Byte for byte, spacing included.
        assert_eq!(
            c.prev_result.unwrap().get(),
            r#"{"cniVersion":"1.0.0", "ips":[ {"address":"10.0.0.2/24"} ]}"#
        );
    }

    #[test]
    fn defaults() {
        let c = parse_config(conf("").as_bytes()).unwrap();
        assert_eq!(c.kubeconfig, PathBuf::from(DEFAULT_KUBECONFIG));
        assert_eq!(c.log_level, "info");
        assert_eq!(c.kube_timeout, DEFAULT_KUBE_TIMEOUT);
        assert!(c.prev_result.is_none());
    }

    #[test]
    fn each_refusal_has_its_code() {
        let cases: &[(&str, ErrorCode, &str)] = &[
            ("{", ErrorCode::DecodeFailure, "not valid JSON"),
            ("[1]", ErrorCode::DecodeFailure, "not valid JSON"),
            ("", ErrorCode::DecodeFailure, "not valid JSON"),
            (
                r#"{"name":"k8s","type":"lanyard-cni"}"#,
                ErrorCode::InvalidConfig,
                "no cniVersion",
            ),
            (
                r#"{"cniVersion":"0.2.0","name":"k8s","type":"lanyard-cni"}"#,
                ErrorCode::IncompatibleVersion,
                "cniVersion \"0.2.0\" is not supported",
            ),
            (
                r#"{"cniVersion":"1.0.0","type":"lanyard-cni"}"#,
                ErrorCode::InvalidConfig,
                "no name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"k8s","type":"bridge"}"#,
                ErrorCode::InvalidConfig,
                "plugin type is Some(\"bridge\")",
            ),
            (
                &conf(r#","kubeconfig":"relative/kc""#),
                ErrorCode::InvalidConfig,
                "not an absolute path",
            ),
            (
                &conf(r#","log_level":"loud""#),
                ErrorCode::InvalidConfig,
                "not a level",
            ),
            (
                &conf(r#","kube_timeout_seconds":0"#),
                ErrorCode::InvalidConfig,
                "out of range",
            ),
            (
                &conf(r#","kube_timeout_seconds":-1"#),
                ErrorCode::DecodeFailure,
                "not valid JSON",
            ),
            (
                &conf(r#","prevResult":[1]"#),
                ErrorCode::InvalidConfig,
                "prevResult is not a JSON object",
            ),
            (
                &conf(r#","kubeconfig":7"#),
                ErrorCode::DecodeFailure,
                "not valid JSON",
            ),
        ];
        for (text, code, says) in cases {
            let err = parse_config(text.as_bytes()).unwrap_err();
            assert_eq!(err.code, *code, "{text}: {err}");
            assert!(err.to_string().contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn the_size_is_bounded() {
        let big = format!(
            r#"{{"cniVersion":"1.0.0","name":"k8s","type":"lanyard-cni","pad":"{}"}}"#,
            "x".repeat(MAX_CONFIG_BYTES)
        );
        let err = read_config(big.as_bytes()).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidConfig);
        assert_eq!(
            parse_config(big.as_bytes()).unwrap_err().code,
            ErrorCode::InvalidConfig
        );
        let small = conf("");
        assert_eq!(read_config(small.as_bytes()).unwrap(), small.as_bytes());
    }

    #[test]
    fn error_results_and_version() {
        let err = CniError::new(ErrorCode::TryAgainLater, "m", "d");
        let json: serde_json::Value = serde_json::from_str(&err.to_json("0.4.0")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"cniVersion":"0.4.0","code":11,"msg":"m","details":"d"})
        );
        let v: serde_json::Value = serde_json::from_str(&version_result()).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(
            v["supportedVersions"],
            serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0"])
        );
        assert_eq!(answer_version(br#"{"cniVersion":"0.4.0"}"#), "0.4.0");
        assert_eq!(answer_version(br#"{"cniVersion":"9"}"#), "1.0.0");
        assert_eq!(answer_version(b"nonsense"), "1.0.0");
    }

    #[test]
    fn commands() {
        for (text, command) in [
            ("ADD", Command::Add),
            ("DEL", Command::Del),
            ("CHECK", Command::Check),
            ("VERSION", Command::Version),
        ] {
            assert_eq!(Command::parse(text).unwrap(), command);
            assert_eq!(command.to_string(), text);
        }
        for other in ["add", "STATUS", "GC", ""] {
            assert_eq!(
                Command::parse(other).unwrap_err().code,
                ErrorCode::InvalidEnvironment
            );
        }
    }

    #[test]
    fn cni_args() {
        let args = parse_cni_args(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u=1",
        )
        .unwrap();
        assert_eq!(pod_of(&args), Some(("default".into(), "web-1".into())));
        assert_eq!(args["K8S_POD_UID"], "u=1");
        assert_eq!(pod_of(&parse_cni_args("").unwrap()), None);
        assert_eq!(
            pod_of(&parse_cni_args("K8S_POD_NAMESPACE=x;K8S_POD_NAME=").unwrap()),
            None
        );
        for bad in ["K8S_POD_NAME", "=x", "A=1;A=2"] {
            assert_eq!(
                parse_cni_args(bad).unwrap_err().code,
                ErrorCode::InvalidEnvironment,
                "{bad}"
            );
        }
        assert!(parse_cni_args(&"a=b;".repeat(MAX_CNI_ARGS_BYTES)).is_err());
    }
}
