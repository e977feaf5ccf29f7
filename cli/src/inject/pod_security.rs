//! The Pod Security Standards, version 1.30: every control of the `baseline` and `restricted`
//! profiles, written out from the standard
//! (<https://kubernetes.io/docs/concepts/security/pod-security-standards/>), each named as the
//! standard names it and each violation reported with the field path that breaks it.
//!
//! `lanyard inject` runs it over the user's own pod template (before injection) to warn that a
//! namespace labelled `pod-security.kubernetes.io/enforce: restricted` would refuse the pod;
//! the tests run it over the injected output. It reads a pod template (or a Pod) as JSON: a map
//! with `metadata` and `spec`.
//!
//! Where the standard lets a pod-level field stand in for the containers' (`runAsNonRoot`,
//! `seccompProfile`), it does so here too. The `restricted` controls the standard marks as
//! Linux-only (Privilege Escalation, Seccomp, Capabilities) do not apply to pods with
//! `spec.os.name: windows`. The standard's "known list" of host ports is not modelled (as in
//! the built-in admission controller): any non-zero `hostPort` breaks Host Ports.

use std::fmt;

use serde_json::Value;

/// A profile of the standard, least to most restrictive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        })
    }
}

/// One control of the standard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Control {
    // Baseline.
    HostProcess,
    HostNamespaces,
    PrivilegedContainers,
    Capabilities,
    HostPathVolumes,
    HostPorts,
    AppArmor,
    SeLinux,
    ProcMountType,
    Seccomp,
    Sysctls,
    // Restricted (in addition to every baseline control).
    VolumeTypes,
    PrivilegeEscalation,
    RunningAsNonRoot,
    RunningAsNonRootUser,
    SeccompRestricted,
    CapabilitiesRestricted,
}

impl Control {
    /// Every control, baseline first, in the standard's order.
    pub const ALL: [Control; 17] = [
        Control::HostProcess,
        Control::HostNamespaces,
        Control::PrivilegedContainers,
        Control::Capabilities,
        Control::HostPathVolumes,
        Control::HostPorts,
        Control::AppArmor,
        Control::SeLinux,
        Control::ProcMountType,
        Control::Seccomp,
        Control::Sysctls,
        Control::VolumeTypes,
        Control::PrivilegeEscalation,
        Control::RunningAsNonRoot,
        Control::RunningAsNonRootUser,
        Control::SeccompRestricted,
        Control::CapabilitiesRestricted,
    ];

    /// The control's name in the standard (Seccomp and Capabilities appear in both profiles).
    pub fn name(self) -> &'static str {
        match self {
            Control::HostProcess => "HostProcess",
            Control::HostNamespaces => "Host Namespaces",
            Control::PrivilegedContainers => "Privileged Containers",
            Control::Capabilities | Control::CapabilitiesRestricted => "Capabilities",
            Control::HostPathVolumes => "HostPath Volumes",
            Control::HostPorts => "Host Ports",
            Control::AppArmor => "AppArmor",
            Control::SeLinux => "SELinux",
            Control::ProcMountType => "/proc Mount Type",
            Control::Seccomp | Control::SeccompRestricted => "Seccomp",
            Control::Sysctls => "Sysctls",
            Control::VolumeTypes => "Volume Types",
            Control::PrivilegeEscalation => "Privilege Escalation",
            Control::RunningAsNonRoot => "Running as Non-root",
            Control::RunningAsNonRootUser => "Running as Non-root user",
        }
    }

    /// The profile that introduces the control (a pod breaking it needs the profile below).
    pub fn level(self) -> Level {
        match self {
            Control::VolumeTypes
            | Control::PrivilegeEscalation
            | Control::RunningAsNonRoot
            | Control::RunningAsNonRootUser
            | Control::SeccompRestricted
            | Control::CapabilitiesRestricted => Level::Restricted,
            _ => Level::Baseline,
        }
    }
}

/// `baseline/Host Namespaces`: the profile and the standard's name (also a metric label).
impl fmt::Display for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.level(), self.name())
    }
}

