//! `lanyard identities` against the Kubernetes API fixture through the real `kube` client
//! (KUBECONFIG), as an operator runs it: the LanyardIdentity CRD installed from the
//! registration crate's manifest, namespaces, pods and LanyardIdentities seeded (one with DNS
//! names and a container selector, a fallback, two that conflict, one that renders a reserved
//! ID, one refused as a whole), and every pod's line and JSON checked; the trust domain read
//! from the installation's bundle ConfigMap; the CRD missing and the trust domain unknown are
//! clear errors.

mod support;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube_fixture::{FixtureOptions, KubeFixture};
use lanyard_registration::{LanyardIdentity, LanyardIdentitySpec};
use support::Run;

const TD: &str = "cluster.example";

struct Env {
    fixture: KubeFixture,
    dir: tempfile::TempDir,
}

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn selector(pairs: &[(&str, &str)]) -> Option<LabelSelector> {
    Some(LabelSelector {
        match_labels: labels(pairs),
        ..Default::default()
    })
}

fn identity(name: &str, template: &str, pods: &[(&str, &str)]) -> LanyardIdentity {
    LanyardIdentity::new(
        name,
        LanyardIdentitySpec {
            spiffe_id_template: template.to_owned(),
            pod_selector: selector(pods),
            ..Default::default()
        },
    )
}

