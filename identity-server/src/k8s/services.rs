//! Services, as discovery needs them: each Service's ClusterIPs and TCP ports, indexed by
//! ClusterIP. Headless (`clusterIP: None`) and `ExternalName` Services have no ClusterIP a
//! connection could be made to, so they are not indexed (their pods' IPs resolve directly).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;

use super::object_index::{Indexed, ObjectIndex};

/// Most ClusterIPs (dual stack: 2) and ports kept per Service; beyond them are ignored.
const MAX_CLUSTER_IPS: usize = 2;
const MAX_PORTS: usize = 256;

/// What discovery keeps of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
}

/// One TCP port of a Service. `name` matches the EndpointSlice port that carries the target
/// port number (both empty for a single unnamed port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
}

impl ServiceInfo {
    /// `None` for a Service without a usable ClusterIP or without TCP ports.
    pub fn from_service(service: &Service) -> Option<Self> {
        let spec = service.spec.as_ref()?;
        if spec.type_.as_deref() == Some("ExternalName") {
            return None;
        }
        let cluster_ips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse().ok())
            .fold(Vec::new(), |mut ips, ip| {
                if !ips.contains(&ip) && ips.len() < MAX_CLUSTER_IPS {
                    ips.push(ip);
                }
                ips
            });
        let ports: Vec<ServicePort> = spec
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| {
                Some(ServicePort {
                    name: p.name.clone().unwrap_or_default(),
                    port: u16::try_from(p.port).ok().filter(|p| *p != 0)?,
                })
            })
            .take(MAX_PORTS)
            .collect();
        (!cluster_ips.is_empty() && !ports.is_empty()).then_some(Self { cluster_ips, ports })
    }
}

impl Indexed for ServiceInfo {
    type Secondary = IpAddr;
    fn secondary_keys(&self) -> Vec<IpAddr> {
        self.cluster_ips.clone()
    }
}

/// Services by `(namespace, name)` and by ClusterIP.
pub type ServiceIndex = ObjectIndex<ServiceInfo>;

#[cfg(test)]
mod tests {
    use super::*;

    fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn keeps_cluster_ips_and_tcp_ports() {
        let info = ServiceInfo::from_service(&service(serde_json::json!({
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10", "fd00::10"],
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080},
                {"name": "dns", "port": 53, "protocol": "UDP"},
            ],
        })))
        .unwrap();
        assert_eq!(
            info.cluster_ips,
            [
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "fd00::10".parse().unwrap()
            ]
        );
        assert_eq!(
            info.ports,
            [ServicePort {
                name: "http".into(),
                port: 80
            }]
        );
    }

    #[test]
    fn headless_and_external_name_are_not_indexed() {
        let headless = service(serde_json::json!({"clusterIP": "None", "ports": [{"port": 80}]}));
        assert!(ServiceInfo::from_service(&headless).is_none());
        let external = service(serde_json::json!({
            "type": "ExternalName", "externalName": "example.com", "ports": [{"port": 80}]
        }));
        assert!(ServiceInfo::from_service(&external).is_none());
    }
}
