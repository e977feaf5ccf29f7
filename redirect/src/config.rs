//! What the rules are parameterised by: the proxy's uid and ports and the ports left alone,
//! read from the same environment variables the earlier shell script read, with the same
//! defaults (an unset or empty variable means the default).

use std::ffi::OsString;

use crate::{
    ANNOTATION_PROXY_INBOUND_PORT, ANNOTATION_PROXY_OUTBOUND_PORT, ANNOTATION_PROXY_UID,
    ANNOTATION_SKIP_INBOUND_PORTS, ANNOTATION_SKIP_OUTBOUND_PORTS, ENV_PROXY_INBOUND_PORT,
    ENV_PROXY_OUTBOUND_PORT, ENV_PROXY_UID, ENV_SKIP_INBOUND_PORTS, ENV_SKIP_OUTBOUND_PORTS,
    MAX_SKIP_PORTS, PROXY_INBOUND_PORT, PROXY_OUTBOUND_PORT, PROXY_UID,
};

/// The parameters of one pod's redirect rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedirectConfig {
    /// The proxy's uid: its own connections are never redirected.
    pub proxy_uid: u32,
    /// Where inbound TCP connections are redirected (the proxy's transparent inbound).
    pub inbound_port: u16,
    /// Where outbound TCP connections are redirected (the proxy's transparent outbound).
    pub outbound_port: u16,
    /// Inbound destination ports left alone, in rule order.
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone, in rule order.
    pub skip_outbound_ports: Vec<u16>,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        Self {
            proxy_uid: PROXY_UID,
            inbound_port: PROXY_INBOUND_PORT,
            outbound_port: PROXY_OUTBOUND_PORT,
            skip_inbound_ports: Vec::new(),
            skip_outbound_ports: Vec::new(),
        }
    }
}

