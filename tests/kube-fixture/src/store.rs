//! The object store: what etcd plus the API server's registry do for our resources.
//!
//! Semantics followed ("Efficient detection of changes" and "Resource versions" in API Concepts,
//! <https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes>,
//! <https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions>):
//!
//! - One global, strictly increasing resourceVersion counter, as etcd's revision: every write
//!   of any object advances it, and the object carries the revision of its last write. Clients
//!   must treat it as opaque; it is a decimal integer here as in real clusters.
//! - A write whose result is byte-for-byte the stored object is a no-op: no new
//!   resourceVersion and no watch event (as the API server's `GuaranteedUpdate` does).
//! - `update` with a non-empty `metadata.resourceVersion` that is not the current one is a
//!   `409 Conflict`; an empty one is an unconditional update.
//! - For types with a `status` subresource, writes to the main resource keep the stored
//!   `status` and writes to `/status` change only `status`. A create through the API resets
//!   `status` (pods start `Pending`); the seeding API ([`Store::create`]) keeps it.
//! - Deletion is immediate: no graceful deletion, finalizers or owner-reference garbage
//!   collection. The DELETED event carries the object with the deletion's resourceVersion.
//! - A bounded history of changes is kept for watches. A watch from a resourceVersion older
//!   than the history ("compacted") is answered with `410 Expired`. [`Store::compact_history`]
//!   compacts on demand and [`Store::disconnect_watches`] ends open watches, as an API server
//!   restart or watch timeout would, so a test can drive a client through relisting.
//! - Namespaces are not required to exist before objects are created in them.
//! - `metadata.generation` is the server's for custom resources and CRDs (as
//!   `customResourceStrategy` keeps it): 1 on create, +1 on an update that changes anything
//!   but `metadata` (and `status`, when the status subresource is on), whatever the client
//!   sends. The served built-in types keep whatever the client writes (the API server's
//!   strategies for pods, services, config maps... do not bump it either; Kubernetes 1.33's
//!   pod generation is an alpha feature, off by default).
//! - `managedFields` are not maintained; `uid`, `creationTimestamp`, `resourceVersion`,
//!   `name` and `namespace` are server-owned and survive any update.
//! - CustomResourceDefinitions are checked, get their status and start serving their
//!   resources on write; deleting one deletes its objects first (see
//!   [`crate::custom_resources`]). Custom objects are pruned, defaulted and validated
//!   against their version's schema on every write ([`crate::schema`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::clock::Clock;
use crate::custom_resources::{self, CustomTypes};
use crate::ids;
use crate::resources::{FixtureResource, ResourceType, StorageKey, TypeRef};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, Reason};

/// Bounds on what the store keeps.
#[derive(Clone, Debug)]
pub struct StoreLimits {
    /// Most objects stored at once, all types together; a create past it is refused with 429.
    pub max_objects: usize,
    /// Most changes retained for watch resumption; older ones are compacted away.
    pub history: usize,
    /// Most watches open at once; another is refused with 429.
    pub max_watches: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_objects: 10_000,
            history: 1_000,
            max_watches: 256,
        }
    }
}

/// What a change did to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One recorded write.
#[derive(Debug)]
pub(crate) struct Change {
    pub rv: u64,
    pub resource: TypeRef,
    pub kind: ChangeKind,
    /// The object after the write (for a deletion: its last state, at the deletion's rv).
    pub object: Value,
    /// The object before the write, for selector transitions.
    pub previous: Option<Value>,
}

/// What open watches are told.
#[derive(Clone, Debug)]
pub(crate) enum Notice {
    Change(Arc<Change>),
    /// End every open watch now (as a restart of the API server would).
    Disconnect,
    /// A CRD was deleted: end the watches on its objects.
    Removed(StorageKey),
}

/// Which part of an object an update may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// The main resource: `status` is kept from the stored object.
    Main,
    /// The `status` subresource: only `status` changes.
    Status,
    /// Everything (the seeding API).
    Whole,
}

/// Where a watch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WatchFrom {
    /// `resourceVersion` unset or "0": synthetic ADDED events for the current objects, then
    /// changes from now on.
    Now,
    /// `resourceVersion=N`: every change after N.
    After(u64),
}

