//! A `LanyardIdentity` checked once: templates parsed, selectors checked, TTLs parsed with
//! the daemons' bounds, and IDs that could only ever be reserved or foreign refused.

use std::time::Duration;

use lanyard_svid::TrustDomain;

use crate::label_selector::CompiledSelector;
use crate::resource::LanyardIdentity;
use crate::template::Template;

/// Why a whole resource is refused (shown as `status.specError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{field}: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
}

/// A valid resource, ready to render for pods.
#[derive(Debug, Clone)]
pub struct CompiledIdentity {
    pub name: String,
    pub generation: Option<i64>,
    pub spiffe_id: Template,
    pub pod_selector: CompiledSelector,
    pub namespace_selector: CompiledSelector,
    pub dns_names: Vec<Template>,
    pub workload_selectors: Vec<Template>,
    pub x509_ttl: Option<Duration>,
    pub jwt_ttl: Option<Duration>,
    pub fallback: bool,
    pub hint: String,
}

impl CompiledIdentity {
    pub fn compile(
        resource: &LanyardIdentity,
        trust_domain: &TrustDomain,
    ) -> Result<Self, SpecError> {
        let _ = (resource, trust_domain);
        todo!("H1")
    }
}
