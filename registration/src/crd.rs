//! The CustomResourceDefinition for `LanyardIdentity`: the OpenAPI schema (and CEL rules where
//! a schema cannot say it) that the API server checks before any replica sees a resource.

/// The manifest as YAML (one document), as `lanyard install` prints it.
pub const CRD_YAML: &str = include_str!("../crd/lanyardidentities.lanyard.dev.yaml");
