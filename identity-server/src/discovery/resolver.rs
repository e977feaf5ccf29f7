//! The answer for one destination, computed from the pod, Service and EndpointSlice indexes.
//!
//! Rules, in order:
//! 1. `address` is a ClusterIP of a Service: with a TCP port `port`, the answer is the
//!    Service's ready endpoints, each with the target port its EndpointSlice names for that
//!    Service port (matched by port name), and each endpoint's meshed state and ID by the pod
//!    rule below; without such a port, `Unknown` (nothing is served there).
//! 2. `address` is a pod IP of an active, non-host-network pod: `MeshedPod` with its ID when
//!    meshed (see [`super`]), else `UnmeshedPod`. While an IP is briefly claimed by two active
//!    pods, meshed claims win when they agree on the ID; meshed claims that disagree give
//!    `Unknown`, never a guessed ID.
//! 3. Anything else: `Unknown`.
//!
//! Answers are deterministic (endpoints sorted), so "changed" is plain equality. Destinations
//! are checked by [`lanyard_proto::discovery_destination`], the check the agent makes too.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use lanyard_proto::discovery::v1 as wire;
use lanyard_proto::discovery_destination::Destination;
use lanyard_svid::TrustDomain;
use tokio::sync::watch;

use super::{INJECT_ANNOTATION, INJECT_ENABLED};
use crate::k8s::endpoint_slices::EndpointSliceIndex;
use crate::k8s::pods::{PodIndex, PodInfo, PodLookup};
use crate::k8s::services::ServiceIndex;
use crate::registry_view::{RegistrationSnapshot, Registrations};

/// Most endpoints in one Service answer; more are cut and the answer says `truncated`.
pub const MAX_ENDPOINTS_PER_ANSWER: usize = 2000;

/// The three indexes discovery reads, and how to name a pod (the registrations, as minting
/// does). Cheap to clone.
#[derive(Clone)]
pub struct DiscoverySources {
    pub trust_domain: TrustDomain,
    pub registrations: Registrations,
    pub pods: PodIndex,
    pub services: ServiceIndex,
    pub slices: EndpointSliceIndex,
}

/// Fires when any of the three indexes (or the registrations) changes.
pub struct Changes {
    pods: watch::Receiver<u64>,
    /// Reported as [`IndexChange::Pods`]: a pod's ID may change.
    registrations: watch::Receiver<RegistrationSnapshot>,
    services: watch::Receiver<u64>,
    slices: watch::Receiver<u64>,
}

/// Which index changed. Changes to several indexes are reported one at a time. Only Service
/// answers read EndpointSlices; pods and Services can change any answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexChange {
    Pods,
    Services,
    EndpointSlices,
}

impl Changes {
    /// Waits for the next change and says which index it was. Pending forever once the
    /// indexes are gone.
    pub async fn changed(&mut self) -> IndexChange {
        let (result, change) = tokio::select! {
            r = self.pods.changed() => (r, IndexChange::Pods),
            r = self.registrations.changed() => (r, IndexChange::Pods),
            r = self.services.changed() => (r, IndexChange::Services),
            r = self.slices.changed() => (r, IndexChange::EndpointSlices),
        };
        if result.is_err() {
            std::future::pending::<()>().await;
        }
        change
    }
}

/// The kind of an answer. `Display` is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AnswerKind {
    MeshedPod,
    Service,
    UnmeshedPod,
    Unknown,
}

