//! Kubernetes schema validation of what `lanyard install` (with and without `--cni`: the
//! LanyardIdentity and LanyardFederation CRDs, the CSIDriver, both DaemonSets, the RBAC) and `lanyard inject` print, with
//! PyPI `kubernetes-validate` (it ships the API schemas: no cluster, no kubectl, no network),
//! in strict mode (unknown fields are errors), against the oldest Kubernetes Lanyard supports
//! and the API version the project's own Kubernetes types use.
//!
//! The Python environment comes from `./scripts/test` (a venv built from
//! tests/python-requirements.txt, exported as `LANYARD_TEST_PYTHON`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Native sidecars (init containers with `restartPolicy: Always`) are on by default from
/// 1.29; the TokenReview node-name extra the server prefers comes with 1.30.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.33.0"];

fn python() -> PathBuf {
    match std::env::var_os("LANYARD_TEST_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "LANYARD_TEST_PYTHON is not set: run the tests with ./scripts/test, which builds the \
             Python venv (tests/python-requirements.txt, including kubernetes-validate) and \
             exports it"
        ),
    }
}

fn lanyard(args: &[&str], stdin_file: Option<&Path>) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lanyard"));
    command.args(args);
    if let Some(file) = stdin_file {
        command.stdin(std::fs::File::open(file).unwrap());
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "lanyard {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs kubernetes-validate on `files`; returns (success, output).
fn validate(files: &[PathBuf], version: &str) -> (bool, String) {
    let out = Command::new(python())
        .args(["-m", "kubernetes_validate", "--strict", "-k", version])
        .args(files)
        .output()
        .expect("running kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

const APP: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: nginx:1
        ports: [{containerPort: 8080}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: postgres:16}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: logs}
spec:
  selector: {matchLabels: {app: logs}}
  template:
    metadata: {labels: {app: logs}}
    spec:
      containers: [{name: logs, image: fluent:1}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: once}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: once, image: busybox:1, command: [\"true\"]}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: \"0 3 * * *\"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: nightly, image: busybox:1}]
---
apiVersion: v1
kind: Pod
metadata: {name: debug}
spec:
  containers: [{name: d, image: busybox:1}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
";

/// A digest file as deploy/images/build writes it, for this version's images.
fn digest_file() -> String {
    let images: serde_json::Map<String, serde_json::Value> = lanyard_cli::images::COMPONENTS
        .iter()
        .map(|c| {
            let name = format!("lanyard-{c}");
            let entry = serde_json::json!({
                "reference": format!("ghcr.io/lanyard-dev/{name}:{}", lanyard_cli::images::VERSION),
                "digest": format!("sha256:{}", "0123456789abcdef".repeat(4)),
            });
            (name, entry)
        })
        .collect();
    serde_json::json!({"version": lanyard_cli::images::VERSION, "revision": "x", "images": images})
        .to_string()
}

#[test]
fn install_and_inject_output_pass_schema_validation() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let app = write("app.yaml", APP);
    let digests = write("image-digests.json", &digest_file());
    let files = vec![
        // With a CA generated on the spot: its Secret and bundle ConfigMap are checked too.
        write("install.yaml", &lanyard(&["install", "--include-ca"], None)),
        // Pinned by digest: `image: REPOSITORY@sha256:...`.
        write(
            "install-pinned.yaml",
            &lanyard(
                &["install", "--image-digests", digests.to_str().unwrap()],
                None,
            ),
        ),
        // The CNI plugin's installer, its ServiceAccount and RBAC; pinned, and with a
        // registrar pinned by digest.
        write(
            "install-cni.yaml",
            &lanyard(
                &[
                    "install",
                    "--cni",
                    "--image-digests",
                    digests.to_str().unwrap(),
                    "--csi-registrar-image",
                    &format!(
                        "registry.k8s.io/sig-storage/csi-node-driver-registrar@sha256:{}",
                        "0123456789abcdef".repeat(4)
                    ),
                ],
                None,
            ),
        ),
        write(
            "install-custom.yaml",
            &lanyard(
                &[
                    "install",
                    "--without-ca",
                    "--trust-domain",
                    "prod.example.com",
                    "--namespace",
                    "identity",
                    "--replicas",
                    "3",
                ],
                None,
            ),
        ),
        write(
            "injected.yaml",
            &lanyard(
                &[
                    "inject",
                    app.to_str().unwrap(),
                    "--skip-outbound-ports",
                    "5432",
                ],
                None,
            ),
        ),
        write(
            "injected-stdin.yaml",
            &lanyard(&["inject", "-"], Some(&app)),
        ),
        // The CNI redirect: the validation container, the redirect annotations, the CSI volume.
        write(
            "injected-cni.yaml",
            &lanyard(
                &[
                    "inject",
                    app.to_str().unwrap(),
                    "--redirect",
                    "cni",
                    "--skip-inbound-ports",
                    "22",
                ],
                None,
            ),
        ),
    ];
    let cni = std::fs::read_to_string(files.last().unwrap()).unwrap();
    assert!(
        cni.contains("lanyard-validate") && !cni.contains("NET_ADMIN"),
        "the CNI injection has no validation container or still a privileged init:\n{cni}"
    );
    for version in KUBERNETES_VERSIONS {
        let (ok, output) = validate(&files, version);
        assert!(ok, "kubernetes-validate {version} failed:\n{output}");
        // Every object was checked (17 from install --include-ca, 15 pinned (no CA by
        // default), 19 with --cni, 15 customised (each with the LanyardIdentity and
        // LanyardFederation CRDs), 7 + 7 injected with the init container, 7 with the CNI
        // redirect).
        let passed = output.matches(" passed for resource ").count();
        assert_eq!(passed, 17 + 15 + 19 + 15 + 7 + 7 + 7, "{output}");
        for resource in [
            "customresourcedefinition/lanyardidentities.lanyard.dev",
            "customresourcedefinition/lanyardfederations.lanyard.dev",
            "csidriver/csi.lanyard.dev",
            "daemonset/lanyard-agent",
            "daemonset/lanyard-cni",
            "serviceaccount/lanyard-cni",
            "clusterrole/lanyard-cni-lanyard",
            "clusterrolebinding/lanyard-cni-lanyard",
            "configmap/lanyard-config",
        ] {
            assert!(
                output.contains(&format!("passed for resource {resource} ")),
                "{resource} not validated:\n{output}"
            );
        }
    }
}

/// The check can fail: a field Kubernetes does not have, and a wrong type, are reported.
#[test]
fn the_validator_refuses_invalid_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let injected = lanyard(
        &["inject", "-"],
        Some(&{
            let p = dir.path().join("pod.yaml");
            std::fs::write(
                &p,
                "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: a, image: a}]\n",
            )
            .unwrap();
            p
        }),
    );
    let unknown_field = injected.replace(
        "readOnlyRootFilesystem: true",
        "readOnlyRootFilesystemm: true",
    );
    assert_ne!(unknown_field, injected);
    let wrong_type =
        lanyard(&["install", "--without-ca"], None).replace("replicas: 2", "replicas: two");
    for (name, text) in [("unknown.yaml", unknown_field), ("type.yaml", wrong_type)] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let (ok, output) = validate(&[path], KUBERNETES_VERSIONS[0]);
        assert!(!ok, "{name} passed:\n{output}");
        assert!(output.contains("did not validate"), "{output}");
    }
}
