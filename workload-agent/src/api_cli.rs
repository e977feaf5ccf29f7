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
//! [`DEFAULT_SOCKET`]; a plain path or a `unix:` URI (`unix:///abs/path`, `unix:/abs/path`).
//! It speaks gRPC over the Unix socket exactly as any SPIFFE client does, header included.
//! Discovery, like the proxy, answers only callers that hold an identity.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use hyper_util::rt::TokioIo;
use lanyard_proto::WORKLOAD_API_HEADER;
use lanyard_proto::discovery::v1 as discovery;
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use lanyard_proto::workload::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, X509BundlesRequest, X509svidRequest,
};
use lanyard_svid::X509Svid;
use lanyard_svid::bundle::certificates_from_der;
use lanyard_svid::pem::encode_certificates;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use zeroize::Zeroizing;

/// The agent's socket when nothing else says where it is.
pub const DEFAULT_SOCKET: &str = "/run/lanyard/sockets/agent.sock";

/// Where the socket is and how long to wait for answers.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The agent's Workload API socket: a path or a `unix:///abs/path` URI.
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
        /// Which of the caller's identities (default: its default one).
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
            let (mut client, timeout) = client(&connection).await?;
            match what {
                FetchCommand::X509 { write } => {
                    fetch_x509(&mut client, timeout, write.as_deref(), out).await
                }
                FetchCommand::Jwt {
                    audience,
                    spiffe_id,
                } => fetch_jwt(&mut client, timeout, audience, spiffe_id, out).await,
                FetchCommand::Bundles { pem } => {
                    fetch_bundles(&mut client, timeout, pem, out).await
                }
            }
        }
        ApiCommand::Validate {
            what: ValidateCommand::Jwt { audience, token },
            connection,
        } => {
            let (mut client, timeout) = client(&connection).await?;
            validate_jwt(&mut client, timeout, audience, token, out).await
        }
        ApiCommand::Resolve {
            destination,
            connection,
        } => resolve(&connection, destination, out).await,
    }
}

/// The socket path from `--socket`/`LANYARD_SOCKET`, else `SPIFFE_ENDPOINT_SOCKET`, else the
/// default.
pub fn socket_path(flag: Option<&str>) -> anyhow::Result<PathBuf> {
    if let Some(value) = flag {
        return parse_socket(value);
    }
    match std::env::var("SPIFFE_ENDPOINT_SOCKET") {
        Ok(value) if !value.is_empty() => parse_socket(&value).context("SPIFFE_ENDPOINT_SOCKET"),
        _ => Ok(PathBuf::from(DEFAULT_SOCKET)),
    }
}

/// A plain path, or a `unix:` URI with an absolute path.
pub fn parse_socket(value: &str) -> anyhow::Result<PathBuf> {
    let path = if let Some(rest) = value.strip_prefix("unix://") {
        if !rest.starts_with('/') {
            bail!("{value:?}: a unix:// URI needs an absolute path (unix:///abs/path)");
        }
        rest
    } else if let Some(rest) = value.strip_prefix("unix:") {
        rest
    } else if value.starts_with("tcp:") {
        bail!("{value:?}: this client speaks to the agent's Unix socket only");
    } else {
        value
    };
    if path.is_empty() {
        bail!("{value:?}: empty socket path");
    }
    Ok(PathBuf::from(path))
}

/// A gRPC channel over the Unix socket at `path` (HTTP/2 without TLS: the kernel tells the
/// agent who we are).
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_owned();
    // The URI is never dialled; the connector below is. "localhost" is a valid :authority.
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
}

/// A Workload API request with the `workload.spiffe.io: true` header.
pub fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        WORKLOAD_API_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    request.set_timeout(timeout);
    request
}

async fn client(
    connection: &Connection,
) -> anyhow::Result<(SpiffeWorkloadApiClient<Channel>, Duration)> {
    let channel = channel(connection).await?;
    Ok((SpiffeWorkloadApiClient::new(channel), connection.timeout))
}

async fn channel(connection: &Connection) -> anyhow::Result<Channel> {
    let path = socket_path(connection.socket.as_deref())?;
    tokio::time::timeout(connection.timeout, connect(&path))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {}: timed out", path.display()))?
        .with_context(|| format!("connecting to {}", path.display()))
}

