//! Pod Security Standards (version 1.30) over `lanyard inject`'s output.
//!
//! - `lanyard inject --redirect cni` of a restricted-compliant app passes every control of
//!   `restricted` (and so of `baseline`), for every workload kind inject handles and inside a
//!   `List`, through the binary;
//! - `--redirect init` (and `--socket-volume hostpath`) output is reported as breaking
//!   baseline controls, i.e. as needing `privileged`, naming the controls and the fields;
//! - every control fires on a manifest that breaks it, at the field that breaks it, and not
//!   on the same manifest mended (so no rule is dead and none fires at random);
//! - inject warns (stderr, not failure) when the app's own spec breaks `restricted`.
//!
//! The controls themselves are `lanyard_cli::inject::pod_security`, the code inject warns with.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use lanyard_cli::inject::pod_security::{Control, Level, Violation, check, satisfied_level};
use lanyard_cli::yaml::{Yaml, read_stream};
use serde_json::{Value, json};

/// A pod spec that meets `restricted` on its own (indented for a Deployment's template).
const RESTRICTED_SPEC: &str = "
      securityContext:
        runAsNonRoot: true
        seccompProfile: {type: RuntimeDefault}
      initContainers:
      - name: migrate
        image: app:1
        securityContext:
          allowPrivilegeEscalation: false
          capabilities: {drop: [ALL]}
      containers:
      - name: app
        image: app:1
        ports: [{containerPort: 8080}]
        securityContext:
          runAsUser: 1000
          allowPrivilegeEscalation: false
          capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}
      volumes:
      - name: cfg
        configMap: {name: app}
      - name: scratch
        emptyDir: {}
";

/// Every kind inject handles, with the path of its pod template.
const KINDS: [(&str, &str, &[&str]); 7] = [
    ("v1", "Pod", &[]),
    ("apps/v1", "Deployment", &["spec", "template"]),
    ("apps/v1", "StatefulSet", &["spec", "template"]),
    ("apps/v1", "DaemonSet", &["spec", "template"]),
    ("apps/v1", "ReplicaSet", &["spec", "template"]),
    ("batch/v1", "Job", &["spec", "template"]),
    (
        "batch/v1",
        "CronJob",
        &["spec", "jobTemplate", "spec", "template"],
    ),
];

fn workload(api_version: &str, kind: &str, spec: &str) -> String {
    match kind {
        "Pod" => format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:{}",
            spec.replace("\n      ", "\n  ")
        ),
        "CronJob" => format!(
            "apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: c}}\nspec:\n  schedule: '@hourly'\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never{}",
            spec.replace("\n      ", "\n          ")
        ),
        "Job" => format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: j}}\nspec:\n  template:\n    spec:\n      restartPolicy: Never{spec}"
        ),
        _ => format!(
            "apiVersion: {api_version}\nkind: {kind}\nmetadata: {{name: w}}\nspec:\n  selector:\n    matchLabels: {{app: w}}\n  template:\n    metadata:\n      labels: {{app: w}}\n    spec:{spec}"
        ),
    }
}

/// Every kind, then a `List` holding a Deployment.
fn all_kinds(spec: &str) -> String {
    let mut docs: Vec<String> = KINDS
        .iter()
        .map(|(api_version, kind, _)| workload(api_version, kind, spec))
        .collect();
    let item = workload("apps/v1", "Deployment", spec).replace('\n', "\n  ");
    docs.push(format!("apiVersion: v1\nkind: List\nitems:\n- {item}\n"));
    docs.join("---\n")
}

