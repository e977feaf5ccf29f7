//! Structured logs to stderr. Stdout is kept for machine-readable lines (`listening on ...`).

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; the filter comes from `LANYARD_LOG`, then `RUST_LOG`,
/// else `info`. Calling it twice is harmless.
pub fn init() {
    let filter = std::env::var("LANYARD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true)
        .try_init();
}
