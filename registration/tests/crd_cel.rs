//! The CRD's CEL rules (`x-kubernetes-validations`) evaluated by a CEL implementation
//! (cel-python, from the test venv: tests/python-requirements.txt, exported by ./scripts/test
//! as `LANYARD_TEST_PYTHON`). The project's API-server fixture does not run CEL, and a rule that
//! does not compile makes a real API server refuse the whole CRD at `kubectl apply`, so every
//! rule is compiled here and run against values it must accept and refuse. A rule added to the
//! CRD without cases here fails the test.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

fn python() -> PathBuf {
    match std::env::var_os("LANYARD_TEST_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "LANYARD_TEST_PYTHON is not set: run the tests with ./scripts/test, which builds the \
             Python venv (tests/python-requirements.txt, including cel-python) and exports it"
        ),
    }
}

/// Walks the CRD's schema, compiles every rule and evaluates it on each case given for its
/// property path; prints one JSON object: rules found, and the outcome of every case.
const EVALUATE: &str = r#"
import json, sys
import celpy, yaml

crd = yaml.safe_load(sys.stdin.read().split("\n---", 1)[0])
cases = json.loads(sys.argv[1])
env = celpy.Environment()
rules, results = [], []

def walk(schema, path):
    for v in schema.get("x-kubernetes-validations", []):
        rules.append([path, v["rule"]])
        program = env.program(env.compile(v["rule"]))
        for value, want in cases.get(path, {}).get(v["rule"], []):
            got = program.evaluate({"self": celpy.json_to_cel(value)})
            results.append([path, v["rule"], value, want, bool(got)])
    for name, sub in schema.get("properties", {}).items():
        walk(sub, f"{path}.{name}" if path else name)
    if "items" in schema:
        walk(schema["items"], path + "[]")

for version in crd["spec"]["versions"]:
    walk(version["schema"]["openAPIV3Schema"], "")
print(json.dumps({"rules": rules, "results": results}))
"#;

#[test]
fn every_cel_rule_compiles_and_decides_as_intended() {
    let template = "spec.spiffeIDTemplate";
    let starts = "self.startsWith('/') || self.startsWith('spiffe://')";
    let reserved = "!(self == '/lanyard' || self.startsWith('/lanyard/') || self.matches('^spiffe://[^/]*/lanyard(/|$)'))";
    let operator = "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0) : (!has(self.values) || size(self.values) == 0)";
    let dns = "!self.contains('/')";
    let expressions = |selector: &str| format!("spec.{selector}.matchExpressions[]");
    let operator_cases = json!([
        [{"key": "app", "operator": "In", "values": ["web"]}, true],
        [{"key": "app", "operator": "NotIn", "values": ["web"]}, true],
        [{"key": "app", "operator": "In"}, false],
        [{"key": "app", "operator": "NotIn", "values": []}, false],
        [{"key": "app", "operator": "Exists"}, true],
        [{"key": "app", "operator": "DoesNotExist", "values": []}, true],
        [{"key": "app", "operator": "Exists", "values": ["web"]}, false],
    ]);
    let cases = json!({
        template: {
            starts: [
                ["/ns/{namespace}/sa/{service_account}", true],
                ["spiffe://{trust_domain}/web", true],
                ["ns/{namespace}", false],
                ["http://example.org/web", false],
            ],
            reserved: [
                ["/ns/{namespace}", true],
                ["/lanyardish/{pod_name}", true],
                ["spiffe://example.org/web/lanyard", true],
                ["/lanyard", false],
                ["/lanyard/{pod_name}", false],
                ["spiffe://example.org/lanyard", false],
                ["spiffe://{trust_domain}/lanyard/server", false],
            ],
        },
        expressions("podSelector"): { operator: operator_cases.clone() },
        expressions("namespaceSelector"): { operator: operator_cases },
        "spec.dnsNameTemplates[]": {
            dns: [["{pod_name}.{namespace}.svc", true], ["web/x.example", false]],
        },
    });

    check_rules(lanyard_registration::crd::CRD_YAML, &cases, 5);
}

