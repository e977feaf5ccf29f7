//! `lanyard-redirect`: installs the pod's redirect rules (see the library's docs) in the
//! current network namespace, IPv4 and IPv6. The entrypoint of the `lanyard-init` container:
//! parameters come from the environment (`PROXY_UID`, `PROXY_INBOUND_PORT`, ...) or the
//! equivalent flags; it prints each rule it installs (and, where the namespace has no IPv6 nat
//! table, that only IPv4 is redirected and why) and exits non-zero with the reason on failure
//! (2: bad parameters, 1: an iptables or ip6tables command failed). `--check` changes nothing:
//! it compares the namespace with the rules and exits 3 when they differ, naming each
//! difference.

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use lanyard_redirect::{
    Coverage, DEFAULT_IP6TABLES, DEFAULT_IPTABLES, ENV_IP6TABLES, ENV_IPTABLES,
    ENV_PROXY_INBOUND_PORT, ENV_PROXY_OUTBOUND_PORT, ENV_PROXY_UID, ENV_SKIP_INBOUND_PORTS,
    ENV_SKIP_OUTBOUND_PORTS, Iptables, RedirectConfig, steps,
};

/// Redirects the pod's TCP traffic through the Lanyard proxy (iptables and ip6tables, nat
/// table; IPv4 only where the namespace has no IPv6 nat table). Running it again replaces the
/// rules. Unset or empty values mean the defaults.
#[derive(Debug, Parser)]
#[command(name = "lanyard-redirect", version)]
struct Args {
    /// The proxy's uid, whose connections are never redirected [default: 2102].
    #[arg(long, env = ENV_PROXY_UID, value_name = "UID")]
    proxy_uid: Option<String>,
    /// The proxy's transparent inbound port [default: 4143].
    #[arg(long, env = ENV_PROXY_INBOUND_PORT, value_name = "PORT")]
    proxy_inbound_port: Option<String>,
    /// The proxy's transparent outbound port, on 127.0.0.1 and ::1 [default: 4140].
    #[arg(long, env = ENV_PROXY_OUTBOUND_PORT, value_name = "PORT")]
    proxy_outbound_port: Option<String>,
    /// Inbound destination ports never redirected (comma-separated).
    #[arg(long, env = ENV_SKIP_INBOUND_PORTS, value_name = "PORTS")]
    skip_inbound_ports: Option<String>,
    /// Outbound destination ports never redirected (comma-separated).
    #[arg(long, env = ENV_SKIP_OUTBOUND_PORTS, value_name = "PORTS")]
    skip_outbound_ports: Option<String>,
    /// The iptables command.
    #[arg(long, env = ENV_IPTABLES, default_value = DEFAULT_IPTABLES, value_name = "COMMAND")]
    iptables: PathBuf,
    /// The ip6tables command.
    #[arg(long, env = ENV_IP6TABLES, default_value = DEFAULT_IP6TABLES, value_name = "COMMAND")]
    ip6tables: PathBuf,
    /// Print the iptables commands instead of running them.
    #[arg(long, conflicts_with = "check")]
    dry_run: bool,
    /// Change nothing: compare the namespace's rules with these and exit 3 when they differ.
    #[arg(long)]
    check: bool,
}

/// `--check` found differences.
const EXIT_DIFFERENT: u8 = 3;

fn main() -> ExitCode {
    let args = Args::parse();
    let config = RedirectConfig::from_lookup(|var| {
        match var {
            ENV_PROXY_UID => args.proxy_uid.as_ref(),
            ENV_PROXY_INBOUND_PORT => args.proxy_inbound_port.as_ref(),
            ENV_PROXY_OUTBOUND_PORT => args.proxy_outbound_port.as_ref(),
            ENV_SKIP_INBOUND_PORTS => args.skip_inbound_ports.as_ref(),
            ENV_SKIP_OUTBOUND_PORTS => args.skip_outbound_ports.as_ref(),
            _ => None,
        }
        .map(OsString::from)
    });
    let steps = match config.and_then(|config| steps(&config)) {
        Ok(steps) => steps,
        Err(e) => {
            eprintln!("lanyard-redirect: {e}");
            return ExitCode::from(2);
        }
    };
    // An empty IPTABLES or IP6TABLES means the default, as for the other variables.
    let or_default = |program: PathBuf, default: &str| {
        if program.as_os_str().is_empty() {
            PathBuf::from(default)
        } else {
            program
        }
    };
    let iptables = Iptables::new(
        or_default(args.iptables, DEFAULT_IPTABLES),
        or_default(args.ip6tables, DEFAULT_IP6TABLES),
    );
    if args.dry_run {
        for step in &steps {
            let note = if step.is_removal() {
                "  # removes an earlier run's rules; may find nothing"
            } else {
                ""
            };
            println!("{}{note}", iptables.command_line(step));
        }
        return ExitCode::SUCCESS;
    }
    if args.check {
        return match iptables.check(&steps) {
            Ok(checked) if checked.differences.is_empty() => {
                println!(
                    "lanyard-redirect: the rules are in place ({})",
                    checked.coverage
                );
                ExitCode::SUCCESS
            }
            Ok(checked) => {
                for difference in &checked.differences {
                    println!("lanyard-redirect: {difference}");
                }
                ExitCode::from(EXIT_DIFFERENT)
            }
            Err(e) => {
                eprintln!("lanyard-redirect: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match iptables.apply(&steps, |step| println!("{step}")) {
        Ok(coverage) => {
            if let Coverage::Ipv4Only { why } = &coverage {
                println!("lanyard-redirect: IPv4 only, IPv6 left alone: {why}");
            }
            println!("lanyard-redirect: done ({coverage})");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lanyard-redirect: {e}");
            ExitCode::FAILURE
        }
    }
}
