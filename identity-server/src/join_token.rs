//! Join tokens: single-use secrets, each bound at generation to one node name and valid for a
//! limited time, that let an agent off Kubernetes attest once.
//!
//! Tokens live in the server's memory only (data-dir mode has exactly one server): a restart
//! forgets unused tokens, which errs on the side of refusing. Only a SHA-256 of each token is
//! kept, so a memory dump does not hand out valid tokens.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};

/// Unredeemed tokens kept at most; generating more is refused until some expire or are used.
const MAX_PENDING: usize = 10_000;
/// Bytes of randomness per token.
const TOKEN_BYTES: usize = 32;
/// Every token starts with this, so none looks like a command-line flag (URL-safe base64
/// starts with `-` one time in 64) and a token is recognisable in a secret scanner.
pub const TOKEN_PREFIX: &str = "lj1.";
/// Longest accepted token text, checked before hashing anything.
const MAX_TOKEN_LEN: usize = 128;

/// Why a token cannot be generated or redeemed. `Display` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinTokenError {
    #[error("unknown_token")]
    Unknown,
    #[error("expired_token")]
    Expired,
    #[error("too_many_pending_tokens")]
    TooManyPending,
    #[error("random_failure")]
    Random,
}

impl JoinTokenError {
    /// A sentence for the refused caller or operator.
    pub fn message(self) -> &'static str {
        match self {
            Self::Unknown => "join token unknown or already used",
            Self::Expired => "join token expired; generate a new one",
            Self::TooManyPending => "too many unused join tokens; let some expire first",
            Self::Random => "system random number generator failed",
        }
    }
}

#[derive(Debug)]
struct Pending {
    node: String,
    expires_at: SystemTime,
}

/// The pending join tokens of this server.
#[derive(Debug, Default)]
pub struct JoinTokens {
    pending: Mutex<HashMap<[u8; 32], Pending>>,
}

fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

impl JoinTokens {
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates a token for `node`, valid until `now + ttl`.
    pub fn generate(
        &self,
        node: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<String, JoinTokenError> {
        let mut bytes = [0u8; TOKEN_BYTES];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| JoinTokenError::Random)?;
        let token = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
        let mut pending = self.pending.lock().expect("join token lock");
        pending.retain(|_, p| p.expires_at > now);
        if pending.len() >= MAX_PENDING {
            return Err(JoinTokenError::TooManyPending);
        }
        pending.insert(
            digest(&token),
            Pending {
                node: node.to_owned(),
                expires_at: now + ttl,
            },
        );
        Ok(token)
    }

    /// Consumes `token` and returns the node it was bound to. A token is removed by its first
    /// redemption attempt whatever the outcome, so it can never be used twice, even by two
    /// callers racing with the same token: the lock makes exactly one of them see it.
    pub fn redeem(&self, token: &str, now: SystemTime) -> Result<String, JoinTokenError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(JoinTokenError::Unknown);
        }
        let found = self
            .pending
            .lock()
            .expect("join token lock")
            .remove(&digest(token));
        match found {
            None => Err(JoinTokenError::Unknown),
            Some(p) if p.expires_at <= now => Err(JoinTokenError::Expired),
            Some(p) => Ok(p.node),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn redeems_once_for_its_node() {
        let tokens = JoinTokens::new();
        let now = SystemTime::now();
        let t = tokens.generate("node-1", MIN, now).unwrap();
        assert_eq!(tokens.redeem(&t, now), Ok("node-1".into()));
        assert_eq!(tokens.redeem(&t, now), Err(JoinTokenError::Unknown));
    }

    #[test]
    fn expired_and_unknown_tokens_are_refused() {
        let tokens = JoinTokens::new();
        let now = SystemTime::now();
        let t = tokens.generate("node-1", MIN, now).unwrap();
        assert_eq!(tokens.redeem(&t, now + MIN), Err(JoinTokenError::Expired));
        assert_eq!(tokens.redeem("nope", now), Err(JoinTokenError::Unknown));
        assert_eq!(
            tokens.redeem(&"x".repeat(10_000), now),
            Err(JoinTokenError::Unknown)
        );
    }

    #[test]
    fn single_use_under_concurrency() {
        let tokens = Arc::new(JoinTokens::new());
        let now = SystemTime::now();
        let t = tokens.generate("node-1", MIN, now).unwrap();
        let winners: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|_| s.spawn(|| tokens.redeem(&t, now).is_ok() as usize))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(winners, 1);
    }

    #[test]
    fn tokens_are_distinct() {
        let tokens = JoinTokens::new();
        let now = SystemTime::now();
        let a = tokens.generate("n", MIN, now).unwrap();
        let b = tokens.generate("n", MIN, now).unwrap();
        assert_ne!(a, b);
        assert!(a.len() >= 43);
    }

    #[test]
    fn no_token_looks_like_a_flag() {
        let tokens = JoinTokens::new();
        let now = SystemTime::now();
        // Without the prefix about 1 in 64 would start with '-': 2,000 draws would show ~31.
        for _ in 0..2000 {
            let t = tokens.generate("n", MIN, now).unwrap();
            assert!(t.starts_with(TOKEN_PREFIX), "{t}");
            assert!(!t.starts_with('-'));
            assert_eq!(tokens.redeem(&t, now), Ok("n".into()));
        }
    }
}
