//! Domain values (`lanyard-svid` SVIDs and bundles, JWT claims) to Workload API messages, in
//! the encodings `spec/workload-api.md` fixes: concatenated DER, PKCS#8 DER, JWT-only JWK Sets
//! keyed by trust domain ID, and claims as a `google.protobuf.Struct`. SVID hints come from the
//! entitlements, unique within each response ([`unique_hints`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use lanyard_proto::workload::{
    JwtBundlesResponse, ValidateJwtsvidResponse, X509BundlesResponse, X509svid, X509svidResponse,
};
use lanyard_svid::jwt::ValidatedJwt;
use lanyard_svid::{BundleSet, SpiffeId, X509Svid};
use prost_types::value::Kind;

use crate::identities::Entitlement;

/// The longest hint the Workload API allows, in bytes.
pub const MAX_HINT_LEN: usize = 1024;

/// Why a message could not be built from what the certificate manager handed over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// An SVID without its private key: the manager gave a peer's view, a bug.
    #[error("svid_without_key")]
    SvidWithoutKey { spiffe_id: String },
    /// No bundle (or an empty one) for an SVID's own trust domain: it could not be verified.
    #[error("no_own_bundle")]
    NoOwnBundle { trust_domain: String },
    /// A bundle's JWT authorities could not be written as a JWK Set.
    #[error("unencodable_jwks")]
    UnencodableJwks {
        trust_domain: String,
        reason: String,
    },
}

impl ConvertError {
    pub fn message(&self) -> String {
        match self {
            Self::SvidWithoutKey { spiffe_id } => {
                format!("the SVID for {spiffe_id} has no private key")
            }
            Self::NoOwnBundle { trust_domain } => {
                format!("no trust bundle for {trust_domain} yet")
            }
            Self::UnencodableJwks {
                trust_domain,
                reason,
            } => format!("the JWT bundle of {trust_domain} cannot be encoded: {reason}"),
        }
    }
}

/// The hints of a response's SVIDs, in order, as the Workload API allows them: each SVID's
/// entitlement's hint, except that one already given to an earlier SVID of the same response
/// is cleared (hints must be unique within a response; the first, the more default one, keeps
/// it), and so is one over [`MAX_HINT_LEN`]. Empty hints need not be unique.
pub fn unique_hints<'a>(hints: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut used = HashSet::new();
    hints
        .into_iter()
        .map(|hint| {
            if hint.is_empty() || hint.len() > MAX_HINT_LEN || !used.insert(hint) {
                String::new()
            } else {
                hint.to_owned()
            }
        })
        .collect()
}

/// The hint `entitlements` give `id` (empty when none names it).
fn hint_of<'a>(entitlements: &'a [Entitlement], id: &SpiffeId) -> &'a str {
    entitlements
        .iter()
        .find(|e| &e.spiffe_id == id)
        .map_or("", |e| e.hint.as_str())
}

/// The `X509SVIDResponse` for `svids` (first = default): each SVID with its chain, key, its
/// own trust domain's bundle and the hint its entitlement (in `entitlements`, matched by ID:
/// the manager may hand over fewer SVIDs than entitlements) carries; every other trust
/// domain's bundle of `bundles` (the caller's served set, so only the federated domains its
/// registrations name) in `federated_bundles`.
pub fn x509_svid_response(
    svids: &[Arc<X509Svid>],
    entitlements: &[Entitlement],
    bundles: &BundleSet,
) -> Result<X509svidResponse, ConvertError> {
    let hints = unique_hints(svids.iter().map(|s| hint_of(entitlements, s.spiffe_id())));
    let mut out = Vec::with_capacity(svids.len());
    for (svid, hint) in svids.iter().zip(hints) {
        let id = svid.spiffe_id();
        let key = svid
            .private_key_pkcs8()
            .ok_or_else(|| ConvertError::SvidWithoutKey {
                spiffe_id: id.to_string(),
            })?;
        let bundle = bundles
            .get(id.trust_domain())
            .map(|b| b.x509_authorities_der())
            .filter(|der| !der.is_empty())
            .ok_or_else(|| ConvertError::NoOwnBundle {
                trust_domain: id.trust_domain().id_string(),
            })?;
        out.push(X509svid {
            spiffe_id: id.to_string(),
            x509_svid: svid.concat_der(),
            x509_svid_key: key.to_vec(),
            bundle,
            hint,
        });
    }
    let own_domains: Vec<_> = svids.iter().map(|s| s.spiffe_id().trust_domain()).collect();
    let federated_bundles = bundles
        .iter()
        .filter(|b| !own_domains.contains(&b.trust_domain()))
        .map(|b| (b.trust_domain().id_string(), b.x509_authorities_der()))
        .filter(|(_, der)| !der.is_empty())
        .collect();
    Ok(X509svidResponse {
        svids: out,
        crl: Vec::new(),
        federated_bundles,
    })
}

