//! Where the CA lives in a cluster, and where replicas report.
//!
//! The CA Secret (`kubernetes.io/tls` layout; `lanyard ca init` creates it, or cert-manager):
//! - `tls.crt`: the issuing intermediate, optionally followed by the rest of its chain;
//! - `tls.key`: its key;
//! - `jwt.key`: the PKCS#8 PEM key that signs JWT-SVIDs;
//! - `jwt-next.key`, `jwt-previous.key`: during a root rotation, the key that will sign after
//!   the switch and the one that signed before it. Their public halves are published in the
//!   bundle, nothing is signed with them.
//!
//! The bundle ConfigMap: `bundle.pem`, the roots every agent and workload trusts, and during a
//! rotation the [`ROTATION_ANNOTATION`].

pub const SECRET_CERT_KEY: &str = "tls.crt";
pub const SECRET_KEY_KEY: &str = "tls.key";
pub const SECRET_JWT_KEY: &str = "jwt.key";
pub const SECRET_JWT_NEXT_KEY: &str = "jwt-next.key";
pub const SECRET_JWT_PREVIOUS_KEY: &str = "jwt-previous.key";
pub const CONFIGMAP_BUNDLE_KEY: &str = "bundle.pem";

/// On the bundle ConfigMap: the root rotation in progress ([`crate::rotation::RotationState`]
/// as JSON). Absent when none is.
pub const ROTATION_ANNOTATION: &str = "lanyard.dev/ca-rotation";

/// The label (value `"true"`) on every replica's report ConfigMap, in the server's namespace.
pub const REPORT_LABEL: &str = "lanyard.dev/ca-report";
/// The report ConfigMap's data key ([`crate::report::ReplicaReport`] as JSON).
pub const REPORT_DATA_KEY: &str = "report.json";
/// How often a replica rewrites its report when nothing changed (a heartbeat), and the most
/// often it writes one when things do.
pub const REPORT_HEARTBEAT_SECS: i64 = 30;
pub const REPORT_MIN_INTERVAL_SECS: i64 = 2;
/// A report not rewritten for this long is from a replica that is gone, and is ignored.
pub const REPORT_STALE_AFTER_SECS: i64 = 4 * REPORT_HEARTBEAT_SECS;

/// The ConfigMap a replica reports in: `lanyard-ca-report-<replica>` (the replica's pod name).
pub fn report_configmap_name(replica: &str) -> String {
    format!("lanyard-ca-report-{replica}")
}
