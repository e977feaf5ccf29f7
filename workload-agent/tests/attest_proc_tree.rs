//! Attestation against a fixture `/proc` tree (the `proc_root` parameter): the pod selectors
//! a kubelet-shaped cgroup file yields, and refusals that are hard to stage with real
//! processes (a zombie, an untrustworthy cgroup file, an oversized stat).

use std::path::Path;

use lanyard_agent::attest::{DigestCache, PeerCred, WorkloadAttestor};
use lanyard_svid::selector::Selector;

const PID: i32 = 4242;
const UID: &str = "0d3a7b5e-6c1f-4e8a-9b2d-3f4e5a6b7c8d";
const CID: &str = "5f1c2e3d4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    /// `<root>/4242/{stat,cgroup,exe}`, with `exe` linking to a small fake binary.
    fn new(state: char, cgroup: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let proc_dir = dir.path().join(PID.to_string());
        std::fs::create_dir(&proc_dir).unwrap();
        let filler: Vec<String> = (4..22).map(|n| n.to_string()).collect();
        std::fs::write(
            proc_dir.join("stat"),
            format!("{PID} (my app) {state} {} 777 0 0\n", filler.join(" ")),
        )
        .unwrap();
        std::fs::write(proc_dir.join("cgroup"), cgroup).unwrap();
        let binary = dir.path().join("app-binary");
        std::fs::write(&binary, b"#!fake binary").unwrap();
        std::os::unix::fs::symlink(&binary, proc_dir.join("exe")).unwrap();
        Self { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn attestor(&self) -> WorkloadAttestor {
        WorkloadAttestor::new(self.root(), DigestCache::new(8))
    }
}

fn cred() -> PeerCred {
    PeerCred::new(Some(PID), 1001, 1001)
}

#[tokio::test]
async fn pod_cgroup_yields_pod_selectors() {
    let tree = Tree::new(
        'S',
        &format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{CID}.scope\n",
            UID.replace('-', "_")
        ),
    );
    let attestor = tree.attestor();
    let pinned = attestor.pin(cred()).unwrap();
    assert_eq!(pinned.start_time, Some(777));
    let attested = attestor.attest(pinned).await.unwrap();

    let pod = attested.pod.as_ref().unwrap();
    assert_eq!((pod.pod_uid(), pod.container_id()), (UID, CID));
    let binary = tree.root().join("app-binary");
    let digest = ring::digest::digest(&ring::digest::SHA256, b"#!fake binary");
    let mut raw = [0u8; 32];
    raw.copy_from_slice(digest.as_ref());
    let required = [
        Selector::parse("unix:uid:1001").unwrap(),
        Selector::parse("unix:gid:1001").unwrap(),
        Selector::parse(&format!("unix:path:{}", binary.display())).unwrap(),
        Selector::sha256(&raw),
        Selector::parse(&format!("k8s:pod-uid:{UID}")).unwrap(),
        Selector::parse(&format!("k8s:container-id:{CID}")).unwrap(),
    ];
    assert!(
        attested.selectors.matches_all(&required),
        "{:?}",
        attested.selectors
    );
}

#[tokio::test]
async fn refusals_have_their_labels() {
    let zombie = Tree::new('Z', "0::/\n");
    let err = zombie.attestor().attest(cred()).await.unwrap_err();
    assert_eq!(err.label(), "process_gone", "{}", err.message());

    let two_pods = Tree::new(
        'S',
        &format!(
            "1:pids:/kubepods/pod{UID}/{CID}\n0::/kubepods/pod11111111-2222-3333-4444-555555555555/{CID}\n"
        ),
    );
    let err = two_pods.attestor().attest(cred()).await.unwrap_err();
    assert_eq!(err.label(), "cgroup_inconsistent");
    assert!(err.message().contains("process 4242"), "{}", err.message());

    let missing = Tree::new('S', "0::/\n");
    let err = missing
        .attestor()
        .attest(PeerCred::new(Some(PID + 1), 0, 0))
        .await
        .unwrap_err();
    assert_eq!(err.label(), "process_gone");

    let huge = Tree::new('S', "0::/\n");
    std::fs::write(
        huge.root().join(PID.to_string()).join("stat"),
        "x".repeat(lanyard_agent::attest::process::MAX_STAT_LEN + 1),
    )
    .unwrap();
    let err = huge.attestor().attest(cred()).await.unwrap_err();
    assert_eq!(err.label(), "proc_too_large");
}
