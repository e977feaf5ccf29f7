//! lanyard-server: the Lanyard certificate authority.
//!
//! Module map:
//! - [`config`]: flags, `LANYARD_*` env and `--config` TOML merged into a `ServerConfig`.
//! - [`entries`]: static workload entries (`[[entries]]`) and their validation.
//! - [`pod_id`]: the SPIFFE ID template for Kubernetes pods.
//! - [`join_token`]: single-use, node-bound, expiring join tokens.
//! - [`evictions`]: the persisted list of evicted join-token nodes.
//! - [`admin`]: the admin Unix socket behind `token generate`, `agent evict`, `bundle show`.
//! - [`k8s`]: the pod index and TokenReview (cluster mode).
//! - [`node_attest`]: deciding that a caller is the agent of a node (join token, k8s_psat).
//! - [`mint_policy`]: which SPIFFE ID, if any, an agent may obtain for a workload.
//! - [`fsutil`]: 0600 atomic writes and private directories.

pub mod admin;
pub mod config;
pub mod entries;
pub mod evictions;
pub mod fsutil;
pub mod join_token;
pub mod k8s;
pub mod mint_policy;
pub mod node_attest;
pub mod pod_id;
