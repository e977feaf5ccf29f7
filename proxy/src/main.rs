//! `lanyard-proxy`: the Lanyard sidecar proxy (per-connection mTLS or plaintext).

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use lanyard_client::tap::TapError;
use lanyard_daemon::address::HostPort;
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
    /// Check that the pod's outbound redirect rules are in place (the injected
    /// `lanyard-validate` init container): exits non-zero, naming the missing direction and
    /// family, when a connection to a documentation address does not arrive at the proxy's
    /// outbound port. Reads PROXY_UID, PROXY_OUTBOUND_PORT and SKIP_OUTBOUND_PORTS as
    /// lanyard-redirect does.
    ValidateRedirect {
        /// How long each address family's probe may take.
        #[arg(long, env = "LANYARD_VALIDATE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "5s")]
        timeout: std::time::Duration,
    },
    /// Print the tap of a running proxy: one line per finished connection.
    Tap {
        /// The proxy's `--admin` address, `HOST:PORT` (e.g. `localhost:4191`).
        #[arg(long, env = "LANYARD_ADMIN", default_value_t = HostPort::from(DEFAULT_ADMIN))]
        admin: HostPort,
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
        Command::ValidateRedirect { timeout } => validate_redirect(timeout).await,
    }
}

async fn validate_redirect(timeout: std::time::Duration) -> anyhow::Result<()> {
    let config = lanyard_redirect::RedirectConfig::from_env()?;
    let report = lanyard_proxy::redirect_check::validate(
        config.outbound_port,
        &config.skip_outbound_ports,
        config.proxy_uid,
        timeout,
    )
    .await;
    for line in &report.lines {
        eprintln!("lanyard-proxy validate-redirect: {line}");
    }
    if report.ok {
        Ok(())
    } else {
        std::process::exit(1)
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

/// Follows the tap at the first of `admin`'s addresses that accepts (`localhost` may resolve
/// to `::1` before the `127.0.0.1` the proxy listens on).
async fn tap(admin: HostPort) -> anyhow::Result<()> {
    let addrs = admin
        .resolve()
        .await
        .map_err(|e| anyhow::anyhow!("resolving --admin {admin}: {e}"))?;
    let mut last = None;
    for addr in addrs {
        match lanyard_client::tap::follow(addr, &mut tokio::io::stdout()).await {
            Err(e @ TapError::Connect { .. }) => last = Some(e),
            other => return Ok(other?),
        }
    }
    Err(last.expect("resolve returns at least one address").into())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Options of every subcommand that take a value, are optional and have no default: each
    /// is either off without it, or required after merging the flags, variables and file.
    const WITHOUT_DEFAULT: &[&str] = &[
        "run --config",
        "run --workload-socket",
        "run --inbound",
        "run --outbound",
        "run --opaque-port",
        "run --transparent-inbound",
        "run --transparent-outbound",
        "run --metrics",
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

    #[test]
    fn tap_takes_a_host_name() {
        use clap::Parser;
        let cli = Cli::try_parse_from(["lanyard-proxy", "tap", "--admin", "localhost:4191"]);
        assert!(cli.is_ok());
        let cli = Cli::try_parse_from(["lanyard-proxy", "tap"]).unwrap();
        let super::Command::Tap { admin } = cli.command else {
            panic!("not tap")
        };
        assert_eq!(admin.to_string(), "127.0.0.1:4191");
    }
}
