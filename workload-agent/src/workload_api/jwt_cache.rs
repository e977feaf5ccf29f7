//! FetchJWTSVID's fairness (issue 14, finding 9): one workload calling FetchJWTSVID in a loop
//! used up the node's mint budget at the server (`rate_limited` for every other workload).
//!
//! - **Cache** ([`JwtCache`]). A minted JWT-SVID is reused for the same identity and audience
//!   set while more than half its lifetime remains (as SPIRE's agent does), so a workload
//!   asking again and again costs the server one mint per half lifetime. Keyed by the full
//!   [`Entitlement`] (ID and the workload it is minted for) and the sorted, deduplicated
//!   audiences; the cache is read only after the caller's entitlements were resolved, so a
//!   caller only ever gets a token of an identity it holds. At most
//!   [`JwtLimits::cached_tokens`] tokens; when full, expired ones go first, then the one
//!   closest to its reuse limit.
//! - **Per-caller budget** ([`MintBudget`]). Every mint the cache cannot spare costs the
//!   caller ([`CallerKey`]: uid, and pod UID in a pod) one token of its own bucket
//!   ([`JwtLimits::mints_per_second`], burst [`JwtLimits::mint_burst`]) before the server is
//!   asked; an empty bucket is refused here as `rate_limited` (`ResourceExhausted`). Cache
//!   hits are free.
//!
//! Tokens are never logged.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::identities::Entitlement;
use crate::socket::CallerKey;

/// The bounds of FetchJWTSVID. [`JwtLimits::default`] suits a node agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtLimits {
    /// Tokens cached (identity x audience set).
    pub cached_tokens: usize,
    /// Server mints per second one caller may cause (its bucket's refill rate).
    pub mints_per_second: u32,
    /// Mints one caller may cause at once (its bucket's size).
    pub mint_burst: u32,
}

impl Default for JwtLimits {
    fn default() -> Self {
        Self {
            // A JWT-SVID is under 2 KiB (the signer's bound): at most a few MiB in all, and
            // far more than a node's workloads use (tens of pods, a few audiences each).
            cached_tokens: 4096,
            // The server grants a node 500 mints/s (`--mint-rate-limit`, burst 4x). A node
            // runs up to ~110 pods (Kubernetes' default max-pods): 5/s each keeps 100 callers
            // flooding at once within the node's budget, so the rest of the node's pods still
            // get their X.509 renewals and JWTs. With the cache, a workload needs one mint per
            // (identity, audience set) per half lifetime, far below 5/s.
            mints_per_second: 5,
            // A workload starting up with a handful of audiences (or several identities, one
            // mint each when no spiffe_id is asked) gets them all at once.
            mint_burst: 20,
        }
    }
}

/// The cache key: whose token, for which audiences.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    entitlement: Entitlement,
    audience: BTreeSet<String>,
}

struct CachedToken {
    token: Zeroizing<String>,
    /// Served until then (the half-life point).
    reuse_until: Instant,
}

/// Minted JWT-SVIDs by (identity, audience set), reused while more than half their lifetime
/// remains.
pub struct JwtCache {
    capacity: usize,
    tokens: Mutex<HashMap<TokenKey, CachedToken>>,
}

