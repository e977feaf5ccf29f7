//! Envoy SDS v3 on the agent socket, end to end: the real certificate manager minting from a
//! fake server, served by `socket::serve` on a Unix socket in a tempdir, and an SDS client
//! built from Envoy's own API protos (envoy-types' generated client) that sends what Envoy
//! sends (a `Node` with its build version, no `workload.spiffe.io` header). The caller is
//! this test process, attested from /proc.

#[path = "support/fake_server.rs"]
#[allow(dead_code)]
mod fake_server;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
use envoy_types::pb::envoy::config::core::v3::{BuildVersion, DataSource, Node, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, TlsCertificate, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::envoy::r#type::v3::SemanticVersion;
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use fake_server::{FakeServer, TD};
use hyper_util::rt::TokioIo;
use lanyard_agent::attest::WorkloadAttestor;
use lanyard_agent::manager::resolve::NodeView;
use lanyard_agent::manager::{CertificateManager, ManagerSettings};
use lanyard_agent::metrics::AgentMetrics;
use lanyard_agent::socket::{self, ConnectionLimits, ServeError, Services};
use lanyard_agent::workload_api::{Limits, WorkloadApiMetrics};
use lanyard_proto::identity::v1 as wire;
use lanyard_proto::workload::X509svidRequest;
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use lanyard_svid::{PeerRole, TrustBundle, TrustDomain, X509Svid, verify_peer};
use prost::{Message as _, Name as _};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Streaming};
use zeroize::Zeroizing;

/// Every wait in these tests is bounded by this.
const DEADLINE: Duration = Duration::from_secs(20);
const ENVOY_ID: &str = "/envoy";
/// A trust domain the Envoy's entry federates with, and one it does not.
const PARTNER: &str = "partner.test";
const OTHER: &str = "other.test";

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn my_uid() -> u32 {
    // SAFETY: getuid cannot fail and touches no memory.
    unsafe { libc::getuid() }
}

