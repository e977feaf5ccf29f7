//! Table tests of `/proc/<pid>/cgroup` parsing over fixture files, one per kubelet layout
//! (tests/data/cgroup/), plus the refusals: spoofed and inconsistent paths, oversized input.

use std::path::PathBuf;

use lanyard_agent::attest::cgroup::{
    CgroupError, MAX_CGROUP_FILE_LEN, MAX_CGROUP_LINES, PodContainer, parse_cgroup_file,
};

const UID: &str = "0d3a7b5e-6c1f-4e8a-9b2d-3f4e5a6b7c8d";
const CID: &str = "5f1c2e3d4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const STATIC_UID: &str = "0123456789abcdef0123456789abcdef";

enum Expect {
    Pod(&'static str),
    NoPod,
    Refused(&'static str),
}

fn fixture(name: &str) -> String {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests/data/cgroup", name]
        .iter()
        .collect();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_layout_fixture() {
    use Expect::*;
    let table = [
        ("v1-cgroupfs-besteffort.txt", Pod(UID)),
        ("v1-cgroupfs-guaranteed.txt", Pod(UID)),
        ("v1-cgroupfs-crio.txt", Pod(UID)),
        ("v1-cgroupfs-static-pod.txt", Pod(STATIC_UID)),
        ("v1-systemd-burstable-containerd.txt", Pod(UID)),
        ("v1-systemd-docker.txt", Pod(UID)),
        ("v2-systemd-besteffort-containerd.txt", Pod(UID)),
        ("v2-systemd-guaranteed-containerd.txt", Pod(UID)),
        ("v2-systemd-crio.txt", Pod(UID)),
        ("v2-cgroupfs-containerd.txt", Pod(UID)),
        ("v2-cgroupns-relative.txt", Pod(UID)),
        ("nested-kind-v1-cgroupfs.txt", Pod(UID)),
        ("nested-kind-v2-systemd.txt", Pod(UID)),
        ("hybrid-one-controller-in-pod.txt", Pod(UID)),
        // The pod found first on the outermost anchored path; a container's own
        // pod-shaped sub-cgroups do not change it.
        ("spoof-inside-container.txt", Pod(UID)),
        ("host-v1.txt", NoPod),
        ("host-v2.txt", NoPod),
        ("spoof-user-delegated-v2.txt", NoPod),
        (
            "v2-systemd-crio-conmon.txt",
            Refused("cgroup_not_a_container"),
        ),
        ("pod-pause-level.txt", Refused("cgroup_not_a_container")),
        ("inconsistent-two-pods.txt", Refused("cgroup_inconsistent")),
        (
            "inconsistent-two-containers.txt",
            Refused("cgroup_inconsistent"),
        ),
        ("bad-pod-uid.txt", Refused("cgroup_bad_pod_uid")),
        ("bad-container-id.txt", Refused("cgroup_bad_container_id")),
        ("malformed-line.txt", Refused("cgroup_malformed")),
    ];
    // Every fixture file is in the table, so none goes untested.
    let mut on_disk: Vec<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/cgroup"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
    on_disk.sort();
    let mut in_table: Vec<String> = table.iter().map(|(n, _)| n.to_string()).collect();
    in_table.sort();
    assert_eq!(on_disk, in_table);

    for (name, expect) in table {
        let got = parse_cgroup_file(&fixture(name));
        match (expect, got) {
            (Pod(uid), Ok(Some(pc))) => {
                assert_eq!(pc, PodContainer::new(uid, CID).unwrap(), "{name}");
                assert_eq!(pc.pod_uid(), uid, "{name}");
                assert_eq!(pc.container_id(), CID, "{name}");
            }
            (NoPod, Ok(None)) => {}
            (Refused(label), Err(e)) => {
                assert_eq!(e.label(), label, "{name}: {e}");
                assert!(!e.to_string().is_empty());
            }
            (_, got) => panic!("{name}: unexpected {got:?}"),
        }
    }
}

#[test]
fn selectors_of_a_pod_container() {
    let pc = parse_cgroup_file(&fixture("v2-systemd-besteffort-containerd.txt"))
        .unwrap()
        .unwrap();
    let [uid, cid] = pc.selectors();
    assert_eq!(uid.to_string(), format!("k8s:pod-uid:{UID}"));
    assert_eq!(cid.to_string(), format!("k8s:container-id:{CID}"));
}

#[test]
fn inconsistency_names_both_lines() {
    let err = parse_cgroup_file(&fixture("inconsistent-two-pods.txt")).unwrap_err();
    match &err {
        CgroupError::Inconsistent {
            first_line,
            second_line,
            ..
        } => assert_eq!((*first_line, *second_line), (1, 6)),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("11111111-2222"), "{err}");
}

#[test]
fn input_is_bounded() {
    let line = "1:name=systemd:/\n";
    let too_many = line.repeat(MAX_CGROUP_LINES + 1);
    assert_eq!(parse_cgroup_file(&too_many), Err(CgroupError::TooManyLines));
    assert_eq!(parse_cgroup_file(&line.repeat(MAX_CGROUP_LINES)), Ok(None));

    let huge = format!("0::/{}\n", "a".repeat(MAX_CGROUP_FILE_LEN));
    assert_eq!(parse_cgroup_file(&huge), Err(CgroupError::TooLarge));
    // A bad line quotes a bounded part of the path.
    let long_bad = format!("0::/kubepods/pod{}/{CID}\n", "x".repeat(10_000));
    let err = parse_cgroup_file(&long_bad).unwrap_err();
    assert_eq!(err.label(), "cgroup_bad_pod_uid");
    assert!(err.to_string().len() < 300, "{err}");
}

#[test]
fn empty_and_root_only_files_are_no_pod() {
    assert_eq!(parse_cgroup_file(""), Ok(None));
    assert_eq!(parse_cgroup_file("0::/\n"), Ok(None));
}