impl JwtCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            tokens: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenKey, CachedToken>> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn key(entitlement: &Entitlement, audience: &[String]) -> TokenKey {
        TokenKey {
            entitlement: entitlement.clone(),
            audience: audience.iter().cloned().collect(),
        }
    }

    /// The cached token for `entitlement` and `audience`, while it may still be reused.
    pub fn get(&self, entitlement: &Entitlement, audience: &[String]) -> Option<String> {
        let key = Self::key(entitlement, audience);
        let mut tokens = self.lock();
        match tokens.get(&key) {
            Some(cached) if Instant::now() < cached.reuse_until => Some(cached.token.to_string()),
            Some(_) => {
                tokens.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Keeps `token` (just minted for `entitlement` and `audience`) until half its lifetime
    /// is left; a token whose claims give no usable lifetime is not kept.
    pub fn insert(&self, entitlement: &Entitlement, audience: &[String], token: &str) {
        let Some(reuse_for) = reuse_window(token, SystemTime::now()) else {
            return;
        };
        let now = Instant::now();
        let mut tokens = self.lock();
        if tokens.len() >= self.capacity {
            tokens.retain(|_, t| now < t.reuse_until);
        }
        if tokens.len() >= self.capacity {
            let soonest = tokens
                .iter()
                .min_by_key(|(_, t)| t.reuse_until)
                .map(|(k, _)| k.clone());
            if let Some(key) = soonest {
                tokens.remove(&key);
            }
        }
        if self.capacity == 0 {
            return;
        }
        tokens.insert(
            Self::key(entitlement, audience),
            CachedToken {
                token: Zeroizing::new(token.to_owned()),
                reuse_until: now + reuse_for,
            },
        );
    }

    /// Tokens held now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How long a token minted with claims `iat`..`exp` may be reused from `now`: until half its
/// lifetime remains. `None` when the claims cannot be read or that point has passed.
fn reuse_window(token: &str, now: SystemTime) -> Option<Duration> {
    let claims = token.split('.').nth(1)?;
    let claims = URL_SAFE_NO_PAD.decode(claims).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&claims).ok()?;
    let iat = claims.get("iat")?.as_i64()?;
    let exp = claims.get("exp")?.as_i64()?;
    let now = i64::try_from(now.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs()).ok()?;
    // Reuse until exp - lifetime/2, i.e. the lifetime's midpoint.
    let half_life_at = iat.checked_add(exp.checked_sub(iat)? / 2)?;
    let left = half_life_at.checked_sub(now)?;
    (left > 0).then(|| Duration::from_secs(left as u64))
}

/// A caller used up its share of the node's mint budget.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate_limited")]
pub struct RateLimited {
    pub per_second: u32,
    pub burst: u32,
}

impl RateLimited {
    pub fn message(&self) -> String {
        format!(
            "this workload asked for more new JWT-SVIDs than its share of the node's mint \
             budget ({} per second, {} at once); reuse tokens (they are cached per audience) \
             or retry later",
            self.per_second, self.burst
        )
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A token bucket per caller for server mints.
pub struct MintBudget {
    per_second: u32,
    burst: u32,
    buckets: Mutex<HashMap<CallerKey, Bucket>>,
}

/// Callers remembered before full buckets (callers at rest) are forgotten.
const FORGET_AT: usize = 4096;

impl MintBudget {
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second,
            burst,
            buckets: Mutex::default(),
        }
    }

    /// Takes `n` mints from `caller`'s bucket, all or none.
    pub fn take(&self, caller: &CallerKey, n: u32) -> Result<(), RateLimited> {
        if n == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let burst = f64::from(self.burst);
        let rate = f64::from(self.per_second);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= FORGET_AT {
            buckets.retain(|_, b| b.tokens + rate * (now - b.at).as_secs_f64() < burst);
        }
        let bucket = buckets.entry(caller.clone()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.tokens = (bucket.tokens + rate * (now - bucket.at).as_secs_f64()).min(burst);
        bucket.at = now;
        if bucket.tokens < f64::from(n) {
            return Err(RateLimited {
                per_second: self.per_second,
                burst: self.burst,
            });
        }
        bucket.tokens -= f64::from(n);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_proto::identity::v1 as wire;
    use lanyard_svid::SpiffeId;
    use lanyard_svid::jwt::JwtSigner;

    fn entitlement(path: &str) -> Entitlement {
        let id = format!("spiffe://example.org{path}");
        Entitlement {
            spiffe_id: SpiffeId::parse(&id).unwrap(),
            workload: wire::Workload {
                kind: Some(wire::workload::Kind::EntrySpiffeId(id)),
                entry_pod: None,
            },
            x509_ttl: None,
            hint: String::new(),
            federates_with: Vec::new(),
        }
    }

    fn mint(e: &Entitlement, audience: &[String], ttl: Duration) -> String {
        let (signer, _) = JwtSigner::generate().unwrap();
        signer
            .mint(&e.spiffe_id, audience, ttl, SystemTime::now())
            .unwrap()
    }

    fn aud(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_is_reused_until_half_its_lifetime_is_left() {
        let cache = JwtCache::new(16);
        let web = entitlement("/web");
        let token = mint(&web, &aud(&["a", "b"]), Duration::from_secs(300));
        cache.insert(&web, &aud(&["a", "b"]), &token);
        assert_eq!(
            cache.get(&web, &aud(&["b", "a"])).as_deref(),
            Some(&*token),
            "a set"
        );
        assert_eq!(cache.get(&web, &aud(&["a"])), None, "another audience set");
        assert_eq!(
            cache.get(&entitlement("/db"), &aud(&["a", "b"])),
            None,
            "another identity"
        );
        // iat and exp are whole seconds: the reuse window is 150 s, less up to 1 s.
        tokio::time::advance(Duration::from_secs(148)).await;
        assert!(
            cache.get(&web, &aud(&["a", "b"])).is_some(),
            "before the half-life"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(cache.get(&web, &aud(&["a", "b"])), None, "at the half-life");
        assert!(cache.is_empty(), "dropped once past it");
    }

    #[test]
    fn tokens_without_a_usable_lifetime_are_not_kept() {
        let cache = JwtCache::new(16);
        let web = entitlement("/web");
        for token in ["not-a-jwt", "a.e30.c", "a.eyJpYXQiOjEsImV4cCI6Mn0.c"] {
            cache.insert(&web, &aud(&["a"]), token);
        }
        assert!(cache.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_is_bounded_and_evicts_the_soonest_to_expire() {
        let cache = JwtCache::new(2);
        let web = entitlement("/web");
        for (a, ttl) in [("short", 60), ("long", 600), ("new", 300)] {
            let token = mint(&web, &aud(&[a]), Duration::from_secs(ttl));
            cache.insert(&web, &aud(&[a]), &token);
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&web, &aud(&["short"])).is_none(), "evicted first");
        assert!(cache.get(&web, &aud(&["long"])).is_some());
        assert!(cache.get(&web, &aud(&["new"])).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn each_caller_has_its_own_bucket_refilled_over_time() {
        let budget = MintBudget::new(5, 20);
        let a = CallerKey {
            uid: 1,
            pod_uid: None,
        };
        let b = CallerKey {
            uid: 2,
            pod_uid: None,
        };
        for _ in 0..20 {
            budget.take(&a, 1).unwrap();
        }
        let refused = budget.take(&a, 1).unwrap_err();
        assert_eq!(refused.to_string(), "rate_limited");
        budget.take(&b, 20).unwrap();
        tokio::time::advance(Duration::from_millis(200)).await;
        budget.take(&a, 1).unwrap();
        assert!(budget.take(&a, 1).is_err(), "one per 200 ms");
        assert!(budget.take(&a, 0).is_ok());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(budget.take(&a, 21).is_err(), "never more than the burst");
        budget.take(&a, 20).unwrap();
    }
}
