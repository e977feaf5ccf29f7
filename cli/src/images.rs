//! Container image references for the manifests `lanyard install` and `lanyard inject`
//! print, and for `lanyard images`: `REGISTRY/lanyard-<component>:TAG`, or, pinned by the
//! digest file `deploy/images/build` writes (`--image-digests`),
//! `REPOSITORY/lanyard-<component>@sha256:...`. This module is the one place that names them.
//!
//! One image is not Lanyard's: the CSI node-driver-registrar sidecar of the agent DaemonSet
//! ([`CSI_REGISTRAR_IMAGE`], Kubernetes SIG Storage's). It is named by its upstream tag unless
//! `--csi-registrar-image` replaces it; `deploy/images/build` does not build it and the digest
//! file does not pin it (that file records the images the build made).
//!
//! The digest file (`image-digests.json`):
//! ```json
//! {"version": "0.1.0", "revision": "<git commit>", "images": {
//!   "lanyard-server": {"reference": "ghcr.io/lanyard-dev/lanyard-server:0.1.0",
//!                      "digest": "sha256:<64 hex>"}, ...}}
//! ```
//! Each image's repository is the one its `reference` names, unless `--image-registry` is
//! given: then it is `REGISTRY/lanyard-<component>` and the digest stays (`skopeo copy` of an
//! archive to another registry keeps the manifest digest).

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

/// Default registry prefix.
pub const DEFAULT_REGISTRY: &str = "ghcr.io/lanyard-dev";

/// Every Lanyard image, by component: `lanyard-<component>`, all built by
/// `deploy/images/build`.
pub const COMPONENTS: [&str; 5] = ["server", "agent", "proxy", "proxy-init", "cni"];
/// The images `lanyard install`'s manifests always name.
pub const INSTALL_COMPONENTS: [&str; 2] = ["server", "agent"];
/// The images `lanyard install --cni` names: the CNI plugin's installer as well.
pub const INSTALL_CNI_COMPONENTS: [&str; 3] = ["server", "agent", "cni"];
/// The images `lanyard inject` adds to workloads.
pub const INJECT_COMPONENTS: [&str; 2] = ["proxy", "proxy-init"];

/// This lanyard's version: the tag of the images it names by default.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The upstream CSI node-driver-registrar the agent DaemonSet runs beside the agent: it tells
/// the kubelet where the agent's CSI socket is (`--csi-registrar-image` replaces it, e.g. with
/// a mirror's copy or a `@sha256:` reference).
pub const CSI_REGISTRAR_IMAGE: &str =
    "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.13.0";

/// A digest file is a few hundred bytes; anything this large is not one.
const MAX_DIGEST_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("--image-registry {0:?}: give a registry/repository prefix such as ghcr.io/acme")]
    Registry(String),
    #[error(
        "--image-tag {0:?}: letters, digits, '_', '.', '-', at most 128, not starting with '.' or '-'"
    )]
    Tag(String),
    #[error(
        "--csi-registrar-image {0:?}: give an image reference, REPOSITORY:TAG or REPOSITORY@sha256:<64 hex>, e.g. {CSI_REGISTRAR_IMAGE}"
    )]
    Registrar(String),
    #[error("--image-digests {}: {source}", .path.display())]
    DigestFileRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "--image-digests {}: not the image-digests.json that deploy/images/build writes: {message}",
        .path.display()
    )]
    DigestFileFormat { path: PathBuf, message: String },
    #[error(
        "--image-digests {}: {image}: digest {digest:?} is not \"sha256:\" followed by 64 lowercase hex digits",
        .path.display()
    )]
    Digest {
        path: PathBuf,
        image: String,
        digest: String,
    },
    #[error(
        "--image-digests {}: {image}: reference {reference:?} does not name a {image} repository",
        .path.display()
    )]
    Reference {
        path: PathBuf,
        image: String,
        reference: String,
    },
    #[error(
        "--image-digests {}: no entry for {image}, which this command needs; the file lists {listed}",
        .path.display()
    )]
    MissingImage {
        path: PathBuf,
        image: String,
        listed: String,
    },
    #[error(
        "--image-digests {}: the images are lanyard {file}'s, this lanyard is {ours}: build this version's images (deploy/images/build) and give their digest file, or use the lanyard of version {file} (--image-digests-any-version pins them anyway)",
        .path.display()
    )]
    Version {
        path: PathBuf,
        file: String,
        ours: String,
    },
}

