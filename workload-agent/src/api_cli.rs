//! `lanyard-agent api ...`: a Workload API client for humans and scripts.
//!
//! - `api fetch x509 [--write DIR]`: the caller's X.509-SVIDs (ID and expiry); with
//!   `--write`, the default SVID as `svid.pem` (chain, leaf first), `svid.key` (PKCS#8 PEM,
//!   0600) and `bundle.pem` (its trust domain's CA certificates).
//! - `api fetch jwt --audience A [--spiffe-id ID]`: prints the default (or chosen) JWT-SVID.
//! - `api fetch bundles [--pem]`: each trust domain with its X.509 and JWT authority counts.
//! - `api validate jwt --audience A TOKEN`: prints the subject and the claims (JSON).
//! - `api resolve IP:PORT`: what discovery (`lanyard.discovery.v1.Discovery/Resolve`, on the
//!   same socket) says is behind a destination, as the caller's proxy would see it: one line
//!   starting `meshed_pod`, `unmeshed_pod`, `unknown` or `service`, then for a Service one
//!   `endpoint IP:PORT meshed ID` or `endpoint IP:PORT not_meshed` line per ready endpoint.
//!
//! The socket: `--socket`, else `LANYARD_SOCKET`, else `SPIFFE_ENDPOINT_SOCKET`, else
//! [`lanyard_client::endpoint::DEFAULT_SOCKET`]; an absolute path or a `unix:` URI
//! (`unix:///abs/path`, `unix:/abs/path`), by [`lanyard_client::endpoint`]'s rules. This
//! module is the command line and its printing; the calls, the socket channel and the file
//! writing are [`lanyard_client`]'s. Discovery, like the proxy, answers only callers that
//! hold an identity.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use lanyard_client::discovery::Discovery;
use lanyard_client::endpoint::socket_path;
use lanyard_client::fetch::WorkloadClient;
use lanyard_client::files::write_svid_files;
use lanyard_proto::discovery::v1 as discovery;
use lanyard_svid::pem::encode_certificates;

/// Where the socket is and how long to wait for answers.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The agent's Workload API socket: a path or a `unix:///abs/path` URI [default:
    /// SPIFFE_ENDPOINT_SOCKET, else /run/lanyard/sockets/agent.sock]
    #[arg(long, env = "LANYARD_SOCKET", global = true)]
    pub socket: Option<String>,
    /// How long to wait for the agent's answer.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub timeout: Duration,
}

/// `lanyard-agent api ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ApiCommand {
    /// Fetch SVIDs or bundles from the Workload API.
    Fetch {
        #[command(subcommand)]
        what: FetchCommand,
        #[command(flatten)]
        connection: Connection,
    },
    /// Validate a token through the Workload API.
    Validate {
        #[command(subcommand)]
        what: ValidateCommand,
        #[command(flatten)]
        connection: Connection,
    },
    /// Ask discovery what is behind a destination (a pod IP or a Service's ClusterIP).
    Resolve {
        /// The destination as a connection sees it, e.g. 10.96.0.10:80.
        #[arg(value_parser = parse_destination)]
        destination: SocketAddr,
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum FetchCommand {
    /// The caller's X.509-SVIDs.
    X509 {
        /// Write the default SVID as svid.pem, svid.key (0600) and bundle.pem into DIR.
        #[arg(long, value_name = "DIR")]
        write: Option<PathBuf>,
    },
    /// A JWT-SVID for an audience.
    Jwt {
        /// The audience (repeatable).
        #[arg(long, required = true)]
        audience: Vec<String>,
        /// Which of the caller's identities [default: the caller's default SVID's ID]
        #[arg(long)]
        spiffe_id: Option<String>,
    },
    /// The trust bundles.
    Bundles {
        /// Print each trust domain's CA certificates as PEM.
        #[arg(long)]
        pem: bool,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ValidateCommand {
    /// Validate a JWT-SVID for an audience.
    Jwt {
        #[arg(long)]
        audience: String,
        token: String,
    },
}

/// A destination is an address, not a name: discovery knows pods and Services by IP.
fn parse_destination(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!(
            "{text:?}: give the destination's IP address and port, e.g. 10.96.0.10:80 or \
             [fd00::a]:80 (discovery knows pods and Services by address, not by name)"
        )
    })
}

/// Runs one `api` command, printing to stdout.
pub async fn run(cmd: ApiCommand) -> anyhow::Result<()> {
    let mut out = Vec::new();
    let result = run_to(cmd, &mut out).await;
    // Whatever was produced is printed, also before an error.
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&out)?;
    stdout.flush()?;
    result
}