fn lanyard(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn inject(args: &[&str], stdin: &str) -> (String, String) {
    let out = lanyard(&[&["inject", "-"], args].concat(), stdin);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?}: {stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

/// Every pod template in the output (a `List`'s items included), as JSON, with its kind.
fn templates(output: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for doc in read_stream(output).unwrap() {
        let value = serde_json::to_value(doc.value.unwrap()).unwrap();
        collect(&value, &mut out);
    }
    out
}

fn collect(doc: &Value, out: &mut Vec<(String, Value)>) {
    let kind = doc["kind"].as_str().unwrap_or_default();
    if kind == "List" {
        for item in doc["items"].as_array().unwrap() {
            collect(item, out);
        }
        return;
    }
    let (_, _, path) = KINDS
        .iter()
        .find(|(_, k, _)| *k == kind)
        .unwrap_or_else(|| panic!("not a workload: {kind}"));
    let template = path.iter().fold(doc, |v, key| &v[*key]);
    assert!(template["spec"].is_object(), "{kind}: no pod template");
    out.push((kind.to_owned(), template.clone()));
}

fn describe(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| format!("\n  {v}"))
        .collect::<String>()
}

#[test]
fn cni_output_passes_restricted_for_every_kind() {
    let input = all_kinds(RESTRICTED_SPEC);
    for socket in [&[][..], &["--socket-volume", "csi"][..]] {
        let (output, stderr) = inject(&[&["--redirect", "cni"], socket].concat(), &input);
        assert!(
            !stderr.contains("warning"),
            "a restricted app draws no warning: {stderr}"
        );
        let templates = templates(&output);
        assert_eq!(templates.len(), KINDS.len() + 1);
        for (kind, template) in &templates {
            // Injected, in cni mode, with the CSI volume: what is checked is what was meant.
            let init: Vec<&str> = template["spec"]["initContainers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap())
                .collect();
            assert_eq!(
                init,
                ["lanyard-validate", "lanyard-proxy", "migrate"],
                "{kind}"
            );
            let volume = template["spec"]["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == "lanyard-sockets")
                .unwrap();
            assert_eq!(
                volume["csi"],
                json!({"driver": "csi.lanyard.dev", "readOnly": true})
            );
            let violations = check(template);
            assert!(
                violations.is_empty(),
                "{kind}: breaks restricted:{}",
                describe(&violations)
            );
            assert_eq!(satisfied_level(&violations), Level::Restricted);
        }
    }
}

#[test]
fn init_output_needs_privileged() {
    let input = all_kinds(RESTRICTED_SPEC);
    let (output, _) = inject(
        &["--redirect", "init", "--socket-volume", "hostpath"],
        &input,
    );
    for (kind, template) in templates(&output) {
        let violations = check(&template);
        assert_eq!(
            satisfied_level(&violations),
            Level::Privileged,
            "{kind}:{}",
            describe(&violations)
        );
        let found: Vec<(Control, &str)> = violations
            .iter()
            .map(|v| (v.control, v.path.as_str()))
            .collect();
        let init = "spec.initContainers[0].securityContext";
        for expected in [
            (Control::Capabilities, format!("{init}.capabilities.add[0]")),
            (Control::Capabilities, format!("{init}.capabilities.add[1]")),
            (Control::HostPathVolumes, "spec.volumes[2].hostPath".into()),
            (Control::VolumeTypes, "spec.volumes[2].hostPath".into()),
            (Control::RunningAsNonRoot, format!("{init}.runAsNonRoot")),
            (Control::RunningAsNonRootUser, format!("{init}.runAsUser")),
            (
                Control::CapabilitiesRestricted,
                format!("{init}.capabilities.add[0]"),
            ),
        ] {
            assert!(
                found.contains(&(expected.0, expected.1.as_str())),
                "{kind}: {expected:?} not reported:{}",
                describe(&violations)
            );
        }
        // Nothing but Lanyard's init container and hostPath volume is at fault.
        for v in &violations {
            assert!(
                v.path.starts_with(init) || v.path.starts_with("spec.volumes[2]"),
                "{kind}: {v}"
            );
        }
        let text = violations[0].to_string();
        assert!(text.starts_with("Capabilities (baseline): "), "{text}");
    }
    // The init container alone (CSI volume) still needs privileged; the hostPath volume alone
    // (cni mode) too.
    for (args, control) in [
        (&["--redirect", "init"][..], Control::Capabilities),
        (
            &["--redirect", "cni", "--socket-volume", "hostpath"][..],
            Control::HostPathVolumes,
        ),
    ] {
        let (output, _) = inject(args, &workload("v1", "Pod", RESTRICTED_SPEC));
        let (_, template) = &templates(&output)[0];
        let violations = check(template);
        assert_eq!(satisfied_level(&violations), Level::Privileged, "{args:?}");
        assert!(
            violations.iter().any(|v| v.control == control),
            "{args:?}:{}",
            describe(&violations)
        );
    }
}

/// The first app container's securityContext.
fn c(pod: &mut Value) -> &mut Value {
    &mut pod["spec"]["containers"][0]["securityContext"]
}

/// A pod (as JSON) whose spec is `restricted`-compliant except for `patch`, applied to it.
fn breaking(patch: impl FnOnce(&mut Value)) -> Value {
    let mut pod = json!({
        "metadata": {"name": "p", "annotations": {}},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "app",
                "image": "app:1",
                "ports": [{"containerPort": 80}],
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                },
            }],
            "volumes": [{"name": "cfg", "configMap": {"name": "c"}}],
        },
    });
    patch(&mut pod);
    pod
}