/// The agent: a certificate manager over `server`, with a node view holding one static entry
/// (`spiffe://example.org/envoy`) for callers of `uid`, served on a socket in a tempdir.
struct Agent {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    server: Arc<FakeServer>,
    manager: CertificateManager,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Agent {
    async fn start(svid_ttl: Duration, uid: u32) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let server = Arc::new(FakeServer::new(svid_ttl));
        let manager = CertificateManager::new(
            server.clone(),
            ManagerSettings::default(),
            AgentMetrics::unregistered(),
        );
        // Two foreign trust domains: the Envoy's entry federates with partner.test only.
        let mut bundles = server.bundles();
        for foreign in [PARTNER, OTHER] {
            let td = TrustDomain::new(foreign).unwrap();
            let root =
                lanyard_svid::RootCa::generate(&td, Duration::from_secs(3600), SystemTime::now())
                    .unwrap();
            bundles.insert(TrustBundle::from_x509_authorities(
                td,
                [root.cert_der().clone()],
            ));
        }
        manager.set_bundles(bundles);
        manager.set_view(view(&[(ENVOY_ID, uid)]));
        manager.set_attested(true);
        let driver = manager.spawn();

        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let (stop, stopped) = oneshot::channel::<()>();
        let served = Arc::new(manager.clone());
        let task = tokio::spawn({
            let socket = socket.clone();
            async move {
                socket::serve(
                    &socket,
                    Arc::new(WorkloadAttestor::default()),
                    ConnectionLimits::default(),
                    Services::new().workload_api(
                        served,
                        Limits::default(),
                        WorkloadApiMetrics::default(),
                    ),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
            }
        });
        within("the socket to be bound", async {
            while !socket.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        Self {
            _dir: dir,
            socket,
            server,
            manager,
            stop: Some(stop),
            task,
            driver,
        }
    }

    async fn channel(&self) -> Channel {
        within("connect", unix_channel(&self.socket)).await
    }

    async fn sds(&self) -> SecretDiscoveryServiceClient<Channel> {
        SecretDiscoveryServiceClient::new(self.channel().await)
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        within("serve to return", &mut self.task)
            .await
            .unwrap()
            .unwrap();
        self.driver.abort();
    }
}

/// A node view with a static entry `spiffe://example.org<path>` for callers of `uid`, for
/// each `(path, uid)`.
fn view(entries: &[(&str, u32)]) -> NodeView {
    let view = wire::WatchNodeResponse {
        node_name: "node-a".into(),
        entries: entries
            .iter()
            .map(|(path, uid)| wire::StaticEntry {
                spiffe_id: format!("spiffe://{TD}{path}"),
                selectors: vec![format!("unix:uid:{uid}")],
                federates_with: vec![PARTNER.to_owned()],
                ..Default::default()
            })
            .collect(),
        pods: Vec::new(),
    };
    NodeView::from_wire(&view, &TrustDomain::new(TD).unwrap())
}

/// A plain tonic channel over the Unix socket: no Lanyard client code, no header.
async fn unix_channel(path: &Path) -> Channel {
    let path = path.to_owned();
    Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .unwrap()
}

/// The `Node` Envoy 1.31 sends, with `disable_spiffe_cert_validation` in its metadata if
/// given.
fn envoy_node(disable_spiffe_validation: Option<bool>) -> Node {
    Node {
        id: "envoy-1".into(),
        cluster: "test".into(),
        user_agent_name: "envoy".into(),
        user_agent_version_type: Some(UserAgentVersionType::UserAgentBuildVersion(BuildVersion {
            version: Some(SemanticVersion {
                major_number: 1,
                minor_number: 31,
                patch: 2,
            }),
            metadata: None,
        })),
        metadata: disable_spiffe_validation.map(|disable| Struct {
            fields: [(
                "disable_spiffe_cert_validation".to_owned(),
                Value {
                    kind: Some(value::Kind::BoolValue(disable)),
                },
            )]
            .into(),
        }),
        ..Node::default()
    }
}

fn request(names: &[&str], node: Option<Node>) -> DiscoveryRequest {
    DiscoveryRequest {
        node,
        type_url: Secret::type_url(),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        ..DiscoveryRequest::default()
    }
}

/// An ACK (or, with `error`, a NACK) of `response`.
fn reply(names: &[&str], response: &DiscoveryResponse, error: Option<&str>) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: response.version_info.clone(),
        response_nonce: response.nonce.clone(),
        error_detail: error.map(|message| RpcStatus {
            code: Code::InvalidArgument as i32,
            message: message.into(),
            details: Vec::new(),
        }),
        ..request(names, None)
    }
}

fn secrets(response: &DiscoveryResponse) -> Vec<Secret> {
    assert_eq!(response.type_url, Secret::type_url());
    response
        .resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, Secret::type_url());
            Secret::decode(any.value.as_slice()).unwrap()
        })
        .collect()
}

fn named<'a>(secrets: &'a [Secret], name: &str) -> &'a Secret {
    secrets
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no secret named {name}"))
}

fn inline(source: &Option<DataSource>) -> &[u8] {
    match source {
        Some(DataSource {
            specifier: Some(data_source::Specifier::InlineBytes(bytes)),
            ..
        }) => bytes,
        other => panic!(
            "not inline bytes: {:?}",
            other.as_ref().map(|_| "another source")
        ),
    }
}

fn tls_certificate(secret: &Secret) -> &TlsCertificate {
    match &secret.r#type {
        Some(secret::Type::TlsCertificate(tls)) => tls,
        _ => panic!("{} is not a TLS certificate", secret.name),
    }
}

fn validation_context(secret: &Secret) -> &CertificateValidationContext {
    match &secret.r#type {
        Some(secret::Type::ValidationContext(context)) => context,
        _ => panic!("{} is not a validation context", secret.name),
    }
}

