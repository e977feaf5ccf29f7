//! `lanyard inject` without `--redirect` reads the installed mode from ConfigMap
//! `lanyard-config` (key `redirect`) in `--namespace`, through the real `kube` client against
//! the Kubernetes API fixture (KUBECONFIG), and falls back to `init` with one line saying why:
//! the ConfigMap missing, its key missing, a cluster that does not answer within
//! `--cluster-timeout`. A value that is neither `cni` nor `init` stops the command.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kube_fixture::{FixtureOptions, KubeFixture};

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}\n  containers:\n  - name: app\n    image: app:1\n    securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}\n";

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn inject(kubeconfig: &Path, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pod.yaml");
    std::fs::write(&file, POD).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .arg("inject")
        .arg(&file)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", dir.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("LANYARD_NAMESPACE")
        .env_remove("LANYARD_REDIRECT")
        .output()
        .unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn config_map(namespace: &str, data: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: lanyard-config, namespace: {namespace}}}\ndata: {data}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_installed_mode_is_read_from_lanyard_config() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fixture = KubeFixture::start(FixtureOptions::default()).await.unwrap();
    let kubeconfig = fixture.kubeconfig_path().to_owned();
    fixture
        .apply_yaml(&config_map("lanyard", "{redirect: cni}"))
        .unwrap();
    fixture
        .apply_yaml(&config_map("mesh", "{redirect: init}"))
        .unwrap();
    fixture
        .apply_yaml(&config_map("nokey", "{other: x}"))
        .unwrap();
    fixture
        .apply_yaml(&config_map("bad", "{redirect: ebpf}"))
        .unwrap();

    // The default namespace, lanyard: cni, silently.
    let run = tokio::task::spawn_blocking(move || {
        let cni = inject(&kubeconfig, &[]);
        let init = inject(&kubeconfig, &["--namespace", "mesh"]);
        let missing = inject(&kubeconfig, &["--namespace", "elsewhere"]);
        let no_key = inject(&kubeconfig, &["--namespace", "nokey"]);
        let bad = inject(&kubeconfig, &["--namespace", "bad"]);
        let flag = inject(&kubeconfig, &["--namespace", "mesh", "--redirect", "cni"]);
        let ignored = inject(&kubeconfig, &["--ignore-cluster"]);
        (cni, init, missing, no_key, bad, flag, ignored)
    })
    .await
    .unwrap();
    let (cni, init, missing, no_key, bad, flag, ignored) = run;

    assert!(cni.ok, "{}", cni.stderr);
    assert!(
        cni.stdout.contains("lanyard.dev/redirect: cni"),
        "{}",
        cni.stdout
    );
    assert!(cni.stdout.contains("name: lanyard-validate"));
    assert_eq!(cni.stderr, "", "a clear answer needs no comment");

    assert!(init.ok && init.stdout.contains("lanyard.dev/redirect: init"));
    assert!(init.stdout.contains("name: lanyard-init"));
    assert_eq!(init.stderr, "");

    assert!(missing.ok && missing.stdout.contains("lanyard.dev/redirect: init"));
    assert_eq!(
        missing.stderr,
        "lanyard: using --redirect init: ConfigMap elsewhere/lanyard-config not found (Lanyard \
         is not installed in namespace elsewhere; --namespace names another)\n"
    );

    assert!(no_key.ok && no_key.stdout.contains("lanyard.dev/redirect: init"));
    assert_eq!(
        no_key.stderr,
        "lanyard: using --redirect init: ConfigMap nokey/lanyard-config has no key redirect\n"
    );

    assert!(!bad.ok);
    assert!(bad.stdout.is_empty());
    assert_eq!(
        bad.stderr,
        "lanyard: ConfigMap bad/lanyard-config: redirect: \"ebpf\" is not a redirect mode: give \
         cni or init; give --redirect\n"
    );

    // The flag wins over the cluster; --ignore-cluster does not ask it.
    assert!(flag.ok && flag.stdout.contains("lanyard.dev/redirect: cni"));
    assert!(ignored.ok && ignored.stdout.contains("lanyard.dev/redirect: init"));
    assert_eq!(
        ignored.stderr,
        "lanyard: --ignore-cluster: using --redirect init\n"
    );
}

/// A cluster that accepts connections but never answers costs `--cluster-timeout`, not more.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_cluster_is_bounded_by_the_timeout() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fixture = KubeFixture::start(FixtureOptions::default()).await.unwrap();
    // Connections queue in the backlog and nothing ever reads them.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = format!("https://{}", silent.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    kube_fixture::kubeconfig::write_private(
        &kubeconfig,
        &kube_fixture::kubeconfig::render(&server, fixture.ca_pem(), "admin", "token"),
    )
    .unwrap();
    let started = Instant::now();
    let run =
        tokio::task::spawn_blocking(move || inject(&kubeconfig, &["--cluster-timeout", "1s"]))
            .await
            .unwrap();
    let took = started.elapsed();
    drop(silent);
    assert!(run.ok, "{}", run.stderr);
    assert!(run.stdout.contains("lanyard.dev/redirect: init"));
    assert_eq!(
        run.stderr,
        "lanyard: using --redirect init: the cluster did not answer within 1s\n"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

/// What `lanyard install` writes is what `lanyard inject` reads: the rendered manifests
/// applied to the fixture, with and without `--cni`.
#[tokio::test(flavor = "multi_thread")]
async fn inject_follows_what_install_rendered() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    for (install_args, expected) in [
        (&["--without-ca", "--cni"][..], "cni"),
        (&["--without-ca"][..], "init"),
    ] {
        let fixture = KubeFixture::start(FixtureOptions::default()).await.unwrap();
        let rendered = Command::new(env!("CARGO_BIN_EXE_lanyard"))
            .arg("install")
            .args(install_args)
            .output()
            .unwrap();
        assert!(rendered.status.success());
        fixture
            .apply_yaml(&String::from_utf8(rendered.stdout).unwrap())
            .unwrap();
        let kubeconfig = fixture.kubeconfig_path().to_owned();
        let run = tokio::task::spawn_blocking(move || inject(&kubeconfig, &[]))
            .await
            .unwrap();
        assert!(run.ok, "{}", run.stderr);
        assert_eq!(run.stderr, "", "{install_args:?}");
        assert!(
            run.stdout
                .contains(&format!("lanyard.dev/redirect: {expected}")),
            "{install_args:?}: {}",
            run.stdout
        );
    }
}
