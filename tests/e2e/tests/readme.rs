//! The README's configuration reference names only flags the binaries really have: every
//! `--flag` in a bullet about a command must appear in that binary's `--help` output.

use std::collections::BTreeSet;
use std::process::Command;

use lanyard_e2e::binary;

/// The `--help` texts of every subcommand the README documents, per binary.
const HELPS: &[(&str, &[&[&str]])] = &[
    (
        "lanyard-server",
        &[
            &["run"],
            &["token", "generate"],
            &["bundle", "show"],
            &["agent", "evict"],
            &["entry", "show"],
        ],
    ),
    (
        "lanyard-agent",
        &[
            &["run"],
            &["api", "fetch", "x509"],
            &["api", "fetch", "jwt"],
            &["api", "fetch", "bundles"],
            &["api", "validate", "jwt"],
            &["api", "resolve"],
        ],
    ),
    ("lanyard-proxy", &[&["run"], &["tap"]]),
    (
        "lanyard",
        &[
            &["install"],
            &["images"],
            &["inject"],
            &["check"],
            &["tap"],
            &["identities"],
            &["ca", "new-root"],
            &["ca", "init"],
            &["ca", "status"],
            &["ca", "issue-intermediate"],
            &["ca", "rotate-root", "add"],
            &["ca", "rotate-root", "switch"],
            &["ca", "rotate-root", "retire"],
            &["ca", "rotate-root", "abort"],
        ],
    ),
];

fn flags(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("--") {
        let start = i + at;
        let mut end = start + 2;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'-')
        {
            end += 1;
        }
        if end > start + 2 {
            out.insert(text[start..end].to_owned());
        }
        i = end;
    }
    out
}

#[test]
fn readme_flags_exist() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let reference = readme
        .split("## Configuration")
        .nth(1)
        .expect("README has a Configuration section");
    // Bullets start with "- `BINARY ..." and run until the next bullet.
    let mut checked = 0;
    for bullet in reference.split("\n- `").skip(1) {
        let name = bullet
            .split_whitespace()
            .next()
            .unwrap()
            .trim_end_matches('`');
        let (_, commands) = HELPS
            .iter()
            .find(|(b, _)| *b == name)
            .unwrap_or_else(|| panic!("unknown binary {name} in the README"));
        let mut known = BTreeSet::new();
        for args in *commands {
            let out = Command::new(binary(name))
                .args(*args)
                .arg("--help")
                .output()
                .unwrap();
            assert!(out.status.success(), "{name} {args:?} --help failed");
            known.extend(flags(&String::from_utf8_lossy(&out.stdout)));
        }
        for flag in flags(bullet) {
            assert!(
                known.contains(&flag),
                "README documents {flag} for {name}, which its --help does not list"
            );
            checked += 1;
        }
    }
    assert!(
        checked > 30,
        "only {checked} flags found: is the Configuration section still there?"
    );
}
