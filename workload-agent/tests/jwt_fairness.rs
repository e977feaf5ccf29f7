//! Issue 14, finding 9: one workload calling FetchJWTSVID in a loop used up the node's mint
//! budget at the server, and every other workload got `rate_limited`.
//!
//! Against the real Workload API on the real socket (`socket::serve`, attestation from
//! `/proc`), with a stand-in [`WorkloadIdentities`] that plays the server: it grants each uid
//! its own identity (`spiffe://example.org/uid/<uid>`) and counts every mint it is asked for.
//! - The same request again and again is answered from the agent's cache: one mint.
//! - A caller (this process, uid 0) minting as fast as it can for ever new audiences gets its
//!   share of the budget and then `ResourceExhausted` (`rate_limited`) from the agent, without
//!   the server being asked; another uid (the `lanyard-agent api` CLI run by `setpriv`) then
//!   still gets a token, of its own identity, for an audience uid 0 has a cached token for.

mod workload_api_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use lanyard_agent::attest::{Attested, WorkloadAttestor};
use lanyard_agent::identities::{Entitlement, IdentityError, WorkloadIdentities};
use lanyard_agent::socket::{self, ConnectionLimits, Services};
use lanyard_agent::workload_api::{JwtLimits, Limits, WorkloadApiMetrics};
use lanyard_proto::identity::v1 as id_wire;
use lanyard_proto::workload::JwtsvidRequest;
use lanyard_svid::jwt::JwtSigner;
use lanyard_svid::selector::SelectorKey;
use lanyard_svid::x509::X509Svid;
use lanyard_svid::{BundleSet, SpiffeId};
use tokio::sync::watch;
use tonic::Code;
use workload_api_support::{client_at, eventually, req};

/// Each uid its own identity; JWT-SVIDs minted here and counted, as the server would.
struct PerUid {
    signer: JwtSigner,
    /// Mints per SPIFFE ID.
    mints: Mutex<HashMap<String, usize>>,
}

impl PerUid {
    fn mints(&self, id: &str) -> usize {
        self.mints.lock().unwrap().get(id).copied().unwrap_or(0)
    }
}

fn id_of_uid(uid: &str) -> String {
    format!("spiffe://example.org/uid/{uid}")
}

#[tonic::async_trait]
impl WorkloadIdentities for PerUid {
    fn resolve(&self, attested: &Attested) -> Vec<Entitlement> {
        let Some(uid) = attested
            .selectors
            .iter()
            .find(|s| s.key() == SelectorKey::Uid)
        else {
            return Vec::new();
        };
        let id = id_of_uid(uid.value());
        vec![Entitlement {
            spiffe_id: SpiffeId::parse(&id).unwrap(),
            workload: id_wire::Workload {
                kind: Some(id_wire::workload::Kind::EntrySpiffeId(id)),
                entry_pod: None,
            },
            x509_ttl: None,
            hint: String::new(),
            federates_with: Vec::new(),
        }]
    }
    async fn x509_svids(&self, _: &[Entitlement]) -> Result<Vec<Arc<X509Svid>>, IdentityError> {
        Err(IdentityError::NotReady("stand-in".into()))
    }
    async fn jwt_svid(
        &self,
        e: &Entitlement,
        audience: &[String],
    ) -> Result<String, IdentityError> {
        *self
            .mints
            .lock()
            .unwrap()
            .entry(e.spiffe_id.to_string())
            .or_default() += 1;
        Ok(self
            .signer
            .mint(
                &e.spiffe_id,
                audience,
                Duration::from_secs(300),
                SystemTime::now(),
            )
            .unwrap())
    }
    fn bundles(&self) -> Arc<BundleSet> {
        Arc::new(BundleSet::new())
    }
    fn changes(&self) -> watch::Receiver<u64> {
        watch::channel(0).1
    }
}

