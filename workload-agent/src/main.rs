//! `lanyard-agent`: the Lanyard node agent: serves the SPIFFE Workload API on a Unix socket.

#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Parser, Subcommand};
use lanyard_agent::api_cli::{self, ApiCommand};
use lanyard_agent::config::RunArgs;

/// The Lanyard node agent: serves the SPIFFE Workload API on a Unix socket.
#[derive(Parser)]
#[command(name = "lanyard-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: attest to the server, keep SVIDs fresh, serve the Workload API.
    Run(Box<RunArgs>),
    /// A Workload API client, for humans and scripts.
    Api {
        #[command(subcommand)]
        command: ApiCommand,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().command {
        Command::Run(args) => {
            lanyard_telemetry::logging::init();
            if let Some(token) = args.join_token.as_deref() {
                match lanyard_agent::config::scrub_from_cmdline(token) {
                    Ok(0) => {}
                    Ok(_) => tracing::warn!(
                        "the join token was given as a command-line flag: it is now scrubbed, but \
                         other local users could read it in /proc/PID/cmdline until then; use \
                         --join-token-file or LANYARD_JOIN_TOKEN"
                    ),
                    Err(e) => anyhow::bail!(
                        "could not scrub the join token from the command line ({e}); pass it with \
                         --join-token-file or LANYARD_JOIN_TOKEN instead"
                    ),
                }
            }
            let config = args.resolve().context("invalid configuration")?;
            let shutdown = async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler");
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                tracing::info!("shutting down");
            };
            lanyard_agent::run::run(config, lanyard_telemetry::announce_listener, shutdown).await?;
        }
        Command::Api { command } => api_cli::run(command).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Options of every subcommand that take a value, are optional and have no default: each
    /// is either off without it, or required after merging the flags, variables and file.
    const WITHOUT_DEFAULT: &[&str] = &[
        "run --config",
        "run --server",
        "run --trust-bundle",
        "run --join-token",
        "run --join-token-file",
        "run --k8s-token-path",
        "run --data-dir",
        "run --health",
        "run --node-name",
        "run --csi-socket",
        "api fetch x509 --write",
    ];

    /// Every optional option with a value shows its default in `--help`: clap's own, or
    /// `[default: ...]` in the help text where the default is applied after parsing.
    #[test]
    fn help_shows_every_default() {
        let missing = lanyard_daemon::help_defaults::options_missing_default(
            &Cli::command(),
            WITHOUT_DEFAULT,
        );
        assert!(
            missing.is_empty(),
            "no default shown in --help: {missing:?}"
        );
    }
}
