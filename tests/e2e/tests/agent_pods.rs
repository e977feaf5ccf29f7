//! Kubernetes workload identity for real processes: a `lanyard-server` process in cluster
//! mode against the Kubernetes API fixture (least-privilege RBAC, CA Secret, bundle
//! ConfigMap), a `lanyard-agent` process attested by `k8s_psat` with a projected token bound
//! to its pod on node-1, and client processes (`lanyard-agent api fetch x509`) placed in
//! pod-shaped cgroups as the kubelet would place a container:
//!
//! - in the cgroup of a pod on node-1: that pod's ID, `spiffe://example.org/ns/default/sa/web`;
//! - in the cgroup of a pod on node-2 (which this agent does not serve): no identity;
//! - in no pod at all (and no static entry): no identity.
//!
//! Needs root and the cgroup v1 `pids` hierarchy; without them the test fails saying so,
//! unless `LANYARD_SKIP_CGROUP_TESTS=1`.

use std::os::unix::fs::PermissionsExt;

use k8s_openapi::api::core::v1::Pod;
use kube_fixture::{FixtureOptions, KubeFixture};
use lanyard_e2e::cgroup::{CgroupDirs, fresh_container_id, pids_root_or_skip};
use lanyard_e2e::client::{RunAs, api, api_until};
use lanyard_e2e::cluster::{pod, seed};
use lanyard_e2e::stack::start_in_cluster;

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_in_a_pod_cgroup_gets_its_pods_identity() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(pids) = pids_root_or_skip() else {
        return;
    };
    // Declared first, dropped last: the cgroups go after every process in them has exited.
    let mut cgroups = CgroupDirs::default();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path();

    // The cluster: RBAC, CA material, the agent's pod and two workload pods.
    let fixture = KubeFixture::start(FixtureOptions::default()).await.unwrap();
    let seeded = blocking(|| seed(&fixture));
    let store = fixture.store();
    let (cid_here, cid_there) = (fresh_container_id(), fresh_container_id());
    let here = store
        .create(&pod("default", "web-1", "web", "node-1", Some(&cid_here)))
        .unwrap();
    let there = store
        .create(&pod("default", "web-2", "web", "node-2", Some(&cid_there)))
        .unwrap();
    let uid = |p: &Pod| p.metadata.uid.clone().expect("the fixture assigns UIDs");

    // The server, and the agent attested by a projected token bound to its pod on node-1.
    let (server, agent) = blocking(|| start_in_cluster(dir, &fixture, &seeded));
    let socket = agent.socket.clone();

    // In web-1's container cgroup: web-1's identity (retried until the node view is in).
    let in_here = cgroups.container(&pids, &uid(&here), &cid_here);
    let got = blocking(|| {
        api_until(
            &socket,
            &["fetch", "x509"],
            RunAs::InCgroup(&in_here),
            |o| o.success,
        )
    });
    let ids: Vec<&str> = got
        .stdout
        .lines()
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert_eq!(ids, ["spiffe://example.org/ns/default/sa/web"], "{got:?}");

    // In web-2's cgroup (a pod of node-2): nothing, the node view does not have it.
    let in_there = cgroups.container(&pids, &uid(&there), &cid_there);
    let refused = blocking(|| api(&socket, &["fetch", "x509"], RunAs::InCgroup(&in_there)));
    assert!(
        !refused.success && refused.stderr.contains("no identity issued"),
        "{refused:?}"
    );

    // In no pod (this test's own cgroups): nothing either; no static entry names it.
    let outside = blocking(|| api(&socket, &["fetch", "x509"], RunAs::Me));
    assert!(
        !outside.success && outside.stderr.contains("no identity issued"),
        "{outside:?}"
    );

    drop(agent);
    drop(server);
    drop(fixture);
}
