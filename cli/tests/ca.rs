//! `lanyard ca` against the Kubernetes API fixture through the real `kube` client
//! (KUBECONFIG), as an operator runs it: `init` creates the CA Secret and bundle ConfigMap and
//! refuses a second time; a whole root rotation (add, switch, retire) where each phase is
//! refused while the replicas' reports (written here as a server replica writes them:
//! `lanyard-ca-report-<replica>`, label `lanyard.dev/ca-report=true`, a `ReplicaReport` whose
//! bundle version is `TrustBundle::version` of the roots and JWT keys) say the previous one
//! has not propagated, and succeeds once they do; `issue-intermediate` refusing a root the
//! intermediate does not chain to; `abort` from both phases. Every refusal is checked to have
//! written nothing.

mod support;

use std::path::PathBuf;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube_fixture::{FixtureOptions, KubeFixture};
use lanyard_ca_lifecycle::names::{
    CONFIGMAP_BUNDLE_KEY, REPORT_DATA_KEY, REPORT_LABEL, ROTATION_ANNOTATION, SECRET_CERT_KEY,
    SECRET_JWT_KEY, SECRET_JWT_NEXT_KEY, SECRET_JWT_PREVIOUS_KEY, report_configmap_name,
};
use lanyard_ca_lifecycle::report::{
    AgentAck, BundleSummary, CertSummary, ReplicaReport, SigningSummary,
};
use lanyard_ca_lifecycle::unix_seconds;
use lanyard_svid::TrustBundle;
use lanyard_svid::bundle::{certificate_fingerprint, certificates_from_pem};
use lanyard_svid::jwt::JwtSigner;
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;
use support::Run;

const NS: &str = "lanyard";

struct Env {
    fixture: KubeFixture,
    dir: tempfile::TempDir,
}

impl Env {
    async fn start() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            fixture: KubeFixture::start(FixtureOptions::default()).await.unwrap(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `lanyard ca ARGS` with the fixture's admin kubeconfig.
    async fn ca(&self, args: &[&str]) -> Run {
        let args: Vec<&str> = ["ca"].iter().chain(args).copied().collect();
        support::lanyard(self.fixture.kubeconfig_path(), self.dir.path(), &args).await
    }

    /// `lanyard ca new-root` into NAME.pem / NAME.key.
    async fn new_root(&self, name: &str, td: &str) -> (String, String) {
        let (cert, key) = (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        );
        let (c, k) = (cert.to_str().unwrap(), key.to_str().unwrap());
        self.ca(&["new-root", "--trust-domain", td, "--cert", c, "--key", k])
            .await
            .ok();
        (c.to_owned(), k.to_owned())
    }

    async fn secret(&self) -> Secret {
        let api: Api<Secret> = Api::namespaced(self.fixture.admin_client().unwrap(), NS);
        api.get("lanyard-ca").await.unwrap()
    }

    async fn configmap(&self) -> ConfigMap {
        let api: Api<ConfigMap> = Api::namespaced(self.fixture.admin_client().unwrap(), NS);
        api.get("lanyard-bundle").await.unwrap()
    }

    /// Both objects' resourceVersions: unchanged after a refusal.
    async fn versions(&self) -> (String, String) {
        (
            self.secret().await.metadata.resource_version.unwrap(),
            self.configmap().await.metadata.resource_version.unwrap(),
        )
    }

    async fn cluster_ca(&self) -> ClusterCa {
        let secret = self.secret().await;
        let cm = self.configmap().await;
        let data = secret.data.unwrap();
        let text = |k: &str| data.get(k).map(|v| String::from_utf8(v.0.clone()).unwrap());
        ClusterCa {
            bundle_pem: cm.data.unwrap()[CONFIGMAP_BUNDLE_KEY].clone(),
            rotation: cm
                .metadata
                .annotations
                .and_then(|a| a.get(ROTATION_ANNOTATION).cloned()),
            tls_crt: text(SECRET_CERT_KEY).unwrap(),
            jwt: text(SECRET_JWT_KEY).unwrap(),
            jwt_next: text(SECRET_JWT_NEXT_KEY),
            jwt_previous: text(SECRET_JWT_PREVIOUS_KEY),
        }
    }

    /// Writes replica `name`'s report ConfigMap as the server does: serving `bundle`, signing
    /// as `signing` says, with `agents`' acknowledgements; written now, so it is live.
    async fn report(
        &self,
        name: &str,
        bundle: &BundleSummary,
        signing: Signing,
        agents: Vec<AgentAck>,
    ) {
        let now = unix_seconds(SystemTime::now());
        let report = ReplicaReport {
            replica: name.into(),
            updated_at: now,
            bundle: bundle.clone(),
            signing: SigningSummary {
                intermediate: signing.intermediate,
                root: signing.root,
                jwt_key_id: "kid".into(),
                since: signing.since,
            },
            longest_svid_ttl_secs: signing.ttl,
            agents,
            unlisted_agents: 0,
            unacknowledging_agents: 0,
        };
        let cm = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": report_configmap_name(name),
                "namespace": NS,
                "labels": {REPORT_LABEL: "true"},
            },
            "data": {REPORT_DATA_KEY: report.to_json()},
        });
        self.fixture.apply_yaml(&cm.to_string()).unwrap();
    }
}

