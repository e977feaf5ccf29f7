//! The connection budget of the agent's socket: open connections for all callers together,
//! and a per-uid share of them, so one local user cannot take every connection.
//!
//! Checked at accept, before anything else is done for a connection: the accept loop never
//! waits for room (a connection waiting in the kernel's backlog is not pinned to its caller,
//! see [`crate::attest`]); a connection over budget is closed at once, and its client sees
//! the connection end (gRPC clients retry with backoff). A connection's slot is held by a
//! [`ConnectionSlot`] that lives as long as the connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Why a new connection was closed at accept. `Display` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OverBudget {
    /// All callers together hold [`super::ConnectionLimits::max_connections`].
    #[error("connection_budget")]
    Total,
    /// This uid holds [`super::ConnectionLimits::max_connections_per_uid`].
    #[error("uid_connection_share")]
    UidShare,
}

/// Open connections, in total and per uid (`None`: the kernel gave no credentials).
#[derive(Debug)]
pub struct ConnectionBudget {
    total: usize,
    per_uid: usize,
    state: Mutex<State>,
    refused_total: AtomicU64,
    refused_uid: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    open: usize,
    by_uid: HashMap<Option<u32>, usize>,
}

/// One open connection's place in the budget; dropping it frees the place.
#[derive(Debug)]
pub struct ConnectionSlot {
    budget: Arc<ConnectionBudget>,
    uid: Option<u32>,
}

impl ConnectionBudget {
    pub fn new(total: usize, per_uid: usize) -> Arc<Self> {
        Arc::new(Self {
            total: total.max(1),
            per_uid: per_uid.clamp(1, total.max(1)),
            state: Mutex::default(),
            refused_total: AtomicU64::new(0),
            refused_uid: AtomicU64::new(0),
        })
    }

    /// Takes a place for a connection of `uid`, or says why there is none.
    pub fn try_admit(self: &Arc<Self>, uid: Option<u32>) -> Result<ConnectionSlot, OverBudget> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let held = state.by_uid.get(&uid).copied().unwrap_or(0);
        let refused = if held >= self.per_uid {
            Some((OverBudget::UidShare, &self.refused_uid))
        } else if state.open >= self.total {
            Some((OverBudget::Total, &self.refused_total))
        } else {
            None
        };
        if let Some((why, counter)) = refused {
            counter.fetch_add(1, Ordering::Relaxed);
            return Err(why);
        }
        state.open += 1;
        *state.by_uid.entry(uid).or_insert(0) += 1;
        Ok(ConnectionSlot {
            budget: self.clone(),
            uid,
        })
    }

    /// Open connections now: all, and those of `uid`.
    pub fn open(&self, uid: Option<u32>) -> (usize, usize) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (state.open, state.by_uid.get(&uid).copied().unwrap_or(0))
    }

    /// Connections closed at accept so far, by reason.
    pub fn refused(&self, why: OverBudget) -> u64 {
        match why {
            OverBudget::Total => self.refused_total.load(Ordering::Relaxed),
            OverBudget::UidShare => self.refused_uid.load(Ordering::Relaxed),
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut state = self.budget.state.lock().unwrap_or_else(|e| e.into_inner());
        state.open -= 1;
        if let Some(count) = state.by_uid.get_mut(&self.uid) {
            *count -= 1;
            if *count == 0 {
                state.by_uid.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_gets_its_share_and_others_the_rest() {
        let budget = ConnectionBudget::new(4, 2);
        let a1 = budget.try_admit(Some(1)).unwrap();
        let _a2 = budget.try_admit(Some(1)).unwrap();
        assert_eq!(budget.try_admit(Some(1)).unwrap_err(), OverBudget::UidShare);
        let _b1 = budget.try_admit(Some(2)).unwrap();
        let _n = budget.try_admit(None).unwrap();
        assert_eq!(budget.try_admit(Some(3)).unwrap_err(), OverBudget::Total);
        assert_eq!(budget.open(Some(1)), (4, 2));
        drop(a1);
        assert_eq!(budget.open(Some(1)), (3, 1));
        let _c = budget.try_admit(Some(3)).unwrap();
        assert_eq!(budget.refused(OverBudget::UidShare), 1);
        assert_eq!(budget.refused(OverBudget::Total), 1);
    }

    #[test]
    fn forgets_uids_without_connections() {
        let budget = ConnectionBudget::new(4, 2);
        drop(budget.try_admit(Some(7)).unwrap());
        assert!(budget.state.lock().unwrap().by_uid.is_empty());
        assert_eq!(budget.open(None), (0, 0));
    }
}
