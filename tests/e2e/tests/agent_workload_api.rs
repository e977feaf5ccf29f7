//! The Workload API of a real `lanyard-agent` process attested to a real `lanyard-server`
//! process (data-dir mode, join token), over its Unix socket:
//!
//! - the Rust `spiffe` crate 0.19, unchanged, fetches an X.509-SVID chaining to the server's
//!   root, the X.509 and JWT bundles, a JWT-SVID, has the agent validate the JWT (and refuse
//!   it for another audience), and sees a rotation of a 4 s SVID arrive on an open stream;
//! - refusals over the real socket (a compact set: the in-process tests have the full list):
//!   a missing or wrong security header, a JWT request without audience, a process of a
//!   user with no entry ("no identity issued"), a caller past its stream limit (while another
//!   caller is still served), and garbage on the socket that hurts no other client.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use lanyard_client::channel::{connect, request};
use lanyard_e2e::DEADLINE;
use lanyard_e2e::client::{RunAs, api, api_until};
use lanyard_e2e::stack::{Agent, Server, TRUST_DOMAIN};
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use lanyard_proto::workload::{
    JwtsvidRequest, ValidateJwtsvidRequest, X509BundlesRequest, X509BundlesResponse,
    X509svidRequest,
};
use lanyard_svid::bundle::certificates_from_pem;
use lanyard_svid::{BundleSet, PeerRole, TrustBundle, TrustDomain, verify_peer};
use tonic::Code;
use tonic::transport::Channel;

/// A uid with no entry anywhere in these tests.
const STRANGER: u32 = 54_321;
/// `nobody`, which has an entry in the refusal test.
const NOBODY: u32 = 65_534;

fn my_uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

fn entry(path: &str, uid: u32, ttl: Option<&str>) -> String {
    let ttl = ttl
        .map(|t| format!("x509_ttl = \"{t}\"\n"))
        .unwrap_or_default();
    format!(
        "[[entries]]\nspiffe_id = \"spiffe://{TRUST_DOMAIN}{path}\"\nselectors = [\"unix:uid:{uid}\"]\nnodes = [\"*\"]\n{ttl}"
    )
}

/// A temp dir other users can traverse (the socket is 0777 in a 0755 dir; the temp dir
/// itself starts 0700), so clients run under other uids reach the socket.
fn shared_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// The server's roots, as `lanyard-server bundle show` prints them.
fn server_bundle(server: &Server, dir: &Path) -> BundleSet {
    let path = dir.join("roots.pem");
    server.write_bundle(&path);
    let roots = certificates_from_pem(&std::fs::read(&path).unwrap()).unwrap();
    BundleSet::from(TrustBundle::from_x509_authorities(
        TrustDomain::new(TRUST_DOMAIN).unwrap(),
        roots,
    ))
}