/// A new watch: the events it must replay, then a live feed.
pub(crate) struct Subscription {
    /// Current objects to send as ADDED first ([`WatchFrom::Now`]).
    pub initial: Vec<Value>,
    /// Retained changes after the requested version ([`WatchFrom::After`]).
    pub backlog: Vec<Arc<Change>>,
    /// Live changes after `start_rv`.
    pub receiver: broadcast::Receiver<Notice>,
    /// The global resourceVersion the replay brings the client up to.
    pub start_rv: u64,
    /// The watch's slot; released when dropped.
    pub slot: WatchSlot,
}

/// Holds one of the `max_watches` slots until dropped.
pub(crate) struct WatchSlot(Arc<AtomicUsize>);

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Which objects a list or watch selects.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filter {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn matches(&self, object: &Value) -> bool {
        if let Some(ns) = &self.namespace
            && object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                != Some(ns)
        {
            return false;
        }
        self.labels.matches_object(object) && self.fields.matches_object(object)
    }
}

/// Optimistic-concurrency preconditions of a DELETE (`DeleteOptions.preconditions`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

type Key = (StorageKey, String, String);

struct Inner {
    rv: u64,
    /// Watches from a resourceVersion below this are expired.
    floor: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Change>>,
    /// The types the stored CRDs define.
    custom: CustomTypes,
}

impl Inner {
    /// The stored objects of one type, in key order (namespace, then name).
    fn objects_of<'a>(
        &'a self,
        storage: &StorageKey,
    ) -> impl Iterator<Item = (&'a Key, &'a Value)> {
        let storage = storage.clone();
        self.objects
            .range((storage.clone(), String::new(), String::new())..)
            .take_while(move |((s, _, _), _)| *s == storage)
    }

    /// `404` for a write to a custom type whose CRD is gone (a request that raced the CRD's
    /// deletion must not leave orphans).
    fn ensure_served(&self, rt: &ResourceType) -> Result<(), ApiError> {
        if rt.is_custom() && !self.custom.serves(rt) {
            return Err(ApiError::new(
                Reason::NotFound,
                format!(
                    "the server could not find the requested resource ({}.{})",
                    rt.plural, rt.group
                ),
            ));
        }
        Ok(())
    }
}

/// The fixture's objects, their history and the feed of changes to watches.
///
/// The typed methods are the seeding API: they bypass authentication and RBAC, like an admin
/// writing through the API server, and may set `status` on create.
pub struct Store {
    inner: Mutex<Inner>,
    notices: broadcast::Sender<Notice>,
    clock: Arc<Clock>,
    limits: StoreLimits,
    open_watches: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("resource_version", &self.resource_version())
            .finish_non_exhaustive()
    }
}