/// Turns a gRPC error into a readable one.
fn status(context: &str, status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{context}: {:?}: {}", status.code(), status.message())
}

async fn first_message<T>(
    stream: &mut tonic::Streaming<T>,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<T> {
    match tokio::time::timeout(timeout, stream.message()).await {
        Err(_) => bail!("{what}: no answer within {timeout:?}"),
        Ok(Err(e)) => Err(status(what, e)),
        Ok(Ok(None)) => bail!("{what}: the stream ended without a message"),
        Ok(Ok(Some(message))) => Ok(message),
    }
}

async fn fetch_x509(
    client: &mut SpiffeWorkloadApiClient<Channel>,
    timeout: Duration,
    write: Option<&Path>,
    out: &mut (impl std::io::Write + Send),
) -> anyhow::Result<()> {
    let mut stream = client
        .fetch_x509svid(request(X509svidRequest {}, timeout))
        .await
        .map_err(|e| status("FetchX509SVID", e))?
        .into_inner();
    let response = first_message(&mut stream, timeout, "FetchX509SVID").await?;
    if response.svids.is_empty() {
        bail!("FetchX509SVID: the response holds no SVID");
    }
    let now = SystemTime::now();
    let mut default = None;
    for entry in &response.svids {
        let key = Zeroizing::new(entry.x509_svid_key.clone());
        let svid = X509Svid::from_concat_der(&entry.x509_svid, Some(key))
            .map_err(|e| anyhow::anyhow!("SVID {}: {}", entry.spiffe_id, e.message()))?;
        let left = svid.not_after().duration_since(now).unwrap_or_default();
        writeln!(
            out,
            "{} expires {} (in {})",
            svid.spiffe_id(),
            humantime::format_rfc3339_seconds(svid.not_after()),
            humantime::format_duration(Duration::from_secs(left.as_secs()))
        )?;
        if default.is_none() {
            default = Some((svid, entry.bundle.clone()));
        }
    }
    if let (Some(dir), Some((svid, bundle))) = (write, default) {
        write_svid_files(dir, &svid, &bundle)?;
        writeln!(
            out,
            "wrote svid.pem, svid.key and bundle.pem to {}",
            dir.display()
        )?;
    }
    Ok(())
}

/// Writes the default SVID's files; the key is 0600 before a byte of it is written.
fn write_svid_files(dir: &Path, svid: &X509Svid, bundle_der: &[u8]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = svid
        .private_key_pkcs8()
        .context("the SVID has no private key")?;
    let key_pem = lanyard_svid::pem::encode_private_key(key);
    let key_path = dir.join("svid.key");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key_path)
        .with_context(|| format!("opening {}", key_path.display()))?;
    // An existing file keeps its mode on open: make it 0600 before writing the key.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", key_path.display()))?;
    file.write_all(key_pem.as_bytes())
        .with_context(|| format!("writing {}", key_path.display()))?;

    let chain_path = dir.join("svid.pem");
    std::fs::write(&chain_path, encode_certificates(svid.chain()))
        .with_context(|| format!("writing {}", chain_path.display()))?;
    let bundle = certificates_from_der(bundle_der).context("the SVID's bundle")?;
    let bundle_path = dir.join("bundle.pem");
    std::fs::write(&bundle_path, encode_certificates(&bundle))
        .with_context(|| format!("writing {}", bundle_path.display()))?;
    Ok(())
}

async fn fetch_jwt(
    client: &mut SpiffeWorkloadApiClient<Channel>,
    timeout: Duration,
    audience: Vec<String>,
    spiffe_id: Option<String>,
    out: &mut (impl std::io::Write + Send),
) -> anyhow::Result<()> {
    let response = client
        .fetch_jwtsvid(request(
            JwtsvidRequest {
                audience,
                spiffe_id: spiffe_id.unwrap_or_default(),
            },
            timeout,
        ))
        .await
        .map_err(|e| status("FetchJWTSVID", e))?
        .into_inner();
    let svid = response
        .svids
        .first()
        .context("FetchJWTSVID: the response holds no token")?;
    writeln!(out, "{}", svid.svid)?;
    Ok(())
}

