//! The container images, built by `deploy/images/build` from this target directory's
//! binaries (`--bin-dir`, so cargo builds nothing) under a registry prefix of this test's own,
//! and the local stack run from them with podman:
//!
//! - the build writes an OCI archive and a CycloneDX SBOM per image and `image-digests.json`
//!   naming exactly the references `lanyard install` uses for that prefix, each digest the one
//!   `skopeo inspect` reads from the archive;
//! - each image has the configured user and entrypoint, the OCI labels, only root-owned files
//!   nobody else can write, and nothing but its binary, the libraries it links, CA
//!   certificates, passwd and group, plus iptables for the init image (no shell: running
//!   `/bin/sh` in it fails);
//! - the init image, run in a fresh network namespace with only NET_ADMIN and NET_RAW,
//!   installs the redirect rules (its own `iptables-save` reads them back), and again without
//!   adding a copy;
//! - server, agent, two proxies and two demo apps (`lanyard-demo-app`, in an image this test
//!   builds) run as containers on the host network, on ports picked free by this test: the
//!   server as its image's non-root user with its data dir bind-mounted, the agent (join
//!   token) as root in the host PID namespace with only CAP_SYS_PTRACE, sharing its socket
//!   directory with the proxies through a bind mount; the proxies are told apart by uid (the
//!   web proxy as the image's user, the client proxy as another); the client app's request
//!   crosses both proxies and both taps show `tls=true` with the other side's SPIFFE ID.
//!
//! Needs root, podman, buildah, skopeo, runc and `ip`; without them it is skipped, saying why
//! (`LANYARD_SKIP_CONTAINER_TESTS=1` skips it too). Every container and image it made is
//! removed when it ends, passed or failed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::serde_json::{self, Value};
use lanyard_cli::images::Images;
use lanyard_cli::redirect::PROXY_UID;
use lanyard_e2e::netns::Netns;
use lanyard_e2e::process::Process;
use lanyard_e2e::{DEADLINE, binary};

const SKIP_ENV: &str = "LANYARD_SKIP_CONTAINER_TESTS";
const VERSION: &str = env!("CARGO_PKG_VERSION");
const WEB_ID: &str = "spiffe://example.org/demo/web";
const CLIENT_ID: &str = "spiffe://example.org/demo/client";
/// The client proxy's uid: not the image's, so the agent tells the two proxies apart.
const CLIENT_PROXY_UID: u32 = 2103;
/// The server image's user (`nonroot`).
const SERVER_UID: u32 = 65532;

/// What `deploy/images/build` builds: component, binary, the crate of the binary, user.
const IMAGES: [(&str, &str, &str, u32); 5] = [
    ("server", "lanyard-server", "lanyard-server", SERVER_UID),
    ("agent", "lanyard-agent", "lanyard-agent", 0),
    ("proxy", "lanyard-proxy", "lanyard-proxy", PROXY_UID),
    ("proxy-init", "lanyard-redirect", "lanyard-redirect", 0),
    ("cni", "lanyard-cni", "lanyard-cni", 0),
];
/// The init image's iptables: the two multi-call binaries every `iptables*` name links to.
const XTABLES: [&str; 2] = ["xtables-legacy-multi", "xtables-nft-multi"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Why the test cannot run here, if it cannot.
fn skip_reason() -> Option<String> {
    if std::env::var(SKIP_ENV).as_deref() == Ok("1") {
        return Some(format!("{SKIP_ENV}=1"));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (the images are built and run with root podman)".into());
    }
    for (tool, flag) in [
        ("podman", "--version"),
        ("buildah", "--version"),
        ("skopeo", "--version"),
        ("runc", "--version"),
        ("ip", "-V"),
    ] {
        let found = Command::new(tool)
            .arg(flag)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!(
                "`{tool}` is not installed (apt-get install podman buildah runc skopeo iproute2)"
            ));
        }
    }
    None
}