struct Signing {
    intermediate: CertSummary,
    root: String,
    since: i64,
    ttl: u64,
}

/// What the cluster's CA objects hold.
struct ClusterCa {
    bundle_pem: String,
    rotation: Option<String>,
    tls_crt: String,
    jwt: String,
    jwt_next: Option<String>,
    jwt_previous: Option<String>,
}

fn kid(pem: &str) -> String {
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).unwrap();
    JwtSigner::from_pkcs8(der.secret_pkcs8_der())
        .unwrap()
        .key_id()
        .to_owned()
}

impl ClusterCa {
    fn roots(&self) -> Vec<String> {
        certificates_from_pem(self.bundle_pem.as_bytes())
            .unwrap()
            .iter()
            .map(|c| certificate_fingerprint(c))
            .collect()
    }

    /// The bundle a replica serves from these objects: the roots, and every JWT key's public
    /// half (signing, next, previous).
    fn served(&self) -> BundleSummary {
        let td = lanyard_svid::TrustDomain::new("example.org").unwrap();
        let mut bundle = TrustBundle::new(td);
        for root in certificates_from_pem(self.bundle_pem.as_bytes()).unwrap() {
            bundle.add_x509_authority(root);
        }
        for pem in [
            Some(&self.jwt),
            self.jwt_next.as_ref(),
            self.jwt_previous.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).unwrap();
            bundle.add_jwt_authority(
                JwtSigner::from_pkcs8(der.secret_pkcs8_der())
                    .unwrap()
                    .authority(),
            );
        }
        BundleSummary::of(&bundle)
    }

    fn intermediate(&self) -> CertSummary {
        CertSummary::of(&certificates_from_pem(self.tls_crt.as_bytes()).unwrap()[0])
    }

    /// Signing as a replica reports it: under `root`, since `since`, longest SVID `ttl`.
    fn signing(&self, root: &str, since: i64, ttl: u64) -> Signing {
        Signing {
            intermediate: self.intermediate(),
            root: root.to_owned(),
            since,
            ttl,
        }
    }

    fn issued_by(&self, root_pem_path: &str) -> bool {
        let root = certificates_from_pem(&std::fs::read(root_pem_path).unwrap()).unwrap();
        let int = certificates_from_pem(self.tls_crt.as_bytes()).unwrap();
        let (_, root) = x509_parser::parse_x509_certificate(&root[0]).unwrap();
        let (_, int) = x509_parser::parse_x509_certificate(&int[0]).unwrap();
        int.verify_signature(Some(root.public_key())).is_ok()
    }
}

