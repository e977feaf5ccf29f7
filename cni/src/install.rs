//! `lanyard-cni install`: what the installer DaemonSet runs on every node (root, the node's
//! `/opt/cni/bin` and `/etc/cni/net.d` mounted under `/host`).
//!
//! 1. Copies its own binary into the CNI bin dir (temp file, then rename: the runtime never
//!    runs half a binary).
//! 2. Writes the plugin's kubeconfig (0600, in `<conf-dir>/lanyard-cni.d/`) from its own
//!    in-cluster service account: the API server from `KUBERNETES_SERVICE_HOST`/`_PORT`, its
//!    CA and token embedded (the plugin runs on the node, outside the pod that mounts them).
//!    The token rotates: the file is rewritten whenever what it would hold changes.
//! 3. Adds the `lanyard-cni` entry at the end of the plugins of the node's primary CNI
//!    configuration (the first `*.conflist` or `*.conf` by name, as the runtime picks it); a
//!    `.conf` becomes a `.conflist` of the same stem holding it. Every write is a temp file
//!    renamed over the old one, so the runtime never reads a torn file, and a file that is not
//!    a conflist is left alone (logged, retried).
//! 4. Keeps all three in place: every poll interval it checks again, so an entry the cluster's
//!    own plugin drops by rewriting its file comes back.
//! 5. On SIGTERM (or SIGINT) removes the entry, the kubeconfig and the binary, in that order,
//!    and exits 0.
//!
//! Running it again, or twice, converges to the same files.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use tracing::{info, warn};

use crate::conflist::{self, ConflistError, Edit, Kind};
use crate::spec::PLUGIN_TYPE;

/// The directory, in the CNI conf dir, that holds the plugin's kubeconfig.
pub const KUBECONFIG_DIR: &str = "lanyard-cni.d";
/// The kubeconfig's file name.
pub const KUBECONFIG_FILE: &str = "kubeconfig";
/// Where a pod's service account credentials are mounted.
pub const DEFAULT_SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The CNI conf dir as the node (and so the plugin) sees it.
pub const DEFAULT_NODE_CONF_DIR: &str = "/etc/cni/net.d";
/// How often the files are checked.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What the installer needs.
#[derive(Clone, Debug)]
pub struct InstallOptions {
    /// The CNI bin dir, as mounted in the installer (`/host/opt/cni/bin`).
    pub host_bin_dir: PathBuf,
    /// The CNI conf dir, as mounted in the installer (`/host/etc/cni/net.d`).
    pub host_conf_dir: PathBuf,
    /// The same conf dir as the node sees it (`/etc/cni/net.d`): the kubeconfig path written
    /// into the entry.
    pub node_conf_dir: PathBuf,
    /// The installer's service account (`token`, `ca.crt`).
    pub service_account_dir: PathBuf,
    /// `KUBERNETES_SERVICE_HOST`.
    pub api_host: String,
    /// `KUBERNETES_SERVICE_PORT`.
    pub api_port: u16,
    /// The entry's `log_level`.
    pub log_level: String,
    /// The binary to place (this process's own).
    pub binary: PathBuf,
    pub poll_interval: Duration,
}

/// Why an installation step failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a CNI configuration lanyard-cni can edit ({source}); left as it is")]
    Conflist {
        path: PathBuf,
        #[source]
        source: ConflistError,
    },
    #[error(
        "{from} would become {to}, which exists already; left as they are (remove the one the \
         cluster's plugin no longer uses)"
    )]
    ConversionTarget { from: PathBuf, to: PathBuf },
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> InstallError + 'a {
    move |source| InstallError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// What one check of the conflist found or did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reconciled {
    /// The entry was added to `file`.
    Added { file: String },
    /// `file` already ends with the entry.
    Present { file: String },
    /// The single-plugin `from` was replaced by the conflist `to`, entry included.
    Converted { from: String, to: String },
    /// No `*.conflist` or `*.conf` yet: the cluster's plugin has not installed itself.
    WaitingForClusterConfig,
}