/// Why a configuration was refused; each names the variable at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}: not valid UTF-8")]
    NotUnicode { var: &'static str },
    #[error("{var}: not a uid: {value:?} (digits only, at most 4294967295)")]
    NotAUid { var: &'static str, value: String },
    #[error("{var}: not a port: {value:?} (a number from 1 to 65535)")]
    NotAPort { var: &'static str, value: String },
    #[error("{var}: {count} ports; at most {MAX_SKIP_PORTS}")]
    TooManyPorts { var: &'static str, count: usize },
    #[error(
        "{ENV_PROXY_INBOUND_PORT} and {ENV_PROXY_OUTBOUND_PORT} are both {port}: the proxy's \
         inbound and outbound listeners need a port each"
    )]
    SamePort { port: u16 },
}

impl RedirectConfig {
    /// Reads the process environment ([`crate::ENV_PROXY_UID`] and the rest).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(std::env::var_os)
    }

    /// Reads each variable through `lookup` (`None`: unset). Unset or empty means the
    /// default; lists are separated by commas (or whitespace, as the shell script split
    /// them) and empty items are ignored.
    pub fn from_lookup(
        lookup: impl FnMut(&'static str) -> Option<OsString>,
    ) -> Result<Self, ConfigError> {
        Self::from_named(&ENV_NAMES, lookup)
    }

    /// Reads a pod's annotations ([`crate::ANNOTATION_PROXY_UID`] and the rest), as the CNI
    /// plugin does: the same values and rules as the environment, and an error names the
    /// annotation at fault.
    pub fn from_annotations<'a>(
        mut annotation: impl FnMut(&str) -> Option<&'a str>,
    ) -> Result<Self, ConfigError> {
        Self::from_named(&ANNOTATION_NAMES, |key| annotation(key).map(OsString::from))
    }

    /// The annotations that make [`RedirectConfig::from_annotations`] read back this
    /// configuration, for a pod template.
    pub fn to_annotations(&self) -> [(&'static str, String); 5] {
        self.to_named(&ANNOTATION_NAMES)
    }

    fn from_named(
        names: &Names,
        mut lookup: impl FnMut(&'static str) -> Option<OsString>,
    ) -> Result<Self, ConfigError> {
        let mut text = |var: &'static str| -> Result<Option<String>, ConfigError> {
            match lookup(var) {
                None => Ok(None),
                Some(value) => value
                    .into_string()
                    .map(|v| (!v.is_empty()).then_some(v))
                    .map_err(|_| ConfigError::NotUnicode { var }),
            }
        };
        let defaults = Self::default();
        let config = Self {
            proxy_uid: match text(names.proxy_uid)? {
                Some(v) => parse_uid(names.proxy_uid, &v)?,
                None => defaults.proxy_uid,
            },
            inbound_port: match text(names.inbound_port)? {
                Some(v) => parse_port(names.inbound_port, &v)?,
                None => defaults.inbound_port,
            },
            outbound_port: match text(names.outbound_port)? {
                Some(v) => parse_port(names.outbound_port, &v)?,
                None => defaults.outbound_port,
            },
            skip_inbound_ports: parse_ports(
                names.skip_inbound_ports,
                &text(names.skip_inbound_ports)?.unwrap_or_default(),
            )?,
            skip_outbound_ports: parse_ports(
                names.skip_outbound_ports,
                &text(names.skip_outbound_ports)?.unwrap_or_default(),
            )?,
        };
        config.validate()?;
        Ok(config)
    }

    /// The checks a configuration built in code needs too: no port 0, bounded skip lists,
    /// distinct inbound and outbound ports.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let zero = |var| ConfigError::NotAPort {
            var,
            value: "0".into(),
        };
        if self.inbound_port == 0 {
            return Err(zero(ENV_PROXY_INBOUND_PORT));
        }
        if self.outbound_port == 0 {
            return Err(zero(ENV_PROXY_OUTBOUND_PORT));
        }
        if self.inbound_port == self.outbound_port {
            return Err(ConfigError::SamePort {
                port: self.inbound_port,
            });
        }
        for (var, ports) in [
            (ENV_SKIP_INBOUND_PORTS, &self.skip_inbound_ports),
            (ENV_SKIP_OUTBOUND_PORTS, &self.skip_outbound_ports),
        ] {
            if ports.len() > MAX_SKIP_PORTS {
                return Err(ConfigError::TooManyPorts {
                    var,
                    count: ports.len(),
                });
            }
            if ports.contains(&0) {
                return Err(zero(var));
            }
        }
        Ok(())
    }

    /// The variables that make [`RedirectConfig::from_env`] read back this configuration, for
    /// a container's `env`.
    pub fn to_env(&self) -> [(&'static str, String); 5] {
        self.to_named(&ENV_NAMES)
    }

    /// The values under `names`, as [`RedirectConfig::from_named`] reads them back.
    fn to_named(&self, names: &Names) -> [(&'static str, String); 5] {
        [
            (names.proxy_uid, self.proxy_uid.to_string()),
            (names.inbound_port, self.inbound_port.to_string()),
            (names.outbound_port, self.outbound_port.to_string()),
            (names.skip_inbound_ports, join(&self.skip_inbound_ports)),
            (names.skip_outbound_ports, join(&self.skip_outbound_ports)),
        ]
    }
}

/// The five names a configuration is read under: environment variables or annotations.
struct Names {
    proxy_uid: &'static str,
    inbound_port: &'static str,
    outbound_port: &'static str,
    skip_inbound_ports: &'static str,
    skip_outbound_ports: &'static str,
}

const ENV_NAMES: Names = Names {
    proxy_uid: ENV_PROXY_UID,
    inbound_port: ENV_PROXY_INBOUND_PORT,
    outbound_port: ENV_PROXY_OUTBOUND_PORT,
    skip_inbound_ports: ENV_SKIP_INBOUND_PORTS,
    skip_outbound_ports: ENV_SKIP_OUTBOUND_PORTS,
};

const ANNOTATION_NAMES: Names = Names {
    proxy_uid: ANNOTATION_PROXY_UID,
    inbound_port: ANNOTATION_PROXY_INBOUND_PORT,
    outbound_port: ANNOTATION_PROXY_OUTBOUND_PORT,
    skip_inbound_ports: ANNOTATION_SKIP_INBOUND_PORTS,
    skip_outbound_ports: ANNOTATION_SKIP_OUTBOUND_PORTS,
};

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// ASCII digits only: `str::parse` would also take a sign.
fn digits(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit())
}

