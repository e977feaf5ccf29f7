//! Registration the Kubernetes way, against the API fixture with the real CRD: a
//! LanyardIdentity created, edited and deleted through the API changes what the server (in
//! --kube mode, with the RBAC `lanyard install` renders) issues a pod over its gRPC API (ID
//! and DNS SANs) and what it feeds the node's agent (federatesWith included), and the holder
//! of the status Lease writes each resource's status (and gives the Lease up when it stops).

mod common;

use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use kube_fixture::{FixtureOptions, KubeFixture};
use lanyard_e2e::cluster;
use lanyard_proto::identity::v1 as wire;
use lanyard_proto::identity::v1::attest_node_request::Method;
use lanyard_registration::{LanyardIdentity, LanyardIdentitySpec, LanyardIdentityStatus};
use lanyard_server::config::RunArgs;
use lanyard_svid::{BundleSet, TrustBundle};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

fn identity(template: &str, dns: &[&str]) -> LanyardIdentity {
    LanyardIdentity::new(
        "web",
        LanyardIdentitySpec {
            spiffe_id_template: template.into(),
            pod_selector: Some(LabelSelector {
                match_labels: Some([("app".to_owned(), "web-1".to_owned())].into()),
                ..Default::default()
            }),
            dns_name_templates: dns.iter().map(|d| d.to_string()).collect(),
            federates_with: vec!["partner.example".into()],
            ..Default::default()
        },
    )
}

/// The URI and DNS SANs of a DER certificate.
fn sans(der: &[u8]) -> (Vec<String>, Vec<String>) {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::URI(u) => uris.push(u.to_string()),
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                _ => {}
            }
        }
    }
    (uris, dns)
}