impl Store {
    pub(crate) fn new(clock: Arc<Clock>, limits: StoreLimits) -> Self {
        // Room for bursts; a watch that falls further behind is expired (410), as a slow
        // watcher of the real API server's watch cache is.
        let (notices, _) = broadcast::channel(4096);
        Self {
            inner: Mutex::new(Inner {
                rv: 1,
                floor: 1,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                custom: CustomTypes::default(),
            }),
            notices,
            clock,
            limits,
            open_watches: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every write is one insert);
        // keep serving rather than poisoning every later test step.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Discards the whole watch history and advances the resourceVersion, so that every
    /// resourceVersion handed out so far is too old to watch from (`410 Expired`), as after an
    /// etcd compaction in a cluster that kept changing.
    pub fn compact_history(&self) {
        let mut inner = self.lock();
        inner.rv += 1;
        inner.floor = inner.rv;
        inner.history.clear();
        tracing::debug!(floor = inner.floor, "kube-fixture: history compacted");
    }

    /// Ends every open watch stream (cleanly, like a timeout or an API server restart); clients
    /// then re-watch from their last resourceVersion.
    pub fn disconnect_watches(&self) {
        let _ = self.notices.send(Notice::Disconnect);
    }

    /// Number of watch streams currently open.
    pub fn open_watches(&self) -> usize {
        self.open_watches.load(Ordering::SeqCst)
    }

    /// The served type at `/apis/GROUP/VERSION/PLURAL`: built-in, or defined by a stored CRD.
    pub fn resolve(&self, group: &str, version: &str, plural: &str) -> Option<TypeRef> {
        match ResourceType::find(group, version, plural) {
            Some(rt) => Some(rt.clone()),
            None => self.lock().custom.find(group, version, plural),
        }
    }

    /// The served type of bodies with this `apiVersion` and `kind`.
    pub fn resolve_kind(&self, api_version: &str, kind: &str) -> Option<TypeRef> {
        match ResourceType::find_kind(api_version, kind) {
            Some(rt) => Some(rt.clone()),
            None => self.lock().custom.find_kind(api_version, kind),
        }
    }

    // ----- typed seeding API -----

    /// Creates an object as given (status included). Namespaced objects without a namespace go
    /// to `default`.
    pub fn create<K: FixtureResource>(&self, object: &K) -> Result<K, ApiError> {
        let rt = ResourceType::lookup::<K>()?;
        let body = to_json(object)?;
        let ns = seed_namespace(rt, &body);
        let created = self.create_value(rt, ns.as_deref(), body, false)?;
        from_json(created)
    }

    /// Creates the object, or replaces the stored one unconditionally (like `kubectl apply`
    /// without three-way merging).
    pub fn apply<K: FixtureResource>(&self, object: &K) -> Result<K, ApiError> {
        let rt = ResourceType::lookup::<K>()?;
        let (ns, name) = self.apply_inner(rt, to_json(object)?)?;
        from_json(self.get_value(rt, ns.as_deref(), &name)?)
    }

    /// [`Store::apply`] for a JSON object of type `rt`; returns `Kind ns/name`.
    pub(crate) fn apply_value(&self, rt: &TypeRef, body: Value) -> Result<String, ApiError> {
        let (ns, name) = self.apply_inner(rt, body)?;
        Ok(match ns {
            Some(ns) => format!("{} {ns}/{name}", rt.kind),
            None => format!("{} {name}", rt.kind),
        })
    }

    fn apply_inner(
        &self,
        rt: &TypeRef,
        mut body: Value,
    ) -> Result<(Option<String>, String), ApiError> {
        let ns = seed_namespace(rt, &body);
        if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
            if let Some(ns) = &ns {
                meta.insert("namespace".into(), Value::String(ns.clone()));
            }
        }
        let name = object_name(&body).unwrap_or_default();
        match self.get_value(rt, ns.as_deref(), &name) {
            Ok(_) => {
                self.replace_value(rt, ns.as_deref(), &name, body, Target::Whole)?;
            }
            Err(e) if e.reason == Reason::NotFound => {
                self.create_value(rt, ns.as_deref(), body, false)?;
            }
            Err(e) => return Err(e),
        }
        Ok((ns, name))
    }

    /// Reads one object. Cluster-scoped types ignore `namespace` (pass "").
    pub fn get<K: FixtureResource>(&self, namespace: &str, name: &str) -> Result<K, ApiError> {
        let rt = ResourceType::lookup::<K>()?;
        from_json(self.get_value(rt, Some(namespace), name)?)
    }

    /// Lists objects of a type, in one namespace or (`None`) all of them.
    pub fn list<K: FixtureResource>(&self, namespace: Option<&str>) -> Result<Vec<K>, ApiError> {
        let rt = ResourceType::lookup::<K>()?;
        let filter = Filter {
            namespace: namespace.filter(|_| rt.namespaced).map(str::to_string),
            ..Filter::default()
        };
        self.list_values(rt, &filter)
            .0
            .into_iter()
            .map(from_json)
            .collect()
    }

    /// Replaces an object, status included. A non-empty `metadata.resourceVersion` must be
    /// the current one (else `409 Conflict`).
    pub fn replace<K: FixtureResource>(&self, object: &K) -> Result<K, ApiError> {
        let rt = ResourceType::lookup::<K>()?;
        let body = to_json(object)?;
        let ns = seed_namespace(rt, &body);
        let name = object_name(&body).unwrap_or_default();
        from_json(self.replace_value(rt, ns.as_deref(), &name, body, Target::Whole)?)
    }

