//! The server's side of the CA life cycle, through real gRPC and the real `kube` client:
//! - a cert-manager-shaped CA Secret (`kubernetes.io/tls`: `ca.crt`, `tls.crt` = intermediate
//!   then its issuer, `tls.key` a SEC1 `EC PRIVATE KEY`) and `--ca-jwt-secret` naming a second
//!   cert-manager Certificate's Secret whose SEC1 `tls.key` signs JWT-SVIDs: the server loads
//!   them under the rendered RBAC (plus a read of that Secret) and signs both kinds;
//! - `jwt-next.key` / `jwt-previous.key` in the CA Secret are published and never sign;
//! - `SyncBundle`: the bundle, then acknowledgements seen in the metrics (current, lagging,
//!   unacknowledging), a malformed one ignored, a flood ending the stream.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use futures::SinkExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_fixture::{FixtureOptions, KubeFixture, TokenBinding};
use lanyard_e2e::cluster::{self, bundle_configmap};
use lanyard_proto::identity::v1 as wire;
use lanyard_proto::identity::v1::attest_node_request::Method;
use lanyard_server::config::RunArgs;
use lanyard_svid::ca::RootCa;
use lanyard_svid::jwt::JwtSigner;
use lanyard_svid::x509::X509Svid;
use lanyard_svid::{BundleSet, TrustBundle};
use tonic::Code;

const DAY: Duration = Duration::from_secs(86_400);

// --- DER and PEM, as cert-manager's Secrets hold them ------------------------------------

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// One DER element at the start of `der`: (tag, header + content, content).
fn der_element(der: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = der[0];
    let (len, header) = match der[1] {
        n if n < 0x80 => (n as usize, 2),
        0x81 => (der[2] as usize, 3),
        0x82 => (((der[2] as usize) << 8) | der[3] as usize, 4),
        _ => panic!("a key is never that long"),
    };
    (tag, &der[..header + len], &der[header..header + len])
}

fn der_children(mut content: &[u8]) -> Vec<(u8, &[u8], &[u8])> {
    let mut out = Vec::new();
    while !content.is_empty() {
        let element = der_element(content);
        content = &content[element.1.len()..];
        out.push(element);
    }
    out
}

fn der_wrap(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match content.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n <= 0xff => out.extend([0x81, n as u8]),
        n => out.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(content);
    out
}

/// A P-256 PKCS#8 PEM key as cert-manager writes it by default (Go's `MarshalECPrivateKey`):
/// `EC PRIVATE KEY` PEM of an `ECPrivateKey` with its `[0]` named-curve parameters and `[1]`
/// public key.
fn cert_manager_sec1(pkcs8_pem: &str) -> String {
    use rustls_pki_types::pem::PemObject;
    let pkcs8 = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pkcs8_pem.as_bytes()).unwrap();
    let (_, _, info) = der_element(pkcs8.secret_pkcs8_der());
    let fields = der_children(info);
    let (tag, _, sec1) = fields[2];
    assert_eq!(tag, 0x04, "PKCS#8 privateKey is an OCTET STRING");
    let (_, _, ec) = der_element(sec1);
    let parts = der_children(ec);
    // version, privateKey, [0] prime256v1, [1] publicKey
    let p256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let mut body = Vec::new();
    body.extend_from_slice(parts[0].1);
    body.extend_from_slice(parts[1].1);
    body.extend(der_wrap(0xa0, &p256));
    let public = parts
        .iter()
        .find(|p| p.0 == 0xa1)
        .expect("ring's PKCS#8 keys carry the public key");
    body.extend_from_slice(public.1);
    pem("EC PRIVATE KEY", &der_wrap(0x30, &body))
}

fn secret(name: &str, annotations: &[(&str, &str)], data: Vec<(&str, Vec<u8>)>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("lanyard".into()),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_string(), ByteString(v)))
                .collect(),
        ),
        ..Default::default()
    }
}

// --- A cluster seeded as cert-manager would leave it ------------------------------------

struct Cluster {
    fixture: KubeFixture,
    root: RootCa,
    agent_pod_uid: String,
    dir: tempfile::TempDir,
}

