//! Every refusal of the Workload API, seen by a raw gRPC client over the real Unix socket.

mod workload_api_support;

use lanyard_agent::workload_api::Limits;
use lanyard_proto::WORKLOAD_API_HEADER;
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use lanyard_proto::workload::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, WitBundlesRequest, WitsvidRequest,
    X509BundlesRequest, X509svidRequest, X509svidResponse,
};
use tonic::Code;
use tonic::transport::Channel;
use workload_api_support::*;

fn jwt_request(audience: &[&str], spiffe_id: &str) -> JwtsvidRequest {
    JwtsvidRequest {
        audience: audience.iter().map(|a| a.to_string()).collect(),
        spiffe_id: spiffe_id.to_owned(),
    }
}

async fn setup(ids: &[&str], limits: Limits) -> (Agent, std::sync::Arc<FakeIdentities>) {
    install_ring();
    let pki = Pki::new();
    let ids: Vec<_> = ids.iter().map(|p| pki.id(p)).collect();
    let identities = FakeIdentities::new(pki, &ids);
    (Agent::start(identities.clone(), limits).await, identities)
}

/// Opens FetchX509SVID and reads its first message.
async fn open_x509(
    client: &mut SpiffeWorkloadApiClient<Channel>,
) -> Result<(tonic::Streaming<X509svidResponse>, X509svidResponse), tonic::Status> {
    let mut stream = within(
        "FetchX509SVID",
        client.fetch_x509svid(req(X509svidRequest {})),
    )
    .await?
    .into_inner();
    let first = within("the first message", stream.message())
        .await?
        .expect("a first message");
    Ok((stream, first))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_security_header_is_required_on_every_rpc() {
    let (agent, _ids) = setup(&["/web"], Limits::default()).await;
    let mut client = agent.raw_client().await;

    // Missing.
    let status = client
        .fetch_x509svid(tonic::Request::new(X509svidRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains(WORKLOAD_API_HEADER));
    let status = client
        .fetch_jwtsvid(tonic::Request::new(jwt_request(&["a"], "")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // Checked before anything else: even WIT answers InvalidArgument without it.
    let status = client
        .fetch_witsvid(tonic::Request::new(WitsvidRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // Wrong value.
    let mut request = tonic::Request::new(X509BundlesRequest {});
    request
        .metadata_mut()
        .insert(WORKLOAD_API_HEADER, "false".parse().unwrap());
    let status = client.fetch_x509_bundles(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // Right value: accepted.
    open_x509(&mut client).await.unwrap();
    assert!(
        agent
            .metrics
            .answered_count("FetchX509SVID", Code::InvalidArgument)
            >= 1
    );
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_identity_is_permission_denied_until_one_is_issued() {
    let (agent, identities) = setup(&[], Limits::default()).await;
    let mut client = agent.raw_client().await;

    let status = open_x509(&mut client).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "no identity issued");
    let status = client
        .fetch_jwtsvid(req(jwt_request(&["a"], "")))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::PermissionDenied, "no identity issued")
    );
    for status in [
        client
            .fetch_x509_bundles(req(X509BundlesRequest {}))
            .await
            .unwrap_err(),
        client
            .fetch_jwt_bundles(req(JwtBundlesRequest {}))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(
            (status.code(), status.message()),
            (Code::PermissionDenied, "no identity issued")
        );
    }

    // The identity appears: a retrying client gets it.
    let web = identities.pki.id("/web");
    identities.set_entitled(std::slice::from_ref(&web));
    let (_stream, first) = open_x509(&mut client).await.unwrap();
    assert_eq!(first.svids[0].spiffe_id, web.to_string());
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_identity_ends_open_streams() {
    let (agent, identities) = setup(&["/web"], Limits::default()).await;
    let mut client = agent.raw_client().await;
    let (mut svids, _) = open_x509(&mut client).await.unwrap();
    let mut bundles = within(
        "FetchJWTBundles",
        client.fetch_jwt_bundles(req(JwtBundlesRequest {})),
    )
    .await
    .unwrap()
    .into_inner();
    within("the first bundles", bundles.message())
        .await
        .unwrap()
        .unwrap();

    identities.set_entitled(&[]);
    for status in [
        within("the end of the SVID stream", svids.message())
            .await
            .unwrap_err(),
        within("the end of the bundle stream", bundles.message())
            .await
            .unwrap_err(),
    ] {
        assert_eq!(
            (status.code(), status.message()),
            (Code::PermissionDenied, "no identity issued")
        );
    }
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_requests_are_checked() {
    let (agent, identities) = setup(&["/web", "/admin"], Limits::default()).await;
    let mut client = agent.raw_client().await;

    // Audience required, none empty.
    for bad in [jwt_request(&[], ""), jwt_request(&["a", ""], "")] {
        let status = client.fetch_jwtsvid(req(bad)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    // A malformed ID is invalid; an ID the caller is not entitled to is denied.
    let status = client
        .fetch_jwtsvid(req(jwt_request(&["a"], "not an id")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .fetch_jwtsvid(req(jwt_request(&["a"], "spiffe://example.org/db")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // One per identity, in order; or the one asked for.
    let all = client
        .fetch_jwtsvid(req(jwt_request(&["a"], "")))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = all.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(
        ids,
        ["spiffe://example.org/web", "spiffe://example.org/admin"]
    );
    let admin = identities.pki.id("/admin").to_string();
    let one = client
        .fetch_jwtsvid(req(jwt_request(&["a"], &admin)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.svids.len(), 1);
    assert_eq!(one.svids[0].spiffe_id, admin);

    // Validation: the right audience passes with the claims; another one, garbage, or a
    // missing field is InvalidArgument.
    let token = all.svids[0].svid.clone();
    let valid = client
        .validate_jwtsvid(req(ValidateJwtsvidRequest {
            audience: "a".into(),
            svid: token.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(valid.spiffe_id, "spiffe://example.org/web");
    let claims = valid.claims.unwrap();
    assert!(claims.fields.contains_key("exp"));
    assert!(claims.fields.contains_key("aud"));

    for (audience, svid, reason) in [
        ("b", token.as_str(), "wrong_aud"),
        ("a", "not.a.jwt", "malformed"),
        ("", token.as_str(), "audience"),
        ("a", "", "svid"),
    ] {
        let status = client
            .validate_jwtsvid(req(ValidateJwtsvidRequest {
                audience: audience.into(),
                svid: svid.into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(reason), "{status:?}");
    }
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_per_caller_are_bounded_and_freed_on_close() {
    let limits = Limits {
        streams_per_caller: 2,
        ..Limits::default()
    };
    let (agent, _ids) = setup(&["/web"], limits).await;
    let mut client = agent.raw_client().await;

    let (first, _) = open_x509(&mut client).await.unwrap();
    let mut bundles = within(
        "FetchX509Bundles",
        client.fetch_x509_bundles(req(X509BundlesRequest {})),
    )
    .await
    .unwrap()
    .into_inner();
    within("the first bundles", bundles.message())
        .await
        .unwrap()
        .unwrap();

    // The budget is the caller's, across connections and methods.
    let mut other_connection = agent.raw_client().await;
    let status = open_x509(&mut other_connection).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(agent.metrics.open_streams("FetchX509SVID"), 1);

    // Unary calls are not streams: still served.
    other_connection
        .fetch_jwtsvid(req(jwt_request(&["a"], "")))
        .await
        .unwrap();

    // The client drops a stream: its slot comes back.
    drop(first);
    eventually("the slot to be freed", || {
        let mut client = other_connection.clone();
        async move {
            match open_x509(&mut client).await {
                Ok(stream) => Some(stream),
                Err(status) if status.code() == Code::ResourceExhausted => None,
                Err(status) => panic!("unexpected refusal: {status:?}"),
            }
        }
    })
    .await;
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wit_rpcs_are_unimplemented() {
    let (agent, _ids) = setup(&["/web"], Limits::default()).await;
    let mut client = agent.raw_client().await;
    let status = client
        .fetch_witsvid(req(WitsvidRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    let status = client
        .fetch_wit_bundles(req(WitBundlesRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams_and_removes_the_socket() {
    let (mut agent, _ids) = setup(&["/web"], Limits::default()).await;
    let mut client = agent.raw_client().await;
    let (mut stream, _) = open_x509(&mut client).await.unwrap();
    let socket = agent.socket.clone();

    let ended = tokio::spawn(async move { within("the stream's end", stream.message()).await });
    agent.shutdown().await.unwrap();
    assert!(socket.parent().unwrap().exists());
    let status = ended.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
    assert!(!socket.exists(), "the socket file is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_cannot_be_attested_is_unavailable_with_the_reason() {
    install_ring();
    let pki = Pki::new();
    let web = pki.id("/web");
    let identities = FakeIdentities::new(pki, std::slice::from_ref(&web));
    // A /proc in which this process does not exist: attestation says it is gone.
    let empty_proc = tempfile::tempdir().unwrap();
    let attestor = lanyard_agent::attest::WorkloadAttestor::new(
        empty_proc.path(),
        lanyard_agent::attest::DigestCache::default(),
    );
    let agent = Agent::start_with(identities.clone(), Limits::default(), attestor).await;
    let mut client = agent.raw_client().await;

    let status = open_x509(&mut client).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("workload attestation failed ("),
        "{status:?}"
    );
    let status = client
        .validate_jwtsvid(req(ValidateJwtsvidRequest {
            audience: "a".into(),
            svid: "x.y.z".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "attestation comes first");
    assert!(identities.resolved_for().is_empty(), "nothing was resolved");
    agent.stop().await.unwrap();
}