    /// Reads, changes and writes an object atomically (no conflict possible).
    pub fn modify<K: FixtureResource>(
        &self,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut K),
    ) -> Result<K, ApiError> {
        let rt = ResourceType::lookup::<K>()?;
        let updated = self.update_with(rt, Some(namespace), name, Target::Whole, |current| {
            let mut typed: K = from_json(current.clone())?;
            change(&mut typed);
            to_json(&typed)
        })?;
        from_json(updated)
    }

    /// Deletes an object, returning its last state.
    pub fn delete<K: FixtureResource>(&self, namespace: &str, name: &str) -> Result<K, ApiError> {
        let rt = ResourceType::lookup::<K>()?;
        from_json(self.delete_value(rt, Some(namespace), name, &Preconditions::default())?)
    }

    // ----- JSON-level operations used by the HTTP layer -----

    /// Creates an object. `from_api` resets `status` for types with a status subresource.
    pub(crate) fn create_value(
        &self,
        rt: &TypeRef,
        namespace: Option<&str>,
        body: Value,
        from_api: bool,
    ) -> Result<Value, ApiError> {
        let mut object = rt.normalize(body)?;
        let ns = scope_namespace(rt, namespace, &object)?;
        let meta = metadata_mut(&mut object)?;
        if meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
        {
            // The API server's storage refuses this with a 500 as well.
            return Err(ApiError::internal(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let name = match meta.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => format!("{prefix}{}", ids::name_suffix()),
                _ => {
                    return Err(ApiError::invalid(format!(
                        "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                        rt.kind
                    )));
                }
            },
        };
        validate_name(rt, &name)?;
        meta.insert("name".into(), Value::String(name.clone()));
        match &ns {
            Some(ns) => meta.insert("namespace".into(), Value::String(ns.clone())),
            None => meta.remove("namespace"),
        };
        meta.insert("uid".into(), Value::String(ids::uid()));
        meta.insert(
            "creationTimestamp".into(),
            serde_json::to_value(Time(
                self.clock
                    .now()
                    .round(k8s_openapi::jiff::Unit::Second)
                    .unwrap_or(self.clock.now()),
            ))
            .map_err(|e| ApiError::internal(e.to_string()))?,
        );
        for server_owned in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
        ] {
            meta.remove(server_owned);
        }
        if rt.manages_generation {
            meta.insert("generation".into(), json!(1));
        }
        if from_api && rt.has_status {
            let obj = object.as_object_mut().expect("normalized objects are maps");
            obj.remove("status");
            if rt.kind == "Pod" {
                obj.insert("status".into(), json!({"phase": "Pending"}));
            }
        }

        let crd_types = if rt.is_crd() {
            Some(custom_resources::accept(&mut object, None, self.now())?)
        } else {
            None
        };
        rt.validate(&object)?;

        let mut inner = self.lock();
        inner.ensure_served(rt)?;
        let key = (
            rt.storage.clone(),
            ns.clone().unwrap_or_default(),
            name.clone(),
        );
        if inner.objects.contains_key(&key) {
            return Err(ApiError::already_exists(&rt.group, &rt.plural, &name));
        }
        if inner.objects.len() >= self.limits.max_objects {
            return Err(ApiError::new(
                Reason::TooManyRequests,
                format!(
                    "the fixture stores at most {} objects (FixtureOptions::limits)",
                    self.limits.max_objects
                ),
            ));
        }
        inner.rv += 1;
        let rv = inner.rv;
        set_resource_version(&mut object, rv);
        inner.objects.insert(key, object.clone());
        if let Some(types) = crd_types {
            inner.custom.install(&name, types);
        }
        self.record(&mut inner, rt, ChangeKind::Added, object.clone(), None);
        Ok(rt.present(object))
    }

    /// Now, for timestamps the server sets.
    fn now(&self) -> Time {
        let now = self.clock.now();
        Time(now.round(k8s_openapi::jiff::Unit::Second).unwrap_or(now))
    }

    /// Reads one object.
    pub(crate) fn get_value(
        &self,
        rt: &TypeRef,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let key = key_for(rt, namespace, name);
        self.lock()
            .objects
            .get(&key)
            .map(|o| rt.present(o.clone()))
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))
    }

    /// Lists matching objects (in key order: namespace, then name) and the current
    /// resourceVersion.
    pub(crate) fn list_values(&self, rt: &TypeRef, filter: &Filter) -> (Vec<Value>, u64) {
        let inner = self.lock();
        let items = inner
            .objects_of(&rt.storage)
            .map(|(_, v)| v)
            .filter(|v| filter.matches(v))
            .cloned()
            .collect();
        (items, inner.rv)
    }

    /// Replaces an object (PUT).
    pub(crate) fn replace_value(
        &self,
        rt: &TypeRef,
        namespace: Option<&str>,
        name: &str,
        body: Value,
        target: Target,
    ) -> Result<Value, ApiError> {
        let body = rt.normalize(body)?;
        let body_name = object_name(&body).unwrap_or_default();
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        scope_namespace(rt, namespace, &body)?;
        self.update_with(rt, namespace, name, target, move |_| Ok(body))
    }

    /// Read-modify-write under the store lock. `change` gets the stored object and returns the
    /// desired one; a non-empty `metadata.resourceVersion` in its result must equal the stored
    /// one (optimistic concurrency), an empty one means unconditional.
    pub(crate) fn update_with(
        &self,
        rt: &TypeRef,
        namespace: Option<&str>,
        name: &str,
        target: Target,
        change: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let key = key_for(rt, namespace, name);
        let mut inner = self.lock();
        let current = inner
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        inner.ensure_served(rt)?;
        let desired = rt.normalize(change(&rt.present(current.clone()))?)?;
        let current_rv = resource_version_of(&current);
        match desired
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
        {
            None | Some("") => {}
            Some(rv) if rv == current_rv => {}
            Some(_) => return Err(ApiError::conflict(&rt.group, &rt.plural, name)),
        }
        let mut next = merge_for_target(rt, &current, desired, target)?;
        let bump = i64::from(spec_changed(&current, &next, rt.has_status));
        // Fields the server owns survive any update.
        {
            let (cur_meta, next_meta) = (metadata(&current), metadata_mut(&mut next)?);
            for owned in ["name", "namespace", "uid", "creationTimestamp"] {
                match cur_meta.get(owned) {
                    Some(v) => next_meta.insert(owned.to_string(), v.clone()),
                    None => next_meta.remove(owned),
                };
            }
            next_meta.insert("resourceVersion".into(), Value::String(current_rv.clone()));
            if rt.manages_generation {
                let generation = cur_meta
                    .get("generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                next_meta.insert("generation".into(), json!(generation + bump));
            }
        }
        let crd_types = if rt.is_crd() {
            Some(custom_resources::accept(
                &mut next,
                Some(&current),
                self.now(),
            )?)
        } else {
            None
        };
        rt.validate(&next)?;
        if let Some(types) = crd_types {
            // Rebuilt even for a no-op write: the types are the same.
            inner.custom.install(name, types);
        }
        if next == current {
            // No-op writes do not advance the resourceVersion or notify watches.
            return Ok(rt.present(current));
        }
        inner.rv += 1;
        let rv = inner.rv;
        set_resource_version(&mut next, rv);
        inner.objects.insert(key, next.clone());
        self.record(
            &mut inner,
            rt,
            ChangeKind::Modified,
            next.clone(),
            Some(current),
        );
        Ok(rt.present(next))
    }

    /// Deletes an object (immediately), checking DELETE preconditions.
    pub(crate) fn delete_value(
        &self,
        rt: &TypeRef,
        namespace: Option<&str>,
        name: &str,
        preconditions: &Preconditions,
    ) -> Result<Value, ApiError> {
        let key = key_for(rt, namespace, name);
        let mut inner = self.lock();
        let current = inner
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        let meta = metadata(&current);
        let uid = meta.get("uid").and_then(Value::as_str).unwrap_or_default();
        if let Some(want) = &preconditions.uid
            && want != uid
        {
            return Err(ApiError::new(
                Reason::Conflict,
                format!(
                    "Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"
                ),
            )
            .with_details(&rt.group, &rt.plural, name));
        }
        let rv = resource_version_of(&current);
        if let Some(want) = &preconditions.resource_version
            && *want != rv
        {
            return Err(ApiError::new(
                Reason::Conflict,
                format!(
                    "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rv}"
                ),
            )
            .with_details(&rt.group, &rt.plural, name));
        }
        if rt.is_crd() {
            self.delete_custom_objects(&mut inner, name);
        }
        inner.objects.remove(&key);
        inner.rv += 1;
        let mut last = current.clone();
        set_resource_version(&mut last, inner.rv);
        self.record(
            &mut inner,
            rt,
            ChangeKind::Deleted,
            last.clone(),
            Some(current),
        );
        Ok(rt.present(last))
    }

    /// Stops serving a deleted CRD's types and deletes their objects, each with its DELETED
    /// event, then ends the watches on them (the API server's CRD finalizer does the same
    /// before the CRD goes).
    fn delete_custom_objects(&self, inner: &mut Inner, crd_name: &str) {
        let Some(types) = inner.custom.remove(crd_name) else {
            return;
        };
        let Some(rt) = types.first() else {
            return;
        };
        let doomed: Vec<(Key, Value)> = inner
            .objects_of(&rt.storage)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, object) in doomed {
            inner.objects.remove(&key);
            inner.rv += 1;
            let mut last = object.clone();
            set_resource_version(&mut last, inner.rv);
            self.record(inner, rt, ChangeKind::Deleted, last, Some(object));
        }
        let _ = self.notices.send(Notice::Removed(rt.storage.clone()));
    }

    /// Opens a watch on one type. Fails with `410 Expired` for a version older than the
    /// history, and `429` past `max_watches`.
    pub(crate) fn subscribe(
        &self,
        rt: &TypeRef,
        from: WatchFrom,
    ) -> Result<Subscription, ApiError> {
        let slot = self.open_watches.fetch_add(1, Ordering::SeqCst);
        let slot_guard = WatchSlot(self.open_watches.clone());
        if slot >= self.limits.max_watches {
            return Err(ApiError::new(
                Reason::TooManyRequests,
                format!(
                    "the fixture serves at most {} watches at once",
                    self.limits.max_watches
                ),
            ));
        }
        let inner = self.lock();
        let receiver = self.notices.subscribe();
        let (initial, backlog) = match from {
            WatchFrom::Now => {
                let objects = inner
                    .objects_of(&rt.storage)
                    .map(|(_, v)| rt.present(v.clone()))
                    .collect();
                (objects, Vec::new())
            }
            WatchFrom::After(n) if n < inner.floor => {
                return Err(ApiError::expired(n, inner.floor));
            }
            // A version from the future is treated as "now" (the API server would wait for it
            // and then time out); see the crate docs.
            WatchFrom::After(n) => (
                Vec::new(),
                inner
                    .history
                    .iter()
                    .filter(|c| c.rv > n && c.resource.storage == rt.storage)
                    .cloned()
                    .collect(),
            ),
        };
        let start_rv = match from {
            WatchFrom::After(n) => n.max(inner.rv),
            WatchFrom::Now => inner.rv,
        };
        Ok(Subscription {
            initial,
            backlog,
            receiver,
            start_rv,
            slot: slot_guard,
        })
    }

    fn record(
        &self,
        inner: &mut Inner,
        rt: &TypeRef,
        kind: ChangeKind,
        object: Value,
        previous: Option<Value>,
    ) {
        let change = Arc::new(Change {
            rv: inner.rv,
            resource: rt.clone(),
            kind,
            object,
            previous,
        });
        inner.history.push_back(change.clone());
        while inner.history.len() > self.limits.history {
            if let Some(dropped) = inner.history.pop_front() {
                inner.floor = dropped.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.notices.send(Notice::Change(change));
    }
}

fn to_json<K: FixtureResource>(object: &K) -> Result<Value, ApiError> {
    serde_json::to_value(object).map_err(|e| ApiError::internal(format!("encode: {e}")))
}

fn from_json<K: FixtureResource>(value: Value) -> Result<K, ApiError> {
    serde_json::from_value(value).map_err(|e| ApiError::internal(format!("decode: {e}")))
}

fn seed_namespace(rt: &ResourceType, body: &Value) -> Option<String> {
    rt.namespaced.then(|| {
        body.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_string()
    })
}

fn object_name(body: &Value) -> Option<String> {
    body.pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn key_for(rt: &TypeRef, namespace: Option<&str>, name: &str) -> Key {
    let ns = if rt.namespaced {
        namespace.unwrap_or_default().to_string()
    } else {
        String::new()
    };
    (rt.storage.clone(), ns, name.to_string())
}

/// The namespace an object is stored under: the request's, which a namespace in the body must
/// not contradict.
fn scope_namespace(
    rt: &ResourceType,
    namespace: Option<&str>,
    object: &Value,
) -> Result<Option<String>, ApiError> {
    let in_body = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    if !rt.namespaced {
        return Ok(None);
    }
    let Some(ns) = namespace.filter(|s| !s.is_empty()) else {
        return Err(ApiError::bad_request(format!(
            "{} is namespaced: the request must name a namespace",
            rt.plural
        )));
    };
    if let Some(body_ns) = in_body
        && body_ns != ns
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    Ok(Some(ns.to_string()))
}

/// Names must be usable as a path segment (the rule every type shares; RBAC names such as
/// `system:auth-delegator` are valid, so no stricter DNS rule is applied to built-in types).
/// Custom resources' names must be DNS subdomains, as the API server requires.
fn validate_name(rt: &ResourceType, name: &str) -> Result<(), ApiError> {
    if rt.is_custom() && !is_dns_subdomain(name) {
        return Err(ApiError::invalid_object(
            &rt.group,
            &rt.kind,
            name,
            vec![crate::status::FieldError {
                field: "metadata.name".into(),
                kind: crate::status::FieldErrorKind::Invalid,
                detail: format!(
                    "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
                ),
            }],
        ));
    }
    let bad = name.len() > 253
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('%')
        || name.chars().any(char::is_control);
    if bad {
        return Err(ApiError::invalid(format!(
            "{} \"{name}\" is invalid: metadata.name: Invalid value: may not contain '/' or '%', be '.' or '..', or exceed 253 characters",
            rt.kind
        )));
    }
    Ok(())
}

/// `metadata.name` of a custom resource: at most 253 characters, dot-separated DNS labels.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Whether an update changes anything but `metadata` (and `status`, which the status
/// subresource owns): what bumps `metadata.generation`.
fn spec_changed(current: &Value, next: &Value, has_status: bool) -> bool {
    let strip = |object: &Value| {
        let mut map = object.as_object().cloned().unwrap_or_default();
        map.remove("metadata");
        if has_status {
            map.remove("status");
        }
        map
    };
    strip(current) != strip(next)
}

fn merge_for_target(
    rt: &ResourceType,
    current: &Value,
    mut desired: Value,
    target: Target,
) -> Result<Value, ApiError> {
    if !rt.has_status || target == Target::Whole {
        return Ok(desired);
    }
    match target {
        Target::Main => {
            let obj = desired
                .as_object_mut()
                .expect("normalized objects are maps");
            match current.get("status") {
                Some(s) => obj.insert("status".into(), s.clone()),
                None => obj.remove("status"),
            };
            Ok(desired)
        }
        Target::Status => {
            let mut next = current.clone();
            let obj = next.as_object_mut().expect("stored objects are maps");
            match desired.get("status") {
                Some(s) => obj.insert("status".into(), s.clone()),
                None => obj.remove("status"),
            };
            // Keep the caller's precondition visible to the conflict check above; the
            // version itself is rewritten by the caller.
            Ok(next)
        }
        Target::Whole => Ok(desired),
    }
}

fn metadata(object: &Value) -> serde_json::Map<String, Value> {
    object
        .get("metadata")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

fn metadata_mut(object: &mut Value) -> Result<&mut serde_json::Map<String, Value>, ApiError> {
    let obj = object
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    let meta = obj
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    if !meta.is_object() {
        *meta = Value::Object(Default::default());
    }
    Ok(meta.as_object_mut().expect("just made a map"))
}

fn resource_version_of(object: &Value) -> String {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn set_resource_version(object: &mut Value, rv: u64) {
    if let Ok(meta) = metadata_mut(object) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn store() -> Store {
        Store::new(Arc::new(Clock::default()), StoreLimits::default())
    }

    fn cm(name: &str, value: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            data: Some([("k".to_string(), value.to_string())].into()),
            ..Default::default()
        }
    }

    #[test]
    fn writes_advance_one_global_resource_version() {
        let s = store();
        let a = s.create(&cm("a", "1")).unwrap();
        let b = s.create(&cm("b", "1")).unwrap();
        let ra: u64 = a.metadata.resource_version.unwrap().parse().unwrap();
        let rb: u64 = b.metadata.resource_version.unwrap().parse().unwrap();
        assert_eq!(rb, ra + 1);
        assert_eq!(s.resource_version(), rb);
        assert!(a.metadata.uid.is_some());
        assert!(a.metadata.creation_timestamp.is_some());
    }

    #[test]
    fn stale_updates_conflict_and_no_op_updates_do_not_bump() {
        let s = store();
        let a = s.create(&cm("a", "1")).unwrap();
        let mut stale = a.clone();
        let mut fresh = a.clone();
        fresh.data = Some([("k".to_string(), "2".to_string())].into());
        s.replace(&fresh).unwrap();
        stale.data = Some([("k".to_string(), "3".to_string())].into());
        let err = s.replace(&stale).unwrap_err();
        assert_eq!(err.reason, Reason::Conflict);
        let before = s.resource_version();
        let current: ConfigMap = s.get("ns", "a").unwrap();
        s.replace(&current).unwrap();
        assert_eq!(s.resource_version(), before);
    }

    #[test]
    fn duplicates_and_missing_objects_are_refused() {
        let s = store();
        s.create(&cm("a", "1")).unwrap();
        assert_eq!(
            s.create(&cm("a", "1")).unwrap_err().reason,
            Reason::AlreadyExists
        );
        assert_eq!(
            s.get::<ConfigMap>("ns", "b").unwrap_err().reason,
            Reason::NotFound
        );
        assert_eq!(
            s.delete::<ConfigMap>("ns", "b").unwrap_err().reason,
            Reason::NotFound
        );
    }

    #[test]
    fn main_resource_updates_keep_status() {
        let s = store();
        let rt = ResourceType::lookup::<Pod>().unwrap();
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                pod_ip: Some("10.0.0.1".into()),
                ..Default::default()
            }),
        };
        s.create(&pod).unwrap();
        let updated = s
            .update_with(rt, Some("ns"), "p", Target::Main, |cur| {
                let mut next = cur.clone();
                next["status"] = json!({"podIP": "10.9.9.9"});
                next["metadata"]["labels"] = json!({"a": "b"});
                Ok(next)
            })
            .unwrap();
        assert_eq!(updated["status"]["podIP"], "10.0.0.1");
        assert_eq!(updated["metadata"]["labels"]["a"], "b");
    }

    #[test]
    fn history_limit_and_compaction_expire_old_versions() {
        let s = Store::new(
            Arc::new(Clock::default()),
            StoreLimits {
                history: 2,
                ..StoreLimits::default()
            },
        );
        let rt = ResourceType::lookup::<ConfigMap>().unwrap();
        let start = s.resource_version();
        for n in ["a", "b", "c"] {
            s.create(&cm(n, "1")).unwrap();
        }
        let err = s.subscribe(rt, WatchFrom::After(start)).err().unwrap();
        assert_eq!(err.reason, Reason::Expired);
        let sub = s.subscribe(rt, WatchFrom::After(start + 1)).unwrap();
        assert_eq!(sub.backlog.len(), 2);
        drop(sub);
        let now = s.resource_version();
        s.compact_history();
        assert_eq!(
            s.subscribe(rt, WatchFrom::After(now)).err().unwrap().reason,
            Reason::Expired
        );
        assert!(s.subscribe(rt, WatchFrom::After(now + 1)).is_ok());
        assert_eq!(s.open_watches(), 0);
    }
}
