//! The LanyardFederation informer (`k8s::federations::spawn`) through the real kube client
//! against the API fixture, as the server's ServiceAccount under the RBAC `lanyard install`
//! renders: started before the CRD exists (404: nothing federated, retried), then resources
//! created, edited, deleted, and invalid ones skipped, each reaching the published set.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use kube_fixture::{FixtureOptions, KubeFixture};
use lanyard_e2e::cluster;
use lanyard_registration::federation::{
    BundleEndpointProfile, EndpointProfile, FederatedDomain, LanyardFederation,
    LanyardFederationSpec, PROFILE_HTTPS_SPIFFE, PROFILE_HTTPS_WEB,
};
use lanyard_server::k8s::federations;
use lanyard_svid::TrustDomain;
use tokio::sync::watch;

const DEADLINE: Duration = Duration::from_secs(20);

fn web(name: &str, td: &str, url: &str) -> LanyardFederation {
    LanyardFederation::new(
        name,
        LanyardFederationSpec {
            trust_domain: td.into(),
            bundle_endpoint_url: url.into(),
            bundle_endpoint_profile: BundleEndpointProfile {
                type_: PROFILE_HTTPS_WEB.into(),
                endpoint_spiffe_id: None,
            },
            ..Default::default()
        },
    )
}

/// (trust domain, URL, source) of each published domain.
fn summary(domains: &[FederatedDomain]) -> Vec<(String, String, String)> {
    domains
        .iter()
        .map(|d| {
            (
                d.trust_domain.to_string(),
                d.bundle_endpoint_url.clone(),
                d.source.clone(),
            )
        })
        .collect()
}

/// Waits until the published set is `want`.
async fn until(
    rx: &mut watch::Receiver<Vec<FederatedDomain>>,
    what: &str,
    want: &[(&str, &str, &str)],
) {
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    let ok = matches!(
        tokio::time::timeout(DEADLINE, rx.wait_for(|d| summary(d) == want)).await,
        Ok(Ok(_))
    );
    assert!(
        ok,
        "{what}: the set is {:?}, not {want:?}",
        summary(&rx.borrow())
    );
}

#[tokio::test]
async fn federations_follow_create_edit_delete_and_skip_invalid_ones() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The informer's WARNs (404, invalid resources) show with a failure.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let fixture = KubeFixture::start(FixtureOptions::default()).await.unwrap();
    fixture
        .apply_yaml(&cluster::server_rbac())
        .expect("apply the RBAC");
    let admin = fixture.admin_client().unwrap();
    let client = fixture
        .client_for(&fixture.issue_api_token("lanyard", "lanyard-server"))
        .unwrap();
    let (mut rx, task) = federations::spawn(client, TrustDomain::new("example.org").unwrap());
    // No CRD yet: the informer keeps retrying and publishes nothing.
    assert!(rx.borrow_and_update().is_empty());

    let crd: CustomResourceDefinition =
        serde_saphyr::from_str(lanyard_registration::crd::FEDERATION_CRD_YAML)
            .expect("the CRD parses");
    Api::<CustomResourceDefinition>::all(admin.clone())
        .create(&PostParams::default(), &crd)
        .await
        .expect("the fixture accepts the CRD");
    let api: Api<LanyardFederation> = Api::all(admin);
    let create = |r: LanyardFederation| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &r)
                .await
                .unwrap_or_else(|e| panic!("create {}: {e}", r.name()))
        }
    };

    // Created: published once the informer's retry lists the new kind.
    create(web(
        "partner",
        "partner.example",
        "https://partner.example/b",
    ))
    .await;
    until(
        &mut rx,
        "created",
        &[(
            "partner.example",
            "https://partner.example/b",
            "LanyardFederation/partner",
        )],
    )
    .await;
    assert_eq!(
        rx.borrow()[0].profile,
        EndpointProfile::HttpsWeb { ca_roots: None }
    );

    // Edited.
    let mut edited = api.get("partner").await.unwrap();
    edited.spec.bundle_endpoint_url = "https://bundles.partner.example:8443".into();
    api.replace("partner", &PostParams::default(), &edited)
        .await
        .unwrap();
    until(
        &mut rx,
        "edited",
        &[(
            "partner.example",
            "https://bundles.partner.example:8443",
            "LanyardFederation/partner",
        )],
    )
    .await;

    // Invalid ones (the schema admits them, the check does not) are skipped: our own trust
    // domain, an https_spiffe bootstrap bundle that is not one, and a second resource for a
    // trust domain already federated. The valid resource created after them shows they were
    // seen (the watch delivers in order).
    create(web("mine", "example.org", "https://example.org/b")).await;
    let mut garbage = web("garbage", "g.example", "https://g.example/b");
    garbage.spec.bundle_endpoint_profile = BundleEndpointProfile {
        type_: PROFILE_HTTPS_SPIFFE.into(),
        endpoint_spiffe_id: Some("spiffe://g.example/lanyard/server".into()),
    };
    garbage.spec.trust_domain_bundle = Some("not a bundle".into());
    create(garbage).await;
    create(web(
        "second",
        "partner.example",
        "https://elsewhere.example/b",
    ))
    .await;
    create(web("zeta", "z.example", "https://z.example/b")).await;
    until(
        &mut rx,
        "invalid ones skipped",
        &[
            (
                "partner.example",
                "https://bundles.partner.example:8443",
                "LanyardFederation/partner",
            ),
            ("z.example", "https://z.example/b", "LanyardFederation/zeta"),
        ],
    )
    .await;

    // Deleted: the other resource for its trust domain takes its place.
    api.delete("partner", &DeleteParams::default())
        .await
        .unwrap();
    until(
        &mut rx,
        "deleted",
        &[
            (
                "partner.example",
                "https://elsewhere.example/b",
                "LanyardFederation/second",
            ),
            ("z.example", "https://z.example/b", "LanyardFederation/zeta"),
        ],
    )
    .await;

    // Another installation's resource is not ours.
    let mut foreign = web("foreign", "f.example", "https://f.example/b");
    foreign.spec.class_name = Some("someone-else".into());
    create(foreign).await;
    api.delete("second", &DeleteParams::default())
        .await
        .unwrap();
    until(
        &mut rx,
        "other class ignored",
        &[("z.example", "https://z.example/b", "LanyardFederation/zeta")],
    )
    .await;
    task.abort();
}
