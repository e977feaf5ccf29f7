//! lanyard-server: the Lanyard certificate authority.
//!
//! Module map:
//! - [`duration`]: the one duration parser and its bounds (TTL options, entries, tokens).
//! - [`config`]: flags, `LANYARD_*` env and `--config` TOML merged into a `ServerConfig`.
//! - [`entries`]: static workload entries (`[[entries]]`) and their validation.
//! - [`entry_store`]: the static entries in force, replaced whole on reload.
//! - [`entry_reload`]: reading `[[entries]]` again on a change of `--config` or SIGHUP.
//! - [`ca_store`]: data-dir mode's CA: generated once, 0600 files, refused when half-written.
//! - [`ca_rotation`]: data-dir mode: a new intermediate at two thirds of the old one's life.
//! - [`k8s`]: cluster mode: the pod index, TokenReview, the CA Secret and bundle ConfigMap,
//!   this replica's CA report ConfigMap, the LanyardIdentity and Namespace informers and the
//!   status Lease.
//! - [`registry_view`]: the registration snapshot (registry, namespace labels, synced) that
//!   names pods' identities.
//! - [`authority`]: the signing material in force, the bundle published with it, and since
//!   when it signs under its root.
//! - [`server_svid`]: the server's own SVID (`/lanyard/server`), kept fresh.
//! - [`join_token`]: single-use, node-bound, expiring join tokens.
//! - [`evictions`]: the persisted list of evicted join-token nodes.
//! - [`node_attest`]: deciding that a caller is the agent of a node (join token, k8s_psat).
//! - [`mint_policy`]: which SPIFFE ID, if any, an agent may obtain for a workload.
//! - [`discovery`]: which destinations are meshed and as which IDs; `DiscoveryFeed`.
//! - [`node_feed`]: `WatchNode`, each node's entries and pods.
//! - [`rate_limit`]: per-caller token buckets.
//! - [`bundle_acks`]: which bundle each connected agent acknowledged (`SyncBundle`).
//! - [`service`]: the `lanyard.identity.v1.NodeIdentity` gRPC service.
//! - [`tls_listener`]: TCP accept + concurrent, bounded TLS handshakes feeding tonic.
//! - [`admin`]: the admin Unix socket behind `token generate`, `agent evict`, `bundle show`.
//! - [`federation`]: federation with other trust domains: `[[federation]]`, the federated
//!   bundles held, this trust domain's bundle endpoint and the fetcher of the others'.
//! - [`document_listener`]: bounded serving of read-only documents over TLS or plain HTTP (the
//!   bundle endpoint's and OIDC discovery's): limits, refusals, a PEM certificate reloaded on
//!   change.
//! - [`oidc`]: OIDC discovery (`/.well-known/openid-configuration`, JWKS) for JWT-SVIDs.
//! - [`metrics`]: Prometheus metrics (issuance, refusals, CA expiries, bundle propagation).
//! - [`run`]: wiring it all together for `lanyard-server run`.

pub mod admin;
pub mod authority;
pub mod bundle_acks;
pub mod ca_rotation;
pub mod ca_store;
pub mod config;
pub mod discovery;
pub mod document_listener;
pub mod duration;
pub mod entries;
pub mod entry_reload;
pub mod entry_store;
pub mod evictions;
pub mod federation;
pub mod join_token;
pub mod k8s;
pub mod metrics;
pub mod mint_policy;
pub mod node_attest;
pub mod node_feed;
pub mod oidc;
pub mod rate_limit;
pub mod registry_view;
pub mod run;
pub mod server_svid;
pub mod service;
pub mod tls_listener;
