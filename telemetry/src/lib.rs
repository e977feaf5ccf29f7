//! What every Lanyard daemon shares at its edges.
//!
//! Module map:
//! - [`logging`]: structured logs to stderr, filtered by `LANYARD_LOG` (or `RUST_LOG`).
//! - [`announce`]: the `listening on IP:PORT (role)` lines tests and scripts wait for.
//! - [`health`]: the HTTP listener serving `/healthz`, `/readyz` and Prometheus `/metrics`.

#![forbid(unsafe_code)]

pub mod announce;
pub mod health;
pub mod logging;

pub use announce::announce_listener;
pub use health::{MetricsPolicy, Readiness, serve_health, serve_health_with};
