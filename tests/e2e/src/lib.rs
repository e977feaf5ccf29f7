//! Helpers for the end-to-end tests: finding the real binaries, starting them as processes,
//! waiting (with a deadline) for the `listening on ...` lines they print, and stopping them.
//!
//! The binaries are the ones cargo built for this workspace (`target/<profile>/lanyard-*`).
//! `./scripts/test` builds them before running tests; a test run without them fails with a
//! message saying so, rather than testing something stale or nothing.
//!
//! Module map:
//! - [`process`]: a child process with its stdout lines collected and its process group killed
//!   on drop.
//! - [`stack`]: a server and an agent on loopback, as the local stack runs them, or in cluster
//!   mode on the kube fixture.
//! - [`client`]: the agent's `api` CLI run as this user, another user or from a cgroup, and
//!   an HTTP GET for metrics.
//! - [`cgroup`]: pod-shaped cgroups (as the kubelet makes them), removed on drop.
//! - [`cluster`]: the kube fixture seeded as an installed cluster (RBAC, CA Secret, bundle
//!   ConfigMap, the agent's pod), and pods, Services and EndpointSlices for tests to add.
//! - [`csi`]: the agent as the CSI node plugin on the kube fixture, kubelet-shaped publish
//!   requests and target paths, and a guard that removes a test's leftover mounts.
//! - [`proxy`]: `lanyard-proxy` processes as other uids, in namespaces or cgroups; their tap.
//! - [`echo`]: an echo application (optionally server-speaks-first) served by test threads.
//! - [`probe`]: an mTLS client with an SVID from a real agent, seeing what proxies present.
//! - [`python`]: the Python interoperability clients (py-spiffe, PyJWT) and their JSON lines.
//! - [`wait`]: waiting on a condition with a deadline (`eventually`).
//! - [`netns`]: network namespaces joined by veth, with the init container's redirect rules.

pub mod cgroup;
pub mod client;
pub mod cluster;
pub mod csi;
pub mod echo;
pub mod netns;
pub mod probe;
pub mod process;
pub mod proxy;
pub mod python;
pub mod stack;
pub mod wait;

use std::path::PathBuf;

/// Every wait in the end-to-end tests is bounded by this.
pub const DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// The path of workspace binary `name`, next to this test executable's profile directory.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-exe> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, which ./scripts/test does)",
        path.display()
    );
    path
}