/// A field that breaks a control.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub control: Control,
    /// Where, e.g. `spec.initContainers[0].securityContext.capabilities.add[1]`.
    pub path: String,
    /// What is there, as JSON (`unset` when the control needs the field set).
    pub found: String,
    /// What the standard allows there.
    pub allowed: &'static str,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {} is {}; allowed: {}",
            self.control.name(),
            self.control.level(),
            self.path,
            self.found,
            self.allowed
        )
    }
}

/// Capabilities `baseline` lets a container add.
pub const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Sysctls `baseline` allows (the 1.30 list).
pub const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// SELinux types `baseline` allows (besides unset or empty).
pub const SELINUX_TYPES: [&str; 3] = ["container_t", "container_init_t", "container_kvm_t"];

/// Volume sources `restricted` allows.
pub const RESTRICTED_VOLUME_SOURCES: [&str; 8] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// The annotation prefix of the (beta) per-container AppArmor profiles.
pub const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";

const CONTAINER_FIELDS: [&str; 3] = ["containers", "initContainers", "ephemeralContainers"];

/// Every violation of every control (both profiles) in `template`.
pub fn check(template: &Value) -> Vec<Violation> {
    let mut out = Checker::default();
    out.run(template);
    out.violations
}

/// The most restrictive profile `template` satisfies, given its violations.
pub fn satisfied_level(violations: &[Violation]) -> Level {
    match violations.iter().map(|v| v.control.level()).min() {
        None => Level::Restricted,
        Some(Level::Restricted) => Level::Baseline,
        Some(_) => Level::Privileged,
    }
}

#[derive(Default)]
struct Checker {
    violations: Vec<Violation>,
}

/// The text of a value for messages.
fn shown(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "unset".to_owned(),
        Some(v) => v.to_string(),
    }
}

fn is_unset(value: Option<&Value>) -> bool {
    matches!(value, None | Some(Value::Null))
}

fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

fn items(value: Option<&Value>) -> &[Value] {
    match value {
        Some(Value::Array(items)) => items,
        _ => &[],
    }
}

/// A container and its path (`spec.containers[0]`).
struct Container<'a> {
    path: String,
    value: &'a Value,
}

impl Container<'_> {
    fn context(&self, path: &[&str]) -> Option<&Value> {
        at(self.value, &[&["securityContext"], path].concat())
    }

    fn context_path(&self, path: &[&str]) -> String {
        format!("{}.securityContext.{}", self.path, path.join("."))
    }
}

impl Checker {
    fn flag(
        &mut self,
        control: Control,
        path: String,
        found: Option<&Value>,
        allowed: &'static str,
    ) {
        self.violations.push(Violation {
            control,
            path,
            found: shown(found),
            allowed,
        });
    }

    /// Flags `value` at `path` unless `ok`.
    fn require(
        &mut self,
        control: Control,
        path: String,
        value: Option<&Value>,
        allowed: &'static str,
        ok: impl Fn(Option<&Value>) -> bool,
    ) {
        if !ok(value) {
            self.flag(control, path, value, allowed);
        }
    }

    fn run(&mut self, template: &Value) {
        let empty = Value::Null;
        let spec = template.get("spec").unwrap_or(&empty);
        let annotations = at(template, &["metadata", "annotations"]);
        let pod = spec.get("securityContext").unwrap_or(&empty);
        let windows = at(spec, &["os", "name"]).and_then(Value::as_str) == Some("windows");
        let containers: Vec<Container> = CONTAINER_FIELDS
            .iter()
            .flat_map(|field| {
                items(spec.get(*field))
                    .iter()
                    .enumerate()
                    .map(move |(i, value)| Container {
                        path: format!("spec.{field}[{i}]"),
                        value,
                    })
            })
            .collect();

        self.host_process(pod, &containers);
        self.host_namespaces(spec);
        self.privileged(&containers);
        self.capabilities_baseline(&containers);
        self.volumes(spec);
        self.host_ports(&containers);
        self.app_armor(annotations, pod, &containers);
        self.se_linux(pod, &containers);
        self.proc_mount(&containers);
        self.seccomp_baseline(pod, &containers);
        self.sysctls(pod);
        self.run_as_non_root(pod, &containers);
        self.run_as_user(pod, &containers);
        if !windows {
            self.privilege_escalation(&containers);
            self.seccomp_restricted(pod, &containers);
            self.capabilities_restricted(&containers);
        }
    }

