//! Where the agent's socket is: the one parser of Workload API endpoint addresses, with the
//! `SPIFFE_ENDPOINT_SOCKET` rules every Lanyard client follows.
//!
//! Accepted: `unix:///abs/path`, `unix:/abs/path` and a plain absolute path. Refused, each
//! with a message saying what to write instead: a relative path (it would depend on the
//! caller's working directory), `unix://host/...` (a host is not a path), `tcp://` (Lanyard's
//! clients speak to the agent's Unix socket only) and an empty value.

use std::path::PathBuf;

pub use lanyard_proto::SPIFFE_ENDPOINT_SOCKET;

/// The agent's socket when nothing else says where it is.
pub const DEFAULT_SOCKET: &str = "/run/lanyard/sockets/agent.sock";

/// Why an endpoint address was refused. Each message quotes the value and says what to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("the socket address is empty; give an absolute path or unix:///abs/path")]
    Empty,
    #[error(
        "{0:?}: the socket path must be absolute (e.g. /run/lanyard/sockets/agent.sock or unix:///run/lanyard/sockets/agent.sock)"
    )]
    Relative(String),
    #[error("{0:?}: a unix:// URI needs an absolute path and no host (unix:///abs/path)")]
    UnixHost(String),
    #[error(
        "{0:?}: only Unix socket endpoints are supported (an absolute path or unix:///abs/path)"
    )]
    NotUnix(String),
    #[error("{source} (from {origin})")]
    From {
        origin: &'static str,
        source: Box<EndpointError>,
    },
}

/// Parses one endpoint address into the socket's path.
pub fn parse(value: &str) -> Result<PathBuf, EndpointError> {
    if value.is_empty() {
        return Err(EndpointError::Empty);
    }
    let path = if let Some(rest) = value.strip_prefix("unix://") {
        if !rest.starts_with('/') {
            return Err(EndpointError::UnixHost(value.to_owned()));
        }
        rest
    } else if let Some(rest) = value.strip_prefix("unix:") {
        rest
    } else if value.contains("://") || value.starts_with("tcp:") {
        return Err(EndpointError::NotUnix(value.to_owned()));
    } else {
        value
    };
    if path.is_empty() {
        return Err(EndpointError::Empty);
    }
    if !path.starts_with('/') {
        return Err(EndpointError::Relative(value.to_owned()));
    }
    Ok(PathBuf::from(path))
}

/// The socket from `flag` (a command-line option, or its environment variable through clap),
/// else [`SPIFFE_ENDPOINT_SOCKET`], else [`DEFAULT_SOCKET`].
pub fn socket_path(flag: Option<&str>) -> Result<PathBuf, EndpointError> {
    socket_path_from(flag, std::env::var(SPIFFE_ENDPOINT_SOCKET).ok().as_deref())
}

/// [`socket_path`] with the value of `SPIFFE_ENDPOINT_SOCKET` given (for tests and callers
/// that read the environment themselves).
pub fn socket_path_from(flag: Option<&str>, env: Option<&str>) -> Result<PathBuf, EndpointError> {
    if let Some(value) = flag {
        return parse(value);
    }
    match env {
        Some(value) if !value.is_empty() => parse(value).map_err(|e| EndpointError::From {
            origin: SPIFFE_ENDPOINT_SOCKET,
            source: Box::new(e),
        }),
        _ => Ok(PathBuf::from(DEFAULT_SOCKET)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms() {
        for (value, path) in [
            ("/a/b.sock", "/a/b.sock"),
            ("unix:///a/b.sock", "/a/b.sock"),
            ("unix:/a/b.sock", "/a/b.sock"),
        ] {
            assert_eq!(parse(value).unwrap(), PathBuf::from(path), "{value}");
        }
    }

    #[test]
    fn refused_forms_say_why() {
        assert_eq!(parse(""), Err(EndpointError::Empty));
        assert_eq!(parse("unix:"), Err(EndpointError::Empty));
        for relative in ["relative.sock", "unix:relative.sock", "./a.sock"] {
            let err = parse(relative).unwrap_err();
            assert!(matches!(err, EndpointError::Relative(_)), "{relative}");
            assert!(err.to_string().contains("must be absolute"), "{err}");
        }
        assert!(matches!(
            parse("unix://host/a"),
            Err(EndpointError::UnixHost(_))
        ));
        for other in ["tcp://127.0.0.1:1", "tcp:127.0.0.1:1", "http://x/y"] {
            let err = parse(other).unwrap_err();
            assert!(matches!(err, EndpointError::NotUnix(_)), "{other}");
            assert!(err.to_string().contains("only Unix socket"), "{err}");
        }
    }

    #[test]
    fn flag_then_environment_then_default() {
        assert_eq!(
            socket_path_from(Some("/flag.sock"), Some("/env.sock")).unwrap(),
            PathBuf::from("/flag.sock")
        );
        assert_eq!(
            socket_path_from(None, Some("unix:///env.sock")).unwrap(),
            PathBuf::from("/env.sock")
        );
        assert_eq!(
            socket_path_from(None, Some("")).unwrap(),
            PathBuf::from(DEFAULT_SOCKET)
        );
        assert_eq!(
            socket_path_from(None, None).unwrap(),
            PathBuf::from(DEFAULT_SOCKET)
        );
        let err = socket_path_from(None, Some("env.sock")).unwrap_err();
        assert!(
            err.to_string().ends_with("(from SPIFFE_ENDPOINT_SOCKET)"),
            "{err}"
        );
    }
}
