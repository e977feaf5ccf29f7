//! EndpointSlices, as discovery needs them: for each slice, the Service it belongs to (label
//! `kubernetes.io/service-name`), its TCP ports by name, and its endpoints' addresses and
//! readiness. Indexed by Service, since a Service's endpoints span several slices.

use std::net::IpAddr;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::object_index::{Indexed, ObjectIndex, ObjectKey};

/// The label that ties a slice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Kubernetes caps a slice at 1000 endpoints (100 by default); more is not a valid slice.
const MAX_ENDPOINTS: usize = 1000;
const MAX_PORTS: usize = 256;
const MAX_ADDRESSES: usize = 100;

/// What discovery keeps of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceInfo {
    pub namespace: String,
    pub service: String,
    /// `(name, port)`: the target port number for the Service port of the same name.
    pub ports: Vec<(String, u16)>,
    pub endpoints: Vec<SliceEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready`; unset means ready (as the API documents).
    pub ready: bool,
}

impl SliceInfo {
    /// `None` for a slice not owned by a Service, or of `addressType: FQDN`.
    pub fn from_slice(slice: &EndpointSlice) -> Option<Self> {
        let meta = &slice.metadata;
        let service = meta.labels.as_ref()?.get(SERVICE_NAME_LABEL)?.clone();
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            return None;
        }
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| {
                let port = u16::try_from(p.port?).ok().filter(|p| *p != 0)?;
                Some((p.name.clone().unwrap_or_default(), port))
            })
            .take(MAX_PORTS)
            .collect();
        let endpoints = slice
            .endpoints
            .iter()
            .take(MAX_ENDPOINTS)
            .map(|e| SliceEndpoint {
                addresses: e
                    .addresses
                    .iter()
                    .filter_map(|a| a.parse().ok())
                    .take(MAX_ADDRESSES)
                    .collect(),
                ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
            })
            .collect();
        Some(Self {
            namespace: meta.namespace.clone()?,
            service,
            ports,
            endpoints,
        })
    }
}

impl Indexed for SliceInfo {
    type Secondary = ObjectKey;
    fn secondary_keys(&self) -> Vec<ObjectKey> {
        vec![(self.namespace.clone(), self.service.clone())]
    }
}

/// EndpointSlices by `(namespace, name)` and by their Service's `(namespace, name)`.
pub type EndpointSliceIndex = ObjectIndex<SliceInfo>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_service_ports_and_readiness() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "default",
                          "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}, {"name": "q", "port": 53, "protocol": "UDP"}],
            "endpoints": [
                {"addresses": ["10.0.0.1"]},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
            ],
        }))
        .unwrap();
        let info = SliceInfo::from_slice(&slice).unwrap();
        assert_eq!(info.service, "web");
        assert_eq!(info.ports, [("http".to_owned(), 8080)]);
        assert!(info.endpoints[0].ready);
        assert!(!info.endpoints[1].ready);
    }

    #[test]
    fn slices_without_a_service_or_with_fqdn_are_skipped() {
        let orphan: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "x", "namespace": "default"},
            "addressType": "IPv4", "endpoints": [],
        }))
        .unwrap();
        assert!(SliceInfo::from_slice(&orphan).is_none());
        let fqdn: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "x", "namespace": "default",
                          "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "FQDN", "endpoints": [],
        }))
        .unwrap();
        assert!(SliceInfo::from_slice(&fqdn).is_none());
    }
}
