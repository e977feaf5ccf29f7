//! Which pod and container a process runs in, read from its `/proc/<pid>/cgroup`.
//!
//! The kubelet (through the container runtime) puts every container in a cgroup whose path
//! names the pod UID and the container ID. The layouts we know:
//!
//! - cgroupfs driver (v1 or v2): `/kubepods[/besteffort|/burstable]/pod<uid>/<container>`,
//!   where `<container>` is the bare 64-hex ID (containerd, docker) or `crio-<id>` (cri-o).
//! - systemd driver (v1 or v2): `/kubepods.slice[/kubepods-<qos>.slice]/
//!   kubepods[-<qos>]-pod<uid_with_underscores>.slice/<runtime>-<id>.scope`, with
//!   `cri-containerd-`, `docker-` or `crio-` as the runtime prefix.
//! - nested nodes (kind, docker-in-docker): the same, under `/docker/<id>/` or
//!   `/system.slice/docker-<id>.scope/`, and with the kubelet's cgroup root `kubelet`
//!   (`/kubelet/kubepods/...`, `/kubelet.slice/kubelet-kubepods.slice/...`).
//! - paths relative to the agent's own cgroup namespace (`/../../kubepods-...`).
//!
//! Security: a process can create cgroups inside any subtree delegated to it (a user's
//! `user@.service`, a container's own cgroup), so a pod-*shaped* path proves nothing unless it
//! starts where only the kubelet can write. We therefore match the pod structure only when it
//! is anchored at the root (after the known nested-node prefixes), and we take the outermost
//! match, so pod-shaped directories a container made inside its own cgroup are ignored. A
//! systemd slice name spells out all its ancestors (`a-b-c.slice` lives in `a-b.slice` in
//! `a.slice`), and the ancestors must be exactly those. Anything that names a pod but does not
//! fit (a bad UID, a pod-level or runtime-monitor cgroup, two different pods on two lines) is an
//! error, never a guess; a process in no pod gets `None`.

use lanyard_svid::selector::{Selector, SelectorKey, canonical_pod_uid, is_container_id};

/// The most bytes of a cgroup file we parse; real ones are well under 2 KiB.
pub const MAX_CGROUP_FILE_LEN: usize = 64 * 1024;
/// The most lines of a cgroup file we parse (one per v1 hierarchy, plus the v2 line).
pub const MAX_CGROUP_LINES: usize = 64;

/// Error messages quote at most this much of a cgroup path component.
const QUOTE_LEN: usize = 80;

/// The pod and container a process runs in. Both values are canonical selector values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodContainer {
    pod_uid: String,
    container_id: String,
}

impl PodContainer {
    /// Validates and canonicalises (lowercase); `None` if either is invalid.
    pub fn new(pod_uid: &str, container_id: &str) -> Option<Self> {
        let pod_uid = canonical_pod_uid(pod_uid)?;
        if !is_container_id(container_id) {
            return None;
        }
        Some(Self {
            pod_uid,
            container_id: container_id.to_ascii_lowercase(),
        })
    }

    /// The pod UID, lowercase with dashes (or a static pod's 32 hex digits).
    pub fn pod_uid(&self) -> &str {
        &self.pod_uid
    }

    /// The container ID, 64 lowercase hex digits, without a runtime prefix.
    pub fn container_id(&self) -> &str {
        &self.container_id
    }

    /// `k8s:pod-uid:<uid>` and `k8s:container-id:<id>`.
    pub fn selectors(&self) -> [Selector; 2] {
        // Both values were validated by `new`, with the same rules `Selector` applies.
        [
            Selector::new(SelectorKey::PodUid, &self.pod_uid).expect("validated pod UID"),
            Selector::new(SelectorKey::ContainerId, &self.container_id)
                .expect("validated container ID"),
        ]
    }
}

