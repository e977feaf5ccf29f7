//! The agent's Unix socket, with one owner: everything between a connecting process and the
//! services that answer it. The SPIFFE Workload API, Envoy SDS ([`crate::sds`]) and
//! `lanyard.discovery.v1` are plain gRPC services mounted here by [`serve()`]; they read the
//! attested [`Caller`] from each request.
//!
//! - [`bind`](mod@bind): binding (0755 parent, stale socket replaced, 0777 socket) and
//!   removal when the server stops.
//! - [`accept`]: the accept loop: accept at once, connection budget, caller pinned at accept
//!   (pidfd, start time, binary), HTTP/2 preface within a timeout, idle timeout, the [`h2_authority`](crate::h2_authority) frame layer on every read.
//! - [`budget`]: open connections, all callers and per uid, checked at accept.
//! - [`idle`]: connections with no open stream closed after a timeout.
//! - [`open_files`]: the open-files limit raised at start (two descriptors per connection).
//! - [`limits`]: the connection-level bounds ([`ConnectionLimits`]) and the HTTP/2 server
//!   built from them.
//! - [`admission`]: the one admission layer: the `workload.spiffe.io` header check per
//!   service (the Workload API requires it; SDS and discovery do not), the caller attested
//!   once per call and handed down as a [`Caller`].
//! - [`caller`]: the typed [`Caller`], and the per-caller stream budget services count in.
//! - [`pods`]: pod sockets, the socket published into one pod by the CSI plugin: bound while
//!   [`serve()`] runs, each connection carrying its pod ([`SocketPod`]) to the admission layer.
//! - [`serve`](mod@serve): the one [`serve()`] function.

pub mod accept;
pub mod admission;
pub mod bind;
pub mod budget;
pub mod caller;
pub mod idle;
pub mod limits;
pub mod open_files;
pub mod pods;
pub mod serve;

pub use admission::{AdmissionPolicy, AdmissionRefusal};
pub use bind::{SocketError, bind, bind_mode};
pub use budget::{ConnectionBudget, OverBudget};
pub use caller::{Caller, CallerKey, StreamLimiter, StreamSlot, TooManyStreams};
pub use limits::{ConnectionLimits, server_builder};
pub use pods::{PodSockets, SocketPod};
pub use serve::{LISTENER_ROLE, ServeError, Services, listener_line, serve};