#[tokio::test]
async fn lanyard_identity_drives_issuance_feed_and_status() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fixture = KubeFixture::start(FixtureOptions::default()).await.unwrap();
    let seeded = cluster::seed(&fixture);
    let admin = fixture.admin_client().unwrap();
    // The real CRD, as `lanyard install` ships it.
    let crd: CustomResourceDefinition =
        serde_saphyr::from_str(lanyard_registration::crd::CRD_YAML).expect("the CRD parses");
    Api::<CustomResourceDefinition>::all(admin.clone())
        .create(&PostParams::default(), &crd)
        .await
        .expect("the fixture accepts the CRD");
    let web1 = fixture
        .store()
        .create(&cluster::pod(
            "default",
            "web-1",
            "web",
            "node-1",
            Some("c1"),
        ))
        .unwrap()
        .metadata
        .uid
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let args = RunArgs {
        replica_name: Some("lanyard-server-a".into()),
        health: Some("127.0.0.1:0".parse().unwrap()),
        ..cluster_args(dir.path().join("s1"))
    };
    // The server's own ServiceAccount token: only the rendered RBAC applies.
    let client = fixture
        .client_for(&fixture.issue_api_token("lanyard", "lanyard-server"))
        .unwrap();
    let server = start(args, Some(client)).await;
    let agent = Caller::new(BundleSet::from(TrustBundle::from_x509_authorities(
        td(),
        [seeded.root.cert_der().clone()],
    )));
    let token = lanyard_e2e::cluster::agent_token(&fixture, &seeded);
    agent
        .attest(server.addr, Method::K8sPsatToken(token))
        .await
        .unwrap();
    let grpc = agent.client(server.addr).await;

    // Mints for web-1 until the answer is the one wanted (the informers follow the API).
    let mint_until = |want: &'static str| {
        let grpc = grpc.clone();
        let web1 = web1.clone();
        async move {
            eventually(want, || {
                let mut grpc = grpc.clone();
                let request = wire::MintX509SvidRequest {
                    workload: Some(wire::Workload {
                        kind: Some(wire::workload::Kind::Pod(wire::Pod {
                            namespace: "default".into(),
                            name: "web-1".into(),
                            uid: web1.clone(),
                            service_account: "web".into(),
                        })),
                        entry_pod: None,
                    }),
                    csr: new_csr(),
                };
                async move {
                    let response = grpc
                        .mint_x509svi_ds(wire::MintX509SvidsRequest {
                            requests: vec![request],
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    match response.results[0].result.as_ref().unwrap() {
                        wire::mint_x509_svid_result::Result::Svid(s) if s.spiffe_id == want => {
                            Some(s.cert_chain[0].clone())
                        }
                        _ => None,
                    }
                }
            })
            .await
        }
    };

    // No resource yet: the default template, no DNS names.
    let leaf = mint_until("spiffe://example.org/ns/default/sa/web").await;
    assert_eq!(sans(&leaf).1, Vec::<String>::new());

    // A LanyardIdentity selecting web-1: its ID, the only URI SAN, and its DNS names.
    let identities = Api::<LanyardIdentity>::all(admin.clone());
    identities
        .create(
            &PostParams::default(),
            &identity(
                "/web/{pod_name}",
                &["{pod_name}.web.default.svc", "web.example.org"],
            ),
        )
        .await
        .unwrap();
    let leaf = mint_until("spiffe://example.org/web/web-1").await;
    assert_eq!(
        sans(&leaf),
        (
            vec!["spiffe://example.org/web/web-1".to_owned()],
            vec![
                "web-1.web.default.svc".to_owned(),
                "web.example.org".to_owned()
            ]
        )
    );

    // The node feed tells the agent the same, with where it came from.
    let mut feed = grpc
        .clone()
        .watch_node(wire::WatchNodeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let view = tokio::time::timeout(DEADLINE, feed.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let pod = view.pods.iter().find(|p| p.name == "web-1").unwrap();
    assert_eq!(pod.spiffe_id, "spiffe://example.org/web/web-1");
    assert_eq!(pod.registered_by, "LanyardIdentity/web");
    assert_eq!(pod.dns_names, ["web-1.web.default.svc", "web.example.org"]);
    // Kept by the CRD's schema (not pruned) and carried to the agent.
    assert_eq!(pod.federates_with, ["partner.example"]);
    assert_eq!(
        pod.container_names.get("c1").map(String::as_str),
        Some("app")
    );

    // The status, written by this replica (the only one, so the Lease holder).
    let status_of = |generation: i64| {
        let identities = identities.clone();
        async move {
            eventually("the status", || {
                let identities = identities.clone();
                async move {
                    let r = identities.get("web").await.ok()?;
                    let status = r.status?;
                    (status.observed_generation == Some(generation)
                        && r.metadata.generation == Some(generation))
                    .then_some(status)
                }
            })
            .await
        }
    };
    assert_eq!(
        status_of(1).await,
        LanyardIdentityStatus {
            observed_generation: Some(1),
            pods_matched: 1,
            pods_issued: 1,
            ..Default::default()
        }
    );
    let lease: Lease = fixture
        .store()
        .get("lanyard", "lanyard-identity-status")
        .unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("lanyard-server-a"));
    assert_eq!(spec.lease_duration_seconds, Some(15));
    let metrics = http_get(server.health.unwrap(), "/metrics").await;
    assert!(
        metrics.contains("lanyard_server_identity_status_lease_held 1"),
        "{metrics}"
    );

    // An edit: a template the pod cannot render is refused, and the status says why.
    let mut edited = identities.get("web").await.unwrap();
    edited.spec.spiffe_id_template = "/web/{label:tier}".into();
    identities
        .replace("web", &PostParams::default(), &edited)
        .await
        .unwrap();
    let refused = eventually("the refusal", || {
        let mut grpc = grpc.clone();
        let request = wire::MintJwtSvidRequest {
            workload: Some(wire::Workload {
                kind: Some(wire::workload::Kind::Pod(wire::Pod {
                    namespace: "default".into(),
                    name: "web-1".into(),
                    uid: web1.clone(),
                    service_account: "web".into(),
                })),
                entry_pod: None,
            }),
            audience: vec!["a".into()],
        };
        async move {
            let e = grpc.mint_jwtsvid(request).await.err()?;
            e.message().starts_with("missing_value").then_some(e)
        }
    })
    .await;
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(
        refused.message().contains("LanyardIdentity/web"),
        "{refused:?}"
    );
    let status = status_of(2).await;
    assert_eq!(
        (status.pods_matched, status.pods_issued, status.pods_refused),
        (1, 0, 1)
    );
    assert_eq!(status.refusals[0].pod, "default/web-1");
    assert_eq!(status.refusals[0].reason, "missing_value");

    // Deleted: back to the default template.
    identities
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    mint_until("spiffe://example.org/ns/default/sa/web").await;

    // A clean shutdown gives the status Lease up, so another replica need not wait it out.
    server.stop().await;
    let lease: Lease = fixture
        .store()
        .get("lanyard", "lanyard-identity-status")
        .unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity, None);
}