/// Runs one `api` command, writing its output to `out`.
pub async fn run_to(cmd: ApiCommand, out: &mut (impl std::io::Write + Send)) -> anyhow::Result<()> {
    let out = &mut *out;
    match cmd {
        ApiCommand::Fetch { what, connection } => {
            let mut client = client(&connection).await?;
            match what {
                FetchCommand::X509 { write } => {
                    fetch_x509(&mut client, write.as_deref(), out).await
                }
                FetchCommand::Jwt {
                    audience,
                    spiffe_id,
                } => {
                    let token = client.jwt_svid(audience, spiffe_id).await?;
                    writeln!(out, "{token}")?;
                    Ok(())
                }
                FetchCommand::Bundles { pem } => fetch_bundles(&mut client, pem, out).await,
            }
        }
        ApiCommand::Validate {
            what: ValidateCommand::Jwt { audience, token },
            connection,
        } => {
            let validated = client(&connection)
                .await?
                .validate_jwt(audience, token)
                .await?;
            writeln!(out, "valid: {}", validated.spiffe_id)?;
            if let Some(claims) = &validated.claims {
                writeln!(out, "{claims}")?;
            }
            Ok(())
        }
        ApiCommand::Resolve {
            destination,
            connection,
        } => resolve(&connection, destination, out).await,
    }
}

async fn client(connection: &Connection) -> anyhow::Result<WorkloadClient> {
    let path = socket_path(connection.socket.as_deref())?;
    Ok(WorkloadClient::connect(&path, connection.timeout).await?)
}

async fn fetch_x509(
    client: &mut WorkloadClient,
    write: Option<&Path>,
    out: &mut (impl std::io::Write + Send),
) -> anyhow::Result<()> {
    let svids = client.x509_svids().await?;
    let now = SystemTime::now();
    for fetched in &svids {
        let svid = &fetched.svid;
        let left = svid.not_after().duration_since(now).unwrap_or_default();
        writeln!(
            out,
            "{} expires {} (in {})",
            svid.spiffe_id(),
            humantime::format_rfc3339_seconds(svid.not_after()),
            humantime::format_duration(Duration::from_secs(left.as_secs()))
        )?;
    }
    if let (Some(dir), Some(default)) = (write, svids.first()) {
        write_svid_files(dir, &default.svid, &default.bundle_der)?;
        writeln!(
            out,
            "wrote svid.pem, svid.key and bundle.pem to {}",
            dir.display()
        )?;
    }
    Ok(())
}

async fn fetch_bundles(
    client: &mut WorkloadClient,
    pem: bool,
    out: &mut (impl std::io::Write + Send),
) -> anyhow::Result<()> {
    for (domain, bundles) in client.bundles().await? {
        writeln!(
            out,
            "{domain} x509_authorities={} jwt_authorities={}",
            bundles.x509_authorities.len(),
            bundles.jwt_authorities
        )?;
        if pem {
            write!(out, "{}", encode_certificates(&bundles.x509_authorities))?;
        }
    }
    Ok(())
}