/// `added`, `present`, `converted`, `waiting_for_cluster_config`: also the label in logs.
impl fmt::Display for Reconciled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reconciled::Added { .. } => "added",
            Reconciled::Present { .. } => "present",
            Reconciled::Converted { .. } => "converted",
            Reconciled::WaitingForClusterConfig => "waiting_for_cluster_config",
        })
    }
}

/// The installer's state: its options.
#[derive(Clone, Debug)]
pub struct Installer {
    options: InstallOptions,
}

impl Installer {
    pub fn new(options: InstallOptions) -> Self {
        Self { options }
    }

    /// Where the binary goes.
    pub fn binary_path(&self) -> PathBuf {
        self.options.host_bin_dir.join(PLUGIN_TYPE)
    }

    /// Where the kubeconfig goes, in the installer's view.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.options
            .host_conf_dir
            .join(KUBECONFIG_DIR)
            .join(KUBECONFIG_FILE)
    }

    /// The entry the conflist gets (its kubeconfig path as the node sees it).
    pub fn entry(&self) -> Box<serde_json::value::RawValue> {
        let path = self
            .options
            .node_conf_dir
            .join(KUBECONFIG_DIR)
            .join(KUBECONFIG_FILE);
        conflist::entry(&path.to_string_lossy(), &self.options.log_level)
    }

    /// Copies the binary into the bin dir unless the same bytes are there. Returns whether it
    /// wrote.
    pub fn install_binary(&self) -> Result<bool, InstallError> {
        let source = &self.options.binary;
        let bytes = fs::read(source).map_err(io_error("reading the binary", source))?;
        let target = self.binary_path();
        if fs::read(&target).is_ok_and(|current| current == bytes) {
            return Ok(false);
        }
        write_atomic(&target, &bytes, 0o755)?;
        Ok(true)
    }

    /// The kubeconfig the service account gives now.
    pub fn kubeconfig_text(&self) -> Result<String, InstallError> {
        let dir = &self.options.service_account_dir;
        let token_path = dir.join("token");
        let token = fs::read_to_string(&token_path)
            .map_err(io_error("reading the service account token", &token_path))?;
        let ca_path = dir.join("ca.crt");
        let ca =
            fs::read(&ca_path).map_err(io_error("reading the service account CA", &ca_path))?;
        let host = &self.options.api_host;
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        // JSON is YAML: the kubeconfig parser reads it, and serde_json quotes every value.
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{
                "name": "local",
                "cluster": {
                    "server": format!("https://{host}:{}", self.options.api_port),
                    "certificate-authority-data":
                        base64::engine::general_purpose::STANDARD.encode(ca),
                },
            }],
            "users": [{"name": PLUGIN_TYPE, "user": {"token": token.trim()}}],
            "contexts": [{
                "name": PLUGIN_TYPE,
                "context": {"cluster": "local", "user": PLUGIN_TYPE},
            }],
            "current-context": PLUGIN_TYPE,
        });
        Ok(serde_json::to_string_pretty(&config).expect("JSON serializes") + "\n")
    }

    /// Writes the kubeconfig (0600) unless it holds that already. Returns whether it wrote.
    pub fn sync_kubeconfig(&self) -> Result<bool, InstallError> {
        let text = self.kubeconfig_text()?;
        let path = self.kubeconfig_path();
        let dir = path.parent().expect("the kubeconfig is in a directory");
        fs::create_dir_all(dir).map_err(io_error("creating", dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(io_error("restricting", dir))?;
        let current = fs::read(&path).ok();
        let private = fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o077 == 0);
        if current.as_deref() == Some(text.as_bytes()) && private {
            return Ok(false);
        }
        write_atomic(&path, text.as_bytes(), 0o600)?;
        Ok(true)
    }

    /// The primary CNI configuration: the first `*.conflist`/`*.conf` by name.
    pub fn primary_config(&self) -> Result<Option<(PathBuf, Kind)>, InstallError> {
        Ok(config_files(&self.options.host_conf_dir)?
            .into_iter()
            .next())
    }

    /// Makes the primary configuration end with the entry.
    pub fn sync_entry(&self) -> Result<Reconciled, InstallError> {
        let Some((path, kind)) = self.primary_config()? else {
            return Ok(Reconciled::WaitingForClusterConfig);
        };
        let text = fs::read_to_string(&path).map_err(io_error("reading", &path))?;
        let name = file_name(&path);
        let edit = conflist::with_entry(kind, &text, &self.entry()).map_err(|source| {
            InstallError::Conflist {
                path: path.clone(),
                source,
            }
        })?;
        let Edit::Write(new_text) = edit else {
            return Ok(Reconciled::Present { file: name });
        };
        let mode = fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0o644);
        match kind {
            Kind::List => {
                write_atomic(&path, new_text.as_bytes(), mode)?;
                Ok(Reconciled::Added { file: name })
            }
            Kind::Single => {
                let to = path.with_extension("conflist");
                if to.exists() {
                    return Err(InstallError::ConversionTarget { from: path, to });
                }
                write_atomic(&to, new_text.as_bytes(), mode)?;
                fs::remove_file(&path).map_err(io_error("removing", &path))?;
                Ok(Reconciled::Converted {
                    from: name,
                    to: file_name(&to),
                })
            }
        }
    }

    /// Everything a poll checks: the binary (if it went missing), the kubeconfig, the entry.
    pub fn reconcile(&self) -> Result<Reconciled, InstallError> {
        if !self.binary_path().exists() {
            self.install_binary()?;
        }
        if self.sync_kubeconfig()? {
            info!(path = %self.kubeconfig_path().display(), "kubeconfig written");
        }
        self.sync_entry()
    }

    /// Removes the entry from every conflist, then the kubeconfig, then the binary. What is
    /// already gone is fine.
    pub fn uninstall(&self) -> Result<(), InstallError> {
        for (path, kind) in config_files(&self.options.host_conf_dir)? {
            if kind != Kind::List {
                continue;
            }
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            if let Some(new_text) = conflist::without_entry(&text) {
                let mode = fs::metadata(&path)
                    .map(|m| m.permissions().mode() & 0o777)
                    .unwrap_or(0o644);
                write_atomic(&path, new_text.as_bytes(), mode)?;
                info!(file = %path.display(), "entry removed");
            }
        }
        let kubeconfig = self.kubeconfig_path();
        remove_if_present(&kubeconfig)?;
        let dir = kubeconfig
            .parent()
            .expect("the kubeconfig is in a directory");
        match fs::remove_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!(dir = %dir.display(), error = %e, "kubeconfig directory kept"),
        }
        remove_if_present(&self.binary_path())?;
        info!("uninstalled");
        Ok(())
    }
}

