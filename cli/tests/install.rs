//! `lanyard install`: deploy/kubernetes/ is the deterministic rendering (and its cni/ file
//! what `--cni` adds), the CSIDriver and the agent DaemonSet have the shape the kubelet needs
//! for the CSI volumes, `--cni` and only `--cni` adds the installer DaemonSet and its RBAC,
//! the CA is left out unless `--include-ca`/`--ca-only` ask for it (then it is what the server
//! accepts), the root key is written only when asked (0600, never over a file) and options
//! are validated. That every flag in the manifests is a real flag of the
//! binary it is given to is checked with the daemons' own parsers in the end-to-end crate
//! (tests/e2e/tests/install_flags.rs), so that this crate depends on no daemon.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::SystemTime;

use base64::Engine;
use lanyard_cli::images::Images;
use lanyard_cli::install::ca::GeneratedCa;
use lanyard_cli::install::{InstallError, InstallOptions, Parts, render, to_text};
use lanyard_cli::yaml::{Yaml, read_stream, write_stream};
use lanyard_svid::TrustDomain;
use lanyard_svid::ca::{Issuer, RootCa};

const DEPLOY_FILE: &str = "deploy/kubernetes/lanyard.yaml";
/// What `--cni` adds to, or changes in, [`DEPLOY_FILE`]: applied after it.
const DEPLOY_CNI_FILE: &str = "deploy/kubernetes/cni/lanyard-cni.yaml";

fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

fn kinds(docs: &[Yaml]) -> Vec<String> {
    docs.iter()
        .map(|d| d.get("kind").and_then(Yaml::as_str).unwrap().to_owned())
        .collect()
}

/// (kind, namespace, name) of a document.
fn identity(doc: &Yaml) -> (String, String, String) {
    let text = |path: &[&str]| doc.at(path).and_then(Yaml::as_str).unwrap_or("").to_owned();
    (
        text(&["kind"]),
        text(&["metadata", "namespace"]),
        text(&["metadata", "name"]),
    )
}

/// Compares `rendered` with the committed `relative`, rewriting it first when
/// `LANYARD_UPDATE_MANIFESTS` is set; returns the committed text.
fn check_committed(relative: &str, rendered: &str, what: &str) -> String {
    let path = repo_path(relative);
    if std::env::var_os("LANYARD_UPDATE_MANIFESTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, rendered).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap();
    assert!(
        committed == rendered,
        "{relative} differs from {what}; refresh it with \
         LANYARD_UPDATE_MANIFESTS=1 cargo test -p lanyard-cli --test install"
    );
    committed
}

/// The committed files are exactly `lanyard install` (which leaves the CA out; so does
/// `--without-ca`, kept for scripts), and the objects `lanyard install --cni` prints that
/// differ from it. To refresh them after a deliberate
/// change: `LANYARD_UPDATE_MANIFESTS=1 cargo test -p lanyard-cli --test install`.
#[test]
fn deploy_kubernetes_is_the_rendering() {
    let base = render(&InstallOptions::defaults(), Parts::WithoutCa, None);
    let committed = check_committed(DEPLOY_FILE, &to_text(&base), "`lanyard install`");
    // The same documents, the CRD's text with its comments.
    assert_eq!(
        read_stream(&committed)
            .unwrap()
            .into_iter()
            .filter_map(|d| d.value)
            .collect::<Vec<_>>(),
        base
    );
    // And the binary prints the same, with or without --without-ca.
    for args in [&["install"][..], &["install", "--without-ca"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_lanyard"))
            .args(args)
            // No LANYARD_* settings from the environment: the defaults.
            .env_clear()
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8(out.stdout).unwrap(), committed);
    }

    // The CNI file: what --cni adds or changes, so that applying it after lanyard.yaml gives
    // exactly the --cni rendering.
    let with_cni = render(
        &InstallOptions::defaults().with_cni(),
        Parts::WithoutCa,
        None,
    );
    let extra: Vec<Yaml> = with_cni
        .iter()
        .filter(|d| !base.contains(d))
        .cloned()
        .collect();
    check_committed(
        DEPLOY_CNI_FILE,
        &write_stream(&extra),
        "what `lanyard install --cni` adds to `lanyard install`",
    );
    let mut applied: Vec<Yaml> = base
        .iter()
        .filter(|d| !extra.iter().any(|e| identity(e) == identity(d)))
        .cloned()
        .collect();
    applied.extend(extra.iter().cloned());
    let sorted = |docs: &[Yaml]| {
        let mut ids: Vec<_> = docs.iter().map(|d| (identity(d), d.clone())).collect();
        ids.sort_by(|a, b| a.0.cmp(&b.0));
        ids.into_iter().map(|(_, d)| d).collect::<Vec<_>>()
    };
    assert!(
        sorted(&applied) == sorted(&with_cni),
        "lanyard.yaml then cni/lanyard-cni.yaml is not the --cni rendering"
    );
    let changed: Vec<_> = extra
        .iter()
        .filter(|e| base.iter().any(|d| identity(d) == identity(e)))
        .map(identity)
        .collect();
    assert_eq!(
        changed,
        [(
            "ConfigMap".to_owned(),
            "lanyard".to_owned(),
            "lanyard-config".to_owned()
        )],
        "--cni changes only lanyard-config of the base objects"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(["install", "--cni"])
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), to_text(&with_cni));
}

