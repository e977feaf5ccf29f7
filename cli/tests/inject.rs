//! `lanyard inject`: every kind it handles, pass-through of everything else (byte for byte),
//! idempotence, opt-outs, bad input (an error naming the document, nothing printed), and the
//! redirect init container running exactly `deploy/iptables/redirect.sh`.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use lanyard_cli::inject::{InjectError, InjectOptions, Outcome, inject_stream};
use lanyard_cli::yaml::{Yaml, read_stream};

fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

const POD_SPEC: &str = "
      initContainers:
      - name: migrate
        image: app:1
      containers:
      - name: app
        image: app:1
        env:
        - {name: MODE, value: prod}
      - name: helper
        image: helper:1
        env:
        - {name: SPIFFE_ENDPOINT_SOCKET, value: unix:///custom.sock}
      volumes:
      - name: cfg
        configMap: {name: app, defaultMode: 0644}
";

/// A workload of `kind` whose pod spec is [`POD_SPEC`], with an unknown field to keep.
fn workload(api_version: &str, kind: &str) -> String {
    match kind {
        "Pod" => format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  futureField: kept\nspec:\n  futureSpecField: 1{}",
            POD_SPEC.replace("\n      ", "\n  ")
        ),
        "CronJob" => format!(
            "apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: c, namespace: jobs}}\nspec:\n  schedule: '*/5 * * * *'\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never{}",
            POD_SPEC.replace("\n      ", "\n          ")
        ),
        _ => format!(
            "apiVersion: {api_version}\nkind: {kind}\nmetadata:\n  name: w\n  namespace: apps\n  annotations: {{note: x}}\nspec:\n  futureSpecField: 1\n  selector:\n    matchLabels: {{app: w}}\n  template:\n    metadata:\n      labels: {{app: w}}\n    spec:{}",
            POD_SPEC
        ),
    }
}

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

fn inject(text: &str) -> String {
    inject_stream(text, &InjectOptions::default())
        .unwrap()
        .output
}

fn names(list: Option<&Yaml>) -> Vec<String> {
    match list {
        Some(Yaml::Seq(items)) => items
            .iter()
            .map(|i| i.get("name").and_then(Yaml::as_str).unwrap().to_owned())
            .collect(),
        other => panic!("not a list: {other:?}"),
    }
}

fn env_value<'a>(container: &'a Yaml, name: &str) -> Option<&'a str> {
    match container.get("env") {
        Some(Yaml::Seq(items)) => items
            .iter()
            .find(|e| e.get("name").and_then(Yaml::as_str) == Some(name))
            .and_then(|e| e.get("value"))
            .and_then(Yaml::as_str),
        _ => None,
    }
}

fn check_template(template: &Yaml, what: &str) {
    let spec = template.get("spec").unwrap();
    assert_eq!(
        names(spec.get("initContainers")),
        ["lanyard-init", "lanyard-proxy", "migrate"],
        "{what}"
    );
    assert_eq!(names(spec.get("containers")), ["app", "helper"], "{what}");
    assert_eq!(
        names(spec.get("volumes")),
        ["cfg", "lanyard-sockets", "lanyard-xtables"],
        "{what}"
    );
    let Some(Yaml::Seq(init)) = spec.get("initContainers") else {
        unreachable!()
    };
    let proxy = &init[1];
    assert_eq!(
        proxy.get("restartPolicy").and_then(Yaml::as_str),
        Some("Always"),
        "{what}: native sidecar"
    );
    assert_eq!(
        env_value(proxy, "SPIFFE_ENDPOINT_SOCKET"),
        Some("unix:///run/lanyard/sockets/agent.sock")
    );
    let Some(Yaml::Seq(apps)) = spec.get("containers") else {
        unreachable!()
    };
    for app in apps {
        assert!(
            names(app.get("volumeMounts")).contains(&"lanyard-sockets".to_owned()),
            "{what}"
        );
    }
    // The app's own variables stay, and one it set itself is not overridden.
    assert_eq!(env_value(&apps[0], "MODE"), Some("prod"));
    assert_eq!(
        env_value(&apps[0], "SPIFFE_ENDPOINT_SOCKET"),
        Some("unix:///run/lanyard/sockets/agent.sock")
    );
    assert_eq!(
        env_value(&apps[1], "SPIFFE_ENDPOINT_SOCKET"),
        Some("unix:///custom.sock")
    );
    // YAML 1.1 octal, as kubectl reads it.
    assert_eq!(
        spec.at(&["volumes"]).and_then(|v| match v {
            Yaml::Seq(items) => items[0].at(&["configMap", "defaultMode"]).cloned(),
            _ => None,
        }),
        Some(Yaml::Int(0o644))
    );
    assert_eq!(
        template
            .at(&["metadata", "annotations", "lanyard.dev/inject"])
            .and_then(Yaml::as_str),
        Some("enabled"),
        "{what}"
    );
    assert_eq!(
        template
            .at(&["metadata", "labels", "lanyard.dev/meshed"])
            .and_then(Yaml::as_str),
        Some("true"),
        "{what}"
    );
}

