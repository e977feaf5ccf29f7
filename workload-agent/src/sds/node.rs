//! How a validation context is written for the Envoy asking, decided from its `Node` as
//! SPIRE's agent decides it: the SPIFFE certificate validator
//! (`envoy.tls.cert_validator.spiffe`, Envoy 1.18 and later) unless the node metadata says
//! `disable_spiffe_cert_validation: true` (a bool, or a string Go's `strconv.ParseBool`
//! reads) or the node does not tell an Envoy version of at least 1.18
//! (`user_agent_build_version`); then a plain `trusted_ca`.
//!
//! SPIRE also has an agent-wide `disable_spiffe_cert_validation` setting (default `false`),
//! which the node metadata overrides; Lanyard has no such flag: the default is SPIRE's.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
use envoy_types::pb::google::protobuf::value::Kind;

/// The node metadata key that turns the SPIFFE validator off (or on) for one Envoy.
pub const DISABLE_SPIFFE_CERT_VALIDATION: &str = "disable_spiffe_cert_validation";

/// The first Envoy release with the SPIFFE certificate validator, as SPIRE checks it.
const SPIFFE_VALIDATOR_SINCE: (u32, u32) = (1, 18);

/// How a single trust domain's validation context is written. `Display` is a metric and log
/// label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValidationMode {
    /// `custom_validator_config` = the SPIFFE validator with that one trust domain's bundle.
    SpiffeValidator,
    /// `trusted_ca` = the bundle's CA certificates in PEM.
    TrustedCa,
}

impl std::fmt::Display for ValidationMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::SpiffeValidator => "spiffe_validator",
            Self::TrustedCa => "trusted_ca",
        })
    }
}

impl ValidationMode {
    /// The mode for requests from `node` (`None`: the stream's node is not known).
    pub fn of(node: Option<&Node>) -> Self {
        let Some(node) = node else {
            return Self::TrustedCa;
        };
        if disabled_by_metadata(node) == Some(true) || !supports_spiffe_validator(node) {
            Self::TrustedCa
        } else {
            Self::SpiffeValidator
        }
    }
}

/// The node's `disable_spiffe_cert_validation`, when set to a value that reads as a bool; any
/// other value is ignored, as SPIRE ignores it.
fn disabled_by_metadata(node: &Node) -> Option<bool> {
    let value = node
        .metadata
        .as_ref()?
        .fields
        .get(DISABLE_SPIFFE_CERT_VALIDATION)?;
    match value.kind.as_ref()? {
        Kind::BoolValue(b) => Some(*b),
        Kind::StringValue(s) => parse_go_bool(s),
        _ => None,
    }
}

/// Go's `strconv.ParseBool`, which SPIRE applies to a string value.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Whether the node says it is an Envoy of at least 1.18.
fn supports_spiffe_validator(node: &Node) -> bool {
    let Some(UserAgentVersionType::UserAgentBuildVersion(build)) = &node.user_agent_version_type
    else {
        return false;
    };
    build
        .version
        .as_ref()
        .is_some_and(|v| (v.major_number, v.minor_number) >= SPIFFE_VALIDATOR_SINCE)
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::BuildVersion;
    use envoy_types::pb::envoy::r#type::v3::SemanticVersion;
    use envoy_types::pb::google::protobuf::{Struct, Value};

    use super::*;

    fn envoy(major: u32, minor: u32, disable: Option<Kind>) -> Node {
        let metadata = disable.map(|kind| Struct {
            fields: [(
                DISABLE_SPIFFE_CERT_VALIDATION.to_owned(),
                Value { kind: Some(kind) },
            )]
            .into(),
        });
        Node {
            metadata,
            user_agent_name: "envoy".into(),
            user_agent_version_type: Some(UserAgentVersionType::UserAgentBuildVersion(
                BuildVersion {
                    version: Some(SemanticVersion {
                        major_number: major,
                        minor_number: minor,
                        patch: 0,
                    }),
                    metadata: None,
                },
            )),
            ..Node::default()
        }
    }

    #[test]
    fn recent_envoy_gets_the_spiffe_validator() {
        use ValidationMode::*;
        assert_eq!(
            ValidationMode::of(Some(&envoy(1, 18, None))),
            SpiffeValidator
        );
        assert_eq!(
            ValidationMode::of(Some(&envoy(1, 31, None))),
            SpiffeValidator
        );
        assert_eq!(
            ValidationMode::of(Some(&envoy(2, 0, None))),
            SpiffeValidator
        );
        assert_eq!(ValidationMode::of(Some(&envoy(1, 17, None))), TrustedCa);
        assert_eq!(ValidationMode::of(Some(&Node::default())), TrustedCa);
        assert_eq!(ValidationMode::of(None), TrustedCa);
    }

    #[test]
    fn node_metadata_switches_it_off_and_bad_values_are_ignored() {
        use ValidationMode::*;
        let off = |kind| ValidationMode::of(Some(&envoy(1, 31, Some(kind))));
        assert_eq!(off(Kind::BoolValue(true)), TrustedCa);
        assert_eq!(off(Kind::StringValue("T".into())), TrustedCa);
        assert_eq!(off(Kind::BoolValue(false)), SpiffeValidator);
        assert_eq!(off(Kind::StringValue("0".into())), SpiffeValidator);
        assert_eq!(off(Kind::StringValue("yes".into())), SpiffeValidator);
        assert_eq!(off(Kind::NumberValue(1.0)), SpiffeValidator);
    }

    #[test]
    fn labels() {
        assert_eq!(
            ValidationMode::SpiffeValidator.to_string(),
            "spiffe_validator"
        );
        assert_eq!(ValidationMode::TrustedCa.to_string(), "trusted_ca");
    }
}