#[test]
fn every_federation_cel_rule_compiles_and_decides_as_intended() {
    let pairing =
        "self.type == 'https_spiffe' ? has(self.endpointSPIFFEID) : !has(self.endpointSPIFFEID)";
    let in_domain = "self.bundleEndpointProfile.type == 'https_web' || !has(self.bundleEndpointProfile.endpointSPIFFEID) || self.bundleEndpointProfile.endpointSPIFFEID.startsWith('spiffe://' + self.trustDomain + '/')";
    let bundle =
        "!has(self.trustDomainBundle) || self.bundleEndpointProfile.type == 'https_spiffe'";
    let ca = "!has(self.caBundle) || self.bundleEndpointProfile.type == 'https_web'";
    let spiffe = |id: &str| json!({"type": "https_spiffe", "endpointSPIFFEID": id});
    let web = json!({"type": "https_web"});
    let spec = |profile: &Value, extra: Value| {
        let mut v = json!({
            "trustDomain": "partner.example",
            "bundleEndpointURL": "https://partner.example",
            "bundleEndpointProfile": profile,
        });
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    let good = spiffe("spiffe://partner.example/lanyard/server");
    let cases = json!({
        "spec.bundleEndpointProfile": {
            pairing: [
                [good, true],
                [web, true],
                [{"type": "https_spiffe"}, false],
                [{"type": "https_web", "endpointSPIFFEID": "spiffe://partner.example/x"}, false],
            ],
        },
        "spec": {
            in_domain: [
                [spec(&good, json!({})), true],
                [spec(&web, json!({})), true],
                [spec(&json!({"type": "https_spiffe"}), json!({})), true],
                [spec(&spiffe("spiffe://other.example/server"), json!({})), false],
                // A prefix of the name is not the trust domain.
                [spec(&spiffe("spiffe://partner.example.evil/server"), json!({})), false],
                [spec(&spiffe("spiffe://partner.example"), json!({})), false],
            ],
            bundle: [
                [spec(&good, json!({"trustDomainBundle": "PEM"})), true],
                [spec(&web, json!({})), true],
                [spec(&web, json!({"trustDomainBundle": "PEM"})), false],
            ],
            ca: [
                [spec(&web, json!({"caBundle": "PEM"})), true],
                [spec(&good, json!({})), true],
                [spec(&good, json!({"caBundle": "PEM"})), false],
            ],
        },
    });
    check_rules(lanyard_registration::crd::FEDERATION_CRD_YAML, &cases, 4);
}

/// Compiles every rule of `crd_yaml` (there must be `rule_count`) and evaluates `cases`
/// (`{path: {rule: [[value, accepted], ...]}}`) with cel-python; every rule needs cases.
fn check_rules(crd_yaml: &str, cases: &Value, rule_count: usize) {
    let mut child = Command::new(python())
        .args(["-c", EVALUATE, &cases.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the venv's python");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(crd_yaml.as_bytes()).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "cel-python refused a rule or a case: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");

    // Every rule in the CRD has cases, and every case ran against a rule that exists.
    let rules = report["rules"].as_array().unwrap();
    assert_eq!(rules.len(), rule_count, "the CRD's rules: {rules:?}");
    for rule in rules {
        let (path, text) = (rule[0].as_str().unwrap(), rule[1].as_str().unwrap());
        assert!(
            cases[path][text].is_array(),
            "rule {text:?} at {path} has no cases"
        );
    }
    let results = report["results"].as_array().unwrap();
    let expected: usize = cases
        .as_object()
        .unwrap()
        .values()
        .flat_map(|by_rule| by_rule.as_object().unwrap().values())
        .map(|c| c.as_array().unwrap().len())
        .sum();
    assert_eq!(
        results.len(),
        expected,
        "a case matched no rule: {results:?}"
    );
    let wrong: Vec<&Value> = results.iter().filter(|r| r[3] != r[4]).collect();
    assert!(wrong.is_empty(), "rules decided differently: {wrong:?}");
}
