//! The `lanyard` command-line tool: `lanyard install` prints the cluster manifests,
//! `lanyard ca` creates and rotates the CA in a cluster,
//! `lanyard identities` shows what every pod is issued and why (the LanyardIdentity
//! registration), `lanyard inject` meshes workloads in a YAML stream, `lanyard check` checks a node's
//! Lanyard, `lanyard tap` follows a proxy's connections. The binary (`src/main.rs`) is a thin
//! clap layer over these modules, so tests drive the same code.

#![forbid(unsafe_code)]

pub mod ca;
pub mod check;
pub mod identities;
pub mod images;
pub mod inject;
pub mod install;
pub mod redirect;
pub mod yaml;