async fn fetch_bundles(
    client: &mut SpiffeWorkloadApiClient<Channel>,
    timeout: Duration,
    pem: bool,
    out: &mut (impl std::io::Write + Send),
) -> anyhow::Result<()> {
    let mut x509 = client
        .fetch_x509_bundles(request(X509BundlesRequest {}, timeout))
        .await
        .map_err(|e| status("FetchX509Bundles", e))?
        .into_inner();
    let x509 = first_message(&mut x509, timeout, "FetchX509Bundles").await?;
    let mut jwt = client
        .fetch_jwt_bundles(request(JwtBundlesRequest {}, timeout))
        .await
        .map_err(|e| status("FetchJWTBundles", e))?
        .into_inner();
    let jwt = first_message(&mut jwt, timeout, "FetchJWTBundles").await?;

    let mut domains: Vec<&String> = x509.bundles.keys().chain(jwt.bundles.keys()).collect();
    domains.sort();
    domains.dedup();
    for domain in domains {
        let certs = match x509.bundles.get(domain) {
            Some(der) => {
                certificates_from_der(der).with_context(|| format!("X.509 bundle of {domain}"))?
            }
            None => Vec::new(),
        };
        let jwt_keys = match jwt.bundles.get(domain) {
            Some(document) => serde_json::from_slice::<serde_json::Value>(document)
                .with_context(|| format!("JWT bundle of {domain}"))?
                .get("keys")
                .and_then(|k| k.as_array().map(Vec::len))
                .unwrap_or(0),
            None => 0,
        };
        writeln!(
            out,
            "{domain} x509_authorities={} jwt_authorities={jwt_keys}",
            certs.len()
        )?;
        if pem {
            write!(out, "{}", encode_certificates(&certs))?;
        }
    }
    Ok(())
}

async fn validate_jwt(
    client: &mut SpiffeWorkloadApiClient<Channel>,
    timeout: Duration,
    audience: String,
    token: String,
    out: &mut (impl std::io::Write + Send),
) -> anyhow::Result<()> {
    let response = client
        .validate_jwtsvid(request(
            ValidateJwtsvidRequest {
                audience,
                svid: token,
            },
            timeout,
        ))
        .await
        .map_err(|e| status("ValidateJWTSVID", e))?
        .into_inner();
    writeln!(out, "valid: {}", response.spiffe_id)?;
    if let Some(claims) = &response.claims {
        writeln!(out, "{}", struct_to_json(claims))?;
    }
    Ok(())
}

async fn resolve(
    connection: &Connection,
    destination: SocketAddr,
    out: &mut (impl std::io::Write + Send),
) -> anyhow::Result<()> {
    let mut client = discovery::discovery_client::DiscoveryClient::new(channel(connection).await?);
    let mut request = tonic::Request::new(discovery::ResolveRequest {
        destination: Some(discovery::Destination {
            address: destination.ip().to_string(),
            port: u32::from(destination.port()),
        }),
    });
    request.set_timeout(connection.timeout);
    let response = client
        .resolve(request)
        .await
        .map_err(|e| status("Resolve", e))?
        .into_inner();
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

/// A protobuf `Struct` back to JSON, for printing.
pub fn struct_to_json(s: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => (*b).into(),
        // Whole numbers (times) print as integers.
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => (*n as i64).into(),
        Some(Kind::NumberValue(n)) => (*n).into(),
        Some(Kind::StringValue(s)) => s.clone().into(),
        Some(Kind::ListValue(l)) => l.values.iter().map(value_to_json).collect(),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_forms() {
        assert_eq!(
            parse_socket("/a/b.sock").unwrap(),
            PathBuf::from("/a/b.sock")
        );
        assert_eq!(
            parse_socket("unix:///a/b.sock").unwrap(),
            PathBuf::from("/a/b.sock")
        );
        assert_eq!(
            parse_socket("unix:/a/b.sock").unwrap(),
            PathBuf::from("/a/b.sock")
        );
        assert!(parse_socket("unix://host/a").is_err());
        assert!(parse_socket("tcp://127.0.0.1:1").is_err());
        assert!(parse_socket("unix:").is_err());
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

    #[test]
    fn claims_round_trip_to_json() {
        let claims = serde_json::json!({"sub": "spiffe://a/b", "exp": 1700000000, "aud": ["x"]});
        let s = crate::workload_api::convert::json_object_to_struct(claims.as_object().unwrap());
        assert_eq!(struct_to_json(&s), claims);
    }
}
