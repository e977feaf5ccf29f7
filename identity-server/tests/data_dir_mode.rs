//! lanyard-server in data-dir mode, over real gRPC and TLS: join-token attestation, minting
//! and its refusals, renewal, eviction, the feeds, and a restart keeping the CA.

mod common;

use std::time::SystemTime;

use common::*;
use lanyard_proto::identity::v1 as wire;
use lanyard_proto::identity::v1::attest_node_request::Method;
use lanyard_server::admin::{AdminRequest, AdminResponse};
use lanyard_svid::tls::ExactId;
use lanyard_svid::{PeerRole, SpiffeId, verify_peer};
use tonic::Code;

const ENTRIES: &str = r#"
[[entries]]
spiffe_id = "spiffe://example.org/web"
selectors = ["unix:uid:1001"]
nodes = ["node-1"]

[[entries]]
spiffe_id = "spiffe://example.org/db"
selectors = ["unix:uid:1002"]
nodes = ["node-2"]

[[entries]]
spiffe_id = "spiffe://example.org/short"
selectors = ["unix:uid:1003"]
nodes = ["*"]
x509_ttl = "2m"
"#;

async fn server() -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().unwrap();
    let server = start_data_dir(&dir.path().join("data"), ENTRIES).await;
    (dir, server)
}

/// An attested agent for `node`.
async fn agent(server: &TestServer, node: &str) -> Caller {
    let caller = Caller::new(server.bundle().await);
    let token = server.join_token(node).await;
    caller
        .attest(server.addr, Method::JoinToken(token))
        .await
        .unwrap();
    caller
}

