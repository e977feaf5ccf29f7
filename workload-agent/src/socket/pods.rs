//! Pod sockets: the agent's socket published into one pod (a CSI volume the kubelet mounted
//! for that pod, see `crate::csi`), served by the same server as the node socket, through the
//! same accept loop, budget, admission layer and services. Each connection accepted on a pod
//! socket carries that socket's [`SocketPod`], which the admission layer hands to the
//! attestor: the caller's pod is known from the mount, not read from `/proc`.
//!
//! [`PodSockets`] is the set of pod sockets the agent should serve. The CSI plugin adds and
//! removes entries whenever the kubelet publishes or unpublishes a volume, whether or not the
//! node socket's server runs yet: a socket is bound only while [`super::serve()`] runs (it
//! attaches the set when it starts and detaches it when it stops), so a pod never connects to
//! a socket nobody accepts on. Detaching, and removing an entry, close the listener and remove
//! the socket file; connections already open stay with the server until they end.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use lanyard_svid::selector::canonical_pod_uid;
use tokio::task::JoinHandle;

use super::accept::Acceptor;
use super::bind::{RemoveOnDrop, SocketError, bind};

/// The pod a socket was published to, as the kubelet named it in the mount request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketPod {
    uid: String,
    namespace: String,
    name: String,
    service_account: String,
}

impl SocketPod {
    /// A pod by its UID (canonicalised: lowercase with dashes) and names; `None` when the UID
    /// is not a pod UID.
    pub fn new(uid: &str, namespace: &str, name: &str, service_account: &str) -> Option<Self> {
        Some(Self {
            uid: canonical_pod_uid(uid)?,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    /// The canonical pod UID: who every caller on the socket is.
    pub fn uid(&self) -> &str {
        &self.uid
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl std::fmt::Display for SocketPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} ({})", self.namespace, self.name, self.uid)
    }
}

/// The pod sockets to serve (see the module docs). Clones share the set.
#[derive(Clone, Default)]
pub struct PodSockets {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    wanted: BTreeMap<PathBuf, Arc<SocketPod>>,
    /// The running server's acceptor, while [`super::serve()`] runs.
    serving: Option<Acceptor>,
    running: HashMap<PathBuf, Running>,
}

/// A bound pod socket: its accept loop (which owns the listener) and its file.
struct Running {
    accept: JoinHandle<()>,
    _file: RemoveOnDrop,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Aborting the loop drops the listener; the file goes after (field drop order).
        self.accept.abort();
    }
}

impl PodSockets {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves `pod` on a socket at `path`: bound at once when the server runs (a bind error
    /// is returned, and nothing is kept), else when it starts. The same path and pod again
    /// changes nothing; the same path with another pod replaces the socket.
    pub fn insert(&self, path: PathBuf, pod: SocketPod) -> Result<(), SocketError> {
        let mut inner = self.lock();
        let same = inner.wanted.get(&path).is_some_and(|p| **p == pod);
        let bound = inner.running.contains_key(&path);
        if same && (bound || inner.serving.is_none()) {
            return Ok(());
        }
        inner.running.remove(&path);
        inner.wanted.remove(&path);
        let pod = Arc::new(pod);
        if let Some(acceptor) = inner.serving.clone() {
            let running = start(&acceptor, &path, &pod)?;
            inner.running.insert(path.clone(), running);
        }
        inner.wanted.insert(path, pod);
        Ok(())
    }

    /// Stops serving the socket at `path` and removes its file; whether it was in the set.
    pub fn remove(&self, path: &Path) -> bool {
        let mut inner = self.lock();
        let running = inner.running.remove(path);
        let wanted = inner.wanted.remove(path).is_some();
        drop(inner);
        drop(running);
        wanted
    }

    /// The pod of the socket at `path`, if it is in the set.
    pub fn get(&self, path: &Path) -> Option<Arc<SocketPod>> {
        self.lock().wanted.get(path).cloned()
    }

    /// Whether the socket at `path` is bound and accepting now.
    pub fn is_bound(&self, path: &Path) -> bool {
        self.lock().running.contains_key(path)
    }

    /// How many sockets are in the set, and how many of them are bound.
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.wanted.len(), inner.running.len())
    }

