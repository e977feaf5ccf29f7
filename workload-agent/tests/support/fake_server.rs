//! A fake lanyard-server for certificate manager tests: signs CSRs with a real in-memory CA,
//! or fails as told, and records every call with its (tokio) time.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use lanyard_agent::identities::Entitlement;
use lanyard_agent::server_client::{MintApi, ServerError};
use lanyard_proto::identity::v1 as wire;
use lanyard_svid::csr::VerifiedCsr;
use lanyard_svid::{BundleSet, Issuer, RootCa, SpiffeId, TrustBundle, TrustDomain};
use tokio::time::Instant;

pub const TD: &str = "example.org";

/// What the fake does with the next calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Sign,
    Unavailable,
    /// Refuse every item with this reason.
    Refuse(&'static str),
    /// Refuse items naming this pod, sign the rest.
    RefusePod(&'static str),
    /// Refuse items for this SPIFFE ID path with `entry_not_assigned_to_node`, sign the rest.
    RefuseId(&'static str),
}

/// One `MintX509SVIDs` call.
#[derive(Debug, Clone)]
pub struct Call {
    pub at: Instant,
    pub ids: Vec<String>,
}

pub struct FakeServer {
    root: RootCa,
    issuer: Issuer,
    pub ttl: Mutex<Duration>,
    pub mode: Mutex<Mode>,
    /// How long each call takes (on tokio's clock).
    pub delay: Mutex<Duration>,
    pub calls: Mutex<Vec<Call>>,
    in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
}

impl FakeServer {
    pub fn new(ttl: Duration) -> Self {
        let td = TrustDomain::new(TD).unwrap();
        let now = SystemTime::now();
        let root = RootCa::generate(&td, Duration::from_secs(30 * 86400), now).unwrap();
        let issuer = root
            .issue_intermediate(Duration::from_secs(20 * 86400), now)
            .unwrap();
        Self {
            root,
            issuer,
            ttl: Mutex::new(ttl),
            mode: Mutex::new(Mode::Sign),
            delay: Mutex::new(Duration::ZERO),
            calls: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub fn bundles(&self) -> BundleSet {
        BundleSet::from(TrustBundle::from_x509_authorities(
            TrustDomain::new(TD).unwrap(),
            [self.root.cert_der().clone()],
        ))
    }

    fn id_of(workload: &wire::Workload) -> SpiffeId {
        match &workload.kind {
            Some(wire::workload::Kind::EntrySpiffeId(id)) => SpiffeId::parse(id).unwrap(),
            Some(wire::workload::Kind::Pod(p)) => SpiffeId::parse(&format!(
                "spiffe://{TD}/ns/{}/sa/{}",
                p.namespace, p.service_account
            ))
            .unwrap(),
            None => panic!("no workload"),
        }
    }

    fn pod_name(workload: &wire::Workload) -> Option<&str> {
        match (&workload.kind, &workload.entry_pod) {
            (Some(wire::workload::Kind::Pod(p)), _) | (_, Some(p)) => Some(&p.name),
            _ => None,
        }
    }
}

struct InFlight<'a>(&'a AtomicUsize);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tonic::async_trait]
impl MintApi for FakeServer {
    async fn mint_x509_svids(
        &self,
        requests: Vec<wire::MintX509SvidRequest>,
    ) -> Result<Vec<wire::MintX509SvidResult>, ServerError> {
        let now_in = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let _guard = InFlight(&self.in_flight);
        self.max_in_flight.fetch_max(now_in, Ordering::SeqCst);
        let ids = requests
            .iter()
            .map(|r| Self::id_of(r.workload.as_ref().unwrap()).to_string())
            .collect();
        self.calls.lock().unwrap().push(Call {
            at: Instant::now(),
            ids,
        });
        let delay = *self.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mode = self.mode.lock().unwrap().clone();
        let ttl = *self.ttl.lock().unwrap();
        if mode == Mode::Unavailable {
            return Err(ServerError::Unavailable("fake server is down".into()));
        }
        let refuse = |reason: &str| wire::MintX509SvidResult {
            result: Some(wire::mint_x509_svid_result::Result::Refusal(
                wire::Refusal {
                    reason: reason.into(),
                    message: "the fake says no".into(),
                },
            )),
        };
        Ok(requests
            .iter()
            .map(|r| {
                let workload = r.workload.as_ref().unwrap();
                match &mode {
                    Mode::Refuse(reason) => return refuse(reason),
                    Mode::RefusePod(pod) if Self::pod_name(workload) == Some(pod) => {
                        return refuse("pod_not_found");
                    }
                    Mode::RefuseId(path) if Self::id_of(workload).path() == *path => {
                        return refuse("entry_not_assigned_to_node");
                    }
                    _ => {}
                }
                let csr = VerifiedCsr::from_der(&r.csr).unwrap();
                let signed = self
                    .issuer
                    .sign_x509_svid(&csr, &Self::id_of(workload), ttl, SystemTime::now())
                    .unwrap();
                wire::MintX509SvidResult {
                    result: Some(wire::mint_x509_svid_result::Result::Svid(wire::X509Svid {
                        spiffe_id: signed.spiffe_id.to_string(),
                        cert_chain: signed.cert_chain.iter().map(|c| c.to_vec()).collect(),
                        expires_at: lanyard_proto::convert::unix_seconds(signed.not_after),
                    })),
                }
            })
            .collect())
    }

    async fn mint_jwt_svid(
        &self,
        request: wire::MintJwtSvidRequest,
    ) -> Result<wire::MintJwtSvidResponse, ServerError> {
        match self.mode.lock().unwrap().clone() {
            Mode::Unavailable => Err(ServerError::Unavailable("fake server is down".into())),
            Mode::Refuse(reason) => Err(ServerError::Refused {
                reason: reason.into(),
                message: "the fake says no".into(),
            }),
            _ => {
                let id = Self::id_of(request.workload.as_ref().unwrap());
                Ok(wire::MintJwtSvidResponse {
                    spiffe_id: id.to_string(),
                    token: format!("jwt-for-{id}-aud-{}", request.audience.join(",")),
                    expires_at: 0,
                })
            }
        }
    }
}

/// An entitlement for static entry `path`.
pub fn entry(path: &str) -> Entitlement {
    let id = format!("spiffe://{TD}{path}");
    Entitlement {
        spiffe_id: SpiffeId::parse(&id).unwrap(),
        workload: wire::Workload {
            kind: Some(wire::workload::Kind::EntrySpiffeId(id)),
            entry_pod: None,
        },
        x509_ttl: None,
        hint: String::new(),
        federates_with: Vec::new(),
    }
}

/// An entitlement for pod `name` in `ns` running as `sa`.
pub fn pod(ns: &str, sa: &str, name: &str, uid: &str) -> Entitlement {
    Entitlement {
        spiffe_id: SpiffeId::parse(&format!("spiffe://{TD}/ns/{ns}/sa/{sa}")).unwrap(),
        workload: wire::Workload {
            kind: Some(wire::workload::Kind::Pod(wire::Pod {
                namespace: ns.into(),
                name: name.into(),
                uid: uid.into(),
                service_account: sa.into(),
            })),
            entry_pod: None,
        },
        x509_ttl: None,
        hint: String::new(),
        federates_with: Vec::new(),
    }
}
