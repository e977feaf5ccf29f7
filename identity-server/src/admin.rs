//! The admin socket: how `lanyard-server token generate`, `agent evict`, `bundle show`,
//! `entry show` and `ca rotate-jwt-key` reach the running server, rather than touching files the server is also
//! writing.
//!
//! A Unix socket at `<data-dir>/admin/admin.sock`, in a 0700 directory, speaking one JSON
//! request line and one JSON response line per connection. The caller's uid (from the
//! kernel) must be the server's own uid or root; anyone else is refused before a byte is read.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use lanyard_daemon::private_file::ensure_dir;

use crate::entries::{NodeSet, StaticEntry};
use crate::entry_reload::{ReloadOutcome, ReloadStatus};
use crate::entry_store::EntryStore;

/// Longest request line (read by the server, from any local process of its uid).
const MAX_LINE: usize = 64 * 1024;
/// Longest response line (read by the CLI): the entries of a config file of up to 1 MiB.
const MAX_RESPONSE_LINE: usize = 16 * 1024 * 1024;
/// A client that does not finish its request in this time is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminRequest {
    TokenGenerate {
        node: Option<String>,
        ttl_secs: u64,
    },
    AgentEvict {
        node: String,
    },
    BundleShow,
    /// The static entries in force (those `node` may serve, when given) and the last reload.
    EntryShow {
        node: Option<String>,
    },
    /// Data-dir mode: sign JWT-SVIDs with a new key; the old one stays published for the
    /// retired-key grace.
    CaRotateJwtKey,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AdminResponse {
    Token {
        token: String,
        node: String,
    },
    Evicted {
        node: String,
    },
    Bundle {
        pem: String,
    },
    Entries(EntriesView),
    JwtKeyRotated {
        kid: String,
        previous_kid: String,
        /// Until when the previous key stays published (Unix seconds).
        previous_published_until_unix_secs: u64,
    },
    Error {
        message: String,
    },
}

/// Answers [`AdminRequest::CaRotateJwtKey`] for the CA in `data_dir`.
pub fn rotate_jwt_key(data_dir: &Path, authority: &crate::authority::Authority) -> AdminResponse {
    match crate::ca_rotation::rotate_jwt_key(data_dir, authority, std::time::SystemTime::now()) {
        Ok(rotated) => AdminResponse::JwtKeyRotated {
            kid: rotated.kid,
            previous_kid: rotated.previous_kid,
            previous_published_until_unix_secs: rotated
                .previous_until
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        },
        Err(e) => AdminResponse::Error {
            message: e.to_string(),
        },
    }
}

/// What `entry show` prints: the static entries in force and the last reading of the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntriesView {
    /// The `--node` filter, if any.
    pub node: Option<String>,
    /// Entries in force, of which `entries` are those shown.
    pub total: usize,
    pub entries: Vec<EntryView>,
    /// The server's TTLs for entries that set none.
    pub default_x509_ttl_secs: u64,
    pub default_jwt_ttl_secs: u64,
    /// The last reading of the config file since start; none if it was never read again.
    pub last_reload: Option<ReloadView>,
}

/// One static entry: what it issues (ID, DNS names, TTLs) and to whom (selectors, nodes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryView {
    pub spiffe_id: String,
    pub selectors: Vec<String>,
    /// Node names, or `["*"]` for every node.
    pub nodes: Vec<String>,
    pub dns_names: Vec<String>,
    /// Federated trust domains whose bundles the workload receives.
    #[serde(default)]
    pub federates_with: Vec<String>,
    /// The entry's own TTLs; `None`: the server's default.
    pub x509_ttl_secs: Option<u64>,
    pub jwt_ttl_secs: Option<u64>,
}

/// The last reload: when, why, and what it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadView {
    pub at_unix_secs: u64,
    /// `file_change` or `sighup`.
    pub trigger: String,
    /// `reloaded`, `unchanged` or `refused`.
    pub result: String,
    /// Entries put in force, when reloaded.
    pub entries: Option<usize>,
    /// The kind of refusal (`unreadable`, `parse`, `invalid`) and why.
    pub refusal_kind: Option<String>,
    pub refusal: Option<String>,
}

/// Answers [`AdminRequest::EntryShow`] from the running server's entries.
#[derive(Clone)]
pub struct EntryShow {
    pub entries: EntryStore,
    pub reload: ReloadStatus,
    pub default_x509_ttl: Duration,
    pub default_jwt_ttl: Duration,
    /// Cluster mode: nodes attest by `k8s_psat`, so a node serves only entries with a `k8s:`
    /// selector.
    pub k8s_nodes: bool,
}

