//! Configuration reload: what changed between the running configuration and
//! a newly loaded one ([`diff`]), whether the new one may be swapped in at
//! all ([`refuse`]), and the `watch_config` file watcher with its debounce
//! ([`ConfigWatcher`]).
//!
//! Parsing and validation are `Config::load`, the same code `check` runs;
//! the swap itself (engine, probe tasks, listener) is the daemon's. This
//! file causes no effect.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::secret::Secret;
use crate::config::{Check, Config, Probe};

/// A burst of file events (an editor's write, rename, chmod) settles into
/// one reload this long after the last event.
pub const DEBOUNCE: Duration = Duration::from_millis(500);

/// What a reload changes. Probes and rules are compared by name and, for
/// those in both, by their whole definition: an unchanged one keeps its
/// windows and rule state; a changed one starts clean.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub probes_added: Vec<String>,
    pub probes_removed: Vec<String>,
    pub probes_changed: Vec<String>,
    pub rules_added: Vec<String>,
    pub rules_removed: Vec<String>,
    pub rules_changed: Vec<String>,
    /// Other top-level parts that differ: `daemon`, `service`, `colors`,
    /// `active`, `entry`, `actions`, `rollback`, `notify`.
    pub sections: Vec<&'static str>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }

    /// One line for the log: "probes added: x; rules changed: y; ...".
    pub fn summary(&self) -> String {
        if self.is_empty() {
            return "no changes".into();
        }
        let mut parts = Vec::new();
        for (what, names) in [
            ("probes added", &self.probes_added),
            ("probes removed", &self.probes_removed),
            ("probes changed", &self.probes_changed),
            ("rules added", &self.rules_added),
            ("rules removed", &self.rules_removed),
            ("rules changed", &self.rules_changed),
        ] {
            if !names.is_empty() {
                parts.push(format!("{what}: {}", names.join(", ")));
            }
        }
        if !self.sections.is_empty() {
            parts.push(format!("changed: {}", self.sections.join(", ")));
        }
        parts.join("; ")
    }
}

/// The probes whose tasks a reload restarts (by name): those added,
/// removed or changed, and those whose secrets (header values read from
/// `env:`/`file:`) now read differently. Every probe when what all of them
/// use changed: the colors' addresses, or the confirming runs a failure
/// triggers (from the health rules). Every other probe keeps its task, so
/// its schedule and its run in flight survive the reload: a storm of
/// reloads changes no cadence.
pub fn probes_to_restart(old: &Config, new: &Config, changes: &Changes) -> BTreeSet<String> {
    if changes.sections.contains(&"colors") || old.confirms() != new.confirms() {
        return old
            .probes
            .iter()
            .chain(&new.probes)
            .map(|p| p.name.clone())
            .collect();
    }
    let mut out: BTreeSet<String> = changes
        .probes_added
        .iter()
        .chain(&changes.probes_removed)
        .chain(&changes.probes_changed)
        .cloned()
        .collect();
    for p in &new.probes {
        if let Some(before) = old.probe(&p.name) {
            if secrets(before) != secrets(p) {
                out.insert(p.name.clone());
            }
        }
    }
    out
}

/// A probe's secrets, values included.
fn secrets(p: &Probe) -> Vec<&(String, Secret)> {
    match &p.check {
        Check::Http(h) => h.headers.iter().collect(),
        Check::Prometheus(m) => m.headers.iter().collect(),
        _ => Vec::new(),
    }
}