#[test]
fn every_workload_kind_is_injected() {
    for (api_version, kind, path) in KINDS {
        let input = workload(api_version, kind);
        let result = inject_stream(&input, &InjectOptions::default()).unwrap();
        assert_eq!(result.outcomes.len(), 1);
        assert_eq!(result.outcomes[0].2, Outcome::Injected, "{kind}");
        let docs = read_stream(&result.output).unwrap();
        let doc = docs[0].value.as_ref().unwrap();
        check_template(doc.at(path).unwrap(), kind);
        // Fields we do not know survive, in place.
        if kind == "Pod" {
            assert_eq!(
                doc.at(&["metadata", "futureField"]).and_then(Yaml::as_str),
                Some("kept")
            );
        } else if kind != "CronJob" {
            assert_eq!(doc.at(&["spec", "futureSpecField"]), Some(&Yaml::Int(1)));
            let Some(Yaml::Map(spec)) = doc.get("spec") else {
                panic!()
            };
            assert_eq!(spec[0].0, "futureSpecField", "{kind}: key order kept");
        }
    }
}

#[test]
fn other_documents_pass_through_byte_for_byte_in_order() {
    let service = "apiVersion: v1\nkind: Service   # a comment that stays\nmetadata: {name: web}\nspec:\n  ports: [{port: 80}]\n";
    let configmap = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  mode: 0644\n";
    let input = format!(
        "{service}---\n{}---\n{configmap}",
        workload("apps/v1", "Deployment")
    );
    let result = inject_stream(&input, &InjectOptions::default()).unwrap();
    let outcomes: Vec<_> = result.outcomes.iter().map(|o| o.2.clone()).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::NotAWorkload,
            Outcome::Injected,
            Outcome::NotAWorkload
        ]
    );
    let pieces: Vec<&str> = result.output.split("---\n").collect();
    assert_eq!(pieces.len(), 3);
    assert_eq!(pieces[0], service);
    assert_eq!(pieces[2], configmap);
    assert!(pieces[1].starts_with("apiVersion: apps/v1\nkind: Deployment\n"));
    // A kind we do not know, even one with a pod template, is left alone.
    let unknown = "apiVersion: example.com/v1\nkind: Deployment\nspec: {template: {spec: {containers: []}}}\n";
    assert_eq!(inject(unknown), unknown);
}