impl EntryShow {
    pub fn answer(&self, node: Option<String>) -> AdminResponse {
        let all = self.entries.current();
        let servable = |e: &&StaticEntry| match &node {
            None => true,
            Some(node) => e.assigned_to(node) && (!self.k8s_nodes || e.has_k8s_selector()),
        };
        let entries = all.iter().filter(servable).map(entry_view).collect();
        let last_reload = self.reload.last().map(|r| {
            let (entries, refusal_kind, refusal) = match &r.outcome {
                ReloadOutcome::Reloaded { entries } => (Some(*entries), None, None),
                ReloadOutcome::Unchanged => (None, None, None),
                ReloadOutcome::Refused(why) => {
                    (None, Some(why.label().to_owned()), Some(why.to_string()))
                }
            };
            ReloadView {
                at_unix_secs: r
                    .at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                trigger: r.trigger.to_string(),
                result: r.outcome.to_string(),
                entries,
                refusal_kind,
                refusal,
            }
        });
        AdminResponse::Entries(EntriesView {
            node,
            total: all.len(),
            entries,
            default_x509_ttl_secs: self.default_x509_ttl.as_secs(),
            default_jwt_ttl_secs: self.default_jwt_ttl.as_secs(),
            last_reload,
        })
    }
}

fn entry_view(entry: &StaticEntry) -> EntryView {
    EntryView {
        spiffe_id: entry.spiffe_id.to_string(),
        selectors: entry.selectors.iter().map(ToString::to_string).collect(),
        nodes: match &entry.nodes {
            NodeSet::All => vec![crate::entries::ALL_NODES.to_owned()],
            NodeSet::Named(names) => names.iter().cloned().collect(),
        },
        dns_names: entry.dns_names.clone(),
        federates_with: entry
            .federates_with
            .iter()
            .map(ToString::to_string)
            .collect(),
        x509_ttl_secs: entry.x509_ttl.map(|t| t.as_secs()),
        jwt_ttl_secs: entry.jwt_ttl.map(|t| t.as_secs()),
    }
}

/// What the server does for each admin request.
pub trait AdminHandler: Send + Sync + 'static {
    fn handle(&self, request: AdminRequest) -> AdminResponse;
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot reach the server's admin socket at {path}: {source} (is `lanyard-server run` running with this --data-dir?)"
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin socket protocol error: {0}")]
    Protocol(String),
    #[error("timed out talking to the admin socket")]
    Timeout,
}

/// Where the admin socket of a data dir lives.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin").join("admin.sock")
}

/// Binds the admin socket (replacing a stale one) and serves it until the task is dropped.
pub fn serve(
    data_dir: &Path,
    handler: Arc<dyn AdminHandler>,
) -> Result<tokio::task::JoinHandle<()>, AdminError> {
    let path = socket_path(data_dir);
    let io = |source| AdminError::Io {
        path: path.clone(),
        source,
    };
    ensure_dir(path.parent().expect("has parent"), 0o700).map_err(io)?;
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(&path).map_err(io)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let own_uid = unsafe { libc::geteuid() };
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_one(stream, own_uid, handler).await {
                    tracing::warn!(error = %e, "admin request failed");
                }
            });
        }
    }))
}

async fn serve_one(
    mut stream: UnixStream,
    own_uid: u32,
    handler: Arc<dyn AdminHandler>,
) -> Result<(), AdminError> {
    let peer_uid = stream
        .peer_cred()
        .map_err(|e| AdminError::Protocol(e.to_string()))?
        .uid();
    if peer_uid != own_uid && peer_uid != 0 {
        tracing::warn!(
            peer_uid,
            "admin socket: refused a caller that is neither root nor the server's user"
        );
        let refusal = AdminResponse::Error {
            message: format!("uid {peer_uid} may not administer this server"),
        };
        return write_line(&mut stream, &refusal).await;
    }
    let response = match read_line::<AdminRequest>(&mut stream, MAX_LINE).await {
        Ok(request) => handler.handle(request),
        Err(e) => AdminResponse::Error {
            message: format!("bad request: {e}"),
        },
    };
    write_line(&mut stream, &response).await
}

async fn read_line<T: for<'de> Deserialize<'de>>(
    stream: &mut UnixStream,
    max: usize,
) -> Result<T, AdminError> {
    let mut reader = BufReader::new(stream).take(max as u64 + 1);
    let mut line = String::new();
    tokio::time::timeout(IO_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| AdminError::Timeout)?
        .map_err(|e| AdminError::Protocol(e.to_string()))?;
    if line.len() > max {
        return Err(AdminError::Protocol("line too long".into()));
    }
    serde_json::from_str(line.trim_end()).map_err(|e| AdminError::Protocol(e.to_string()))
}

async fn write_line<T: Serialize>(stream: &mut UnixStream, value: &T) -> Result<(), AdminError> {
    let mut line = serde_json::to_vec(value).expect("admin messages serialise");
    line.push(b'\n');
    tokio::time::timeout(IO_TIMEOUT, stream.write_all(&line))
        .await
        .map_err(|_| AdminError::Timeout)?
        .map_err(|e| AdminError::Protocol(e.to_string()))
}