/// The certificate and key of a `tls_certificate` Secret, parsed: the chain must verify
/// against the server's bundle as an X.509-SVID of the Envoy's ID, and the key must be the
/// leaf's (checked by `X509Svid::parse`).
fn svid_of(secret: &Secret, server: &FakeServer) -> X509Svid {
    let tls = tls_certificate(secret);
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(inline(&tls.certificate_chain))
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivatePkcs8KeyDer::from_pem_slice(inline(&tls.private_key)).unwrap();
    let svid = X509Svid::parse(chain, Some(Zeroizing::new(key.secret_pkcs8_der().to_vec())))
        .expect("chain and key belong together");
    assert_eq!(
        svid.spiffe_id().to_string(),
        format!("spiffe://{TD}{ENVOY_ID}")
    );
    let verified = verify_peer(
        svid.chain(),
        &server.bundles(),
        SystemTime::now(),
        PeerRole::Client,
    )
    .unwrap();
    assert_eq!(&verified, svid.spiffe_id());
    svid
}

/// The trust domains and bundles (PEM) of a SPIFFE-validator validation context.
fn spiffe_validator(context: &CertificateValidationContext) -> Vec<(String, String)> {
    assert!(context.trusted_ca.is_none());
    let custom = context
        .custom_validator_config
        .as_ref()
        .expect("the SPIFFE validator");
    assert_eq!(custom.name, "envoy.tls.cert_validator.spiffe");
    let any = custom.typed_config.as_ref().unwrap();
    assert_eq!(any.type_url, SpiffeCertValidatorConfig::type_url());
    SpiffeCertValidatorConfig::decode(any.value.as_slice())
        .unwrap()
        .trust_domains
        .into_iter()
        .map(|td| (td.name, pem_text(inline(&td.trust_bundle))))
        .collect()
}

fn own_bundle_pem(server: &FakeServer) -> String {
    server
        .bundles()
        .iter()
        .next()
        .unwrap()
        .x509_authorities_pem()
}

fn pem_text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("PEM is text")
}

/// An open StreamSecrets stream: what the client sends, and what it receives.
struct SdsStream {
    send: mpsc::Sender<DiscoveryRequest>,
    receive: Streaming<DiscoveryResponse>,
}

impl SdsStream {
    async fn open(
        client: &mut SecretDiscoveryServiceClient<Channel>,
        first: DiscoveryRequest,
    ) -> Self {
        let (send, requests) = mpsc::channel(8);
        send.send(first).await.unwrap();
        let receive = within(
            "StreamSecrets to open",
            client.stream_secrets(ReceiverStream::new(requests)),
        )
        .await
        .expect("StreamSecrets admitted without the workload.spiffe.io header")
        .into_inner();
        Self { send, receive }
    }

    async fn next(&mut self, what: &str) -> DiscoveryResponse {
        within(what, self.receive.message())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("the stream ended before {what}"))
    }
}