/// `CONTAINERS_CONF` as `deploy/images/build` sets it: this machine's podman defaults.
fn containers_conf() -> String {
    std::env::var("CONTAINERS_CONF").unwrap_or_else(|_| {
        workspace()
            .join("deploy/images/containers.conf")
            .to_str()
            .expect("utf-8 path")
            .to_owned()
    })
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env("CONTAINERS_CONF", containers_conf())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

/// Runs `program args`, failing the test with its stderr unless it succeeds; its stdout.
fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn json(text: &str, what: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{what} is not JSON ({e}):\n{text}"))
}

/// Everything this test made in podman, removed on drop (passed or failed). Names are
/// prefixed by this process's ID, so concurrent runs do not meet.
struct Podman {
    prefix: String,
    containers: Mutex<Vec<String>>,
    images: Mutex<Vec<String>>,
}

impl Podman {
    fn new() -> Self {
        Self {
            prefix: format!("lanyard-e2e-{}", std::process::id()),
            containers: Mutex::default(),
            images: Mutex::default(),
        }
    }

    /// The registry prefix of this test's images.
    fn registry(&self) -> String {
        format!("localhost/{}", self.prefix)
    }

    /// A container name, removed at the end.
    fn container(&self, role: &str) -> String {
        let name = format!("{}-{role}", self.prefix);
        self.containers.lock().unwrap().push(name.clone());
        name
    }

    fn image(&self, reference: &str) {
        self.images.lock().unwrap().push(reference.to_owned());
    }

    /// `podman run --name NAME --network host OPTIONS IMAGE ARGS` in the foreground: its
    /// output read like any process's, the container removed at the end.
    fn start(&self, role: &str, options: &[&str], image: &str, args: &[&str]) -> Process {
        let name = self.container(role);
        let mut argv = vec!["run", "--rm", "--name", &name, "--network", "host"];
        argv.extend_from_slice(options);
        argv.push(image);
        argv.extend_from_slice(args);
        let conf = containers_conf();
        Process::start(Path::new("podman"), &argv, &[("CONTAINERS_CONF", &conf)])
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let containers = self.containers.lock().unwrap().clone();
        if !containers.is_empty() {
            let mut args = vec!["rm", "--force", "--ignore", "--time", "0"];
            args.extend(containers.iter().map(String::as_str));
            let _ = run("podman", &args);
        }
        let images = self.images.lock().unwrap().clone();
        if !images.is_empty() {
            let mut args = vec!["rmi", "--force", "--ignore"];
            args.extend(images.iter().map(String::as_str));
            let _ = run("podman", &args);
        }
    }
}

#[test]
fn the_images_build_and_run_the_local_stack() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping the container image test: {why}");
        return;
    }
    let podman = Podman::new();
    let registry = podman.registry();
    let references = Images::new(&registry, VERSION).expect("a valid prefix");
    for (component, ..) in IMAGES {
        podman.image(&references.image(component));
    }
    let out = tempfile::tempdir().unwrap();
    let bin_dir = binary("lanyard-server")
        .parent()
        .expect("a binary directory")
        .to_owned();
    let build = workspace().join("deploy/images/build");
    // Others may commit while the build runs: it records the HEAD it saw.
    let head_before = head();
    run_ok(
        build.to_str().unwrap(),
        &[
            "--bin-dir",
            bin_dir.to_str().unwrap(),
            "--out",
            out.path().to_str().unwrap(),
            "--registry",
            &registry,
        ],
    );

    let heads = [head_before, head()];
    let (revision, digests) = check_digest_file(out.path(), &references, &heads);
    for (component, bin, package, uid) in IMAGES {
        let name = format!("lanyard-{component}");
        let reference = references.image(component);
        let digest = &digests[&name];
        check_archive(out.path(), &name, &reference, digest);
        check_sbom(out.path(), &name, package, digest);
        check_config(&reference, &name, bin, uid, &revision);
        check_files(&reference, bin, uid, component == "proxy-init");
    }
    check_init(&podman, &references.proxy_init());

    let app_image = build_demo_app_image(&podman);
    run_stack(&podman, &references, &app_image);
}