/// Every trust domain's X.509 authorities in `bundles` (the caller's served set; domains with none are left out: an empty entry
/// would read as a bundle that trusts nothing).
pub fn x509_bundles_response(bundles: &BundleSet) -> X509BundlesResponse {
    X509BundlesResponse {
        crl: Vec::new(),
        bundles: bundles
            .iter()
            .map(|b| (b.trust_domain().id_string(), b.x509_authorities_der()))
            .filter(|(_, der)| !der.is_empty())
            .collect(),
    }
}

/// Every trust domain's JWT authorities in `bundles` (the caller's served set) as a JWT-only JWK Set (an empty `keys` list is kept:
/// it says the domain has no JWT keys).
pub fn jwt_bundles_response(bundles: &BundleSet) -> Result<JwtBundlesResponse, ConvertError> {
    let mut out = HashMap::new();
    for bundle in bundles.iter() {
        let document = bundle
            .to_jwt_jwks()
            .map_err(|e| ConvertError::UnencodableJwks {
                trust_domain: bundle.trust_domain().id_string(),
                reason: e.to_string(),
            })?;
        out.insert(bundle.trust_domain().id_string(), document.into_bytes());
    }
    Ok(JwtBundlesResponse { bundles: out })
}

/// A validated JWT-SVID's subject and claims.
pub fn validate_response(validated: &ValidatedJwt) -> ValidateJwtsvidResponse {
    ValidateJwtsvidResponse {
        spiffe_id: validated.spiffe_id.to_string(),
        claims: Some(json_object_to_struct(&validated.claims)),
    }
}

/// A JSON object as a protobuf `Struct` (numbers become doubles, as in every protobuf JSON
/// mapping).
pub fn json_object_to_struct(
    object: &serde_json::Map<String, serde_json::Value>,
) -> prost_types::Struct {
    prost_types::Struct {
        fields: object
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    }
}

fn json_to_value(value: &serde_json::Value) -> prost_types::Value {
    use serde_json::Value as J;
    let kind = match value {
        J::Null => Kind::NullValue(prost_types::NullValue::NullValue as i32),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        J::Object(map) => Kind::StructValue(json_object_to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_are_unique_within_a_response_first_kept() {
        let long = "h".repeat(MAX_HINT_LEN + 1);
        let max = "m".repeat(MAX_HINT_LEN);
        let got = unique_hints(["a", "", "a", "b", "", "a", &long, &max, "b"]);
        assert_eq!(got, ["a", "", "", "b", "", "", "", max.as_str(), ""]);
    }

    #[test]
    fn json_claims_become_a_struct() {
        let claims = serde_json::json!({
            "sub": "spiffe://example.org/web",
            "aud": ["a", "b"],
            "exp": 1_700_000_000,
            "nested": {"ok": true, "none": null},
        });
        let s = json_object_to_struct(claims.as_object().unwrap());
        let kind = |k: &str| s.fields[k].kind.clone().unwrap();
        assert_eq!(
            kind("sub"),
            Kind::StringValue("spiffe://example.org/web".into())
        );
        assert_eq!(kind("exp"), Kind::NumberValue(1_700_000_000.0));
        let Kind::ListValue(aud) = kind("aud") else {
            panic!("aud is not a list")
        };
        assert_eq!(aud.values.len(), 2);
        let Kind::StructValue(nested) = kind("nested") else {
            panic!("nested is not a struct")
        };
        assert_eq!(nested.fields["ok"].kind, Some(Kind::BoolValue(true)));
        assert_eq!(
            nested.fields["none"].kind,
            Some(Kind::NullValue(prost_types::NullValue::NullValue as i32))
        );
    }
}