    fn host_process(&mut self, pod: &Value, containers: &[Container]) {
        let not_true = |v: Option<&Value>| is_unset(v) || v == Some(&Value::Bool(false));
        const ALLOWED: &str = "unset or false";
        let field = ["windowsOptions", "hostProcess"];
        self.require(
            Control::HostProcess,
            "spec.securityContext.windowsOptions.hostProcess".into(),
            at(pod, &field),
            ALLOWED,
            not_true,
        );
        for c in containers {
            self.require(
                Control::HostProcess,
                c.context_path(&field),
                c.context(&field),
                ALLOWED,
                not_true,
            );
        }
    }

    fn host_namespaces(&mut self, spec: &Value) {
        for field in ["hostNetwork", "hostPID", "hostIPC"] {
            self.require(
                Control::HostNamespaces,
                format!("spec.{field}"),
                spec.get(field),
                "unset or false",
                |v| is_unset(v) || v == Some(&Value::Bool(false)),
            );
        }
    }

    fn privileged(&mut self, containers: &[Container]) {
        for c in containers {
            self.require(
                Control::PrivilegedContainers,
                c.context_path(&["privileged"]),
                c.context(&["privileged"]),
                "unset or false",
                |v| is_unset(v) || v == Some(&Value::Bool(false)),
            );
        }
    }

    fn capabilities_baseline(&mut self, containers: &[Container]) {
        for c in containers {
            for (j, cap) in items(c.context(&["capabilities", "add"]))
                .iter()
                .enumerate()
            {
                self.require(
                    Control::Capabilities,
                    format!("{}[{j}]", c.context_path(&["capabilities", "add"])),
                    Some(cap),
                    "AUDIT_WRITE, CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, MKNOD, \
                     NET_BIND_SERVICE, SETFCAP, SETGID, SETPCAP, SETUID, SYS_CHROOT",
                    |v| {
                        v.and_then(Value::as_str)
                            .is_some_and(|name| BASELINE_CAPABILITIES.contains(&name))
                    },
                );
            }
        }
    }

    /// HostPath Volumes (baseline) and Volume Types (restricted).
    fn volumes(&mut self, spec: &Value) {
        for (i, volume) in items(spec.get("volumes")).iter().enumerate() {
            let path = format!("spec.volumes[{i}]");
            self.require(
                Control::HostPathVolumes,
                format!("{path}.hostPath"),
                volume.get("hostPath"),
                "unset",
                is_unset,
            );
            let Some(fields) = volume.as_object() else {
                continue;
            };
            for (key, value) in fields {
                if key == "name" || is_unset(Some(value)) {
                    continue;
                }
                self.require(
                    Control::VolumeTypes,
                    format!("{path}.{key}"),
                    Some(value),
                    "only the volume sources configMap, csi, downwardAPI, emptyDir, ephemeral, \
                     persistentVolumeClaim, projected, secret",
                    |_| RESTRICTED_VOLUME_SOURCES.contains(&key.as_str()),
                );
            }
        }
    }

    fn host_ports(&mut self, containers: &[Container]) {
        for c in containers {
            for (j, port) in items(c.value.get("ports")).iter().enumerate() {
                self.require(
                    Control::HostPorts,
                    format!("{}.ports[{j}].hostPort", c.path),
                    port.get("hostPort"),
                    "unset or 0",
                    |v| is_unset(v) || v.and_then(Value::as_i64) == Some(0),
                );
            }
        }
    }