#[tokio::test]
async fn stream_secrets_gets_the_certificate_and_rootca_then_each_rotation() {
    // 6 s SVIDs: the manager renews each at about half of its remaining life.
    let agent = Agent::start(Duration::from_secs(6), my_uid()).await;
    let mut client = agent.sds().await;
    let names = ["default", "ROOTCA"];
    let mut stream = SdsStream::open(&mut client, request(&names, Some(envoy_node(None)))).await;

    let first = stream.next("the first response").await;
    assert_eq!(first.version_info, "1");
    assert!(!first.nonce.is_empty());
    let secrets1 = secrets(&first);
    assert_eq!(secrets1.len(), 2, "exactly what was asked for");
    let svid1 = svid_of(named(&secrets1, "default"), &agent.server);
    // Envoy 1.31 without the metadata switch: ROOTCA carries the SPIFFE validator with the
    // own trust domain's bundle (as SPIRE answers it).
    assert_eq!(
        spiffe_validator(validation_context(named(&secrets1, "ROOTCA"))),
        [(TD.to_owned(), own_bundle_pem(&agent.server))]
    );

    // ACK; the next message is the rotated certificate, on the same stream.
    stream.send.send(reply(&names, &first, None)).await.unwrap();
    let second = stream.next("the rotated certificate").await;
    assert_eq!(second.version_info, "2");
    assert_ne!(second.nonce, first.nonce);
    let secrets2 = secrets(&second);
    let svid2 = svid_of(named(&secrets2, "default"), &agent.server);
    assert_ne!(svid2.leaf(), svid1.leaf(), "a new certificate");
    assert_ne!(
        svid2.private_key_pkcs8(),
        svid1.private_key_pkcs8(),
        "a new key"
    );
    assert_eq!(
        named(&secrets2, "ROOTCA"),
        named(&secrets1, "ROOTCA"),
        "the bundle did not change"
    );

    // NACK it: logged, and not sent again; what comes next is the next rotation (version 3,
    // another certificate), not version 2 once more.
    stream
        .send
        .send(reply(&names, &second, Some("envoy could not apply it")))
        .await
        .unwrap();
    let third = stream.next("the next rotation after a NACK").await;
    assert_eq!(third.version_info, "3");
    let svid3 = svid_of(named(&secrets(&third), "default"), &agent.server);
    assert_ne!(svid3.leaf(), svid2.leaf());

    // A new subscription on the same stream (names changed) is answered at once. (Should a
    // rotation cross it, the request carries a stale nonce and is ignored, as in xDS: send
    // it again with the latest nonce, as Envoy would.)
    let id = format!("spiffe://{TD}{ENVOY_ID}");
    let mut last = third;
    let fourth = within("the answer to the new names", async {
        loop {
            stream
                .send
                .send(reply(&[id.as_str()], &last, None))
                .await
                .unwrap();
            let next = stream.next("the answer to the new names").await;
            if secrets(&next).iter().all(|s| s.name == id) {
                break next;
            }
            last = next;
        }
    })
    .await;
    let secrets4 = secrets(&fourth);
    assert_eq!(secrets4.len(), 1);
    assert_eq!(secrets4[0].name, id, "named as requested");
    assert!(fourth.version_info.parse::<u64>().unwrap() >= 4);
    agent.stop().await;
}

