//! Static entries that follow the `--config` file of a running data-dir server: an edit is
//! put in force, a broken edit is refused with the old entries kept, SIGHUP reads the file
//! again, and `entry show` (the admin socket and the real CLI) reports all of it.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::*;
use lanyard_proto::identity::v1 as wire;
use lanyard_proto::identity::v1::attest_node_request::Method;
use lanyard_server::admin::{AdminRequest, AdminResponse, EntriesView, ReloadView};
use lanyard_server::config::RunArgs;

fn entry(id: &str, nodes: &[&str], extra: &str) -> String {
    let nodes: Vec<String> = nodes.iter().map(|n| format!("{n:?}")).collect();
    format!(
        "[[entries]]\nspiffe_id = \"spiffe://example.org{id}\"\nselectors = [\"unix:uid:1001\"]\nnodes = [{}]\n{extra}\n",
        nodes.join(", ")
    )
}

struct Fixture {
    _dir: tempfile::TempDir,
    server: TestServer,
    config: PathBuf,
}

/// A data-dir server whose `--config` file holds `entries`, with a health listener.
async fn start(entries: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let config = data_dir.with_extension("toml");
    std::fs::write(&config, entries).unwrap();
    let server = common::start(
        RunArgs {
            config: Some(config.clone()),
            trust_domain: Some(TD.into()),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            health: Some("127.0.0.1:0".parse().unwrap()),
            data_dir: Some(data_dir),
            ..Default::default()
        },
        None,
    )
    .await;
    Fixture {
        _dir: dir,
        config,
        server,
    }
}

impl Fixture {
    async fn show(&self, node: Option<&str>) -> EntriesView {
        match self
            .server
            .admin(AdminRequest::EntryShow {
                node: node.map(Into::into),
            })
            .await
        {
            AdminResponse::Entries(view) => view,
            other => panic!("entry show: {other:?}"),
        }
    }

    /// `entry show` until `done` holds, or a panic at the deadline.
    async fn wait_for(&self, what: &str, done: impl Fn(&EntriesView) -> bool) -> EntriesView {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let view = self.show(None).await;
            if done(&view) {
                return view;
            }
            assert!(Instant::now() < deadline, "{what}: {view:#?}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Replaces the file the way an editor saving in place does.
    fn write(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }
}

fn ids(view: &EntriesView) -> Vec<&str> {
    view.entries.iter().map(|e| e.spiffe_id.as_str()).collect()
}

fn last(view: &EntriesView) -> &ReloadView {
    view.last_reload.as_ref().expect("a reload was recorded")
}

/// `lanyard-server entry show` as an operator runs it (awaited: the server answering it runs
/// on this test's runtime).
async fn cli_show(data_dir: &Path, args: &[&str]) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lanyard-server"))
        .args(["entry", "show", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env_remove("LANYARD_NODE")
        .env_remove("LANYARD_OUTPUT")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn edits_reload_broken_edits_are_refused_and_sighup_reads_again() {
    let f = start(&entry(
        "/web",
        &["node-1"],
        "dns_names = [\"web.example.org\"]",
    ))
    .await;
    let view = f.show(None).await;
    assert_eq!(ids(&view), ["spiffe://example.org/web"]);
    assert_eq!(view.entries[0].dns_names, ["web.example.org"]);
    assert_eq!(view.last_reload, None);

    // An edit is put in force.
    let edited = entry("/web2", &["node-1", "node-2"], "x509_ttl = \"10m\"")
        + &entry("/db", &["node-2"], "");
    f.write(&edited);
    let view = f.wait_for("the edit is in force", |v| v.total == 2).await;
    assert_eq!(
        ids(&view),
        ["spiffe://example.org/web2", "spiffe://example.org/db"]
    );
    assert_eq!(view.entries[0].x509_ttl_secs, Some(600));
    assert_eq!(view.entries[0].dns_names, Vec::<String>::new());
    assert_eq!(
        (last(&view).result.as_str(), last(&view).entries),
        ("reloaded", Some(2))
    );
    assert_eq!(
        ids(&f.show(Some("node-1")).await),
        ["spiffe://example.org/web2"]
    );
    assert_eq!(ids(&f.show(Some("node-2")).await).len(), 2);

    // The CLI prints the same, as text and as JSON.
    let text = cli_show(&f.server.data_dir, &["--node", "node-2"]).await;
    assert!(
        text.contains("spiffe://example.org/db\n  selectors: unix:uid:1001\n  nodes:     node-2\n")
            && text.contains("x509 ttl:  10m\n")
            && text.contains("2 of 2 entries may be served on node node-2")
            && text.contains(": reloaded, 2 entries"),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&cli_show(&f.server.data_dir, &["--output", "json"]).await).unwrap();
    assert_eq!(json["entries"][1]["spiffe_id"], "spiffe://example.org/db");
    assert_eq!(json["last_reload"]["result"], "reloaded");

    // A broken edit (the third entry has no nodes): refused, the entries in force stay.
    f.write(&(edited.clone() + "[[entries]]\nspiffe_id = \"spiffe://example.org/broken\"\nselectors = [\"unix:uid:1\"]\n"));
    let view = f
        .wait_for("the broken edit is refused", |v| {
            v.last_reload
                .as_ref()
                .is_some_and(|r| r.result == "refused")
        })
        .await;
    assert_eq!(
        ids(&view),
        ["spiffe://example.org/web2", "spiffe://example.org/db"]
    );
    let refusal = last(&view);
    assert_eq!(refusal.refusal_kind.as_deref(), Some("invalid"));
    assert!(
        refusal
            .refusal
            .as_deref()
            .unwrap()
            .starts_with("static entry 2 (spiffe://example.org/broken): nodes is required"),
        "{refusal:?}"
    );
    let text = cli_show(&f.server.data_dir, &[]).await;
    assert!(
        text.contains("refused (invalid): static entry 2 (spiffe://example.org/broken)")
            && text.contains("the entries above stay in force"),
        "{text}"
    );

    // Not TOML at all: refused as such.
    f.write("[[entries]\n");
    let view = f
        .wait_for("the unparsable file is refused", |v| {
            v.last_reload
                .as_ref()
                .is_some_and(|r| r.refusal_kind.as_deref() == Some("parse"))
        })
        .await;
    assert_eq!(view.total, 2);

    // SIGHUP reads the (still broken) file again, at once.
    let before = last(&view).at_unix_secs;
    // SAFETY: kill with our own pid and a signal the server under test handles (the reloader
    // registered its SIGHUP handler before the server announced its listener).
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGHUP) }, 0);
    let view = f
        .wait_for("SIGHUP is answered", |v| {
            v.last_reload
                .as_ref()
                .is_some_and(|r| r.trigger == "sighup")
        })
        .await;
    let r = last(&view);
    assert_eq!(
        (r.result.as_str(), r.refusal_kind.as_deref()),
        ("refused", Some("parse"))
    );
    assert!(r.at_unix_secs >= before);
    assert_eq!(view.total, 2);

    // Every reading is counted.
    let metrics = http_get(f.server.health.unwrap(), "/metrics").await;
    for line in [
        "lanyard_server_entries_reload_total{result=\"reloaded\"} 1",
        "lanyard_server_entries_reload_total{result=\"refused\"} 3",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }

    // Fixed again: in force.
    f.write(&entry("/web", &["*"], ""));
    f.wait_for("the fixed file is in force", |v| {
        ids(v) == ["spiffe://example.org/web"]
            && v.last_reload
                .as_ref()
                .is_some_and(|r| r.result == "reloaded")
    })
    .await;
}

/// The DNS SANs of a minted X.509-SVID.
fn dns_sans(result: &wire::MintX509SvidResult) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Some(wire::mint_x509_svid_result::Result::Svid(svid)) = &result.result else {
        panic!("not minted: {result:?}")
    };
    let (_, cert) = x509_parser::parse_x509_certificate(&svid.cert_chain[0][..]).unwrap();
    let san = cert.subject_alternative_name().unwrap().expect("has SANs");
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_string()),
            _ => None,
        })
        .collect()
}