    fn app_armor(&mut self, annotations: Option<&Value>, pod: &Value, containers: &[Container]) {
        if let Some(Value::Object(annotations)) = annotations {
            for (key, value) in annotations {
                if key.starts_with(APPARMOR_ANNOTATION_PREFIX) {
                    self.require(
                        Control::AppArmor,
                        format!("metadata.annotations[{key:?}]"),
                        Some(value),
                        "runtime/default or localhost/*",
                        |v| {
                            v.and_then(Value::as_str).is_some_and(|profile| {
                                profile == "runtime/default" || profile.starts_with("localhost/")
                            })
                        },
                    );
                }
            }
        }
        let ok = |v: Option<&Value>| {
            is_unset(v)
                || matches!(
                    v.and_then(Value::as_str),
                    Some("RuntimeDefault" | "Localhost")
                )
        };
        const ALLOWED: &str = "unset, RuntimeDefault or Localhost";
        let field = ["appArmorProfile", "type"];
        self.require(
            Control::AppArmor,
            "spec.securityContext.appArmorProfile.type".into(),
            at(pod, &field),
            ALLOWED,
            ok,
        );
        for c in containers {
            self.require(
                Control::AppArmor,
                c.context_path(&field),
                c.context(&field),
                ALLOWED,
                ok,
            );
        }
    }

    fn se_linux(&mut self, pod: &Value, containers: &[Container]) {
        let mut places: Vec<(String, Option<&Value>)> = vec![(
            "spec.securityContext.seLinuxOptions".into(),
            pod.get("seLinuxOptions"),
        )];
        places.extend(containers.iter().map(|c| {
            (
                c.context_path(&["seLinuxOptions"]),
                c.context(&["seLinuxOptions"]),
            )
        }));
        let empty = |v: Option<&Value>| is_unset(v) || v.and_then(Value::as_str) == Some("");
        for (path, options) in places {
            let Some(options) = options else { continue };
            self.require(
                Control::SeLinux,
                format!("{path}.type"),
                options.get("type"),
                "unset, \"\", container_t, container_init_t or container_kvm_t",
                |v| {
                    empty(v)
                        || v.and_then(Value::as_str)
                            .is_some_and(|t| SELINUX_TYPES.contains(&t))
                },
            );
            for field in ["user", "role"] {
                self.require(
                    Control::SeLinux,
                    format!("{path}.{field}"),
                    options.get(field),
                    "unset or \"\"",
                    empty,
                );
            }
        }
    }

    fn proc_mount(&mut self, containers: &[Container]) {
        for c in containers {
            self.require(
                Control::ProcMountType,
                c.context_path(&["procMount"]),
                c.context(&["procMount"]),
                "unset or Default",
                |v| is_unset(v) || v.and_then(Value::as_str) == Some("Default"),
            );
        }
    }

    fn seccomp_baseline(&mut self, pod: &Value, containers: &[Container]) {
        let ok = |v: Option<&Value>| is_unset(v) || seccomp_allowed(v);
        const ALLOWED: &str = "unset, RuntimeDefault or Localhost";
        let field = ["seccompProfile", "type"];
        self.require(
            Control::Seccomp,
            "spec.securityContext.seccompProfile.type".into(),
            at(pod, &field),
            ALLOWED,
            ok,
        );
        for c in containers {
            self.require(
                Control::Seccomp,
                c.context_path(&field),
                c.context(&field),
                ALLOWED,
                ok,
            );
        }
    }

    fn sysctls(&mut self, pod: &Value) {
        for (i, sysctl) in items(pod.get("sysctls")).iter().enumerate() {
            self.require(
                Control::Sysctls,
                format!("spec.securityContext.sysctls[{i}].name"),
                sysctl.get("name"),
                "kernel.shm_rmid_forced, net.ipv4.ip_local_port_range, \
                 net.ipv4.ip_unprivileged_port_start, net.ipv4.tcp_syncookies, \
                 net.ipv4.ping_group_range, net.ipv4.ip_local_reserved_ports, \
                 net.ipv4.tcp_keepalive_time, net.ipv4.tcp_fin_timeout, \
                 net.ipv4.tcp_keepalive_intvl, net.ipv4.tcp_keepalive_probes",
                |v| {
                    v.and_then(Value::as_str)
                        .is_some_and(|name| SAFE_SYSCTLS.contains(&name))
                },
            );
        }
    }

    fn privilege_escalation(&mut self, containers: &[Container]) {
        for c in containers {
            self.require(
                Control::PrivilegeEscalation,
                c.context_path(&["allowPrivilegeEscalation"]),
                c.context(&["allowPrivilegeEscalation"]),
                "false",
                |v| v == Some(&Value::Bool(false)),
            );
        }
    }

