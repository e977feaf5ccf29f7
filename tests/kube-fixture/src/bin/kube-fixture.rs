//! Runs the fixture standalone, for trying Lanyard's Kubernetes mode by hand:
//!
//! ```text
//! cargo run -p kube-fixture -- [MANIFEST.yaml ...]
//! ```
//!
//! Applies the given manifests (served kinds only; others are listed as skipped), prints the
//! URL, the admin kubeconfig path and the admin token, optionally a ServiceAccount kubeconfig
//! (`--sa NS:NAME`), then serves until Ctrl-C or SIGTERM.

use std::process::ExitCode;

use kube_fixture::{FixtureOptions, KubeFixture};

const USAGE: &str = "usage: kube-fixture [--sa NAMESPACE:NAME]... [MANIFEST.yaml]...";

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "kube_fixture=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let mut manifests = Vec::new();
    let mut service_accounts = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--sa" => match args.next().and_then(|v| {
                v.split_once(':')
                    .map(|(ns, name)| (ns.to_string(), name.to_string()))
            }) {
                Some(sa) => service_accounts.push(sa),
                None => {
                    eprintln!("--sa needs NAMESPACE:NAME\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            _ => manifests.push(arg),
        }
    }

    let fixture = match KubeFixture::start(FixtureOptions::default()).await {
        Ok(f) => f,
        Err(e) => {
            eprintln!("kube-fixture: {e}");
            return ExitCode::FAILURE;
        }
    };
    for path in &manifests {
        let applied = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| fixture.apply_yaml(&text).map_err(|e| e.to_string()));
        match applied {
            Ok(summary) => {
                for a in summary.applied {
                    println!("applied {a}");
                }
                for s in summary.skipped {
                    println!("skipped {s} (not served by the fixture)");
                }
            }
            Err(e) => {
                eprintln!("kube-fixture: {path}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }

    println!("listening on {} (kube API)", fixture.addr());
    println!("url: {}", fixture.url());
    println!("kubeconfig: {}", fixture.kubeconfig_path().display());
    println!("admin token: {}", fixture.admin_token());
    for (ns, name) in service_accounts {
        let token = fixture.issue_api_token(&ns, &name);
        match fixture.write_kubeconfig(&format!("{ns}-{name}"), &token) {
            Ok(path) => println!("kubeconfig for {ns}:{name}: {}", path.display()),
            Err(e) => {
                eprintln!("kube-fixture: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("press Ctrl-C to stop");

    // Return normally on SIGINT or SIGTERM so the kubeconfig directory is removed.
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kube-fixture: installing the SIGTERM handler failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        result = tokio::signal::ctrl_c() => {
            if let Err(e) = result {
                eprintln!("kube-fixture: waiting for Ctrl-C failed: {e}");
                return ExitCode::FAILURE;
            }
        }
        _ = term.recv() => {}
    }
    drop(fixture);
    ExitCode::SUCCESS
}
