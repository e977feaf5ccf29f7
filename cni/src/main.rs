//! `lanyard-cni`: a CNI plugin when the runtime runs it (no arguments, `CNI_COMMAND` in the
//! environment, the configuration on stdin: the result or a CNI error result on stdout, logs
//! on stderr, exit 1 on failure), or the node installer as `lanyard-cni install`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use lanyard_cni::install::{
    self, DEFAULT_NODE_CONF_DIR, DEFAULT_SERVICE_ACCOUNT_DIR, InstallOptions,
};
use lanyard_cni::plugin::{self, Env};
use lanyard_cni::spec::{self, CniError};
use lanyard_redirect::Iptables;

/// Lanyard's CNI plugin. Run with no arguments it is the plugin, as the container runtime runs
/// it (CNI_COMMAND and the other CNI_* variables, the configuration on stdin).
#[derive(Debug, Parser)]
#[command(name = "lanyard-cni", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Place the plugin on this node and keep it in the node's CNI configuration until
    /// SIGTERM, then remove it (the installer DaemonSet's command).
    Install(InstallArgs),
}

#[derive(Debug, Args)]
struct InstallArgs {
    /// The node's CNI bin dir, as mounted here.
    #[arg(long, value_name = "DIR")]
    host_bin_dir: PathBuf,
    /// The node's CNI conf dir, as mounted here.
    #[arg(long, value_name = "DIR")]
    host_conf_dir: PathBuf,
    /// The CNI conf dir as the node sees it: the entry's kubeconfig path is under it.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_NODE_CONF_DIR)]
    node_conf_dir: PathBuf,
    /// This pod's service account (token, ca.crt), for the plugin's kubeconfig.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_SERVICE_ACCOUNT_DIR)]
    service_account_dir: PathBuf,
    /// The API server's address, as Kubernetes sets it in every pod.
    #[arg(long, env = "KUBERNETES_SERVICE_HOST", value_name = "HOST")]
    kubernetes_service_host: String,
    /// The API server's port, as Kubernetes sets it in every pod.
    #[arg(long, env = "KUBERNETES_SERVICE_PORT", value_name = "PORT")]
    kubernetes_service_port: u16,
    /// The plugin's log level (error, warn, info, debug, trace), written into its entry;
    /// also the installer's own.
    #[arg(long, default_value = "info", value_parser = spec::LOG_LEVELS)]
    log_level: String,
    /// How often the files are checked again.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Sub::Install(args)) => match install_main(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lanyard-cni install: {e:#}");
                ExitCode::FAILURE
            }
        },
        None => plugin_main(),
    }
}

fn log_to_stderr(level: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

fn plugin_main() -> ExitCode {
    let env = Env::from_process();
    let config = spec::read_config(std::io::stdin().lock());
    let bytes = config.as_deref().unwrap_or_default();
    // The configuration's level when it parses; errors are logged at info either way.
    let level = spec::parse_config(bytes)
        .map(|c| c.log_level)
        .unwrap_or_else(|_| "info".to_owned());
    log_to_stderr(&format!("lanyard_cni={level},lanyard_redirect={level}"));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = config.as_ref().map_err(Clone::clone).and_then(|bytes| {
        // A panic anywhere must still give the runtime an error result.
        std::panic::catch_unwind(|| plugin::execute(&env, bytes, &Iptables::from_env()))
            .unwrap_or_else(|_| {
                Err(CniError::new(
                    spec::ErrorCode::InvalidConfig,
                    "lanyard-cni failed unexpectedly",
                    "see the plugin's stderr in the runtime's log",
                ))
            })
    });
    let mut stdout = std::io::stdout().lock();
    match result {
        Ok(output) => {
            if let Some(text) = output {
                let _ = writeln!(stdout, "{text}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(code = e.code.code(), error = %e, "failed");
            let _ = writeln!(stdout, "{}", e.to_json(&plugin::answer_version(bytes)));
            ExitCode::FAILURE
        }
    }
}

fn install_main(args: InstallArgs) -> anyhow::Result<()> {
    log_to_stderr(&args.log_level);
    let options = InstallOptions {
        host_bin_dir: args.host_bin_dir,
        host_conf_dir: args.host_conf_dir,
        node_conf_dir: args.node_conf_dir,
        service_account_dir: args.service_account_dir,
        api_host: args.kubernetes_service_host,
        api_port: args.kubernetes_service_port,
        log_level: args.log_level,
        binary: std::env::current_exe().context("finding this binary")?,
        poll_interval: args.poll_interval,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("handling SIGTERM")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        install::run(options, shutdown).await?;
        Ok(())
    })
}
