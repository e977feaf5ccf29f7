//! The agent's CSI node plugin driven as the kubelet drives it, over its real gRPC socket with
//! a client generated from the vendored `csi.proto`: a `lanyard-server` process in cluster
//! mode on the kube fixture, a `lanyard-agent` process with `--csi-socket` (attested by
//! `k8s_psat` on node-1), target paths laid out as the kubelet lays them out under a test pods
//! directory, and `lanyard-agent api fetch x509` run in pod-shaped cgroups through the
//! published socket. Bind mounts are real (this needs root).
//!
//! - Identity and NodeGetInfo answer as the plugin `csi.lanyard.dev` on node-1.
//! - Publishing web-1's volume gives web-1 a socket of its own at the target, read-only; a
//!   process in web-1's cgroup fetches web-1's SVID through it, and so does a process in no
//!   pod (the pod comes from the mount), as a non-root user too, while on the node socket
//!   that process gets nothing; a process in web-2's cgroup is refused on web-1's socket
//!   (`pod_mismatch`).
//! - A second publish changes nothing; targets outside the pods dir, with `..`, through a
//!   symlink that leaves it, or in another pod's directory are refused, naming why.
//! - A graceful stop removes the CSI socket and the pod socket but not the mount; the
//!   restarted agent serves the published volume again, and forgets one whose target was
//!   unmounted while it was down.
//! - Unpublishing removes the mount, the target and the socket; again, it succeeds.
//!
//! Needs root and the cgroup v1 `pids` hierarchy; without them the test fails saying so,
//! unless `LANYARD_SKIP_CGROUP_TESTS=1`.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use kube_fixture::{FixtureOptions, KubeFixture};
use lanyard_e2e::cgroup::{CgroupDirs, fresh_container_id, pids_root_or_skip};
use lanyard_e2e::client::{RunAs, api, api_until, metric};
use lanyard_e2e::cluster::{pod, seed};
use lanyard_e2e::csi::{
    CsiPaths, UnmountOnDrop, kubelet_target, launch_agent, mounts_under, publish_request,
    start_in_cluster_with_csi, stop_gracefully, uid,
};
use lanyard_proto::csi::v1 as csi;
use tonic::Code;
use tonic::transport::Channel;

const WEB: &str = "spiffe://example.org/ns/default/sa/web";

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

async fn clients(
    socket: &Path,
) -> (
    csi::identity_client::IdentityClient<Channel>,
    csi::node_client::NodeClient<Channel>,
) {
    let channel = lanyard_client::channel::connect(socket)
        .await
        .expect("connect to the CSI socket");
    (
        csi::identity_client::IdentityClient::new(channel.clone()),
        csi::node_client::NodeClient::new(channel),
    )
}

fn unpublish_request(volume_id: &str, target: &Path) -> csi::NodeUnpublishVolumeRequest {
    csi::NodeUnpublishVolumeRequest {
        volume_id: volume_id.into(),
        target_path: target.to_str().unwrap().into(),
    }
}