#[tokio::test]
async fn fetch_secrets_all_and_the_validator_switch() {
    let agent = Agent::start(Duration::from_secs(3600), my_uid()).await;
    let mut client = agent.sds().await;
    let id = format!("spiffe://{TD}{ENVOY_ID}");
    let td_id = format!("spiffe://{TD}");

    let response = within(
        "FetchSecrets",
        client.fetch_secrets(request(&["ALL", &id, &td_id], Some(envoy_node(None)))),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(
        response.version_info, "",
        "FetchSecrets has no version (as SPIRE)"
    );
    let fetched = secrets(&response);
    assert_eq!(fetched.len(), 3);
    svid_of(named(&fetched, &id), &agent.server);
    // ALL: the SPIFFE validator config with every bundle the caller is entitled to: its own
    // and the federated partner.test, never other.test.
    let all = spiffe_validator(validation_context(named(&fetched, "ALL")));
    assert_eq!(
        all.iter().map(|(td, _)| td.as_str()).collect::<Vec<_>>(),
        [TD, PARTNER]
    );
    assert_eq!(all[0].1, own_bundle_pem(&agent.server));
    let partner = format!("spiffe://{PARTNER}");
    let response = client
        .fetch_secrets(request(&[&partner], Some(envoy_node(None))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        spiffe_validator(validation_context(named(&secrets(&response), &partner))),
        [all[1].clone()]
    );
    let refused = client
        .fetch_secrets(request(
            &[&format!("spiffe://{OTHER}")],
            Some(envoy_node(None)),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "not federated with");
    assert_eq!(
        spiffe_validator(validation_context(named(&fetched, &td_id))),
        [(TD.to_owned(), own_bundle_pem(&agent.server))]
    );

    // The node metadata switch: a plain trusted_ca, as SPIRE writes it.
    let response = client
        .fetch_secrets(request(&["ROOTCA"], Some(envoy_node(Some(true)))))
        .await
        .unwrap()
        .into_inner();
    let rootca = secrets(&response);
    let context = validation_context(named(&rootca, "ROOTCA"));
    assert!(context.custom_validator_config.is_none());
    assert_eq!(
        pem_text(inline(&context.trusted_ca)),
        own_bundle_pem(&agent.server)
    );

    // Names the caller holds nothing for are refused, as SPIRE refuses them.
    let refused = client
        .fetch_secrets(request(
            &["default", "spiffe://example.org/someone-else"],
            Some(envoy_node(None)),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("spiffe://example.org/someone-else"),
        "{}",
        refused.message()
    );

    // DeltaSecrets is not served.
    let (_send, requests) = mpsc::channel::<DeltaDiscoveryRequest>(1);
    let delta = client
        .delta_secrets(ReceiverStream::new(requests))
        .await
        .unwrap_err();
    assert_eq!(delta.code(), Code::Unimplemented);

    // The Workload API on the same socket still requires its header.
    let mut workload = SpiffeWorkloadApiClient::new(agent.channel().await);
    let refused = workload
        .fetch_x509svid(X509svidRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    agent.stop().await;
}

#[tokio::test]
async fn a_caller_without_identity_is_refused() {
    // The only entry is for another uid.
    let agent = Agent::start(Duration::from_secs(3600), my_uid().wrapping_add(1)).await;
    let mut client = agent.sds().await;

    let (send, requests) = mpsc::channel(1);
    send.send(request(&["default"], Some(envoy_node(None))))
        .await
        .unwrap();
    let refused = within(
        "StreamSecrets",
        client.stream_secrets(ReceiverStream::new(requests)),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(refused.message(), "no identity issued");

    let refused = client
        .fetch_secrets(request(&["ROOTCA"], Some(envoy_node(None))))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(refused.message(), "no identity issued");
    agent.stop().await;
}

#[tokio::test]
async fn changes_that_leave_the_answer_alone_send_nothing_and_losing_the_identity_ends_the_stream()
{
    let agent = Agent::start(Duration::from_secs(3600), my_uid()).await;
    let mut client = agent.sds().await;
    let mut stream =
        SdsStream::open(&mut client, request(&["ROOTCA"], Some(envoy_node(None)))).await;
    let first = stream.next("the first response").await;
    assert_eq!(first.version_info, "1");
    stream
        .send
        .send(reply(&["ROOTCA"], &first, None))
        .await
        .unwrap();

    // Another workload's entry arrives: a change for the agent, none for this caller. A
    // FetchSecrets round trip lets the stream see it (the runtime runs the woken stream while
    // the call crosses the socket). Then the own bundle gains a root: the next message is
    // version 2 with it, so nothing went out for the first change.
    agent.manager.set_view(view(&[
        (ENVOY_ID, my_uid()),
        ("/other", my_uid().wrapping_add(1)),
    ]));
    client
        .fetch_secrets(request(&["ROOTCA"], Some(envoy_node(None))))
        .await
        .unwrap();
    let td = TrustDomain::new(TD).unwrap();
    let extra =
        lanyard_svid::RootCa::generate(&td, Duration::from_secs(3600), SystemTime::now()).unwrap();
    let mut bundles = agent.server.bundles();
    let mut own = bundles.get(&td).unwrap().clone();
    own.add_x509_authority(extra.cert_der().clone());
    let own_pem = own.x509_authorities_pem();
    bundles.insert(own);
    agent.manager.set_bundles(bundles);
    let second = stream.next("the new bundle").await;
    assert_eq!(second.version_info, "2");
    assert_eq!(
        spiffe_validator(validation_context(named(&secrets(&second), "ROOTCA"))),
        [(TD.to_owned(), own_pem)]
    );

    // This caller's entry goes: the stream ends with the Workload API's refusal.
    agent
        .manager
        .set_view(view(&[("/other", my_uid().wrapping_add(1))]));
    let ended = within("the stream to end", stream.receive.message())
        .await
        .expect_err("the stream ends");
    assert_eq!(ended.code(), Code::PermissionDenied);
    assert_eq!(ended.message(), "no identity issued");
    agent.stop().await;
}
