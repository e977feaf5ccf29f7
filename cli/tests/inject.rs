//! `lanyard inject`: every kind it handles, pass-through of everything else (byte for byte),
//! idempotence, opt-outs, bad input (an error naming the document, nothing printed), refusals
//! (an app on the proxy's ports, an empty input), and the redirect init container running
//! `lanyard-redirect` (no shell) with parameters that give the documented rules.

use std::ffi::OsString;
use std::process::{Command, Stdio};

use lanyard_cli::inject::{
    InjectError, InjectOptions, Outcome, REDIRECT_ANNOTATION, RedirectMode, SocketVolume,
    VALIDATOR_UID, inject_stream, proxy_args, proxy_container, proxy_ports, validate_container,
};
use lanyard_cli::yaml::{Yaml, read_stream};
use lanyard_redirect::{RedirectConfig, steps};

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
        .args(["inject", "--ignore-cluster"])
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
    // A Pod's paths start at its own fields.
    let no_spec = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n";
    let text = inject_stream(no_spec, &InjectOptions::default())
        .unwrap_err()
        .to_string();
    assert_eq!(
        text, "document 1 (Pod p): spec is missing or not a map",
        "{text}"
    );
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
}

#[test]
fn an_input_with_no_objects_is_an_error() {
    for input in [
        "",
        "\n  \n",
        "---\n---\n",
        "# only a comment\n---\n  # another\n...\n",
    ] {
        let err = inject_stream(input, &InjectOptions::default()).unwrap_err();
        assert!(matches!(err, InjectError::Empty), "{input:?}: {err}");
        assert_eq!(err.to_string(), "no Kubernetes objects in the input");
    }
    // Through the binary: non-zero, the reason on stderr, nothing on stdout.
    let mut child = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(["inject", "-", "--ignore-cluster"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"# nothing\n---\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no Kubernetes objects in the input"),
        "{stderr}"
    );
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
        .args([
            "inject",
            "-",
            "--ignore-cluster",
            "--skip-inbound-ports",
            "8443,9000",
        ])
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

fn init_container(output: &str) -> Yaml {
    let doc = read_stream(output).unwrap().remove(0).value.unwrap();
    let Some(Yaml::Seq(init)) = doc.at(&["spec", "initContainers"]) else {
        panic!()
    };
    init[0].clone()
}

/// The init container runs the image's `lanyard-redirect` binary: no shell, no arguments.
#[test]
fn the_init_container_runs_lanyard_redirect_without_a_shell() {
    let init = init_container(&inject(&workload("v1", "Pod")));
    assert_eq!(
        init.get("name").and_then(Yaml::as_str),
        Some("lanyard-init")
    );
    assert_eq!(
        init.get("command"),
        Some(&Yaml::Seq(vec!["/usr/local/bin/lanyard-redirect".into()]))
    );
    assert_eq!(init.get("args"), None);
    let security = init.get("securityContext").unwrap();
    assert_eq!(
        security.at(&["capabilities", "add"]),
        Some(&Yaml::Seq(vec!["NET_ADMIN".into(), "NET_RAW".into()]))
    );
    assert_eq!(
        security.at(&["capabilities", "drop"]),
        Some(&Yaml::Seq(vec!["ALL".into()]))
    );
    assert_eq!(
        security.get("readOnlyRootFilesystem"),
        Some(&Yaml::Bool(true))
    );
    assert_eq!(security.get("runAsUser"), Some(&Yaml::Int(0)));
    // The xtables lock's /run is a writable emptyDir.
    let Some(Yaml::Seq(mounts)) = init.get("volumeMounts") else {
        panic!()
    };
    assert_eq!(
        mounts[0].get("name").and_then(Yaml::as_str),
        Some("lanyard-xtables")
    );
    assert_eq!(
        mounts[0].get("mountPath").and_then(Yaml::as_str),
        Some("/run")
    );
}

/// The init container's environment, read the way `lanyard-redirect` reads its own.
fn redirect_config_of(init: &Yaml) -> RedirectConfig {
    RedirectConfig::from_lookup(|var| env_value(init, var).map(OsString::from)).unwrap()
}

#[test]
fn the_init_container_environment_gives_the_documented_rules() {
    let options = InjectOptions {
        skip_inbound_ports: vec![9000, 8443],
        skip_outbound_ports: vec![5432],
        ..Default::default()
    };
    let output = inject_stream(&workload("v1", "Pod"), &options)
        .unwrap()
        .output;
    let init = init_container(&output);
    assert_eq!(
        env_value(&init, "SKIP_INBOUND_PORTS"),
        Some("4143,4192,8443,9000")
    );
    assert_eq!(env_value(&init, "SKIP_OUTBOUND_PORTS"), Some("5432"));
    let rules: Vec<String> = steps(&redirect_config_of(&init))
        .unwrap()
        .iter()
        .filter(|s| !s.is_removal())
        .map(|s| s.to_string())
        // The IPv4 rules; the redirect crate's own tests check that IPv6 mirrors them.
        .filter(|s| s.starts_with("iptables "))
        .collect();
    assert_eq!(
        rules,
        [
            "iptables -t nat -N LANYARD_INBOUND",
            "iptables -t nat -A LANYARD_INBOUND -p tcp --dport 4143 -j RETURN",
            "iptables -t nat -A LANYARD_INBOUND -p tcp --dport 4192 -j RETURN",
            "iptables -t nat -A LANYARD_INBOUND -p tcp --dport 8443 -j RETURN",
            "iptables -t nat -A LANYARD_INBOUND -p tcp --dport 9000 -j RETURN",
            "iptables -t nat -A LANYARD_INBOUND -p tcp -j REDIRECT --to-ports 4143",
            "iptables -t nat -A PREROUTING -p tcp -j LANYARD_INBOUND",
            "iptables -t nat -N LANYARD_OUTBOUND",
            "iptables -t nat -A LANYARD_OUTBOUND -m owner --uid-owner 2102 -j RETURN",
            "iptables -t nat -A LANYARD_OUTBOUND -o lo -j RETURN",
            "iptables -t nat -A LANYARD_OUTBOUND -d 127.0.0.0/8 -j RETURN",
            "iptables -t nat -A LANYARD_OUTBOUND -p tcp --dport 5432 -j RETURN",
            "iptables -t nat -A LANYARD_OUTBOUND -p tcp -j REDIRECT --to-ports 4140",
            "iptables -t nat -A OUTPUT -p tcp -j LANYARD_OUTBOUND",
        ]
    );
    // The most skip ports the flags allow still make a configuration lanyard-redirect takes.
    let most = InjectOptions {
        skip_inbound_ports: (1..=64).collect(),
        skip_outbound_ports: (1..=64).collect(),
        ..Default::default()
    };
    let init = init_container(&inject_stream(&workload("v1", "Pod"), &most).unwrap().output);
    assert_eq!(redirect_config_of(&init).skip_inbound_ports.len(), 66);
}

/// A Pod whose container `app` declares `ports`.
fn pod_with_ports(ports: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: ns}}\nspec:\n  containers:\n  - name: side\n    image: s\n  - name: app\n    image: a\n    ports: {ports}\n"
    )
}