impl AnswerKind {
    /// The kind of `resolution` (one without a kind, which [`DiscoverySources::resolve`] never
    /// gives, counts as `Unknown`).
    pub fn of(resolution: &wire::Resolution) -> Self {
        use wire::resolution::Kind;
        match resolution.kind {
            Some(Kind::MeshedPod(_)) => Self::MeshedPod,
            Some(Kind::Service(_)) => Self::Service,
            Some(Kind::UnmeshedPod(_)) => Self::UnmeshedPod,
            Some(Kind::Unknown(_)) | None => Self::Unknown,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::MeshedPod => "meshed_pod",
            Self::Service => "service",
            Self::UnmeshedPod => "unmeshed_pod",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for AnswerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// How a pod IP answers.
enum PodAnswer {
    Meshed {
        spiffe_id: String,
        namespace: String,
        name: String,
    },
    Unmeshed {
        namespace: String,
        name: String,
    },
    None,
}

impl DiscoverySources {
    /// Empty indexes, marked listed, pods named by `pod_id_template` alone: data-dir mode,
    /// where nothing is in Kubernetes (and tests).
    pub fn empty(trust_domain: TrustDomain, pod_id_template: Arc<str>) -> Self {
        let registrations = Registrations::fixed(lanyard_registration::RegistryConfig {
            trust_domain: trust_domain.clone(),
            class: Default::default(),
            default_template: Some(pod_id_template.to_string()),
        });
        Self::empty_with(trust_domain, registrations)
    }

    /// Empty indexes, marked listed, pods named by `registrations`.
    pub fn empty_with(trust_domain: TrustDomain, registrations: Registrations) -> Self {
        let sources = Self {
            trust_domain,
            registrations,
            pods: PodIndex::new(),
            services: ServiceIndex::new(),
            slices: EndpointSliceIndex::new(),
        };
        sources.pods.replace_all(vec![]);
        sources.services.replace_all(vec![]);
        sources.slices.replace_all(vec![]);
        sources
    }

    /// All three indexes have been listed; answers before that could be wrong.
    pub fn is_synced(&self) -> bool {
        self.pods.is_synced()
            && self.services.is_synced()
            && self.slices.is_synced()
            && self.registrations.current().synced
    }

    pub fn subscribe(&self) -> Changes {
        Changes {
            pods: self.pods.subscribe(),
            registrations: self.registrations.subscribe(),
            services: self.services.subscribe(),
            slices: self.slices.subscribe(),
        }
    }

    /// The pod's SPIFFE ID if it is meshed.
    pub fn meshed_id(&self, pod: &PodInfo) -> Option<String> {
        let annotated = pod
            .annotations
            .get(INJECT_ANNOTATION)
            .is_some_and(|v| v == INJECT_ENABLED);
        if !(pod.active && annotated && pod.proxy_ready) {
            return None;
        }
        match self.registrations.current().resolve(pod) {
            lanyard_registration::Resolution::Issued(identity) => {
                Some(identity.spiffe_id.to_string())
            }
            _ => None,
        }
    }

    fn pod_answer(&self, ip: &IpAddr) -> PodAnswer {
        let claimants: Vec<PodInfo> = self
            .pods
            .by_ip(ip)
            .into_iter()
            .filter(|p| p.active && !p.host_network)
            .collect();
        let meshed: Vec<(String, &PodInfo)> = claimants
            .iter()
            .filter_map(|p| self.meshed_id(p).map(|id| (id, p)))
            .collect();
        if let Some((id, pod)) = meshed.first() {
            if meshed.iter().all(|(other, _)| other == id) {
                return PodAnswer::Meshed {
                    spiffe_id: id.clone(),
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                };
            }
            return PodAnswer::None;
        }
        match claimants.first() {
            Some(pod) => PodAnswer::Unmeshed {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
            },
            None => PodAnswer::None,
        }
    }

    /// The answer for `destination` now.
    pub fn resolve(&self, destination: Destination) -> wire::Resolution {
        use wire::resolution::Kind;
        let kind = match self.services.by_secondary(&destination.address).first() {
            Some(((namespace, name), service)) => {
                match service.ports.iter().find(|p| p.port == destination.port) {
                    Some(port) => Kind::Service(self.service_answer(namespace, name, &port.name)),
                    None => Kind::Unknown(wire::Unknown {}),
                }
            }
            None => match self.pod_answer(&destination.address) {
                PodAnswer::Meshed {
                    spiffe_id,
                    namespace,
                    name,
                } => Kind::MeshedPod(wire::MeshedPod {
                    spiffe_id,
                    namespace,
                    name,
                }),
                PodAnswer::Unmeshed { namespace, name } => {
                    Kind::UnmeshedPod(wire::UnmeshedPod { namespace, name })
                }
                PodAnswer::None => Kind::Unknown(wire::Unknown {}),
            },
        };
        wire::Resolution { kind: Some(kind) }
    }

    fn service_answer(&self, namespace: &str, name: &str, port_name: &str) -> wire::Service {
        let key = (namespace.to_owned(), name.to_owned());
        let mut targets = BTreeSet::new();
        for (_, slice) in self.slices.by_secondary(&key) {
            let Some((_, target_port)) = slice.ports.iter().find(|(n, _)| n == port_name) else {
                continue;
            };
            for endpoint in slice.endpoints.iter().filter(|e| e.ready) {
                for address in &endpoint.addresses {
                    targets.insert((*address, *target_port));
                }
            }
        }
        let truncated = targets.len() > MAX_ENDPOINTS_PER_ANSWER;
        let endpoints = targets
            .into_iter()
            .take(MAX_ENDPOINTS_PER_ANSWER)
            .map(|(address, port)| {
                let spiffe_id = match self.pod_answer(&address) {
                    PodAnswer::Meshed { spiffe_id, .. } => spiffe_id,
                    _ => String::new(),
                };
                wire::Endpoint {
                    address: address.to_string(),
                    port: u32::from(port),
                    meshed: !spiffe_id.is_empty(),
                    spiffe_id,
                }
            })
            .collect();
        wire::Service {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            endpoints,
            truncated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::endpoint_slices::{SliceEndpoint, SliceInfo};
    use crate::k8s::pods::test_pod;
    use crate::k8s::services::{ServiceInfo, ServicePort};
    use wire::resolution::Kind;

    fn sources() -> DiscoverySources {
        DiscoverySources::empty(
            TrustDomain::new("example.org").unwrap(),
            "/ns/{namespace}/sa/{service_account}".into(),
        )
    }

    fn pod(name: &str, ip: &str, meshed: bool) -> PodInfo {
        let mut p = test_pod("default", name, &format!("uid-{name}"), name, "node-1");
        p.pod_ips = vec![ip.into()];
        if meshed {
            p.annotations
                .insert(INJECT_ANNOTATION.into(), INJECT_ENABLED.into());
            p.proxy_ready = true;
        }
        p
    }

    fn dest(s: &str) -> Destination {
        let addr: std::net::SocketAddr = s.parse().unwrap();
        Destination {
            address: addr.ip(),
            port: addr.port(),
        }
    }

    #[test]
    fn pods_by_ip() {
        let s = sources();
        s.pods.apply(pod("a", "10.0.0.1", true));
        s.pods.apply(pod("b", "10.0.0.2", false));
        // Annotated but the proxy is not ready yet: not meshed.
        let mut c = pod("c", "10.0.0.3", true);
        c.proxy_ready = false;
        s.pods.apply(c);
        let mut h = pod("h", "10.0.0.4", true);
        h.host_network = true;
        s.pods.apply(h);
        match s.resolve(dest("10.0.0.1:80")).kind.unwrap() {
            Kind::MeshedPod(m) => assert_eq!(m.spiffe_id, "spiffe://example.org/ns/default/sa/a"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.resolve(dest("10.0.0.2:80")).kind,
            Some(Kind::UnmeshedPod(_))
        ));
        assert!(matches!(
            s.resolve(dest("10.0.0.3:80")).kind,
            Some(Kind::UnmeshedPod(_))
        ));
        assert!(matches!(
            s.resolve(dest("10.0.0.4:80")).kind,
            Some(Kind::Unknown(_))
        ));
        assert!(matches!(
            s.resolve(dest("10.9.9.9:80")).kind,
            Some(Kind::Unknown(_))
        ));
        s.pods.delete("uid-a");
        assert!(matches!(
            s.resolve(dest("10.0.0.1:80")).kind,
            Some(Kind::Unknown(_))
        ));
    }

    #[test]
    fn conflicting_meshed_claims_give_no_id() {
        let s = sources();
        s.pods.apply(pod("a", "10.0.0.1", true));
        s.pods.apply(pod("z", "10.0.0.1", true));
        assert!(matches!(
            s.resolve(dest("10.0.0.1:80")).kind,
            Some(Kind::Unknown(_))
        ));
        // An unmeshed pod sharing the IP with a meshed one: the meshed claim wins.
        s.pods.delete("uid-z");
        s.pods.apply(pod("u", "10.0.0.1", false));
        assert!(matches!(
            s.resolve(dest("10.0.0.1:80")).kind,
            Some(Kind::MeshedPod(_))
        ));
    }

    #[test]
    fn services_resolve_to_ready_endpoints_with_target_ports() {
        let s = sources();
        s.pods.apply(pod("a", "10.0.0.1", true));
        s.pods.apply(pod("b", "10.0.0.2", false));
        s.services.apply(
            ("default".into(), "web".into()),
            ServiceInfo {
                cluster_ips: vec!["10.96.0.1".parse().unwrap()],
                ports: vec![ServicePort {
                    name: "http".into(),
                    port: 80,
                }],
            },
        );
        let endpoint = |ip: &str, ready| SliceEndpoint {
            addresses: vec![ip.parse().unwrap()],
            ready,
        };
        s.slices.apply(
            ("default".into(), "web-1".into()),
            SliceInfo {
                namespace: "default".into(),
                service: "web".into(),
                ports: vec![("http".into(), 8080), ("metrics".into(), 9090)],
                endpoints: vec![
                    endpoint("10.0.0.1", true),
                    endpoint("10.0.0.2", true),
                    endpoint("10.0.0.3", false),
                ],
            },
        );
        let Some(Kind::Service(svc)) = s.resolve(dest("10.96.0.1:80")).kind else {
            panic!("not a service answer");
        };
        assert_eq!(svc.name, "web");
        assert_eq!(
            svc.endpoints,
            [
                wire::Endpoint {
                    address: "10.0.0.1".into(),
                    port: 8080,
                    meshed: true,
                    spiffe_id: "spiffe://example.org/ns/default/sa/a".into(),
                },
                wire::Endpoint {
                    address: "10.0.0.2".into(),
                    port: 8080,
                    meshed: false,
                    spiffe_id: String::new(),
                },
            ]
        );
        assert!(matches!(
            s.resolve(dest("10.96.0.1:443")).kind,
            Some(Kind::Unknown(_))
        ));
    }

    #[tokio::test]
    async fn changes_say_which_index_changed() {
        let s = sources();
        let mut changes = s.subscribe();
        s.slices.replace_all(vec![]);
        assert_eq!(changes.changed().await, IndexChange::EndpointSlices);
        s.pods.apply(pod("a", "10.0.0.1", true));
        assert_eq!(changes.changed().await, IndexChange::Pods);
        s.services.replace_all(vec![]);
        assert_eq!(changes.changed().await, IndexChange::Services);
    }
}