/// `image-digests.json`: version, revision (one of `heads`), and for each image the
/// reference `lanyard install` uses and a manifest digest. Returns the revision and
/// name -> digest.
fn check_digest_file(
    out: &Path,
    references: &Images,
    heads: &[String],
) -> (String, BTreeMap<String, String>) {
    let path = out.join("image-digests.json");
    let text = std::fs::read_to_string(&path).expect("image-digests.json written");
    let file = json(&text, "image-digests.json");
    assert_eq!(file["version"], VERSION, "{text}");
    let revision = file["revision"].as_str().unwrap_or("").to_owned();
    assert!(heads.contains(&revision), "{text}\nvs HEAD {heads:?}");
    let images = file["images"].as_object().expect("an images object");
    let names: BTreeSet<String> = images.keys().cloned().collect();
    let expected: BTreeSet<String> = IMAGES
        .iter()
        .map(|(c, ..)| format!("lanyard-{c}"))
        .collect();
    assert_eq!(names, expected, "{text}");
    let mut digests = BTreeMap::new();
    for (component, ..) in IMAGES {
        let name = format!("lanyard-{component}");
        let entry = &images[&name];
        assert_eq!(entry["reference"], references.image(component), "{text}");
        let digest = entry["digest"].as_str().expect("a digest string");
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        assert!(
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "{digest}"
        );
        digests.insert(name, digest.to_owned());
    }
    (revision, digests)
}

/// The OCI archive: the manifest skopeo reads is the recorded digest, and the index names
/// the image by its full reference (what `kind load image-archive` imports it as).
fn check_archive(out: &Path, name: &str, reference: &str, digest: &str) {
    let archive = out.join(format!("{name}.oci.tar"));
    let source = format!("oci-archive:{}", archive.display());
    let inspected = run_ok("skopeo", &["inspect", "--format", "{{.Digest}}", &source]);
    assert_eq!(
        inspected.trim(),
        digest,
        "{name}: skopeo inspect vs image-digests.json"
    );
    let index = run_ok("tar", &["-xOf", archive.to_str().unwrap(), "index.json"]);
    let index = json(&index, "index.json");
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], reference,
        "{name}: {index}"
    );
    assert_eq!(index["manifests"][0]["digest"], digest, "{name}: {index}");
}