fn parse_uid(var: &'static str, value: &str) -> Result<u32, ConfigError> {
    digits(value)
        .then(|| value.parse().ok())
        .flatten()
        .ok_or_else(|| ConfigError::NotAUid {
            var,
            value: value.into(),
        })
}

fn parse_port(var: &'static str, value: &str) -> Result<u16, ConfigError> {
    digits(value)
        .then(|| value.parse().ok())
        .flatten()
        .filter(|&port| port != 0)
        .ok_or_else(|| ConfigError::NotAPort {
            var,
            value: value.into(),
        })
}

fn parse_ports(var: &'static str, value: &str) -> Result<Vec<u16>, ConfigError> {
    let items: Vec<&str> = value
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|item| !item.is_empty())
        .collect();
    if items.len() > MAX_SKIP_PORTS {
        return Err(ConfigError::TooManyPorts {
            var,
            count: items.len(),
        });
    }
    items.iter().map(|item| parse_port(var, item)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<RedirectConfig, ConfigError> {
        RedirectConfig::from_lookup(|var| {
            vars.iter()
                .find(|(name, _)| *name == var)
                .map(|(_, value)| OsString::from(value))
        })
    }

    #[test]
    fn annotations_round_trip_and_errors_name_the_annotation() {
        let config = RedirectConfig {
            proxy_uid: 2200,
            inbound_port: 5143,
            outbound_port: 5140,
            skip_inbound_ports: vec![22, 8081],
            skip_outbound_ports: vec![5432],
        };
        let annotations = config.to_annotations();
        assert!(
            annotations
                .iter()
                .all(|(key, _)| key.starts_with("lanyard.dev/"))
        );
        let read = RedirectConfig::from_annotations(|key| {
            annotations
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.as_str())
        })
        .unwrap();
        assert_eq!(read, config);
        assert_eq!(
            RedirectConfig::from_annotations(|_| None).unwrap(),
            RedirectConfig::default()
        );
        let err = RedirectConfig::from_annotations(|key| {
            (key == crate::ANNOTATION_SKIP_OUTBOUND_PORTS).then_some("80,http")
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "lanyard.dev/skip-outbound-ports: not a port: \"http\" (a number from 1 to 65535)"
        );
    }

    #[test]
    fn unset_and_empty_variables_mean_the_defaults() {
        let defaults = RedirectConfig {
            proxy_uid: 2102,
            inbound_port: 4143,
            outbound_port: 4140,
            skip_inbound_ports: vec![],
            skip_outbound_ports: vec![],
        };
        assert_eq!(RedirectConfig::default(), defaults);
        assert_eq!(from(&[]).unwrap(), defaults);
        let empty = [
            ("PROXY_UID", ""),
            ("PROXY_INBOUND_PORT", ""),
            ("PROXY_OUTBOUND_PORT", ""),
            ("SKIP_INBOUND_PORTS", ""),
            ("SKIP_OUTBOUND_PORTS", ""),
        ];
        assert_eq!(from(&empty).unwrap(), defaults);
    }

    #[test]
    fn every_variable_is_read() {
        let config = from(&[
            ("PROXY_UID", "7"),
            ("PROXY_INBOUND_PORT", "15006"),
            ("PROXY_OUTBOUND_PORT", "15001"),
            ("SKIP_INBOUND_PORTS", "4143,4192, 8443 ,,9000,"),
            ("SKIP_OUTBOUND_PORTS", "5432 6379"),
        ])
        .unwrap();
        assert_eq!(
            config,
            RedirectConfig {
                proxy_uid: 7,
                inbound_port: 15006,
                outbound_port: 15001,
                skip_inbound_ports: vec![4143, 4192, 8443, 9000],
                skip_outbound_ports: vec![5432, 6379],
            }
        );
        // What to_env writes reads back as the same configuration.
        let env = config.to_env();
        let back = RedirectConfig::from_lookup(|var| {
            env.iter()
                .find(|(name, _)| *name == var)
                .map(|(_, value)| OsString::from(value))
        })
        .unwrap();
        assert_eq!(back, config);
        assert_eq!(env[3], ("SKIP_INBOUND_PORTS", "4143,4192,8443,9000".into()));
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        let cases: &[(&str, &str, &str)] = &[
            ("PROXY_UID", "root", "PROXY_UID: not a uid: \"root\""),
            ("PROXY_UID", "-1", "PROXY_UID: not a uid: \"-1\""),
            ("PROXY_UID", "+5", "PROXY_UID: not a uid: \"+5\""),
            ("PROXY_UID", "4294967296", "PROXY_UID: not a uid"),
            (
                "PROXY_INBOUND_PORT",
                "0",
                "PROXY_INBOUND_PORT: not a port: \"0\"",
            ),
            (
                "PROXY_OUTBOUND_PORT",
                "65536",
                "PROXY_OUTBOUND_PORT: not a port: \"65536\"",
            ),
            (
                "SKIP_INBOUND_PORTS",
                "80;reboot",
                "SKIP_INBOUND_PORTS: not a port: \"80;reboot\"",
            ),
            (
                "SKIP_OUTBOUND_PORTS",
                "443,http",
                "SKIP_OUTBOUND_PORTS: not a port: \"http\"",
            ),
            (
                "SKIP_OUTBOUND_PORTS",
                "0",
                "SKIP_OUTBOUND_PORTS: not a port",
            ),
            (
                "PROXY_OUTBOUND_PORT",
                "4143",
                "PROXY_INBOUND_PORT and PROXY_OUTBOUND_PORT are both 4143",
            ),
        ];
        for (var, value, expected) in cases {
            let err = from(&[(var, value)]).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{var}={value}: {err}");
        }
        let many = (1..=MAX_SKIP_PORTS as u16 + 1)
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            from(&[("SKIP_INBOUND_PORTS", &many)]).unwrap_err(),
            ConfigError::TooManyPorts {
                var: "SKIP_INBOUND_PORTS",
                count: MAX_SKIP_PORTS + 1
            }
        );
        let exactly = (1..=MAX_SKIP_PORTS as u16)
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert!(from(&[("SKIP_INBOUND_PORTS", &exactly)]).is_ok());
    }

    #[test]
    fn non_unicode_is_refused() {
        use std::os::unix::ffi::OsStringExt;
        let err = RedirectConfig::from_lookup(|var| {
            (var == "SKIP_OUTBOUND_PORTS").then(|| OsString::from_vec(vec![0xff]))
        })
        .unwrap_err();
        assert_eq!(
            err,
            ConfigError::NotUnicode {
                var: "SKIP_OUTBOUND_PORTS"
            }
        );
    }

    #[test]
    fn a_config_built_in_code_is_validated() {
        let ok = RedirectConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        let zero_skip = RedirectConfig {
            skip_outbound_ports: vec![443, 0],
            ..ok.clone()
        };
        assert!(matches!(
            zero_skip.validate(),
            Err(ConfigError::NotAPort {
                var: "SKIP_OUTBOUND_PORTS",
                ..
            })
        ));
        let zero_in = RedirectConfig {
            inbound_port: 0,
            ..ok.clone()
        };
        assert!(zero_in.validate().is_err());
        let too_many = RedirectConfig {
            skip_inbound_ports: vec![1; MAX_SKIP_PORTS + 1],
            ..ok
        };
        assert!(matches!(
            too_many.validate(),
            Err(ConfigError::TooManyPorts { .. })
        ));
    }
}
