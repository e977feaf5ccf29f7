//! Closing connections that have no open stream for [`super::ConnectionLimits::idle_timeout`].
//!
//! Activity is an open HTTP/2 stream (a call in progress, or a watch such as FetchX509SVID),
//! counted by the admission layer from the moment a call reaches it until its response body is
//! dropped. Bytes alone are not activity: a peer answering keepalive pings, or sending pings
//! of its own, still counts as idle. The check lives in the connection's reads: while the HTTP/2
//! server waits for the next frame of a connection with no open stream, the idle timer runs,
//! and when it fires the read reports end of file, so the server closes the connection.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Context;
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::time::{Instant, Sleep};

/// The open streams of one connection, and since when it has had none.
#[derive(Debug)]
pub struct ConnectionActivity {
    open: AtomicUsize,
    idle_since: Mutex<Instant>,
    waker: AtomicWaker,
}

impl ConnectionActivity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            waker: AtomicWaker::new(),
        })
    }

    /// Counts a stream as open until the returned guard is dropped.
    pub fn stream_opened(self: &Arc<Self>) -> OpenStream {
        self.open.fetch_add(1, Ordering::SeqCst);
        OpenStream(self.clone())
    }

    pub fn open_streams(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    fn idle_since(&self) -> Instant {
        *self.idle_since.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One open stream on a connection (see [`ConnectionActivity::stream_opened`]).
#[derive(Debug)]
pub struct OpenStream(Arc<ConnectionActivity>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        let activity = &self.0;
        let mut since = activity
            .idle_since
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if activity.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            *since = Instant::now();
            drop(since);
            // The connection's read may be waiting with no timer armed: arm it now.
            activity.waker.wake();
        }
    }
}

/// The idle timer of one connection, polled from its reads.
#[derive(Debug)]
pub struct IdleTimer {
    activity: Arc<ConnectionActivity>,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    expired: bool,
}

impl IdleTimer {
    pub fn new(activity: Arc<ConnectionActivity>, timeout: Duration) -> Self {
        let deadline = activity.idle_since() + timeout;
        Self {
            activity,
            timeout,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            expired: false,
        }
    }

    /// Whether the connection has been idle for the timeout; otherwise arranges for `cx` to
    /// be woken when it may have been (the timer fires, or the last stream ends).
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.expired {
            return true;
        }
        self.activity.waker.register(cx.waker());
        if self.activity.open_streams() > 0 {
            return false;
        }
        let deadline = self.activity.idle_since() + self.timeout;
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        if self.sleep.as_mut().poll(cx).is_ready() && self.activity.open_streams() == 0 {
            self.expired = true;
        }
        self.expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expired(timer: &mut IdleTimer) -> bool {
        let waker = futures::task::noop_waker();
        timer.poll_expired(&mut Context::from_waker(&waker))
    }

    #[tokio::test(start_paused = true)]
    async fn expires_only_after_the_timeout_without_streams() {
        let activity = ConnectionActivity::new();
        let mut timer = IdleTimer::new(activity.clone(), Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(!expired(&mut timer));

        // A stream open for ten minutes keeps the connection.
        let stream = activity.stream_opened();
        tokio::time::advance(Duration::from_secs(600)).await;
        assert!(!expired(&mut timer));

        // The idle time counts from the end of the last stream.
        drop(stream);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(!expired(&mut timer));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(expired(&mut timer));
        assert!(expired(&mut timer), "stays expired");
    }
}
