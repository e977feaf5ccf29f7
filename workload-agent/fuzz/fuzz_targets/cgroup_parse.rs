//! Fuzzes `/proc/<pid>/cgroup` parsing: it must never panic, and whatever pod and container
//! it reports must be valid selector values (`PodContainer::selectors` asserts that).
#![no_main]

use lanyard_agent::attest::cgroup::parse_cgroup_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_cgroup_file(text) {
        Ok(Some(pod)) => {
            let [uid, cid] = pod.selectors();
            assert_eq!(uid.value(), pod.pod_uid());
            assert_eq!(cid.value(), pod.container_id());
            // A pod is only ever reported from a line that names `kubepods`.
            assert!(text.contains("kubepods"));
        }
        Ok(None) => {}
        Err(e) => {
            // Every refusal has a label and a bounded message.
            assert!(!e.label().is_empty());
            assert!(e.to_string().len() < 1024);
        }
    }
});
