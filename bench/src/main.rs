//! `lanyard-bench`: the helpers `bench/proxy/run.sh` drives to compare a Lanyard proxy pair
//! with stunnel4 and HAProxy pairs (DESIGN.md section 3). A benchmark tool, not a test: CI
//! never runs it.
//!
//! - `free-ports N`: N loopback ports free at the time of asking.
//! - `echo`: plain TCP echo server (target behind the proxies).
//! - `tls-echo`: bare rustls mTLS echo server (the handshake baseline).
//! - `handshakes`: full mTLS handshakes in a loop; handshakes per server CPU-second.
//! - `idle`: memory per established idle connection through a proxy pair.
//! - `rss PID`: VmRSS in KiB.

mod handshakes;
mod idle;
mod procfs;
mod servers;
mod tls;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "lanyard-bench", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Verifier {
    /// rustls's own WebPKI client verifier over the bundle ("rustls alone").
    Webpki,
    /// lanyard-svid's SPIFFE verifier: the proxy's server config without the proxy.
    Lanyard,
}

#[derive(Subcommand)]
enum Command {
    FreePorts {
        count: usize,
    },
    Echo {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
    TlsEcho {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// Directory with svid.pem, svid.key, bundle.pem.
        #[arg(long)]
        svid_dir: PathBuf,
        #[arg(long, value_enum)]
        verifier: Verifier,
    },
    Handshakes {
        #[arg(long)]
        connect: String,
        #[arg(long)]
        svid_dir: PathBuf,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        #[arg(long, default_value_t = 1)]
        warmup_secs: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Process whose CPU time the handshakes are divided by.
        #[arg(long)]
        server_pid: Option<u32>,
    },
    Idle {
        #[arg(long)]
        connect: String,
        #[arg(long, default_value_t = 50)]
        warmup: usize,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Rounds of open, measure, close.
        #[arg(long, default_value_t = 2)]
        cycles: usize,
        /// Processes whose RSS is read (comma separated).
        #[arg(long, value_delimiter = ',')]
        pids: Vec<u32>,
    },
    Rss {
        pid: u32,
    },
}

/// Bounds on what the command line may ask for: every load here stays small.
const MAX_PORTS: usize = 256;
const MAX_CONNECTIONS: usize = 10_000;
const MAX_SECONDS: u64 = 600;
const MAX_CONCURRENCY: usize = 64;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One thread: each helper is pinned to a core by the script, and the handshake figure
    // wants the server on exactly one.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::FreePorts { count } => {
                anyhow::ensure!(count <= MAX_PORTS, "at most {MAX_PORTS} ports");
                // Hold all of them until every one is chosen, so they differ.
                let listeners = (0..count)
                    .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
                    .collect::<Result<Vec<_>, _>>()?;
                for l in &listeners {
                    println!("{}", l.local_addr()?.port());
                }
                Ok(())
            }
            Command::Echo { listen } => servers::plain_echo(&listen).await,
            Command::TlsEcho {
                listen,
                svid_dir,
                verifier,
            } => {
                let m = tls::Material::load(&svid_dir)?;
                let config = match verifier {
                    Verifier::Webpki => tls::webpki_server(&m)?,
                    Verifier::Lanyard => tls::lanyard_server(&m)?,
                };
                servers::tls_echo(&listen, config).await
            }
            Command::Handshakes {
                connect,
                svid_dir,
                concurrency,
                warmup_secs,
                seconds,
                server_pid,
            } => {
                anyhow::ensure!(
                    (1..=MAX_CONCURRENCY).contains(&concurrency),
                    "--concurrency 1 to {MAX_CONCURRENCY}"
                );
                anyhow::ensure!(
                    seconds <= MAX_SECONDS && warmup_secs <= MAX_SECONDS,
                    "at most {MAX_SECONDS} s"
                );
                let m = tls::Material::load(&svid_dir)?;
                handshakes::run(
                    tls::load_client(&m)?,
                    handshakes::Run {
                        connect,
                        concurrency,
                        warmup: Duration::from_secs(warmup_secs),
                        measure: Duration::from_secs(seconds),
                        server_pid,
                    },
                )
                .await
            }
            Command::Idle {
                connect,
                warmup,
                count,
                cycles,
                pids,
            } => {
                anyhow::ensure!(
                    count >= 1 && warmup + count <= MAX_CONNECTIONS,
                    "1 to {MAX_CONNECTIONS} connections"
                );
                anyhow::ensure!((1..=10).contains(&cycles), "--cycles 1 to 10");
                idle::run(&connect, warmup, count, cycles, &pids).await
            }
            Command::Rss { pid } => {
                println!("{}", procfs::rss_kib(pid)?);
                Ok(())
            }
        }
    })
}
