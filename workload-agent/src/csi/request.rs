//! What the plugin accepts of a `NodePublishVolume` request, checked into a
//! [`PublishRequest`] before anything on the node is touched: an inline ephemeral volume
//! (`csi.storage.k8s.io/ephemeral: "true"`), read-only, a mount (not a block device), and the
//! pod it is for (the CSIDriver's `podInfoOnMount: true` makes the kubelet send it).

use std::collections::HashMap;

use lanyard_proto::csi::v1 as csi;
use tonic::Status;

use crate::socket::SocketPod;

use super::target::TargetRefusal;

/// The volume context keys the kubelet sets (Kubernetes' CSI documentation).
pub const EPHEMERAL: &str = "csi.storage.k8s.io/ephemeral";
pub const POD_NAME: &str = "csi.storage.k8s.io/pod.name";
pub const POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
pub const POD_UID: &str = "csi.storage.k8s.io/pod.uid";
pub const SERVICE_ACCOUNT: &str = "csi.storage.k8s.io/serviceAccount.name";

/// The longest volume ID taken (the kubelet's are 68 characters).
pub const MAX_VOLUME_ID: usize = 256;

/// Why a request is refused: all `INVALID_ARGUMENT` but [`Refusal::AlreadyPublished`]
/// (`ALREADY_EXISTS`). `Display` is the metric label; [`Refusal::message`] says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("volume_id_missing")]
    VolumeIdMissing,
    #[error("volume_id_too_long")]
    VolumeIdTooLong,
    #[error("no_capability")]
    NoCapability,
    #[error("block_volume")]
    Block,
    #[error("not_read_only")]
    NotReadOnly,
    #[error("not_ephemeral")]
    NotEphemeral,
    #[error("no_pod_info")]
    NoPodInfo { missing: &'static str },
    #[error("bad_pod_uid")]
    BadPodUid { uid: String },
    #[error("{0}")]
    Target(TargetRefusal),
    #[error("already_published")]
    AlreadyPublished { what: String },
}

impl Refusal {
    pub fn message(&self) -> String {
        match self {
            Self::VolumeIdMissing => "volume_id is missing".to_owned(),
            Self::VolumeIdTooLong => format!("volume_id is longer than {MAX_VOLUME_ID} bytes"),
            Self::NoCapability => "volume_capability is missing".to_owned(),
            Self::Block => {
                "csi.lanyard.dev serves a directory: block volumes are not supported".to_owned()
            }
            Self::NotReadOnly => "csi.lanyard.dev volumes are read-only: set `readOnly: true` \
                                  in the pod's csi volume"
                .to_owned(),
            Self::NotEphemeral => format!(
                "csi.lanyard.dev serves inline ephemeral volumes only (volume_context \
                 {EPHEMERAL}: \"true\"): declare it as a `csi` volume in the pod, not through a \
                 PersistentVolume"
            ),
            Self::NoPodInfo { missing } => format!(
                "volume_context has no {missing}: the CSIDriver csi.lanyard.dev must set \
                 `podInfoOnMount: true`"
            ),
            Self::BadPodUid { uid } => format!("{POD_UID} {uid:?} is not a pod UID"),
            Self::Target(refusal) => refusal.message(),
            Self::AlreadyPublished { what } => what.clone(),
        }
    }

    pub fn to_status(&self) -> Status {
        match self {
            Self::AlreadyPublished { .. } => Status::already_exists(self.message()),
            _ => Status::invalid_argument(self.message()),
        }
    }
}

impl From<TargetRefusal> for Refusal {
    fn from(refusal: TargetRefusal) -> Self {
        Self::Target(refusal)
    }
}

/// A `NodePublishVolume` request the plugin can serve (its target not yet checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    pub volume_id: String,
    pub target_path: String,
    pub pod: SocketPod,
}

impl PublishRequest {
    /// Checks `request` (see the module docs). Secrets in it are never looked at or logged.
    pub fn check(request: &csi::NodePublishVolumeRequest) -> Result<Self, Refusal> {
        let volume_id = check_volume_id(&request.volume_id)?;
        let capability = request
            .volume_capability
            .as_ref()
            .ok_or(Refusal::NoCapability)?;
        if !matches!(
            capability.access_type,
            Some(csi::volume_capability::AccessType::Mount(_))
        ) {
            return Err(Refusal::Block);
        }
        if !request.readonly {
            return Err(Refusal::NotReadOnly);
        }
        let context = &request.volume_context;
        if context.get(EPHEMERAL).map(String::as_str) != Some("true") {
            return Err(Refusal::NotEphemeral);
        }
        let pod = pod_of(context)?;
        if request.target_path.is_empty() {
            return Err(Refusal::Target(TargetRefusal::Missing));
        }
        Ok(Self {
            volume_id,
            target_path: request.target_path.clone(),
            pod,
        })
    }
}

