//! Every flag `lanyard install` and `lanyard inject` give a binary is a real flag of that
//! binary: the rendered argument lists are parsed and validated by the daemons' own clap
//! definitions (the ones their `--help` is generated from) and resolved into their configs.
//! Here rather than in lanyard-cli's tests so that the CLI depends on no daemon crate. The
//! CNI installer's arguments (`lanyard install --cni`) are checked against the `lanyard-cni`
//! binary's own `install --help`, as that crate has no library parser to call.

use std::path::PathBuf;

use clap::{Args, FromArgMatches};
use lanyard_cli::inject::{InjectOptions, proxy_args, proxy_container};
use lanyard_cli::install::InstallOptions;
use lanyard_cli::install::render::{
    CSI_SOCKET, KUBELET_PODS_DIR, agent_args, cni_args, server_args,
};
use lanyard_cli::yaml::Yaml;
use lanyard_client::endpoint::DEFAULT_SOCKET;
use lanyard_e2e::binary;

/// Parses `args` (after the `run` subcommand) with `A`'s clap definition, as the binary does.
fn parse_run<A: Args + FromArgMatches>(binary: &'static str, args: &[String]) -> A {
    assert_eq!(args[0], "run");
    let mut command = A::augment_args(clap::Command::new(binary));
    let help = command.render_long_help().to_string();
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "{binary} run --help has no {flag}"
        );
    }
    let matches = command
        .try_get_matches_from(std::iter::once(binary.to_owned()).chain(args[1..].iter().cloned()))
        .unwrap_or_else(|e| panic!("{binary} refuses the manifest's arguments: {e}"));
    A::from_arg_matches(&matches).unwrap()
}

#[test]
fn manifest_flags_are_the_binaries_real_flags() {
    let options = InstallOptions::defaults();
    // The server, in cluster mode with the rendered object names.
    let server: lanyard_server::config::RunArgs =
        parse_run("lanyard-server", &server_args(&options));
    let config = server.resolve().expect("the server accepts its flags");
    let lanyard_server::config::Mode::Cluster(cluster) = config.mode else {
        panic!("not cluster mode")
    };
    assert_eq!(cluster.ca_secret.to_string(), "lanyard/lanyard-ca");
    assert_eq!(
        cluster.bundle_configmap.to_string(),
        "lanyard/lanyard-bundle"
    );
    assert_eq!(
        cluster.agent_service_accounts,
        [("lanyard".to_owned(), "lanyard-agent".to_owned())]
    );
    assert_eq!(cluster.audience, "lanyard-server");
    assert!(config.health.is_some());

    // The agent, serving the CSI node plugin. The DaemonSet sets LANYARD_NODE_NAME from the
    // downward API: that is the agent's --node-name (the CSI node ID).
    let mut args = agent_args(&options);
    assert_eq!(value_after(&args, "--csi-socket"), CSI_SOCKET);
    assert_eq!(value_after(&args, "--csi-pods-dir"), KUBELET_PODS_DIR);
    let help = lanyard_agent::config::RunArgs::augment_args(clap::Command::new("lanyard-agent"))
        .render_long_help()
        .to_string();
    assert!(
        help.contains("[env: LANYARD_NODE_NAME="),
        "the agent's --node-name is not read from LANYARD_NODE_NAME:\n{help}"
    );
    args.extend(["--node-name".to_owned(), "node-1".to_owned()]);
    let agent: lanyard_agent::config::RunArgs = parse_run("lanyard-agent", &args);
    let agent = agent.resolve().expect("the agent accepts its flags");
    assert_eq!(agent.server, "lanyard-server.lanyard.svc:8081");
    assert_eq!(agent.socket, PathBuf::from(DEFAULT_SOCKET));
    assert!(agent.health.is_some());
    assert!(agent.csi.is_some(), "the agent serves no CSI plugin");

    // The injected proxy: its flags and its SPIFFE_ENDPOINT_SOCKET, with /metrics for loopback
    // callers only (the default) and exposed (`lanyard.dev/proxy-metrics: expose`).
    for expose_metrics in [false, true] {
        let container = proxy_container(&InjectOptions::default(), expose_metrics);
        let args: Vec<String> = match container.get("args") {
            Some(Yaml::Seq(items)) => items
                .iter()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect(),
            other => panic!("{other:?}"),
        };
        assert_eq!(args, proxy_args(expose_metrics));
        let endpoint = container
            .get("env")
            .and_then(|e| match e {
                Yaml::Seq(items) => items.iter().find(|i| {
                    i.get("name").and_then(Yaml::as_str) == Some("SPIFFE_ENDPOINT_SOCKET")
                }),
                _ => None,
            })
            .and_then(|e| e.get("value"))
            .and_then(Yaml::as_str)
            .unwrap()
            .to_owned();
        let proxy: lanyard_proxy::config::RunArgs = parse_run("lanyard-proxy", &args);
        let proxy = proxy
            .resolve(Some(endpoint))
            .expect("the proxy accepts its flags");
        assert_eq!(proxy.workload_socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(
            proxy.transparent_inbound.unwrap().port(),
            lanyard_cli::redirect::PROXY_INBOUND_PORT
        );
        assert_eq!(
            proxy.transparent_outbound.unwrap().port(),
            lanyard_cli::redirect::PROXY_OUTBOUND_PORT
        );
        assert!(proxy.admin.ip().is_loopback());
        let expected = if expose_metrics {
            lanyard_proxy::probes::MetricsAccess::Everyone
        } else {
            lanyard_proxy::probes::MetricsAccess::Loopback
        };
        assert_eq!(proxy.metrics_access, expected);
    }

    // The CNI installer (`--cni`): every flag is one `lanyard-cni install --help` lists.
    let cni = cni_args();
    assert_eq!(cni[0], "install");
    let out = std::process::Command::new(binary("lanyard-cni"))
        .args(["install", "--help"])
        .output()
        .expect("running lanyard-cni install --help");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in cni.iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "lanyard-cni install --help has no {flag}:\n{help}"
        );
    }

    // The check can fail: an unknown flag is refused.
    let bad = lanyard_server::config::RunArgs::augment_args(clap::Command::new("s"))
        .try_get_matches_from(["s", "--no-such-flag", "x"]);
    assert!(bad.is_err());
}

fn value_after<'a>(args: &'a [String], flag: &str) -> &'a str {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    &args[i + 1]
}
