//! A wire-compatible Kubernetes API server for tests (see the crate docs once written).
