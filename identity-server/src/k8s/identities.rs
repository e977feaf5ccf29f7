//! The informers behind registration: every `LanyardIdentity` (cluster scoped,
//! `lanyard.dev/v1alpha1`) and every Namespace's labels, watched by each replica on its own.
//! Each change that can alter a pod's identity rebuilds the [`Registry`] and publishes a new
//! [`RegistrationSnapshot`] through [`Registrations`].
//!
//! Sync: pod decisions wait (refused as transient) until both lists have completed once.
//! A cluster without the CRD (404) or a server whose RBAC forbids the list (403) is not an
//! outage: a WARN says what to do, the kind counts as listed with zero objects (so pods get the
//! default template exactly as before registration existed), and the watcher keeps retrying
//! with backoff, so installing the CRD or granting the RBAC later takes effect by itself.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use lanyard_registration::{LanyardIdentity, LanyardIdentityStatus, Registry, RegistryConfig};
use serde::de::DeserializeOwned;

use crate::registry_view::{NamespaceLabels, RegistrationSnapshot, Registrations};

/// Why a kind cannot be listed at all. `Display` is a log label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// 404: the resource type does not exist (the CRD is not installed).
    NotInstalled,
    /// 403: RBAC does not let the server list or watch it.
    Forbidden,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotInstalled => "not_installed",
            Self::Forbidden => "forbidden",
        })
    }
}

impl Unavailable {
    /// A watcher error that means the kind cannot be listed (as opposed to a passing failure).
    pub fn of(error: &watcher::Error) -> Option<Self> {
        let code = match error {
            watcher::Error::InitialListFailed(kube::Error::Api(status))
            | watcher::Error::WatchStartFailed(kube::Error::Api(status))
            | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code,
            watcher::Error::WatchError(status) => status.code,
            _ => return None,
        };
        match code {
            404 => Some(Self::NotInstalled),
            403 => Some(Self::Forbidden),
            _ => None,
        }
    }

    /// What the operator should do, for the WARN.
    fn advice(self, what: &str) -> String {
        match (self, what) {
            (Self::NotInstalled, super::federations::WHAT) => format!(
                "the {what} resource type is not installed; no trust domain is federated from \
                 resources. Install the CRD (`lanyard install` renders it) to federate"
            ),
            (Self::NotInstalled, _) => format!(
                "the {what} resource type is not installed; pods get the default pod identity \
                 only. Install the CRD (`lanyard install` renders it) to register identities"
            ),
            (Self::Forbidden, _) => format!(
                "the server may not list/watch {what}; grant its ServiceAccount get, list and \
                 watch on {what} cluster-wide (`lanyard install` renders it). Until then it is \
                 treated as having none"
            ),
        }
    }
}

#[derive(Default)]
struct State {
    resources: BTreeMap<String, LanyardIdentity>,
    namespaces: Arc<NamespaceLabels>,
    identities_synced: bool,
    namespaces_synced: bool,
    registry: Option<Arc<Registry>>,
}

struct Inner {
    config: RegistryConfig,
    registrations: Registrations,
    state: Mutex<State>,
}

/// Keeps [`Registrations`] current from the two informers. Cheap to clone.
#[derive(Clone)]
pub struct IdentityInformer {
    inner: Arc<Inner>,
}

/// Whether a resource changed in a way the registry sees (status-only updates do not).
fn same_registration(a: &LanyardIdentity, b: &LanyardIdentity) -> bool {
    a.spec == b.spec && a.metadata.generation == b.metadata.generation
}

impl IdentityInformer {
    pub fn new(config: RegistryConfig, registrations: Registrations) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                registrations,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Each resource's `status` as last seen (`None`: none written yet), by name.
    pub fn statuses(&self) -> BTreeMap<String, Option<LanyardIdentityStatus>> {
        let state = self.inner.state.lock().expect("identity informer");
        state
            .resources
            .iter()
            .map(|(name, r)| (name.clone(), r.status.clone()))
            .collect()
    }

