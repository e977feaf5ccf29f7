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
    parse(path, &read_text(path)?)
}

/// The file's text: at most [`MAX_CONFIG_FILE_BYTES`], UTF-8, read from one open file so the
/// bound holds even while the file grows (a reload may read it mid-write).
pub fn read_text(path: &Path) -> Result<String, ConfigFileError> {
    use std::io::Read;
    let read_err = |source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut text = String::new();
    file.take(MAX_CONFIG_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_CONFIG_FILE_BYTES {
        return Err(ConfigFileError::TooLarge(path.to_owned()));
    }
    Ok(text)
}

/// Parses `text`, read from `path` (named in the error), as `T`.
pub fn parse<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, ConfigFileError> {
    toml::from_str(text).map_err(|source| ConfigFileError::Parse {
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
