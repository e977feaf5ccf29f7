//! Stream responses built once per change and shared by every stream that sends the same one.
//!
//! When the identity source changes (a rotation, a bundle change, a new node view), every open
//! stream has to send its new state. Building that state per stream (re-reading SVIDs,
//! concatenating DER chains and bundles) made a change cost O(streams); here each distinct
//! response is built once per change *generation* (the value of
//! [`WorkloadIdentities::changes`](crate::identities::WorkloadIdentities::changes)) and
//! handed to every stream that asks for it:
//!
//! - an `X509SVIDResponse` per distinct entitlement list (the caller's resolved
//!   [`Entitlement`]s, claims included), so streams share one only when they would have asked
//!   the certificate manager for exactly the same thing: a caller never sees another's SVIDs;
//! - an `X509BundlesResponse` and a `JWTBundlesResponse` per distinct *federation key* (the
//!   trust domains the caller's identities are in or federate with,
//!   [`federation_key`](crate::identities::federation_key)): callers are served different
//!   federated bundles, but in the common case (no federation, or one federation set for the
//!   whole node) every stream has the same key, so each is still built once per generation.
//!   Whether the caller may read them is checked per stream. At most [`MAX_BUNDLE_KEYS`]
//!   keys are cached per generation; a stream beyond builds its own.
//!
//! Two ways to ask ([`Purpose`]): an *update* of an open stream waits for a build already
//! running for the same response (so N streams cause one build) and shares its failure (the
//! stream then keeps serving its last state, as it would have anyway); a stream's *first*
//! state reuses a response only if it was built successfully, and otherwise builds its own, so
//! a failure never sticks to new callers (the manager signals failures to new callers only
//! when asked, not through a change).
//!
//! No mutex is held while building. SVID responses carry private keys: the cache holds them
//! weakly (they live exactly as long as a stream holds them) and wipes the key bytes when the
//! last holder drops them.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};

use lanyard_proto::workload::{JwtBundlesResponse, X509BundlesResponse, X509svidResponse};
use lanyard_svid::TrustDomain;
use tokio::sync::{OnceCell, SetError};
use zeroize::Zeroize;

use super::refusal::Refusal;
use crate::identities::Entitlement;

/// Dead cache entries are swept once the SVID map holds this many, or twice the live count
/// after the last sweep, whichever is more (so sweeps stay amortised O(1) per insert).
const MIN_SWEEP_AT: usize = 64;

/// Most federation keys whose bundle responses one generation caches (each distinct
/// federation set of the node's registrations is one).
pub const MAX_BUNDLE_KEYS: usize = 1024;

/// A bundle response cache key: the trust domains served, sorted.
type BundleKey = Vec<TrustDomain>;

/// Why a response is wanted; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The first message of a new stream.
    First,
    /// An open stream's update after a change.
    Update,
}

/// Wipes secret material a response holds, when its last holder drops it.
pub trait WipeSecrets {
    fn wipe_secrets(&mut self);
}

impl WipeSecrets for X509svidResponse {
    fn wipe_secrets(&mut self) {
        for svid in &mut self.svids {
            svid.x509_svid_key.zeroize();
        }
    }
}

impl WipeSecrets for X509BundlesResponse {
    fn wipe_secrets(&mut self) {}
}

impl WipeSecrets for JwtBundlesResponse {
    fn wipe_secrets(&mut self) {}
}

/// One response of one generation: empty until built; a failed build is kept only while its
/// waiters hold it (see [`Purpose::Update`]).
pub struct Slot<M: WipeSecrets> {
    cell: OnceCell<Result<M, Refusal>>,
}

impl<M: WipeSecrets> Slot<M> {
    fn empty() -> Self {
        Self {
            cell: OnceCell::new(),
        }
    }

    fn built(message: M) -> Self {
        Self {
            cell: OnceCell::new_with(Some(Ok(message))),
        }
    }

    fn is_built(&self) -> bool {
        matches!(self.cell.get(), Some(Ok(_)))
    }
}

