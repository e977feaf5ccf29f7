//! Whether the plugin installs a pod's redirect, and if not, why it leaves the pod alone. The
//! plugin acts only on pods that carry both `lanyard.dev/inject: enabled` and
//! `lanyard.dev/redirect: cni`; the rules' parameters come from the pod's annotations
//! ([`RedirectConfig::from_annotations`], the same reading the init container's environment
//! gets).

use std::fmt;

use k8s_openapi::api::core::v1::Pod;
use lanyard_proto::inject::{INJECT_ANNOTATION, INJECT_ENABLED};
use lanyard_redirect::{
    ConfigError, REDIRECT_ANNOTATION, RedirectConfig, RedirectMode, UnknownRedirectMode,
};

/// Why the plugin leaves a pod's namespace alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeftAlone {
    /// `CNI_ARGS` names no Kubernetes pod (another runtime's container).
    NotKubernetes,
    /// The pod uses the node's network namespace: its rules would be the node's.
    HostNetwork,
    /// The pod is not injected (no `lanyard.dev/inject: enabled`).
    NoAnnotation,
    /// The pod is injected with the `lanyard-init` container, which installs the rules
    /// (`lanyard.dev/redirect: init`, or no redirect annotation: what `lanyard inject` wrote
    /// before the CNI plugin existed).
    RedirectInit,
}

impl LeftAlone {
    pub fn label(self) -> &'static str {
        match self {
            LeftAlone::NotKubernetes => "not_kubernetes",
            LeftAlone::HostNetwork => "host_network",
            LeftAlone::NoAnnotation => "no_annotation",
            LeftAlone::RedirectInit => "redirect_init",
        }
    }
}

/// Its label.
impl fmt::Display for LeftAlone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// What the plugin does with a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Install (or check) these rules in the pod's namespace.
    Redirect(RedirectConfig),
    LeaveAlone(LeftAlone),
}

/// `redirect`, or why it is left alone: the label in logs.
impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Redirect(_) => f.write_str("redirect"),
            Decision::LeaveAlone(why) => why.fmt(f),
        }
    }
}

/// Why an injected pod's annotations cannot be acted on.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecisionError {
    #[error("annotation {REDIRECT_ANNOTATION}: {0}; re-run lanyard inject --redirect cni|init")]
    UnknownRedirect(#[from] UnknownRedirectMode),
    #[error("the pod's redirect annotations: {0}")]
    Config(#[from] ConfigError),
}

/// The decision for `pod`.
pub fn decide(pod: &Pod) -> Result<Decision, DecisionError> {
    if pod
        .spec
        .as_ref()
        .and_then(|spec| spec.host_network)
        .unwrap_or(false)
    {
        return Ok(Decision::LeaveAlone(LeftAlone::HostNetwork));
    }
    let annotations = pod.metadata.annotations.as_ref();
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    if annotation(INJECT_ANNOTATION) != Some(INJECT_ENABLED) {
        return Ok(Decision::LeaveAlone(LeftAlone::NoAnnotation));
    }
    // No annotation: injected before the CNI plugin existed, so by the init container.
    let mode = match annotation(REDIRECT_ANNOTATION) {
        None => RedirectMode::Init,
        Some(value) => value.parse()?,
    };
    match mode {
        RedirectMode::Init => Ok(Decision::LeaveAlone(LeftAlone::RedirectInit)),
        RedirectMode::Cni => Ok(Decision::Redirect(RedirectConfig::from_annotations(
            annotation,
        )?)),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pod(annotations: &[(&str, &str)], host_network: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                host_network: Some(host_network),
                ..Default::default()
            }),
            status: None,
        }
    }

    const INJECTED: (&str, &str) = ("lanyard.dev/inject", "enabled");
    const CNI: (&str, &str) = ("lanyard.dev/redirect", "cni");

    #[test]
    fn only_injected_cni_pods_are_redirected() {
        let left = |p: &Pod| match decide(p).unwrap() {
            Decision::LeaveAlone(why) => why,
            Decision::Redirect(_) => panic!("redirected"),
        };
        assert_eq!(left(&pod(&[], false)), LeftAlone::NoAnnotation);
        assert_eq!(left(&pod(&[CNI], false)), LeftAlone::NoAnnotation);
        assert_eq!(
            left(&pod(&[("lanyard.dev/inject", "disabled"), CNI], false)),
            LeftAlone::NoAnnotation
        );
        assert_eq!(left(&pod(&[INJECTED], false)), LeftAlone::RedirectInit);
        assert_eq!(
            left(&pod(&[INJECTED, ("lanyard.dev/redirect", "init")], false)),
            LeftAlone::RedirectInit
        );
        assert_eq!(left(&pod(&[INJECTED, CNI], true)), LeftAlone::HostNetwork);
        assert_eq!(
            decide(&pod(&[INJECTED, CNI], false)).unwrap(),
            Decision::Redirect(RedirectConfig::default())
        );
    }

    #[test]
    fn the_rules_come_from_the_annotations() {
        let decision = decide(&pod(
            &[
                INJECTED,
                CNI,
                ("lanyard.dev/proxy-uid", "2200"),
                ("lanyard.dev/skip-outbound-ports", "5432"),
            ],
            false,
        ))
        .unwrap();
        assert_eq!(decision.to_string(), "redirect");
        let Decision::Redirect(config) = decision else {
            panic!()
        };
        assert_eq!(config.proxy_uid, 2200);
        assert_eq!(config.skip_outbound_ports, [5432]);
    }

    #[test]
    fn bad_annotations_are_errors_naming_the_annotation() {
        let err = decide(&pod(&[INJECTED, ("lanyard.dev/redirect", "ebpf")], false))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "annotation lanyard.dev/redirect: \"ebpf\" is not a redirect mode: give cni or init; \
             re-run lanyard inject --redirect cni|init"
        );
        let err = decide(&pod(
            &[INJECTED, CNI, ("lanyard.dev/proxy-inbound-port", "x")],
            false,
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("lanyard.dev/proxy-inbound-port: not a port"),
            "{err}"
        );
    }

    #[test]
    fn labels() {
        let labels: Vec<String> = [
            LeftAlone::NotKubernetes,
            LeftAlone::HostNetwork,
            LeftAlone::NoAnnotation,
            LeftAlone::RedirectInit,
        ]
        .iter()
        .map(|w| Decision::LeaveAlone(*w).to_string())
        .collect();
        assert_eq!(
            labels,
            [
                "not_kubernetes",
                "host_network",
                "no_annotation",
                "redirect_init"
            ]
        );
    }
}