/// Installs, keeps the installation in place until `shutdown` resolves, then uninstalls.
/// Failing to place the binary or to write the first kubeconfig is fatal (nothing is added to
/// the conflist then); later failures are logged and retried.
pub async fn run(
    options: InstallOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), InstallError> {
    let installer = Installer::new(options);
    installer.install_binary()?;
    info!(path = %installer.binary_path().display(), "binary in place");
    installer.sync_kubeconfig()?;
    info!(path = %installer.kubeconfig_path().display(), "kubeconfig in place");
    let mut interval = tokio::time::interval(installer.options.poll_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Reconciled> = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = interval.tick() => match installer.reconcile() {
                Ok(state) => {
                    if last.as_ref() != Some(&state) {
                        info!(state = %state, detail = ?state, "conflist");
                        last = Some(state);
                    }
                }
                Err(e) => {
                    warn!(error = %e, "will try again");
                    last = None;
                }
            },
        }
    }
    info!("stopping: removing the entry, the kubeconfig and the binary");
    installer.uninstall()
}

/// The CNI configuration files of `dir`, by name.
fn config_files(dir: &Path) -> Result<Vec<(PathBuf, Kind)>, InstallError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("listing", dir)(e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error("listing", dir))?;
        let path = entry.path();
        let Some(kind) = Kind::of(&entry.file_name().to_string_lossy()) else {
            continue;
        };
        if path.is_file() {
            files.push((path, kind));
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn remove_if_present(path: &Path) -> Result<(), InstallError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("removing", path)(e)),
    }
}