/// Why a cgroup file does not give a trustworthy pod and container.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup file is larger than {MAX_CGROUP_FILE_LEN} bytes")]
    TooLarge,
    #[error("cgroup file has more than {MAX_CGROUP_LINES} lines")]
    TooManyLines,
    #[error("cgroup file line {line} is not `hierarchy:controllers:/path`")]
    MalformedLine { line: usize },
    #[error("cgroup file line {line}: pod cgroup {component:?} does not hold a valid pod UID")]
    BadPodUid { line: usize, component: String },
    #[error(
        "cgroup file line {line}: the process is in pod {pod_uid} but not in a container's cgroup \
         (found {component:?}: a pod-level cgroup, a runtime monitor such as crio-conmon, or an \
         unknown runtime)"
    )]
    NotAContainer {
        line: usize,
        pod_uid: String,
        component: String,
    },
    #[error("cgroup file line {line}: container cgroup {component:?} has no 64-hex container ID")]
    BadContainerId { line: usize, component: String },
    #[error(
        "cgroup file names two different pods or containers ({first} on line {first_line}, \
         {second} on line {second_line}); refusing to pick one"
    )]
    Inconsistent {
        first: String,
        first_line: usize,
        second: String,
        second_line: usize,
    },
}

impl CgroupError {
    /// A snake_case label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::TooLarge => "cgroup_too_large",
            Self::TooManyLines => "cgroup_too_many_lines",
            Self::MalformedLine { .. } => "cgroup_malformed",
            Self::BadPodUid { .. } => "cgroup_bad_pod_uid",
            Self::NotAContainer { .. } => "cgroup_not_a_container",
            Self::BadContainerId { .. } => "cgroup_bad_container_id",
            Self::Inconsistent { .. } => "cgroup_inconsistent",
        }
    }
}

/// Parses the text of `/proc/<pid>/cgroup`: `Some` if the process runs in a container of a
/// kubelet-managed pod, `None` if it runs in no pod.
pub fn parse_cgroup_file(text: &str) -> Result<Option<PodContainer>, CgroupError> {
    if text.len() > MAX_CGROUP_FILE_LEN {
        return Err(CgroupError::TooLarge);
    }
    let mut found: Option<(PodContainer, usize)> = None;
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        if line_no > MAX_CGROUP_LINES {
            return Err(CgroupError::TooManyLines);
        }
        let Some(this) = parse_line(line, line_no)? else {
            continue;
        };
        match &found {
            None => found = Some((this, line_no)),
            Some((first, _)) if *first == this => {}
            Some((first, first_line)) => {
                return Err(CgroupError::Inconsistent {
                    first: describe(first),
                    first_line: *first_line,
                    second: describe(&this),
                    second_line: line_no,
                });
            }
        }
    }
    Ok(found.map(|(pc, _)| pc))
}

fn describe(pc: &PodContainer) -> String {
    format!("pod {} container {}", pc.pod_uid, pc.container_id)
}

/// One line: `hierarchy-ID:controller-list:cgroup-path` (the path may itself contain `:`).
fn parse_line(line: &str, line_no: usize) -> Result<Option<PodContainer>, CgroupError> {
    let malformed = || CgroupError::MalformedLine { line: line_no };
    let mut parts = line.splitn(3, ':');
    let (Some(hierarchy), Some(_controllers), Some(path)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    if hierarchy.is_empty() || !hierarchy.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    if !path.starts_with('/') {
        return Err(malformed());
    }
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    parse_path(&components, line_no)
}

/// Finds the anchored pod structure in a cgroup path's components.
fn parse_path(components: &[&str], line: usize) -> Result<Option<PodContainer>, CgroupError> {
    // A path outside the reader's cgroup namespace starts with `..`; what follows is the path
    // below the common ancestor, which may begin part-way into the kubepods tree.
    let ups = components.iter().take_while(|c| **c == "..").count();
    let relative = ups > 0;
    let rest = strip_nested_node(&components[ups..]);

    let Some((pod_index, pod_uid_raw)) = find_anchored_pod(rest, relative) else {
        return Ok(None);
    };
    let pod_component = rest[pod_index];
    let Some(pod_uid) = canonical_pod_uid(&pod_uid_raw.replace('_', "-")) else {
        return Err(CgroupError::BadPodUid {
            line,
            component: quote(pod_component),
        });
    };
    let container = rest.get(pod_index + 1).copied().unwrap_or("");
    let Some(id) = container_id_of(container) else {
        return Err(CgroupError::NotAContainer {
            line,
            pod_uid,
            component: quote(container),
        });
    };
    if !is_container_id(id) {
        return Err(CgroupError::BadContainerId {
            line,
            component: quote(container),
        });
    }
    // Components below the container are sub-cgroups the container made for itself.
    Ok(Some(PodContainer {
        pod_uid,
        container_id: id.to_ascii_lowercase(),
    }))
}

/// Drops the cgroup of a node that itself runs in a container (kind, docker-in-docker).
fn strip_nested_node<'a, 'b>(components: &'b [&'a str]) -> &'b [&'a str] {
    match components {
        ["docker", id, rest @ ..] if is_container_id(id) => rest,
        ["system.slice", scope, rest @ ..]
            if scope
                .strip_prefix("docker-")
                .and_then(|s| s.strip_suffix(".scope"))
                .is_some_and(is_container_id) =>
        {
            rest
        }
        _ => components,
    }
}

