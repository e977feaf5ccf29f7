//! `lanyard-server`: the Lanyard certificate authority.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lanyard_server::admin::{self, AdminRequest, AdminResponse};
use lanyard_server::config::RunArgs;
use lanyard_server::duration::parse_duration;

/// The Lanyard certificate authority: attests node agents and mints SVIDs.
#[derive(Parser)]
#[command(name = "lanyard-server", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Run(Box<RunArgs>),
    /// Join tokens for agents off Kubernetes.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The trust bundle.
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// Node agents.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a single-use join token, bound to one node name.
    Generate {
        /// Data dir of the running server (its admin socket lives there).
        #[arg(long, env = "LANYARD_DATA_DIR")]
        data_dir: PathBuf,
        /// Node name the token is bound to [default: a random name, node-<12 hex digits>]
        #[arg(long, env = "LANYARD_NODE")]
        node: Option<String>,
        /// How long the token stays valid.
        #[arg(long, env = "LANYARD_TTL", default_value = "10m", value_parser = parse_duration)]
        ttl: std::time::Duration,
    },
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Print the trust bundle (root certificates) as PEM.
    Show {
        #[arg(long, env = "LANYARD_DATA_DIR")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Stop a join-token agent's node SVIDs from working; it must attest again with a new token.
    Evict {
        /// The node to evict.
        node: String,
        #[arg(long, env = "LANYARD_DATA_DIR")]
        data_dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    lanyard_telemetry::logging::init();
    match Cli::parse().command {
        Command::Run(args) => {
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
            lanyard_server::run::run(config, None, lanyard_telemetry::announce_listener, shutdown)
                .await?;
        }
        Command::Token {
            command:
                TokenCommand::Generate {
                    data_dir,
                    node,
                    ttl,
                },
        } => {
            let request = AdminRequest::TokenGenerate {
                node,
                ttl_secs: ttl.as_secs(),
            };
            match admin::call(&data_dir, &request).await? {
                AdminResponse::Token { token, .. } => println!("{token}"),
                other => fail(other)?,
            }
        }
        Command::Bundle {
            command: BundleCommand::Show { data_dir },
        } => match admin::call(&data_dir, &AdminRequest::BundleShow).await? {
            AdminResponse::Bundle { pem } => print!("{pem}"),
            other => fail(other)?,
        },
        Command::Agent {
            command: AgentCommand::Evict { node, data_dir },
        } => match admin::call(&data_dir, &AdminRequest::AgentEvict { node }).await? {
            AdminResponse::Evicted { node } => println!("evicted {node}"),
            other => fail(other)?,
        },
    }
    Ok(())
}

fn fail(response: AdminResponse) -> anyhow::Result<()> {
    match response {
        AdminResponse::Error { message } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected answer from the server: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Options of every subcommand that take a value, are optional and have no default: each
    /// is either off without it, or required after merging the flags, variables and file.
    const WITHOUT_DEFAULT: &[&str] = &[
        "run --config",
        "run --trust-domain",
        "run --listen",
        "run --data-dir",
        "run --ca-secret",
        "run --bundle-configmap",
        "run --agent-sa",
        "run --health",
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