/// One pinned image: its repository (without tag) and manifest digest.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pinned {
    repository: String,
    digest: String,
}

/// Where the images come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Images {
    registry: String,
    tag: String,
    /// Component -> pinned image, when pinned by a digest file.
    pinned: BTreeMap<String, Pinned>,
    /// The upstream registrar's reference (never pinned by the digest file).
    registrar: String,
}

impl Default for Images {
    fn default() -> Self {
        Self {
            registry: DEFAULT_REGISTRY.to_owned(),
            tag: VERSION.to_owned(),
            pinned: BTreeMap::new(),
            registrar: CSI_REGISTRAR_IMAGE.to_owned(),
        }
    }
}

impl Images {
    pub fn new(registry: &str, tag: &str) -> Result<Self, ImageError> {
        let registry = registry.trim_end_matches('/');
        if !is_repository(registry) {
            return Err(ImageError::Registry(registry.to_owned()));
        }
        if !is_tag(tag) {
            return Err(ImageError::Tag(tag.to_owned()));
        }
        Ok(Self {
            registry: registry.to_owned(),
            tag: tag.to_owned(),
            pinned: BTreeMap::new(),
            registrar: CSI_REGISTRAR_IMAGE.to_owned(),
        })
    }

    /// These images with `reference` as the CSI node-driver-registrar: `REPOSITORY:TAG` or
    /// `REPOSITORY@sha256:<64 hex>` (an untagged name would mean `:latest`, which moves).
    pub fn with_registrar(mut self, reference: &str) -> Result<Self, ImageError> {
        let refused = || ImageError::Registrar(reference.to_owned());
        let repository = repository_of(reference).ok_or_else(refused)?;
        let rest = &reference[repository.len()..];
        let ok = match (rest.strip_prefix(':'), rest.strip_prefix('@')) {
            (Some(tag), _) => is_tag(tag),
            (_, Some(digest)) => is_sha256_digest(digest),
            _ => false,
        };
        if !ok {
            return Err(refused());
        }
        self.registrar = reference.to_owned();
        Ok(self)
    }

    /// Pins `components` to the digests of `file`: each becomes `REPOSITORY@sha256:...`, the
    /// repository being the file's, or `REGISTRY/lanyard-<component>` with `registry`.
    /// Refused when the file lacks one of them.
    pub fn pinned(
        file: &DigestFile,
        registry: Option<&str>,
        components: &[&str],
    ) -> Result<Self, ImageError> {
        let mut images = match registry {
            Some(registry) => Self::new(registry, VERSION)?,
            None => Self::default(),
        };
        for &component in components {
            let name = format!("lanyard-{component}");
            let entry = file
                .images
                .get(&name)
                .ok_or_else(|| ImageError::MissingImage {
                    path: file.path.clone(),
                    image: name.clone(),
                    listed: if file.images.is_empty() {
                        "none".to_owned()
                    } else {
                        file.images.keys().cloned().collect::<Vec<_>>().join(", ")
                    },
                })?;
            let repository = match registry {
                Some(_) => format!("{}/{name}", images.registry),
                None => entry.repository.clone(),
            };
            images.pinned.insert(
                component.to_owned(),
                Pinned {
                    repository,
                    digest: entry.digest.clone(),
                },
            );
        }
        Ok(images)
    }

    /// `REGISTRY/lanyard-<component>:TAG`, or `REPOSITORY@sha256:...` when pinned.
    pub fn image(&self, component: &str) -> String {
        match self.pinned.get(component) {
            Some(p) => format!("{}@{}", p.repository, p.digest),
            None => format!("{}/lanyard-{component}:{}", self.registry, self.tag),
        }
    }