/// The index of the pod's cgroup and the raw UID text in it, if the path has the kubepods
/// structure anchored at its start (or, for a namespace-relative path, a tail of it).
fn find_anchored_pod<'a>(components: &[&'a str], relative: bool) -> Option<(usize, &'a str)> {
    let first = *components.first()?;
    if first.ends_with(".slice") {
        return find_systemd_pod(components, relative);
    }
    // cgroupfs: [kubelet/] kubepods [/besteffort|/burstable] /pod<uid>
    let expected: &[&str] = &["kubelet", "kubepods", "besteffort|burstable", "pod"];
    let mut index = 0;
    let mut stage = if relative {
        // Start at whichever stage the first component fits.
        expected
            .iter()
            .position(|stage| fits_cgroupfs_stage(stage, first))?
    } else {
        0
    };
    while index < components.len() && stage < expected.len() {
        let component = components[index];
        let fits = fits_cgroupfs_stage(expected[stage], component);
        match (expected[stage], fits) {
            ("pod", true) => return Some((index, &component["pod".len()..])),
            ("pod", false) => return None,
            ("kubepods", false) => return None,
            (_, true) => index += 1,
            // "kubelet" root and the QoS level are optional.
            (_, false) => {}
        }
        stage += 1;
    }
    None
}

fn fits_cgroupfs_stage(stage: &str, component: &str) -> bool {
    match stage {
        "besteffort|burstable" => component == "besteffort" || component == "burstable",
        "pod" => component.starts_with("pod"),
        exact => component == exact,
    }
}

/// systemd: the first slice whose name ends in `kubepods[-<qos>]-pod<uid>` is the pod, and the
/// components before it must be exactly its ancestor slices (for a namespace-relative path,
/// the last ones of them).
fn find_systemd_pod<'a>(components: &[&'a str], relative: bool) -> Option<(usize, &'a str)> {
    for (index, component) in components.iter().enumerate() {
        let stem = component.strip_suffix(".slice")?;
        let Some((parent, uid)) = stem.rsplit_once("-pod") else {
            continue;
        };
        // The pod's parent slice is `kubepods` or a QoS slice `kubepods-<qos>`, after any
        // prefix from the kubelet's cgroup root (`kubelet-kubepods...`).
        let mut parts = parent.rsplit('-');
        let parent_ok = match parts.next() {
            Some("kubepods") => true,
            Some("besteffort" | "burstable") => parts.next() == Some("kubepods"),
            _ => false,
        };
        if !parent_ok {
            continue;
        }
        // The ancestors systemd would have: `a.slice`, `a-b.slice`, ... for stem `a-b-pod..`.
        let ancestors: Vec<String> = stem
            .match_indices('-')
            .map(|(at, _)| format!("{}.slice", &stem[..at]))
            .collect();
        let before = &components[..index];
        let anchored = if relative {
            before.len() <= ancestors.len()
                && ancestors[ancestors.len() - before.len()..]
                    .iter()
                    .zip(before)
                    .all(|(want, got)| want == got)
        } else {
            before.len() == ancestors.len()
                && ancestors.iter().zip(before).all(|(want, got)| want == got)
        };
        return anchored.then_some((index, uid));
    }
    None
}

