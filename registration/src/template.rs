//! `{placeholder}` templates, rendered with one pod's facts.
//!
//! Placeholders: `{trust_domain}`, `{namespace}`, `{service_account}`, `{pod_name}`,
//! `{pod_uid}`, `{node_name}`, `{label:KEY}` (a pod label), `{namespace_label:KEY}`.
//! The server's `--pod-id-template` uses the same syntax (it is the default registration).
//!
//! CONTRACT (lead): the signatures below are shared with lanyard-server and the CLI.

use crate::registry::PodFacts;

/// Why a template text is refused (at compile time, for every pod).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown placeholder {0:?}")]
    UnknownPlaceholder(String),
    #[error("unbalanced '{{' or '}}'")]
    Unbalanced,
    #[error("template is longer than {0} characters")]
    TooLong(usize),
}

/// Why rendering for one pod failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A `{label:KEY}` / `{namespace_label:KEY}` the pod or namespace does not have.
    #[error("{0} is not set")]
    MissingValue(String),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    // lead: fields are the implementer's choice
    text: String,
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let _ = text;
        todo!("H1")
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The text with every placeholder replaced (values inserted verbatim; the caller checks
    /// what the result must be: an ID, a DNS name, a selector).
    pub fn render(&self, trust_domain: &str, pod: &PodFacts<'_>) -> Result<String, RenderError> {
        let _ = (trust_domain, pod);
        todo!("H1")
    }
}