/// Compare two validated configurations.
///
/// Definitions are compared through their `Debug` form: the config types
/// hold regexes and secrets, which have no `PartialEq`, and their `Debug`
/// shows every setting (a secret shows where it comes from, never its
/// value).
pub fn diff(old: &Config, new: &Config) -> Changes {
    fn same<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }
    fn by_name<'a, T: std::fmt::Debug + 'a>(
        old: impl Iterator<Item = (&'a str, &'a T)>,
        new: impl Iterator<Item = (&'a str, &'a T)>,
    ) -> (Vec<String>, Vec<String>, Vec<String>) {
        let old: Vec<(&str, &T)> = old.collect();
        let new: Vec<(&str, &T)> = new.collect();
        let old_names: BTreeSet<&str> = old.iter().map(|(n, _)| *n).collect();
        let new_names: BTreeSet<&str> = new.iter().map(|(n, _)| *n).collect();
        let added = new_names
            .difference(&old_names)
            .map(|s| s.to_string())
            .collect();
        let removed = old_names
            .difference(&new_names)
            .map(|s| s.to_string())
            .collect();
        let changed = new
            .iter()
            .filter(|(name, def)| {
                old.iter()
                    .find(|(n, _)| n == name)
                    .is_some_and(|(_, old_def)| !same(*old_def, *def))
            })
            .map(|(n, _)| n.to_string())
            .collect();
        (added, removed, changed)
    }

    let (probes_added, probes_removed, probes_changed) = by_name(
        old.probes.iter().map(|p| (p.name.as_str(), p)),
        new.probes.iter().map(|p| (p.name.as_str(), p)),
    );
    let (rules_added, rules_removed, rules_changed) = by_name(
        old.rules.iter().map(|r| (r.name.as_str(), r)),
        new.rules.iter().map(|r| (r.name.as_str(), r)),
    );
    let mut sections = Vec::new();
    let pairs: [(&'static str, bool); 8] = [
        ("daemon", same(&old.daemon, &new.daemon)),
        ("service", old.service == new.service),
        ("colors", same(&old.colors, &new.colors)),
        ("active", old.active_file == new.active_file),
        ("entry", same(&old.entry, &new.entry)),
        ("actions", same(&old.actions, &new.actions)),
        ("rollback", same(&old.rollback, &new.rollback)),
        ("notify", same(&old.notify, &new.notify)),
    ];
    for (name, unchanged) in pairs {
        if !unchanged {
            sections.push(name);
        }
    }
    Changes {
        probes_added,
        probes_removed,
        probes_changed,
        rules_added,
        rules_removed,
        rules_changed,
        sections,
    }
}

/// Settings a running daemon cannot take over without a restart. A reload
/// that changes one is refused whole, so the running configuration stays
/// one consistent file.
pub fn refuse(old: &Config, new: &Config) -> Option<String> {
    (old.daemon.state_dir != new.daemon.state_dir).then(|| {
        format!(
            "{}: daemon.state_dir changed from {} to {}: the database cannot move while the daemon runs; restart it instead (keeping the running configuration)",
            new.path.display(),
            old.daemon.state_dir.display(),
            new.daemon.state_dir.display()
        )
    })
}

/// Watches the configuration file's folder (editors replace the file rather
/// than write it in place) and reports a change once events have been
/// quiet for [`DEBOUNCE`].
pub struct ConfigWatcher {
    // Kept for its Drop: dropping it stops the OS watch.
    _watcher: notify::RecommendedWatcher,
    events: mpsc::UnboundedReceiver<Result<(), String>>,
    /// When the pending change is due; `None` when none is pending. Kept
    /// here, not in the future, so [`ConfigWatcher::changed`] is
    /// cancel-safe inside `select!`.
    due: Option<Instant>,
    debounce: Duration,
    path: PathBuf,
}

impl ConfigWatcher {
    pub fn start(path: &Path) -> notify::Result<ConfigWatcher> {
        ConfigWatcher::with_debounce(path, DEBOUNCE)
    }

    pub fn with_debounce(path: &Path, debounce: Duration) -> notify::Result<ConfigWatcher> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path.file_name().map(|n| n.to_os_string());
        let (tx, events) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let relevant = match event {
                    Ok(e) => {
                        matches!(
                            e.kind,
                            EventKind::Create(_)
                                | EventKind::Modify(_)
                                | EventKind::Remove(_)
                                | EventKind::Any
                        ) && e
                            .paths
                            .iter()
                            .any(|p| p.file_name().map(|n| n.to_os_string()) == name)
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        false
                    }
                };
                if relevant {
                    let _ = tx.send(Ok(()));
                }
            })?;
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        Ok(ConfigWatcher {
            _watcher: watcher,
            events,
            due: None,
            debounce,
            path: path.to_path_buf(),
        })
    }

    /// An edit saved after `loaded` was read but before the watch began sent
    /// no event. Read the file once now: if it differs from `loaded`, or no
    /// longer loads, that is a pending change like any other, so the usual
    /// reload takes it (or names what is wrong with it).
    pub fn catch_up(&mut self, loaded: &Config) {
        let differs = match Config::load(&self.path) {
            Ok(now) => !diff(loaded, &now).is_empty(),
            Err(_) => true,
        };
        if differs {
            self.due.get_or_insert(Instant::now() + self.debounce);
        }
    }

    /// Resolves once the file changed and events have been quiet for the
    /// debounce period. Never resolves if the watcher's thread is gone.
    pub async fn changed(&mut self) {
        loop {
            match self.due {
                None => match self.events.recv().await {
                    Some(Ok(())) => self.due = Some(Instant::now() + self.debounce),
                    Some(Err(e)) => {
                        tracing::warn!("watching {} for changes: {e}", self.path.display())
                    }
                    None => std::future::pending::<()>().await,
                },
                Some(due) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(due) => {
                            self.due = None;
                            return;
                        }
                        event = self.events.recv() => match event {
                            Some(Ok(())) => self.due = Some(Instant::now() + self.debounce),
                            Some(Err(e)) => tracing::warn!(
                                "watching {} for changes: {e}",
                                self.path.display()
                            ),
                            None => {}
                        },
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[daemon]
state_dir = "state"
listen = "off"

[service]
name = "t"

[colors.blue]
base_url = "http://127.0.0.1:1"
[colors.green]
base_url = "http://127.0.0.1:2"

[[probe]]
name = "healthz"
kind = "http"
path = "/healthz"
health = true

[[probe]]
name = "home"
kind = "http"
path = "/"

[rollback]
command = ["/bin/true"]

[[rule]]
name = "slow"
severity = "low"
when = "latency_avg > 1000ms"
window = "15m"
"#;

    fn parse(text: &str) -> Config {
        Config::parse(Path::new("/tmp/rollbackd-test/rollbackd.toml"), text).unwrap()
    }

    #[test]
    fn identical_configs_have_no_changes() {
        let changes = diff(&parse(BASE), &parse(BASE));
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(changes.summary(), "no changes");
    }

    /// `[entry]` is applied by a reload (`EntryWatch::reconfigure`), so a
    /// change of it is a change: named in the summary, and an edit of it
    /// alone saved while the daemon starts is caught up on.
    #[test]
    fn an_entry_change_is_a_change() {
        let with_entry = |url: &str| {
            BASE.replace(
                "[rollback]",
                &format!("[entry]\nurl = \"{url}\"\ncolor_header = \"X-Color\"\n\n[rollback]"),
            )
        };
        let a = parse(&with_entry("http://127.0.0.1:3/healthz"));
        let b = parse(&with_entry("http://127.0.0.1:4/healthz"));
        assert_eq!(diff(&a, &b).sections, ["entry"]);
        assert_eq!(diff(&parse(BASE), &a).sections, ["entry"]);
        assert!(diff(&a, &a).is_empty());
    }

    #[test]
    fn names_added_removed_and_changed_probes_and_rules() {
        let new = BASE
            .replace("path = \"/\"", "path = \"/index\"")
            .replace("latency_avg > 1000ms", "latency_avg > 900ms")
            + r#"
[[probe]]
name = "extra"
kind = "tcp"

[actions]
low = "alert"
"#;
        let changes = diff(&parse(BASE), &parse(&new));
        assert_eq!(changes.probes_added, ["extra"]);
        assert_eq!(changes.probes_changed, ["home"]);
        assert!(changes.probes_removed.is_empty());
        assert_eq!(changes.rules_changed, ["slow"]);
        assert_eq!(changes.sections, ["actions"]);
        let summary = changes.summary();
        assert!(summary.contains("probes added: extra"), "{summary}");
        assert!(summary.contains("rules changed: slow"), "{summary}");

        let back = diff(&parse(&new), &parse(BASE));
        assert_eq!(back.probes_removed, ["extra"]);
    }

    #[test]
    fn only_changed_probes_restart_unless_what_all_use_changed() {
        let restart = |old: &str, new: &str| {
            let (old, new) = (parse(old), parse(new));
            probes_to_restart(&old, &new, &diff(&old, &new))
                .into_iter()
                .collect::<Vec<_>>()
        };
        assert!(
            restart(BASE, BASE).is_empty(),
            "an unchanged file restarts nothing"
        );
        let home = BASE.replace("path = \"/\"", "path = \"/index\"");
        assert_eq!(restart(BASE, &home), ["home"]);
        let extra = format!("{BASE}\n[[probe]]\nname = \"extra\"\nkind = \"tcp\"\n");
        assert_eq!(restart(BASE, &extra), ["extra"]);
        assert_eq!(restart(&extra, BASE), ["extra"]);
        // A rule change that is not a health streak restarts no probe...
        let slower = BASE.replace("latency_avg > 1000ms", "latency_avg > 900ms");
        assert!(restart(BASE, &slower).is_empty());
        // ...one that changes how many confirms a failure triggers does.
        let streak = format!(
            "{BASE}\n[[rule]]\nname = \"down\"\nseverity = \"critical\"\nwhen = \"health_failures >= 4\"\nwindow = \"1m\"\n"
        );
        assert_eq!(restart(BASE, &streak), ["healthz", "home"]);
        let moved = BASE.replace("127.0.0.1:2", "127.0.0.1:3");
        assert_eq!(restart(BASE, &moved), ["healthz", "home"]);
    }

    #[test]
    fn a_probe_whose_secret_reads_differently_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "one").unwrap();
        let text = BASE.replace(
            "path = \"/\"",
            &format!(
                "path = \"/\"\nheaders = {{ X-Api-Key = \"file:{}\" }}",
                token.display()
            ),
        );
        let old = parse(&text);
        std::fs::write(&token, "two").unwrap();
        let new = parse(&text);
        let changes = diff(&old, &new);
        assert!(changes.is_empty(), "the file did not change: {changes:?}");
        assert_eq!(
            probes_to_restart(&old, &new, &changes)
                .into_iter()
                .collect::<Vec<_>>(),
            ["home"]
        );
    }

    #[test]
    fn a_new_state_dir_is_refused() {
        let moved = BASE.replace("state_dir = \"state\"", "state_dir = \"elsewhere\"");
        let why = refuse(&parse(BASE), &parse(&moved)).unwrap();
        assert!(why.contains("daemon.state_dir"), "{why}");
        assert!(refuse(&parse(BASE), &parse(BASE)).is_none());
    }

    #[tokio::test]
    async fn a_burst_of_writes_and_renames_is_one_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rollbackd.toml");
        std::fs::write(&path, "a").unwrap();
        let mut watcher = ConfigWatcher::with_debounce(&path, Duration::from_millis(300)).unwrap();

        // An unrelated file in the same folder is not a change.
        std::fs::write(dir.path().join("other.txt"), "x").unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(600), watcher.changed()).await;
        assert!(quiet.is_err(), "another file's change was reported");

        // Ten writes, then an editor-style replace (write a temp, rename).
        for i in 0..10 {
            std::fs::write(&path, format!("v{i}")).unwrap();
        }
        let tmp = dir.path().join(".rollbackd.toml.swp");
        std::fs::write(&tmp, "final").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        tokio::time::timeout(Duration::from_secs(5), watcher.changed())
            .await
            .expect("the change is reported");
        // ...once: nothing more is pending.
        let again = tokio::time::timeout(Duration::from_millis(600), watcher.changed()).await;
        assert!(again.is_err(), "one burst was reported twice");
    }

    /// CI once saw a burst of saves made just after start-up never reload:
    /// they landed between reading the file and the watch beginning.
    #[tokio::test]
    async fn an_edit_made_before_the_watch_began_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rollbackd.toml");
        std::fs::write(&path, BASE).unwrap();
        let loaded = Config::load(&path).unwrap();

        // Unchanged on disk: nothing to catch up on.
        let mut watcher = ConfigWatcher::with_debounce(&path, Duration::from_millis(100)).unwrap();
        watcher.catch_up(&loaded);
        let quiet = tokio::time::timeout(Duration::from_millis(600), watcher.changed()).await;
        assert!(quiet.is_err(), "an unchanged file was reported");
        drop(watcher);

        // Saved after the read, before the watch: reported once.
        std::fs::write(&path, BASE.replace("1000ms", "900ms")).unwrap();
        let mut watcher = ConfigWatcher::with_debounce(&path, Duration::from_millis(100)).unwrap();
        watcher.catch_up(&loaded);
        tokio::time::timeout(Duration::from_secs(5), watcher.changed())
            .await
            .expect("the earlier edit is reported");
        let again = tokio::time::timeout(Duration::from_millis(600), watcher.changed()).await;
        assert!(again.is_err(), "the earlier edit was reported twice");

        // A file that no longer loads is a change too: the reload names
        // its fault.
        std::fs::write(&path, "[daemon\n").unwrap();
        let mut watcher = ConfigWatcher::with_debounce(&path, Duration::from_millis(100)).unwrap();
        watcher.catch_up(&loaded);
        tokio::time::timeout(Duration::from_secs(5), watcher.changed())
            .await
            .expect("a broken file is reported");
    }
}