/// The SPIFFE IDs a successful `api fetch x509` printed.
fn ids(stdout: &str) -> Vec<&str> {
    stdout.lines().filter_map(|l| l.split(' ').next()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelet_publishes_a_pod_socket_and_the_pod_fetches_its_svid_through_it() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(pids) = pids_root_or_skip() else {
        return;
    };
    // Dropped last, in this order: cgroups after every process, mounts before the temp dir.
    let mut cgroups = CgroupDirs::default();
    // A short temp path: the published socket's path must fit in a Unix socket address.
    let tmp = tempfile::Builder::new().prefix("c").tempdir().unwrap();
    let base = std::fs::canonicalize(tmp.path()).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _unmount = UnmountOnDrop(base.clone());
    let paths = CsiPaths {
        socket: base.join("plugins/csi.lanyard.dev/csi.sock"),
        pods_dir: base.join("pods"),
    };
    std::fs::create_dir_all(&paths.pods_dir).unwrap();
    let outside = base.join("outside");
    std::fs::create_dir(&outside).unwrap();

    // The cluster: two workload pods on node-1, web-1 and web-2.
    let fixture = KubeFixture::start(FixtureOptions::default()).await.unwrap();
    let seeded = blocking(|| seed(&fixture));
    let store = fixture.store();
    let (cid1, cid2) = (fresh_container_id(), fresh_container_id());
    let web1 = store
        .create(&pod("default", "web-1", "web", "node-1", Some(&cid1)))
        .unwrap();
    let web2 = store
        .create(&pod("default", "web-2", "web", "node-1", Some(&cid2)))
        .unwrap();
    let (uid1, uid2) = (uid(&web1), uid(&web2));
    let in_web1 = cgroups.container(&pids, &uid1, &cid1);
    let in_web2 = cgroups.container(&pids, &uid2, &cid2);

    let (server, mut agent, files) =
        blocking(|| start_in_cluster_with_csi(&base, &fixture, &seeded, &paths));
    assert_eq!(
        std::fs::metadata(&paths.socket).unwrap().mode() & 0o777,
        0o600,
        "only the kubelet's user reaches the CSI socket"
    );
    let (mut identity, mut node) = clients(&paths.socket).await;

    // Identity and node info.
    let info = identity
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "csi.lanyard.dev");
    assert!(!info.vendor_version.is_empty());
    let probe = identity.probe(csi::ProbeRequest {}).await.unwrap();
    assert_eq!(probe.get_ref().ready, Some(true));
    let node_info = node
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .unwrap();
    assert_eq!(node_info.get_ref().node_id, "node-1");
    let staged = node
        .node_stage_volume(csi::NodeStageVolumeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(staged.code(), Code::Unimplemented);

    // Publish web-1's volume: a pod socket at the target.
    let target1 = kubelet_target(&paths.pods_dir, &uid1, "l");
    let socket1 = target1.join("agent.sock");
    let publish1 = publish_request("csi-v1", &target1, &web1);
    node.node_publish_volume(publish1.clone()).await.unwrap();
    assert_eq!(mounts_under(&target1), std::slice::from_ref(&target1));
    let err = std::fs::write(target1.join("x"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "read-only: {err}");

    // web-1's process gets web-1's identity through its socket.
    let got = blocking(|| {
        api_until(
            &socket1,
            &["fetch", "x509"],
            RunAs::InCgroup(&in_web1),
            |o| o.success,
        )
    });
    assert_eq!(ids(&got.stdout), [WEB], "{got:?}");
    // A process in no pod gets it too on web-1's socket (the pod comes from the mount), and
    // nothing on the node socket (its cgroup names no pod).
    let no_pod = blocking(|| api(&socket1, &["fetch", "x509"], RunAs::Me));
    assert!(no_pod.success, "{no_pod:?}");
    assert_eq!(ids(&no_pod.stdout), [WEB]);
    // A non-root user reaches the socket through the read-only mount (as a restricted pod's
    // containers run).
    let non_root = blocking(|| {
        api(
            &socket1,
            &["fetch", "x509"],
            RunAs::User {
                uid: 65534,
                gid: 65534,
            },
        )
    });
    assert_eq!(ids(&non_root.stdout), [WEB], "{non_root:?}");
    let node_socket = blocking(|| api(&agent.socket, &["fetch", "x509"], RunAs::Me));
    assert!(
        !node_socket.success && node_socket.stderr.contains("no identity issued"),
        "{node_socket:?}"
    );
    // web-2's process on web-1's socket is refused, naming why.
    let other_pod = blocking(|| api(&socket1, &["fetch", "x509"], RunAs::InCgroup(&in_web2)));
    assert!(
        !other_pod.success && other_pod.stderr.contains("pod_mismatch"),
        "{other_pod:?}"
    );

    // The same publish again changes nothing.
    let socket_inode = std::fs::metadata(&socket1).unwrap().ino();
    node.node_publish_volume(publish1.clone()).await.unwrap();
    assert_eq!(
        mounts_under(&target1),
        std::slice::from_ref(&target1),
        "one mount"
    );
    assert_eq!(std::fs::metadata(&socket1).unwrap().ino(), socket_inode);

    // Targets that do not stay in web-1's directory under the pods dir are refused.
    let symlink_dir = target1.parent().unwrap().with_file_name("evil");
    std::os::unix::fs::symlink(&outside, &symlink_dir).unwrap();
    let dot_dot = format!(
        "{}/../../../../../outside/mount",
        target1.parent().unwrap().display()
    );
    let in_web2_dir = kubelet_target(&paths.pods_dir, &uid2, "l");
    for (target, why) in [
        (
            outside.join("mount"),
            "outside the kubelet's pods directory",
        ),
        (Path::new(&dot_dot).to_owned(), "`..`"),
        (
            symlink_dir.join("mount"),
            "outside the kubelet's pods directory",
        ),
        (in_web2_dir.clone(), "the request is for pod"),
    ] {
        let refused = node
            .node_publish_volume(publish_request("csi-bad", &target, &web1))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{target:?}");
        assert!(
            refused.message().contains(why),
            "{target:?}: {}",
            refused.message()
        );
    }
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "nothing made outside"
    );
    assert!(!in_web2_dir.exists());

    // A second volume, web-2's, to be unmounted while the agent is down.
    let target2 = kubelet_target(&paths.pods_dir, &uid2, "l");
    node.node_publish_volume(publish_request("csi-v2", &target2, &web2))
        .await
        .unwrap();
    assert_eq!(mounts_under(&target2), std::slice::from_ref(&target2));

    // A graceful stop removes the plugin's socket and the pod sockets, not the mounts.
    drop((identity, node));
    let status = blocking(|| stop_gracefully(&mut agent));
    assert!(status.success(), "{status:?}");
    assert!(!paths.socket.exists(), "the CSI socket is removed on stop");
    assert!(!socket1.exists(), "the pod socket is removed on stop");
    assert_eq!(mounts_under(&target1), std::slice::from_ref(&target1));
    // Meanwhile the kubelet tore web-2's volume down by itself.
    let c = std::ffi::CString::new(target2.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::umount2(c.as_ptr(), 0) }, 0);
    std::fs::remove_dir(&target2).unwrap();

    // Restarted, the agent serves web-1's published volume again.
    let agent = blocking(|| launch_agent(&files, &paths));
    let again = blocking(|| {
        api_until(
            &socket1,
            &["fetch", "x509"],
            RunAs::InCgroup(&in_web1),
            |o| o.success,
        )
    });
    assert_eq!(ids(&again.stdout), [WEB], "{again:?}");
    let metrics = blocking(|| agent.metrics());
    assert_eq!(
        metric(&metrics, "lanyard_agent_csi_stale_volumes_dropped_total"),
        Some(1.0),
        "web-2's volume was forgotten:\n{metrics}"
    );
    assert_eq!(
        metric(&metrics, "lanyard_agent_csi_published_volumes"),
        Some(1.0)
    );
    let (_, mut node) = clients(&paths.socket).await;

    // Unpublish: the mount, the target and the socket go; a second unpublish succeeds, and
    // so does one for the forgotten volume.
    node.node_unpublish_volume(unpublish_request("csi-v1", &target1))
        .await
        .unwrap();
    assert!(mounts_under(&target1).is_empty());
    assert!(!target1.exists());
    let gone = blocking(|| api(&socket1, &["fetch", "x509"], RunAs::InCgroup(&in_web1)));
    assert!(!gone.success, "{gone:?}");
    node.node_unpublish_volume(unpublish_request("csi-v1", &target1))
        .await
        .unwrap();
    node.node_unpublish_volume(unpublish_request("csi-v2", &target2))
        .await
        .unwrap();
    // The plugin's state: `volumes/` beside its socket, empty again.
    let volumes = std::fs::read_dir(paths.socket.with_file_name("volumes"))
        .unwrap()
        .count();
    assert_eq!(volumes, 0, "no record or volume directory is left");

    drop(node);
    drop(agent);
    drop(server);
    drop(fixture);
}
