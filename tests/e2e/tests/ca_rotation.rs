//! A full root rotation and an intermediate re-issue under live traffic, with nothing
//! restarted, on the Kubernetes API fixture, driven by the real `lanyard ca` commands that
//! docs/OPERATIONS.md gives (the same commands, in the same order):
//!
//! - two `lanyard-server` replicas (`--replica-name lanyard-server-a`/`-b`, SVIDs living 20 s so
//!   the old root's run out within a minute of the switch); agents on node-1 (to replica a) and
//!   node-2 (to replica b), and on node-3 (no workloads, to replica a);
//! - proxy A in pod web-1 (node-1) with an explicit mTLS outbound to proxy B in pod api-1
//!   (node-2), in front of an echo app; one connection through A and B held open from start to
//!   end, and a client opening a new one every 100 ms;
//! - `lanyard ca new-root` and `lanyard ca init` create the CA; `status` shows both replicas
//!   and the three agents on one bundle version;
//! - node-3's agent is stopped (SIGSTOP: connected, not acknowledging) before `rotate-root
//!   add`; a `switch` at once is refused (`not_propagated`, waiting for the agent on node-3);
//!   once everything else has the new root, the stopped agent is killed; the replicas keep
//!   reporting its last acknowledgement for the longest SVID lifetime (its node's workloads
//!   would live on that bundle until then), after which `status` shows the switch step
//!   complete, and `switch` is accepted;
//! - a `retire` at once is refused; node-3's agent starts again with its trust bundle file
//!   refreshed from the ConfigMap (as kubelet would) and catches up (`status` lists it on the
//!   replicas' bundle version); `status` shows the retire step complete once the old SVIDs can
//!   have expired, and `retire` is accepted;
//! - `issue-intermediate` with the retired root is refused; with the current root it is
//!   accepted, both replicas sign with the new intermediate and the proxies renew under it;
//! - at the end the long-lived connection still carries bytes, no new connection failed in any
//!   phase, and every server, agent (but node-3's) and proxy is the process it was.
//!
//! Every wait is on `lanyard ca status --output json` (or a metric) with a deadline.
//!
//! Needs root and the cgroup v1 `pids` hierarchy (as proxy_live_root.rs); without them it fails
//! saying so, unless `LANYARD_SKIP_CGROUP_TESTS=1`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube_fixture::{FixtureOptions, KubeFixture};
use lanyard_e2e::binary;
use lanyard_e2e::cgroup::{CgroupDirs, fresh_container_id, pids_root_or_skip};
use lanyard_e2e::cluster::{pod, server_rbac};
use lanyard_e2e::echo::EchoApp;
use lanyard_e2e::process::Process;
use lanyard_e2e::proxy::{Launch, Proxy, round_trip};
use lanyard_e2e::stack::{
    Agent, Server, TRUST_DOMAIN, project_bundle, server_kubeconfig, start_node_agent,
};
use lanyard_svid::bundle::{certificate_fingerprint, certificates_from_pem};
use serde_json::Value;

const API: &str = "spiffe://example.org/ns/default/sa/api";
/// Every SVID the replicas issue lives 20 s: after a switch, the old root's SVIDs are gone
/// within a minute, and `retire` (which also waits a 60 s margin) is allowed soon after.
const SVID_TTL: &str = "20s";
/// The longest phase wait: a retire needs the 20 s SVIDs, the 60 s margin and the reports.
const PHASE_DEADLINE: Duration = Duration::from_secs(240);
const UPDATES: &str = "lanyard_proxy_svid_updates_total";