#[test]
fn an_app_on_a_proxy_port_is_refused_naming_container_port_and_use() {
    let cases = [
        (4143, "transparent inbound listener"),
        (4140, "transparent outbound listener"),
        (4191, "admin listener"),
        (4192, "metrics and health listener"),
    ];
    for (port, purpose) in cases {
        let input = pod_with_ports(&format!(
            "[{{containerPort: 8080}}, {{containerPort: {port}}}]"
        ));
        let err = inject_stream(&input, &InjectOptions::default()).unwrap_err();
        assert!(
            matches!(err, InjectError::Refused { number: 1, .. }),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with("document 1 (Pod ns/p): refused: spec.containers[1] (container app) declares containerPort "),
            "{text}"
        );
        assert!(text.contains(&format!("containerPort {port},")), "{text}");
        assert!(text.contains(purpose), "{text}");
    }
    // Inside a workload's template, and in an app init container.
    let deployment = workload("apps/v1", "Deployment")
        .replace("name: migrate\n        image: app:1", "name: migrate\n        image: app:1\n        ports: [{containerPort: 4192, protocol: TCP}]");
    let text = inject_stream(&deployment, &InjectOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        text.contains(
            "spec.template.spec.initContainers[0] (container migrate) declares containerPort 4192"
        ),
        "{text}"
    );
    // UDP does not collide with the proxy's TCP listeners; other ports are fine.
    for fine in [
        "[{containerPort: 4143, protocol: UDP}]",
        "[{containerPort: 8080}, {containerPort: 4144}]",
    ] {
        let result = inject_stream(&pod_with_ports(fine), &InjectOptions::default()).unwrap();
        assert_eq!(result.outcomes[0].2, Outcome::Injected, "{fine}");
    }
    // An opted-out pod is not ours to refuse.
    let opted = pod_with_ports("[{containerPort: 4143}]").replace(
        "metadata: {name: p, namespace: ns}",
        "metadata: {name: p, namespace: ns, annotations: {lanyard.dev/inject: disabled}}",
    );
    assert!(inject_stream(&opted, &InjectOptions::default()).is_ok());

    // Through the binary: non-zero, the reason, nothing printed.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.yaml");
    std::fs::write(&file, pod_with_ports("[{containerPort: 4140}]")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(["inject", "--ignore-cluster"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("container app) declares containerPort 4140"),
        "{stderr}"
    );
}

/// Every port the proxy is told to listen on is one the refusal knows.
#[test]
fn proxy_ports_cover_every_listener_of_the_proxy() {
    let known: Vec<u16> = proxy_ports().iter().map(|(p, _)| *p).collect();
    let args = proxy_args(false);
    let mut listeners = 0;
    for pair in args.windows(2) {
        if pair[0].starts_with("--") && !pair[1].starts_with("--") {
            let port: u16 = pair[1].rsplit(':').next().unwrap().parse().unwrap();
            assert!(
                known.contains(&port),
                "{} {} is not in proxy_ports()",
                pair[0],
                pair[1]
            );
            listeners += 1;
        }
    }
    assert_eq!(listeners, known.len(), "{args:?}");
}

fn cni(skip_outbound: &[u16]) -> InjectOptions {
    InjectOptions {
        redirect: RedirectMode::Cni,
        skip_inbound_ports: vec![8443],
        skip_outbound_ports: skip_outbound.to_vec(),
        ..Default::default()
    }
}

fn annotation<'a>(template: &'a Yaml, key: &str) -> Option<&'a str> {
    template
        .at(&["metadata", "annotations", key])
        .and_then(Yaml::as_str)
}

