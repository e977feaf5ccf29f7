//! `lanyard-agent`: The Lanyard node agent: serves the SPIFFE Workload API on a Unix socket.

use clap::{Parser, Subcommand};

/// The Lanyard node agent: serves the SPIFFE Workload API on a Unix socket.
#[derive(Parser)]
#[command(name = "lanyard-agent", version, about)]
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
        Command::Run => anyhow::bail!("`lanyard-agent run` is not implemented yet"),
    }
}
