//! The `--config` TOML file. Every daemon merges flags over `LANYARD_*` variables over this
//! file; this module reads the file and nothing else, so each daemon keeps its own options type.

use std::path::{Path, PathBuf};

/// The config file is small; refuse anything that is clearly not one.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;

/// Why the config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {0} is larger than 1 MiB")]
    TooLarge(PathBuf),
    #[error("parsing config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
}

/// Reads and parses `path` as `T` (which should `deny_unknown_fields`, so a misspelt key is an
/// error rather than silently ignored).
pub fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigFileError> {
    let read_err = |source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > MAX_CONFIG_FILE_BYTES {
        return Err(ConfigFileError::TooLarge(path.to_owned()));
    }
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    toml::from_str(&text).map_err(|source| ConfigFileError::Parse {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Options {
        name: Option<String>,
    }

    #[test]
    fn reads_and_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "name = \"x\"\n").unwrap();
        assert_eq!(
            read::<Options>(&path).unwrap(),
            Options {
                name: Some("x".into())
            }
        );
        std::fs::write(&path, "nmae = \"x\"\n").unwrap();
        assert!(matches!(
            read::<Options>(&path),
            Err(ConfigFileError::Parse { .. })
        ));
        std::fs::write(&path, vec![b' '; (MAX_CONFIG_FILE_BYTES + 1) as usize]).unwrap();
        assert!(matches!(
            read::<Options>(&path),
            Err(ConfigFileError::TooLarge(_))
        ));
        let missing = dir.path().join("none.toml");
        assert!(matches!(
            read::<Options>(&missing),
            Err(ConfigFileError::Read { .. })
        ));
    }
}