/// One case per way the standard lets a control be broken: the control, the manifest, and
/// the field reported.
fn cases() -> Vec<(Control, Value, &'static str)> {
    vec![
        (
            Control::HostProcess,
            breaking(|p| c(p)["windowsOptions"] = json!({"hostProcess": true})),
            "spec.containers[0].securityContext.windowsOptions.hostProcess",
        ),
        (
            Control::HostProcess,
            breaking(|p| {
                p["spec"]["securityContext"]["windowsOptions"] = json!({"hostProcess": true})
            }),
            "spec.securityContext.windowsOptions.hostProcess",
        ),
        (
            Control::HostNamespaces,
            breaking(|p| p["spec"]["hostNetwork"] = json!(true)),
            "spec.hostNetwork",
        ),
        (
            Control::HostNamespaces,
            breaking(|p| p["spec"]["hostPID"] = json!(true)),
            "spec.hostPID",
        ),
        (
            Control::HostNamespaces,
            breaking(|p| p["spec"]["hostIPC"] = json!(true)),
            "spec.hostIPC",
        ),
        (
            Control::PrivilegedContainers,
            breaking(|p| c(p)["privileged"] = json!(true)),
            "spec.containers[0].securityContext.privileged",
        ),
        (
            Control::PrivilegedContainers,
            breaking(|p| {
                p["spec"]["ephemeralContainers"] = json!([{"name": "debug", "image": "d",
                    "securityContext": {"privileged": true, "allowPrivilegeEscalation": false,
                        "capabilities": {"drop": ["ALL"]}}}])
            }),
            "spec.ephemeralContainers[0].securityContext.privileged",
        ),
        (
            Control::Capabilities,
            breaking(|p| c(p)["capabilities"]["add"] = json!(["SYS_ADMIN"])),
            "spec.containers[0].securityContext.capabilities.add[0]",
        ),
        (
            Control::HostPathVolumes,
            breaking(|p| p["spec"]["volumes"][0] = json!({"name": "h", "hostPath": {"path": "/"}})),
            "spec.volumes[0].hostPath",
        ),
        (
            Control::HostPorts,
            breaking(|p| p["spec"]["containers"][0]["ports"][0]["hostPort"] = json!(8080)),
            "spec.containers[0].ports[0].hostPort",
        ),
        (
            Control::AppArmor,
            breaking(|p| {
                p["metadata"]["annotations"]["container.apparmor.security.beta.kubernetes.io/app"] =
                    json!("unconfined")
            }),
            "metadata.annotations[\"container.apparmor.security.beta.kubernetes.io/app\"]",
        ),
        (
            Control::AppArmor,
            breaking(|p| c(p)["appArmorProfile"] = json!({"type": "Unconfined"})),
            "spec.containers[0].securityContext.appArmorProfile.type",
        ),
        (
            Control::AppArmor,
            breaking(|p| {
                p["spec"]["securityContext"]["appArmorProfile"] = json!({"type": "Unconfined"})
            }),
            "spec.securityContext.appArmorProfile.type",
        ),
        (
            Control::SeLinux,
            breaking(|p| c(p)["seLinuxOptions"] = json!({"type": "spc_t"})),
            "spec.containers[0].securityContext.seLinuxOptions.type",
        ),
        (
            Control::SeLinux,
            breaking(|p| p["spec"]["securityContext"]["seLinuxOptions"] = json!({"user": "root"})),
            "spec.securityContext.seLinuxOptions.user",
        ),
        (
            Control::SeLinux,
            breaking(|p| c(p)["seLinuxOptions"] = json!({"role": "sysadm_r"})),
            "spec.containers[0].securityContext.seLinuxOptions.role",
        ),
        (
            Control::ProcMountType,
            breaking(|p| c(p)["procMount"] = json!("Unmasked")),
            "spec.containers[0].securityContext.procMount",
        ),
        (
            Control::Seccomp,
            breaking(|p| c(p)["seccompProfile"] = json!({"type": "Unconfined"})),
            "spec.containers[0].securityContext.seccompProfile.type",
        ),
        (
            Control::Sysctls,
            breaking(|p| {
                p["spec"]["securityContext"]["sysctls"] = json!([{"name": "net.ipv4.tcp_syncookies", "value": "1"},
                           {"name": "kernel.msgmax", "value": "1"}])
            }),
            "spec.securityContext.sysctls[1].name",
        ),
        (
            Control::VolumeTypes,
            breaking(|p| {
                p["spec"]["volumes"][0] = json!({"name": "n", "nfs": {"server": "s", "path": "/"}})
            }),
            "spec.volumes[0].nfs",
        ),
        (
            Control::PrivilegeEscalation,
            breaking(|p| {
                c(p).as_object_mut()
                    .unwrap()
                    .remove("allowPrivilegeEscalation");
            }),
            "spec.containers[0].securityContext.allowPrivilegeEscalation",
        ),
        (
            Control::RunningAsNonRoot,
            breaking(|p| {
                p["spec"]["securityContext"]
                    .as_object_mut()
                    .unwrap()
                    .remove("runAsNonRoot");
            }),
            "spec.containers[0].securityContext.runAsNonRoot",
        ),
        (
            Control::RunningAsNonRoot,
            breaking(|p| c(p)["runAsNonRoot"] = json!(false)),
            "spec.containers[0].securityContext.runAsNonRoot",
        ),
        (
            Control::RunningAsNonRootUser,
            breaking(|p| c(p)["runAsUser"] = json!(0)),
            "spec.containers[0].securityContext.runAsUser",
        ),
        (
            Control::RunningAsNonRootUser,
            breaking(|p| p["spec"]["securityContext"]["runAsUser"] = json!(0)),
            "spec.securityContext.runAsUser",
        ),
        (
            Control::SeccompRestricted,
            breaking(|p| {
                p["spec"]["securityContext"]
                    .as_object_mut()
                    .unwrap()
                    .remove("seccompProfile");
            }),
            "spec.containers[0].securityContext.seccompProfile.type",
        ),
        (
            Control::CapabilitiesRestricted,
            breaking(|p| c(p)["capabilities"] = json!({"drop": ["NET_RAW"]})),
            "spec.containers[0].securityContext.capabilities.drop",
        ),
        (
            Control::CapabilitiesRestricted,
            breaking(|p| c(p)["capabilities"]["add"] = json!(["CHOWN"])),
            "spec.containers[0].securityContext.capabilities.add[0]",
        ),
    ]
}