    pub fn server(&self) -> String {
        self.image("server")
    }
    pub fn agent(&self) -> String {
        self.image("agent")
    }
    pub fn proxy(&self) -> String {
        self.image("proxy")
    }
    /// The redirect init container: `lanyard-redirect` and iptables (`deploy/images/build`).
    pub fn proxy_init(&self) -> String {
        self.image("proxy-init")
    }
    /// The CNI plugin's installer DaemonSet (`lanyard install --cni`): `lanyard-cni`.
    pub fn cni(&self) -> String {
        self.image("cni")
    }
    /// The upstream CSI node-driver-registrar sidecar of the agent DaemonSet.
    pub fn csi_registrar(&self) -> &str {
        &self.registrar
    }

    /// Every Lanyard image, in [`COMPONENTS`] order: the first lines `lanyard images` prints.
    pub fn all(&self) -> Vec<String> {
        COMPONENTS.iter().map(|c| self.image(c)).collect()
    }

    /// The images a cluster runs that are not Lanyard's: (reference, what it is). `lanyard
    /// images` prints them after [`Images::all`] and says on stderr that they are upstream's.
    pub fn upstream(&self) -> Vec<(String, &'static str)> {
        vec![(
            self.registrar.clone(),
            "the CSI node-driver-registrar (Kubernetes SIG Storage)",
        )]
    }
}

/// The reference grammar's tag rule.
fn is_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// A registry/repository path: lowercase letters, digits, `._-/:` (a registry port).
fn is_repository(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 200
        && !text.starts_with('/')
        && !text.ends_with('/')
        && !text.contains("//")
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/:".contains(&b))
}

/// One image of a digest file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestEntry {
    /// The reference's repository, without tag or digest.
    pub repository: String,
    /// `sha256:<64 lowercase hex>`.
    pub digest: String,
}

/// A digest file as `deploy/images/build` writes it, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestFile {
    pub path: PathBuf,
    /// The lanyard version whose images these are.
    pub version: String,
    pub revision: Option<String>,
    /// `lanyard-<component>` -> entry.
    pub images: BTreeMap<String, DigestEntry>,
}

#[derive(serde::Deserialize)]
struct RawFile {
    version: String,
    #[serde(default)]
    revision: Option<String>,
    images: BTreeMap<String, RawEntry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    reference: String,
    digest: String,
}

impl DigestFile {
    /// Reads and checks `path`: JSON of the agreed shape, every digest `sha256:` and 64
    /// lowercase hex digits, every reference naming its own image's repository.
    pub fn read(path: &Path) -> Result<Self, ImageError> {
        let read_error = |source| ImageError::DigestFileRead {
            path: path.to_owned(),
            source,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_DIGEST_FILE_BYTES + 1).read_to_string(&mut text))
            .map_err(read_error)?;
        if text.len() as u64 > MAX_DIGEST_FILE_BYTES {
            return Err(ImageError::DigestFileFormat {
                path: path.to_owned(),
                message: format!("larger than {MAX_DIGEST_FILE_BYTES} bytes"),
            });
        }
        Self::parse(path, &text)
    }

    /// Checks the text of a digest file; `path` is for the messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ImageError> {
        let raw: RawFile =
            serde_json::from_str(text).map_err(|e| ImageError::DigestFileFormat {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        let mut images = BTreeMap::new();
        for (name, entry) in raw.images {
            if !is_sha256_digest(&entry.digest) {
                return Err(ImageError::Digest {
                    path: path.to_owned(),
                    image: name,
                    digest: entry.digest,
                });
            }
            let repository = repository_of(&entry.reference)
                .filter(|repo| repo.rsplit('/').next() == Some(name.as_str()))
                .ok_or_else(|| ImageError::Reference {
                    path: path.to_owned(),
                    image: name.clone(),
                    reference: entry.reference.clone(),
                })?;
            images.insert(
                name,
                DigestEntry {
                    repository: repository.to_owned(),
                    digest: entry.digest,
                },
            );
        }
        Ok(Self {
            path: path.to_owned(),
            version: raw.version,
            revision: raw.revision,
            images,
        })
    }

    /// Refuses images of another lanyard version than `ours`.
    pub fn check_version(&self, ours: &str) -> Result<(), ImageError> {
        if self.version == ours {
            return Ok(());
        }
        Err(ImageError::Version {
            path: self.path.clone(),
            file: self.version.clone(),
            ours: ours.to_owned(),
        })
    }
}