/// The SBOM: CycloneDX 1.5 naming the image by digest, the binary's crate and what it links
/// (crates.io crates with their Cargo.lock checksums, no proc-macro crates), and the Debian
/// package of the C library.
fn check_sbom(out: &Path, name: &str, package: &str, digest: &str) {
    let path = out.join(format!("{name}.cdx.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let bom = json(&text, "the SBOM");
    assert_eq!(bom["bomFormat"], "CycloneDX", "{name}");
    assert_eq!(bom["specVersion"], "1.5", "{name}");
    assert_eq!(
        bom["metadata"]["component"]["hashes"][0]["content"],
        digest.trim_start_matches("sha256:"),
        "{name}: the SBOM's image digest"
    );
    let components = bom["components"].as_array().expect("components");
    let purls: BTreeSet<&str> = components
        .iter()
        .map(|c| c["purl"].as_str().expect("every component has a purl"))
        .collect();
    let has = |prefix: &str| purls.iter().any(|p| p.starts_with(prefix));
    assert!(
        purls.contains(format!("pkg:cargo/{package}@{VERSION}").as_str()),
        "{name}: its own crate missing from {purls:?}"
    );
    // The daemons link rustls; the init binary links no TLS at all, and carries iptables.
    let specific = if package == "lanyard-redirect" {
        "pkg:deb/debian/iptables@"
    } else {
        "pkg:cargo/rustls@"
    };
    for linked in [
        specific,
        "pkg:cargo/clap@",
        "pkg:cargo/thiserror@",
        "pkg:deb/debian/libc6@",
    ] {
        assert!(has(linked), "{name}: {linked} missing from {purls:?}");
    }
    assert!(
        !has("pkg:cargo/thiserror-impl@"),
        "{name}: a proc-macro crate is listed as linked"
    );
    for c in components {
        let purl = c["purl"].as_str().unwrap();
        let workspace_crate = c["properties"][0]["value"] == "workspace";
        if purl.starts_with("pkg:cargo/") && !workspace_crate {
            let hash = c["hashes"][0]["content"].as_str().unwrap_or("");
            assert!(
                c["hashes"][0]["alg"] == "SHA-256" && hash.len() == 64,
                "{name}: {purl} has no Cargo.lock checksum: {c}"
            );
        }
    }
}

/// `podman image inspect`: user, entrypoint and the OCI labels.
fn check_config(reference: &str, name: &str, bin: &str, uid: u32, revision: &str) {
    let inspect = json(
        &run_ok("podman", &["image", "inspect", reference]),
        "podman image inspect",
    );
    let image = &inspect[0];
    let config = &image["Config"];
    assert_eq!(config["User"], format!("{uid}:{uid}"), "{name}: user");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!([format!("/usr/local/bin/{bin}")]),
        "{name}: entrypoint"
    );
    let labels = &config["Labels"];
    let label = |key: &str| {
        labels[format!("org.opencontainers.image.{key}")]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no {key} label in {labels}"))
            .to_owned()
    };
    assert_eq!(label("title"), name);
    assert!(!label("description").is_empty());
    assert_eq!(label("version"), VERSION);
    assert_eq!(label("revision"), revision);
    assert_eq!(label("source"), workspace_repository());
    assert_eq!(label("licenses"), env!("CARGO_PKG_LICENSE"));
    // Created is the commit time, in the label and in the image itself.
    let created = commit_time(revision);
    assert_eq!(label("created"), created, "{name}: created");
    assert!(
        image["Created"]
            .as_str()
            .is_some_and(|c| c.starts_with(created.trim_end_matches('Z'))),
        "{name}: image created {} vs commit {created}",
        image["Created"]
    );
}

/// The checkout's HEAD commit.
fn head() -> String {
    let path = workspace();
    run_ok("git", &["-C", path.to_str().unwrap(), "rev-parse", "HEAD"])
        .trim()
        .to_owned()
}

/// The time of `commit`, RFC 3339 in UTC.
fn commit_time(commit: &str) -> String {
    let out = Command::new("git")
        .args(["-C", workspace().to_str().unwrap(), "log", "-1", commit])
        .args(["--date=format-local:%Y-%m-%dT%H:%M:%SZ", "--format=%cd"])
        .env("TZ", "UTC")
        .output()
        .expect("git log");
    assert!(out.status.success(), "git log failed");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The workspace's `repository` (Cargo.toml, [workspace.package]).
fn workspace_repository() -> String {
    let manifest = std::fs::read_to_string(workspace().join("Cargo.toml")).unwrap();
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("repository = "))
        .expect("a workspace repository")
        .trim_matches('"')
        .to_owned()
}

/// The image's files: only what the binary needs, all root's and writable by root only,
/// and no shell to run.
fn check_files(reference: &str, bin: &str, uid: u32, iptables: bool) {
    let root = PathBuf::from(run_ok("podman", &["image", "mount", reference]).trim());
    let mut found = Vec::new();
    let mut problems = Vec::new();
    walk(&root, &root, &mut found, &mut problems);
    // passwd and group name the image's user (and root).
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
    run_ok("podman", &["image", "unmount", reference]);
    assert!(
        passwd
            .lines()
            .any(|l| l.split(':').nth(2) == Some(&uid.to_string())
                && l.split(':').nth(3) == Some(&uid.to_string())),
        "{reference}: /etc/passwd has no user {uid}:\n{passwd}"
    );
    assert!(
        group
            .lines()
            .any(|l| l.split(':').nth(2) == Some(&uid.to_string())),
        "{reference}: /etc/group has no group {uid}:\n{group}"
    );
    let binary = format!("/usr/local/bin/{bin}");
    for (path, mode, entry) in &found {
        let xtables = |name: &str| XTABLES.iter().any(|x| name == format!("/usr/sbin/{x}"));
        let allowed = match entry {
            Entry::Dir => true,
            // iptables, ip6tables-save, iptables-nft-restore, ... -> xtables-*-multi
            Entry::Symlink(target) => {
                iptables
                    && (path.starts_with("/usr/sbin/iptables")
                        || path.starts_with("/usr/sbin/ip6tables"))
                    && XTABLES.contains(&target.as_str())
            }
            Entry::File => file_allowed(path, &binary) || (iptables && xtables(path)),
        };
        if !allowed {
            problems.push(format!(
                "{path} ({entry:?}): not the binary, a library, a CA file, passwd/group{}",
                if iptables { " or iptables" } else { "" }
            ));
        }
        if path == &binary && mode & 0o755 != 0o755 {
            problems.push(format!("{path}: mode {mode:o}, not executable by everyone"));
        }
    }
    assert!(
        found.iter().any(|(p, ..)| p == &binary),
        "{reference}: no {binary}"
    );
    assert!(problems.is_empty(), "{reference}:\n{}", problems.join("\n"));

    let shell = run(
        "podman",
        &[
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "/bin/sh",
            reference,
            "-c",
            "true",
        ],
    );
    assert!(
        !shell.status.success(),
        "{reference}: /bin/sh ran in the image"
    );
}

/// What a path in an image is.
#[derive(Debug)]
enum Entry {
    Dir,
    File,
    /// A symbolic link, with its target.
    Symlink(String),
}

/// The files every image may hold: its binary, shared libraries, CA certificates, passwd and
/// group.
fn file_allowed(path: &str, binary: &str) -> bool {
    [
        binary,
        "/etc/passwd",
        "/etc/group",
        "/etc/ssl/certs/ca-certificates.crt",
    ]
    .contains(&path)
        || (["/lib/", "/lib64/", "/usr/lib/"]
            .iter()
            .any(|d| path.starts_with(d))
            && path.contains(".so"))
}

/// Every entry under `dir`: (image path, mode, what it is); anything not owned by root or
/// writable by group or others goes to `problems`.
fn walk(
    root: &Path,
    dir: &Path,
    found: &mut Vec<(String, u32, Entry)>,
    problems: &mut Vec<String>,
) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let image_path = format!("/{}", path.strip_prefix(root).unwrap().display());
        let mode = meta.permissions().mode() & 0o7777;
        if meta.uid() != 0 || meta.gid() != 0 {
            problems.push(format!(
                "{image_path}: owned by {}:{}",
                meta.uid(),
                meta.gid()
            ));
        }
        let kind = if meta.is_dir() {
            Entry::Dir
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).unwrap();
            Entry::Symlink(target.to_string_lossy().into_owned())
        } else {
            Entry::File
        };
        if !matches!(kind, Entry::Symlink(_)) && mode & 0o022 != 0 {
            problems.push(format!("{image_path}: mode {mode:o} lets others write"));
        }
        found.push((image_path, mode, kind));
        if meta.is_dir() {
            walk(root, &path, found, problems);
        }
    }
}