/// Writes `bytes` to a hidden temp file beside `path` (created with `mode`, so a secret is
/// never readable by others, not even briefly), syncs it and renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    let dir = path.parent().expect("a file path has a parent");
    let temp = dir.join(format!(
        ".{}.lanyard-cni-tmp-{}",
        file_name(path),
        std::process::id()
    ));
    let _ = fs::remove_file(&temp);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(bytes)?;
        // The umask may have narrowed the mode; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(io_error("writing", path))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    struct Node {
        _dir: tempfile::TempDir,
        bin: PathBuf,
        conf: PathBuf,
        sa: PathBuf,
        installer: Installer,
    }

    fn node() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("opt/cni/bin");
        let conf = dir.path().join("etc/cni/net.d");
        let sa = dir.path().join("sa");
        for d in [&bin, &conf, &sa] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(sa.join("token"), "token-1\n").unwrap();
        fs::write(sa.join("ca.crt"), "-----BEGIN CERTIFICATE-----\n").unwrap();
        let binary = dir.path().join("lanyard-cni-source");
        fs::write(&binary, b"\x7fELF binary").unwrap();
        let installer = Installer::new(InstallOptions {
            host_bin_dir: bin.clone(),
            host_conf_dir: conf.clone(),
            node_conf_dir: DEFAULT_NODE_CONF_DIR.into(),
            service_account_dir: sa.clone(),
            api_host: "10.96.0.1".into(),
            api_port: 443,
            log_level: "info".into(),
            binary,
            poll_interval: Duration::from_millis(10),
        });
        Node {
            _dir: dir,
            bin,
            conf,
            sa,
            installer,
        }
    }

    const CLUSTER: &str = r#"{"cniVersion": "1.0.0", "name": "k8s", "plugins": [{"type": "ptp"}]}"#;

    fn plugin_types(path: &Path) -> Vec<String> {
        let value: Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
        value["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap().to_owned())
            .collect()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn install_converges_and_uninstall_removes_everything() {
        let n = node();
        assert_eq!(
            n.installer.reconcile().unwrap(),
            Reconciled::WaitingForClusterConfig
        );
        // The first file by name is the primary one.
        fs::write(n.conf.join("10-ptp.conflist"), CLUSTER).unwrap();
        fs::write(n.conf.join("20-other.conflist"), CLUSTER).unwrap();
        assert_eq!(
            n.installer.reconcile().unwrap(),
            Reconciled::Added {
                file: "10-ptp.conflist".into()
            }
        );
        assert_eq!(
            n.installer.reconcile().unwrap(),
            Reconciled::Present {
                file: "10-ptp.conflist".into()
            }
        );
        assert_eq!(
            plugin_types(&n.conf.join("10-ptp.conflist")),
            ["ptp", "lanyard-cni"]
        );
        assert_eq!(plugin_types(&n.conf.join("20-other.conflist")), ["ptp"]);
        let value: Value =
            serde_json::from_str(&fs::read_to_string(n.conf.join("10-ptp.conflist")).unwrap())
                .unwrap();
        assert_eq!(
            value["plugins"][1],
            serde_json::json!({
                "type": "lanyard-cni",
                "kubeconfig": "/etc/cni/net.d/lanyard-cni.d/kubeconfig",
                "log_level": "info"
            })
        );
        // The binary, executable; the kubeconfig, private, readable by kube.
        assert_eq!(
            fs::read(n.bin.join("lanyard-cni")).unwrap(),
            b"\x7fELF binary"
        );
        assert_eq!(mode(&n.bin.join("lanyard-cni")), 0o755);
        let kubeconfig = n.conf.join("lanyard-cni.d/kubeconfig");
        assert_eq!(mode(&kubeconfig), 0o600);
        assert_eq!(mode(&n.conf.join("lanyard-cni.d")), 0o700);
        let parsed =
            kube::config::Kubeconfig::from_yaml(&fs::read_to_string(&kubeconfig).unwrap()).unwrap();
        let cluster = parsed.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://10.96.0.1:443"));
        assert_eq!(parsed.auth_infos[0].name, "lanyard-cni");
        assert_eq!(parsed.current_context.as_deref(), Some("lanyard-cni"));
        assert!(
            fs::read_to_string(&kubeconfig)
                .unwrap()
                .contains("\"token\": \"token-1\"")
        );
        // No temp files left behind.
        let hidden: Vec<_> = fs::read_dir(&n.conf)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(hidden.is_empty());

        // The token rotates: the kubeconfig follows; nothing else changes.
        fs::write(n.sa.join("token"), "token-2\n").unwrap();
        assert!(n.installer.sync_kubeconfig().unwrap());
        assert!(!n.installer.sync_kubeconfig().unwrap());
        assert!(
            fs::read_to_string(&kubeconfig)
                .unwrap()
                .contains("\"token\": \"token-2\"")
        );

        // The cluster's plugin rewrites its file: the entry comes back.
        fs::write(n.conf.join("10-ptp.conflist"), CLUSTER).unwrap();
        assert!(matches!(
            n.installer.reconcile().unwrap(),
            Reconciled::Added { .. }
        ));
        assert_eq!(
            plugin_types(&n.conf.join("10-ptp.conflist")),
            ["ptp", "lanyard-cni"]
        );

        n.installer.uninstall().unwrap();
        assert_eq!(plugin_types(&n.conf.join("10-ptp.conflist")), ["ptp"]);
        assert!(!kubeconfig.exists());
        assert!(!n.conf.join("lanyard-cni.d").exists());
        assert!(!n.bin.join("lanyard-cni").exists());
        // Again: nothing left to remove, no error.
        n.installer.uninstall().unwrap();
    }

    #[test]
    fn a_conf_becomes_a_conflist() {
        let n = node();
        let conf = r#"{"cniVersion": "0.4.0", "name": "br", "type": "bridge"}"#;
        fs::write(n.conf.join("10-bridge.conf"), conf).unwrap();
        fs::set_permissions(
            n.conf.join("10-bridge.conf"),
            fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        assert_eq!(
            n.installer.reconcile().unwrap(),
            Reconciled::Converted {
                from: "10-bridge.conf".into(),
                to: "10-bridge.conflist".into()
            }
        );
        assert!(!n.conf.join("10-bridge.conf").exists());
        let list = n.conf.join("10-bridge.conflist");
        assert_eq!(plugin_types(&list), ["bridge", "lanyard-cni"]);
        assert_eq!(mode(&list), 0o640);
        assert!(matches!(
            n.installer.reconcile().unwrap(),
            Reconciled::Present { .. }
        ));
        // A .conf beside a conflist of its stem is not converted over it.
        fs::write(n.conf.join("10-bridge.conf"), conf).unwrap();
        assert!(matches!(
            n.installer.reconcile().unwrap_err(),
            InstallError::ConversionTarget { .. }
        ));
    }

    #[test]
    fn a_file_that_is_not_a_conflist_is_left_alone() {
        let n = node();
        let path = n.conf.join("10-broken.conflist");
        fs::write(&path, "{\"plugins\": [").unwrap();
        let err = n.installer.reconcile().unwrap_err();
        assert!(matches!(err, InstallError::Conflist { .. }), "{err}");
        assert!(err.to_string().contains("10-broken.conflist"), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"plugins\": [");
    }

    #[test]
    fn an_ipv6_api_server_is_bracketed_and_a_missing_token_is_an_error() {
        let mut n = node();
        let mut options = n.installer.options.clone();
        options.api_host = "fd00::1".into();
        n.installer = Installer::new(options);
        assert!(
            n.installer
                .kubeconfig_text()
                .unwrap()
                .contains("\"server\": \"https://[fd00::1]:443\"")
        );
        fs::remove_file(n.sa.join("token")).unwrap();
        let err = n.installer.sync_kubeconfig().unwrap_err();
        assert!(
            err.to_string()
                .contains("reading the service account token"),
            "{err}"
        );
    }

    #[test]
    fn reconciled_labels() {
        let labels: Vec<String> = [
            Reconciled::Added { file: "a".into() },
            Reconciled::Present { file: "a".into() },
            Reconciled::Converted {
                from: "a".into(),
                to: "b".into(),
            },
            Reconciled::WaitingForClusterConfig,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            labels,
            [
                "added",
                "present",
                "converted",
                "waiting_for_cluster_config"
            ]
        );
    }
}