#[test]
fn injecting_twice_equals_injecting_once() {
    let mut stream = String::new();
    for (api_version, kind, _) in KINDS {
        stream.push_str(&workload(api_version, kind));
        stream.push_str("---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\n");
    }
    let once = inject(&stream);
    let twice = inject(&once);
    assert_eq!(once, twice);
    assert_ne!(
        once, stream,
        "the check can fail: injection changes a workload"
    );
    // Re-injecting with other options updates in place rather than adding a copy.
    let other = inject_stream(
        &once,
        &InjectOptions {
            skip_outbound_ports: vec![5432],
            ..Default::default()
        },
    )
    .unwrap()
    .output;
    assert_ne!(other, once);
    assert_eq!(other.matches("name: lanyard-proxy\n").count(), KINDS.len());
    assert!(other.contains("value: \"5432\""));
}

#[test]
fn bad_yaml_names_its_document_and_prints_nothing() {
    let input = format!(
        "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: s}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: [unclosed\n---\n{}",
        workload("apps/v1", "Deployment"),
        workload("batch/v1", "Job")
    );
    let err = inject_stream(&input, &InjectOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            InjectError::Read(lanyard_cli::yaml::ReadError::Document { number: 3, .. })
        ),
        "{err}"
    );
    // Through the binary: exit status, the message, and an empty stdout.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.yaml");
    std::fs::write(&file, &input).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .arg("inject")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing printed half-done");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("document 3"), "{stderr}");
    assert!(stderr.contains("app.yaml"), "{stderr}");
}

#[test]
fn a_malformed_workload_names_its_document() {
    let input = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: broken, namespace: x}\nspec:\n  template:\n    spec:\n      containers: {app: 1}\n";
    let err = inject_stream(input, &InjectOptions::default()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("document 2 (Deployment x/broken): spec.template.spec.containers"),
        "{text}"
    );
    let no_template = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\nspec: {}\n";
    let text = inject_stream(no_template, &InjectOptions::default())
        .unwrap_err()
        .to_string();
    assert!(text.contains("spec.template is missing"), "{text}");
    let dup = "apiVersion: v1\nkind: Pod\nkind: Pod\n";
    assert!(inject_stream(dup, &InjectOptions::default()).is_err());
}

#[test]
fn empty_documents_are_dropped_and_still_counted() {
    let input = format!(
        "---\n# nothing here\n---\n\n---\n{}---\n",
        workload("v1", "Pod")
    );
    let result = inject_stream(&input, &InjectOptions::default()).unwrap();
    assert_eq!(result.outcomes.len(), 1);
    assert_eq!(result.outcomes[0].0, 3, "the Pod is the 3rd document");
    assert!(result.output.starts_with("apiVersion: v1\nkind: Pod\n"));
    assert_eq!(inject(""), "");
    assert_eq!(inject("---\n---\n"), "");
}

#[test]
fn opt_out_and_host_network_are_left_alone() {
    let opted = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {lanyard.dev/inject: disabled}\nspec:\n  containers: [{name: a, image: a}]\n";
    let host = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: d}\nspec:\n  template:\n    spec:\n      hostNetwork: true\n      containers: [{name: a, image: a}]\n";
    let result = inject_stream(&format!("{opted}---\n{host}"), &InjectOptions::default()).unwrap();
    let outcomes: Vec<_> = result.outcomes.iter().map(|o| o.2.to_string()).collect();
    assert_eq!(outcomes, ["opted_out", "host_network"]);
    assert_eq!(result.output, format!("{opted}---\n{host}"));
}

#[test]
fn lists_are_injected_item_by_item() {
    let input = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: s}\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p}\n  spec:\n    containers: [{name: a, image: a}]\n";
    let out = inject(input);
    let doc = read_stream(&out).unwrap().remove(0).value.unwrap();
    let Some(Yaml::Seq(items)) = doc.get("items") else {
        panic!()
    };
    assert!(items[0].at(&["spec"]).is_none());
    assert_eq!(
        names(items[1].at(&["spec", "initContainers"])),
        ["lanyard-init", "lanyard-proxy"]
    );
}