/// A volume ID the plugin can key its state by.
pub fn check_volume_id(volume_id: &str) -> Result<String, Refusal> {
    if volume_id.is_empty() {
        return Err(Refusal::VolumeIdMissing);
    }
    if volume_id.len() > MAX_VOLUME_ID {
        return Err(Refusal::VolumeIdTooLong);
    }
    Ok(volume_id.to_owned())
}

fn pod_of(context: &HashMap<String, String>) -> Result<SocketPod, Refusal> {
    let get = |key: &'static str| {
        context
            .get(key)
            .filter(|v| !v.is_empty())
            .ok_or(Refusal::NoPodInfo { missing: key })
    };
    let uid = get(POD_UID)?;
    let (namespace, name, service_account) =
        (get(POD_NAMESPACE)?, get(POD_NAME)?, get(SERVICE_ACCOUNT)?);
    SocketPod::new(uid, namespace, name, service_account)
        .ok_or_else(|| Refusal::BadPodUid { uid: uid.clone() })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const POD: &str = "8f2c0a4e-1b3d-4c5e-9f60-7a8b9c0d1e2f";

    /// A request as the kubelet sends it for an inline volume of pod `web/api-0`.
    pub(crate) fn kubelet_request(volume_id: &str, target: &str) -> csi::NodePublishVolumeRequest {
        csi::NodePublishVolumeRequest {
            volume_id: volume_id.into(),
            target_path: target.into(),
            volume_capability: Some(csi::VolumeCapability {
                access_type: Some(csi::volume_capability::AccessType::Mount(
                    csi::volume_capability::MountVolume::default(),
                )),
                access_mode: Some(csi::volume_capability::AccessMode {
                    mode: csi::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
                }),
            }),
            readonly: true,
            volume_context: [
                (EPHEMERAL, "true"),
                (POD_NAME, "api-0"),
                (POD_NAMESPACE, "web"),
                (POD_UID, POD),
                (SERVICE_ACCOUNT, "api"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_kubelet_request_for_an_inline_volume_is_taken() {
        let checked = PublishRequest::check(&kubelet_request("csi-1", "/t")).unwrap();
        assert_eq!(checked.volume_id, "csi-1");
        assert_eq!(checked.pod.uid(), POD);
        assert_eq!(
            (
                checked.pod.namespace(),
                checked.pod.name(),
                checked.pod.service_account()
            ),
            ("web", "api-0", "api")
        );
    }

    #[test]
    fn each_refusal_names_what_to_fix() {
        type Edit = fn(&mut csi::NodePublishVolumeRequest);
        let cases: [(Edit, &str, &str); 9] = [
            (|r| r.volume_id.clear(), "volume_id_missing", "volume_id"),
            (
                |r| r.volume_id = "v".repeat(257),
                "volume_id_too_long",
                "256",
            ),
            (
                |r| r.volume_capability = None,
                "no_capability",
                "volume_capability",
            ),
            (
                |r| {
                    r.volume_capability.as_mut().unwrap().access_type =
                        Some(csi::volume_capability::AccessType::Block(Default::default()))
                },
                "block_volume",
                "block",
            ),
            (|r| r.readonly = false, "not_read_only", "readOnly: true"),
            (
                |r| {
                    r.volume_context.remove(EPHEMERAL);
                },
                "not_ephemeral",
                "inline ephemeral",
            ),
            (
                |r| {
                    r.volume_context.remove(POD_UID);
                },
                "no_pod_info",
                "podInfoOnMount: true",
            ),
            (
                |r| {
                    r.volume_context.insert(POD_UID.into(), "nope".into());
                },
                "bad_pod_uid",
                "not a pod UID",
            ),
            (|r| r.target_path.clear(), "target_missing", "target_path"),
        ];
        for (edit, label, hint) in cases {
            let mut request = kubelet_request("csi-1", "/t");
            edit(&mut request);
            let refusal = PublishRequest::check(&request).unwrap_err();
            assert_eq!(refusal.to_string(), label);
            assert!(
                refusal.message().contains(hint),
                "{label}: {}",
                refusal.message()
            );
            assert_eq!(refusal.to_status().code(), tonic::Code::InvalidArgument);
        }
        let exists = Refusal::AlreadyPublished { what: "x".into() };
        assert_eq!(exists.to_status().code(), tonic::Code::AlreadyExists);
    }
}
