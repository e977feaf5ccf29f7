//! The CustomResourceDefinitions for `LanyardIdentity` and `LanyardFederation`: the OpenAPI
//! schemas (and CEL rules where a schema cannot say it) that the API server checks before any
//! replica sees a resource.
//!
//! The schema mirrors [`crate::resource`] field for field, with the bounds [`crate::compiled`],
//! [`crate::template`], [`crate::label_selector`] and [`crate::status`] enforce; the tests
//! below fail when either side changes alone. The API server refuses what the schema can say
//! (types, bounds, the operator enum, a template that is neither a path nor a `spiffe://` ID,
//! a literal `/lanyard/` path, values for Exists); everything else a server finds wrong is its
//! `status.specError`.

/// The manifest as YAML (one document), as `lanyard install` prints it.
pub const CRD_YAML: &str = include_str!("../crd/lanyardidentities.lanyard.dev.yaml");

/// The `LanyardFederation` manifest (one document), as `lanyard install` prints it after
/// [`CRD_YAML`]. Its schema mirrors [`crate::federation::LanyardFederationSpec`]; the CEL rules
/// pair the endpoint profile with its fields (`endpointSPIFFEID`, `trustDomainBundle` for
/// `https_spiffe`, `caBundle` for `https_web`) as [`crate::federation::FederatedDomain::from_resource`]
/// does.
pub const FEDERATION_CRD_YAML: &str = include_str!("../crd/lanyardfederations.lanyard.dev.yaml");

/// Every CRD of the project, in the order `lanyard install` prints them.
pub const ALL_CRD_YAML: [&str; 2] = [CRD_YAML, FEDERATION_CRD_YAML];