/// The container ID text in a container's cgroup name, or `None` if the name is not a
/// container's (pod level, runtime monitor, unknown runtime).
fn container_id_of(component: &str) -> Option<&str> {
    if component.starts_with("crio-conmon-") {
        return None;
    }
    if let Some(scope) = component.strip_suffix(".scope") {
        return ["cri-containerd-", "docker-", "crio-"]
            .iter()
            .find_map(|prefix| scope.strip_prefix(prefix));
    }
    if let Some(id) = component.strip_prefix("crio-") {
        return Some(id);
    }
    // cgroupfs with containerd or docker: the bare ID. Anything else is an unknown runtime.
    (component.len() == 64).then_some(component)
}

fn quote(s: &str) -> String {
    let mut end = s.len().min(QUOTE_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "8f2c0a4e-1b3d-4c5e-9f60-7a8b9c0d1e2f";
    const UID_: &str = "8f2c0a4e_1b3d_4c5e_9f60_7a8b9c0d1e2f";
    const CID: &str = "3b7c9f0e1d2a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c";

    fn parse(path: &str) -> Result<Option<PodContainer>, CgroupError> {
        parse_cgroup_file(&format!("0::{path}\n"))
    }

    fn pod(path: &str) -> PodContainer {
        parse(path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .unwrap_or_else(|| panic!("{path}: no pod"))
    }

    #[test]
    fn anchored_layouts_name_the_pod_and_container() {
        let want = PodContainer::new(UID, CID).unwrap();
        for path in [
            format!("/kubepods/besteffort/pod{UID}/{CID}"),
            format!("/kubepods/pod{UID}/{CID}"),
            format!("/kubepods/burstable/pod{UID}/crio-{CID}"),
            format!("/kubelet/kubepods/burstable/pod{UID}/{CID}"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope"
            ),
            format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope/container"),
            format!(
                "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/docker-{CID}.scope"
            ),
            format!("/docker/{CID}/kubepods/besteffort/pod{UID}/{CID}"),
            format!("/../../besteffort/pod{UID}/{CID}"),
            format!("/../kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope"),
        ] {
            assert_eq!(pod(&path), want, "{path}");
        }
    }

    #[test]
    fn unanchored_pod_shapes_are_not_pods() {
        for path in [
            // A user's delegated subtree dressed up as a pod.
            format!("/user.slice/user-1000.slice/user@1000.service/kubepods/pod{UID}/{CID}"),
            format!(
                "/user.slice/user-1000.slice/user@1000.service/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope"
            ),
            // Slice ancestors that do not spell the pod slice's name.
            format!("/evil.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope"),
            format!("/system.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope"),
            format!(
                "/xkubepods.slice/xkubepods-besteffort.slice/xkubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope"
            ),
            format!(
                "/kubepods.slice/kubepods-guaranteed.slice/kubepods-guaranteed-pod{UID_}.slice/cri-containerd-{CID}.scope"
            ),
            "/".to_owned(),
            "/system.slice/sshd.service".to_owned(),
            "/kubepods/besteffort".to_owned(),
        ] {
            assert_eq!(parse(&path), Ok(None), "{path}");
        }
    }

    #[test]
    fn outermost_pod_wins_over_pod_shapes_made_inside_a_container() {
        let other = "11111111-2222-3333-4444-555555555555";
        let path = format!(
            "/kubepods/pod{UID}/{CID}/kubepods/pod{other}/{}",
            "a".repeat(64)
        );
        assert_eq!(pod(&path).pod_uid(), UID);
    }

    #[test]
    fn pod_without_a_container_is_an_error() {
        for path in [
            format!("/kubepods/besteffort/pod{UID}"),
            format!("/kubepods/besteffort/pod{UID}/crio-conmon-{CID}"),
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-conmon-{CID}.scope"
            ),
            format!("/kubepods/pod{UID}/runc-{CID}"),
        ] {
            assert!(
                matches!(parse(&path), Err(CgroupError::NotAContainer { .. })),
                "{path}: {:?}",
                parse(&path)
            );
        }
        assert!(matches!(
            parse(&format!("/kubepods/pod{UID}/crio-{}", &CID[..12])),
            Err(CgroupError::BadContainerId { .. })
        ));
        assert!(matches!(
            parse(&format!("/kubepods/podnot-a-uid/{CID}")),
            Err(CgroupError::BadPodUid { .. })
        ));
    }
}