/// `lanyard ca ...` against the fixture, as an operator runs it with an admin kubeconfig.
struct Ca<'a> {
    kubeconfig: &'a Path,
    /// The operator's files (roots and their keys).
    dir: &'a Path,
}

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ca<'_> {
    fn run(&self, args: &[&str]) -> Ran {
        let output = Command::new(binary("lanyard"))
            .arg("ca")
            .args(args)
            .current_dir(self.dir)
            .env("KUBECONFIG", self.kubeconfig)
            .output()
            .expect("run lanyard ca");
        Ran {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Runs a command that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let ran = self.run(args);
        assert_eq!(
            ran.code,
            Some(0),
            "lanyard ca {}: {}{}",
            args.join(" "),
            ran.stdout,
            ran.stderr
        );
        ran.stdout
    }

    /// Runs a command that must be refused with `label`; its message.
    fn refused(&self, args: &[&str], label: &str) -> String {
        let ran = self.run(args);
        let prefix = format!("lanyard ca: refused ({label}): ");
        assert!(
            ran.code == Some(1) && ran.stderr.starts_with(&prefix),
            "lanyard ca {} should be refused ({label}): exit {:?}\n{}{}",
            args.join(" "),
            ran.code,
            ran.stdout,
            ran.stderr
        );
        ran.stderr[prefix.len()..].trim().to_owned()
    }

    fn status(&self) -> Value {
        let text = self.ok(&["status", "--output", "json"]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("status JSON: {e}: {text}"))
    }

    /// Polls `status --output json` until `done` holds, failing after `deadline` with the last
    /// status.
    fn wait(&self, what: &str, deadline: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + deadline;
        loop {
            let status = self.status();
            if done(&status) {
                return status;
            }
            assert!(
                Instant::now() < until,
                "timed out waiting for {what}; last status:\n{status:#}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// The status's next step, if it is `next` and complete.
fn step_complete(status: &Value, next: &str) -> bool {
    status["step"]["next"] == next && status["step"]["complete"] == true
}

/// The agents `status` lists, by node, with the bundle version each acknowledged.
fn agent_versions(status: &Value) -> BTreeMap<String, String> {
    status["agents"]
        .as_array()
        .map(|agents| {
            agents
                .iter()
                .map(|a| {
                    (
                        a["node"].as_str().unwrap_or_default().to_owned(),
                        a["version"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The one bundle version every live replica serves, if they agree.
fn replicas_version(status: &Value) -> Option<String> {
    let replicas = status["replicas"].as_array()?;
    let first = replicas.first()?["bundle_version"].as_str()?;
    replicas
        .iter()
        .all(|r| r["bundle_version"] == first)
        .then(|| first.to_owned())
}

/// Both replicas report, and serve one version every listed agent in `nodes` acknowledged
/// (and no other agent is listed).
fn settled(status: &Value, nodes: &[&str]) -> bool {
    let Some(version) = replicas_version(status) else {
        return false;
    };
    let agents = agent_versions(status);
    status["replicas"].as_array().map(Vec::len) == Some(2)
        && agents.len() == nodes.len()
        && nodes.iter().all(|n| agents.get(*n) == Some(&version))
}

/// Fingerprint of the first certificate of a PEM file.
fn fingerprint_of(path: &Path) -> String {
    let pem = std::fs::read(path).expect("read a certificate");
    let certs = certificates_from_pem(&pem).expect("a PEM certificate");
    certificate_fingerprint(certs[0].as_ref())
}

/// A client opening a new connection through proxy A every 100 ms, counting by phase.
struct Traffic {
    stop: Arc<AtomicBool>,
    phase: Arc<Mutex<String>>,
    ok: Arc<Mutex<BTreeMap<String, u32>>>,
    failures: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(through: SocketAddr) -> Self {
        let traffic = Self {
            stop: Arc::default(),
            phase: Arc::new(Mutex::new("start".into())),
            ok: Arc::default(),
            failures: Arc::default(),
            thread: None,
        };
        let (stop, phase, ok, failures) = (
            traffic.stop.clone(),
            traffic.phase.clone(),
            traffic.ok.clone(),
            traffic.failures.clone(),
        );
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let started = Instant::now();
                let result = one_connection(through, n);
                let phase = phase.lock().unwrap().clone();
                match result {
                    Ok(()) => *ok.lock().unwrap().entry(phase).or_default() += 1,
                    Err(e) => failures
                        .lock()
                        .unwrap()
                        .push(format!("connection {n} in phase {phase}: {e}")),
                }
                // Pacing (one new connection every 100 ms), not synchronisation.
                std::thread::sleep(Duration::from_millis(100).saturating_sub(started.elapsed()));
            }
        });
        Self {
            thread: Some(thread),
            ..traffic
        }
    }

    fn phase(&self, name: &str) {
        *self.phase.lock().unwrap() = name.to_owned();
    }

    /// Stops the client; the successes by phase and the failures.
    fn finish(mut self) -> (BTreeMap<String, u32>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        (
            self.ok.lock().unwrap().clone(),
            self.failures.lock().unwrap().clone(),
        )
    }
}

/// One new connection through proxy A to the echo app behind proxy B, one message echoed.
fn one_connection(through: SocketAddr, n: u64) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&through, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let msg = format!("hello {n:>12}");
    stream
        .write_all(msg.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; msg.len()];
    stream
        .read_exact(&mut back)
        .map_err(|e| format!("read the echo: {e}"))?;
    if back != msg.as_bytes() {
        return Err(format!("echoed {:?}", String::from_utf8_lossy(&back)));
    }
    let _ = stream.shutdown(Shutdown::Write);
    Ok(())
}

/// The processes that must not restart: (what, pid).
fn pids(processes: &[(&str, &Process)]) -> Vec<(String, u32)> {
    processes
        .iter()
        .map(|(what, p)| ((*what).to_owned(), p.pid()))
        .collect()
}

/// Waits until proxy `proxy` has renewed its SVID `by` more times than `from`.
fn wait_renewals(proxy: &Proxy<'_>, from: f64, by: f64, what: &str) {
    let until = Instant::now() + PHASE_DEADLINE;
    loop {
        let now = proxy.metric(UPDATES);
        if now >= from + by {
            return;
        }
        assert!(
            Instant::now() < until,
            "{what}: {UPDATES} stayed at {now} (from {from})"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_and_an_intermediate_reissue_under_live_traffic() {
    let Some(pids_root) = pids_root_or_skip() else {
        return;
    };
    // Declared first, dropped last: the cgroups go after every process in them has exited.
    let mut cgroups = CgroupDirs::default();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path();
    let operator = dir.join("operator");
    std::fs::create_dir(&operator).unwrap();

    let fixture = KubeFixture::start(FixtureOptions::default()).await.unwrap();
    tokio::task::block_in_place(|| {
        fixture.apply_yaml(&server_rbac()).expect("apply the RBAC");
        let ca = Ca {
            kubeconfig: fixture.kubeconfig_path(),
            dir: &operator,
        };
        // The operator's root files, named relative to their directory as the runbook does.
        let (root1_key, root2) = (operator.join("root-1.key"), operator.join("root-2.pem"));

        // The CA, created directly in the cluster (never through kubectl apply).
        ca.ok(&[
            "new-root",
            "--trust-domain",
            TRUST_DOMAIN,
            "--cert",
            "root-1.pem",
            "--key",
            "root-1.key",
        ]);
        assert_eq!(
            std::fs::metadata(&root1_key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        ca.ok(&[
            "init",
            "--root-cert",
            "root-1.pem",
            "--root-key",
            "root-1.key",
        ]);
        // A second init is refused: the CA exists.
        ca.refused(
            &[
                "init",
                "--root-cert",
                "root-1.pem",
                "--root-key",
                "root-1.key",
            ],
            "ca_exists",
        );

        // Two replicas, agents on three nodes.
        let kubeconfig = server_kubeconfig(&fixture);
        let ttls = [
            "--x509-ttl",
            SVID_TTL,
            "--node-ttl",
            SVID_TTL,
            "--jwt-ttl",
            SVID_TTL,
        ];
        let mut server_a = Server::start_replica(dir, &kubeconfig, "lanyard-server-a", &ttls);
        let mut server_b = Server::start_replica(dir, &kubeconfig, "lanyard-server-b", &ttls);
        let agent_dir = |node: &str| dir.join(format!("agent-{node}"));
        let mut agent1 = start_node_agent(&agent_dir("node-1"), &fixture, "node-1", server_a.addr);
        let mut agent2 = start_node_agent(&agent_dir("node-2"), &fixture, "node-2", server_b.addr);
        let mut agent3: Option<Agent> = Some(start_node_agent(
            &agent_dir("node-3"),
            &fixture,
            "node-3",
            server_a.addr,
        ));

        // web-1 on node-1 (proxy A, outbound to B), api-1 on node-2 (proxy B, the echo app).
        let store = fixture.store();
        let uid = |p: &Pod| p.metadata.uid.clone().expect("the fixture assigns UIDs");
        let (web_cid, api_cid) = (fresh_container_id(), fresh_container_id());
        let web = store
            .create(&pod("default", "web-1", "web", "node-1", Some(&web_cid)))
            .unwrap();
        let api = store
            .create(&pod("default", "api-1", "api", "node-2", Some(&api_cid)))
            .unwrap();
        let app = EchoApp::start(None);
        let api_cgroup = cgroups.container(&pids_root, &uid(&api), &api_cid);
        let mut b = Proxy::start(
            &agent2.socket,
            Launch {
                cgroup: Some(&api_cgroup),
                ..Launch::default()
            },
            &["--inbound", &format!("127.0.0.1:0={}", app.addr)],
        );
        b.wait_ready();
        let web_cgroup = cgroups.container(&pids_root, &uid(&web), &web_cid);
        let mut a = Proxy::start(
            &agent1.socket,
            Launch {
                cgroup: Some(&web_cgroup),
                ..Launch::default()
            },
            &[
                "--outbound",
                &format!("127.0.0.1:0={},id={API}", b.addr("inbound")),
            ],
        );
        a.wait_ready();
        let a_out = a.addr("outbound");
        let mut held = a.connect(a_out);
        assert_eq!(round_trip(&mut held, b"held: init"), b"held: init");
        let traffic = Traffic::start(a_out);
        let before = pids(&[
            ("server a", &server_a.process),
            ("server b", &server_b.process),
            ("agent node-1", &agent1.process),
            ("agent node-2", &agent2.process),
            ("proxy A", &a.process),
            ("proxy B", &b.process),
        ]);

        // Everyone on the first bundle.
        let status = ca.wait(
            "both replicas and three agents on one bundle",
            PHASE_DEADLINE,
            |s| settled(s, &["node-1", "node-2", "node-3"]),
        );
        assert!(status["rotation"].is_null(), "{status:#}");
        let first_version = replicas_version(&status).unwrap();
        let text = ca.ok(&["status"]);
        assert!(text.contains("lanyard-server-a"), "{text}");
        assert!(text.contains("lanyard-server-b"), "{text}");

        // --- rotate-root add, while node-3's agent is stopped (connected, not acknowledging).
        traffic.phase("add");
        agent3.as_ref().unwrap().process.signal(libc::SIGSTOP);
        ca.ok(&[
            "new-root",
            "--trust-domain",
            TRUST_DOMAIN,
            "--cert",
            "root-2.pem",
            "--key",
            "root-2.key",
        ]);
        ca.ok(&["rotate-root", "add", "--root-cert", "root-2.pem"]);
        for node in ["node-1", "node-2", "node-3"] {
            // kubelet refreshes every agent's bundle file (node-3's too: its pod is there).
            project_bundle(&fixture, &agent_dir(node).join("bundle.pem"));
        }
        let refusal = ca.refused(
            &[
                "rotate-root",
                "switch",
                "--root-cert",
                "root-2.pem",
                "--root-key",
                "root-2.key",
            ],
            "not_propagated",
        );
        assert!(
            refusal.contains("refusing to switch") && refusal.contains("agent on node-3"),
            "{refusal}"
        );
        eprintln!("switch right after add: refused: {refusal}");
        // Everything but node-3 gets the new root; status says so.
        let status = ca.wait("the new root everywhere but node-3", PHASE_DEADLINE, |s| {
            s["step"]["next"] == "switch"
                && s["step"]["replicas_done"] == 2
                && s["step"]["waiting_for"]
                    .as_array()
                    .is_some_and(|w| w.iter().all(|who| who == "agent on node-3"))
                && s["rotation"]["phase"] == "added"
        });
        let added_version = replicas_version(&status).expect("the replicas agree");
        assert_ne!(added_version, first_version);
        let new_root_fp = fingerprint_of(&root2);
        assert_eq!(status["rotation"]["new_root"], new_root_fp.as_str());
        // node-3's agent goes down; the replicas list its last (pre-add) acknowledgement for
        // the longest SVID lifetime, then forget it, and the step completes.
        let mut stopped = agent3.take().unwrap();
        stopped.process.kill();
        drop(stopped);
        let status = ca.wait("the switch step complete", PHASE_DEADLINE, |s| {
            step_complete(s, "switch")
        });
        assert_eq!(status["step"]["replicas_done"], 2, "{status:#}");
        eprintln!("switch step: {}", status["step"]);
        assert_eq!(status["step"]["agents_done"], 2, "{status:#}");
        assert!(settled(&status, &["node-1", "node-2"]), "{status:#}");

        // --- rotate-root switch.
        traffic.phase("switch");
        ca.ok(&[
            "rotate-root",
            "switch",
            "--root-cert",
            "root-2.pem",
            "--root-key",
            "root-2.key",
        ]);
        // A retire now is refused: SVIDs under the old root are still held and valid.
        let refusal = ca.run(&["rotate-root", "retire"]);
        assert_eq!(
            refusal.code,
            Some(1),
            "{}{}",
            refusal.stdout,
            refusal.stderr
        );
        assert!(
            refusal
                .stderr
                .starts_with("lanyard ca: refused (not_propagated)")
                || refusal
                    .stderr
                    .starts_with("lanyard ca: refused (old_svids_unexpired)"),
            "{}",
            refusal.stderr
        );
        eprintln!("retire right after switch: {}", refusal.stderr.trim());
        // node-3's agent comes back, its bundle file refreshed from the ConfigMap as kubelet
        // would, and catches up.
        let mut agent3 = start_node_agent(&agent_dir("node-3"), &fixture, "node-3", server_a.addr);
        let status = ca.wait(
            "both replicas signing under the new root, node-3 caught up",
            PHASE_DEADLINE,
            |s| {
                s["rotation"]["phase"] == "switched"
                    && s["replicas"].as_array().is_some_and(|r| {
                        r.len() == 2 && r.iter().all(|r| r["signing_root"] == new_root_fp.as_str())
                    })
                    && settled(s, &["node-1", "node-2", "node-3"])
            },
        );
        let switched_version = replicas_version(&status).unwrap();
        // The proxies renew under the new root, new connections keep working.
        wait_renewals(&a, a.metric(UPDATES), 2.0, "proxy A after the switch");
        wait_renewals(&b, b.metric(UPDATES), 2.0, "proxy B after the switch");
        assert_eq!(round_trip(&mut held, b"held: switched"), b"held: switched");
        let status = ca.wait("the retire step complete", PHASE_DEADLINE, |s| {
            step_complete(s, "retire")
        });
        eprintln!("retire step: {}", status["step"]);
        assert_eq!(status["step"]["agents_done"], 3, "{status:#}");
        assert_eq!(status["step"]["replicas_done"], 2, "{status:#}");

        // --- rotate-root retire.
        traffic.phase("retire");
        ca.ok(&["rotate-root", "retire"]);
        let status = ca.wait("the old root gone everywhere", PHASE_DEADLINE, |s| {
            s["rotation"].is_null()
                && s["roots"].as_array().map(Vec::len) == Some(1)
                && replicas_version(s).is_some_and(|v| v != switched_version)
                && settled(s, &["node-1", "node-2", "node-3"])
        });
        assert_eq!(status["roots"][0]["fingerprint"], new_root_fp.as_str());
        for node in ["node-1", "node-2", "node-3"] {
            project_bundle(&fixture, &agent_dir(node).join("bundle.pem"));
        }
        assert_eq!(round_trip(&mut held, b"held: retired"), b"held: retired");

        // --- issue-intermediate: with the retired root refused, with the current one done.
        traffic.phase("issue-intermediate");
        ca.refused(
            &[
                "issue-intermediate",
                "--root-cert",
                "root-1.pem",
                "--root-key",
                "root-1.key",
            ],
            "root_not_in_bundle",
        );
        let before_reissue = ca.status();
        ca.ok(&[
            "issue-intermediate",
            "--root-cert",
            "root-2.pem",
            "--root-key",
            "root-2.key",
        ]);
        let old_intermediate = before_reissue["intermediate"]["fingerprint"].clone();
        let status = ca.wait(
            "both replicas signing with the new intermediate",
            PHASE_DEADLINE,
            |s| {
                let new = &s["intermediate"]["fingerprint"];
                *new != old_intermediate
                    && s["replicas"].as_array().is_some_and(|r| {
                        r.len() == 2 && r.iter().all(|r| r["signing_intermediate"] == *new)
                    })
            },
        );
        assert!(status["rotation"].is_null());
        wait_renewals(&a, a.metric(UPDATES), 2.0, "proxy A after the re-issue");
        wait_renewals(&b, b.metric(UPDATES), 2.0, "proxy B after the re-issue");
        traffic.phase("end");
        assert_eq!(round_trip(&mut held, b"held: the end"), b"held: the end");
        assert!(
            agent3.process.is_running(),
            "{}",
            agent3.process.stderr_text()
        );

        // Nothing failed, nothing restarted.
        let (ok, failures) = traffic.finish();
        assert!(
            failures.is_empty(),
            "{} new connections failed: {failures:#?}",
            failures.len()
        );
        for phase in ["add", "switch", "retire", "issue-intermediate"] {
            assert!(
                ok.get(phase) > Some(&0),
                "no connection in phase {phase}: {ok:?}"
            );
        }
        let mut still = [
            &mut server_a.process,
            &mut server_b.process,
            &mut agent1.process,
            &mut agent2.process,
            &mut a.process,
            &mut b.process,
        ];
        let after: Vec<(String, u32)> = before
            .iter()
            .zip(still.iter_mut())
            .map(|((what, _), p)| {
                assert!(p.is_running(), "{what} exited: {}", p.stderr_text());
                (what.clone(), p.pid())
            })
            .collect();
        assert_eq!(before, after);
        eprintln!("new connections by phase: {ok:?}");
    });
    drop(fixture);
}