    /// Edits the state; `rebuild`: the registry must be rebuilt; publishes when `publish`.
    fn update(&self, edit: impl FnOnce(&mut State) -> (bool, bool)) {
        let mut state = self.inner.state.lock().expect("identity informer");
        let (rebuild, publish) = edit(&mut state);
        if rebuild || state.registry.is_none() {
            let resources: Vec<LanyardIdentity> = state.resources.values().cloned().collect();
            state.registry = Some(Arc::new(Registry::new(
                self.inner.config.clone(),
                &resources,
            )));
        }
        if rebuild || publish {
            self.inner.registrations.publish(RegistrationSnapshot {
                registry: state.registry.clone().expect("built above"),
                namespaces: state.namespaces.clone(),
                synced: state.identities_synced && state.namespaces_synced,
            });
        }
    }

    /// A full listing of the resources (`None`: they cannot be listed; zero).
    pub fn identities_listed(&self, listed: Option<Vec<LanyardIdentity>>) {
        self.update(|state| {
            let fresh: BTreeMap<String, LanyardIdentity> = listed
                .unwrap_or_default()
                .into_iter()
                .map(|r| (r.name().to_owned(), r))
                .collect();
            let changed = fresh.len() != state.resources.len()
                || fresh.iter().any(|(name, r)| {
                    state
                        .resources
                        .get(name)
                        .is_none_or(|old| !same_registration(old, r))
                });
            state.resources = fresh;
            let newly_synced = !state.identities_synced;
            state.identities_synced = true;
            (changed, newly_synced)
        });
    }

    pub fn identity_applied(&self, resource: LanyardIdentity) {
        self.update(|state| {
            let name = resource.name().to_owned();
            let changed = state
                .resources
                .get(&name)
                .is_none_or(|old| !same_registration(old, &resource));
            state.resources.insert(name, resource);
            (changed, false)
        });
    }

    pub fn identity_deleted(&self, name: &str) {
        self.update(|state| (state.resources.remove(name).is_some(), false));
    }

    /// A full listing of the namespaces (`None`: they cannot be listed; zero).
    pub fn namespaces_listed(&self, listed: Option<Vec<(String, BTreeMap<String, String>)>>) {
        self.update(|state| {
            let fresh: NamespaceLabels = listed.unwrap_or_default().into_iter().collect();
            let changed = *state.namespaces != fresh || !state.namespaces_synced;
            state.namespaces = Arc::new(fresh);
            state.namespaces_synced = true;
            (false, changed)
        });
    }

    pub fn namespace_applied(&self, name: String, labels: BTreeMap<String, String>) {
        self.update(|state| {
            if state.namespaces.get(&name) == Some(&labels) {
                return (false, false);
            }
            Arc::make_mut(&mut state.namespaces).insert(name, labels);
            (false, true)
        });
    }

    pub fn namespace_deleted(&self, name: &str) {
        self.update(|state| {
            if !state.namespaces.contains_key(name) {
                return (false, false);
            }
            Arc::make_mut(&mut state.namespaces).remove(name);
            (false, true)
        });
    }

    /// Starts both informers; they run until the tasks are aborted.
    pub fn spawn(&self, client: Client) -> Vec<tokio::task::JoinHandle<()>> {
        let identities = {
            let this = self.clone();
            let api: Api<LanyardIdentity> = Api::all(client.clone());
            tokio::spawn(watch_kind(
                api,
                "lanyardidentities",
                move |step| match step {
                    Step::Listed(list) => this.identities_listed(Some(list)),
                    Step::Unavailable => this.identities_listed(None),
                    Step::Applied(r) => this.identity_applied(r),
                    Step::Deleted(r) => this.identity_deleted(r.name()),
                },
            ))
        };
        let namespaces = {
            let this = self.clone();
            let api: Api<Namespace> = Api::all(client);
            let entry = |ns: &Namespace| {
                ns.metadata.name.clone().map(|name| {
                    let labels = ns.metadata.labels.clone().unwrap_or_default();
                    (name, labels)
                })
            };
            tokio::spawn(watch_kind(api, "namespaces", move |step| match step {
                Step::Listed(list) => {
                    this.namespaces_listed(Some(list.iter().filter_map(entry).collect()))
                }
                Step::Unavailable => this.namespaces_listed(None),
                Step::Applied(ns) => {
                    if let Some((name, labels)) = entry(&ns) {
                        this.namespace_applied(name, labels);
                    }
                }
                Step::Deleted(ns) => {
                    if let Some(name) = ns.metadata.name.as_deref() {
                        this.namespace_deleted(name);
                    }
                }
            }))
        };
        vec![identities, namespaces]
    }
}