#[test]
fn standard_input_works_and_skip_ports_are_checked() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(["inject", "-", "--skip-inbound-ports", "8443,9000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(workload("v1", "Pod").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("value: 4143,4192,8443,9000"), "{text}");
    let zero = inject_stream(
        "",
        &InjectOptions {
            skip_inbound_ports: vec![0],
            ..Default::default()
        },
    );
    assert!(zero.is_err());
}

/// The init container runs the repository's script text verbatim with `sh -c`.
#[test]
fn the_init_container_runs_the_repository_script() {
    let script = std::fs::read_to_string(repo_path("deploy/iptables/redirect.sh")).unwrap();
    let out = inject(&workload("v1", "Pod"));
    let doc = read_stream(&out).unwrap().remove(0).value.unwrap();
    let Some(Yaml::Seq(init)) = doc.at(&["spec", "initContainers"]) else {
        panic!()
    };
    let Some(Yaml::Seq(command)) = init[0].get("command") else {
        panic!()
    };
    assert_eq!(command[0].as_str(), Some("/bin/sh"));
    assert_eq!(command[1].as_str(), Some("-c"));
    assert_eq!(command[2].as_str(), Some(script.as_str()));
    let caps = init[0].at(&["securityContext", "capabilities", "add"]);
    assert_eq!(
        caps,
        Some(&Yaml::Seq(vec!["NET_ADMIN".into(), "NET_RAW".into()]))
    );
}

/// Runs the script with a recording `iptables` and returns the rules it installed.
fn run_script(env: &[(&str, &str)]) -> (bool, Vec<String>, String) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("calls");
    let fake = dir.path().join("iptables");
    // Records every call; deleting what does not exist fails, as the real one does.
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\ncase \" $* \" in *' -D '*|*' -F '*|*' -X '*) exit 1 ;; esac\nexit 0\n",
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("sh")
        .arg(repo_path("deploy/iptables/redirect.sh"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("IPTABLES", &fake)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    let rules = calls
        .lines()
        .filter(|l| l.contains(" -N ") || l.contains(" -A "))
        .map(|l| l.trim_start_matches("-w -t nat ").to_owned())
        .collect();
    (
        out.status.success(),
        rules,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_script_installs_the_documented_rules() {
    let (ok, rules, stderr) = run_script(&[
        ("PROXY_UID", "2102"),
        ("PROXY_INBOUND_PORT", "4143"),
        ("PROXY_OUTBOUND_PORT", "4140"),
        ("SKIP_INBOUND_PORTS", "4143,4192"),
        ("SKIP_OUTBOUND_PORTS", "5432"),
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(
        rules,
        [
            "-N LANYARD_INBOUND",
            "-A LANYARD_INBOUND -p tcp --dport 4143 -j RETURN",
            "-A LANYARD_INBOUND -p tcp --dport 4192 -j RETURN",
            "-A LANYARD_INBOUND -p tcp -j REDIRECT --to-ports 4143",
            "-A PREROUTING -p tcp -j LANYARD_INBOUND",
            "-N LANYARD_OUTBOUND",
            "-A LANYARD_OUTBOUND -m owner --uid-owner 2102 -j RETURN",
            "-A LANYARD_OUTBOUND -o lo -j RETURN",
            "-A LANYARD_OUTBOUND -d 127.0.0.0/8 -j RETURN",
            "-A LANYARD_OUTBOUND -p tcp --dport 5432 -j RETURN",
            "-A LANYARD_OUTBOUND -p tcp -j REDIRECT --to-ports 4140",
            "-A OUTPUT -p tcp -j LANYARD_OUTBOUND",
        ]
    );
    // Bad parameters install nothing.
    let (ok, rules, stderr) = run_script(&[("SKIP_INBOUND_PORTS", "80;reboot")]);
    assert!(!ok);
    assert!(rules.is_empty());
    assert!(stderr.contains("not a port"), "{stderr}");
    let (ok, rules, _) = run_script(&[("PROXY_UID", "root")]);
    assert!(!ok);
    assert!(rules.is_empty());
}