#[tokio::test]
async fn join_token_attests_once_and_names_the_node() {
    let (_dir, server) = server().await;
    let caller = Caller::new(server.bundle().await);
    let token = server.join_token("node-1").await;
    let svid = caller
        .attest(server.addr, Method::JoinToken(token.clone()))
        .await
        .unwrap();
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://example.org/lanyard/agent/join_token/node-1"
    );
    // The node SVID chains to the bundle the server hands out.
    let bundles = caller.store.bundles();
    let id = verify_peer(svid.chain(), &bundles, SystemTime::now(), PeerRole::Client).unwrap();
    assert_eq!(&id, svid.spiffe_id());
    // Single use.
    let again = Caller::new(server.bundle().await);
    let err = again
        .attest(server.addr, Method::JoinToken(token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().starts_with("unknown_token"),
        "{}",
        err.message()
    );
    let err = again
        .attest(server.addr, Method::JoinToken("made-up".into()))
        .await
        .unwrap_err();
    assert!(
        err.message().starts_with("unknown_token"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn a_bad_csr_does_not_burn_the_token() {
    let (_dir, server) = server().await;
    let caller = Caller::new(server.bundle().await);
    let token = server.join_token("node-1").await;
    let err = caller
        .client(server.addr)
        .await
        .attest_node(wire::AttestNodeRequest {
            method: Some(Method::JoinToken(token.clone())),
            csr: b"garbage".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("csr_malformed"),
        "{}",
        err.message()
    );
    caller
        .attest(server.addr, Method::JoinToken(token))
        .await
        .expect("token still valid");
}

#[tokio::test]
async fn mints_assigned_entries_and_refuses_the_rest_without_signing() {
    let (_dir, server) = server().await;
    let caller = agent(&server, "node-1").await;
    let mut csr_bad_signature = new_csr();
    let last = csr_bad_signature.len() - 1;
    csr_bad_signature[last] ^= 0x01;
    let ed25519 = {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .der()
            .to_vec()
    };
    let requests = vec![
        entry_request("spiffe://example.org/web", new_csr()),
        entry_request("spiffe://example.org/db", new_csr()),
        entry_request("spiffe://example.org/lanyard/server", new_csr()),
        entry_request("spiffe://example.org/nope", new_csr()),
        entry_request("spiffe://example.org/web", csr_bad_signature),
        entry_request("spiffe://example.org/web", ed25519),
        entry_request(
            "spiffe://example.org/web",
            lanyard_svid::KeyAndCsr::generate(lanyard_svid::KeyAlgorithm::EcdsaP384)
                .unwrap()
                .csr_der,
        ),
        wire::MintX509SvidRequest {
            workload: Some(wire::Workload {
                kind: Some(wire::workload::Kind::Pod(wire::Pod {
                    namespace: "default".into(),
                    name: "web".into(),
                    uid: "u".into(),
                    service_account: "web".into(),
                })),
                entry_pod: None,
            }),
            csr: new_csr(),
        },
    ];
    let response = caller
        .client(server.addr)
        .await
        .mint_x509svi_ds(wire::MintX509SvidsRequest { requests })
        .await
        .unwrap()
        .into_inner();
    let outcomes: Vec<_> = response.results.iter().map(outcome).collect();
    assert_eq!(
        outcomes,
        [
            Ok("spiffe://example.org/web".to_owned()),
            Err("entry_not_assigned_to_node".to_owned()),
            Err("reserved_id".to_owned()),
            Err("entry_not_found".to_owned()),
            Err("csr_bad_signature".to_owned()),
            Err("csr_unsupported_key".to_owned()),
            Ok("spiffe://example.org/web".to_owned()),
            Err("pods_need_k8s_node".to_owned()),
        ]
    );
    // The issued SVID verifies and lives as configured (1 h default).
    let wire::mint_x509_svid_result::Result::Svid(svid) =
        response.results[0].result.clone().unwrap()
    else {
        unreachable!()
    };
    let chain: Vec<_> = svid.cert_chain.into_iter().map(Into::into).collect();
    let id = verify_peer(
        &chain,
        &caller.store.bundles(),
        SystemTime::now(),
        PeerRole::Server,
    )
    .unwrap();
    assert_eq!(id, SpiffeId::parse("spiffe://example.org/web").unwrap());
    let lifetime = svid.expires_at - lanyard_proto::convert::unix_seconds(SystemTime::now());
    assert!((3500..=3600).contains(&lifetime), "{lifetime}");
}

#[tokio::test]
async fn entry_ttl_applies() {
    let (_dir, server) = server().await;
    let caller = agent(&server, "node-1").await;
    let response = caller
        .client(server.addr)
        .await
        .mint_x509svi_ds(wire::MintX509SvidsRequest {
            requests: vec![entry_request("spiffe://example.org/short", new_csr())],
        })
        .await
        .unwrap()
        .into_inner();
    let wire::mint_x509_svid_result::Result::Svid(svid) =
        response.results[0].result.clone().unwrap()
    else {
        panic!("refused: {:?}", response.results[0])
    };
    let lifetime = svid.expires_at - lanyard_proto::convert::unix_seconds(SystemTime::now());
    assert!((100..=120).contains(&lifetime), "{lifetime}");
}

#[tokio::test]
async fn oversized_batch_is_refused_whole() {
    let (_dir, server) = server().await;
    let caller = agent(&server, "node-1").await;
    let csr = new_csr();
    let requests = (0..=lanyard_server::service::MAX_BATCH)
        .map(|_| entry_request("spiffe://example.org/web", csr.clone()))
        .collect();
    let err = caller
        .client(server.addr)
        .await
        .mint_x509svi_ds(wire::MintX509SvidsRequest { requests })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("batch_too_large"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn minting_needs_an_agent_svid() {
    let (_dir, server) = server().await;
    // No client certificate at all.
    let anonymous = Caller::new(server.bundle().await);
    let err = anonymous
        .client(server.addr)
        .await
        .mint_x509svi_ds(wire::MintX509SvidsRequest {
            requests: vec![entry_request("spiffe://example.org/web", new_csr())],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // A workload SVID (validly issued, but not an agent's) calling a mint RPC.
    let agent = agent(&server, "node-1").await;
    let key = lanyard_svid::KeyAndCsr::generate(lanyard_svid::KeyAlgorithm::EcdsaP256).unwrap();
    let response = agent
        .client(server.addr)
        .await
        .mint_x509svi_ds(wire::MintX509SvidsRequest {
            requests: vec![entry_request(
                "spiffe://example.org/web",
                key.csr_der.clone(),
            )],
        })
        .await
        .unwrap()
        .into_inner();
    let wire::mint_x509_svid_result::Result::Svid(svid) =
        response.results[0].result.clone().unwrap()
    else {
        unreachable!()
    };
    let workload = Caller::new(server.bundle().await);
    let chain = svid.cert_chain.into_iter().map(Into::into).collect();
    workload
        .store
        .update_svid(lanyard_svid::X509Svid::parse(chain, Some(key.private_key_pkcs8)).unwrap())
        .unwrap();
    let err = workload
        .client(server.addr)
        .await
        .mint_x509svi_ds(wire::MintX509SvidsRequest {
            requests: vec![entry_request("spiffe://example.org/web", new_csr())],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().starts_with("not_an_agent"),
        "{}",
        err.message()
    );
    let err = workload
        .client(server.addr)
        .await
        .mint_jwtsvid(wire::MintJwtSvidRequest {
            workload: None,
            audience: vec!["a".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn renewal_then_eviction() {
    let (_dir, server) = server().await;
    let caller = agent(&server, "node-1").await;
    let renewed = caller
        .attest(server.addr, Method::RenewWithNodeSvid(true))
        .await
        .unwrap();
    assert_eq!(
        renewed.spiffe_id().to_string(),
        "spiffe://example.org/lanyard/agent/join_token/node-1"
    );
    assert_eq!(
        server
            .admin(AdminRequest::AgentEvict {
                node: "node-1".into()
            })
            .await,
        AdminResponse::Evicted {
            node: "node-1".into()
        }
    );
    let err = caller
        .attest(server.addr, Method::RenewWithNodeSvid(true))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().starts_with("evicted"), "{}", err.message());
    let err = caller
        .client(server.addr)
        .await
        .mint_x509svi_ds(wire::MintX509SvidsRequest {
            requests: vec![entry_request("spiffe://example.org/web", new_csr())],
        })
        .await
        .unwrap_err();
    assert!(err.message().starts_with("evicted"), "{}", err.message());
    // A renewal without any node SVID is refused too.
    let anonymous = Caller::new(server.bundle().await);
    let err = anonymous
        .attest(server.addr, Method::RenewWithNodeSvid(true))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn jwt_svids_validate_against_the_published_bundle() {
    let (_dir, server) = server().await;
    let caller = agent(&server, "node-1").await;
    let mut client = caller.client(server.addr).await;
    let workload = wire::Workload {
        kind: Some(wire::workload::Kind::EntrySpiffeId(
            "spiffe://example.org/web".into(),
        )),
        entry_pod: None,
    };
    let minted = client
        .mint_jwtsvid(wire::MintJwtSvidRequest {
            workload: Some(workload.clone()),
            audience: vec!["db".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(minted.spiffe_id, "spiffe://example.org/web");
    let validated = lanyard_svid::jwt::validate(
        &minted.token,
        "db",
        &caller.store.bundles(),
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(validated.spiffe_id.to_string(), "spiffe://example.org/web");
    assert!(
        lanyard_svid::jwt::validate(
            &minted.token,
            "other",
            &caller.store.bundles(),
            SystemTime::now()
        )
        .is_err()
    );
    let err = client
        .mint_jwtsvid(wire::MintJwtSvidRequest {
            workload: Some(workload),
            audience: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let not_assigned = wire::Workload {
        kind: Some(wire::workload::Kind::EntrySpiffeId(
            "spiffe://example.org/db".into(),
        )),
        entry_pod: None,
    };
    let err = client
        .mint_jwtsvid(wire::MintJwtSvidRequest {
            workload: Some(not_assigned),
            audience: vec!["x".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().starts_with("entry_not_assigned_to_node"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn feeds_send_the_bundle_and_the_node_view() {
    let (_dir, server) = server().await;
    let caller = agent(&server, "node-1").await;
    let mut client = caller.client(server.addr).await;
    let mut bundles = client
        .watch_bundle(wire::WatchBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(DEADLINE, bundles.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let bundle = first.bundle.unwrap();
    assert_eq!(bundle.trust_domain, "example.org");
    assert_eq!(bundle.x509_authorities.len(), 1);
    assert_eq!(bundle.jwt_authorities.len(), 1);
    let mut nodes = client
        .watch_node(wire::WatchNodeRequest {})
        .await
        .unwrap()
        .into_inner();
    let view = tokio::time::timeout(DEADLINE, nodes.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(view.node_name, "node-1");
    let ids: Vec<_> = view.entries.iter().map(|e| e.spiffe_id.as_str()).collect();
    assert_eq!(
        ids,
        ["spiffe://example.org/web", "spiffe://example.org/short"]
    );
    assert!(view.pods.is_empty());
}

#[tokio::test]
async fn restart_keeps_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = start_data_dir(&data, ENTRIES).await;
    let bundle_before = first.bundle().await;
    let caller = agent(&first, "node-1").await;
    drop(first);
    let second = start_data_dir(&data, ENTRIES).await;
    assert_eq!(second.bundle().await, bundle_before);
    // The node SVID from before the restart still works with the new process.
    caller
        .attest(second.addr, Method::RenewWithNodeSvid(true))
        .await
        .expect("renews after restart");
}

#[tokio::test]
async fn the_server_presents_its_pinned_id_and_nothing_else_passes() {
    let (_dir, server) = server().await;
    let caller = Caller::new(server.bundle().await);
    let wrong = std::sync::Arc::new(ExactId(
        SpiffeId::parse("spiffe://example.org/not-the-server").unwrap(),
    ));
    let mut client = caller.client_expecting(server.addr, wrong).await;
    let err = client
        .attest_node(wire::AttestNodeRequest {
            method: Some(Method::JoinToken("x".into())),
            csr: new_csr(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(format!("{err:?}").contains("UnexpectedId"), "{err:?}");
}

#[tokio::test]
async fn garbage_on_the_tls_port_leaves_the_server_serving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_dir, server) = server().await;
    let mut raw = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3])
        .await
        .unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, raw.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "the server closes a garbage connection");
    agent(&server, "node-1").await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("c.toml");
    std::fs::write(&config_path, ENTRIES).unwrap();
    let server = start(
        lanyard_server::config::RunArgs {
            config: Some(config_path),
            trust_domain: Some(TD.into()),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            data_dir: Some(dir.path().join("data")),
            health: Some("127.0.0.1:0".parse().unwrap()),
            ..Default::default()
        },
        None,
    )
    .await;
    let health = server.health.expect("health listener announced");
    assert!(
        http_get(health, "/readyz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    let caller = agent(&server, "node-1").await;
    let response = caller
        .client(server.addr)
        .await
        .mint_x509svi_ds(wire::MintX509SvidsRequest {
            requests: vec![entry_request("spiffe://example.org/db", new_csr())],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        outcome(&response.results[0]),
        Err("entry_not_assigned_to_node".into())
    );
    let metrics = http_get(health, "/metrics").await;
    for line in [
        "lanyard_server_svids_issued_total{kind=\"node\"} 1",
        "lanyard_server_refusals_total{rpc=\"mint_x509_svids\",reason=\"entry_not_assigned_to_node\"} 1",
        "lanyard_server_ca_expiry_timestamp_seconds{cert=\"anchor\"}",
        "lanyard_server_ca_expiry_timestamp_seconds{cert=\"intermediate\"}",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
}

#[tokio::test]
async fn mints_beyond_a_nodes_rate_are_refused_and_other_nodes_are_not_affected() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("server.toml");
    std::fs::write(&config_path, ENTRIES).unwrap();
    // 1 SVID/s with a burst of 4: a second batch of 4 would need 4 s of refill.
    let server = start(
        lanyard_server::config::RunArgs {
            config: Some(config_path),
            trust_domain: Some(TD.into()),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            data_dir: Some(dir.path().join("data")),
            mint_rate_limit: Some(1.0),
            health: Some("127.0.0.1:0".parse().unwrap()),
            ..Default::default()
        },
        None,
    )
    .await;
    let node_1 = agent(&server, "node-1").await;
    let first = mint_batch(&node_1, server.addr, "spiffe://example.org/web", 4)
        .await
        .unwrap();
    assert!(first.get_ref().results.iter().all(|r| outcome(r).is_ok()));
    let err = mint_batch(&node_1, server.addr, "spiffe://example.org/web", 4)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().starts_with("rate_limited"),
        "{}",
        err.message()
    );
    // Another node has its own budget.
    let node_2 = agent(&server, "node-2").await;
    let other = mint_batch(&node_2, server.addr, "spiffe://example.org/db", 4)
        .await
        .unwrap();
    assert!(other.get_ref().results.iter().all(|r| outcome(r).is_ok()));
    let metrics = http_get(server.health.expect("a health listener"), "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("rate_limited") && l.contains("mint_x509_svids")),
        "{metrics}"
    );
}

/// Mints `n` SVIDs of static entry `id` in one call.
async fn mint_batch(
    caller: &Caller,
    addr: std::net::SocketAddr,
    id: &str,
    n: usize,
) -> Result<tonic::Response<wire::MintX509SvidsResponse>, tonic::Status> {
    let requests = (0..n).map(|_| entry_request(id, new_csr())).collect();
    caller
        .client(addr)
        .await
        .mint_x509svi_ds(wire::MintX509SvidsRequest { requests })
        .await
}

#[tokio::test]
async fn attestations_beyond_an_addresss_rate_are_refused_before_the_token_is_looked_at() {
    let dir = tempfile::tempdir().unwrap();
    // 1 attestation/s with a burst of 4: a fifth at once would need a second of refill.
    let server = start(
        lanyard_server::config::RunArgs {
            trust_domain: Some(TD.into()),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            data_dir: Some(dir.path().join("data")),
            attest_rate_limit: Some(1.0),
            ..Default::default()
        },
        None,
    )
    .await;
    let caller = Caller::new(server.bundle().await);
    let mut refusals = Vec::new();
    for i in 0..8 {
        let err = caller
            .attest(server.addr, Method::JoinToken(format!("guess-{i}")))
            .await
            .unwrap_err();
        let label = err.message().split(':').next().unwrap().to_owned();
        refusals.push((err.code(), label));
    }
    let unknown = (Code::PermissionDenied, "unknown_token".to_owned());
    let limited = (Code::ResourceExhausted, "rate_limited".to_owned());
    // The burst is spent on token checks; past it (8 calls take far less than the 4 s that
    // would refill it) the limiter answers before the token is looked at.
    assert!(refusals[..4].iter().all(|r| *r == unknown), "{refusals:?}");
    assert!(refusals[4..].contains(&limited), "{refusals:?}");
    assert!(
        refusals.iter().all(|r| *r == unknown || *r == limited),
        "{refusals:?}"
    );
}
