//! `lanyard-cni`: the CNI plugin that installs a meshed pod's traffic redirect in the pod's
//! network namespace, so injected pods need no NET_ADMIN init container, and its node
//! installer.
//!
//! As a plugin (CNI spec 1.0.0) it is chained after the cluster's own plugin: the runtime runs
//! it with `CNI_COMMAND` and the other `CNI_*` variables in the environment and the network
//! configuration (with `prevResult`) on stdin. For a pod carrying `lanyard.dev/inject:
//! enabled` and `lanyard.dev/redirect: cni` it installs exactly the rules the `lanyard-init`
//! container installs (`lanyard_redirect::steps`, IPv4 and IPv6) and passes `prevResult`
//! through; every other pod is left alone. As `lanyard-cni install` it places itself on the
//! node and keeps its conflist entry there until SIGTERM.
//!
//! Module map:
//! - [`spec`]: the CNI protocol: commands, `CNI_ARGS`, the bounded configuration parser, error
//!   results and their codes, VERSION.
//! - [`decision`]: [`decision::Decision`], whether a pod is redirected and if not why
//!   ([`decision::LeftAlone`], whose Display is its log label).
//! - [`pods`]: the pod lookup through the `kube` client, bounded by a timeout.
//! - [`netns`]: running work in the pod's network namespace on a thread of its own.
//! - [`plugin`]: ADD, DEL, CHECK, VERSION.
//! - [`conflist`]: adding and removing the entry in a conflist's text (`.conf` converted).
//! - [`install`]: the installer: binary, kubeconfig, conflist entry, watch, uninstall.

pub mod conflist;
pub mod decision;
pub mod install;
pub mod netns;
pub mod plugin;
pub mod pods;
pub mod spec;