/// cni mode: the CNI plugin's annotations (read back by its own reader), the validation
/// container first (the proxy image's validate-redirect, as a uid the rules redirect, with
/// the rules' parameters), no NET_ADMIN container and no xtables volume; the CSI volume.
#[test]
fn cni_mode_annotates_the_rules_and_validates_them() {
    let output = inject_stream(&workload("apps/v1", "Deployment"), &cni(&[5432]))
        .unwrap()
        .output;
    let doc = read_stream(&output).unwrap().remove(0).value.unwrap();
    let template = doc.at(&["spec", "template"]).unwrap();
    assert_eq!(annotation(template, REDIRECT_ANNOTATION), Some("cni"));
    assert_eq!(annotation(template, "lanyard.dev/inject"), Some("enabled"));
    let read = RedirectConfig::from_annotations(|key| annotation(template, key)).unwrap();
    assert_eq!(read.skip_inbound_ports, [4143, 4192, 8443]);
    assert_eq!(read.skip_outbound_ports, [5432]);
    assert_eq!(read.proxy_uid, 2102);
    let spec = template.get("spec").unwrap();
    assert_eq!(
        names(spec.get("initContainers")),
        ["lanyard-validate", "lanyard-proxy", "migrate"]
    );
    assert_eq!(names(spec.get("volumes")), ["cfg", "lanyard-sockets"]);
    let Some(Yaml::Seq(init)) = spec.get("initContainers") else {
        unreachable!()
    };
    let validate = &init[0];
    assert_eq!(
        validate.get("image").and_then(Yaml::as_str),
        Some(lanyard_cli::images::Images::default().proxy().as_str())
    );
    assert_eq!(
        validate.get("args"),
        Some(&Yaml::Seq(vec!["validate-redirect".into()]))
    );
    assert_eq!(validate.get("command"), None, "the image's entrypoint");
    assert_eq!(redirect_config_of(validate), read, "the same parameters");
    let uid = validate.at(&["securityContext", "runAsUser"]);
    assert_eq!(uid, Some(&Yaml::Int(i64::from(VALIDATOR_UID))));
    assert_ne!(VALIDATOR_UID, read.proxy_uid);
    assert!(!output.contains("NET_ADMIN") && !output.contains("lanyard-xtables"));
    let volume = spec
        .get("volumes")
        .and_then(|v| match v {
            Yaml::Seq(items) => items
                .iter()
                .find(|i| i.get("name") == Some(&"lanyard-sockets".into())),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        volume.at(&["csi", "driver"]).and_then(Yaml::as_str),
        Some("csi.lanyard.dev")
    );
    assert_eq!(volume.at(&["csi", "readOnly"]), Some(&Yaml::Bool(true)));
    assert_eq!(volume.get("hostPath"), None);
}

/// Switching modes replaces one mode's pieces with the other's, and init mode drops the CNI
/// annotations; each mode is idempotent.
#[test]
fn switching_redirect_modes_leaves_nothing_of_the_other() {
    let input = workload("v1", "Pod");
    let as_cni = inject_stream(&input, &cni(&[])).unwrap().output;
    let as_init = inject_stream(&as_cni, &InjectOptions::default())
        .unwrap()
        .output;
    assert_eq!(as_init, inject(&input), "cni then init equals init");
    assert!(!as_init.contains("lanyard.dev/skip-inbound-ports"));
    assert!(as_init.contains("lanyard.dev/redirect: init"));
    let back = inject_stream(&as_init, &cni(&[])).unwrap().output;
    assert_eq!(back, as_cni, "init then cni equals cni");
    assert_eq!(inject_stream(&as_cni, &cni(&[])).unwrap().output, as_cni);
    // The socket volume kind switches in place too.
    let hostpath = inject_stream(
        &as_cni,
        &InjectOptions {
            socket_volume: SocketVolume::HostPath,
            ..cni(&[])
        },
    )
    .unwrap()
    .output;
    assert!(hostpath.contains("hostPath") && !hostpath.contains("csi.lanyard.dev"));
}

/// `/metrics` is loopback-only unless the template asks; an unknown value is refused.
#[test]
fn the_metrics_annotation_exposes_metrics_only_when_asked() {
    let proxy_args_of = |input: &str| -> Vec<String> {
        let output = inject_stream(input, &cni(&[])).unwrap().output;
        let doc = read_stream(&output).unwrap().remove(0).value.unwrap();
        let Some(Yaml::Seq(init)) = doc.at(&["spec", "initContainers"]) else {
            panic!()
        };
        match init[1].get("args") {
            Some(Yaml::Seq(args)) => args
                .iter()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect(),
            other => panic!("{other:?}"),
        }
    };
    let pod = workload("v1", "Pod");
    assert_eq!(proxy_args_of(&pod), proxy_args(false));
    assert!(!proxy_args(false).contains(&"--metrics-allow-remote".to_owned()));
    let annotated = |value: &str| {
        pod.replace(
            "metadata:\n  name: p\n",
            &format!(
                "metadata:\n  name: p\n  annotations: {{lanyard.dev/proxy-metrics: {value}}}\n"
            ),
        )
    };
    let exposed = proxy_args_of(&annotated("expose"));
    assert_eq!(exposed, proxy_args(true));
    assert_eq!(
        exposed.last().map(String::as_str),
        Some("--metrics-allow-remote")
    );
    assert_eq!(proxy_args_of(&annotated("loopback")), proxy_args(false));
    let err = inject_stream(&annotated("public"), &cni(&[])).unwrap_err();
    assert!(
        err.to_string()
            .contains("refused: metadata.annotations.lanyard.dev/proxy-metrics is \"public\""),
        "{err}"
    );
}

/// Every container Lanyard adds in cni mode meets what `restricted` asks of a container.
#[test]
fn lanyard_containers_are_restricted() {
    let options = cni(&[]);
    for container in [
        validate_container(&options),
        proxy_container(&options, false),
    ] {
        let context = container.get("securityContext").unwrap();
        let uid = context.get("runAsUser");
        assert!(matches!(uid, Some(Yaml::Int(n)) if *n > 0), "{uid:?}");
        assert_eq!(context.get("runAsNonRoot"), Some(&Yaml::Bool(true)));
        assert_eq!(
            context.get("allowPrivilegeEscalation"),
            Some(&Yaml::Bool(false))
        );
        assert_eq!(
            context.get("readOnlyRootFilesystem"),
            Some(&Yaml::Bool(true))
        );
        assert_eq!(
            context.at(&["capabilities", "drop"]),
            Some(&Yaml::Seq(vec!["ALL".into()]))
        );
        assert_eq!(context.at(&["capabilities", "add"]), None);
        assert_eq!(
            context
                .at(&["seccompProfile", "type"])
                .and_then(Yaml::as_str),
            Some("RuntimeDefault")
        );
    }
}

/// Without a cluster (no kubeconfig anywhere) the binary falls back to init and says why in
/// one line; --ignore-cluster says so; --redirect cni needs no cluster.
#[test]
fn the_default_mode_without_a_cluster_is_init() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let file = dir.path().join("pod.yaml");
        std::fs::write(&file, workload("v1", "Pod")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_lanyard"))
            .arg("inject")
            .arg(&file)
            .args(args)
            .env("HOME", dir.path())
            .env("KUBECONFIG", dir.path().join("missing"))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    // The app is not restricted-compliant: the warnings about it are not what is counted.
    let said = |err: &str| -> Vec<String> {
        err.lines()
            .filter(|l| !l.starts_with("lanyard: warning: "))
            .map(str::to_owned)
            .collect()
    };
    let (out, err) = run(&[]);
    assert!(out.contains("lanyard.dev/redirect: init") && out.contains("lanyard-init"));
    let lines = said(&err);
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with("lanyard: using --redirect init: no cluster configured"),
        "{err}"
    );
    let (_, err) = run(&["--ignore-cluster"]);
    assert_eq!(
        said(&err),
        ["lanyard: --ignore-cluster: using --redirect init"]
    );
    let (out, err) = run(&["--redirect", "cni"]);
    assert!(out.contains("lanyard.dev/redirect: cni"), "{out}");
    assert!(said(&err).is_empty(), "{err}");
}