/// The init image, run as the injected init container runs (root, only NET_ADMIN and
/// NET_RAW, read-only root with a writable /run) in a fresh network namespace: it installs the
/// redirect rules, which the image's own `iptables-save` and `ip6tables-save` read back; a second run replaces
/// them rather than adding a copy.
fn check_init(podman: &Podman, reference: &str) {
    let ns = Netns::create(&format!("{}-init", podman.prefix));
    let network = format!("ns:/run/netns/{}", ns.name());
    let in_namespace = |role: &str, entrypoint: Option<&str>, args: &[&str]| {
        let name = podman.container(role);
        let mut argv = vec![
            "run",
            "--rm",
            "--name",
            &name,
            "--network",
            &network,
            "--cap-drop",
            "ALL",
            "--cap-add",
            "NET_ADMIN",
            "--cap-add",
            "NET_RAW",
            "--read-only",
            "--env",
            "SKIP_INBOUND_PORTS=4192",
        ];
        if let Some(entrypoint) = entrypoint {
            argv.extend(["--entrypoint", entrypoint]);
        }
        argv.push(reference);
        argv.extend_from_slice(args);
        run_ok("podman", &argv)
    };
    let rules = |save: &str| {
        in_namespace("init-save", Some(save), &["-t", "nat"])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let printed = in_namespace("init", None, &[]);
    assert!(printed.contains("lanyard-redirect: done"), "{printed}");
    let first = rules("/usr/sbin/iptables-save");
    let uid = PROXY_UID.to_string();
    for wanted in [
        "-A PREROUTING -p tcp -j LANYARD_INBOUND",
        "-A LANYARD_INBOUND -p tcp -m tcp --dport 4192 -j RETURN",
        "-A LANYARD_INBOUND -p tcp -j REDIRECT --to-ports 4143",
        "-A OUTPUT -p tcp -j LANYARD_OUTBOUND",
        &format!("-A LANYARD_OUTBOUND -m owner --uid-owner {uid} -j RETURN"),
        "-A LANYARD_OUTBOUND -p tcp -j REDIRECT --to-ports 4140",
    ] {
        assert!(
            first.iter().any(|l| l == wanted),
            "{reference}: no rule `{wanted}` in\n{}",
            first.join("\n")
        );
    }
    // IPv6 too, through the image's own ip6tables (the namespace has ::1).
    let first_v6 = rules("/usr/sbin/ip6tables-save");
    for wanted in [
        "-A PREROUTING -p tcp -j LANYARD_INBOUND",
        "-A LANYARD_INBOUND -p tcp -j REDIRECT --to-ports 4143",
        &format!("-A LANYARD_OUTBOUND -m owner --uid-owner {uid} -j RETURN"),
        "-A LANYARD_OUTBOUND -d ::1/128 -j RETURN",
        "-A LANYARD_OUTBOUND -p tcp -j REDIRECT --to-ports 4140",
    ] {
        assert!(
            first_v6.iter().any(|l| l == wanted),
            "{reference}: no IPv6 rule `{wanted}` in\n{}",
            first_v6.join("\n")
        );
    }
    in_namespace("init-again", None, &[]);
    assert_eq!(
        rules("/usr/sbin/iptables-save"),
        first,
        "{reference}: a second run changed the rules"
    );
    assert_eq!(
        rules("/usr/sbin/ip6tables-save"),
        first_v6,
        "{reference}: a second run changed the IPv6 rules"
    );
}

/// The demo app's image: its binary and what it links, as `nonroot`.
fn build_demo_app_image(podman: &Podman) -> String {
    let reference = format!("{}/lanyard-demo-app:test", podman.registry());
    podman.image(&reference);
    let context = tempfile::tempdir().unwrap();
    let rootfs = context.path().join("rootfs");
    let app = binary("lanyard-demo-app");
    let mut files = vec![(
        app.clone(),
        PathBuf::from("/usr/local/bin/lanyard-demo-app"),
    )];
    let ldd = run_ok("ldd", &[app.to_str().unwrap()]);
    for line in ldd.lines() {
        let path = match line.split_once("=> ") {
            Some((_, rest)) => rest,
            None => line.trim(),
        };
        let path = path.split(" (").next().unwrap_or("");
        if path.starts_with('/') {
            files.push((PathBuf::from(path), PathBuf::from(path)));
        }
    }
    for (from, to) in files {
        let dest = rootfs.join(to.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&from, &dest).unwrap_or_else(|e| panic!("copying {from:?}: {e}"));
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(
        context.path().join("Containerfile"),
        "FROM scratch\nCOPY rootfs/ /\nUSER 65532:65532\nENTRYPOINT [\"/usr/local/bin/lanyard-demo-app\"]\n",
    )
    .unwrap();
    run_ok(
        "buildah",
        &[
            "bud",
            "--quiet",
            "--layers=false",
            "--tag",
            &reference,
            context.path().to_str().unwrap(),
        ],
    );
    reference
}

/// Ports free on loopback now (bound to 0 together, then released): containers on the host
/// network cannot report a port of the kernel's choosing to each other, so they get these.
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

/// The local stack from the images: server, agent, web app behind the web proxy, the client
/// proxy and one request from the client app.
fn run_stack(podman: &Podman, references: &Images, app_image: &str) {
    let [
        grpc,
        app,
        web_in,
        web_admin,
        web_metrics,
        client_out,
        client_admin,
        client_metrics,
    ] = free_ports::<8>();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let lib = dir.path().join("lib");
    let sockets = dir.path().join("sockets");
    std::fs::create_dir(&lib).unwrap();
    std::fs::create_dir(&sockets).unwrap();
    // The server's data lives in a directory only its image's user may write.
    std::os::unix::fs::chown(&lib, Some(SERVER_UID), Some(SERVER_UID)).unwrap();
    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o700)).unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[[entries]]\nspiffe_id = \"{WEB_ID}\"\nselectors = [\"unix:uid:{PROXY_UID}\"]\nnodes = [\"local\"]\n\n\
             [[entries]]\nspiffe_id = \"{CLIENT_ID}\"\nselectors = [\"unix:uid:{CLIENT_PROXY_UID}\"]\nnodes = [\"local\"]\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();

    let mount = |host: &Path, at: &str, options: &str| format!("{}:{at}{options}", host.display());
    let lib_mount = mount(&lib, "/var/lib/lanyard", "");
    let config_mount = mount(&config, "/etc/lanyard/server.toml", ":ro");
    let server_image = references.server();
    let listen = format!("127.0.0.1:{grpc}");
    let server = podman.start(
        "server",
        &[
            "--cap-drop",
            "ALL",
            "--read-only",
            "-v",
            &lib_mount,
            "-v",
            &config_mount,
        ],
        &server_image,
        &[
            "run",
            "--trust-domain",
            "example.org",
            "--listen",
            &listen,
            "--data-dir",
            "/var/lib/lanyard/server",
            "--config",
            "/etc/lanyard/server.toml",
        ],
    );
    assert_eq!(server.listener("grpc").port(), grpc);
    let data_owner = std::fs::metadata(lib.join("server")).unwrap().uid();
    assert_eq!(data_owner, SERVER_UID, "the server ran as its image's user");

    // One-off commands of the server image on the same data dir: a join token, the bundle.
    let server_cli = |args: &[&str]| {
        let name = podman.container("server-cli");
        let mut argv = vec![
            "run",
            "--rm",
            "--name",
            &name,
            "--network",
            "none",
            "--cap-drop",
            "ALL",
            "--read-only",
            "-v",
            &lib_mount,
            &server_image,
        ];
        argv.extend_from_slice(args);
        run_ok("podman", &argv)
    };
    let token = server_cli(&[
        "token",
        "generate",
        "--data-dir",
        "/var/lib/lanyard/server",
        "--node",
        "local",
    ]);
    let bundle = server_cli(&["bundle", "show", "--data-dir", "/var/lib/lanyard/server"]);
    let token_path = dir.path().join("join-token");
    std::fs::write(&token_path, token.trim()).unwrap();
    std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let bundle_path = dir.path().join("bundle.pem");
    std::fs::write(&bundle_path, bundle).unwrap();

    let sockets_mount = mount(&sockets, "/run/lanyard/sockets", "");
    let bundle_mount = mount(&bundle_path, "/etc/lanyard/bundle.pem", ":ro");
    let token_mount = mount(&token_path, "/run/secrets/lanyard/join-token", ":ro");
    let server_addr = format!("127.0.0.1:{grpc}");
    // The agent: root (the socket directory is root's), the host PID namespace (the kernel
    // gives it callers' PIDs only there) and CAP_SYS_PTRACE (reading other users'
    // /proc/<pid>/exe), nothing else.
    let agent = podman.start(
        "agent",
        &[
            "--pid",
            "host",
            "--cap-drop",
            "ALL",
            "--cap-add",
            "SYS_PTRACE",
            "--read-only",
            "-v",
            &sockets_mount,
            "-v",
            &bundle_mount,
            "-v",
            &token_mount,
        ],
        &references.agent(),
        &[
            "run",
            "--server",
            &server_addr,
            "--trust-bundle",
            "/etc/lanyard/bundle.pem",
            "--join-token-file",
            "/run/secrets/lanyard/join-token",
            "--socket",
            "/run/lanyard/sockets/agent.sock",
        ],
    );
    agent.wait_for_line("its Workload API socket", |line| {
        (line == "listening on unix:/run/lanyard/sockets/agent.sock (workload-api)").then_some(())
    });

    let app_addr = format!("127.0.0.1:{app}");
    let web_app = podman.start(
        "web-app",
        &["--cap-drop", "ALL", "--read-only"],
        app_image,
        &["serve", &app_addr],
    );
    web_app.wait_for_line("its listener", |l| l.ends_with("(app)").then_some(()));

    let proxy_image = references.proxy();
    let proxy = |role: &str, user: Option<u32>, listener: &[&str], admin: u16, metrics: u16| {
        let user = user.map(|u| format!("{u}:{u}"));
        let mut options = vec!["--cap-drop", "ALL", "--read-only", "-v", &sockets_mount];
        if let Some(user) = &user {
            options.extend(["--user", user]);
        }
        let admin = format!("127.0.0.1:{admin}");
        let metrics = format!("127.0.0.1:{metrics}");
        let mut args = vec![
            "run",
            "--workload-socket",
            "/run/lanyard/sockets/agent.sock",
            "--admin",
            &admin,
            "--metrics",
            &metrics,
        ];
        args.extend_from_slice(listener);
        let process = podman.start(role, &options, &proxy_image, &args);
        let tap = Tap::open(process.listener("admin"));
        process.listener("metrics");
        (process, tap)
    };
    let web_inbound = format!("127.0.0.1:{web_in}={app_addr}");
    let (web_proxy, web_tap) = proxy(
        "web-proxy",
        None,
        &["--inbound", &web_inbound],
        web_admin,
        web_metrics,
    );
    let client_outbound = format!("127.0.0.1:{client_out}=127.0.0.1:{web_in},id={WEB_ID}");
    let (client_proxy, client_tap) = proxy(
        "client-proxy",
        Some(CLIENT_PROXY_UID),
        &["--outbound", &client_outbound],
        client_admin,
        client_metrics,
    );
    // Both proxies hold their SVIDs before the first request (no start-up race).
    for (process, metrics) in [(&web_proxy, web_metrics), (&client_proxy, client_metrics)] {
        wait_ready(process, SocketAddr::from(([127, 0, 0, 1], metrics)));
    }

    let name = podman.container("client-app");
    let target = format!("127.0.0.1:{client_out}");
    let reply = run_ok(
        "podman",
        &[
            "run",
            "--rm",
            "--name",
            &name,
            "--network",
            "host",
            "--cap-drop",
            "ALL",
            "--read-only",
            app_image,
            "call",
            &target,
        ],
    );
    assert_eq!(reply.trim(), "hello from the web app");

    let out = client_tap.wait_for("the client proxy's mTLS connection", |l| {
        l.starts_with("proxy=out")
            && l.contains("tls=true")
            && l.contains(&format!("peer={WEB_ID} "))
    });
    let inbound = web_tap.wait_for("the web proxy's mTLS connection", |l| {
        l.starts_with("proxy=in")
            && l.contains("tls=true")
            && l.contains(&format!("peer={CLIENT_ID} "))
    });
    println!("client proxy: {out}\nweb proxy:    {inbound}");
    drop((server, agent, web_app));
}

