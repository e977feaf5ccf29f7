//! The Workload API against an independent client: the Rust `spiffe` crate 0.19, unchanged,
//! over a real Unix socket, with this test process attested from `/proc`.

mod workload_api_support;

use futures::StreamExt as _;
use lanyard_agent::workload_api::Limits;
use spiffe::{SpiffeId as ClientId, TrustDomain as ClientTd};
use workload_api_support::*;

fn client_id(id: &lanyard_svid::SpiffeId) -> ClientId {
    id.to_string().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spiffe_client_fetches_svids_bundles_and_jwts() {
    install_ring();
    let pki = Pki::new();
    let web = pki.id("/web");
    let admin = pki.id("/admin");
    // Registered as federating with partner.test, so it is served that bundle too.
    let identities = FakeIdentities::federating(pki, &[web.clone(), admin.clone()]);
    let agent = Agent::start(identities.clone(), Limits::default()).await;
    let client = agent.spiffe_client().await;

    // X.509-SVID: the default is the first identity, chain and key as issued.
    let svid = within("fetch_x509_svid", client.fetch_x509_svid())
        .await
        .unwrap();
    assert_eq!(svid.spiffe_id().to_string(), web.to_string());
    let issued = identities.svid_of(&web);
    let chain: Vec<&[u8]> = svid.cert_chain().iter().map(|c| c.as_ref()).collect();
    let expected: Vec<&[u8]> = issued.chain().iter().map(|c| c.as_ref()).collect();
    assert_eq!(chain, expected);
    assert_eq!(
        svid.private_key().as_ref(),
        issued.private_key_pkcs8().unwrap()
    );
    let all = within("fetch_all_x509_svids", client.fetch_all_x509_svids())
        .await
        .unwrap();
    let ids: Vec<String> = all.iter().map(|s| s.spiffe_id().to_string()).collect();
    assert_eq!(ids, [web.to_string(), admin.to_string()]);

    // The attestation the fake saw is this process's.
    let resolved = identities.resolved_for();
    assert!(!resolved.is_empty());
    assert!(
        resolved
            .iter()
            .all(|a| a.selectors.contains(&my_uid_selector()))
    );

    // X.509 bundles: own and federated trust domains, with their roots.
    let bundles = within("fetch_x509_bundles", client.fetch_x509_bundles())
        .await
        .unwrap();
    let own = bundles
        .get(&ClientTd::new("example.org").unwrap())
        .expect("own bundle");
    assert_eq!(
        own.authorities()[0].as_ref(),
        identities.pki.root.cert_der().as_ref()
    );
    let partner = bundles
        .get(&ClientTd::new("partner.test").unwrap())
        .expect("federated bundle");
    assert_eq!(
        partner.authorities()[0].as_ref(),
        identities.pki.federated.cert_der().as_ref()
    );

    // The X.509 context carries the federated bundle too.
    let context = within("fetch_x509_context", client.fetch_x509_context())
        .await
        .unwrap();
    assert!(
        context
            .bundle_set()
            .get(&ClientTd::new("partner.test").unwrap())
            .is_some()
    );

    // JWT bundles: the signer's key under its kid.
    let jwt_bundles = within("fetch_jwt_bundles", client.fetch_jwt_bundles())
        .await
        .unwrap();
    let own_jwt = jwt_bundles
        .get(&ClientTd::new("example.org").unwrap())
        .expect("own JWT bundle");
    assert!(
        own_jwt
            .find_jwt_authority(identities.pki.jwt.key_id())
            .is_some()
    );

    // JWT-SVID: default identity, and a chosen one.
    let token = within("fetch_jwt_token", client.fetch_jwt_token(["db"], None))
        .await
        .unwrap();
    let chosen = within(
        "fetch_jwt_svid",
        client.fetch_jwt_svid(["db"], Some(&client_id(&admin))),
    )
    .await
    .unwrap();
    assert_eq!(chosen.spiffe_id().to_string(), admin.to_string());
    let all_jwts = within(
        "fetch_all_jwt_svids",
        client.fetch_all_jwt_svids(["db"], None),
    )
    .await
    .unwrap();
    assert_eq!(all_jwts.len(), 2, "one JWT per entitled identity");

    // ValidateJWTSVID: the agent validates, the client reads the claims.
    let validated = within(
        "validate_jwt_token",
        client.validate_jwt_token("db", &token),
    )
    .await
    .unwrap();
    assert_eq!(validated.spiffe_id().to_string(), web.to_string());
    assert_eq!(validated.audience(), &["db".to_string()]);

    // ...and refuses a token for another audience.
    let refused = within(
        "validate_jwt_token (wrong audience)",
        client.validate_jwt_token("not-db", &token),
    )
    .await;
    assert!(
        refused.is_err(),
        "a token for another audience must be refused"
    );

    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_reaches_an_open_stream() {
    install_ring();
    let pki = Pki::new();
    let web = pki.id("/web");
    let identities = FakeIdentities::new(pki, std::slice::from_ref(&web));
    let agent = Agent::start(identities.clone(), Limits::default()).await;
    let client = agent.spiffe_client().await;

    let mut stream = within("stream_x509_contexts", client.stream_x509_contexts())
        .await
        .unwrap();
    let first = within("the first context", stream.next())
        .await
        .unwrap()
        .unwrap();
    let first_leaf = first.default_svid().unwrap().leaf().as_ref().to_vec();
    assert_eq!(first_leaf, identities.svid_of(&web).leaf().as_ref());

    // A tick that changes nothing sends nothing; the rotation after it is the next message.
    identities.tick();
    let rotated = identities.rotate(&web);
    let next = within("the rotated context", stream.next())
        .await
        .unwrap()
        .unwrap();
    let next_leaf = next.default_svid().unwrap().leaf().as_ref().to_vec();
    assert_ne!(next_leaf, first_leaf);
    assert_eq!(next_leaf, rotated.leaf().as_ref());

    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509_source_follows_rotation() {
    install_ring();
    let pki = Pki::new();
    let web = pki.id("/web");
    let identities = FakeIdentities::new(pki, std::slice::from_ref(&web));
    let agent = Agent::start(identities.clone(), Limits::default()).await;

    let endpoint = format!("unix://{}", agent.socket.display());
    let source = within(
        "X509Source",
        spiffe::X509Source::builder().endpoint(endpoint).build(),
    )
    .await
    .unwrap();
    let svid = source.svid().unwrap();
    assert_eq!(svid.spiffe_id().to_string(), web.to_string());

    let mut updates = source.updated();
    let rotated = identities.rotate(&web);
    within("the source's update", updates.changed())
        .await
        .unwrap();
    assert_eq!(
        source.svid().unwrap().leaf().as_ref(),
        rotated.leaf().as_ref()
    );

    agent.stop().await.unwrap();
}
