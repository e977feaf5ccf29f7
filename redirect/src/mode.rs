//! [`RedirectMode`]: which mechanism installs a pod's redirect rules. One type for every side
//! that names it: `lanyard install` (the cluster-wide `lanyard-config`), `lanyard inject` (the
//! pod's [`crate::REDIRECT_ANNOTATION`]) and the CNI plugin (which acts on [`RedirectMode::Cni`]
//! pods only). Its text is the annotation's and the ConfigMap's value.

use std::fmt;
use std::str::FromStr;

use crate::{REDIRECT_CNI, REDIRECT_INIT};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RedirectMode {
    /// The node's `lanyard-cni` plugin, in the pod's network namespace; the pod itself needs no
    /// privilege (`lanyard install --cni`).
    Cni,
    /// The `lanyard-init` init container, running `lanyard-redirect` with NET_ADMIN and NET_RAW
    /// (Pod Security `privileged`); needs no node plugin.
    #[default]
    Init,
}

impl fmt::Display for RedirectMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RedirectMode::Cni => REDIRECT_CNI,
            RedirectMode::Init => REDIRECT_INIT,
        })
    }
}

/// A value that names no [`RedirectMode`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a redirect mode: give {REDIRECT_CNI} or {REDIRECT_INIT}")]
pub struct UnknownRedirectMode(pub String);

impl FromStr for RedirectMode {
    type Err = UnknownRedirectMode;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            REDIRECT_CNI => Ok(RedirectMode::Cni),
            REDIRECT_INIT => Ok(RedirectMode::Init),
            other => Err(UnknownRedirectMode(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_anything_else_is_refused() {
        for mode in [RedirectMode::Cni, RedirectMode::Init] {
            assert_eq!(mode.to_string().parse::<RedirectMode>(), Ok(mode));
        }
        assert_eq!(RedirectMode::Cni.to_string(), "cni");
        assert_eq!(
            "CNI".parse::<RedirectMode>().unwrap_err().to_string(),
            "\"CNI\" is not a redirect mode: give cni or init"
        );
    }
}