async fn resolve(
    connection: &Connection,
    destination: SocketAddr,
    out: &mut (impl std::io::Write + Send),
) -> anyhow::Result<()> {
    let path = socket_path(connection.socket.as_deref())?;
    let channel = lanyard_client::channel::connect_within(&path, connection.timeout).await?;
    let response = Discovery::from_channel(channel)
        .resolve_wire(destination, connection.timeout)
        .await?;
    let resolution = response
        .resolution
        .context("Resolve: the answer holds no resolution")?;
    write_resolution(&resolution, out)
}

/// One line per fact, each starting with a keyword a script can match on.
fn write_resolution(
    resolution: &discovery::Resolution,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    use discovery::resolution::Kind;
    match &resolution.kind {
        None => bail!("Resolve: the answer says nothing about the destination"),
        Some(Kind::MeshedPod(pod)) => writeln!(
            out,
            "meshed_pod {}/{} {}",
            pod.namespace, pod.name, pod.spiffe_id
        )?,
        Some(Kind::UnmeshedPod(pod)) => {
            writeln!(out, "unmeshed_pod {}/{}", pod.namespace, pod.name)?
        }
        Some(Kind::Unknown(_)) => writeln!(out, "unknown")?,
        Some(Kind::Service(service)) => {
            let truncated = if service.truncated { " truncated" } else { "" };
            writeln!(
                out,
                "service {}/{} ready_endpoints={}{truncated}",
                service.namespace,
                service.name,
                service.endpoints.len()
            )?;
            for e in &service.endpoints {
                let addr = match e.address.parse::<std::net::IpAddr>() {
                    Ok(ip) => SocketAddr::new(ip, u16::try_from(e.port).unwrap_or(0)).to_string(),
                    Err(_) => format!("{}:{}", e.address, e.port),
                };
                if e.meshed {
                    writeln!(out, "endpoint {addr} meshed {}", e.spiffe_id)?;
                } else {
                    writeln!(out, "endpoint {addr} not_meshed")?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_is_an_ip_address_and_port() {
        assert_eq!(
            parse_destination("[fd00::a]:80").unwrap(),
            "[fd00::a]:80".parse::<SocketAddr>().unwrap()
        );
        let err = parse_destination("web.shop.svc:80").unwrap_err();
        assert!(
            err.starts_with("\"web.shop.svc:80\": give the destination's IP address and port"),
            "{err}"
        );
    }

    #[test]
    fn resolutions_print_one_keyword_line_per_fact() {
        use discovery::resolution::Kind;
        let print = |kind: Option<Kind>| {
            let mut out = Vec::new();
            write_resolution(&discovery::Resolution { kind }, &mut out)
                .map(|()| String::from_utf8(out).unwrap())
        };
        let meshed = Kind::MeshedPod(discovery::MeshedPod {
            spiffe_id: "spiffe://td/ns/default/sa/web".into(),
            namespace: "default".into(),
            name: "web-1".into(),
        });
        assert_eq!(
            print(Some(meshed)).unwrap(),
            "meshed_pod default/web-1 spiffe://td/ns/default/sa/web\n"
        );
        let service = Kind::Service(discovery::Service {
            namespace: "default".into(),
            name: "web".into(),
            endpoints: vec![
                discovery::Endpoint {
                    address: "10.0.0.1".into(),
                    port: 8080,
                    meshed: true,
                    spiffe_id: "spiffe://td/web".into(),
                },
                discovery::Endpoint {
                    address: "fd00::2".into(),
                    port: 8080,
                    meshed: false,
                    spiffe_id: String::new(),
                },
            ],
            truncated: true,
        });
        assert_eq!(
            print(Some(service)).unwrap(),
            "service default/web ready_endpoints=2 truncated\n\
             endpoint 10.0.0.1:8080 meshed spiffe://td/web\n\
             endpoint [fd00::2]:8080 not_meshed\n"
        );
        assert_eq!(
            print(Some(Kind::Unknown(discovery::Unknown {}))).unwrap(),
            "unknown\n"
        );
        assert!(print(None).is_err());
    }
}
