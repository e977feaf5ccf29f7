//! A small in-memory index of one kind of namespaced Kubernetes object, kept current by a
//! `kube` watcher, with one secondary key per object kind (a Service's ClusterIPs, an
//! EndpointSlice's Service). Used by discovery for Services and EndpointSlices; pods have
//! their own, richer index ([`super::pods`]).

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, RwLock};

use futures::TryStreamExt;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

/// `(namespace, name)` of an object.
pub type ObjectKey = (String, String);

/// What an index keeps of one object.
pub trait Indexed: Clone + Send + Sync + 'static {
    /// The secondary key type (e.g. an IP address).
    type Secondary: Hash + Eq + Clone + Send + Sync + 'static;
    /// The secondary keys this object is found under.
    fn secondary_keys(&self) -> Vec<Self::Secondary>;
}

struct Inner<T: Indexed> {
    objects: HashMap<ObjectKey, T>,
    secondary: HashMap<T::Secondary, BTreeSet<ObjectKey>>,
    synced: bool,
}

impl<T: Indexed> Default for Inner<T> {
    fn default() -> Self {
        Self {
            objects: HashMap::new(),
            secondary: HashMap::new(),
            synced: false,
        }
    }
}

impl<T: Indexed> Inner<T> {
    fn insert(&mut self, key: ObjectKey, object: T) {
        self.remove(&key);
        for s in object.secondary_keys() {
            self.secondary.entry(s).or_default().insert(key.clone());
        }
        self.objects.insert(key, object);
    }

    fn remove(&mut self, key: &ObjectKey) {
        if let Some(old) = self.objects.remove(key) {
            for s in old.secondary_keys() {
                if let Some(keys) = self.secondary.get_mut(&s) {
                    keys.remove(key);
                    if keys.is_empty() {
                        self.secondary.remove(&s);
                    }
                }
            }
        }
    }
}

/// The index. Cheap to clone; every clone sees the same state.
pub struct ObjectIndex<T: Indexed> {
    inner: Arc<RwLock<Inner<T>>>,
    changes: watch::Sender<u64>,
}

impl<T: Indexed> Clone for ObjectIndex<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            changes: self.changes.clone(),
        }
    }
}

impl<T: Indexed> Default for ObjectIndex<T> {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            changes: watch::channel(0).0,
        }
    }
}

impl<T: Indexed> ObjectIndex<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// A receiver that changes whenever any object does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Inserts or replaces an object (tests and the watcher).
    pub fn apply(&self, key: ObjectKey, object: T) {
        self.inner
            .write()
            .expect("object index")
            .insert(key, object);
        self.changed();
    }

    pub fn delete(&self, key: &ObjectKey) {
        self.inner.write().expect("object index").remove(key);
        self.changed();
    }

    /// Replaces everything after a full listing, and marks the index synced.
    pub fn replace_all(&self, objects: Vec<(ObjectKey, T)>) {
        let mut fresh = Inner::default();
        for (key, object) in objects {
            fresh.insert(key, object);
        }
        fresh.synced = true;
        *self.inner.write().expect("object index") = fresh;
        self.changed();
    }

    pub fn get(&self, key: &ObjectKey) -> Option<T> {
        self.inner
            .read()
            .expect("object index")
            .objects
            .get(key)
            .cloned()
    }

    /// The objects found under a secondary key.
    pub fn by_secondary(&self, key: &T::Secondary) -> Vec<(ObjectKey, T)> {
        let inner = self.inner.read().expect("object index");
        inner
            .secondary
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|k| inner.objects.get(k).map(|o| (k.clone(), o.clone())))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.inner.read().expect("object index").objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// False until the first full listing has arrived.
    pub fn is_synced(&self) -> bool {
        self.inner.read().expect("object index").synced
    }

    /// Keeps the index in step with the cluster's `K` objects until the task is dropped.
    /// `convert` keeps what we need of an object (`None`: not indexed). A re-list after an
    /// error replaces the index atomically, so no stale object survives a missed delete.
    pub fn spawn_watcher<K>(
        &self,
        client: Client,
        what: &'static str,
        convert: fn(&K) -> Option<T>,
    ) -> tokio::task::JoinHandle<()>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let this = self.clone();
        tokio::spawn(async move {
            let api: Api<K> = Api::all(client);
            let mut stream =
                std::pin::pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
            let mut buffer = Vec::new();
            loop {
                match stream.try_next().await {
                    Ok(Some(Event::Init)) => buffer.clear(),
                    Ok(Some(Event::InitApply(object))) => {
                        if let (Some(key), Some(info)) = (key_of(&object), convert(&object)) {
                            buffer.push((key, info));
                        }
                    }
                    Ok(Some(Event::InitDone)) => this.replace_all(std::mem::take(&mut buffer)),
                    Ok(Some(Event::Apply(object))) => {
                        if let Some(key) = key_of(&object) {
                            match convert(&object) {
                                Some(info) => this.apply(key, info),
                                None => this.delete(&key),
                            }
                        }
                    }
                    Ok(Some(Event::Delete(object))) => {
                        if let Some(key) = key_of(&object) {
                            this.delete(&key);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => tracing::warn!(error = %e, what, "watch failed; retrying"),
                }
            }
        })
    }
}

fn key_of<K: Resource>(object: &K) -> Option<ObjectKey> {
    let meta = object.meta();
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct Thing(Vec<u8>);

    impl Indexed for Thing {
        type Secondary = u8;
        fn secondary_keys(&self) -> Vec<u8> {
            self.0.clone()
        }
    }

    fn key(name: &str) -> ObjectKey {
        ("ns".into(), name.into())
    }

    #[test]
    fn secondary_keys_follow_updates_and_deletes() {
        let index = ObjectIndex::new();
        let rx = index.subscribe();
        index.apply(key("a"), Thing(vec![1, 2]));
        index.apply(key("b"), Thing(vec![2]));
        assert!(rx.has_changed().unwrap());
        assert_eq!(index.by_secondary(&2).len(), 2);
        index.apply(key("a"), Thing(vec![3]));
        assert!(index.by_secondary(&1).is_empty());
        assert_eq!(index.by_secondary(&2), vec![(key("b"), Thing(vec![2]))]);
        index.delete(&key("b"));
        assert!(index.by_secondary(&2).is_empty());
        assert!(!index.is_synced());
        index.replace_all(vec![(key("c"), Thing(vec![9]))]);
        assert!(index.is_synced());
        assert_eq!(index.len(), 1);
        assert!(index.by_secondary(&3).is_empty(), "stale object dropped");
    }
}