impl<M: WipeSecrets> Drop for Slot<M> {
    fn drop(&mut self) {
        if let Some(Ok(message)) = self.cell.get_mut() {
            message.wipe_secrets();
        }
    }
}

/// A successfully built response, shared: clones are cheap and point at the same message.
pub struct SharedResponse<M: WipeSecrets>(Arc<Slot<M>>);

impl<M: WipeSecrets> Clone for SharedResponse<M> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<M: WipeSecrets> SharedResponse<M> {
    /// Only for a slot holding a built message.
    fn new(slot: Arc<Slot<M>>) -> Self {
        debug_assert!(slot.is_built());
        Self(slot)
    }

    /// The message.
    pub fn message(&self) -> &M {
        match self.0.cell.get() {
            Some(Ok(message)) => message,
            // `SharedResponse::new` is only called on built slots, and a set OnceCell never
            // changes.
            _ => unreachable!("a SharedResponse always holds a built message"),
        }
    }

    /// Whether both are the very same shared response (built once, handed to both).
    pub fn is_same_build(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl<M: WipeSecrets + PartialEq> SharedResponse<M> {
    /// Whether sending `self` after `other` would tell the client nothing new.
    pub fn same_content(&self, other: &Self) -> bool {
        self.is_same_build(other) || self.message() == other.message()
    }
}

/// What one generation's responses are cached under.
struct Generation {
    number: u64,
    /// Held weakly: an SVID response (with its keys) lives only while a stream holds it.
    x509_svids: HashMap<Vec<Entitlement>, Weak<Slot<X509svidResponse>>>,
    sweep_at: usize,
    /// Bundles are not secret: held strongly, so a stream opened later in the generation
    /// reuses them.
    x509_bundles: HashMap<BundleKey, Arc<Slot<X509BundlesResponse>>>,
    jwt_bundles: HashMap<BundleKey, Arc<Slot<JwtBundlesResponse>>>,
}

impl Generation {
    fn new(number: u64) -> Self {
        Self {
            number,
            x509_svids: HashMap::new(),
            sweep_at: MIN_SWEEP_AT,
            x509_bundles: HashMap::new(),
            jwt_bundles: HashMap::new(),
        }
    }

    fn x509_svid_slot(&mut self, key: &[Entitlement]) -> Arc<Slot<X509svidResponse>> {
        if let Some(slot) = self.x509_svids.get(key).and_then(Weak::upgrade) {
            return slot;
        }
        if self.x509_svids.len() >= self.sweep_at {
            self.x509_svids.retain(|_, slot| slot.strong_count() > 0);
            self.sweep_at = (self.x509_svids.len() * 2).max(MIN_SWEEP_AT);
        }
        let slot = Arc::new(Slot::empty());
        self.x509_svids.insert(key.to_vec(), Arc::downgrade(&slot));
        slot
    }
}

/// The slot of `key` in `map`, made if missing; a private one once `map` holds
/// [`MAX_BUNDLE_KEYS`] others.
fn bundle_slot<M: WipeSecrets>(
    map: &mut HashMap<BundleKey, Arc<Slot<M>>>,
    key: &[TrustDomain],
) -> Arc<Slot<M>> {
    if let Some(slot) = map.get(key) {
        return slot.clone();
    }
    let slot = Arc::new(Slot::empty());
    if map.len() < MAX_BUNDLE_KEYS {
        map.insert(key.to_vec(), slot.clone());
    }
    slot
}

/// How many responses were built, by kind (each build is one read of the identity source
/// and one encoding, whatever the number of streams that sent it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuildCounts {
    pub x509_svid: u64,
    pub x509_bundles: u64,
    pub jwt_bundles: u64,
}

/// The responses of the current change generation. See the module doc.
pub struct SharedResponses {
    current: Mutex<Generation>,
    builds: Mutex<BuildCounts>,
}

impl Default for SharedResponses {
    fn default() -> Self {
        Self::new()
    }
}

impl SharedResponses {
    pub fn new() -> Self {
        Self {
            current: Mutex::new(Generation::new(0)),
            builds: Mutex::new(BuildCounts::default()),
        }
    }

