//! Every flag `lanyard install` and `lanyard inject` give a binary is a real flag of that
//! binary: the rendered argument lists are parsed and validated by the daemons' own clap
//! definitions (the ones their `--help` is generated from) and resolved into their configs.
//! Here rather than in lanyard-cli's tests so that the CLI depends on no daemon crate.

use std::path::PathBuf;

use clap::{Args, FromArgMatches};
use lanyard_cli::inject::{InjectOptions, proxy_args, proxy_container};
use lanyard_cli::install::InstallOptions;
use lanyard_cli::install::render::{agent_args, server_args};
use lanyard_cli::yaml::Yaml;
use lanyard_client::endpoint::DEFAULT_SOCKET;

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

    let agent: lanyard_agent::config::RunArgs = parse_run("lanyard-agent", &agent_args(&options));
    let agent = agent.resolve().expect("the agent accepts its flags");
    assert_eq!(agent.server, "lanyard-server.lanyard.svc:8081");
    assert_eq!(agent.socket, PathBuf::from(DEFAULT_SOCKET));
    assert!(agent.health.is_some());

    // The injected proxy: its flags and its SPIFFE_ENDPOINT_SOCKET.
    let container = proxy_container(&InjectOptions::default());
    let args: Vec<String> = match container.get("args") {
        Some(Yaml::Seq(items)) => items
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect(),
        other => panic!("{other:?}"),
    };
    assert_eq!(args, proxy_args());
    let endpoint = container
        .get("env")
        .and_then(|e| match e {
            Yaml::Seq(items) => items
                .iter()
                .find(|i| i.get("name").and_then(Yaml::as_str) == Some("SPIFFE_ENDPOINT_SOCKET")),
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

    // The check can fail: an unknown flag is refused.
    let bad = lanyard_server::config::RunArgs::augment_args(clap::Command::new("s"))
        .try_get_matches_from(["s", "--no-such-flag", "x"]);
    assert!(bad.is_err());
}
