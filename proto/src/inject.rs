//! The injection contract: what `lanyard inject` writes into a pod template and what the
//! server reads back from the pod to decide that it is meshed. Both sides import these names
//! from here, so they cannot drift apart (a mismatch would silently turn every meshed pod
//! into an unmeshed one, and its traffic into plaintext).

/// On a pod template: [`INJECT_ENABLED`] once injected; [`INJECT_DISABLED`] (set by the user)
/// opts the pod out.
pub const INJECT_ANNOTATION: &str = "lanyard.dev/inject";
/// The [`INJECT_ANNOTATION`] value that means "the proxy is injected".
pub const INJECT_ENABLED: &str = "enabled";
/// The [`INJECT_ANNOTATION`] value by which a user opts a pod out of injection.
pub const INJECT_DISABLED: &str = "disabled";
/// On a pod template: `"true"` once injected. A label, so meshed pods can be selected.
pub const MESHED_LABEL: &str = "lanyard.dev/meshed";
/// The injected proxy container (a native sidecar: an init container with
/// `restartPolicy: Always`). The server treats a pod as meshed only while it is ready.
pub const PROXY_CONTAINER: &str = "lanyard-proxy";
/// The injected init container that installs the traffic redirect.
pub const INIT_CONTAINER: &str = "lanyard-init";
/// The volume that carries the agent's socket directory into the pod.
pub const SOCKET_VOLUME: &str = "lanyard-sockets";