/// Runs blocking harness code (waiting on a child's output) without stalling the runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Retries `attempt` until it succeeds (as SPIFFE clients retry "no identity issued" while the
/// agent's node view is still arriving), failing with the last error after the deadline.
async fn retrying<T, E: std::fmt::Debug, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match attempt().await {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => panic!("{what}: still failing: {e:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn raw_client(socket: &Path) -> SpiffeWorkloadApiClient<Channel> {
    let channel = within("connect", connect(socket))
        .await
        .expect("connect to the agent's socket");
    SpiffeWorkloadApiClient::new(channel)
}

fn with_header<T>(message: T) -> tonic::Request<T> {
    request(message, DEADLINE)
}

/// Opens a FetchX509Bundles stream and reads its first message.
async fn open_bundle_stream(
    client: &mut SpiffeWorkloadApiClient<Channel>,
) -> Result<tonic::Streaming<X509BundlesResponse>, tonic::Status> {
    let mut stream = client
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await?
        .into_inner();
    match within("a bundle stream's first message", stream.message()).await? {
        Some(_) => Ok(stream),
        None => Err(tonic::Status::unknown("the stream ended at once")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spiffe_crate_fetches_validates_and_sees_a_rotation() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = shared_tempdir();
    let config = entry("/rotating", my_uid(), Some("4s"));
    let (server, agent) = blocking(|| {
        let server = Server::start(tmp.path(), &config);
        let agent = Agent::start(tmp.path(), &server, "node-1");
        (server, agent)
    });
    let roots = blocking(|| server_bundle(&server, tmp.path()));
    let td = spiffe::TrustDomain::new(TRUST_DOMAIN).unwrap();
    let want = format!("spiffe://{TRUST_DOMAIN}/rotating");

    let client = within(
        "spiffe client connect",
        spiffe::WorkloadApiClient::connect_to(format!("unix://{}", agent.socket.display())),
    )
    .await
    .unwrap();

    // X.509-SVID: our entry's ID, a chain to the server's root, a usable key.
    let svid = retrying("fetch_x509_svid", || client.fetch_x509_svid()).await;
    assert_eq!(svid.spiffe_id().to_string(), want);
    let chain: Vec<_> = svid
        .cert_chain()
        .iter()
        .map(|c| rustls::pki_types::CertificateDer::from(c.as_ref().to_vec()))
        .collect();
    let verified = verify_peer(&chain, &roots, SystemTime::now(), PeerRole::Client)
        .expect("the SVID chains to the server's root");
    assert_eq!(verified.to_string(), want);
    assert!(!svid.private_key().as_ref().is_empty());

    // Bundles: our trust domain's X.509 roots are the server's; its JWT keys are there.
    let bundles = within("fetch_x509_bundles", client.fetch_x509_bundles())
        .await
        .unwrap();
    let own = bundles.get(&td).expect("own trust domain's bundle");
    let served: Vec<&[u8]> = own.authorities().iter().map(|c| c.as_ref()).collect();
    let expected: Vec<&[u8]> = roots
        .get(&TrustDomain::new(TRUST_DOMAIN).unwrap())
        .unwrap()
        .x509_authorities()
        .iter()
        .map(|c| c.as_ref())
        .collect();
    assert_eq!(served, expected);
    let jwt_bundles = within("fetch_jwt_bundles", client.fetch_jwt_bundles())
        .await
        .unwrap();
    assert!(jwt_bundles.get(&td).is_some(), "own JWT bundle");

    // JWT-SVID, minted by the server; the agent validates it for its audience only.
    let token = within("fetch_jwt_token", client.fetch_jwt_token(["db"], None))
        .await
        .unwrap();
    let validated = within(
        "validate_jwt_token",
        client.validate_jwt_token("db", &token),
    )
    .await
    .expect("the agent validates the JWT-SVID");
    assert_eq!(validated.spiffe_id().to_string(), want);
    assert_eq!(validated.audience(), ["db".to_string()]);
    let refused = within(
        "validate_jwt_token (other audience)",
        client.validate_jwt_token("not-db", &token),
    )
    .await;
    assert!(refused.is_err(), "a JWT for another audience was accepted");

    // A rotation of the 4 s SVID (renewed at about half its life) reaches an open stream.
    let mut stream = within("stream_x509_contexts", client.stream_x509_contexts())
        .await
        .unwrap();
    let first = within("the first context", stream.next())
        .await
        .expect("a first message")
        .expect("a context");
    let first_leaf = first.default_svid().unwrap().leaf().as_ref().to_vec();
    let rotated = loop {
        let next = within("a rotated context", stream.next())
            .await
            .expect("the stream stays open")
            .expect("a context");
        let leaf = next.default_svid().unwrap().leaf().as_ref().to_vec();
        if leaf != first_leaf {
            break next;
        }
    };
    let rotated = rotated.default_svid().unwrap();
    assert_eq!(rotated.spiffe_id().to_string(), want);
    assert_ne!(rotated.private_key().as_ref(), svid.private_key().as_ref());
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_over_the_real_socket() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = shared_tempdir();
    let config = format!(
        "{}{}",
        entry("/me", my_uid(), None),
        entry("/nobody", NOBODY, None)
    );
    let (_server, agent) = blocking(|| {
        let server = Server::start(tmp.path(), &config);
        let agent = Agent::start(tmp.path(), &server, "node-1");
        (server, agent)
    });
    let socket = agent.socket.clone();

    // Our own identity first (the node view has arrived after this).
    let mine = blocking(|| api_until(&socket, &["fetch", "x509"], RunAs::Me, |o| o.success));
    assert!(
        mine.stdout.starts_with("spiffe://example.org/me "),
        "{mine:?}"
    );

    // A process of a user with no entry: "no identity issued", from the real CLI process.
    let stranger = blocking(|| {
        api(
            &socket,
            &["fetch", "x509"],
            RunAs::User {
                uid: STRANGER,
                gid: STRANGER,
            },
        )
    });
    assert!(!stranger.success, "{stranger:?}");
    assert!(
        stranger.stderr.contains("PermissionDenied")
            && stranger.stderr.contains("no identity issued"),
        "{stranger:?}"
    );
    // ...while `nobody`, which has an entry, gets its own (and not ours).
    let nobody = blocking(|| {
        api(
            &socket,
            &["fetch", "x509"],
            RunAs::User {
                uid: NOBODY,
                gid: NOBODY,
            },
        )
    });
    assert!(
        nobody.success && nobody.stdout.starts_with("spiffe://example.org/nobody "),
        "{nobody:?}"
    );

    // Security header missing or wrong: InvalidArgument, on every RPC kind.
    let mut raw = raw_client(&socket).await;
    let missing = raw
        .fetch_x509svid(tonic::Request::new(X509svidRequest {}))
        .await
        .map(|_| ())
        .expect_err("a call without the header was served");
    assert_eq!(missing.code(), Code::InvalidArgument, "{missing:?}");
    assert!(
        missing.message().contains("workload.spiffe.io"),
        "{missing:?}"
    );
    let mut wrong = tonic::Request::new(JwtsvidRequest {
        audience: vec!["db".into()],
        spiffe_id: String::new(),
    });
    wrong
        .metadata_mut()
        .insert("workload.spiffe.io", "false".parse().unwrap());
    let wrong = raw
        .fetch_jwtsvid(wrong)
        .await
        .expect_err("a wrong header was served");
    assert_eq!(wrong.code(), Code::InvalidArgument, "{wrong:?}");

    // JWT-SVID without an audience; a JWT presented for another audience.
    let no_audience = raw
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec![],
            spiffe_id: String::new(),
        }))
        .await
        .expect_err("a JWT without audience was minted");
    assert_eq!(no_audience.code(), Code::InvalidArgument, "{no_audience:?}");
    let token = raw
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["db".into()],
            spiffe_id: String::new(),
        }))
        .await
        .expect("a JWT-SVID for db")
        .into_inner()
        .svids
        .remove(0)
        .svid;
    let other = raw
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "payments".into(),
            svid: token.clone(),
        }))
        .await
        .expect_err("a JWT for db validated for payments");
    assert_eq!(other.code(), Code::InvalidArgument, "{other:?}");
    let ok = raw
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "db".into(),
            svid: token,
        }))
        .await
        .expect("the JWT validates for its own audience")
        .into_inner();
    assert_eq!(ok.spiffe_id, "spiffe://example.org/me");

    // Stream limit (64 per caller): fill it over one connection, the next is refused on
    // another; another caller (nobody) is still served meanwhile; closing one frees a slot.
    let limit = lanyard_agent::workload_api::Limits::default().streams_per_caller;
    let mut streams = Vec::with_capacity(limit);
    let mut filler = raw_client(&socket).await;
    for i in 0..limit {
        let s = open_bundle_stream(&mut filler)
            .await
            .unwrap_or_else(|e| panic!("stream {i} of {limit}: {e:?}"));
        streams.push(s);
    }
    let mut extra = raw_client(&socket).await;
    let refused = open_bundle_stream(&mut extra)
        .await
        .map(|_| ())
        .expect_err("a stream past the limit was opened");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let other_caller = blocking(|| {
        api(
            &socket,
            &["fetch", "bundles"],
            RunAs::User {
                uid: NOBODY,
                gid: NOBODY,
            },
        )
    });
    assert!(other_caller.success, "{other_caller:?}");
    drop(streams.pop());
    retrying("a stream after one closed", || {
        let mut c = extra.clone();
        async move { open_bundle_stream(&mut c).await.map(|_| ()) }
    })
    .await;
    drop(streams);

    // Garbage on the socket: the agent closes that connection; a silent half-preface
    // connection stays harmless; other clients are served meanwhile.
    let mut garbage = UnixStream::connect(&socket).unwrap();
    garbage
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    let junk: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 251) as u8).collect();
    let _ = garbage.write_all(&junk);
    let mut stalled = UnixStream::connect(&socket).unwrap();
    stalled.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    let served = blocking(|| api(&socket, &["fetch", "x509"], RunAs::Me));
    assert!(served.success, "{served:?}");
    let mut buf = [0u8; 1024];
    let closed = blocking(|| {
        let start = Instant::now();
        loop {
            match garbage.read(&mut buf) {
                Ok(0) | Err(_) => return true,
                // Whatever the agent answers (a GOAWAY at most), it then closes.
                Ok(_) if start.elapsed() < DEADLINE => continue,
                Ok(_) => return false,
            }
        }
    });
    assert!(closed, "the garbage connection was not closed");
    let after = within(
        "fetch after garbage",
        raw.fetch_x509svid(with_header(X509svidRequest {})),
    )
    .await
    .expect("the first connection still works");
    let first = within("its first message", after.into_inner().message())
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(first.svids[0].spiffe_id, "spiffe://example.org/me");
    drop(stalled);
    drop(agent);
}