/// The `pattern` of `x509TTL` and `jwtTTL`: one whole number and a unit (`s`, `m`, `h`, `d`),
/// a subset of what `lanyard_daemon::duration::parse_duration` (humantime) reads.
pub const TTL_PATTERN: &str = "^[0-9]+(s|m|h|d)$";

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
    use serde_json::Value;

    use super::*;
    use crate::compiled::{MAX_DNS_NAMES, MAX_HINT_LEN, MAX_WORKLOAD_SELECTORS};
    use crate::federation::{
        BundleEndpointProfile, LanyardFederation, LanyardFederationSpec, MAX_BUNDLE_TEXT_LEN,
        MAX_FEDERATES_WITH, PROFILE_HTTPS_SPIFFE, PROFILE_HTTPS_WEB, check_endpoint_url,
    };
    use crate::label_selector::{
        CompiledSelector, MAX_EXPRESSION_VALUES, MAX_MATCH_EXPRESSIONS, MAX_MATCH_LABELS,
    };
    use crate::resource::{
        API_VERSION, GROUP, KIND, LanyardIdentity, LanyardIdentitySpec, LanyardIdentityStatus,
        PLURAL, RefusedPod, SINGULAR, VERSION,
    };
    use crate::status::MAX_LISTED_REFUSALS;
    use crate::template::MAX_TEMPLATE_LEN;

    fn yaml_of(text: &str) -> Value {
        serde_saphyr::from_str::<Value>(text).expect("the CRD is YAML")
    }

    fn crd() -> CustomResourceDefinition {
        crd_of(CRD_YAML)
    }

    fn crd_of(text: &str) -> CustomResourceDefinition {
        serde_json::from_value(yaml_of(text)).expect("a CustomResourceDefinition")
    }

    fn root() -> JSONSchemaProps {
        root_of(CRD_YAML)
    }

    fn root_of(text: &str) -> JSONSchemaProps {
        let crd = crd_of(text);
        let version = &crd.spec.versions[0];
        version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.clone())
            .expect("an openAPIV3Schema")
    }

    fn prop<'a>(schema: &'a JSONSchemaProps, name: &str) -> &'a JSONSchemaProps {
        schema
            .properties
            .as_ref()
            .and_then(|p| p.get(name))
            .unwrap_or_else(|| panic!("no property {name}"))
    }

    fn items(schema: &JSONSchemaProps) -> &JSONSchemaProps {
        match &schema.items {
            Some(JSONSchemaPropsOrArray::Schema(s)) => s,
            other => panic!("items {other:?}"),
        }
    }

    fn property_names(schema: &JSONSchemaProps) -> BTreeSet<String> {
        schema
            .properties
            .as_ref()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The JSON keys of `value` serialised (every optional field set, so every key appears).
    fn keys(value: impl serde::Serialize) -> BTreeSet<String> {
        match serde_json::to_value(value).unwrap() {
            Value::Object(map) => map.keys().cloned().collect(),
            other => panic!("not an object: {other}"),
        }
    }

    fn full_selector() -> LabelSelector {
        LabelSelector {
            match_labels: Some([("a".to_owned(), "b".to_owned())].into()),
            match_expressions: Some(vec![full_requirement()]),
        }
    }

    fn full_requirement() -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: "a".into(),
            operator: "In".into(),
            values: Some(vec!["b".into()]),
        }
    }

    fn full_spec() -> LanyardIdentitySpec {
        LanyardIdentitySpec {
            spiffe_id_template: "/x".into(),
            pod_selector: Some(full_selector()),
            namespace_selector: Some(full_selector()),
            dns_name_templates: vec!["x".into()],
            x509_ttl: Some("1h".into()),
            jwt_ttl: Some("5m".into()),
            workload_selector_templates: vec!["unix:uid:1".into()],
            class_name: Some("lanyard".into()),
            fallback: true,
            hint: Some("h".into()),
            federates_with: vec!["partner.example".into()],
        }
    }

    fn full_status() -> LanyardIdentityStatus {
        LanyardIdentityStatus {
            observed_generation: Some(1),
            spec_error: Some("e".into()),
            pods_matched: 1,
            pods_issued: 1,
            pods_refused: 1,
            refusals: vec![RefusedPod::default()],
        }
    }

    #[test]
    fn names_match_the_resource_constants() {
        let crd = crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some(&*format!("{PLURAL}.{GROUP}"))
        );
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.names.kind, KIND);
        assert_eq!(crd.spec.names.plural, PLURAL);
        assert_eq!(crd.spec.names.singular.as_deref(), Some(SINGULAR));
        assert_eq!(
            crd.spec.names.list_kind.as_deref(),
            Some(<LanyardIdentity as k8s_openapi::ListableResource>::LIST_KIND)
        );
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&["lid".to_owned()][..])
        );
        assert_eq!(crd.spec.versions.len(), 1);
        let v = &crd.spec.versions[0];
        assert_eq!(format!("{GROUP}/{}", v.name), API_VERSION);
        assert_eq!(v.name, VERSION);
        assert!(v.served && v.storage);
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        let columns: Vec<(&str, &str)> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .filter(|c| c.priority.unwrap_or(0) == 0)
            .map(|c| (c.name.as_str(), c.json_path.as_str()))
            .collect();
        assert_eq!(
            columns,
            [
                ("SPIFFE ID Template", ".spec.spiffeIDTemplate"),
                ("Issued", ".status.podsIssued"),
                ("Refused", ".status.podsRefused"),
                ("Age", ".metadata.creationTimestamp"),
            ]
        );
    }

    #[test]
    fn every_yaml_key_is_a_crd_field() {
        // The typed CRD drops keys it does not know: a misspelt one (maxitems, x-kubernetes-
        // validation) would make the round trip differ.
        for text in ALL_CRD_YAML {
            let typed = serde_json::to_value(crd_of(text)).unwrap();
            assert_eq!(typed, yaml_of(text));
        }
    }

    #[test]
    fn schema_properties_are_the_serde_fields() {
        let root = root();
        assert_eq!(
            property_names(&root),
            ["apiVersion", "kind", "metadata", "spec", "status"]
                .map(String::from)
                .into(),
        );
        let full = LanyardIdentity {
            status: Some(full_status()),
            ..LanyardIdentity::new("x", full_spec())
        };
        assert_eq!(property_names(&root), keys(&full));

        let spec = prop(&root, "spec");
        assert_eq!(property_names(spec), keys(full_spec()));
        assert_eq!(
            spec.required.as_deref(),
            Some(&["spiffeIDTemplate".to_owned()][..])
        );
        // And the one required field is the one serde cannot do without.
        assert!(serde_json::from_value::<LanyardIdentitySpec>(serde_json::json!({})).is_err());
        serde_json::from_value::<LanyardIdentitySpec>(
            serde_json::json!({"spiffeIDTemplate": "/x"}),
        )
        .unwrap();

        let status = prop(&root, "status");
        assert_eq!(property_names(status), keys(full_status()));
        let refused = items(prop(status, "refusals"));
        assert_eq!(property_names(refused), keys(RefusedPod::default()));

        for selector in ["podSelector", "namespaceSelector"] {
            let s = prop(spec, selector);
            assert_eq!(property_names(s), keys(full_selector()), "{selector}");
            let e = items(prop(s, "matchExpressions"));
            assert_eq!(property_names(e), keys(full_requirement()), "{selector}");
        }
    }

    #[test]
    fn types_match_the_serde_values() {
        // Each property's type is the JSON type its Rust field serialises to.
        fn json_type(v: &Value) -> &'static str {
            match v {
                Value::String(_) => "string",
                Value::Bool(_) => "boolean",
                Value::Number(_) => "integer",
                Value::Array(_) => "array",
                Value::Object(_) => "object",
                Value::Null => "null",
            }
        }
        let root = root();
        for (name, value, schema) in [
            (
                "spec",
                serde_json::to_value(full_spec()).unwrap(),
                prop(&root, "spec"),
            ),
            (
                "status",
                serde_json::to_value(full_status()).unwrap(),
                prop(&root, "status"),
            ),
        ] {
            for (field, v) in value.as_object().unwrap() {
                assert_eq!(
                    prop(schema, field).type_.as_deref(),
                    Some(json_type(v)),
                    "{name}.{field}"
                );
            }
        }
    }

    #[test]
    fn the_schemas_are_structural() {
        // Every node has a type (the API server refuses a non-structural v1 schema).
        fn walk(path: &str, s: &JSONSchemaProps) {
            assert!(s.type_.is_some(), "{path} has no type");
            for (name, p) in s.properties.iter().flatten() {
                walk(&format!("{path}.{name}"), p);
            }
            if let Some(JSONSchemaPropsOrArray::Schema(i)) = &s.items {
                walk(&format!("{path}[]"), i);
            }
            if let Some(JSONSchemaPropsOrBool::Schema(a)) = &s.additional_properties {
                walk(&format!("{path}{{}}"), a);
            }
        }
        for text in ALL_CRD_YAML {
            walk("", &root_of(text));
        }
    }

    #[test]
    fn bounds_match_the_compiler() {
        let root = root();
        let spec = prop(&root, "spec");
        let n = |v: usize| Some(i64::try_from(v).unwrap());
        let id = prop(spec, "spiffeIDTemplate");
        assert_eq!(id.max_length, n(MAX_TEMPLATE_LEN));
        let dns = prop(spec, "dnsNameTemplates");
        assert_eq!(dns.max_items, n(MAX_DNS_NAMES));
        assert_eq!(items(dns).max_length, n(MAX_TEMPLATE_LEN));
        let sel = prop(spec, "workloadSelectorTemplates");
        assert_eq!(sel.max_items, n(MAX_WORKLOAD_SELECTORS));
        assert_eq!(items(sel).max_length, n(MAX_TEMPLATE_LEN));
        assert_eq!(prop(spec, "hint").max_length, n(MAX_HINT_LEN));
        let federates = prop(spec, "federatesWith");
        assert_eq!(federates.max_items, n(MAX_FEDERATES_WITH));
        assert_eq!(federates.x_kubernetes_list_type.as_deref(), Some("set"));
        assert_eq!(
            items(federates).max_length,
            n(lanyard_svid::id::MAX_TRUST_DOMAIN_LEN)
        );
        let status = prop(&root, "status");
        assert_eq!(prop(status, "refusals").max_items, n(MAX_LISTED_REFUSALS));
        for selector in ["podSelector", "namespaceSelector"] {
            let s = prop(spec, selector);
            assert_eq!(prop(s, "matchLabels").max_properties, n(MAX_MATCH_LABELS));
            let exprs = prop(s, "matchExpressions");
            assert_eq!(exprs.max_items, n(MAX_MATCH_EXPRESSIONS));
            assert_eq!(
                prop(items(exprs), "values").max_items,
                n(MAX_EXPRESSION_VALUES)
            );
        }
    }

    #[test]
    fn operators_and_rules() {
        let root = root();
        let spec = prop(&root, "spec");
        for selector in ["podSelector", "namespaceSelector"] {
            let e = items(prop(prop(spec, selector), "matchExpressions"));
            let ops: Vec<String> = prop(e, "operator")
                .enum_
                .iter()
                .flatten()
                .map(|j| j.0.as_str().unwrap().to_owned())
                .collect();
            assert_eq!(ops, ["In", "NotIn", "Exists", "DoesNotExist"]);
            // The compiler accepts exactly these operators.
            for op in &ops {
                let values = matches!(op.as_str(), "In" | "NotIn").then(|| vec!["v".to_owned()]);
                let s = LabelSelector {
                    match_labels: None,
                    match_expressions: Some(vec![LabelSelectorRequirement {
                        key: "k".into(),
                        operator: op.clone(),
                        values,
                    }]),
                };
                CompiledSelector::compile(&s).unwrap();
            }
            let rules = e.x_kubernetes_validations.as_ref().unwrap();
            assert!(rules[0].rule.contains("size(self.values) > 0"));
        }
        let id_rules: Vec<&str> = prop(spec, "spiffeIDTemplate")
            .x_kubernetes_validations
            .iter()
            .flatten()
            .map(|r| r.rule.as_str())
            .collect();
        assert!(
            id_rules
                .iter()
                .any(|r| r.contains("startsWith('spiffe://')"))
        );
        assert!(id_rules.iter().any(|r| r.contains("/lanyard/")));
        let dns_rules = items(prop(spec, "dnsNameTemplates"))
            .x_kubernetes_validations
            .as_ref()
            .unwrap();
        assert!(dns_rules[0].rule.contains("!self.contains('/')"));
    }

    #[test]
    fn ttl_pattern_is_a_subset_of_the_duration_parser() {
        let root = root();
        let spec = prop(&root, "spec");
        for field in ["x509TTL", "jwtTTL"] {
            assert_eq!(
                prop(spec, field).pattern.as_deref(),
                Some(TTL_PATTERN),
                "{field}"
            );
        }
        // What the pattern admits, the parser reads with the unit the pattern means.
        for (text, secs) in [
            ("1s", 1),
            ("90s", 90),
            ("10m", 600),
            ("1h", 3600),
            ("2d", 172_800),
        ] {
            assert_eq!(
                lanyard_daemon::duration::parse_duration(text)
                    .unwrap()
                    .as_secs(),
                secs,
                "{text}"
            );
        }
    }

    fn full_federation_spec() -> LanyardFederationSpec {
        LanyardFederationSpec {
            trust_domain: "partner.example".into(),
            bundle_endpoint_url: "https://partner.example".into(),
            bundle_endpoint_profile: full_profile(),
            trust_domain_bundle: Some("b".into()),
            ca_bundle: Some("c".into()),
            class_name: Some("lanyard".into()),
        }
    }

    fn full_profile() -> BundleEndpointProfile {
        BundleEndpointProfile {
            type_: "https_spiffe".into(),
            endpoint_spiffe_id: Some("spiffe://partner.example/x".into()),
        }
    }

    #[test]
    fn federation_names_match_the_resource_constants() {
        use crate::federation::{KIND, PLURAL, SINGULAR};
        let crd = crd_of(FEDERATION_CRD_YAML);
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some(&*format!("{PLURAL}.{GROUP}"))
        );
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.names.kind, KIND);
        assert_eq!(crd.spec.names.plural, PLURAL);
        assert_eq!(crd.spec.names.singular.as_deref(), Some(SINGULAR));
        assert_eq!(
            crd.spec.names.list_kind.as_deref(),
            Some(<LanyardFederation as k8s_openapi::ListableResource>::LIST_KIND)
        );
        assert_eq!(crd.spec.versions.len(), 1);
        let v = &crd.spec.versions[0];
        assert_eq!(format!("{GROUP}/{}", v.name), API_VERSION);
        assert!(v.served && v.storage);
        // No status yet: nothing writes one.
        assert!(v.subresources.is_none());
    }

    #[test]
    fn federation_schema_is_the_serde_fields_with_the_checker_bounds() {
        let root = root_of(FEDERATION_CRD_YAML);
        let full = LanyardFederation::new("x", full_federation_spec());
        assert_eq!(property_names(&root), keys(&full));
        let spec = prop(&root, "spec");
        assert_eq!(property_names(spec), keys(full_federation_spec()));
        let profile = prop(spec, "bundleEndpointProfile");
        assert_eq!(property_names(profile), keys(full_profile()));
        // Required: what serde cannot do without.
        assert_eq!(
            spec.required.as_deref(),
            Some(
                &[
                    "trustDomain".to_owned(),
                    "bundleEndpointURL".to_owned(),
                    "bundleEndpointProfile".to_owned()
                ][..]
            )
        );
        let minimal = serde_json::json!({
            "trustDomain": "p", "bundleEndpointURL": "https://p", "bundleEndpointProfile": {"type": "https_web"}
        });
        serde_json::from_value::<LanyardFederationSpec>(minimal.clone()).unwrap();
        for field in ["trustDomain", "bundleEndpointURL", "bundleEndpointProfile"] {
            let mut v = minimal.clone();
            v.as_object_mut().unwrap().remove(field);
            assert!(
                serde_json::from_value::<LanyardFederationSpec>(v).is_err(),
                "{field}"
            );
        }
        assert_eq!(profile.required.as_deref(), Some(&["type".to_owned()][..]));
        for (field, v) in serde_json::to_value(full_federation_spec())
            .unwrap()
            .as_object()
            .unwrap()
        {
            let want = if v.is_object() { "object" } else { "string" };
            assert_eq!(prop(spec, field).type_.as_deref(), Some(want), "{field}");
        }
        // The profile names are the checker's.
        let types: Vec<String> = prop(profile, "type")
            .enum_
            .iter()
            .flatten()
            .map(|j| j.0.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(types, [PROFILE_HTTPS_SPIFFE, PROFILE_HTTPS_WEB]);
        let n = |v: usize| Some(i64::try_from(v).unwrap());
        assert_eq!(
            prop(spec, "trustDomainBundle").max_length,
            n(MAX_BUNDLE_TEXT_LEN)
        );
        assert_eq!(prop(spec, "caBundle").max_length, n(MAX_BUNDLE_TEXT_LEN));
        assert_eq!(
            prop(spec, "trustDomain").max_length,
            n(lanyard_svid::id::MAX_TRUST_DOMAIN_LEN)
        );
        assert_eq!(prop(spec, "bundleEndpointURL").max_length, n(2048));
        // The URL pattern admits no more than check_endpoint_url does.
        let pattern = prop(spec, "bundleEndpointURL").pattern.clone().unwrap();
        assert_eq!(pattern, "^https://[^/?#@\\s]+(/[^?#\\s]*)?$");
        for url in [
            "https://partner.example",
            "https://partner.example:8443/bundle",
        ] {
            check_endpoint_url(url).unwrap();
        }
    }
}
