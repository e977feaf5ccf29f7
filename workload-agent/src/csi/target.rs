//! Where a volume may be published: the target path the kubelet names must resolve inside a
//! pod's directory under the kubelet's pods directory (`--csi-pods-dir`), with no `..`, and no
//! symlink taking it anywhere else.
//!
//! The check resolves the target's parent (which the kubelet creates) with `realpath`, so a
//! symlink anywhere in it is followed before the containment test, and then refuses a target
//! that is itself a symlink or not a directory. The mount is made through a descriptor of the
//! checked directory ([`super::mount`]), so the path cannot be swapped between check and use.

use std::io;
use std::path::{Component, Path, PathBuf};

use lanyard_svid::selector::canonical_pod_uid;

/// Why a target path is refused. `Display` is the metric label; [`TargetRefusal::message`]
/// names the path and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum TargetRefusal {
    #[error("target_missing")]
    Missing,
    #[error("target_not_absolute")]
    NotAbsolute { given: String },
    #[error("target_dot_dot")]
    DotDot { given: String },
    #[error("target_no_name")]
    NoName { given: String },
    #[error("target_unresolvable")]
    Unresolvable { given: String, error: io::Error },
    #[error("target_outside_pods_dir")]
    Outside {
        given: String,
        resolved: PathBuf,
        root: PathBuf,
    },
    #[error("target_not_in_a_pod_dir")]
    NotInPodDir { given: String, root: PathBuf },
    #[error("target_symlink")]
    Symlink { given: String },
    #[error("target_not_a_directory")]
    NotADirectory { given: String },
    #[error("target_other_pod")]
    OtherPod {
        given: String,
        dir_pod: String,
        pod: String,
    },
}

impl TargetRefusal {
    pub fn message(&self) -> String {
        match self {
            Self::Missing => "target_path is missing".to_owned(),
            Self::NotAbsolute { given } => format!("target_path {given:?} is not absolute"),
            Self::DotDot { given } => {
                format!("target_path {given:?} has a `..` component; give the resolved path")
            }
            Self::NoName { given } => format!("target_path {given:?} names no directory"),
            Self::Unresolvable { given, error } => {
                format!("target_path {given:?}: its parent directory cannot be resolved: {error}")
            }
            Self::Outside {
                given,
                resolved,
                root,
            } => format!(
                "target_path {given:?} resolves to {}, outside the kubelet's pods directory {} \
                 (--csi-pods-dir); refusing to mount there",
                resolved.display(),
                root.display()
            ),
            Self::NotInPodDir { given, root } => format!(
                "target_path {given:?} is not inside a pod's directory ({}/<pod UID>/...)",
                root.display()
            ),
            Self::Symlink { given } => {
                format!("target_path {given:?} is a symlink; refusing to follow it")
            }
            Self::NotADirectory { given } => {
                format!("target_path {given:?} exists and is not a directory")
            }
            Self::OtherPod {
                given,
                dir_pod,
                pod,
            } => format!(
                "target_path {given:?} is in pod {dir_pod}'s directory, but the request is for \
                 pod {pod}"
            ),
        }
    }
}

/// A target path checked to lie inside a pod's directory under the pods directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Canonical: the resolved parent and the target's own name.
    pub path: PathBuf,
    /// The pod directory it is in, as a canonical pod UID (`None`: the directory's name is not
    /// a pod UID).
    pub dir_pod: Option<String>,
    /// Whether something is at the path now (then it is a directory, not a symlink).
    pub exists: bool,
}

/// Where a target path leads.
#[derive(Debug)]
pub enum Resolved {
    /// Inside a pod's directory.
    Inside(Target),
    /// Its parent does not exist: neither does the target (for unpublishing, nothing to do).
    ParentMissing,
}

/// Checks `given` against `root` (the canonical pods directory); see the module docs.
pub fn resolve(root: &Path, given: &str) -> Result<Resolved, TargetRefusal> {
    let owned = || given.to_owned();
    if given.is_empty() {
        return Err(TargetRefusal::Missing);
    }
    let path = Path::new(given);
    if !path.is_absolute() {
        return Err(TargetRefusal::NotAbsolute { given: owned() });
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(TargetRefusal::DotDot { given: owned() });
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(TargetRefusal::NoName { given: owned() });
    };
    let parent = match std::fs::canonicalize(parent) {
        Ok(parent) => parent,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Resolved::ParentMissing),
        Err(error) => {
            return Err(TargetRefusal::Unresolvable {
                given: owned(),
                error,
            });
        }
    };
    let resolved = parent.join(name);
    let Ok(relative) = resolved.strip_prefix(root) else {
        return Err(TargetRefusal::Outside {
            given: owned(),
            resolved,
            root: root.to_owned(),
        });
    };
    // At least `<pod UID>/<something>`: never the pods directory or a pod's directory itself.
    let mut parts = relative.components();
    let (Some(Component::Normal(pod_dir)), Some(_)) = (parts.next(), parts.next()) else {
        return Err(TargetRefusal::NotInPodDir {
            given: owned(),
            root: root.to_owned(),
        });
    };
    let dir_pod = pod_dir.to_str().and_then(canonical_pod_uid);
    let exists = match std::fs::symlink_metadata(&resolved) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(TargetRefusal::Symlink { given: owned() });
        }
        Ok(meta) if !meta.is_dir() => {
            return Err(TargetRefusal::NotADirectory { given: owned() });
        }
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(error) => {
            return Err(TargetRefusal::Unresolvable {
                given: owned(),
                error,
            });
        }
    };
    Ok(Resolved::Inside(Target {
        path: resolved,
        dir_pod,
        exists,
    }))
}

