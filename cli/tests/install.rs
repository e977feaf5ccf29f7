//! `lanyard install`: deploy/kubernetes/ is the deterministic rendering, the generated CA is
//! what the server accepts, the root key is written only when asked (0600, never over a
//! file) and options are validated. That every flag in the manifests is a real flag of the
//! binary it is given to is checked with the daemons' own parsers in the end-to-end crate
//! (tests/e2e/tests/install_flags.rs), so that this crate depends on no daemon.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::SystemTime;

use base64::Engine;
use lanyard_cli::images::Images;
use lanyard_cli::install::ca::GeneratedCa;
use lanyard_cli::install::{InstallError, InstallOptions, Parts, render};
use lanyard_cli::yaml::{Yaml, read_stream, write_stream};
use lanyard_svid::TrustDomain;
use lanyard_svid::ca::{Issuer, RootCa};

const DEPLOY_FILE: &str = "deploy/kubernetes/lanyard.yaml";

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

/// The committed file is exactly `lanyard install --without-ca`. To refresh it after a
/// deliberate change: `LANYARD_UPDATE_MANIFESTS=1 cargo test -p lanyard-cli --test install`.
#[test]
fn deploy_kubernetes_is_the_rendering() {
    let rendered = write_stream(&render(&InstallOptions::defaults(), Parts::WithoutCa, None));
    let path = repo_path(DEPLOY_FILE);
    if std::env::var_os("LANYARD_UPDATE_MANIFESTS").is_some() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap();
    assert!(
        committed == rendered,
        "{DEPLOY_FILE} differs from `lanyard install --without-ca`; refresh it with \
         LANYARD_UPDATE_MANIFESTS=1 cargo test -p lanyard-cli --test install"
    );
    // And the binary prints the same.
    let out = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(["install", "--without-ca"])
        // No LANYARD_* settings from the environment: the defaults.
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), committed);
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
            "Namespace",
            "ServiceAccount",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Secret",
            "ConfigMap",
            "Service",
            "Deployment",
            "PodDisruptionBudget",
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
fn the_root_key_is_written_only_when_asked_0600_and_never_over_a_file() {
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
    let plain = run(&[]);
    assert!(plain.status.success());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("PRIVATE KEY-----\n"));

    let written = run(&["--write-root-key", key.to_str().unwrap()]);
    assert!(written.status.success());
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let first = std::fs::read_to_string(&key).unwrap();
    assert!(first.starts_with("-----BEGIN PRIVATE KEY-----"));

    let again = run(&["--write-root-key", key.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(
        again.stdout.is_empty(),
        "nothing printed when the key cannot be written"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("must not exist"));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), first);

    let conflict = run(&["--without-ca", "--write-root-key", "x.key"]);
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

    // `lanyard images`: the four references, one per line; the build script's source of names.
    let all: Vec<String> = ["server", "agent", "proxy", "proxy-init"]
        .iter()
        .map(|c| pinned(c, repo))
        .collect();
    assert_eq!(
        ok(&["images", "--image-digests", "d.json"]),
        all.join("\n") + "\n"
    );
    assert_eq!(
        ok(&["images"]),
        ["server", "agent", "proxy", "proxy-init"]
            .map(|c| format!("ghcr.io/lanyard-dev/lanyard-{c}:{VERSION}"))
            .join("\n")
            + "\n"
    );

    // install names exactly the server and agent digest references.
    let install = ok(&["install", "--without-ca", "--image-digests", "d.json"]);
    assert_eq!(
        image_lines(&install),
        [pinned("server", repo), pinned("agent", repo)]
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
            pinned("agent", "mirror.local/lanyard")
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
            "--image-digests no-agent.json: no entry for lanyard-agent, which this command needs; the file lists lanyard-proxy, lanyard-proxy-init, lanyard-server".to_owned(),
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
}
