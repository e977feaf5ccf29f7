//! When a periodic write to the API server (this replica's CA report, the LanyardIdentity
//! statuses) is next due: soon after a change but at most once per minimum interval, so a
//! burst of changes is one write, and at a heartbeat otherwise, so readers see it is alive.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteSchedule {
    /// The last write (or attempt); `None` before the first: due at once.
    pub last: Option<Instant>,
    /// Something changed since then.
    pub dirty: bool,
    min_interval: Duration,
    heartbeat: Duration,
}

impl WriteSchedule {
    /// Nothing written yet.
    pub fn new(min_interval: Duration, heartbeat: Duration, dirty: bool) -> Self {
        Self {
            last: None,
            dirty,
            min_interval,
            heartbeat,
        }
    }

    pub fn due(&self) -> Instant {
        match self.last {
            None => Instant::now(),
            Some(last) if self.dirty => last + self.min_interval,
            Some(last) => last + self.heartbeat,
        }
    }

    /// A write (or attempt) now; nothing pending.
    pub fn written(&mut self) {
        self.last = Some(Instant::now());
        self.dirty = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn debounces_changes_and_beats() {
        let (min, beat) = (Duration::from_secs(2), Duration::from_secs(30));
        let start = Instant::now();
        let mut s = WriteSchedule::new(min, beat, true);
        assert_eq!(s.due(), start);
        s.written();
        assert_eq!(s.due(), start + beat);
        s.dirty = true;
        assert_eq!(s.due(), start + min);
        tokio::time::advance(Duration::from_secs(5)).await;
        s.written();
        assert_eq!(s.due(), start + Duration::from_secs(5) + beat);
    }
}