    /// Responses built so far.
    pub fn builds(&self) -> BuildCounts {
        *self.builds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `X509SVIDResponse` for `entitlements` as of `generation` (the change the caller
    /// has seen), built by `build` unless a stream already did.
    pub async fn x509_svid<F, Fut>(
        &self,
        generation: u64,
        entitlements: &[Entitlement],
        purpose: Purpose,
        build: F,
    ) -> Result<SharedResponse<X509svidResponse>, Refusal>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<X509svidResponse, Refusal>>,
    {
        let slot = self.with_generation(generation, |g| g.x509_svid_slot(entitlements));
        self.fill(slot, purpose, build, |b| b.x509_svid += 1).await
    }

    /// The `X509BundlesResponse` for federation key `key` as of `generation`.
    pub async fn x509_bundles<F, Fut>(
        &self,
        generation: u64,
        key: &[TrustDomain],
        purpose: Purpose,
        build: F,
    ) -> Result<SharedResponse<X509BundlesResponse>, Refusal>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<X509BundlesResponse, Refusal>>,
    {
        let slot = self.with_generation(generation, |g| bundle_slot(&mut g.x509_bundles, key));
        self.fill(slot, purpose, build, |b| b.x509_bundles += 1)
            .await
    }

    /// The `JWTBundlesResponse` for federation key `key` as of `generation`.
    pub async fn jwt_bundles<F, Fut>(
        &self,
        generation: u64,
        key: &[TrustDomain],
        purpose: Purpose,
        build: F,
    ) -> Result<SharedResponse<JwtBundlesResponse>, Refusal>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<JwtBundlesResponse, Refusal>>,
    {
        let slot = self.with_generation(generation, |g| bundle_slot(&mut g.jwt_bundles, key));
        self.fill(slot, purpose, build, |b| b.jwt_bundles += 1)
            .await
    }

    /// Runs `pick` on the cache of `generation`. A newer generation replaces the cache; an
    /// older one (a stream that has not seen the latest change yet) gets the newer cache,
    /// whose responses were built from a state at least as new: it is woken for that change
    /// next and then finds the same response, which it does not send twice.
    fn with_generation<T>(&self, generation: u64, pick: impl FnOnce(&mut Generation) -> T) -> T {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if generation > current.number {
            *current = Generation::new(generation);
        }
        pick(&mut current)
    }

    async fn fill<M, F, Fut>(
        &self,
        slot: Arc<Slot<M>>,
        purpose: Purpose,
        build: F,
        count: impl FnOnce(&mut BuildCounts),
    ) -> Result<SharedResponse<M>, Refusal>
    where
        M: WipeSecrets,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<M, Refusal>>,
    {
        if slot.is_built() {
            return Ok(SharedResponse::new(slot));
        }
        let counted = |result| {
            count(&mut self.builds.lock().unwrap_or_else(|e| e.into_inner()));
            result
        };
        match purpose {
            Purpose::Update => {
                let result = slot
                    .cell
                    .get_or_init(|| async { counted(build().await) })
                    .await;
                match result {
                    Ok(_) => Ok(SharedResponse::new(slot)),
                    Err(refusal) => Err(refusal.clone()),
                }
            }
            Purpose::First => {
                let message = counted(build().await)?;
                // Publish it for the streams after us, unless someone else built (or is
                // building) this response meanwhile; then ours stays private.
                match slot.cell.set(Ok(message)) {
                    Ok(()) => Ok(SharedResponse::new(slot)),
                    Err(
                        SetError::AlreadyInitializedError(mine) | SetError::InitializingError(mine),
                    ) => mine.map(|message| SharedResponse::new(Arc::new(Slot::built(message)))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use lanyard_proto::workload::X509svid;

    use super::*;

    fn entitlements(path: &str) -> Vec<Entitlement> {
        let td = TrustDomain::new("example.org").unwrap();
        vec![Entitlement {
            spiffe_id: td.id(&format!("/{path}")).unwrap(),
            workload: Default::default(),
            x509_ttl: None,
            hint: String::new(),
            federates_with: Vec::new(),
        }]
    }

    fn response(id: &str, key: u8) -> X509svidResponse {
        X509svidResponse {
            svids: vec![X509svid {
                spiffe_id: id.to_owned(),
                x509_svid: vec![1, 2, 3],
                x509_svid_key: vec![key; 8],
                bundle: vec![4],
                hint: String::new(),
            }],
            ..Default::default()
        }
    }

    /// A build that counts its runs and answers `response(id, key)`.
    async fn counted_build(
        runs: &AtomicUsize,
        id: &str,
        key: u8,
    ) -> Result<X509svidResponse, Refusal> {
        runs.fetch_add(1, Ordering::SeqCst);
        tokio::task::yield_now().await;
        Ok(response(id, key))
    }

    #[tokio::test]
    async fn concurrent_updates_of_one_identity_share_one_build() {
        let cache = SharedResponses::new();
        let runs = AtomicUsize::new(0);
        let key = entitlements("web");
        let ask = || cache.x509_svid(1, &key, Purpose::Update, || counted_build(&runs, "web", 7));
        let (a, b, c) = tokio::join!(ask(), ask(), ask());
        let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "built once for three streams"
        );
        assert!(a.is_same_build(&b) && b.is_same_build(&c));
        assert_eq!(cache.builds().x509_svid, 1);
        // A first state in the same generation reuses it too.
        let d = cache
            .x509_svid(1, &key, Purpose::First, || counted_build(&runs, "web", 9))
            .await
            .unwrap();
        assert!(d.is_same_build(&a));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn different_identities_never_share() {
        let cache = SharedResponses::new();
        let runs = AtomicUsize::new(0);
        let (web, db) = (entitlements("web"), entitlements("db"));
        let web_state = cache
            .x509_svid(1, &web, Purpose::Update, || counted_build(&runs, "web", 1))
            .await
            .unwrap();
        let db_state = cache
            .x509_svid(1, &db, Purpose::Update, || counted_build(&runs, "db", 2))
            .await
            .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert!(!web_state.is_same_build(&db_state));
        assert_eq!(web_state.message().svids[0].spiffe_id, "web");
        assert_eq!(db_state.message().svids[0].spiffe_id, "db");
        // The same identity claimed by another workload (another pod) is another request to
        // the manager, so it is built apart too.
        let mut other_pod = web.clone();
        other_pod[0].workload.entry_pod = Some(Default::default());
        let other = cache
            .x509_svid(1, &other_pod, Purpose::Update, || {
                counted_build(&runs, "web", 3)
            })
            .await
            .unwrap();
        assert!(!other.is_same_build(&web_state));
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_new_generation_is_built_again_and_an_older_one_gets_the_newer() {
        let cache = SharedResponses::new();
        let runs = AtomicUsize::new(0);
        let key = entitlements("web");
        let g1 = cache
            .x509_svid(1, &key, Purpose::Update, || counted_build(&runs, "web", 1))
            .await
            .unwrap();
        let g2 = cache
            .x509_svid(2, &key, Purpose::Update, || counted_build(&runs, "web", 2))
            .await
            .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert!(!g2.is_same_build(&g1));
        assert!(!g2.same_content(&g1));
        // A stream still at generation 1 gets generation 2's response, not a rebuild.
        let late = cache
            .x509_svid(1, &key, Purpose::Update, || counted_build(&runs, "web", 3))
            .await
            .unwrap();
        assert!(late.is_same_build(&g2));
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failure_is_shared_by_waiting_updates_but_not_by_first_states() {
        let cache = SharedResponses::new();
        let runs = AtomicUsize::new(0);
        let key = entitlements("web");
        let failing = || async {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            Err(Refusal::NotReady("server down".into()))
        };
        let ask = || cache.x509_svid(1, &key, Purpose::Update, failing);
        let (a, b) = tokio::join!(ask(), ask());
        assert!(matches!(a, Err(Refusal::NotReady(_))));
        assert!(matches!(b, Err(Refusal::NotReady(_))));
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "one attempt for both waiters"
        );
        // A new stream asks again (and its success is published).
        let first = cache
            .x509_svid(1, &key, Purpose::First, || counted_build(&runs, "web", 5))
            .await
            .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        let after = cache
            .x509_svid(1, &key, Purpose::Update, || counted_build(&runs, "web", 6))
            .await
            .unwrap();
        assert!(after.is_same_build(&first));
    }

    #[tokio::test]
    async fn svid_responses_live_only_while_a_stream_holds_them() {
        let cache = SharedResponses::new();
        let runs = AtomicUsize::new(0);
        let key = entitlements("web");
        let held = cache
            .x509_svid(1, &key, Purpose::Update, || counted_build(&runs, "web", 1))
            .await
            .unwrap();
        let weak = Arc::downgrade(&held.0);
        drop(held);
        assert!(
            weak.upgrade().is_none(),
            "the cache does not keep keys alive"
        );
        cache
            .x509_svid(1, &key, Purpose::Update, || counted_build(&runs, "web", 2))
            .await
            .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn bundles_are_built_once_per_generation() {
        let cache = SharedResponses::new();
        let runs = AtomicUsize::new(0);
        let build = || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(X509BundlesResponse::default())
        };
        let key = [TrustDomain::new("example.org").unwrap()];
        let a = cache
            .x509_bundles(4, &key, Purpose::First, build)
            .await
            .unwrap();
        let b = cache
            .x509_bundles(4, &key, Purpose::Update, build)
            .await
            .unwrap();
        assert!(a.is_same_build(&b));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        cache
            .x509_bundles(5, &key, Purpose::Update, build)
            .await
            .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(cache.builds().x509_bundles, 2);
        assert_eq!(cache.builds().x509_svid, 0);
    }

    #[tokio::test]
    async fn bundles_are_built_once_per_federation_key() {
        let cache = SharedResponses::new();
        let td = |name: &str| TrustDomain::new(name).unwrap();
        let plain = vec![td("example.org")];
        let federated = vec![td("example.org"), td("partner.test")];
        let build = |domains: &[TrustDomain]| {
            let response = JwtBundlesResponse {
                bundles: domains
                    .iter()
                    .map(|d| (d.id_string(), b"{}".to_vec()))
                    .collect(),
            };
            move || async move { Ok(response) }
        };
        let a = cache
            .jwt_bundles(1, &plain, Purpose::First, build(&plain))
            .await
            .unwrap();
        let b = cache
            .jwt_bundles(1, &federated, Purpose::First, build(&federated))
            .await
            .unwrap();
        assert!(
            !a.is_same_build(&b),
            "another federation set, another build"
        );
        assert_eq!(a.message().bundles.len(), 1);
        assert_eq!(b.message().bundles.len(), 2);
        // Every further caller of either set shares its build.
        for _ in 0..3 {
            let again = cache
                .jwt_bundles(1, &plain, Purpose::Update, build(&federated))
                .await
                .unwrap();
            assert!(again.is_same_build(&a));
        }
        assert_eq!(cache.builds().jwt_bundles, 2);

        // Beyond the bound, a key is built for its caller without being cached.
        for i in 0..MAX_BUNDLE_KEYS {
            let key = vec![td(&format!("d{i}.test"))];
            cache
                .jwt_bundles(1, &key, Purpose::First, build(&key))
                .await
                .unwrap();
        }
        let extra = vec![td("extra.test")];
        let one = cache
            .jwt_bundles(1, &extra, Purpose::First, build(&extra))
            .await
            .unwrap();
        let two = cache
            .jwt_bundles(1, &extra, Purpose::First, build(&extra))
            .await
            .unwrap();
        assert!(!one.is_same_build(&two));
        let a_again = cache
            .jwt_bundles(1, &plain, Purpose::Update, build(&plain))
            .await
            .unwrap();
        assert!(a_again.is_same_build(&a), "cached keys stay cached");
    }

    #[test]
    fn wiping_clears_the_keys_only() {
        let mut r = response("web", 0xAA);
        r.wipe_secrets();
        assert!(r.svids[0].x509_svid_key.is_empty());
        assert_eq!(r.svids[0].x509_svid, vec![1, 2, 3]);
    }
}