/// The fixture with the rendered server RBAC, `ca_secret` and a bundle of `root`, the agent's
/// pod and `default/web-1` on node-1.
async fn cluster(root: RootCa, ca_secret: &Secret) -> Cluster {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fixture = KubeFixture::start(FixtureOptions::default()).await.unwrap();
    fixture.apply_yaml(&cluster::server_rbac()).unwrap();
    let store = fixture.store();
    store.create(ca_secret).unwrap();
    store.create(&bundle_configmap(&root.cert_pem())).unwrap();
    let agent = store
        .create(&cluster::pod(
            "lanyard",
            "lanyard-agent-x",
            "lanyard-agent",
            "node-1",
            None,
        ))
        .unwrap();
    store
        .create(&cluster::pod("default", "web-1", "web", "node-1", None))
        .unwrap();
    Cluster {
        fixture,
        root,
        agent_pod_uid: agent.metadata.uid.unwrap(),
        dir: tempfile::tempdir().unwrap(),
    }
}

impl Cluster {
    async fn server(&self, jwt_secret: Option<&str>) -> TestServer {
        let client = self
            .fixture
            .client_for(&self.fixture.issue_api_token("lanyard", "lanyard-server"))
            .unwrap();
        let args = RunArgs {
            health: Some("127.0.0.1:0".parse().unwrap()),
            ca_jwt_secret: jwt_secret.map(Into::into),
            replica_name: Some("server-0".into()),
            ..cluster_args(self.dir.path().join("server"))
        };
        start(args, Some(client)).await
    }

    async fn agent(&self, server: &TestServer) -> Caller {
        let caller = Caller::new(BundleSet::from(TrustBundle::from_x509_authorities(
            td(),
            [self.root.cert_der().clone()],
        )));
        let token = self.fixture.issue_service_account_token(
            "lanyard",
            "lanyard-agent",
            Some(TokenBinding {
                pod_name: "lanyard-agent-x".into(),
                pod_uid: self.agent_pod_uid.clone(),
                node_name: Some("node-1".into()),
            }),
            &["lanyard-server"],
            Duration::from_secs(3600),
        );
        caller
            .attest(server.addr, Method::K8sPsatToken(token))
            .await
            .unwrap();
        caller
    }
}

fn pod_workload(fixture: &KubeFixture) -> wire::Workload {
    let uid = fixture
        .store()
        .get::<Pod>("default", "web-1")
        .unwrap()
        .metadata
        .uid
        .unwrap();
    wire::Workload {
        kind: Some(wire::workload::Kind::Pod(wire::Pod {
            namespace: "default".into(),
            name: "web-1".into(),
            uid,
            service_account: "web".into(),
        })),
        entry_pod: None,
    }
}

#[tokio::test]
async fn a_cert_manager_secret_and_jwt_secret_are_loaded_and_sign() {
    let now = SystemTime::now();
    let root = RootCa::generate(&td(), DAY * 365, now).unwrap();
    let intermediate = root.issue_intermediate(DAY * 90, now).unwrap();
    // The CA issuer's Certificate: tls.crt is the issued certificate then its issuer's chain.
    let annotations = [
        ("cert-manager.io/certificate-name", "lanyard-ca"),
        ("cert-manager.io/issuer-kind", "Issuer"),
        ("cert-manager.io/issuer-name", "lanyard-root"),
    ];
    let ca = secret(
        "lanyard-ca",
        &annotations,
        vec![
            ("ca.crt", root.cert_pem().into_bytes()),
            (
                "tls.crt",
                format!("{}{}", intermediate.cert_chain_pem(), root.cert_pem()).into_bytes(),
            ),
            (
                "tls.key",
                cert_manager_sec1(&intermediate.key_pem()).into_bytes(),
            ),
        ],
    );
    assert!(
        String::from_utf8_lossy(&ca.data.as_ref().unwrap()["tls.key"].0)
            .starts_with("-----BEGIN EC PRIVATE KEY-----")
    );
    // The JWT key: a second Certificate (ECDSA P-256), used only for its key.
    let jwt_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let jwt_cert = rcgen::CertificateParams::new(vec!["lanyard-jwt.lanyard.svc".into()])
        .unwrap()
        .self_signed(&jwt_key)
        .unwrap();
    let jwt_secret = secret(
        "lanyard-jwt",
        &[("cert-manager.io/certificate-name", "lanyard-jwt")],
        vec![
            ("ca.crt", jwt_cert.pem().into_bytes()),
            ("tls.crt", jwt_cert.pem().into_bytes()),
            (
                "tls.key",
                cert_manager_sec1(&jwt_key.serialize_pem()).into_bytes(),
            ),
        ],
    );
    let expected_kid = JwtSigner::from_pkcs8(&jwt_key.serialize_der())
        .unwrap()
        .key_id()
        .to_owned();

    let c = cluster(root, &ca).await;
    c.fixture.store().create(&jwt_secret).unwrap();
    // What install would add for --ca-jwt-secret: read that one Secret, by name.
    c.fixture
        .apply_yaml(
            r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: lanyard-server-jwt, namespace: lanyard}
rules:
- apiGroups: [""]
  resources: [secrets]
  resourceNames: [lanyard-jwt]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: lanyard-server-jwt, namespace: lanyard}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: lanyard-server-jwt}
