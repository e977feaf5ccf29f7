//! Fuzzes what lanyard-cni parses from outside: the network configuration on stdin, CNI_ARGS,
//! and the node's conflist. None may panic; and what they accept must hold together:
//! - a configuration that parses has a supported cniVersion, an absolute kubeconfig, a
//!   known log level, a bounded timeout, and a prevResult that is a JSON object; its error
//!   results are JSON whatever the input;
//! - CNI_ARGS that parse hold no empty key, and a pod only with both names non-empty;
//! - a conflist the entry is added to still parses, ends with exactly one lanyard-cni entry,
//!   and adding again changes nothing; removing it leaves a conflist without one.
#![no_main]

#[path = "../../src/spec.rs"]
#[allow(dead_code)]
mod spec;

#[path = "../../src/conflist.rs"]
#[allow(dead_code)]
mod conflist;

use conflist::{Edit, Kind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The configuration.
    match spec::parse_config(data) {
        Ok(conf) => {
            assert!(spec::SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()));
            assert!(conf.kubeconfig.is_absolute());
            assert!(spec::LOG_LEVELS.contains(&conf.log_level.as_str()));
            assert!(conf.kube_timeout.as_secs() >= 1);
            assert!(conf.kube_timeout.as_secs() <= spec::MAX_KUBE_TIMEOUT_SECONDS);
            if let Some(prev) = &conf.prev_result {
                let value: serde_json::Value = serde_json::from_str(prev.get()).unwrap();
                assert!(value.is_object());
            }
        }
        Err(e) => {
            let version = spec::answer_version(data);
            let result: serde_json::Value = serde_json::from_str(&e.to_json(&version)).unwrap();
            assert!(result["code"].is_u64());
        }
    }

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    // CNI_ARGS.
    if let Ok(args) = spec::parse_cni_args(text) {
        assert!(args.keys().all(|k| !k.is_empty()));
        if let Some((ns, name)) = spec::pod_of(&args) {
            assert!(!ns.is_empty() && !name.is_empty());
        }
    }

    // The conflist.
    let entry = conflist::entry("/etc/cni/net.d/lanyard-cni.d/kubeconfig", "info");
    for kind in [Kind::List, Kind::Single] {
        let Ok(edit) = conflist::with_entry(kind, text, &entry) else {
            continue;
        };
        let written = match edit {
            Edit::Write(written) => written,
            Edit::Unchanged => {
                assert_eq!(kind, Kind::List);
                text.to_owned()
            }
        };
        assert!(conflist::has_entry(&written), "{written}");
        let value: serde_json::Value = serde_json::from_str(&written).unwrap();
        let ours = value["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["type"] == spec::PLUGIN_TYPE)
            .count();
        assert_eq!(ours, 1, "{written}");
        assert_eq!(
            conflist::with_entry(Kind::List, &written, &entry).unwrap(),
            Edit::Unchanged
        );
        let removed = conflist::without_entry(&written).unwrap();
        assert!(!conflist::has_entry(&removed));
        assert_eq!(conflist::without_entry(&removed), None);
    }
});