#[test]
fn full_install_is_the_base_plus_the_ca() {
    let options = InstallOptions::defaults();
    let ca = GeneratedCa::generate(
        &options,
        std::time::Duration::from_secs(30 * 86400),
        std::time::Duration::from_secs(86400),
        SystemTime::now(),
    )
    .unwrap();
    let base = render(&options, Parts::WithoutCa, None);
    let all = render(&options, Parts::All, Some(&ca));
    let ca_docs = render(&options, Parts::CaOnly, Some(&ca));
    assert_eq!(kinds(&ca_docs), ["Secret", "ConfigMap"]);
    let mut without: Vec<Yaml> = all.clone();
    without.retain(|d| !ca_docs.contains(d));
    assert_eq!(without, base);
    assert_eq!(
        kinds(&all),
        [
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "Namespace",
            "ServiceAccount",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "Secret",
            "ConfigMap",
            "Service",
            "Deployment",
            "PodDisruptionBudget",
            "CSIDriver",
            "DaemonSet",
        ]
    );
    // Two runs generate two different CAs.
    let out = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_lanyard"))
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let (a, b) = (
        out(&["install", "--ca-only"]),
        out(&["install", "--ca-only"]),
    );
    assert_ne!(a, b);
    assert_eq!(read_stream(&a).unwrap().len(), 2);
}

fn secret_field(secret: &Yaml, key: &str) -> String {
    let b64 = secret.at(&["data", key]).and_then(Yaml::as_str).unwrap();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn the_generated_ca_is_what_the_server_reads() {
    let options = InstallOptions::new("example.org", "mesh", 1, Images::default()).unwrap();
    let ca = GeneratedCa::generate(
        &options,
        std::time::Duration::from_secs(30 * 86400),
        std::time::Duration::from_secs(86400),
        SystemTime::now(),
    )
    .unwrap();
    let secret = ca.secret(&options);
    assert_eq!(
        secret.get("type").and_then(Yaml::as_str),
        Some("kubernetes.io/tls")
    );
    assert_eq!(
        secret.at(&["metadata", "namespace"]).and_then(Yaml::as_str),
        Some("mesh")
    );
    let td = TrustDomain::new("example.org").unwrap();
    let issuer = Issuer::from_pem(
        &td,
        &secret_field(&secret, "tls.crt"),
        &secret_field(&secret, "tls.key"),
    )
    .unwrap();
    // Another trust domain's server refuses it.
    assert!(
        Issuer::from_pem(
            &TrustDomain::new("other.org").unwrap(),
            &secret_field(&secret, "tls.crt"),
            &secret_field(&secret, "tls.key"),
        )
        .is_err()
    );
    let jwt = secret_field(&secret, "jwt.key");
    assert!(jwt.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    // The ConfigMap's root is the intermediate's issuer.
    let configmap = ca.configmap(&options);
    let bundle = configmap
        .at(&["data", "bundle.pem"])
        .and_then(Yaml::as_str)
        .unwrap();
    assert_eq!(bundle, ca.root_cert_pem());
    let roots = lanyard_svid::bundle::certificates_from_pem(bundle.as_bytes()).unwrap();
    assert_eq!(roots.len(), 1);
    assert_ne!(roots[0], *issuer.cert_der());
    // The root key is nowhere in the cluster objects.
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("root.key");
    ca.write_root_key(&key_path).unwrap();
    let root_key = std::fs::read_to_string(&key_path).unwrap();
    RootCa::from_pem(&td, bundle, &root_key).expect("the written key is the root's");
    let all = write_stream(&[secret.clone(), configmap.clone()]);
    let key_body: String = root_key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!all.contains(&key_body));
    for field in ["tls.crt", "tls.key", "jwt.key"] {
        assert!(!secret_field(&secret, field).contains(&key_body));
    }
}

#[test]
fn the_ca_is_left_out_by_default_and_the_root_key_written_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("root.key");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_lanyard"))
            .arg("install")
            .args(extra)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    // By default: no CA objects, and stderr says how to create the CA.
    let plain = run(&[]);
    assert!(plain.status.success());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let stdout = String::from_utf8_lossy(&plain.stdout);
    assert!(!stdout.contains("PRIVATE KEY-----\n"));
    assert!(!stdout.contains("kind: Secret"), "{stdout}");
    // lanyard-config is the only ConfigMap: no bundle to overwrite mid-rotation.
    assert_eq!(stdout.matches("kind: ConfigMap").count(), 1, "{stdout}");
    let stderr = String::from_utf8_lossy(&plain.stderr);
    assert!(stderr.contains("lanyard ca init"), "{stderr}");
    assert!(stderr.contains("lanyard ca new-root"), "{stderr}");

    // --write-root-key without the CA in the output: an error naming the replacement.
    let alone = run(&["--write-root-key", key.to_str().unwrap()]);
    assert!(!alone.status.success());
    assert!(alone.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&alone.stderr);
    assert!(stderr.contains("lanyard ca new-root"), "{stderr}");
    assert!(!key.exists());

    // --include-ca: the old behaviour, with a warning about kubectl apply.
    let written = run(&["--include-ca", "--write-root-key", key.to_str().unwrap()]);
    assert!(written.status.success());
    let stderr = String::from_utf8_lossy(&written.stderr);
    assert!(stderr.contains("last-applied"), "{stderr}");
    assert!(String::from_utf8_lossy(&written.stdout).contains("kind: Secret"));
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let first = std::fs::read_to_string(&key).unwrap();
    assert!(first.starts_with("-----BEGIN PRIVATE KEY-----"));

    let again = run(&["--include-ca", "--write-root-key", key.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(
        again.stdout.is_empty(),
        "nothing printed when the key cannot be written"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("must not exist"));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), first);

    let conflict = run(&["--without-ca", "--write-root-key", "x.key"]);
    assert!(!conflict.status.success());
    let conflict = run(&["--without-ca", "--include-ca"]);
    assert!(!conflict.status.success());
}

