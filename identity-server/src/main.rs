//! `lanyard-server`: the Lanyard certificate authority.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lanyard_server::admin::{self, AdminRequest, AdminResponse, EntriesView};
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
    /// Static entries (`[[entries]]` in the --config file).
    Entry {
        #[command(subcommand)]
        command: EntryCommand,
    },
    /// The data dir's CA.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Sign JWT-SVIDs with a new key from now on. The old key stays in the trust bundle (and
    /// the OIDC JWK Set) until every token it signed has expired, also across a restart.
    RotateJwtKey {
        /// Data dir of the running server (its admin socket lives there).
        #[arg(long, env = "LANYARD_DATA_DIR")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum EntryCommand {
    /// Print the static entries in force (ID, selectors, nodes, DNS names, TTLs) and the
    /// outcome of the last reload of the config file.
    Show {
        /// Data dir of the running server (its admin socket lives there).
        #[arg(long, env = "LANYARD_DATA_DIR")]
        data_dir: PathBuf,
        /// Only the entries this node's agent may serve.
        #[arg(long, env = "LANYARD_NODE")]
        node: Option<String>,
        /// `text` for people, `json` (the admin socket's answer) for scripts.
        #[arg(long, env = "LANYARD_OUTPUT", value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// How `entry show` prints.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Text,
    Json,
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
        Command::Entry {
            command:
                EntryCommand::Show {
                    data_dir,
                    node,
                    output,
                },
        } => match admin::call(&data_dir, &AdminRequest::EntryShow { node }).await? {
            AdminResponse::Entries(view) => {
                let text = match output {
                    Output::Json => serde_json::to_string_pretty(&view)? + "\n",
                    Output::Text => entries_text(&view, std::time::SystemTime::now()),
                };
                // A failed write (a closed pipe, a full disk) fails the command.
                use std::io::Write;
                let mut stdout = std::io::stdout().lock();
                stdout
                    .write_all(text.as_bytes())
                    .and_then(|()| stdout.flush())
                    .context("writing to stdout")?;
            }
            other => fail(other)?,
        },
        Command::Ca {
            command: CaCommand::RotateJwtKey { data_dir },
        } => match admin::call(&data_dir, &AdminRequest::CaRotateJwtKey).await? {
            AdminResponse::JwtKeyRotated {
                kid,
                previous_kid,
                previous_published_until_unix_secs,
            } => {
                let until = std::time::UNIX_EPOCH
                    + std::time::Duration::from_secs(previous_published_until_unix_secs);
                println!(
                    "JWT-SVIDs are signed with key {kid} now; the previous key {previous_kid} stays published until {}",
                    humantime::format_rfc3339_seconds(until)
                );
            }
            other => fail(other)?,
        },
    }
    Ok(())
}

/// `entry show`'s text: a block per entry, then the count and the last reload.
fn entries_text(view: &EntriesView, now: std::time::SystemTime) -> String {
    use std::fmt::Write;
    let ttl = |own: Option<u64>, default: u64| match own {
        Some(secs) => humantime::format_duration(std::time::Duration::from_secs(secs)).to_string(),
        None => format!(
            "{} (server default)",
            humantime::format_duration(std::time::Duration::from_secs(default))
        ),
    };
    let list = |items: &[String]| {
        if items.is_empty() {
            "-".to_owned()
        } else {
            items.join(", ")
        }
    };
    let mut out = String::new();
    for e in &view.entries {
        let nodes = if e.nodes == ["*"] {
            "* (every node)".to_owned()
        } else {
            list(&e.nodes)
        };
        let _ = writeln!(out, "{}", e.spiffe_id);
        let _ = writeln!(out, "  selectors: {}", list(&e.selectors));
        let _ = writeln!(out, "  nodes:     {nodes}");
        let _ = writeln!(out, "  dns names: {}", list(&e.dns_names));
        if !e.federates_with.is_empty() {
            let _ = writeln!(out, "  federates: {}", list(&e.federates_with));
        }
        let _ = writeln!(
            out,
            "  x509 ttl:  {}",
            ttl(e.x509_ttl_secs, view.default_x509_ttl_secs)
        );
        let _ = writeln!(
            out,
            "  jwt ttl:   {}",
            ttl(e.jwt_ttl_secs, view.default_jwt_ttl_secs)
        );
        out.push('\n');
    }
    let _ = match &view.node {
        Some(node) => writeln!(
            out,
            "{} of {} entries may be served on node {node}",
            view.entries.len(),
            view.total
        ),
        None => writeln!(out, "{} entries", view.total),
    };
    match &view.last_reload {
        None => out.push_str("last reload: none since the server started\n"),
        Some(r) => {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(r.at_unix_secs);
            let ago = now.duration_since(at).map_or(0, |d| d.as_secs());
            let what = match (&r.entries, &r.refusal) {
                (_, Some(why)) => format!(
                    "refused ({}): {why}; the entries above stay in force",
                    r.refusal_kind.as_deref().unwrap_or("?")
                ),
                (Some(n), None) => format!("reloaded, {n} entries"),
                (None, None) => r.result.clone(),
            };
            let _ = writeln!(
                out,
                "last reload: {} ({ago}s ago, on {}): {what}",
                humantime::format_rfc3339_seconds(at),
                r.trigger
            );
        }
    }
    out
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

    use super::{Cli, entries_text};
    use lanyard_server::admin::{EntriesView, EntryView, ReloadView};

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
        "run --bundle-endpoint",
        "run --bundle-endpoint-cert",
        "run --bundle-endpoint-key",
        "run --jwt-issuer",
        "run --oidc-listen",
        "run --oidc-cert",
        "run --oidc-key",
        "entry show --node",
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
    fn entries_text_shows_what_and_to_whom_and_the_refusal() {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let view = EntriesView {
            node: Some("node-1".into()),
            total: 2,
            entries: vec![EntryView {
                spiffe_id: "spiffe://example.org/web".into(),
                selectors: vec!["unix:uid:1001".into(), "unix:gid:10".into()],
                nodes: vec!["*".into()],
                dns_names: vec!["web.example.org".into()],
                federates_with: vec!["a.example".into(), "partner.example".into()],
                x509_ttl_secs: Some(600),
                jwt_ttl_secs: None,
            }],
            default_x509_ttl_secs: 3600,
            default_jwt_ttl_secs: 300,
            last_reload: Some(ReloadView {
                at_unix_secs: 1_700_000_000,
                trigger: "sighup".into(),
                result: "refused".into(),
                entries: None,
                refusal_kind: Some("invalid".into()),
                refusal: Some("static entry 1 (spiffe://example.org/db): nodes is required".into()),
            }),
        };
        let text = entries_text(&view, at + std::time::Duration::from_secs(7));
        assert_eq!(
            text,
            "spiffe://example.org/web
  selectors: unix:uid:1001, unix:gid:10
  nodes:     * (every node)
  dns names: web.example.org
  federates: a.example, partner.example
  x509 ttl:  10m
  jwt ttl:   5m (server default)

1 of 2 entries may be served on node node-1
last reload: 2023-11-14T22:13:20Z (7s ago, on sighup): refused (invalid): static entry 1 (spiffe://example.org/db): nodes is required; the entries above stay in force
"
        );
    }
}
