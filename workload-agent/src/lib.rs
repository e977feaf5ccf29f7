//! lanyard-agent: the per-node agent that serves the SPIFFE Workload API on a Unix socket.
//!
//! Module map:
