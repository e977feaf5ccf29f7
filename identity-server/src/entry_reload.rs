//! Static entries that follow the `--config` file while the server runs.
//!
//! The file is read again when its content changes (a poll every [`POLL_INTERVAL`]; no
//! inotify, which misses the symlink swaps of a mounted ConfigMap and needs another crate) and
//! on SIGHUP. It is read as at start-up (bounded to [`config_file::MAX_CONFIG_FILE_BYTES`], parsed as
//! [`RunArgs`], entries checked by [`validate_entries`]), but only `[[entries]]` are taken:
//! every other setting stays as the server started, and one INFO line says so when they differ.
//! A file that cannot be read, parsed or validated changes nothing: the entries in force stay,
//! a WARN says why, and [`ReloadStatus`] keeps the refusal for `lanyard-server entry show` and
//! the `lanyard_server_entries_reload_total{result}` counter.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::{Stream, StreamExt};
use lanyard_daemon::config_file;
use lanyard_svid::TrustDomain;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::config::RunArgs;
use crate::entries::{EntriesError, StaticEntry, validate_entries};
use crate::entry_store::EntryStore;

/// How often the file is looked at.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// A change seen by the poll is applied only if the file still reads the same this long
/// after: an editor that truncates and then writes is not caught with half a file (which
/// could parse as fewer entries).
pub const SETTLE: Duration = Duration::from_millis(250);

/// What made the server read the file again. `Display` is a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The poll saw different content.
    FileChange,
    /// SIGHUP.
    Signal,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::FileChange => "file_change",
            Self::Signal => "sighup",
        })
    }
}

/// Why a reload changed nothing although the file changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadRefusal {
    /// Missing, unreadable, not UTF-8 or larger than the bound.
    #[error("{0}")]
    Unreadable(String),
    /// Not TOML, or not the server's keys.
    #[error("{0}")]
    Parse(String),
    /// An entry failed validation.
    #[error("{0}")]
    Invalid(EntriesError),
}

impl ReloadRefusal {
    /// A label for the kind of refusal.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Unreadable(_) => "unreadable",
            Self::Parse(_) => "parse",
            Self::Invalid(_) => "invalid",
        }
    }
}

/// What one reading of the file did. `Display` is the `result` label of
/// `lanyard_server_entries_reload_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// New entries are in force.
    Reloaded { entries: usize },
    /// The file's entries are those in force.
    Unchanged,
    /// The entries in force stay; the file is wrong.
    Refused(ReloadRefusal),
}

impl std::fmt::Display for ReloadOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Reloaded { .. } => "reloaded",
            Self::Unchanged => "unchanged",
            Self::Refused(_) => "refused",
        })
    }
}

/// The last reading of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadRecord {
    pub at: SystemTime,
    pub trigger: Trigger,
    pub outcome: ReloadOutcome,
}

type Labels = Vec<(&'static str, String)>;

/// The last reload's outcome and the reload counter, shared with the admin socket.
#[derive(Clone, Default)]
pub struct ReloadStatus {
    last: Arc<Mutex<Option<ReloadRecord>>>,
    results: Family<Labels, Counter>,
}

impl ReloadStatus {
    /// A status whose counter is `lanyard_server_entries_reload_total{result}` in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let status = Self::default();
        registry.sub_registry_with_prefix("lanyard_server").register(
            "entries_reload",
            "Readings of the --config file's [[entries]] after start, by result (reloaded, unchanged, refused)",
            status.results.clone(),
        );
        status
    }

    /// The last reading since start, if any.
    pub fn last(&self) -> Option<ReloadRecord> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn record(&self, record: ReloadRecord) {
        self.results
            .get_or_create(&vec![("result", record.outcome.to_string())])
            .inc();
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(record);
    }
}

/// Starts following `config_file` (from `--config`; without one, SIGHUP only logs that there
/// is nothing to reload, rather than ending the process). Runs until the handle is aborted.
///
/// Called from run.rs, with the [`EntryStore`] every consumer reads and the
/// [`ReloadStatus`] the admin socket reports.
pub fn spawn(
    config_file: Option<PathBuf>,
    trust_domain: TrustDomain,
    store: EntryStore,
    status: ReloadStatus,
) -> tokio::task::JoinHandle<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Registered here, before the server announces itself, so that a SIGHUP from then on
    // never meets the default action (exit).
    let hangups = match signal(SignalKind::hangup()) {
        Ok(signal) => {
            futures::stream::unfold(
                signal,
                |mut s| async move { s.recv().await.map(|()| ((), s)) },
            )
            .boxed()
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGHUP; static entries reload on file changes only");
            futures::stream::pending().boxed()
        }
    };
    tokio::spawn(async move {
        match config_file {
            Some(path) => {
                let reloader = Reloader::new(path, trust_domain, store, status);
                follow(reloader, hangups).await;
            }
            None => {
                let mut hangups = hangups;
                while hangups.next().await.is_some() {
                    tracing::info!("SIGHUP: no --config file, so no static entries to reload");
                }
            }
        }
    })
}

/// Polls the file and answers `hangups` until dropped.
pub async fn follow(mut reloader: Reloader, mut hangups: impl Stream<Item = ()> + Unpin) {
    let mut ticks = tokio::time::interval(POLL_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => reloader.poll().await,
            Some(()) = hangups.next() => {
                let read = reloader.read();
                reloader.apply(Trigger::Signal, read);
            }
        }
    }
}

/// One reading of the file: its text, or why there is none.
type FileRead = Result<String, ReloadRefusal>;

/// Follows one config file into one [`EntryStore`].
pub struct Reloader {
    path: PathBuf,
    trust_domain: TrustDomain,
    store: EntryStore,
    status: ReloadStatus,
    /// The content (or read failure) last looked at, so an unchanged file is not re-applied.
    seen: Option<FileRead>,
    /// The file's settings other than `[[entries]]` at start, which reloads do not apply.
    startup_settings: Option<toml::Table>,
    /// Other settings last reported as not applied (reported once per change).
    noted_settings: Option<toml::Table>,
}

impl Reloader {
    /// Follows `path` into `store`, which holds the entries start-up read from it.
    pub fn new(
        path: PathBuf,
        trust_domain: TrustDomain,
        store: EntryStore,
        status: ReloadStatus,
    ) -> Self {
        let now = read_bounded(&path);
        let startup_settings = now.as_ref().ok().and_then(|t| other_settings(t));
        // Edited since start-up read it (or broken since)? Then the first poll applies it.
        let in_force = now
            .as_ref()
            .ok()
            .and_then(|text| toml::from_str::<RunArgs>(text).ok())
            .and_then(|args| validate_entries(args.entries, &trust_domain).ok())
            .is_some_and(|entries| entries[..] == store.current()[..]);
        Self {
            path,
            trust_domain,
            store,
            status,
            seen: in_force.then_some(now),
            startup_settings,
            noted_settings: None,
        }
    }

    /// Reads the file as it is now.
    pub fn read(&self) -> FileRead {
        read_bounded(&self.path)
    }

    /// The poll: applies the file when it changed and then held still for [`SETTLE`].
    pub async fn poll(&mut self) {
        let first = self.read();
        if self.seen.as_ref() == Some(&first) {
            return;
        }
        tokio::time::sleep(SETTLE).await;
        let settled = self.read();
        if settled != first {
            // Still being written: the next poll looks again.
            return;
        }
        self.apply(Trigger::FileChange, settled);
    }

    /// Parses and validates `read`, puts its entries in force if they are valid, logs and
    /// records the outcome.
    pub fn apply(&mut self, trigger: Trigger, read: FileRead) -> ReloadOutcome {
        self.seen = Some(read.clone());
        let outcome = match self.parse(read) {
            Ok(entries) => {
                let count = entries.len();
                if self.store.replace(entries) {
                    tracing::info!(
                        entries = count,
                        %trigger,
                        path = %self.path.display(),
                        "static entries reloaded: {count} entries"
                    );
                    ReloadOutcome::Reloaded { entries: count }
                } else {
                    if trigger == Trigger::Signal {
                        tracing::info!(path = %self.path.display(), "SIGHUP: static entries unchanged");
                    }
                    ReloadOutcome::Unchanged
                }
            }
            Err(refusal) => {
                tracing::warn!(
                    %trigger,
                    reason = refusal.label(),
                    path = %self.path.display(),
                    in_force = self.store.current().len(),
                    "static entries not reloaded, the entries in force stay: {refusal}"
                );
                ReloadOutcome::Refused(refusal)
            }
        };
        self.status.record(ReloadRecord {
            at: SystemTime::now(),
            trigger,
            outcome: outcome.clone(),
        });
        outcome
    }

    fn parse(&mut self, read: FileRead) -> Result<Vec<StaticEntry>, ReloadRefusal> {
        let text = read?;
        let args: RunArgs = config_file::parse(&self.path, &text)
            .map_err(|e| ReloadRefusal::Parse(e.to_string()))?;
        self.note_other_settings(other_settings(&text));
        validate_entries(args.entries, &self.trust_domain).map_err(ReloadRefusal::Invalid)
    }

    /// One INFO per change of the settings a reload does not apply.
    fn note_other_settings(&mut self, settings: Option<toml::Table>) {
        if settings == self.startup_settings {
            self.noted_settings = None;
        } else if settings != self.noted_settings {
            tracing::info!(
                path = %self.path.display(),
                "settings other than [[entries]] changed in the config file; they are not applied until the server restarts"
            );
            self.noted_settings = settings;
        }
    }
}

/// The file's text, read as at start-up ([`config_file::read_text`]: bounded, UTF-8).
fn read_bounded(path: &Path) -> FileRead {
    config_file::read_text(path).map_err(|e| ReloadRefusal::Unreadable(e.to_string()))
}

/// Every top-level key but `entries`, or `None` when the text is not TOML.
fn other_settings(text: &str) -> Option<toml::Table> {
    let mut table: toml::Table = toml::from_str(text).ok()?;
    table.remove("entries");
    Some(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entries::EntryError;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn file_with(ids: &[&str]) -> String {
        let mut text = String::from("trust_domain = \"example.org\"\n");
        for id in ids {
            text.push_str(&format!(
                "[[entries]]\nspiffe_id = \"spiffe://example.org{id}\"\nselectors = [\"unix:uid:1\"]\nnodes = [\"node-1\"]\n"
            ));
        }
        text
    }

    fn ids(store: &EntryStore) -> Vec<String> {
        store
            .current()
            .iter()
            .map(|e| e.spiffe_id.path().to_owned())
            .collect()
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        path: PathBuf,
        store: EntryStore,
        status: ReloadStatus,
    }

    /// A config file with `ids`, and a store holding what start-up would have made of it.
    fn fixture(ids: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        std::fs::write(&path, file_with(ids)).unwrap();
        let args: RunArgs = lanyard_daemon::config_file::read(&path).unwrap();
        let store = EntryStore::new(validate_entries(args.entries, &td()).unwrap());
        Fixture {
            _dir: dir,
            path,
            store,
            status: ReloadStatus::default(),
        }
    }

    impl Fixture {
        fn reloader(&self) -> Reloader {
            Reloader::new(
                self.path.clone(),
                td(),
                self.store.clone(),
                self.status.clone(),
            )
        }

        fn write(&self, text: &str) {
            std::fs::write(&self.path, text).unwrap();
        }
    }

    #[test]
    fn valid_edit_reloads_and_a_bad_one_is_refused_keeping_the_entries() {
        let f = fixture(&["/a"]);
        let mut r = f.reloader();
        f.write(&file_with(&["/a", "/b"]));
        assert_eq!(
            r.apply(Trigger::FileChange, r.read()),
            ReloadOutcome::Reloaded { entries: 2 }
        );
        assert_eq!(ids(&f.store), ["/a", "/b"]);
        let last = f.status.last().unwrap();
        assert_eq!(
            (last.trigger, last.outcome),
            (Trigger::FileChange, ReloadOutcome::Reloaded { entries: 2 })
        );

        // Each kind of refusal leaves /a and /b in force.
        let missing_nodes = file_with(&["/c"]).replace("nodes = [\"node-1\"]\n", "");
        let cases = [
            ("[[entries]\nnot toml", "parse"),
            ("trust_domian = \"x\"\n", "parse"),
            (missing_nodes.as_str(), "invalid"),
        ];
        for (text, label) in cases {
            f.write(text);
            let ReloadOutcome::Refused(refusal) = r.apply(Trigger::FileChange, r.read()) else {
                panic!("{text:?} was not refused");
            };
            assert_eq!(refusal.label(), label, "{refusal}");
            assert_eq!(ids(&f.store), ["/a", "/b"]);
            assert_eq!(
                f.status.last().unwrap().outcome,
                ReloadOutcome::Refused(refusal)
            );
        }
        let ReloadOutcome::Refused(ReloadRefusal::Invalid(e)) = r.apply(Trigger::Signal, r.read())
        else {
            panic!("not refused as invalid")
        };
        assert_eq!((e.index, e.reason), (0, EntryError::NoNodes));
        assert_eq!(e.spiffe_id, "spiffe://example.org/c");

        std::fs::remove_file(&f.path).unwrap();
        let outcome = r.apply(Trigger::FileChange, r.read());
        assert!(
            matches!(&outcome, ReloadOutcome::Refused(ReloadRefusal::Unreadable(m)) if m.contains("server.toml")),
            "{outcome:?}"
        );
        f.write(&"#".repeat(config_file::MAX_CONFIG_FILE_BYTES as usize + 1));
        let outcome = r.apply(Trigger::FileChange, r.read());
        assert!(
            matches!(&outcome, ReloadOutcome::Refused(ReloadRefusal::Unreadable(m)) if m.contains("larger than 1 MiB")),
            "{outcome:?}"
        );
        assert_eq!(ids(&f.store), ["/a", "/b"]);

        // Back to what is in force: unchanged, and no longer refused.
        f.write(&file_with(&["/a", "/b"]));
        assert_eq!(r.apply(Trigger::Signal, r.read()), ReloadOutcome::Unchanged);
        let mut results = String::new();
        let mut registry = Registry::default();
        registry.register("r", "r", f.status.results.clone());
        prometheus_client::encoding::text::encode(&mut results, &registry).unwrap();
        for line in [
            "r_total{result=\"reloaded\"} 1",
            "r_total{result=\"refused\"} 6",
            "r_total{result=\"unchanged\"} 1",
        ] {
            assert!(results.contains(line), "{line} in\n{results}");
        }
    }

    #[test]
    fn other_settings_are_not_applied() {
        let f = fixture(&["/a"]);
        let mut r = f.reloader();
        let changed =
            file_with(&["/b"]).replace("example.org\"\n", "example.org\"\nx509_ttl = \"5m\"\n");
        f.write(&changed);
        assert_eq!(
            r.apply(Trigger::FileChange, r.read()),
            ReloadOutcome::Reloaded { entries: 1 }
        );
        assert_eq!(ids(&f.store), ["/b"]);
        assert!(r.noted_settings.as_ref().unwrap().contains_key("x509_ttl"));
        // Entries are still checked against the running trust domain, whatever the file says.
        f.write(&file_with(&["/a"]).replace(
            "trust_domain = \"example.org\"",
            "trust_domain = \"other.org\"",
        ));
        assert_eq!(
            r.apply(Trigger::FileChange, r.read()),
            ReloadOutcome::Reloaded { entries: 1 }
        );
        f.write(&file_with(&["/a"]));
        r.apply(Trigger::FileChange, r.read());
        assert_eq!(r.noted_settings, None);
    }

    /// The poll, on the paused clock: an edit is applied within one interval plus the settle
    /// time, an unchanged file is not read into the status again, and SIGHUP applies at once.
    #[tokio::test(start_paused = true)]
    async fn poll_and_signal_timing() {
        let f = fixture(&["/a"]);
        let (hangup, hangups) = futures::channel::mpsc::unbounded();
        let task = tokio::spawn(follow(f.reloader(), hangups));
        let mut changes = f.store.subscribe();

        // Nothing changed: polls go by without a record.
        tokio::time::sleep(POLL_INTERVAL * 3).await;
        assert_eq!(f.status.last(), None);

        f.write(&file_with(&["/b"]));
        let start = tokio::time::Instant::now();
        tokio::time::timeout(POLL_INTERVAL + SETTLE, changes.changed())
            .await
            .expect("applied within an interval and the settle time")
            .unwrap();
        assert!(start.elapsed() >= SETTLE);
        assert_eq!(ids(&f.store), ["/b"]);

        // SIGHUP reads the file at once, before the next poll.
        f.write(&file_with(&["/c"]));
        let before = tokio::time::Instant::now();
        hangup.unbounded_send(()).unwrap();
        tokio::time::timeout(Duration::from_millis(1), changes.changed())
            .await
            .expect("SIGHUP applies without waiting for the poll")
            .unwrap();
        assert_eq!(before.elapsed(), Duration::ZERO);
        assert_eq!(f.status.last().unwrap().trigger, Trigger::Signal);

        // A SIGHUP with nothing changed records that.
        hangup.unbounded_send(()).unwrap();
        tokio::time::timeout(POLL_INTERVAL, async {
            while f.status.last().unwrap().outcome != ReloadOutcome::Unchanged {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("SIGHUP with nothing changed is recorded");
        task.abort();
    }

    /// An edit made between start-up's reading and the reloader's start is not missed.
    #[tokio::test(start_paused = true)]
    async fn an_edit_before_the_reloader_started_is_applied() {
        let f = fixture(&["/a"]);
        let mut in_sync = f.reloader();
        in_sync.poll().await;
        assert_eq!(f.status.last(), None);
        f.write(&file_with(&["/b"]));
        let mut r = f.reloader();
        r.poll().await;
        assert_eq!(ids(&f.store), ["/b"]);
        assert_eq!(
            f.status.last().unwrap().outcome,
            ReloadOutcome::Reloaded { entries: 1 }
        );
    }

    /// A file caught being written (different on the second read) is not applied until it
    /// holds still.
    #[tokio::test(start_paused = true)]
    async fn a_file_still_being_written_waits_for_the_next_poll() {
        let f = fixture(&["/a"]);
        let mut r = f.reloader();
        f.write("");
        let writer = {
            let path = f.path.clone();
            tokio::spawn(async move {
                tokio::time::sleep(SETTLE / 2).await;
                std::fs::write(&path, file_with(&["/a", "/b"])).unwrap();
            })
        };
        r.poll().await;
        writer.await.unwrap();
        assert_eq!(ids(&f.store), ["/a"], "the empty file was never applied");
        assert_eq!(f.status.last(), None);
        r.poll().await;
        assert_eq!(ids(&f.store), ["/a", "/b"]);
    }
}