/// Waits (with the deadline) until the proxy's `/readyz` answers 200: it holds its SVID.
fn wait_ready(process: &Process, metrics: SocketAddr) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let status = TcpStream::connect(metrics).ok().and_then(|mut s| {
            s.set_read_timeout(Some(DEADLINE)).ok()?;
            write!(
                s,
                "GET /readyz HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\n\r\n"
            )
            .ok()?;
            let mut response = String::new();
            s.read_to_string(&mut response).ok()?;
            Some(response)
        });
        if status
            .as_deref()
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy on {metrics} never became ready ({status:?}); its stderr:\n{}",
            process.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A proxy's tap (`--admin`): its lines, collected by a thread as they arrive.
struct Tap {
    lines: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Tap {
    fn open(admin: SocketAddr) -> Self {
        let stream = TcpStream::connect(admin).expect("connect to the tap");
        let lines: Arc<(Mutex<Vec<String>>, Condvar)> = Arc::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let (lock, cvar) = &*sink;
                lock.lock().unwrap().push(line);
                cvar.notify_all();
            }
        });
        Self { lines }
    }

    /// The first line satisfying `wanted`, waiting up to the deadline.
    fn wait_for(&self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        let (lock, cvar) = &*self.lines;
        let mut lines = lock.lock().unwrap();
        loop {
            if let Some(line) = lines.iter().find(|l| wanted(l)) {
                return line.clone();
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "no tap line for {what}; lines: {:?}",
                *lines
            );
            lines = cvar.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }
}
