//! `lanyard-server`: The Lanyard certificate authority: attests node agents, mints SVIDs.

use clap::{Parser, Subcommand};

/// The Lanyard certificate authority: attests node agents, mints SVIDs.
#[derive(Parser)]
#[command(name = "lanyard-server", version, about)]
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
        Command::Run => anyhow::bail!("`lanyard-server run` is not implemented yet"),
    }
}