#[test]
fn options_are_validated() {
    let bad = [
        InstallOptions::new("Example.org", "lanyard", 2, Images::default()).unwrap_err(),
        InstallOptions::new("example.org", "Lanyard", 2, Images::default()).unwrap_err(),
        InstallOptions::new("example.org", "lanyard", 0, Images::default()).unwrap_err(),
    ];
    assert!(matches!(bad[0], InstallError::TrustDomain(..)));
    assert!(matches!(bad[1], InstallError::Namespace(..)));
    assert!(matches!(bad[2], InstallError::Replicas(0)));
    assert!(Images::new("ghcr.io/acme", "v1.2").is_ok());
    assert!(Images::new("ghcr.io/acme", "-x").is_err());
    assert!(Images::new("Bad Registry", "v1").is_err());
    let out = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(["install", "--replicas", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--replicas 0"));
}

#[test]
fn options_reach_the_manifests() {
    let options = InstallOptions::new(
        "prod.example",
        "ident",
        3,
        Images::new("registry.local/x", "v9").unwrap(),
    )
    .unwrap();
    let docs = render(&options, Parts::WithoutCa, None);
    let text = write_stream(&docs);
    let deployment = docs
        .iter()
        .find(|d| d.get("kind").and_then(Yaml::as_str) == Some("Deployment"))
        .unwrap();
    assert_eq!(deployment.at(&["spec", "replicas"]), Some(&Yaml::Int(3)));
    assert!(text.contains("image: registry.local/x/lanyard-server:v9"));
    assert!(text.contains("image: registry.local/x/lanyard-agent:v9"));
    assert!(text.contains("lanyard-server.ident.svc:8081"));
    assert!(text.contains("ident/lanyard-ca"));
    assert!(!text.contains("namespace: lanyard\n"));
}

/// The agent's socket (the client default, given to `--socket`), the hostPath directory the
/// agent and the injected proxies mount, and the proxy's SPIFFE_ENDPOINT_SOCKET agree.
#[test]
fn the_socket_dir_holds_the_default_socket() {
    use lanyard_client::endpoint::DEFAULT_SOCKET;
    assert_eq!(
        std::path::Path::new(DEFAULT_SOCKET).parent(),
        Some(std::path::Path::new(lanyard_cli::install::SOCKET_DIR))
    );
    assert_eq!(
        lanyard_cli::inject::SPIFFE_ENDPOINT_VALUE,
        format!("unix://{DEFAULT_SOCKET}")
    );
    let args = lanyard_cli::install::render::agent_args(&InstallOptions::defaults());
    let i = args.iter().position(|a| a == "--socket").unwrap();
    assert_eq!(args[i + 1], DEFAULT_SOCKET);
}

const VERSION: &str = env!("CARGO_PKG_VERSION");
const REGISTRAR: &str = lanyard_cli::images::CSI_REGISTRAR_IMAGE;

/// A digest file as deploy/images/build writes it, for images under `registry` of `version`;
/// each image has its own digest (one hex digit repeated 64 times). Returns the text and
/// (component, digest) pairs.
fn digest_file(registry: &str, version: &str) -> (String, Vec<(String, String)>) {
    let mut images = serde_json::Map::new();
    let mut expected = Vec::new();
    for (i, component) in lanyard_cli::images::COMPONENTS.iter().enumerate() {
        let name = format!("lanyard-{component}");
        let digest = format!("sha256:{}", format!("{:x}", i + 10).repeat(64));
        images.insert(
            name.clone(),
            serde_json::json!({
                "reference": format!("{registry}/{name}:{version}"),
                "digest": digest,
            }),
        );
        expected.push((component.to_string(), digest));
    }
    let text = serde_json::json!({"version": version, "revision": "abc123", "images": images});
    (text.to_string(), expected)
}

fn lanyard_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(args)
        .current_dir(dir)
        // No LANYARD_* settings from the environment.
        .env_clear()
        .output()
        .unwrap()
}

/// Every `image` value in a YAML stream, in document order (depth first).
fn image_lines(text: &str) -> Vec<String> {
    fn walk(value: &Yaml, out: &mut Vec<String>) {
        match value {
            Yaml::Map(entries) => {
                for (key, v) in entries {
                    match (key.as_str(), v.as_str()) {
                        ("image", Some(image)) => out.push(image.to_owned()),
                        _ => walk(v, out),
                    }
                }
            }
            Yaml::Seq(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for doc in read_stream(text).unwrap() {
        if let Some(value) = &doc.value {
            walk(value, &mut out);
        }
    }
    out
}

#[test]
fn install_inject_and_images_pin_the_digest_files_images() {
    let dir = tempfile::tempdir().unwrap();
    let (text, digests) = digest_file("registry.example:5000/team", VERSION);
    std::fs::write(dir.path().join("d.json"), text).unwrap();
    let pinned = |component: &str, repo: &str| {
        let digest = &digests.iter().find(|(c, _)| c == component).unwrap().1;
        format!("{repo}/lanyard-{component}@{digest}")
    };
    let ok = |args: &[&str]| {
        let out = lanyard_in(dir.path(), args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let repo = "registry.example:5000/team";

    // `lanyard images`: Lanyard's five references, then the upstream registrar, one per
    // line; --lanyard-only leaves the registrar out. The digest file pins Lanyard's only.
    let ours = ["server", "agent", "proxy", "proxy-init", "cni"];
    let all: Vec<String> = ours.iter().map(|c| pinned(c, repo)).collect();
    assert_eq!(
        ok(&["images", "--image-digests", "d.json"]),
        all.join("\n") + "\n" + REGISTRAR + "\n"
    );
    assert_eq!(
        ok(&["images", "--image-digests", "d.json", "--lanyard-only"]),
        all.join("\n") + "\n"
    );
    assert_eq!(
        ok(&["images"]),
        ours.map(|c| format!("ghcr.io/lanyard-dev/lanyard-{c}:{VERSION}"))
            .join("\n")
            + "\n"
            + REGISTRAR
            + "\n"
    );

    // install names exactly the server and agent digest references, and the registrar by
    // its upstream tag.
    let install = ok(&["install", "--without-ca", "--image-digests", "d.json"]);
    assert_eq!(
        image_lines(&install),
        [
            pinned("server", repo),
            pinned("agent", repo),
            REGISTRAR.to_owned()
        ]
    );
    // --cni: the installer's too.
    let with_cni = ok(&[
        "install",
        "--without-ca",
        "--cni",
        "--image-digests",
        "d.json",
    ]);
    assert_eq!(
        image_lines(&with_cni),
        [
            pinned("server", repo),
            pinned("agent", repo),
            REGISTRAR.to_owned(),
            pinned("cni", repo)
        ]
    );
    // With --image-registry: that registry's repositories, the same digests.
    let moved = ok(&[
        "install",
        "--without-ca",
        "--image-digests",
        "d.json",
        "--image-registry",
        "mirror.local/lanyard",
    ]);
    assert_eq!(
        image_lines(&moved),
        [
            pinned("server", "mirror.local/lanyard"),
            pinned("agent", "mirror.local/lanyard"),
            REGISTRAR.to_owned()
        ]
    );
    // The rest of the rendering is unchanged.
    let plain = ok(&["install", "--without-ca"]);
    let unpinned = install
        .replace(
            &pinned("server", repo),
            &format!("ghcr.io/lanyard-dev/lanyard-server:{VERSION}"),
        )
        .replace(
            &pinned("agent", repo),
            &format!("ghcr.io/lanyard-dev/lanyard-agent:{VERSION}"),
        );
    let values = |t: &str| -> Vec<Option<Yaml>> {
        read_stream(t)
            .unwrap()
            .into_iter()
            .map(|d| d.value)
            .collect()
    };
    assert!(
        values(&unpinned) == values(&plain),
        "pinning changed more than the images"
    );

    // inject names the proxy and init digest references.
    std::fs::write(
        dir.path().join("pod.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: a, image: app:1}]\n",
    )
    .unwrap();
    let injected = ok(&["inject", "pod.yaml", "--image-digests", "d.json"]);
    let mut images = image_lines(&injected);
    images.sort();
    let mut expected = vec![
        "app:1".to_owned(),
        pinned("proxy", repo),
        pinned("proxy-init", repo),
    ];
    expected.sort();
    assert_eq!(images, expected);
}

#[test]
fn bad_digest_files_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    let (good, _) = digest_file("ghcr.io/lanyard-dev", VERSION);
    let mut value: serde_json::Value = serde_json::from_str(&good).unwrap();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = value.clone();
        f(&mut v);
        v.to_string()
    };
    write("good.json", &good);
    write("bad.json", "{\"version\": ");
    write(
        "upper.json",
        &edit(&|v| {
            let d = v["images"]["lanyard-agent"]["digest"]
                .as_str()
                .unwrap()
                .to_uppercase();
            v["images"]["lanyard-agent"]["digest"] = d.replace("SHA256:", "sha256:").into();
        }),
    );
    write(
        "short.json",
        &edit(&|v| v["images"]["lanyard-server"]["digest"] = "sha256:abc".into()),
    );
    write(
        "md5.json",
        &edit(&|v| {
            v["images"]["lanyard-server"]["digest"] = format!("md5:{}", "a".repeat(64)).into()
        }),
    );
    write(
        "no-agent.json",
        &edit(&|v| {
            v["images"].as_object_mut().unwrap().remove("lanyard-agent");
        }),
    );
    write(
        "swapped.json",
        &edit(&|v| {
            v["images"]["lanyard-server"]["reference"] =
                "ghcr.io/lanyard-dev/lanyard-agent:0.1.0".into()
        }),
    );
    write("old.json", &digest_file("ghcr.io/lanyard-dev", "0.0.9").0);
    write(
        "no-cni.json",
        &edit(&|v| {
            v["images"].as_object_mut().unwrap().remove("lanyard-cni");
        }),
    );
    value["images"]
        .as_object_mut()
        .unwrap()
        .remove("lanyard-proxy-init");
    write("no-init.json", &value.to_string());

    for (args, message) in [
        (
            vec!["install", "--image-digests", "missing.json"],
            "--image-digests missing.json: No such file or directory".to_owned(),
        ),
        (
            vec!["install", "--image-digests", "bad.json"],
            "--image-digests bad.json: not the image-digests.json that deploy/images/build writes: EOF".to_owned(),
        ),
        (
            vec!["install", "--image-digests", "upper.json"],
            "--image-digests upper.json: lanyard-agent: digest \"sha256:BBBB".to_owned(),
        ),
        (
            vec!["install", "--image-digests", "short.json"],
            "--image-digests short.json: lanyard-server: digest \"sha256:abc\" is not \"sha256:\" followed by 64 lowercase hex digits".to_owned(),
        ),
        (
            vec!["install", "--image-digests", "md5.json"],
            "lanyard-server: digest \"md5:".to_owned(),
        ),
        (
            vec!["install", "--image-digests", "no-agent.json"],
            "--image-digests no-agent.json: no entry for lanyard-agent, which this command needs; the file lists lanyard-cni, lanyard-proxy, lanyard-proxy-init, lanyard-server".to_owned(),
        ),
        (
            vec!["inject", "-", "--image-digests", "no-init.json"],
            "no entry for lanyard-proxy-init, which this command needs".to_owned(),
        ),
        (
            vec!["images", "--image-digests", "no-init.json"],
            "no entry for lanyard-proxy-init".to_owned(),
        ),
        (
            vec!["install", "--image-digests", "swapped.json"],
            "lanyard-server: reference \"ghcr.io/lanyard-dev/lanyard-agent:0.1.0\" does not name a lanyard-server repository".to_owned(),
        ),
        (
            vec!["install", "--image-digests", "old.json"],
            format!("--image-digests old.json: the images are lanyard 0.0.9's, this lanyard is {VERSION}"),
        ),
        (
            vec!["install", "--image-digests", "good.json", "--image-tag", "v2"],
            "cannot be used with".to_owned(),
        ),
        (
            vec!["install", "--cni", "--image-digests", "no-cni.json"],
            "--image-digests no-cni.json: no entry for lanyard-cni, which this command needs".to_owned(),
        ),
        (
            vec!["images", "--image-digests", "no-cni.json"],
            "no entry for lanyard-cni".to_owned(),
        ),
        (
            vec!["install", "--csi-registrar-image", "registry.k8s.io/sig-storage/csi-node-driver-registrar"],
            "--csi-registrar-image \"registry.k8s.io/sig-storage/csi-node-driver-registrar\": give an image reference".to_owned(),
        ),
        (
            vec!["images", "--csi-registrar-image", "x:v1 --privileged"],
            "--csi-registrar-image \"x:v1 --privileged\"".to_owned(),
        ),
    ] {
        let out = lanyard_in(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(out.stdout.is_empty(), "{args:?} printed output");
        assert!(stderr.contains(&message), "{args:?}: expected {message:?} in {stderr}");
    }
    // Another version's images only when asked for.
    let out = lanyard_in(
        dir.path(),
        &[
            "images",
            "--image-digests",
            "old.json",
            "--image-digests-any-version",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("lanyard-server@sha256:"));
    // Without --cni the file needs no lanyard-cni.
    let out = lanyard_in(
        dir.path(),
        &["install", "--without-ca", "--image-digests", "no-cni.json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `lanyard images` says on stderr which line is not Lanyard's; --csi-registrar-image
/// replaces the registrar in `images` and `install` (a mirror, or a digest reference).
#[test]
fn the_registrar_is_marked_upstream_and_replaceable() {
    let dir = tempfile::tempdir().unwrap();
    let out = lanyard_in(dir.path(), &["images"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("{REGISTRAR} is upstream's"))
            && stderr.contains("not built by deploy/images/build")
            && stderr.contains("not pinned by --image-digests"),
        "{stderr}"
    );
    let only = lanyard_in(dir.path(), &["images", "--lanyard-only"]);
    assert!(only.status.success() && only.stderr.is_empty());
    assert!(!String::from_utf8_lossy(&only.stdout).contains("registrar"));

    let mirror = format!(
        "mirror.local:5000/k8s/csi-node-driver-registrar@sha256:{}",
        "ab".repeat(32)
    );
    let images = lanyard_in(dir.path(), &["images", "--csi-registrar-image", &mirror]);
    let stdout = String::from_utf8(images.stdout).unwrap();
    assert_eq!(stdout.lines().last(), Some(mirror.as_str()));
    let install = lanyard_in(
        dir.path(),
        &["install", "--without-ca", "--csi-registrar-image", &mirror],
    );
    assert!(install.status.success());
    let lines = image_lines(&String::from_utf8(install.stdout).unwrap());
    assert!(lines.contains(&mirror), "{lines:?}");
    assert!(!lines.iter().any(|l| l == REGISTRAR), "{lines:?}");
}

fn json_docs(options: &InstallOptions) -> Vec<serde_json::Value> {
    render(options, Parts::WithoutCa, None)
        .iter()
        .map(|d| serde_json::to_value(d).unwrap())
        .collect()
}

fn find<'a>(docs: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// The value after `flag` in `args`.
fn flag_value<'a>(args: &'a [String], flag: &str) -> &'a str {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    &args[i + 1]
}

/// The pieces the kubelet needs to call the agent's CSI node plugin for inline volumes, and
/// that `lanyard inject` relies on: the CSIDriver, the agent serving the socket the registrar
/// registers, the kubelet's pods directory at its own path with Bidirectional propagation
/// (hence privileged), and `redirect: init` in lanyard-config without --cni.
#[test]
fn the_csi_driver_and_the_agent_daemonset_have_the_kubelets_shape() {
    let docs = json_docs(&InstallOptions::defaults());
    let driver = find(&docs, "CSIDriver", "csi.lanyard.dev");
    assert_eq!(driver["apiVersion"], "storage.k8s.io/v1");
    assert_eq!(driver["metadata"].get("namespace"), None, "cluster-scoped");
    assert_eq!(
        driver["spec"],
        serde_json::json!({
            "attachRequired": false,
            "podInfoOnMount": true,
            "volumeLifecycleModes": ["Ephemeral"],
            "fsGroupPolicy": "None",
        })
    );
    assert_eq!(lanyard_cli::install::CSI_DRIVER_NAME, "csi.lanyard.dev");

    let config = find(&docs, "ConfigMap", "lanyard-config");
    assert_eq!(config["metadata"]["namespace"], "lanyard");
    assert_eq!(config["data"], serde_json::json!({"redirect": "init"}));

    let ds = find(&docs, "DaemonSet", "lanyard-agent");
    let pod = &ds["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 2);
    let (agent, registrar) = (&containers[0], &containers[1]);
    let volume_path = |name: &str| -> String {
        let v = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"));
        v["hostPath"]["path"].as_str().unwrap().to_owned()
    };
    // mountPath -> (host path, propagation) for a container.
    let mounts = |c: &serde_json::Value| -> Vec<(String, String, String)> {
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| {
                pod["volumes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|v| v["name"] == m["name"] && v.get("hostPath").is_some())
            })
            .map(|m| {
                (
                    m["mountPath"].as_str().unwrap().to_owned(),
                    volume_path(m["name"].as_str().unwrap()),
                    m["mountPropagation"].as_str().unwrap_or("None").to_owned(),
                )
            })
            .collect()
    };
    let mount = |m: &str, h: &str, p: &str| (m.to_owned(), h.to_owned(), p.to_owned());

    let args = strings(&agent["args"]);
    assert_eq!(flag_value(&args, "--csi-socket"), "/csi/csi.sock");
    assert_eq!(flag_value(&args, "--csi-pods-dir"), "/var/lib/kubelet/pods");
    assert_eq!(
        mounts(agent),
        [
            mount("/run/lanyard/sockets", "/run/lanyard/sockets", "None"),
            mount("/csi", "/var/lib/kubelet/plugins/csi.lanyard.dev", "None"),
            mount(
                "/var/lib/kubelet/pods",
                "/var/lib/kubelet/pods",
                "Bidirectional"
            ),
        ]
    );
    // Bidirectional propagation is refused by the API server unless privileged (and
    // privileged with allowPrivilegeEscalation false is refused too).
    assert_eq!(agent["securityContext"]["privileged"], true);
    assert_eq!(
        agent["securityContext"].get("allowPrivilegeEscalation"),
        None
    );
    assert_eq!(agent["securityContext"]["readOnlyRootFilesystem"], true);

    assert_eq!(registrar["name"], "node-driver-registrar");
    assert_eq!(
        registrar["image"],
        "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.13.0"
    );
    let registrar_args = strings(&registrar["args"]);
    assert_eq!(
        registrar_args[..2],
        [
            "--csi-address=/csi/csi.sock",
            "--kubelet-registration-path=/var/lib/kubelet/plugins/csi.lanyard.dev/csi.sock",
        ]
    );
    // The registrar's /healthz is its liveness probe, on the port it serves.
    assert_eq!(registrar_args[2], "--http-endpoint=:9809");
    assert_eq!(registrar["ports"][0]["containerPort"], 9809);
    assert_eq!(
        registrar["livenessProbe"]["httpGet"]["port"],
        registrar["ports"][0]["name"]
    );
    assert_eq!(
        mounts(registrar),
        [
            mount("/csi", "/var/lib/kubelet/plugins/csi.lanyard.dev", "None"),
            mount("/registration", "/var/lib/kubelet/plugins_registry", "None"),
        ]
    );
    assert_eq!(registrar["securityContext"].get("privileged"), None);
    // The socket the registrar hands the kubelet is the agent's, seen from the node.
    let on_node = flag_value(&args, "--csi-socket").replacen(
        "/csi",
        "/var/lib/kubelet/plugins/csi.lanyard.dev",
        1,
    );
    assert_eq!(
        registrar_args[1],
        format!("--kubelet-registration-path={on_node}")
    );
    assert_eq!(pod["automountServiceAccountToken"], false);

    // The namespace admits it.
    let ns = find(&docs, "Namespace", "lanyard");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
}

/// Without --cni nothing of the CNI plugin is rendered; with it, the installer DaemonSet,
/// its ServiceAccount, a ClusterRole with get on pods only and its binding, and
/// `redirect: cni` in lanyard-config.
#[test]
fn cni_objects_only_with_cni() {
    let options = InstallOptions::new(
        "example.org",
        "mesh",
        1,
        Images::new("registry.local/x", "v9").unwrap(),
    )
    .unwrap();
    let without = json_docs(&options);
    let text = serde_json::to_string(&without).unwrap();
    assert!(!text.contains("lanyard-cni"), "{text}");
    assert!(!text.contains("/etc/cni"), "{text}");

    let docs = json_docs(&options.clone().with_cni());
    let added: Vec<_> = docs
        .iter()
        .filter(|d| !without.contains(d))
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_owned(),
                d["metadata"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let pair = |k: &str, n: &str| (k.to_owned(), n.to_owned());
    assert_eq!(
        added,
        [
            pair("ServiceAccount", "lanyard-cni"),
            pair("ClusterRole", "lanyard-cni-mesh"),
            pair("ClusterRoleBinding", "lanyard-cni-mesh"),
            pair("ConfigMap", "lanyard-config"),
            pair("DaemonSet", "lanyard-cni"),
        ]
    );
    assert_eq!(
        find(&docs, "ConfigMap", "lanyard-config")["data"],
        serde_json::json!({"redirect": "cni"})
    );
    let sa = find(&docs, "ServiceAccount", "lanyard-cni");
    assert_eq!(sa["metadata"]["namespace"], "mesh");
    assert_eq!(
        sa.get("automountServiceAccountToken"),
        None,
        "the installer hands its token to the plugin"
    );
    assert_eq!(
        find(&docs, "ClusterRole", "lanyard-cni-mesh")["rules"],
        serde_json::json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}])
    );
    let binding = find(&docs, "ClusterRoleBinding", "lanyard-cni-mesh");
    assert_eq!(binding["roleRef"]["name"], "lanyard-cni-mesh");
    assert_eq!(
        binding["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": "lanyard-cni", "namespace": "mesh"}])
    );

    let ds = find(&docs, "DaemonSet", "lanyard-cni");
    assert_eq!(ds["metadata"]["namespace"], "mesh");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "lanyard-cni");
    let agent_pod = &find(&docs, "DaemonSet", "lanyard-agent")["spec"]["template"]["spec"];
    assert_eq!(pod["tolerations"], agent_pod["tolerations"]);
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() >= 10);
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["image"], "registry.local/x/lanyard-cni:v9");
    assert_eq!(
        strings(&c["args"]),
        [
            "install",
            "--host-bin-dir",
            "/host/opt/cni/bin",
            "--host-conf-dir",
            "/host/etc/cni/net.d"
        ]
    );
    assert_eq!(c["securityContext"]["runAsUser"], 0);
    assert_eq!(c["securityContext"].get("privileged"), None);
    let host_path = |mount: &str| -> String {
        let m = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == mount)
            .unwrap_or_else(|| panic!("no mount at {mount}"));
        let v = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap();
        v["hostPath"]["path"].as_str().unwrap().to_owned()
    };
    assert_eq!(host_path("/host/opt/cni/bin"), "/opt/cni/bin");
    assert_eq!(host_path("/host/etc/cni/net.d"), "/etc/cni/net.d");
    assert_eq!(
        lanyard_cli::install::render::cni_args(),
        strings(&c["args"])
    );
}

/// The CRDs (LanyardIdentity, then LanyardFederation) are the first documents of every
/// rendering (so `kubectl apply` creates them before anything uses them) and are the
/// registration crate's manifests, as data.
#[test]
fn the_crds_come_first_and_are_the_registrations() {
    let crds: Vec<Yaml> = lanyard_registration::crd::ALL_CRD_YAML
        .iter()
        .flat_map(|text| read_stream(text).unwrap())
        .filter_map(|d| d.value)
        .collect();
    assert_eq!(
        kinds(&crds),
        ["CustomResourceDefinition", "CustomResourceDefinition"],
        "each CRD text is one CRD"
    );
    let names: Vec<_> = crds
        .iter()
        .map(|c| c.at(&["metadata", "name"]).and_then(Yaml::as_str))
        .collect();
    assert_eq!(
        names,
        [
            Some("lanyardidentities.lanyard.dev"),
            Some("lanyardfederations.lanyard.dev")
        ]
    );
    let options = InstallOptions::defaults();
    let ca = GeneratedCa::generate(
        &options,
        std::time::Duration::from_secs(30 * 86400),
        std::time::Duration::from_secs(86400),
        SystemTime::now(),
    )
    .unwrap();
    for (what, docs) in [
        ("install", render(&options, Parts::WithoutCa, None)),
        ("--include-ca", render(&options, Parts::All, Some(&ca))),
        (
            "--cni",
            render(&options.clone().with_cni(), Parts::WithoutCa, None),
        ),
    ] {
        assert_eq!(docs[..2], crds[..], "{what}: the CRDs are not first");
        assert_eq!(
            kinds(&docs)
                .iter()
                .filter(|k| *k == "CustomResourceDefinition")
                .count(),
            2,
            "{what}"
        );
    }
    // Printed as the registration crate wrote them, comments and all.
    let out = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .arg("install")
        .env_clear()
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let identity = lanyard_registration::crd::CRD_YAML.trim_end();
    let federation = lanyard_registration::crd::FEDERATION_CRD_YAML.trim_end();
    assert!(
        text.starts_with(&format!("{identity}\n---\n{federation}\n---\n")),
        "the CRDs are not printed verbatim first:\n{}",
        &text[..text.len().min(2000)]
    );
    // Not with --ca-only: that prints the CA objects alone.
    assert_eq!(
        kinds(&render(&options, Parts::CaOnly, Some(&ca))),
        ["Secret", "ConfigMap"]
    );
}

/// What registration adds to the server's RBAC: read LanyardIdentities, LanyardFederations and
/// Namespaces, write only the LanyardIdentity `status` subresource, and the status Lease:
/// create (never limitable by name), get/update/patch of that one Lease by name.
#[test]
fn the_server_may_read_identities_and_write_only_their_status() {
    let docs =
        json_docs(&InstallOptions::new("example.org", "mesh", 1, Images::default()).unwrap());
    let rules = find(&docs, "ClusterRole", "lanyard-server-mesh")["rules"]
        .as_array()
        .unwrap()
        .clone();
    let rule = |group: &str, resource: &str| {
        rules
            .iter()
            .filter(|r| {
                strings(&r["apiGroups"]).contains(&group.to_owned())
                    && strings(&r["resources"]).contains(&resource.to_owned())
            })
            .flat_map(|r| {
                assert!(r.get("resourceNames").is_none(), "{r}");
                strings(&r["verbs"])
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        rule("lanyard.dev", "lanyardidentities"),
        ["get", "list", "watch"]
    );
    assert_eq!(
        rule("lanyard.dev", "lanyardidentities/status"),
        ["get", "patch", "update"]
    );
    assert_eq!(rule("", "namespaces"), ["get", "list", "watch"]);
    assert_eq!(
        rule("lanyard.dev", "lanyardfederations"),
        ["get", "list", "watch"]
    );
    // Nothing else on lanyard.dev (no spec writes, no other resource).
    for r in &rules {
        if strings(&r["apiGroups"]).contains(&"lanyard.dev".to_owned()) {
            let resources = strings(&r["resources"]);
            assert!(
                resources == ["lanyardidentities"]
                    || resources == ["lanyardidentities/status"]
                    || resources == ["lanyardfederations"],
                "{r}"
            );
        }
    }

    let role = find(&docs, "Role", "lanyard-server");
    assert_eq!(role["metadata"]["namespace"], "mesh");
    let leases: Vec<_> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| strings(&r["apiGroups"]) == ["coordination.k8s.io"])
        .cloned()
        .collect();
    assert_eq!(
        leases,
        [
            serde_json::json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]}),
            serde_json::json!({
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "resourceNames": [lanyard_cli::install::STATUS_LEASE_NAME],
                "verbs": ["get", "update", "patch"],
            }),
        ]
    );
    assert_eq!(
        lanyard_cli::install::STATUS_LEASE_NAME,
        "lanyard-identity-status"
    );
}
