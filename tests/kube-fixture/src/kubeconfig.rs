//! Client configuration for the fixture: a kubeconfig file (for processes such as
//! `lanyard-server --kube`, which read `KUBECONFIG`) and an equivalent in-memory
//! `kube::Config` (for tests).
//!
//! Reference: "Organizing Cluster Access Using kubeconfig Files"
//! (<https://kubernetes.io/docs/concepts/configuration/organize-cluster-access-kubeconfig/>).
//! The file holds a bearer token, so it is written 0600.

use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use rustls_pki_types::CertificateDer;

/// The kubeconfig for `server` (an `https://` URL), trusting `ca_pem`, authenticating with
/// `token` as user `user`.
pub fn render(server: &str, ca_pem: &str, user: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    // Every value is quoted: tokens and URLs contain ':' and may start with characters YAML
    // would otherwise interpret.
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kube-fixture
  cluster:
    server: {server:?}
    certificate-authority-data: {ca:?}
users:
- name: {user:?}
  user:
    token: {token:?}
contexts:
- name: kube-fixture
  context:
    cluster: kube-fixture
    user: {user:?}
    namespace: default
current-context: kube-fixture
"
    )
}

/// Writes `contents` to `path` with mode 0600 (it holds a credential).
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// A `kube::Config` for the fixture at `url`, trusting only the fixture's CA.
pub fn client_config(url: &http::Uri, ca: &CertificateDer<'_>, token: &str) -> kube::Config {
    let mut config = kube::Config::new(url.clone());
    config.root_cert = Some(vec![ca.to_vec()]);
    config.auth_info.token = Some(token.to_string().into());
    config.default_namespace = "default".to_string();
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_kubeconfig_parses_with_kube() {
        let text = render(
            "https://127.0.0.1:6443",
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
            "admin",
            "tok:en",
        );
        let parsed = kube::config::Kubeconfig::from_yaml(&text).expect("valid kubeconfig");
        assert_eq!(parsed.current_context.as_deref(), Some("kube-fixture"));
        let cluster = parsed.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
    }

    #[test]
    fn kubeconfig_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        write_private(&path, "x").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
