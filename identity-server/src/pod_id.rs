//! The SPIFFE ID a Kubernetes pod receives: a path template expanded with the pod's metadata,
//! default `/ns/{namespace}/sa/{service_account}`.

use lanyard_svid::reserved::is_reserved;
use lanyard_svid::{SpiffeId, TrustDomain};

/// The placeholders a template may use.
const PLACEHOLDERS: [&str; 3] = ["{namespace}", "{service_account}", "{pod_name}"];

/// Why a template, or its expansion for one pod, is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template must start with '/'")]
    NotAPath,
    #[error(
        "unknown placeholder in template; use {{namespace}}, {{service_account}}, {{pod_name}}"
    )]
    UnknownPlaceholder,
    #[error("template yields a reserved /lanyard/ ID")]
    Reserved,
    #[error("expanded ID is not a valid SPIFFE ID: {0}")]
    InvalidId(#[from] lanyard_svid::IdError),
}

/// Checks a template once at startup, by expanding it with sample values.
pub fn validate_template(template: &str) -> Result<(), TemplateError> {
    let td = TrustDomain::new("example.org").expect("constant");
    expand(template, &td, "ns", "sa", "pod").map(|_| ())
}

/// Expands `template` for one pod. Values are inserted as whole path segments' contents:
/// Kubernetes names never contain `/`, and a value that would break the path is refused.
pub fn expand(
    template: &str,
    trust_domain: &TrustDomain,
    namespace: &str,
    service_account: &str,
    pod_name: &str,
) -> Result<SpiffeId, TemplateError> {
    if !template.starts_with('/') {
        return Err(TemplateError::NotAPath);
    }
    let mut stripped = template.to_owned();
    for p in PLACEHOLDERS {
        stripped = stripped.replace(p, "");
    }
    if stripped.contains(['{', '}']) {
        return Err(TemplateError::UnknownPlaceholder);
    }
    for value in [namespace, service_account, pod_name] {
        if value.is_empty() || value.contains('/') {
            return Err(TemplateError::InvalidId(lanyard_svid::IdError::BadSegment(
                value.to_owned(),
            )));
        }
    }
    let path = template
        .replace("{namespace}", namespace)
        .replace("{service_account}", service_account)
        .replace("{pod_name}", pod_name);
    let id = SpiffeId::new(trust_domain.clone(), &path)?;
    if is_reserved(&id) {
        return Err(TemplateError::Reserved);
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    #[test]
    fn default_template() {
        let id = expand(
            crate::config::DEFAULT_POD_ID_TEMPLATE,
            &td(),
            "default",
            "web",
            "p",
        )
        .unwrap();
        assert_eq!(id.to_string(), "spiffe://example.org/ns/default/sa/web");
    }

    #[test]
    fn refusals() {
        assert_eq!(
            validate_template("ns/{namespace}"),
            Err(TemplateError::NotAPath)
        );
        assert_eq!(
            validate_template("/ns/{nam}"),
            Err(TemplateError::UnknownPlaceholder)
        );
        assert_eq!(
            validate_template("/lanyard/{namespace}"),
            Err(TemplateError::Reserved)
        );
        assert!(expand("/{namespace}", &td(), "a/b", "sa", "p").is_err());
        assert!(expand("/{namespace}", &td(), "..", "sa", "p").is_err());
    }
}