subjects: [{kind: ServiceAccount, name: lanyard-server, namespace: lanyard}]
"#,
        )
        .unwrap();

    let server = c.server(Some("lanyard/lanyard-jwt")).await;
    let agent = c.agent(&server).await;
    let mut client = agent.client(server.addr).await;

    // X.509: under the cert-manager intermediate, chaining to the root.
    let key = lanyard_svid::csr::KeyAndCsr::generate(lanyard_svid::keys::KeyAlgorithm::EcdsaP256)
        .unwrap();
    let svid = eventually("a pod SVID", || {
        let mut client = client.clone();
        let request = wire::MintX509SvidRequest {
            workload: Some(pod_workload(&c.fixture)),
            csr: key.csr_der.clone(),
        };
        async move {
            let response = client
                .mint_x509svi_ds(wire::MintX509SvidsRequest {
                    requests: vec![request],
                })
                .await
                .unwrap()
                .into_inner();
            match response.results[0].result.clone().unwrap() {
                wire::mint_x509_svid_result::Result::Svid(s) => Some(s),
                wire::mint_x509_svid_result::Result::Refusal(_) => None,
            }
        }
    })
    .await;
    assert_eq!(
        svid.cert_chain[1],
        intermediate_der(&intermediate),
        "signed by the Secret's intermediate"
    );
    let chain: Vec<_> = svid.cert_chain.into_iter().map(Into::into).collect();
    X509Svid::parse(chain.clone(), None).unwrap();
    let bundle = BundleSet::from(TrustBundle::from_x509_authorities(
        td(),
        [c.root.cert_der().clone()],
    ));
    lanyard_svid::verify_peer(
        &chain,
        &bundle,
        SystemTime::now(),
        lanyard_svid::PeerRole::Server,
    )
    .expect("the SVID chains to the root");

    // JWT: signed with the JWT Secret's tls.key, valid under the served bundle.
    let minted = client
        .mint_jwtsvid(wire::MintJwtSvidRequest {
            workload: Some(pod_workload(&c.fixture)),
            audience: vec!["db".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let mut bundles = client
        .watch_bundle(wire::WatchBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    let served =
        TrustBundle::try_from(&bundles.message().await.unwrap().unwrap().bundle.unwrap()).unwrap();
    assert_eq!(
        served
            .jwt_authorities()
            .iter()
            .map(|a| a.key_id.as_str())
            .collect::<Vec<_>>(),
        [expected_kid.as_str()]
    );
    let validated = lanyard_svid::jwt::validate(
        &minted.token,
        "db",
        &BundleSet::from(served),
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(
        validated.spiffe_id.to_string(),
        "spiffe://example.org/ns/default/sa/web"
    );
}

fn intermediate_der(issuer: &lanyard_svid::Issuer) -> Vec<u8> {
    issuer.cert_der().as_ref().to_vec()
}

#[tokio::test]
async fn next_and_previous_jwt_keys_are_published_and_never_sign() {
    let root = RootCa::generate(&td(), DAY * 30, SystemTime::now()).unwrap();
    let ca = cluster::ca_secret(&root);
    let c = cluster(root, &ca).await;
    let server = c.server(None).await;
    let agent = c.agent(&server).await;
    let mut client = agent.client(server.addr).await;
    let mut bundles = client
        .watch_bundle(wire::WatchBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    let first =
        TrustBundle::try_from(&bundles.message().await.unwrap().unwrap().bundle.unwrap()).unwrap();
    assert_eq!(first.jwt_authorities().len(), 1);
    let signing_kid = first.jwt_authorities()[0].key_id.clone();

    // The rotation's `add` (jwt-next.key) and a `switch` leftover (jwt-previous.key), the
    // latter SEC1.
    let (next, next_pkcs8) = JwtSigner::generate().unwrap();
    let (previous, previous_pkcs8) = JwtSigner::generate().unwrap();
    let previous_sec1 = cert_manager_sec1(&pem("PRIVATE KEY", &previous_pkcs8));
    c.fixture
        .store()
        .modify::<Secret>("lanyard", "lanyard-ca", |s| {
            let data = s.data.get_or_insert_with(Default::default);
            data.insert(
                "jwt-next.key".into(),
                ByteString(pem("PRIVATE KEY", &next_pkcs8).into_bytes()),
            );
            data.insert(
                "jwt-previous.key".into(),
                ByteString(previous_sec1.into_bytes()),
            );
        })
        .unwrap();
    let second = tokio::time::timeout(DEADLINE, bundles.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let second = TrustBundle::try_from(&second.bundle.unwrap()).unwrap();
    let mut kids: Vec<_> = second
        .jwt_authorities()
        .iter()
        .map(|a| a.key_id.clone())
        .collect();
    kids.sort();
    let mut want = vec![
        signing_kid.clone(),
        next.key_id().to_owned(),
        previous.key_id().to_owned(),
    ];
    want.sort();
    assert_eq!(kids, want);
    assert_ne!(second.version(), first.version());
    assert_eq!(second.x509_authorities(), first.x509_authorities());

    // Tokens are still signed by jwt.key.
    let minted = client
        .mint_jwtsvid(wire::MintJwtSvidRequest {
            workload: Some(pod_workload(&c.fixture)),
            audience: vec!["db".into()],
        })
        .await;
    let minted = match minted {
        Ok(m) => m.into_inner(),
        // The pod index may not have listed web-1 yet.
        Err(_) => {
            eventually("a JWT-SVID", || {
                let mut client = client.clone();
                let workload = pod_workload(&c.fixture);
                async move {
                    client
                        .mint_jwtsvid(wire::MintJwtSvidRequest {
                            workload: Some(workload),
                            audience: vec!["db".into()],
                        })
                        .await
                        .ok()
                        .map(|r| r.into_inner())
                }
            })
            .await
        }
    };
    let header = minted.token.split('.').next().unwrap();
    use base64::Engine;
    let header: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], signing_kid.as_str());

    // A broken jwt-next.key is refused and the material in force stays.
    c.fixture
        .store()
        .modify::<Secret>("lanyard", "lanyard-ca", |s| {
            s.data
                .get_or_insert_with(Default::default)
                .insert("jwt-next.key".into(), ByteString(b"not a key".to_vec()));
        })
        .unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(500), bundles.message()).await;
    assert!(quiet.is_err(), "a refused reload publishes nothing");
}

/// The metric line `name{labels} value` in the health listener's /metrics, parsed.
async fn metric(server: &TestServer, series: &str) -> Option<i64> {
    let text = http_get(server.health.unwrap(), "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn sync_bundle_acknowledgements_are_counted_checked_and_bounded() {
    let root = RootCa::generate(&td(), DAY * 30, SystemTime::now()).unwrap();
    let ca = cluster::ca_secret(&root);
    let c = cluster(root, &ca).await;
    let server = c.server(None).await;
    let agent = c.agent(&server).await;
    let client = agent.client(server.addr).await;

    let (mut acks, rx) = futures::channel::mpsc::channel(64);
    let mut bundles = client.clone().sync_bundle(rx).await.unwrap().into_inner();
    let bundle =
        TrustBundle::try_from(&bundles.message().await.unwrap().unwrap().bundle.unwrap()).unwrap();
    let version = bundle.version();
    let root_fp = lanyard_svid::bundle::certificate_fingerprint(c.root.cert_der());
    let agents = |state: &'static str| {
        let server = &server;
        async move {
            metric(
                server,
                &format!("lanyard_server_bundle_agents{{state=\"{state}\"}}"),
            )
            .await
        }
    };
    eventually("the agent counted before it acknowledges", || async {
        (agents("unacknowledging").await == Some(1)).then_some(())
    })
    .await;

    // An acknowledgement of another version: lagging.
    acks.send(wire::BundleAck {
        version: "0123456789abcdef".into(),
        svid_roots: vec![root_fp.clone()],
    })
    .await
    .unwrap();
    eventually("a lagging agent", || async {
        (agents("lagging").await == Some(1) && agents("unacknowledging").await == Some(0))
            .then_some(())
    })
    .await;
    // The served one: current, and counted under its version.
    acks.send(wire::BundleAck {
        version: version.clone(),
        svid_roots: vec![root_fp.clone()],
    })
    .await
    .unwrap();
    eventually("a current agent", || async {
        (agents("current").await == Some(1) && agents("lagging").await == Some(0)).then_some(())
    })
    .await;
    assert_eq!(
        metric(
            &server,
            &format!("lanyard_server_bundle_version_agents{{version=\"{version}\"}}")
        )
        .await,
        Some(1)
    );
    assert_eq!(
        metric(
            &server,
            &format!("lanyard_server_bundle_served{{version=\"{version}\"}}")
        )
        .await,
        Some(1)
    );

    // Malformed acknowledgements are ignored, counted, and the stream goes on.
    for bad in [
        wire::BundleAck {
            version: "not-hex-at-all!!".into(),
            svid_roots: vec![],
        },
        wire::BundleAck {
            version: version.clone(),
            svid_roots: vec![root_fp.clone(); 65],
        },
        wire::BundleAck {
            version: version.clone(),
            svid_roots: vec!["zz".into()],
        },
    ] {
        acks.send(bad).await.unwrap();
    }
    for reason in ["bad_version", "too_many_roots", "bad_root_fingerprint"] {
        let series =
            format!("lanyard_server_refusals_total{{rpc=\"sync_bundle\",reason=\"{reason}\"}}");
        eventually(&series.clone(), || {
            let series = series.clone();
            let server = &server;
            async move { (metric(server, &series).await == Some(1)).then_some(()) }
        })
        .await;
    }
    assert_eq!(
        agents("current").await,
        Some(1),
        "the last valid one stands"
    );

    // A flood ends the stream with ResourceExhausted.
    for _ in 0..40 {
        if acks
            .send(wire::BundleAck {
                version: version.clone(),
                svid_roots: vec![],
            })
            .await
            .is_err()
        {
            break;
        }
    }
    let ended = tokio::time::timeout(DEADLINE, async {
        loop {
            match bundles.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(ended.code(), Code::ResourceExhausted, "{ended:?}");
    assert!(ended.message().starts_with("rate_limited"), "{ended:?}");
    // The stream is over: the agent is no longer counted.
    eventually("the agent gone", || async {
        (agents("current").await == Some(0) && agents("unacknowledging").await == Some(0))
            .then_some(())
    })
    .await;

    // A WatchBundle agent never acknowledges.
    let watch = client
        .clone()
        .watch_bundle(wire::WatchBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    eventually("the WatchBundle agent counted", || async {
        (agents("unacknowledging").await == Some(1)).then_some(())
    })
    .await;
    drop(watch);
    eventually("the WatchBundle agent gone", || async {
        (agents("unacknowledging").await == Some(0)).then_some(())
    })
    .await;
}
