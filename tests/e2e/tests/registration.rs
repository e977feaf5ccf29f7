//! Registration the Kubernetes way, over real processes: two `lanyard-server` replicas in
//! cluster mode against the Kubernetes API fixture (with the LanyardIdentity CRD installed from
//! the manifest `lanyard install` prints, and the RBAC it renders), one `lanyard-agent` per
//! replica on node-1, and clients (`lanyard-agent api fetch x509`) in pod-shaped cgroups.
//!
//! - Without a resource, pods get the default template's ID.
//! - Creating a LanyardIdentity gives the pods it selects its templated ID and DNS names at
//!   their next SVID, without a restart, in the container its workload selector names (not a
//!   sidecar's); editing it changes the ID; deleting it falls back.
//! - Two resources giving one pod different IDs: the pod gets neither, and both statuses say
//!   why. A resource whose template renders a reserved or foreign ID is refused.
//! - Both replicas (and so both agents) agree at every step.
//!
//! A second test edits a data-dir server's static entries file while it runs.
//!
//! Needs root and the cgroup v1 `pids` hierarchy; without them the cluster test fails saying
//! so, unless `LANYARD_SKIP_CGROUP_TESTS=1`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{Api, DeleteParams, PostParams};
use kube_fixture::{FixtureOptions, KubeFixture};
use lanyard_e2e::DEADLINE;
use lanyard_e2e::cgroup::{CgroupDirs, fresh_container_id, pids_root_or_skip};
use lanyard_e2e::client::{CliOutput, RunAs, api, api_until};
use lanyard_e2e::cluster::{pod, seed};
use lanyard_e2e::stack::{Agent, Server, server_kubeconfig, start_node_agent};
use lanyard_registration::{LanyardIdentity, LanyardIdentitySpec, LanyardIdentityStatus};

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

const DEFAULT_WEB_ID: &str = "spiffe://example.org/ns/default/sa/web";

/// The first SPIFFE ID a successful `fetch x509` printed.
fn first_id(out: &CliOutput) -> Option<&str> {
    out.success
        .then(|| out.stdout.lines().next()?.split(' ').next())
        .flatten()
}

/// `fetch x509 --write DIR` in `cgroup` on `socket` until the default SVID's ID is `want`
/// (`None`: until the workload is refused with "no identity issued"). Returns the SANs of the
/// SVID written (URIs, DNS names), empty when refused.
fn fetch_until(socket: &Path, cgroup: &Path, out_dir: &Path, want: Option<&str>) -> Sans {
    let out_str = out_dir.to_str().expect("utf-8 path");
    let got = api_until(
        socket,
        &["fetch", "x509", "--write", out_str],
        RunAs::InCgroup(cgroup),
        |o| match want {
            Some(id) => first_id(o) == Some(id),
            None => !o.success && o.stderr.contains("no identity issued"),
        },
    );
    if want.is_none() {
        return Sans::default();
    }
    assert!(got.success, "{got:?}");
    sans(&out_dir.join("svid.pem"))
}

#[derive(Debug, Default, PartialEq)]
struct Sans {
    uris: Vec<String>,
    dns: Vec<String>,
    /// notAfter - notBefore of the leaf.
    lifetime_secs: i64,
}

/// The subject alternative names of the leaf in a PEM chain.
fn sans(path: &Path) -> Sans {
    use x509_parser::extensions::GeneralName;
    let pem = std::fs::read(path).expect("read svid.pem");
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem).expect("a PEM certificate");
    let cert = block.parse_x509().expect("a certificate");
    let validity = cert.validity();
    let mut out = Sans {
        lifetime_secs: validity.not_after.timestamp() - validity.not_before.timestamp(),
        ..Default::default()
    };
    if let Some(ext) = cert.subject_alternative_name().expect("one SAN extension") {
        for name in &ext.value.general_names {
            match name {
                GeneralName::URI(uri) => out.uris.push(uri.to_string()),
                GeneralName::DNSName(dns) => out.dns.push(dns.to_string()),
                other => panic!("unexpected SAN {other:?}"),
            }
        }
    }
    out
}

fn selecting(labels: &[(&str, &str)]) -> Option<LabelSelector> {
    Some(LabelSelector {
        match_labels: Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    })
}

