//! `lanyard-proxy`: the Lanyard sidecar proxy (per-connection mTLS or plaintext).

#![forbid(unsafe_code)]

use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use lanyard_proxy::config::{DEFAULT_ADMIN, RunArgs, SPIFFE_ENDPOINT_SOCKET};

/// The Lanyard sidecar proxy: per-connection mTLS or plaintext.
#[derive(Parser)]
#[command(name = "lanyard-proxy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run(Box<RunArgs>),
    /// Print the tap of a running proxy: one line per finished connection.
    Tap {
        /// The proxy's `--admin` address.
        #[arg(long, env = "LANYARD_ADMIN", default_value_t = DEFAULT_ADMIN)]
        admin: SocketAddr,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // One crypto provider in the process, installed before anything builds a TLS config.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(*args).await,
        Command::Tap { admin } => tap(admin).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    lanyard_telemetry::logging::init();
    let config = args.resolve(std::env::var(SPIFFE_ENDPOINT_SOCKET).ok())?;
    let proxy = lanyard_proxy::start(&config).await?;
    for (role, addr) in &proxy.listeners {
        lanyard_telemetry::announce_listener(role, *addr);
    }
    tracing::info!(
        workload_socket = %config.workload_socket.display(),
        strict = config.strict,
        allow = %config.allow,
        "lanyard-proxy running"
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = proxy.wait() => anyhow::bail!("a serving task ended unexpectedly"),
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = terminate.recv() => Ok(()),
    }
}

async fn tap(admin: SocketAddr) -> anyhow::Result<()> {
    lanyard_client::tap::follow(admin, &mut tokio::io::stdout()).await?;
    Ok(())
}
