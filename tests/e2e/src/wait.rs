//! Waiting on a condition with a deadline, the one way tests synchronise with processes and
//! caches that follow the API asynchronously (never a fixed sleep).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(50);

/// Polls `check` until it gives `Some`, failing after [`crate::DEADLINE`].
pub async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    check: impl FnMut() -> F,
) -> T {
    eventually_within(what, crate::DEADLINE, check).await
}

/// Polls `check` until it gives `Some`, failing after `deadline`.
pub async fn eventually_within<T, F: Future<Output = Option<T>>>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}