impl Env {
    async fn start() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            fixture: KubeFixture::start(FixtureOptions::default()).await.unwrap(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    async fn identities(&self, args: &[&str]) -> Run {
        let args: Vec<&str> = ["identities"].iter().chain(args).copied().collect();
        support::lanyard(self.fixture.kubeconfig_path(), self.dir.path(), &args).await
    }

    fn client(&self) -> kube::Client {
        self.fixture.admin_client().unwrap()
    }

    fn install_crd(&self) {
        let applied = self
            .fixture
            .apply_yaml(lanyard_registration::crd::CRD_YAML)
            .unwrap();
        let text = format!("{applied:?}");
        assert!(text.contains("lanyardidentities.lanyard.dev"), "{text}");
    }

    async fn namespace(&self, name: &str, ns_labels: &[(&str, &str)]) {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: labels(ns_labels),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(self.client())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
    }

    async fn pod(&self, ns: &str, name: &str, node: Option<&str>, pod_labels: &[(&str, &str)]) {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(ns.to_owned()),
                labels: labels(pod_labels),
                ..Default::default()
            },
            spec: Some(PodSpec {
                service_account_name: Some(format!("sa-{name}")),
                node_name: node.map(str::to_owned),
                containers: vec![Container {
                    name: "app".into(),
                    image: Some("app:1".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        Api::<Pod>::namespaced(self.client(), ns)
            .create(&PostParams::default(), &pod)
            .await
            .unwrap();
    }

    async fn create(&self, identity: &LanyardIdentity) {
        Api::<LanyardIdentity>::all(self.client())
            .create(&PostParams::default(), identity)
            .await
            .unwrap_or_else(|e| panic!("creating LanyardIdentity {}: {e}", identity.name()));
    }

    /// The installation's bundle ConfigMap, holding a root of `td` made by `lanyard ca
    /// new-root`.
    async fn bundle(&self, namespace: &str, td: &str) {
        let (cert, key) = (
            self.dir.path().join("root.pem"),
            self.dir.path().join("root.key"),
        );
        support::lanyard(
            self.fixture.kubeconfig_path(),
            self.dir.path(),
            &[
                "ca",
                "new-root",
                "--trust-domain",
                td,
                "--cert",
                cert.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
            ],
        )
        .await
        .ok();
        let configmap = ConfigMap {
            metadata: ObjectMeta {
                name: Some("lanyard-bundle".into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            data: Some(
                [(
                    "bundle.pem".to_owned(),
                    std::fs::read_to_string(cert).unwrap(),
                )]
                .into_iter()
                .collect(),
            ),
            ..Default::default()
        };
        Api::<ConfigMap>::namespaced(self.client(), namespace)
            .create(&PostParams::default(), &configmap)
            .await
            .unwrap();
    }

    /// The world `lanyard identities` is run over.
    async fn seed(&self) {
        self.install_crd();
        self.namespace("shop", &[("team", "shop")]).await;
        self.namespace("ops", &[]).await;
        let mut web = identity("web", "/web/{namespace}", &[("app", "web")]);
        web.spec.dns_name_templates = vec![
            "web.{namespace}.svc".into(),
            "{pod_name}.web.{namespace}.svc".into(),
        ];
        web.spec.workload_selector_templates = vec!["k8s:container-name:app".into()];
        web.spec.namespace_selector = selector(&[("team", "shop")]);
        let mut fallback = identity("shop-fallback", "/shop/other/{service_account}", &[]);
        fallback.spec.fallback = true;
        fallback.spec.namespace_selector = selector(&[("team", "shop")]);
        let mut elsewhere = identity("elsewhere", "/elsewhere", &[("app", "web")]);
        elsewhere.spec.class_name = Some("other-mesh".into());
        for resource in [
            web,
            fallback,
            elsewhere,
            identity("db-a", "/db/a", &[("app", "db")]),
            identity("db-b", "/db/b", &[("app", "db")]),
            identity("by-kind", "/{label:kind}/job", &[("tier", "system")]),
            identity("broken", "/x/{no_such_placeholder}", &[("app", "never")]),
        ] {
            self.create(&resource).await;
        }
        self.pod("shop", "web-1", Some("node-1"), &[("app", "web")])
            .await;
        self.pod("shop", "cart-1", Some("node-2"), &[("app", "cart")])
            .await;
        self.pod("shop", "db-0", Some("node-1"), &[("app", "db")])
            .await;
        self.pod(
            "ops",
            "sys-1",
            Some("node-2"),
            &[("tier", "system"), ("kind", "lanyard")],
        )
        .await;
        self.pod("ops", "tool", None, &[]).await;
        // A finished pod: not listed (the servers issue nothing to it).
        self.pod("ops", "job-done", Some("node-1"), &[]).await;
        Api::<Pod>::namespaced(self.client(), "ops")
            .patch_status(
                "job-done",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"status": {"phase": "Succeeded"}})),
            )
            .await
            .unwrap();
    }
}

fn json(run: &Run) -> serde_json::Value {
    serde_json::from_str(run.ok()).unwrap()
}

fn pod<'a>(report: &'a serde_json::Value, ns: &str, name: &str) -> &'a serde_json::Value {
    report["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["namespace"] == ns && p["name"] == name)
        .unwrap_or_else(|| panic!("no pod {ns}/{name}: {report}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_pod_is_shown_with_what_it_is_issued_and_why() {
    let env = Env::start().await;
    env.seed().await;
    env.bundle("lanyard", TD).await;

    // The trust domain is the installation's (its bundle ConfigMap).
    let report = json(&env.identities(&["--output", "json"]).await);
    assert_eq!(report["trust_domain"], TD);
    assert_eq!(report["identity_class"], "lanyard");
    assert_eq!(report["watch_classless"], true);
    assert_eq!(
        report["default_template"],
        "/ns/{namespace}/sa/{service_account}"
    );
    let names: Vec<String> = report["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p["namespace"].as_str().unwrap(),
                p["name"].as_str().unwrap()
            )
        })
        .collect();
    // ops/job-done has finished: not listed.
    assert_eq!(
        names,
        [
            "ops/sys-1",
            "ops/tool",
            "shop/cart-1",
            "shop/db-0",
            "shop/web-1"
        ]
    );

    // The matching resource, its DNS names (sorted, as the server puts them in the SVID) and
    // container selector; `elsewhere` (another
    // class) selects the same pod and is ignored.
    assert_eq!(
        pod(&report, "shop", "web-1"),
        &serde_json::json!({
            "namespace": "shop", "name": "web-1", "node": "node-1",
            "service_account": "sa-web-1", "outcome": "issued",
            "spiffe_id": format!("spiffe://{TD}/web/shop"),
            "dns_names": ["web-1.web.shop.svc", "web.shop.svc"],
            "source": "LanyardIdentity/web",
            "x509_ttl_seconds": null, "jwt_ttl_seconds": null,
            "workload_selectors": ["k8s:container-name:app"], "hint": "",
        })
    );
    // The fallback: nothing else selects cart-1 in a team=shop namespace.
    let cart = pod(&report, "shop", "cart-1");
    assert_eq!(cart["outcome"], "issued");
    assert_eq!(
        cart["spiffe_id"],
        format!("spiffe://{TD}/shop/other/sa-cart-1")
    );
    assert_eq!(cart["source"], "LanyardIdentity/shop-fallback");
    // Two resources with different IDs: neither, and not the default either.
    let db = pod(&report, "shop", "db-0");
    assert_eq!(db["outcome"], "refused", "{db}");
    assert_eq!(db["reason"], "conflict");
    assert_eq!(db["resources"], serde_json::json!(["db-a", "db-b"]));
    assert!(db.get("spiffe_id").is_none());
    // A label that renders an ID under /lanyard/.
    let sys = pod(&report, "ops", "sys-1");
    assert_eq!(sys["outcome"], "refused", "{sys}");
    assert_eq!(sys["reason"], "reserved_id");
    assert_eq!(sys["resources"], serde_json::json!(["by-kind"]));
    // Nothing selects it: the default template; unscheduled, so no node.
    let tool = pod(&report, "ops", "tool");
    assert_eq!(tool["outcome"], "issued");
    assert_eq!(
        tool["spiffe_id"],
        format!("spiffe://{TD}/ns/ops/sa/sa-tool")
    );
    assert_eq!(tool["source"], "default-template");
    assert_eq!(tool["node"], serde_json::Value::Null);
    // Refused as a whole.
    let refused = report["refused_resources"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{report}");
    assert_eq!(refused[0]["name"], "broken");
    assert!(
        refused[0]["error"]
            .as_str()
            .unwrap()
            .contains("no_such_placeholder"),
        "{report}"
    );

    // The table says the same, a line per pod (`text`, `lanyard ca status`'s word, is the
    // table).
    let table = env.identities(&[]).await;
    assert_eq!(env.identities(&["--output", "text"]).await.ok(), table.ok());
    let lines: Vec<&str> = table.ok().lines().collect();
    assert_eq!(
        lines[0],
        format!("POD          NODE    IDENTITY (trust domain {TD})")
    );
    let line = |pod: &str| {
        *lines
            .iter()
            .find(|l| l.starts_with(&format!("{pod} ")))
            .unwrap_or_else(|| panic!("no line for {pod}: {lines:?}"))
    };
    assert_eq!(
        line("shop/web-1"),
        format!(
            "shop/web-1   node-1  spiffe://{TD}/web/shop  dns=web-1.web.shop.svc,web.shop.svc  from LanyardIdentity/web"
        )
    );
    assert_eq!(
        line("shop/cart-1"),
        format!(
            "shop/cart-1  node-2  spiffe://{TD}/shop/other/sa-cart-1  from LanyardIdentity/shop-fallback"
        )
    );
    assert!(
        line("shop/db-0").starts_with("shop/db-0    node-1  refused (conflict): "),
        "{lines:?}"
    );
    assert!(
        line("ops/sys-1").starts_with("ops/sys-1    node-2  refused (reserved_id): "),
        "{lines:?}"
    );
    assert_eq!(
        line("ops/tool"),
        format!("ops/tool     -       spiffe://{TD}/ns/ops/sa/sa-tool  from default-template")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("LanyardIdentity/broken: ")),
        "{lines:?}"
    );

    // The servers' flags change the decisions as they would the servers'.
    let report = json(
        &env.identities(&[
            "--output",
            "json",
            "--no-default-pod-identity",
            "--pod-namespace",
            "ops",
            "--trust-domain",
            "other.example",
        ])
        .await,
    );
    assert_eq!(report["trust_domain"], "other.example");
    assert_eq!(report["pods"].as_array().unwrap().len(), 2, "{report}");
    assert_eq!(pod(&report, "ops", "tool")["outcome"], "unregistered");
    let report = json(
        &env.identities(&[
            "--output",
            "json",
            "--identity-class",
            "other-mesh",
            "--watch-classless",
            "false",
        ])
        .await,
    );
    let web = pod(&report, "shop", "web-1");
    assert_eq!(web["source"], "LanyardIdentity/elsewhere", "{web}");
    assert_eq!(web["spiffe_id"], format!("spiffe://{TD}/elsewhere"));
    assert_eq!(pod(&report, "shop", "db-0")["source"], "default-template");
    assert_eq!(
        report["refused_resources"],
        serde_json::json!([]),
        "broken has no class: not ours without --watch-classless"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_without_the_crd_is_told_to_install_it() {
    let env = Env::start().await;
    env.bundle("lanyard", TD).await;
    let run = env.identities(&["--trust-domain", TD]).await;
    let stderr = run.failed();
    assert!(
        stderr.starts_with(
            "lanyard identities: LanyardIdentity CRD not installed (lanyard install prints it)"
        ),
        "{stderr}"
    );
    // Installed, the same command works.
    env.install_crd();
    env.identities(&["--trust-domain", TD]).await.ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_trust_domain_names_the_flag() {
    let env = Env::start().await;
    env.install_crd();
    let stderr = env.identities(&[]).await.failed().to_owned();
    assert!(stderr.contains("--trust-domain"), "{stderr}");
    assert!(
        stderr.contains("ConfigMap lanyard/lanyard-bundle not found"),
        "{stderr}"
    );
    // The installation in another namespace: found with --namespace.
    env.bundle("identity", TD).await;
    let report = json(
        &env.identities(&["--output", "json", "--namespace", "identity"])
            .await,
    );
    assert_eq!(report["trust_domain"], TD);
    // A bad --trust-domain is refused before any call.
    let stderr = env
        .identities(&["--trust-domain", "Not A Domain"])
        .await
        .failed()
        .to_owned();
    assert!(
        stderr.starts_with("lanyard identities: --trust-domain \"Not A Domain\""),
        "{stderr}"
    );
}