/// What a watch of one kind reports.
pub(crate) enum Step<K> {
    Listed(Vec<K>),
    /// The kind cannot be listed (404 or 403): count it as none.
    Unavailable,
    Applied(K),
    Deleted(K),
}

/// Watches every `K` (cluster scoped) until the task is dropped, with the watcher's backoff
/// between failures. A 404 or 403 is reported once as [`Step::Unavailable`] with a WARN, and
/// again only after the kind was listed successfully in between.
pub(crate) async fn watch_kind<K>(api: Api<K>, what: &'static str, mut on: impl FnMut(Step<K>))
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let mut stream =
        std::pin::pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
    let mut buffer = Vec::new();
    let mut unavailable: Option<Unavailable> = None;
    loop {
        match stream.try_next().await {
            Ok(Some(Event::Init)) => buffer.clear(),
            Ok(Some(Event::InitApply(object))) => buffer.push(object),
            Ok(Some(Event::InitDone)) => {
                if unavailable.take().is_some() {
                    tracing::info!(what, "listed; registration follows it again");
                }
                on(Step::Listed(std::mem::take(&mut buffer)));
            }
            Ok(Some(Event::Apply(object))) => on(Step::Applied(object)),
            Ok(Some(Event::Delete(object))) => on(Step::Deleted(object)),
            Ok(None) => break,
            Err(e) => match Unavailable::of(&e) {
                Some(cause) => {
                    if unavailable != Some(cause) {
                        tracing::warn!(what, reason = %cause, "{}", cause.advice(what));
                        unavailable = Some(cause);
                        on(Step::Unavailable);
                    }
                }
                None => tracing::warn!(error = %e, what, "watch failed; retrying"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry_view::test_config;
    use lanyard_registration::LanyardIdentitySpec;

    fn resource(name: &str, template: &str) -> LanyardIdentity {
        LanyardIdentity::new(
            name,
            LanyardIdentitySpec {
                spiffe_id_template: template.into(),
                ..Default::default()
            },
        )
    }

    #[test]
    fn unavailable_is_404_and_403_only() {
        let api = |code| {
            watcher::Error::InitialListFailed(kube::Error::Api(Box::new(
                kube::core::Status::failure("x", "y").with_code(code),
            )))
        };
        assert_eq!(Unavailable::of(&api(404)), Some(Unavailable::NotInstalled));
        assert_eq!(Unavailable::of(&api(403)), Some(Unavailable::Forbidden));
        assert_eq!(Unavailable::of(&api(500)), None);
        assert_eq!(Unavailable::of(&watcher::Error::NoResourceVersion), None);
    }

    #[test]
    fn synced_after_both_lists_and_rebuilt_on_spec_changes_only() {
        let registrations = Registrations::unsynced(test_config(Some("/ns/{namespace}")));
        let mut rx = registrations.subscribe();
        let informer = IdentityInformer::new(test_config(Some("/ns/{namespace}")), registrations);
        informer.identities_listed(None);
        assert!(!rx.borrow_and_update().synced, "namespaces not listed yet");
        informer.namespaces_listed(Some(vec![("default".into(), BTreeMap::new())]));
        assert!(rx.borrow_and_update().synced);

        informer.identity_applied(resource("web", "/web"));
        assert!(rx.has_changed().unwrap());
        let registry = rx.borrow_and_update().registry.clone();
        // A status-only update keeps the registry (no new snapshot for the feeds).
        let mut with_status = resource("web", "/web");
        with_status.status = Some(LanyardIdentityStatus {
            pods_matched: 3,
            ..Default::default()
        });
        informer.identity_applied(with_status);
        assert!(!rx.has_changed().unwrap());
        assert_eq!(informer.statuses()["web"].as_ref().unwrap().pods_matched, 3);
        assert!(Arc::ptr_eq(
            &registry,
            &informer.inner.registrations.current().registry
        ));
        // The same labels again change nothing; new labels do.
        informer.namespace_applied("default".into(), BTreeMap::new());
        assert!(!rx.has_changed().unwrap());
        informer.namespace_applied("default".into(), [("team".into(), "a".into())].into());
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        informer.identity_deleted("web");
        assert!(rx.has_changed().unwrap());
        assert!(informer.statuses().is_empty());
    }
}