struct Served {
    identities: Arc<PerUid>,
    socket: PathBuf,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn serve(jwt: JwtLimits) -> Served {
    let dir = tempfile::tempdir().unwrap();
    // Reachable by the other uid.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let socket = dir.path().join("agent.sock");
    let identities = Arc::new(PerUid {
        signer: JwtSigner::generate().unwrap().0,
        mints: Mutex::default(),
    });
    let limits = Limits {
        jwt,
        ..Limits::default()
    };
    let services =
        Services::new().workload_api(identities.clone(), limits, WorkloadApiMetrics::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let path = socket.clone();
    tokio::spawn(async move {
        socket::serve(
            &path,
            Arc::new(WorkloadAttestor::default()),
            ConnectionLimits::default(),
            services,
            async move {
                let _ = stopped.await;
            },
        )
        .await
        .unwrap();
    });
    let bound = socket.clone();
    eventually("the socket to be bound", || {
        let exists = bound.exists();
        async move { exists.then_some(()) }
    })
    .await;
    Served {
        identities,
        socket,
        _dir: dir,
        _stop: stop,
    }
}

fn my_id() -> String {
    // SAFETY: getuid cannot fail and touches no memory.
    id_of_uid(&unsafe { libc::getuid() }.to_string())
}

fn jwt_request(audience: &[&str]) -> JwtsvidRequest {
    JwtsvidRequest {
        audience: audience.iter().map(|a| (*a).to_owned()).collect(),
        spiffe_id: String::new(),
    }
}

/// The `sub` claim of `token` (not validated: the stand-in server signed it).
fn subject(token: &str) -> String {
    let claims = token.split('.').nth(1).unwrap();
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
    claims["sub"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_same_request_again_is_served_from_the_cache() {
    let agent = serve(JwtLimits::default()).await;
    let mut client = client_at(&agent.socket).await;
    let me = my_id();
    let mut first = None;
    for _ in 0..50 {
        let svids = client
            .fetch_jwtsvid(req(jwt_request(&["db", "cache"])))
            .await
            .unwrap()
            .into_inner()
            .svids;
        assert_eq!(svids.len(), 1);
        assert_eq!(svids[0].spiffe_id, me);
        let token = svids[0].svid.clone();
        assert_eq!(first.get_or_insert_with(|| token.clone()), &token);
    }
    assert_eq!(agent.identities.mints(&me), 1, "50 calls, one mint");
    // The same audience set in another order is the same token.
    let again = client
        .fetch_jwtsvid(req(jwt_request(&["cache", "db", "db"])))
        .await
        .unwrap()
        .into_inner()
        .svids;
    assert_eq!(Some(&again[0].svid), first.as_ref());
    // Another audience set is another token.
    let other = client
        .fetch_jwtsvid(req(jwt_request(&["db"])))
        .await
        .unwrap()
        .into_inner()
        .svids;
    assert_ne!(Some(&other[0].svid), first.as_ref());
    assert_eq!(agent.identities.mints(&me), 2);
}

#[tokio::test]
async fn one_callers_mint_flood_is_refused_locally_and_others_are_served() {
    let limits = JwtLimits {
        mints_per_second: 5,
        mint_burst: 20,
        ..JwtLimits::default()
    };
    let agent = serve(limits.clone()).await;
    let mut client = client_at(&agent.socket).await;
    let me = my_id();
    // A token for "db" is cached for uid 0 before the flood.
    client
        .fetch_jwtsvid(req(jwt_request(&["db"])))
        .await
        .unwrap();

    const FLOOD: usize = 300;
    let started = tokio::time::Instant::now();
    let (mut minted, mut limited) = (1, 0);
    for i in 0..FLOOD {
        let audience = format!("flood-{i}");
        match client.fetch_jwtsvid(req(jwt_request(&[&audience]))).await {
            Ok(_) => minted += 1,
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert!(s.message().contains("mint budget"), "{s:?}");
                limited += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The burst, plus what refilled while flooding (5/s), and nothing more.
    let allowed = limits.mint_burst as f64 + elapsed * f64::from(limits.mints_per_second) + 1.0;
    assert!(
        (minted as f64) <= allowed,
        "{minted} mints in {elapsed:.2} s; at most {allowed:.0}"
    );
    assert!(limited >= FLOOD - allowed as usize, "{limited} refused");
    assert_eq!(
        agent.identities.mints(&me),
        minted,
        "refused calls never reached the server"
    );

    // Another uid: served at once, with its own identity, though uid 0 holds a cached
    // token for the same audience.
    let output = run_as(4242, &agent.socket, &["fetch", "jwt", "--audience", "db"]).await;
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout).unwrap();
    assert_eq!(subject(token.trim()), id_of_uid("4242"));
    assert_eq!(agent.identities.mints(&id_of_uid("4242")), 1);
    // And uid 0, over its budget, still has its cached token for "db".
    let cached = client
        .fetch_jwtsvid(req(jwt_request(&["db"])))
        .await
        .unwrap()
        .into_inner()
        .svids;
    assert_eq!(subject(&cached[0].svid), me);
}

/// `lanyard-agent api ARGS --socket SOCKET` as `uid`.
async fn run_as(uid: u32, socket: &Path, args: &[&str]) -> std::process::Output {
    let socket = socket.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .args(["--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_lanyard-agent"))
            .arg("api")
            .args(&args)
            .args(["--timeout", "10s", "--socket"])
            .arg(&socket)
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .env_remove("LANYARD_SOCKET")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}