/// Waits until `name`'s status satisfies `done`; fails with the last status at the deadline.
async fn status_until(
    api: &Api<LanyardIdentity>,
    name: &str,
    mut done: impl FnMut(&LanyardIdentity, &LanyardIdentityStatus) -> bool,
) -> LanyardIdentityStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let resource = api.get(name).await.expect("get the LanyardIdentity");
        let status = resource.status.clone().unwrap_or_default();
        if done(&resource, &status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "status of {name} never got there; last: {status:?}"
        );
        // Polling the API at a human pace while the status writer catches up.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn current(status: &LanyardIdentityStatus, resource: &LanyardIdentity) -> bool {
    status.observed_generation.is_some()
        && status.observed_generation == resource.metadata.generation
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanyard_identities_decide_what_pods_are_issued() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(pids) = pids_root_or_skip() else {
        return;
    };
    let mut cgroups = CgroupDirs::default();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path();

    // The cluster, with the CRD exactly as `lanyard install` prints it.
    let fixture = KubeFixture::start(FixtureOptions::default()).await.unwrap();
    // The server's RBAC, CA Secret and bundle; the agents' pods come with them.
    blocking(|| seed(&fixture));
    let admin = fixture.admin_client().unwrap();
    let crd: CustomResourceDefinition =
        serde_saphyr::from_str(lanyard_registration::crd::CRD_YAML).expect("the CRD parses");
    Api::<CustomResourceDefinition>::all(admin.clone())
        .create(&PostParams::default(), &crd)
        .await
        .expect("the API server accepts the CRD");
    let store = fixture.store();
    store
        .create(&Namespace {
            metadata: ObjectMeta {
                name: Some("default".into()),
                labels: Some([("team".to_string(), "payments".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        })
        .expect("create namespace default");
    let (cid_web, cid_api) = (fresh_container_id(), fresh_container_id());
    // web-1 runs its app and a sidecar container.
    let cid_sidecar = fresh_container_id();
    let mut web = pod("default", "web-1", "web", "node-1", Some(&cid_web));
    let statuses = web
        .status
        .as_mut()
        .unwrap()
        .container_statuses
        .as_mut()
        .unwrap();
    let mut sidecar = statuses[0].clone();
    sidecar.name = "sidecar".into();
    sidecar.container_id = Some(format!("containerd://{cid_sidecar}"));
    statuses.push(sidecar);
    let web = store.create(&web).unwrap();
    let mut api_pod = pod("default", "api-1", "api", "node-1", Some(&cid_api));
    api_pod
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("zone".into(), "lanyard".into());
    let api_pod = store.create(&api_pod).unwrap();
    let uid = |p: &Pod| p.metadata.uid.clone().expect("the fixture assigns UIDs");
    let in_web = cgroups.container(&pids, &uid(&web), &cid_web);
    let in_api = cgroups.container(&pids, &uid(&api_pod), &cid_api);
    let in_sidecar = cgroups.container(&pids, &uid(&web), &cid_sidecar);

    // Two replicas under the installed RBAC, and an agent on node-1 against each.
    let kubeconfig = server_kubeconfig(&fixture);
    let (server_a, server_b) = blocking(|| {
        (
            Server::start_replica(dir, &kubeconfig, "server-a", &[]),
            Server::start_replica(dir, &kubeconfig, "server-b", &[]),
        )
    });
    let (agent_a, agent_b): (Agent, Agent) = blocking(|| {
        (
            start_node_agent(&dir.join("agent-a"), &fixture, "node-1", server_a.addr),
            start_node_agent(&dir.join("agent-b"), &fixture, "node-1", server_b.addr),
        )
    });
    let sockets: [PathBuf; 2] = [agent_a.socket.clone(), agent_b.socket.clone()];
    let out = |n: &str| {
        let d = dir.join("out").join(n);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    // Every replica's agent must see the same thing.
    let both_until = |cgroup: &Path, want: Option<&str>| -> Sans {
        let [a, b] = &sockets;
        let sans_a = blocking(|| fetch_until(a, cgroup, &out("a"), want));
        let sans_b = blocking(|| fetch_until(b, cgroup, &out("b"), want));
        assert_eq!(
            (&sans_a.uris, &sans_a.dns),
            (&sans_b.uris, &sans_b.dns),
            "the two replicas disagree"
        );
        sans_a
    };

    // No resource yet: the default template.
    let sans = both_until(&in_web, Some(DEFAULT_WEB_ID));
    assert_eq!(sans.uris, [DEFAULT_WEB_ID]);
    assert!(sans.dns.is_empty(), "{sans:?}");

    // A resource selecting web-1 (by pod and namespace labels): its ID and DNS names, only
    // for the container it names.
    let identities: Api<LanyardIdentity> = Api::all(admin.clone());
    let spec = LanyardIdentitySpec {
        spiffe_id_template: "/team/{namespace_label:team}/{label:app}".into(),
        pod_selector: selecting(&[("app", "web-1")]),
        namespace_selector: selecting(&[("team", "payments")]),
        dns_name_templates: vec![
            "{label:app}.{namespace}.svc.cluster.local".into(),
            "{pod_name}.example.internal".into(),
        ],
        workload_selector_templates: vec!["k8s:container-name:app".into()],
        x509_ttl: Some("20m".into()),
        ..Default::default()
    };
    identities
        .create(
            &PostParams::default(),
            &LanyardIdentity::new("web", spec.clone()),
        )
        .await
        .expect("create LanyardIdentity web");
    let web_id = "spiffe://example.org/team/payments/web-1";
    let sans = both_until(&in_web, Some(web_id));
    assert_eq!(sans.uris, [web_id], "the SPIFFE ID stays the only URI SAN");
    assert_eq!(
        sans.dns,
        ["web-1.default.svc.cluster.local", "web-1.example.internal"]
    );
    assert!(
        (20 * 60..=21 * 60).contains(&sans.lifetime_secs),
        "the resource's x509TTL (20m) applies: {sans:?}"
    );
    // The sidecar in the same pod is not the container the resource names: nothing.
    both_until(&in_sidecar, None);
    let status = status_until(&identities, "web", |r, s| {
        current(s, r) && s.pods_issued == 1
    })
    .await;
    assert_eq!(
        (status.pods_matched, status.pods_refused),
        (1, 0),
        "{status:?}"
    );
    assert!(status.spec_error.is_none(), "{status:?}");

    // Editing it changes the ID at the pod's next SVID.
    let mut edited = identities.get("web").await.unwrap();
    edited.spec.spiffe_id_template = "/team/{namespace_label:team}/{label:app}/v2".into();
    // Longer than anything the servers were started to issue (1 h): capped, since CA rotation
    // waits only that long for SVIDs under an old root.
    edited.spec.x509_ttl = Some("48h".into());
    identities
        .replace("web", &PostParams::default(), &edited)
        .await
        .expect("edit LanyardIdentity web");
    let web_v2 = "spiffe://example.org/team/payments/web-1/v2";
    let sans = both_until(&in_web, Some(web_v2));
    assert!(
        (3600..=3660).contains(&sans.lifetime_secs),
        "48h is capped to the servers' longest TTL, 1h: {sans:?}"
    );

    // A second resource giving web-1 another ID: a conflict; the pod gets neither (and not
    // the default), and both statuses report it.
    let conflicting = LanyardIdentitySpec {
        spiffe_id_template: "/other/{pod_name}".into(),
        pod_selector: selecting(&[("app", "web-1")]),
        ..Default::default()
    };
    identities
        .create(
            &PostParams::default(),
            &LanyardIdentity::new("web-other", conflicting),
        )
        .await
        .unwrap();
    both_until(&in_web, None);
    for name in ["web", "web-other"] {
        let status = status_until(&identities, name, |r, s| {
            current(s, r) && s.pods_refused == 1
        })
        .await;
        assert_eq!(status.pods_issued, 0, "{name}: {status:?}");
        assert_eq!(status.refusals.len(), 1, "{name}: {status:?}");
        assert_eq!(status.refusals[0].pod, "default/web-1");
        assert_eq!(status.refusals[0].reason, "conflict", "{name}: {status:?}");
    }

    // Resolving the conflict restores the edited resource's ID.
    identities
        .delete("web-other", &DeleteParams::default())
        .await
        .unwrap();
    both_until(&in_web, Some(web_v2));

    // Refused resources: one whose template can only be reserved, one in another trust
    // domain (refused whole), and one whose render for api-1 is reserved (`zone=lanyard`).
    for (name, template) in [
        ("reserved", "/lanyard/{pod_name}"),
        ("foreign", "spiffe://other.org/{pod_name}"),
    ] {
        identities
            .create(
                &PostParams::default(),
                &LanyardIdentity::new(
                    name,
                    LanyardIdentitySpec {
                        spiffe_id_template: template.into(),
                        pod_selector: selecting(&[("app", "api-1")]),
                        ..Default::default()
                    },
                ),
            )
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
        let status = status_until(&identities, name, |r, s| {
            current(s, r) && s.spec_error.is_some()
        })
        .await;
        assert_eq!(status.pods_issued, 0, "{name}: {status:?}");
    }
    identities
        .create(
            &PostParams::default(),
            &LanyardIdentity::new(
                "by-zone",
                LanyardIdentitySpec {
                    spiffe_id_template: "/{label:zone}/{pod_name}".into(),
                    pod_selector: selecting(&[("app", "api-1")]),
                    ..Default::default()
                },
            ),
        )
        .await
        .unwrap();
    both_until(&in_api, None);
    let status = status_until(&identities, "by-zone", |r, s| {
        current(s, r) && s.pods_refused == 1
    })
    .await;
    assert_eq!(status.refusals[0].reason, "reserved_id", "{status:?}");

    // Deleting the resources falls back to the default template.
    for name in ["web", "by-zone", "reserved", "foreign"] {
        identities
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    both_until(&in_web, Some(DEFAULT_WEB_ID));
    both_until(&in_api, Some("spiffe://example.org/ns/default/sa/api"));

    drop((agent_a, agent_b, server_a, server_b));
    drop(fixture);
}

/// A data-dir server's `[[entries]]` edited while it runs: the next SVID follows the file (ID
/// and DNS names); a broken edit is refused and the entries before it keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_entries_follow_their_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let entries = |id: &str, dns: &str| {
        format!(
            "[[entries]]\nspiffe_id = \"spiffe://example.org/{id}\"\nselectors = [\"unix:uid:{uid}\"]\nnodes = [\"*\"]\ndns_names = [{dns}]\n"
        )
    };
    let server = blocking(|| Server::start(dir, &entries("svc/a", "")));
    let agent = blocking(|| Agent::start(dir, &server, "node-1"));
    let config = dir.join("server.toml");
    let fetch = |want: &str| {
        let out = dir.join("svid");
        std::fs::create_dir_all(&out).unwrap();
        let out_str = out.to_str().unwrap().to_owned();
        let got = blocking(|| {
            api_until(
                &agent.socket,
                &["fetch", "x509", "--write", &out_str],
                RunAs::Me,
                |o| first_id(o) == Some(want),
            )
        });
        assert!(got.success, "{got:?}");
        sans(&out.join("svid.pem"))
    };
    assert!(fetch("spiffe://example.org/svc/a").dns.is_empty());

    // An edit: the new entry (and its DNS name) at the workload's next SVID, no restart.
    std::fs::write(&config, entries("svc/b", "\"b.example.internal\"")).unwrap();
    let sans = fetch("spiffe://example.org/svc/b");
    assert_eq!(sans.uris, ["spiffe://example.org/svc/b"]);
    assert_eq!(sans.dns, ["b.example.internal"]);

    // A broken edit (a reserved ID): refused, said in the log, the entries in force stay.
    std::fs::write(&config, entries("lanyard/server", "")).unwrap();
    let deadline = Instant::now() + DEADLINE;
    while !server
        .process
        .stderr_text()
        .lines()
        .any(|l| l.contains("entries") && l.contains("reserved"))
    {
        assert!(
            Instant::now() < deadline,
            "the server never refused the broken entries file: {}",
            server.process.stderr_text()
        );
        // Polling the server's log at a human pace while it re-reads the file.
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        fetch("spiffe://example.org/svc/b").uris,
        ["spiffe://example.org/svc/b"]
    );
    let again = blocking(|| api(&agent.socket, &["fetch", "x509"], RunAs::Me));
    assert_eq!(
        first_id(&again),
        Some("spiffe://example.org/svc/b"),
        "{again:?}"
    );

    drop(agent);
    drop(server);
}
