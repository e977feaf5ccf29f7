//! Container image references for the manifests `lanyard install` and `lanyard inject`
//! print: `REGISTRY/lanyard-<component>:TAG`.

/// Default registry prefix.
pub const DEFAULT_REGISTRY: &str = "ghcr.io/lanyard-dev";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("--image-registry {0:?}: give a registry/repository prefix such as ghcr.io/acme")]
    Registry(String),
    #[error(
        "--image-tag {0:?}: letters, digits, '_', '.', '-', at most 128, not starting with '.' or '-'"
    )]
    Tag(String),
}

/// Where the images come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Images {
    registry: String,
    tag: String,
}

impl Default for Images {
    fn default() -> Self {
        Self {
            registry: DEFAULT_REGISTRY.to_owned(),
            tag: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

impl Images {
    pub fn new(registry: &str, tag: &str) -> Result<Self, ImageError> {
        let registry = registry.trim_end_matches('/');
        let registry_ok = !registry.is_empty()
            && registry.len() <= 200
            && registry
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/:".contains(&b));
        if !registry_ok {
            return Err(ImageError::Registry(registry.to_owned()));
        }
        // The reference grammar's tag rule.
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !tag_ok {
            return Err(ImageError::Tag(tag.to_owned()));
        }
        Ok(Self {
            registry: registry.to_owned(),
            tag: tag.to_owned(),
        })
    }

    /// `REGISTRY/lanyard-<component>:TAG`.
    pub fn image(&self, component: &str) -> String {
        format!("{}/lanyard-{component}:{}", self.registry, self.tag)
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
    /// POSIX sh and iptables: runs the redirect script (`deploy/iptables/Dockerfile`).
    pub fn proxy_init(&self) -> String {
        self.image("proxy-init")
    }
}