#[test]
fn every_control_fires_at_the_field_that_breaks_it() {
    // The base manifest passes: every firing below is the patch's doing.
    let base = breaking(|_| {});
    assert_eq!(check(&base), [], "the base manifest is restricted");
    let mut fired = std::collections::HashSet::new();
    for (control, pod, path) in cases() {
        let violations = check(&pod);
        assert!(
            violations
                .iter()
                .any(|v| v.control == control && v.path == path),
            "{control} not reported at {path}:{}",
            describe(&violations)
        );
        let level = satisfied_level(&violations);
        let expected = match control.level() {
            Level::Restricted => Level::Baseline,
            _ => Level::Privileged,
        };
        assert_eq!(level, expected, "{control} at {path}");
        fired.insert(control);
    }
    let dead: Vec<_> = Control::ALL.iter().filter(|c| !fired.contains(c)).collect();
    assert!(dead.is_empty(), "controls no case breaks: {dead:?}");
}

/// What the standard allows is allowed: the values at the edge of each control.
#[test]
fn allowed_values_pass() {
    let allowed = [
        breaking(|p| c(p)["capabilities"]["add"] = json!(["NET_BIND_SERVICE"])),
        breaking(|p| p["spec"]["containers"][0]["ports"][0]["hostPort"] = json!(0)),
        breaking(|p| {
            p["metadata"]["annotations"]["container.apparmor.security.beta.kubernetes.io/app"] =
                json!("localhost/my-profile");
            c(p)["appArmorProfile"] = json!({"type": "RuntimeDefault"});
        }),
        breaking(|p| {
            c(p)["seLinuxOptions"] = json!({"type": "container_init_t", "level": "s0:c1"})
        }),
        breaking(|p| c(p)["procMount"] = json!("Default")),
        breaking(|p| {
            c(p)["seccompProfile"] = json!({"type": "Localhost", "localhostProfile": "x"})
        }),
        breaking(|p| {
            p["spec"]["securityContext"]["sysctls"] =
                json!([{"name": "net.ipv4.tcp_keepalive_probes", "value": "3"}])
        }),
        breaking(|p| {
            p["spec"]["volumes"] = json!([
                {"name": "a", "csi": {"driver": "csi.lanyard.dev"}},
                {"name": "b", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
                {"name": "c", "persistentVolumeClaim": {"claimName": "c"}},
                {"name": "d", "projected": {"sources": []}},
                {"name": "e", "secret": {"secretName": "e"}},
                {"name": "f", "downwardAPI": {"items": []}},
            ])
        }),
        // The pod-level seccomp profile stands in for the container's, and the containers'
        // runAsNonRoot for the pod's.
        breaking(|p| {
            p["spec"]["securityContext"] = json!({"seccompProfile": {"type": "RuntimeDefault"}});
            c(p)["runAsNonRoot"] = json!(true);
        }),
        // Windows pods: the Linux-only restricted controls do not apply.
        breaking(|p| {
            p["spec"]["os"] = json!({"name": "windows"});
            p["spec"]["securityContext"] = json!({"runAsNonRoot": true});
            p["spec"]["containers"][0]["securityContext"] = json!({});
        }),
    ];
    for pod in allowed {
        let violations = check(&pod);
        assert!(violations.is_empty(), "{pod}:{}", describe(&violations));
    }
}

#[test]
fn inject_warns_when_the_apps_own_spec_breaks_restricted() {
    // The default pod spec of most manifests: no securityContext at all.
    let plain = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n      - {name: web, image: web:1}\n";
    let (output, stderr) = inject(&["--redirect", "cni"], plain);
    assert!(output.contains("lanyard-validate"), "injected all the same");
    assert!(
        stderr.contains(
            "warning: <stdin>: document 1 (Deployment shop/web): the pod's own spec breaks Pod \
             Security restricted (it needs baseline;"
        ),
        "{stderr}"
    );
    for control in [
        "Privilege Escalation (restricted): spec.containers[0].securityContext.allowPrivilegeEscalation is unset",
        "Running as Non-root (restricted): spec.containers[0].securityContext.runAsNonRoot is unset",
        "Seccomp (restricted): spec.containers[0].securityContext.seccompProfile.type is unset",
        "Capabilities (restricted): spec.containers[0].securityContext.capabilities.drop is unset",
    ] {
        assert!(stderr.contains(control), "{control} missing: {stderr}");
    }
    // Lanyard's own containers from an earlier injection are not the app's fault: an
    // init-mode pod re-injected draws no warning about lanyard-init.
    let restricted = workload("v1", "Pod", RESTRICTED_SPEC);
    let (once, _) = inject(&["--redirect", "init"], &restricted);
    let (_, stderr) = inject(&["--redirect", "cni"], &once);
    assert!(!stderr.contains("warning"), "{stderr}");
    // A privileged app is said to need privileged; a List item is named.
    let privileged = all_kinds(&RESTRICTED_SPEC.replace(
        "allowPrivilegeEscalation: false\n          capabilities: {drop: [ALL]}\n      containers",
        "allowPrivilegeEscalation: false\n          privileged: true\n          capabilities: {drop: [ALL]}\n      containers",
    ));
    let (_, stderr) = inject(&["--redirect", "cni"], &privileged);
    assert!(stderr.contains("(it needs privileged;"), "{stderr}");
    assert!(
        stderr.contains("document 8 (List (no name) items[0] (Deployment w))"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "Privileged Containers (baseline): spec.initContainers[0].securityContext.privileged is true"
        ),
        "{stderr}"
    );
}

/// The injected output as `Yaml` keeps the manifest's own restricted fields untouched.
#[test]
fn the_apps_own_security_fields_are_kept() {
    let (output, _) = inject(
        &["--redirect", "cni"],
        &workload("v1", "Pod", RESTRICTED_SPEC),
    );
    let doc = read_stream(&output).unwrap().remove(0).value.unwrap();
    assert_eq!(
        doc.at(&["spec", "securityContext", "runAsNonRoot"]),
        Some(&Yaml::Bool(true))
    );
}
