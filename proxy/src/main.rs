//! `lanyard-proxy`: The Lanyard sidecar proxy: per-connection mTLS or plaintext.

use clap::{Parser, Subcommand};

/// The Lanyard sidecar proxy: per-connection mTLS or plaintext.
#[derive(Parser)]
#[command(name = "lanyard-proxy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (not implemented yet: see the project's open issues).
    Run,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run => anyhow::bail!("`lanyard-proxy run` is not implemented yet"),
    }
}