    fn run_as_non_root(&mut self, pod: &Value, containers: &[Container]) {
        let pod_value = pod.get("runAsNonRoot");
        // Set at the pod, it must be true; unset, every container must say true itself.
        self.require(
            Control::RunningAsNonRoot,
            "spec.securityContext.runAsNonRoot".into(),
            pod_value,
            "true",
            |v| is_unset(v) || v == Some(&Value::Bool(true)),
        );
        let pod_true = pod_value == Some(&Value::Bool(true));
        for c in containers {
            self.require(
                Control::RunningAsNonRoot,
                c.context_path(&["runAsNonRoot"]),
                c.context(&["runAsNonRoot"]),
                "true (or unset with spec.securityContext.runAsNonRoot: true)",
                |v| v == Some(&Value::Bool(true)) || (is_unset(v) && pod_true),
            );
        }
    }

    fn run_as_user(&mut self, pod: &Value, containers: &[Container]) {
        let ok = |v: Option<&Value>| is_unset(v) || v.and_then(Value::as_i64) != Some(0);
        const ALLOWED: &str = "unset or a non-zero uid";
        self.require(
            Control::RunningAsNonRootUser,
            "spec.securityContext.runAsUser".into(),
            pod.get("runAsUser"),
            ALLOWED,
            ok,
        );
        for c in containers {
            self.require(
                Control::RunningAsNonRootUser,
                c.context_path(&["runAsUser"]),
                c.context(&["runAsUser"]),
                ALLOWED,
                ok,
            );
        }
    }

    fn seccomp_restricted(&mut self, pod: &Value, containers: &[Container]) {
        let field = ["seccompProfile", "type"];
        let pod_value = at(pod, &field);
        self.require(
            Control::SeccompRestricted,
            "spec.securityContext.seccompProfile.type".into(),
            pod_value,
            "RuntimeDefault or Localhost (may be unset when every container sets it)",
            |v| is_unset(v) || seccomp_allowed(v),
        );
        let pod_set = seccomp_allowed(pod_value);
        for c in containers {
            self.require(
                Control::SeccompRestricted,
                c.context_path(&field),
                c.context(&field),
                "RuntimeDefault or Localhost (or unset with the pod's set to one of them)",
                |v| seccomp_allowed(v) || (is_unset(v) && pod_set),
            );
        }
    }

    fn capabilities_restricted(&mut self, containers: &[Container]) {
        for c in containers {
            let drop = c.context(&["capabilities", "drop"]);
            let drops_all = items(drop).iter().any(|d| d.as_str() == Some("ALL"));
            if !drops_all {
                self.flag(
                    Control::CapabilitiesRestricted,
                    c.context_path(&["capabilities", "drop"]),
                    drop,
                    "a list containing ALL",
                );
            }
            for (j, cap) in items(c.context(&["capabilities", "add"]))
                .iter()
                .enumerate()
            {
                self.require(
                    Control::CapabilitiesRestricted,
                    format!("{}[{j}]", c.context_path(&["capabilities", "add"])),
                    Some(cap),
                    "NET_BIND_SERVICE only",
                    |v| v.and_then(Value::as_str) == Some("NET_BIND_SERVICE"),
                );
            }
        }
    }
}

fn seccomp_allowed(value: Option<&Value>) -> bool {
    matches!(
        value.and_then(Value::as_str),
        Some("RuntimeDefault" | "Localhost")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_control_has_a_distinct_label() {
        let labels: std::collections::HashSet<String> =
            Control::ALL.iter().map(ToString::to_string).collect();
        assert_eq!(labels.len(), Control::ALL.len());
        assert_eq!(Control::SeccompRestricted.to_string(), "restricted/Seccomp");
        assert_eq!(
            Control::HostNamespaces.to_string(),
            "baseline/Host Namespaces"
        );
    }

    #[test]
    fn the_level_is_the_least_restrictive_broken_profile() {
        let pod = json!({"spec": {"containers": [{"name": "a", "image": "a"}]}});
        let violations = check(&pod);
        // A minimal pod passes baseline (its default) but not restricted.
        assert_eq!(
            satisfied_level(&violations),
            Level::Baseline,
            "{violations:?}"
        );
        assert!(satisfied_level(&[]) == Level::Restricted);
    }
}