/// Sends one request to the server running on `data_dir` and returns its response.
pub async fn call(data_dir: &Path, request: &AdminRequest) -> Result<AdminResponse, AdminError> {
    let path = socket_path(data_dir);
    let mut stream = UnixStream::connect(&path)
        .await
        .map_err(|source| AdminError::Connect { path, source })?;
    write_line(&mut stream, request).await?;
    read_line(&mut stream, MAX_RESPONSE_LINE).await
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl AdminHandler for Echo {
        fn handle(&self, request: AdminRequest) -> AdminResponse {
            match request {
                AdminRequest::AgentEvict { node } => AdminResponse::Evicted { node },
                other => AdminResponse::Error {
                    message: format!("{other:?}"),
                },
            }
        }
    }

    #[tokio::test]
    async fn round_trip_and_private_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _server = serve(dir.path(), Arc::new(Echo)).unwrap();
        let response = call(dir.path(), &AdminRequest::AgentEvict { node: "n1".into() })
            .await
            .unwrap();
        assert_eq!(response, AdminResponse::Evicted { node: "n1".into() });
        let mode = lanyard_daemon::private_file::mode_of(&dir.path().join("admin")).unwrap();
        assert_eq!(mode, 0o700);
    }

    #[tokio::test]
    async fn garbage_gets_an_error_and_the_server_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let _server = serve(dir.path(), Arc::new(Echo)).unwrap();
        let mut raw = UnixStream::connect(socket_path(dir.path())).await.unwrap();
        raw.write_all(b"{\"op\":\"format_disk\"}\n").await.unwrap();
        let mut reply = String::new();
        raw.read_to_string(&mut reply).await.unwrap();
        assert!(
            reply.contains("bad request") && reply.contains("format_disk"),
            "{reply}"
        );
        let response = call(dir.path(), &AdminRequest::AgentEvict { node: "n2".into() })
            .await
            .unwrap();
        assert_eq!(response, AdminResponse::Evicted { node: "n2".into() });
    }

    #[tokio::test]
    async fn a_request_over_the_bound_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _server = serve(dir.path(), Arc::new(Echo)).unwrap();
        let long = AdminRequest::AgentEvict {
            node: "n".repeat(MAX_LINE),
        };
        let response = call(dir.path(), &long).await;
        assert!(
            matches!(&response, Ok(AdminResponse::Error { message }) if message.contains("too long")),
            "{response:?}"
        );
    }

    fn show(entries: &[(&str, &[&str], &[&str])], k8s_nodes: bool) -> EntryShow {
        let td = lanyard_svid::TrustDomain::new("example.org").unwrap();
        let configs = entries
            .iter()
            .map(|(id, selectors, nodes)| crate::entries::EntryConfig {
                spiffe_id: format!("spiffe://example.org{id}"),
                selectors: selectors.iter().map(|s| s.to_string()).collect(),
                nodes: Some(nodes.iter().map(|s| s.to_string()).collect()),
                x509_ttl: Some("10m".into()),
                jwt_ttl: None,
                dns_names: Some(vec!["web.example.org".into()]),
                federates_with: Some(vec!["partner.example".into()]),
            })
            .collect();
        EntryShow {
            entries: EntryStore::new(crate::entries::validate_entries(configs, &td).unwrap()),
            reload: ReloadStatus::default(),
            default_x509_ttl: Duration::from_secs(3600),
            default_jwt_ttl: Duration::from_secs(300),
            k8s_nodes,
        }
    }

    fn shown(response: AdminResponse) -> Vec<String> {
        let AdminResponse::Entries(view) = response else {
            panic!("not entries: {response:?}")
        };
        view.entries.into_iter().map(|e| e.spiffe_id).collect()
    }

    #[test]
    fn entry_show_filters_by_node_and_survives_json() {
        let entries: &[(&str, &[&str], &[&str])] = &[
            ("/web", &["unix:uid:1"], &["node-1", "node-2"]),
            ("/all", &["k8s:ns:default"], &["*"]),
            ("/db", &["unix:uid:2"], &["node-3"]),
        ];
        let data_dir_mode = show(entries, false);
        let all = data_dir_mode.answer(None);
        let AdminResponse::Entries(view) = &all else {
            panic!()
        };
        assert_eq!(view.total, 3);
        assert_eq!(
            view.entries[0],
            EntryView {
                spiffe_id: "spiffe://example.org/web".into(),
                selectors: vec!["unix:uid:1".into()],
                nodes: vec!["node-1".into(), "node-2".into()],
                dns_names: vec!["web.example.org".into()],
                federates_with: vec!["partner.example".into()],
                x509_ttl_secs: Some(600),
                jwt_ttl_secs: None,
            }
        );
        assert_eq!(view.entries[1].nodes, ["*"]);
        assert_eq!(view.last_reload, None);
        let json = serde_json::to_string(&all).unwrap();
        assert_eq!(serde_json::from_str::<AdminResponse>(&json).unwrap(), all);
        assert_eq!(
            shown(data_dir_mode.answer(Some("node-2".into()))),
            ["spiffe://example.org/web", "spiffe://example.org/all"]
        );
        assert_eq!(
            shown(data_dir_mode.answer(Some("node-9".into()))),
            ["spiffe://example.org/all"]
        );
        // On Kubernetes nodes, only entries with a k8s: selector can be served.
        assert_eq!(
            shown(show(entries, true).answer(Some("node-1".into()))),
            ["spiffe://example.org/all"]
        );
    }

    #[tokio::test]
    async fn no_server_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = call(dir.path(), &AdminRequest::BundleShow)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("is `lanyard-server run` running"),
            "{err}"
        );
    }
}