fn is_sha256_digest(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The repository of `REPOSITORY[:TAG][@DIGEST]` (a `:` before the last `/` is a registry
/// port, not a tag).
fn repository_of(reference: &str) -> Option<&str> {
    let without_digest = reference.split_once('@').map_or(reference, |(r, _)| r);
    let last_slash = without_digest.rfind('/').unwrap_or(0);
    let repository = match without_digest[last_slash..].rfind(':') {
        Some(i) => &without_digest[..last_slash + i],
        None => without_digest,
    };
    is_repository(repository).then_some(repository)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn repositories_of_references() {
        for (reference, repository) in [
            (
                "ghcr.io/lanyard-dev/lanyard-server:0.1.0",
                Some("ghcr.io/lanyard-dev/lanyard-server"),
            ),
            (
                "localhost:5000/x/lanyard-agent:v1",
                Some("localhost:5000/x/lanyard-agent"),
            ),
            (
                "localhost:5000/x/lanyard-agent",
                Some("localhost:5000/x/lanyard-agent"),
            ),
            (
                &format!("r.io/lanyard-proxy@{D1}"),
                Some("r.io/lanyard-proxy"),
            ),
            ("Upper/lanyard-proxy:1", None),
            ("", None),
        ] {
            assert_eq!(repository_of(reference), repository, "{reference}");
        }
    }

    #[test]
    fn digests_are_sha256_and_64_lowercase_hex() {
        assert!(is_sha256_digest(D1));
        assert!(!is_sha256_digest(&D1.to_uppercase()));
        assert!(!is_sha256_digest(&D1.replace("sha256:", "sha512:")));
        assert!(!is_sha256_digest(&D1[..D1.len() - 1]));
        assert!(!is_sha256_digest(&format!("{D1}1")));
        assert!(!is_sha256_digest(&D1.replacen('1', "g", 1)));
    }

    #[test]
    fn unpinned_and_pinned_references() {
        let file = DigestFile::parse(
            Path::new("d.json"),
            &format!(
                r#"{{"version":"{VERSION}","images":{{"lanyard-server":{{"reference":"reg.local:5000/a/lanyard-server:{VERSION}","digest":"{D1}"}}}}}}"#
            ),
        )
        .unwrap();
        let pinned = Images::pinned(&file, None, &["server"]).unwrap();
        assert_eq!(
            pinned.server(),
            format!("reg.local:5000/a/lanyard-server@{D1}")
        );
        let moved = Images::pinned(&file, Some("mirror.example/b/"), &["server"]).unwrap();
        assert_eq!(
            moved.server(),
            format!("mirror.example/b/lanyard-server@{D1}")
        );
        let err = Images::pinned(&file, None, &["server", "agent"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--image-digests d.json: no entry for lanyard-agent, which this command needs; the file lists lanyard-server"
        );
        assert_eq!(
            Images::default().agent(),
            format!("ghcr.io/lanyard-dev/lanyard-agent:{VERSION}")
        );
    }

    #[test]
    fn the_registrar_is_upstreams_unless_replaced_by_a_tag_or_digest_reference() {
        let images = Images::default();
        assert_eq!(images.csi_registrar(), CSI_REGISTRAR_IMAGE);
        assert_eq!(images.upstream()[0].0, CSI_REGISTRAR_IMAGE);
        assert!(!images.all().iter().any(|i| i == CSI_REGISTRAR_IMAGE));
        for good in [
            "mirror.local:5000/k8s/csi-node-driver-registrar:v2.13.0",
            &format!("registry.k8s.io/sig-storage/csi-node-driver-registrar@{D1}"),
        ] {
            let replaced = Images::default().with_registrar(good).unwrap();
            assert_eq!(replaced.csi_registrar(), good);
            assert_eq!(replaced.agent(), images.agent());
        }
        for bad in [
            "",
            "registry.k8s.io/sig-storage/csi-node-driver-registrar",
            "registry.k8s.io/sig-storage/csi-node-driver-registrar:",
            "registry.k8s.io/sig-storage/csi-node-driver-registrar@sha256:abc",
            "Registry.k8s.io/x:v1",
            "x:v1 --privileged",
        ] {
            let err = Images::default().with_registrar(bad).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&format!("--csi-registrar-image {bad:?}: ")),
                "{err}"
            );
        }
    }
}