    /// Binds every socket of the set on `acceptor`'s server, and every one inserted later,
    /// until [`PodSockets::detach`]. A socket that cannot be bound is logged and left out (its
    /// pod's calls fail to connect); the others are served.
    pub(crate) fn attach(&self, acceptor: Acceptor) {
        let mut inner = self.lock();
        let wanted: Vec<(PathBuf, Arc<SocketPod>)> = inner
            .wanted
            .iter()
            .map(|(path, pod)| (path.clone(), pod.clone()))
            .collect();
        for (path, pod) in wanted {
            match start(&acceptor, &path, &pod) {
                Ok(running) => {
                    inner.running.insert(path, running);
                }
                Err(e) => tracing::error!(pod = %pod, error = %e, "could not serve a pod socket"),
            }
        }
        inner.serving = Some(acceptor);
    }

    /// Stops serving every socket of the set (the server stopped) and removes their files;
    /// the set itself is kept for the next [`PodSockets::attach`].
    pub(crate) fn detach(&self) {
        let mut inner = self.lock();
        inner.serving = None;
        let running = std::mem::take(&mut inner.running);
        drop(inner);
        drop(running);
    }
}

/// Binds `path` and starts its accept loop.
fn start(acceptor: &Acceptor, path: &Path, pod: &Arc<SocketPod>) -> Result<Running, SocketError> {
    let listener = bind(path)?;
    let file = RemoveOnDrop(path.to_owned());
    tracing::info!(pod = %pod, socket = %path.display(), "serving a pod socket");
    Ok(Running {
        accept: acceptor.spawn(listener, Some(pod.clone())),
        _file: file,
    })
}

/// Detaches the set when dropped: [`super::serve()`] holds one while it runs.
pub(crate) struct DetachOnDrop(pub(crate) PodSockets);

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        self.0.detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attest::WorkloadAttestor;
    use crate::socket::ConnectionLimits;

    const UID: &str = "8f2c0a4e-1b3d-4c5e-9f60-7a8b9c0d1e2f";

    fn pod(name: &str) -> SocketPod {
        SocketPod::new(&UID.to_uppercase(), "web", name, "api").unwrap()
    }

    #[test]
    fn a_socket_pod_has_a_canonical_uid() {
        let p = pod("api-0");
        assert_eq!(p.uid(), UID);
        assert_eq!(p.to_string(), format!("web/api-0 ({UID})"));
        assert!(SocketPod::new("not-a-uid", "web", "api-0", "api").is_none());
    }

    #[tokio::test]
    async fn sockets_are_bound_only_while_attached() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1").join("agent.sock");
        let pods = PodSockets::new();
        pods.insert(path.clone(), pod("api-0")).unwrap();
        assert!(!path.exists(), "no server yet: nothing bound");
        assert_eq!(pods.counts(), (1, 0));

        let (acceptor, _incoming) = Acceptor::new(
            Arc::new(WorkloadAttestor::default()),
            &ConnectionLimits::default(),
        );
        pods.attach(acceptor);
        assert!(pods.is_bound(&path));
        std::os::unix::net::UnixStream::connect(&path).expect("accepting");

        // The same pod again changes nothing; another pod replaces it.
        pods.insert(path.clone(), pod("api-0")).unwrap();
        assert_eq!(pods.counts(), (1, 1));
        pods.insert(path.clone(), pod("api-1")).unwrap();
        assert_eq!(pods.get(&path).unwrap().name(), "api-1");
        assert!(pods.is_bound(&path));

        pods.detach();
        assert!(!path.exists(), "detached: the file is gone");
        assert_eq!(pods.counts(), (1, 0), "the set is kept");

        let (acceptor, _incoming) = Acceptor::new(
            Arc::new(WorkloadAttestor::default()),
            &ConnectionLimits::default(),
        );
        pods.attach(acceptor);
        assert!(path.exists(), "bound again on the next server");
        assert!(pods.remove(&path));
        assert!(!path.exists());
        assert!(!pods.remove(&path), "removing twice is a no-op");
    }
}