/// What an agent may mint, and the DNS names it carries, follow the reloaded entries.
#[tokio::test]
async fn a_reload_changes_what_is_minted() {
    let f = start(&entry(
        "/old",
        &["node-1"],
        "dns_names = [\"old.example.org\"]",
    ))
    .await;
    let caller = Caller::new(f.server.bundle().await);
    let token = f.server.join_token("node-1").await;
    caller
        .attest(f.server.addr, Method::JoinToken(token))
        .await
        .unwrap();
    let mint = |ids: [&'static str; 2]| {
        let caller = &caller;
        let addr = f.server.addr;
        async move {
            let requests = ids.iter().map(|id| entry_request(id, new_csr())).collect();
            caller
                .client(addr)
                .await
                .mint_x509svi_ds(wire::MintX509SvidsRequest { requests })
                .await
                .unwrap()
                .into_inner()
                .results
        }
    };
    let outcomes =
        |results: &[wire::MintX509SvidResult]| results.iter().map(outcome).collect::<Vec<_>>();
    let both = ["spiffe://example.org/old", "spiffe://example.org/new"];
    let results = mint(both).await;
    assert_eq!(
        outcomes(&results),
        [
            Ok("spiffe://example.org/old".to_owned()),
            Err("entry_not_found".to_owned())
        ]
    );
    assert_eq!(dns_sans(&results[0]), ["old.example.org"]);
    f.write(&entry(
        "/new",
        &["node-1"],
        "dns_names = [\"new.example.org\", \"api.new.example.org\"]",
    ));
    f.wait_for("the edit is in force", |v| {
        ids(v) == ["spiffe://example.org/new"]
    })
    .await;
    let results = mint(both).await;
    assert_eq!(
        outcomes(&results),
        [
            Err("entry_not_found".to_owned()),
            Ok("spiffe://example.org/new".to_owned())
        ]
    );
    assert_eq!(
        dns_sans(&results[1]),
        ["new.example.org", "api.new.example.org"]
    );
}
