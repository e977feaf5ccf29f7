//! The agent as the CSI node plugin `csi.lanyard.dev`: a cluster-mode server and a `k8s_psat`
//! agent on the kube fixture as [`crate::stack::start_in_cluster`] runs them, the agent with
//! `--csi-socket`, `--csi-pods-dir` and `--node-name node-1`; `NodePublishVolume` requests as
//! the kubelet sends them for a pod's inline volume; the kubelet's directory layout under a
//! test's pods directory; and a guard that removes every mount a test left under a directory.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use lanyard_proto::csi::v1 as csi;

use crate::binary;
use crate::process::Process;
use crate::stack::{Agent, Server};

/// The node the CSI agent runs on (the agent's pod and token are node-1's).
pub const NODE: &str = "node-1";

/// Where the agent's CSI plugin works: its socket and the kubelet's pods directory.
#[derive(Debug, Clone)]
pub struct CsiPaths {
    pub socket: PathBuf,
    pub pods_dir: PathBuf,
}

/// What an agent restart needs: the server's address and the files under the test's dir.
#[derive(Debug, Clone)]
pub struct AgentFiles {
    pub dir: PathBuf,
    pub server: SocketAddr,
    pub bundle: PathBuf,
    pub token: PathBuf,
}

/// A cluster-mode server and a CSI agent on `fixture` (seeded by [`crate::cluster::seed`]),
/// files under `dir`; blocks until both serve.
pub fn start_in_cluster_with_csi(
    dir: &Path,
    fixture: &kube_fixture::KubeFixture,
    seeded: &crate::cluster::Seeded,
    csi: &CsiPaths,
) -> (Server, Agent, AgentFiles) {
    let kubeconfig = fixture
        .write_kubeconfig(
            "lanyard-server",
            &fixture.issue_api_token("lanyard", "lanyard-server"),
        )
        .expect("write the server's kubeconfig");
    let server = Server::start_cluster(dir, &kubeconfig);
    let files = AgentFiles {
        dir: dir.to_owned(),
        server: server.addr,
        bundle: dir.join("root.pem"),
        token: dir.join("token"),
    };
    std::fs::write(&files.token, crate::cluster::agent_token(fixture, seeded))
        .expect("write the agent's token");
    std::fs::set_permissions(&files.token, std::fs::Permissions::from_mode(0o600))
        .expect("chmod the agent's token");
    std::fs::write(&files.bundle, seeded.root.cert_pem()).expect("write the bundle");
    let agent = launch_agent(&files, csi);
    (server, agent, files)
}

/// Starts (or restarts: same socket and data dir) the CSI agent; returns once both its
/// Workload API socket and its CSI socket are announced.
pub fn launch_agent(files: &AgentFiles, csi: &CsiPaths) -> Agent {
    let socket = files.dir.join("sockets").join("agent.sock");
    let data_dir = files.dir.join("agent");
    let server = files.server.to_string();
    let text = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    let args: Vec<String> = vec![
        "run".into(),
        "--server".into(),
        server,
        "--trust-bundle".into(),
        text(&files.bundle),
        "--k8s-token-path".into(),
        text(&files.token),
        "--socket".into(),
        text(&socket),
        "--data-dir".into(),
        text(&data_dir),
        "--health".into(),
        "127.0.0.1:0".into(),
        "--node-name".into(),
        NODE.into(),
        "--csi-socket".into(),
        text(&csi.socket),
        "--csi-pods-dir".into(),
        text(&csi.pods_dir),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let process = Process::start(&binary("lanyard-agent"), &args, &[]);
    let csi_line = format!("listening on unix:{} (csi)", csi.socket.display());
    process.wait_for_line("its CSI socket", |line| (line == csi_line).then_some(()));
    let health = process.listener("health");
    process.wait_for_line("its Workload API socket", |line| {
        (line.starts_with("listening on unix:") && line.ends_with("(workload-api)")).then_some(())
    });
    Agent {
        process,
        socket,
        health,
        data_dir,
    }
}

/// Stops `agent` with SIGTERM (as the kubelet stops a container) and waits for it to exit.
pub fn stop_gracefully(agent: &mut Agent) -> std::process::ExitStatus {
    // SAFETY: kill(2) on our own child; no memory is touched.
    unsafe {
        libc::kill(agent.process.pid() as i32, libc::SIGTERM);
    }
    agent.process.wait()
}

/// The UID the fixture gave `pod`.
pub fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().expect("the fixture assigns UIDs")
}

/// The target path the kubelet gives volume `volume` of pod `pod_uid`
/// (`<pods>/<uid>/volumes/kubernetes.io~csi/<volume>/mount`), its parent created as the
/// kubelet creates it before publishing.
pub fn kubelet_target(pods_dir: &Path, pod_uid: &str, volume: &str) -> PathBuf {
    let parent = pods_dir
        .join(pod_uid)
        .join("volumes/kubernetes.io~csi")
        .join(volume);
    std::fs::create_dir_all(&parent).expect("create the target's parent");
    parent.join("mount")
}

/// A `NodePublishVolume` request as the kubelet sends it for an inline, read-only volume of
/// `pod` (the CSIDriver has `podInfoOnMount: true`).
pub fn publish_request(volume_id: &str, target: &Path, pod: &Pod) -> csi::NodePublishVolumeRequest {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref().expect("a pod spec");
    let context = [
        ("csi.storage.k8s.io/ephemeral", "true".to_owned()),
        (
            "csi.storage.k8s.io/pod.name",
            meta.name.clone().unwrap_or_default(),
        ),
        (
            "csi.storage.k8s.io/pod.namespace",
            meta.namespace.clone().unwrap_or_default(),
        ),
        ("csi.storage.k8s.io/pod.uid", uid(pod)),
        (
            "csi.storage.k8s.io/serviceAccount.name",
            spec.service_account_name.clone().unwrap_or_default(),
        ),
    ];
    csi::NodePublishVolumeRequest {
        volume_id: volume_id.into(),
        target_path: target.to_str().expect("utf-8 path").into(),
        volume_capability: Some(csi::VolumeCapability {
            access_type: Some(csi::volume_capability::AccessType::Mount(
                csi::volume_capability::MountVolume::default(),
            )),
            access_mode: Some(csi::volume_capability::AccessMode {
                mode: csi::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
            }),
        }),
        readonly: true,
        volume_context: context
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        ..Default::default()
    }
}

/// The mount points at or under `dir`, from this process's mount table.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        // The table escapes space, tab, newline and backslash as octal.
        .map(|point| PathBuf::from(point.replace("\\040", " ")))
        .filter(|point| point.starts_with(dir))
        .collect()
}

/// Unmounts (lazily, deepest first) whatever is still mounted under its directory when
/// dropped, so a failing test leaves no mount behind and its temp dir can be removed.
pub struct UnmountOnDrop(pub PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        let mut points = mounts_under(&self.0);
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for point in points {
            let Ok(c) = std::ffi::CString::new(point.to_string_lossy().as_bytes()) else {
                continue;
            };
            // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}
