//! DESIGN §2 end to end, for options declared the way every daemon's `RunArgs` declares them:
//! clap reads `--flag` and then `LANYARD_<FLAG>` (comma separated for repeatable flags),
//! [`fill_unset!`] fills the rest from the `--config` file, and a refused value names where it
//! came from.
//!
//! This binary holds a single test because it sets process environment variables, which is
//! only sound while no other thread reads the environment.

use std::path::PathBuf;

use clap::Parser;
use lanyard_daemon::config_file;
use lanyard_daemon::config_merge::{OptionError, Origin, Provenance, invalid};
use lanyard_daemon::fill_unset;

#[derive(Parser, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[arg(long, env = "LANYARD_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    #[arg(long, env = "LANYARD_TEST_NAME")]
    test_name: Option<String>,
    #[arg(long, env = "LANYARD_TEST_ZONE")]
    test_zone: Option<String>,
    #[arg(long, env = "LANYARD_TEST_TTL")]
    test_ttl: Option<String>,
    #[arg(long, env = "LANYARD_TEST_PEER", value_delimiter = ',')]
    #[serde(default)]
    test_peer: Vec<String>,
}

/// What a daemon's `resolve()` does: merge the file under flags and variables, then validate.
fn resolve(args: &[&str]) -> Result<Options, OptionError> {
    let mut options = Options::try_parse_from(std::iter::once("d").chain(args.iter().copied()))
        .expect("the flags parse");
    let mut provenance = Provenance::default();
    if let Some(path) = options.config.clone() {
        let file: Options = config_file::read(&path)?;
        fill_unset!(provenance, Origin::File(path), options, file;
            test_name, test_zone, test_ttl, test_peer);
    }
    match options.test_ttl.as_deref() {
        Some(ttl) if !ttl.ends_with('s') => {
            Err(provenance.name_origin(invalid("test-ttl", format!("{ttl:?} is not seconds"))))
        }
        _ => Ok(options),
    }
}

fn set_env(name: &str, value: Option<&str>) {
    // SAFETY: the only test in this binary; no other thread reads the environment.
    unsafe {
        match value {
            Some(value) => std::env::set_var(name, value),
            None => std::env::remove_var(name),
        }
    }
}

#[test]
fn flag_beats_env_beats_file_and_refusals_name_their_source() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.toml");
    std::fs::write(
        &path,
        "test_name = \"file\"\ntest_zone = \"file\"\ntest_ttl = \"5m\"\ntest_peer = [\"f1\", \"f2\"]\n",
    )
    .unwrap();
    let config = path.to_str().unwrap();
    set_env("LANYARD_CONFIG", Some(config));
    set_env("LANYARD_TEST_NAME", Some("env"));
    set_env("LANYARD_TEST_PEER", Some("e1,e2"));
    set_env("LANYARD_TEST_TTL", None);
    set_env("LANYARD_TEST_ZONE", None);

    // The file's ttl is refused, and the refusal names the file and key.
    let err = resolve(&[]).unwrap_err().to_string();
    let in_file = format!("(from `test_ttl` in {config})");
    assert!(
        err.starts_with("--test-ttl: \"5m\"") && err.ends_with(&in_file),
        "{err}"
    );

    // Flag over env over file; repeatable options from the env are comma split.
    let options = resolve(&["--test-name", "flag", "--test-ttl", "10s"]).unwrap();
    assert_eq!(options.test_name.as_deref(), Some("flag"));
    assert_eq!(options.test_zone.as_deref(), Some("file"));
    assert_eq!(options.test_peer, ["e1", "e2"]);
    let options = resolve(&["--test-ttl", "10s"]).unwrap();
    assert_eq!(options.test_name.as_deref(), Some("env"));
    set_env("LANYARD_TEST_PEER", None);
    let options = resolve(&["--test-ttl", "10s"]).unwrap();
    assert_eq!(options.test_peer, ["f1", "f2"]);

    // A bad value from the environment says so.
    set_env("LANYARD_TEST_TTL", Some("1h"));
    let err = resolve(&[]).unwrap_err().to_string();
    assert!(
        err.ends_with("(from the flag or LANYARD_TEST_TTL)"),
        "{err}"
    );

    // An unknown key in the file is refused, naming it.
    std::fs::write(&path, "test_nmae = \"x\"\n").unwrap();
    let err = resolve(&[]).unwrap_err().to_string();
    assert!(err.contains("test_nmae"), "{err}");
}
