//! The CSI `Identity` service: the plugin's name and version, no plugin capability (no
//! controller service, no topology), and a probe that answers ready once the plugin serves.

use lanyard_proto::csi::v1 as csi;
use tonic::{Request, Response, Status};

use super::DRIVER_NAME;

/// The `Identity` service.
pub struct IdentityService;

#[tonic::async_trait]
impl csi::identity_server::Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _request: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: DRIVER_NAME.to_owned(),
            vendor_version: env!("CARGO_PKG_VERSION").to_owned(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        // A node-only plugin: no CONTROLLER_SERVICE, no VOLUME_ACCESSIBILITY_CONSTRAINTS.
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities: Vec::new(),
        }))
    }

    async fn probe(
        &self,
        _request: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        // Publishing needs nothing but the node: ready whenever the socket answers. (Pod
        // sockets accept once the agent has attested; clients retry until then.)
        Ok(Response::new(csi::ProbeResponse { ready: Some(true) }))
    }
}