/// [`resolve`] for publishing `pod_uid`'s volume: the parent must exist (the kubelet makes it)
/// and the target must be in that pod's own directory.
pub fn for_publish(root: &Path, given: &str, pod_uid: &str) -> Result<Target, TargetRefusal> {
    match resolve(root, given)? {
        Resolved::Inside(target) if target.dir_pod.as_deref() == Some(pod_uid) => Ok(target),
        Resolved::Inside(target) => Err(TargetRefusal::OtherPod {
            given: given.to_owned(),
            dir_pod: target
                .dir_pod
                .unwrap_or_else(|| "(not a pod UID)".to_owned()),
            pod: pod_uid.to_owned(),
        }),
        Resolved::ParentMissing => Err(TargetRefusal::Unresolvable {
            given: given.to_owned(),
            error: io::Error::new(
                io::ErrorKind::NotFound,
                "the parent directory does not exist",
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = "8f2c0a4e-1b3d-4c5e-9f60-7a8b9c0d1e2f";

    struct Tree {
        _dir: tempfile::TempDir,
        base: PathBuf,
        root: PathBuf,
        volumes: PathBuf,
    }

    fn tree() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        let root = base.join("pods");
        let volumes = root.join(POD).join("volumes/kubernetes.io~csi");
        std::fs::create_dir_all(volumes.join("sockets")).unwrap();
        std::fs::create_dir_all(base.join("outside")).unwrap();
        Tree {
            _dir: dir,
            base,
            root,
            volumes,
        }
    }

    fn s(p: &Path) -> String {
        p.to_str().unwrap().to_owned()
    }

    #[test]
    fn a_target_in_the_pods_dir_resolves() {
        let t = tree();
        let given = t.volumes.join("sockets/mount");
        let target = for_publish(&t.root, &s(&given), POD).unwrap();
        assert_eq!(target.path, given);
        assert_eq!(target.dir_pod.as_deref(), Some(POD));
        assert!(!target.exists);
        std::fs::create_dir(&given).unwrap();
        assert!(for_publish(&t.root, &s(&given), POD).unwrap().exists);
    }

    #[test]
    fn escapes_are_refused_naming_why() {
        let t = tree();
        let outside = t.base.join("outside/mount");
        let err = for_publish(&t.root, &s(&outside), POD).unwrap_err();
        assert_eq!(err.to_string(), "target_outside_pods_dir");
        assert!(
            err.message()
                .contains("outside the kubelet's pods directory"),
            "{}",
            err.message()
        );

        let dotdot = format!("{}/sockets/../../../../../outside/mount", s(&t.volumes));
        let err = for_publish(&t.root, &dotdot, POD).unwrap_err();
        assert_eq!(err.to_string(), "target_dot_dot");

        // A symlink in the parent chain that leaves the pods directory.
        std::os::unix::fs::symlink(t.base.join("outside"), t.volumes.join("evil")).unwrap();
        let via_link = t.volumes.join("evil/mount");
        let err = for_publish(&t.root, &s(&via_link), POD).unwrap_err();
        assert_eq!(err.to_string(), "target_outside_pods_dir");
        assert!(err.message().contains(&s(&t.base.join("outside/mount"))));

        // The target itself a symlink (even one pointing inside).
        std::os::unix::fs::symlink(t.volumes.join("sockets"), t.volumes.join("sockets/mount"))
            .unwrap();
        let err = for_publish(&t.root, &s(&t.volumes.join("sockets/mount")), POD).unwrap_err();
        assert_eq!(err.to_string(), "target_symlink");

        for (given, label) in [
            ("", "target_missing"),
            ("relative/mount", "target_not_absolute"),
            ("/", "target_no_name"),
        ] {
            assert_eq!(
                for_publish(&t.root, given, POD).unwrap_err().to_string(),
                label
            );
        }
    }

    #[test]
    fn the_target_must_be_in_the_requesting_pods_directory() {
        let t = tree();
        let other = "11111111-2222-3333-4444-555555555555";
        std::fs::create_dir_all(t.root.join(other).join("v")).unwrap();
        let err = for_publish(&t.root, &s(&t.root.join(other).join("v/mount")), POD).unwrap_err();
        assert_eq!(err.to_string(), "target_other_pod");
        // The pods directory and a pod's directory themselves are not targets.
        for given in [t.root.clone(), t.root.join(POD)] {
            let err = for_publish(&t.root, &s(&given), POD).unwrap_err();
            assert!(
                matches!(
                    err,
                    TargetRefusal::NotInPodDir { .. } | TargetRefusal::Outside { .. }
                ),
                "{given:?}: {err:?}"
            );
        }
        let file = t.volumes.join("file");
        std::fs::write(&file, "x").unwrap();
        let err = for_publish(&t.root, &s(&file), POD).unwrap_err();
        assert_eq!(err.to_string(), "target_not_a_directory");
    }

    #[test]
    fn a_missing_parent_is_nothing_to_unpublish() {
        let t = tree();
        let gone = t
            .root
            .join(POD)
            .join("volumes/kubernetes.io~csi/gone/mount");
        assert!(matches!(
            resolve(&t.root, &s(&gone)),
            Ok(Resolved::ParentMissing)
        ));
        assert!(for_publish(&t.root, &s(&gone), POD).is_err());
    }
}