fn fingerprint_of(path: &str) -> String {
    certificate_fingerprint(&certificates_from_pem(&std::fs::read(path).unwrap()).unwrap()[0])
}

fn ack(node: &str, version: &str, roots: &[&str]) -> AgentAck {
    AgentAck {
        node: node.into(),
        version: version.into(),
        svid_roots: roots.iter().map(|r| r.to_string()).collect(),
        acked_at: unix_seconds(SystemTime::now()),
    }
}

fn status_json(run: &Run) -> serde_json::Value {
    serde_json::from_str(run.ok()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn init_creates_the_ca_once() {
    let env = Env::start().await;
    let (a_cert, a_key) = env.new_root("a", "example.org").await;
    let run = env
        .ca(&["init", "--root-cert", &a_cert, "--root-key", &a_key])
        .await;
    assert!(
        run.ok()
            .contains("created ConfigMap lanyard/lanyard-bundle"),
        "{}",
        run.stdout
    );
    let ca = env.cluster_ca().await;
    assert_eq!(ca.roots(), [fingerprint_of(&a_cert)]);
    assert!(ca.issued_by(&a_cert));
    assert!(ca.jwt.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_eq!(ca.rotation, None);
    assert_eq!(
        env.secret().await.type_.as_deref(),
        Some("kubernetes.io/tls")
    );
    // The root key is nowhere in the cluster.
    let key = std::fs::read_to_string(&a_key).unwrap();
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!ca.tls_crt.contains(&body) && !ca.jwt.contains(&body));

    let before = env.versions().await;
    let again = env
        .ca(&["init", "--root-cert", &a_cert, "--root-key", &a_key])
        .await;
    assert!(
        again
            .refused("ca_exists")
            .contains("Secret lanyard/lanyard-ca already exists")
    );
    assert_eq!(env.versions().await, before);

    // Another namespace: a wrong key is an error naming the file, nothing is created.
    let (b_cert, b_key) = env.new_root("b", "example.org").await;
    let run = env
        .ca(&[
            "init",
            "--namespace",
            "other",
            "--root-cert",
            &a_cert,
            "--root-key",
            &b_key,
        ])
        .await;
    assert!(!run.ok);
    assert!(
        run.stderr.contains("b.key: not the key of"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("PRIVATE KEY"), "{}", run.stderr);
    let other: Api<Secret> = Api::namespaced(env.fixture.admin_client().unwrap(), "other");
    assert!(other.get_opt("lanyard-ca").await.unwrap().is_none());
    let _ = b_cert;

    // Status without replicas: the CA, and a warning that nothing reports.
    let status = status_json(&env.ca(&["status", "--output", "json"]).await);
    assert_eq!(status["trust_domain"], "example.org");
    assert!(status["rotation"].is_null() && status["step"].is_null());
    assert_eq!(status["roots"][0]["fingerprint"], fingerprint_of(&a_cert));
    assert!(
        status["warnings"]
            .to_string()
            .contains("no lanyard-server replica has reported"),
        "{status}"
    );
    let text = env.ca(&["status"]).await;
    assert!(text.ok().contains("rotation       none"), "{}", text.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_root_rotation_waits_for_each_phase_to_propagate() {
    let env = Env::start().await;
    let (a_cert, a_key) = env.new_root("a", "example.org").await;
    let (b_cert, b_key) = env.new_root("b", "example.org").await;
    let (fa, fb) = (fingerprint_of(&a_cert), fingerprint_of(&b_cert));
    env.ca(&["init", "--root-cert", &a_cert, "--root-key", &a_key])
        .await
        .ok();
    let now = unix_seconds(SystemTime::now());
    let v1 = env.cluster_ca().await;
    let old = v1.served();
    env.report(
        "r1",
        &old,
        v1.signing(&fa, now - 5000, 100),
        vec![ack("n1", &old.version, &[&fa])],
    )
    .await;
    env.report(
        "r2",
        &old,
        v1.signing(&fa, now - 5000, 100),
        vec![ack("n2", &old.version, &[&fa])],
    )
    .await;

    // Out of turn.
    env.ca(&["rotate-root", "retire"])
        .await
        .refused("no_rotation");
    env.ca(&[
        "rotate-root",
        "switch",
        "--root-cert",
        &b_cert,
        "--root-key",
        &b_key,
    ])
    .await
    .refused("no_rotation");
    let (x_cert, _) = env.new_root("x", "other.org").await;
    let wrong_td = env
        .ca(&["rotate-root", "add", "--root-cert", &x_cert])
        .await;
    assert!(
        wrong_td.stderr.contains("trust domain other.org"),
        "{}",
        wrong_td.stderr
    );

    // add.
    let add = env
        .ca(&["rotate-root", "add", "--root-cert", &b_cert])
        .await;
    assert!(add.ok().contains("added root"), "{}", add.stdout);
    let v2 = env.cluster_ca().await;
    assert_eq!(v2.roots(), [fa.clone(), fb.clone()]);
    assert!(
        v2.rotation
            .as_deref()
            .unwrap()
            .contains("\"phase\":\"added\"")
    );
    assert!(v2.jwt_next.is_some() && v2.jwt == v1.jwt && v2.tls_crt == v1.tls_crt);
    env.ca(&["rotate-root", "add", "--root-cert", &b_cert])
        .await
        .refused("rotation_in_progress");
    // issue-intermediate refuses the new root: the intermediate chains to the old one.
    env.ca(&[
        "issue-intermediate",
        "--root-cert",
        &b_cert,
        "--root-key",
        &b_key,
    ])
    .await
    .refused("foreign_root");

    // switch: refused while r1 and n1 still have the old bundle.
    let both = v2.served();
    assert!(
        both.jwt_key_ids
            .contains(&kid(v2.jwt_next.as_ref().unwrap()))
    );
    env.report(
        "r2",
        &both,
        v2.signing(&fa, now - 5000, 100),
        vec![ack("n2", &both.version, &[&fa])],
    )
    .await;
    let before = env.versions().await;
    let switch = [
        "rotate-root",
        "switch",
        "--root-cert",
        &b_cert,
        "--root-key",
        &b_key,
    ];
    let refused = env.ca(&switch).await;
    let message = refused.refused("not_propagated");
    assert!(message.contains("1/2 replicas, 1/2 agents"), "{message}");
    assert!(
        message.contains("replica r1") && message.contains("agent on n1"),
        "{message}"
    );
    assert_eq!(env.versions().await, before, "a refusal writes nothing");
    let status = status_json(&env.ca(&["status", "--output", "json"]).await);
    assert_eq!(status["step"]["next"], "switch");
    assert_eq!(status["step"]["complete"], false);
    assert_eq!(status["step"]["replicas_done"], 1);
    assert_eq!(status["versions"][&old.version]["replicas"], 1);
    assert_eq!(status["versions"][&both.version]["agents"], 1);
    assert!(
        status["warnings"]
            .to_string()
            .contains("replicas serve different bundle versions")
    );
    // Switching with the wrong root is refused by name.
    env.ca(&[
        "rotate-root",
        "switch",
        "--root-cert",
        &a_cert,
        "--root-key",
        &a_key,
    ])
    .await
    .refused("not_the_new_root");

    // Propagated: switch goes through.
    env.report(
        "r1",
        &both,
        v2.signing(&fa, now - 5000, 100),
        vec![ack("n1", &both.version, &[&fa])],
    )
    .await;
    let status = status_json(&env.ca(&["status", "--output", "json"]).await);
    assert_eq!(status["step"]["complete"], true, "{status}");
    let run = env.ca(&switch).await;
    assert!(run.ok().contains("switched signing"), "{}", run.stdout);
    let v3 = env.cluster_ca().await;
    assert!(v3.issued_by(&b_cert) && !v3.issued_by(&a_cert));
    assert_eq!(v3.jwt, *v2.jwt_next.as_ref().unwrap());
    assert_eq!(v3.jwt_previous.as_ref(), Some(&v2.jwt));
    assert_eq!(v3.jwt_next, None);
    assert_eq!(v3.roots(), [fa.clone(), fb.clone()]);
    assert!(
        v3.rotation
            .as_deref()
            .unwrap()
            .contains("\"phase\":\"switched\"")
    );
    env.ca(&switch).await.refused("wrong_phase");

    // retire: refused while a replica signs under the old root, then while old SVIDs may
    // still be valid, then accepted.
    let served3 = v3.served();
    let retire = ["rotate-root", "retire"];
    env.report(
        "r1",
        &served3,
        v3.signing(&fb, now, 100),
        vec![ack("n1", &served3.version, &[&fb])],
    )
    .await;
    env.report(
        "r2",
        &served3,
        v2.signing(&fa, now - 5000, 100),
        vec![ack("n2", &served3.version, &[&fa])],
    )
    .await;
    let message = env.ca(&retire).await.refused("not_propagated").to_owned();
    assert!(
        message.contains("replica r2") && message.contains("agent on n2"),
        "{message}"
    );
    env.report(
        "r2",
        &served3,
        v3.signing(&fb, now, 3600),
        vec![ack("n2", &served3.version, &[&fb])],
    )
    .await;
    let before = env.versions().await;
    let message = env
        .ca(&retire)
        .await
        .refused("old_svids_unexpired")
        .to_owned();
    assert!(message.contains("retry then"), "{message}");
    assert_eq!(env.versions().await, before);
    env.report(
        "r2",
        &served3,
        v3.signing(&fb, now - 5000, 100),
        vec![ack("n2", &served3.version, &[&fb])],
    )
    .await;
    env.report(
        "r1",
        &served3,
        v3.signing(&fb, now - 5000, 100),
        vec![ack("n1", &served3.version, &[&fb])],
    )
    .await;
    let run = env.ca(&retire).await;
    assert!(run.ok().contains("rotation is complete"), "{}", run.stdout);
    let v4 = env.cluster_ca().await;
    assert_eq!(v4.roots(), [fb.as_str()]);
    assert_eq!(v4.rotation, None);
    assert_eq!(v4.jwt_previous, None);
    assert_eq!(v4.jwt, v3.jwt);

    // issue-intermediate: the retired root is refused, the new one accepted.
    env.ca(&[
        "issue-intermediate",
        "--root-cert",
        &a_cert,
        "--root-key",
        &a_key,
    ])
    .await
    .refused("root_not_in_bundle");
    let run = env
        .ca(&[
            "issue-intermediate",
            "--root-cert",
            &b_cert,
            "--root-key",
            &b_key,
            "--ttl",
            "30d",
        ])
        .await;
    assert!(run.ok().contains("new intermediate"), "{}", run.stdout);
    let v5 = env.cluster_ca().await;
    assert!(v5.issued_by(&b_cert));
    assert_ne!(v5.tls_crt, v4.tls_crt);
    assert_eq!((v5.jwt, v5.bundle_pem), (v4.jwt, v4.bundle_pem));
    // A 30-day intermediate is within the 60-day warning.
    let status = status_json(&env.ca(&["status", "--output", "json"]).await);
    assert!(
        status["warnings"].to_string().contains("intermediate"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn abort_steps_back_from_both_phases() {
    let env = Env::start().await;
    let (a_cert, a_key) = env.new_root("a", "example.org").await;
    let (b_cert, b_key) = env.new_root("b", "example.org").await;
    let (fa, fb) = (fingerprint_of(&a_cert), fingerprint_of(&b_cert));
    env.ca(&["init", "--root-cert", &a_cert, "--root-key", &a_key])
        .await
        .ok();
    let v1 = env.cluster_ca().await;
    env.ca(&["rotate-root", "abort"])
        .await
        .refused("no_rotation");

    // From added: the new root and the next JWT key go; nothing waits.
    env.ca(&["rotate-root", "add", "--root-cert", &b_cert])
        .await
        .ok();
    let run = env.ca(&["rotate-root", "abort"]).await;
    assert!(run.ok().contains("aborted the rotation"), "{}", run.stdout);
    let back = env.cluster_ca().await;
    assert_eq!(back.roots(), [fa.as_str()]);
    assert_eq!((back.rotation, back.jwt_next), (None, None));
    assert_eq!(
        (back.jwt, back.tls_crt),
        (v1.jwt.clone(), v1.tls_crt.clone())
    );

    // Again, through switch.
    env.ca(&["rotate-root", "add", "--root-cert", &b_cert])
        .await
        .ok();
    let v2 = env.cluster_ca().await;
    let now = unix_seconds(SystemTime::now());
    let both = v2.served();
    for (r, n) in [("r1", "n1"), ("r2", "n2")] {
        env.report(
            r,
            &both,
            v2.signing(&fa, now - 5000, 100),
            vec![ack(n, &both.version, &[&fa])],
        )
        .await;
    }
    env.ca(&[
        "rotate-root",
        "switch",
        "--root-cert",
        &b_cert,
        "--root-key",
        &b_key,
    ])
    .await
    .ok();
    let v3 = env.cluster_ca().await;

    // From switched: needs the OLD root's files.
    env.ca(&["rotate-root", "abort"])
        .await
        .refused("needs_old_root");
    env.ca(&[
        "rotate-root",
        "abort",
        "--root-cert",
        &b_cert,
        "--root-key",
        &b_key,
    ])
    .await
    .refused("not_the_old_root");
    let run = env
        .ca(&[
            "rotate-root",
            "abort",
            "--root-cert",
            &a_cert,
            "--root-key",
            &a_key,
        ])
        .await;
    assert!(run.ok().contains("switched signing back"), "{}", run.stdout);
    let v4 = env.cluster_ca().await;
    assert!(v4.issued_by(&a_cert));
    assert_eq!(v4.jwt, v1.jwt, "the old JWT key signs again");
    assert_eq!(
        v4.jwt_next.as_ref(),
        Some(&v3.jwt),
        "the new one stays published"
    );
    assert_eq!(v4.jwt_previous, None);
    assert_eq!(v4.roots(), [fa.clone(), fb.clone()]);
    let rotation = v4.rotation.clone().unwrap();
    assert!(rotation.contains("\"phase\":\"added\"") && rotation.contains("switched_at"));

    // Aborting the rest removes root B: not while replicas sign under it or agents hold
    // SVIDs under it (the reports still say so).
    let served4 = v4.served();
    for (r, n) in [("r1", "n1"), ("r2", "n2")] {
        env.report(
            r,
            &served4,
            v3.signing(&fb, now, 100),
            vec![ack(n, &served4.version, &[&fb])],
        )
        .await;
    }
    let before = env.versions().await;
    let message = env
        .ca(&["rotate-root", "abort"])
        .await
        .refused("not_propagated")
        .to_owned();
    assert!(
        message.starts_with("refusing to abort: signing back under the old root"),
        "{message}"
    );
    assert_eq!(env.versions().await, before);
    for (r, n) in [("r1", "n1"), ("r2", "n2")] {
        env.report(
            r,
            &served4,
            v4.signing(&fa, now - 5000, 100),
            vec![ack(n, &served4.version, &[&fa])],
        )
        .await;
    }
    let run = env.ca(&["rotate-root", "abort"]).await;
    assert!(run.ok().contains("aborted the rotation"), "{}", run.stdout);
    let v5 = env.cluster_ca().await;
    assert_eq!(v5.roots(), [fa]);
    assert_eq!(
        (v5.rotation, v5.jwt_next, v5.jwt_previous),
        (None, None, None)
    );
    assert_eq!(v5.jwt, v1.jwt);
}
