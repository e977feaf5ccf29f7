//! `lanyard-agent api ...` against the real Workload API on a Unix socket.

mod workload_api_support;

use std::os::unix::fs::PermissionsExt as _;

use clap::Parser as _;
use lanyard_agent::api_cli::{self, ApiCommand};
use lanyard_agent::workload_api::Limits;
use lanyard_client::endpoint::{DEFAULT_SOCKET, socket_path};
use lanyard_svid::bundle::certificates_from_pem;
use workload_api_support::*;

/// Parses `lanyard-agent api ARGS...` as the binary would.
#[derive(clap::Parser)]
struct Cli {
    #[command(subcommand)]
    api: ApiCommand,
}

fn parse(args: &[&str]) -> ApiCommand {
    Cli::try_parse_from(std::iter::once("api").chain(args.iter().copied()))
        .unwrap()
        .api
}

async fn run(args: &[&str]) -> anyhow::Result<String> {
    let mut out = Vec::new();
    within("the CLI", api_cli::run_to(parse(args), &mut out)).await?;
    Ok(String::from_utf8(out).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_write_jwt_validate_and_bundles() {
    install_ring();
    let pki = Pki::new();
    let web = pki.id("/web");
    // Federating with partner.test, so `fetch bundles` lists it.
    let identities = FakeIdentities::federating(pki, std::slice::from_ref(&web));
    let agent = Agent::start(identities.clone(), Limits::default()).await;
    let socket = format!("unix://{}", agent.socket.display());

    // fetch x509 --write: the three files, the key 0600.
    let out_dir = agent.dir.path().join("out");
    let printed = run(&[
        "fetch",
        "x509",
        "--socket",
        &socket,
        "--write",
        out_dir.to_str().unwrap(),
    ])
    .await
    .unwrap();
    assert!(
        printed.starts_with("spiffe://example.org/web expires "),
        "{printed}"
    );
    let issued = identities.svid_of(&web);
    let chain = certificates_from_pem(&std::fs::read(out_dir.join("svid.pem")).unwrap()).unwrap();
    assert_eq!(chain, issued.chain());
    let key_meta = std::fs::metadata(out_dir.join("svid.key")).unwrap();
    assert_eq!(key_meta.permissions().mode() & 0o777, 0o600);
    let key_pem = std::fs::read_to_string(out_dir.join("svid.key")).unwrap();
    assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    let bundle =
        certificates_from_pem(&std::fs::read(out_dir.join("bundle.pem")).unwrap()).unwrap();
    assert_eq!(bundle, [identities.pki.root.cert_der().clone()]);

    // fetch jwt, then validate it; a wrong audience fails.
    let token = run(&["fetch", "jwt", "--socket", &socket, "--audience", "db"])
        .await
        .unwrap();
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "{token}");
    let validated = run(&[
        "validate",
        "jwt",
        "--socket",
        &socket,
        "--audience",
        "db",
        token,
    ])
    .await
    .unwrap();
    assert!(
        validated.starts_with("valid: spiffe://example.org/web\n"),
        "{validated}"
    );
    let claims: serde_json::Value =
        serde_json::from_str(validated.lines().nth(1).unwrap()).unwrap();
    assert_eq!(claims["aud"], serde_json::json!(["db"]));
    let refused = run(&[
        "validate",
        "jwt",
        "--socket",
        &socket,
        "--audience",
        "web",
        token,
    ])
    .await
    .unwrap_err();
    assert!(refused.to_string().contains("InvalidArgument"), "{refused}");

    // fetch bundles: both trust domains, with their counts.
    let bundles = run(&["fetch", "bundles", "--socket", &socket])
        .await
        .unwrap();
    assert_eq!(
        bundles,
        "spiffe://example.org x509_authorities=1 jwt_authorities=1\n\
         spiffe://partner.test x509_authorities=1 jwt_authorities=0\n"
    );
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_identity_and_no_agent_are_clear_errors() {
    install_ring();
    let identities = FakeIdentities::new(Pki::new(), &[]);
    let agent = Agent::start(identities, Limits::default()).await;
    let socket = agent.socket.display().to_string();

    let err = run(&["fetch", "x509", "--socket", &socket])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no identity issued"), "{err}");

    let missing = agent.dir.path().join("nothing.sock");
    let err = run(&[
        "fetch",
        "bundles",
        "--timeout",
        "5s",
        "--socket",
        missing.to_str().unwrap(),
    ])
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("connecting to"), "{err:#}");
    agent.stop().await.unwrap();
}

#[test]
fn socket_from_the_environment() {
    // `--socket` wins; then LANYARD_SOCKET (clap's env); then SPIFFE_ENDPOINT_SOCKET.
    assert_eq!(
        socket_path(Some("unix:///x/y.sock")).unwrap(),
        std::path::PathBuf::from("/x/y.sock")
    );
    // SAFETY: this test binary's other tests do not read these variables.
    unsafe { std::env::set_var("SPIFFE_ENDPOINT_SOCKET", "unix:///from/env.sock") };
    assert_eq!(
        socket_path(None).unwrap(),
        std::path::PathBuf::from("/from/env.sock")
    );
    // SAFETY: as above.
    unsafe { std::env::remove_var("SPIFFE_ENDPOINT_SOCKET") };
    assert_eq!(
        socket_path(None).unwrap(),
        std::path::PathBuf::from(DEFAULT_SOCKET)
    );
}
