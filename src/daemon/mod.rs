//! The daemon: schedule -> probe -> store -> decide -> act.
//!
//! [`run`] wires the parts and owns every task it starts, awaiting them all
//! before it returns: the probe fleet (`fleet`: one task per probe and
//! color) sends [`Sample`]s to the work loop (`work`); the state watcher
//! (`state_watch`) sends it what the database says and publishes the
//! active color; the work loop, which never awaits the database, feeds the
//! matrix, forwards samples and verdicts to the writers (`writer`), starts
//! at most one rollback task (`autorollback`), pings the systemd watchdog
//! (so a stuck loop stops pinging) and handles [`Control`] messages. The
//! caller passes the control channel: `main` connects signals to it, tests a
//! plain sender.

pub mod autorollback;
pub mod clock;
pub mod entry_watch;
pub mod fleet;
pub mod health;
pub mod heartbeat;
pub mod http;
pub mod metrics;
pub mod reload;
pub mod retention;
pub mod signals;
pub mod state_watch;
pub mod statelock;
pub mod status;
pub mod systemd;
mod work;
pub mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::{Config, ConfigError, Scope};
use crate::daemon::autorollback::AutoRollback;
use crate::daemon::clock::Clock;
use crate::daemon::entry_watch::EntryWatch;
use crate::daemon::fleet::{DeploymentIds, Fleet};
use crate::daemon::health::Health;
use crate::daemon::http::{AppState, ProbeInfo, ReloadInfo, Server, Snapshot};
use crate::daemon::metrics::Metrics;
use crate::daemon::reload::ConfigWatcher;
use crate::daemon::signals::Control;
use crate::daemon::state_watch::Seen;
use crate::daemon::work::{HOUSEKEEPING_PERIOD, Work};
use crate::matrix::{self, Engine, Verdict};
use crate::model::{Color, Sample, duration_ms, now_ms};
use crate::notifier;
use crate::probe::Prober;
use crate::rollback::active;
use crate::rollback::{self, Guards, RollbackError};
use crate::store::shared::Shared;
use crate::store::{Store, StoreError, StoredVerdict};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Rollback(#[from] RollbackError),
    #[error(transparent)]
    Active(#[from] active::ActiveError),
    #[error(transparent)]
    Lock(#[from] crate::daemon::statelock::LockError),
    #[error("cannot listen on {addr} ([daemon] listen): {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// How long a daemon starting with a new journal waits for the shared
/// database to give this host's history back.
const RESTORE_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// A new journal takes this host's history back from the shared database
/// (`Store::restore_from`), before anything reads or writes it. A failure
/// is logged: the daemon protects with what it has.
async fn restore(store: &Store, db: &Shared) {
    match store.restore_from(db, RESTORE_WITHIN).await {
        Ok(Some(restored)) => tracing::warn!(
            rollbackd.host = db.host(),
            "this journal was new: took back this host's history from the shared database ({restored})"
        ),
        Ok(None) => {}
        Err(e) => tracing::error!(
            rollbackd.error = %e,
            "this journal is new and this host's history could not be taken back from the shared database: {e} (new rows may be numbered as old ones there)"
        ),
    }
}

/// Run until a [`Control::Shutdown`] arrives (or the channel closes).
pub async fn run(config: Config, control: mpsc::Receiver<Control>) -> Result<(), DaemonError> {
    let config = Arc::new(config);
    // One daemon per state_dir: held until `run` returns (or the process
    // dies: the kernel lets go of it).
    let _state_lock = crate::daemon::statelock::acquire(&config.daemon.state_dir)?;
    let mut store = Store::open_dir(&config.daemon.state_dir).await?;
    if let Some(url) = &config.daemon.database {
        // Connected lazily: the daemon starts, and protects, while the
        // shared database is away (its shipper and lock retry).
        let db = Shared::connect_lazy(url, &config.daemon.host, &config.service)?;
        restore(&store, &db).await;
        store.attach_shared(db);
        tracing::info!(
            rollbackd.host = config.daemon.host.as_str(),
            "sharing service {} with a fleet through {url} (as host {})",
            config.service,
            config.daemon.host
        );
    }
    let prober = Prober::new();
    // Notifications: a queue and its worker; sending never waits.
    let notify_policy = notifier::Policy::default();
    let (hub, notify_worker) = notifier::Hub::start_with_drills(notify_policy, store.clone());
    let metrics = Arc::new(Metrics::new());
    metrics.configure(&config);
    let health = Arc::new(Health::new());
    let started_ms = now_ms();

    // A rollback interrupted by a crash is closed or resumed before anything
    // else can start a new one.
    {
        let ctx = rollback::Context {
            config: &config,
            store: &store,
            prober: &prober,
            notify: Some(&hub),
        };
        if let Some(outcome) = rollback::reconcile(&ctx).await? {
            tracing::warn!("reconciled interrupted rollback: {outcome}");
        }
    }

    // The engine learns each color's current deployment before the windows
    // are rebuilt: a stored sample of an earlier deployment (the one rolled
    // back before a restart) never judges the current one.
    let mut engine = Engine::new(&config);
    let mut guards = Guards::default();
    let (deploy_tx, deploy_rx) = watch::channel(DeploymentIds::new());
    let (active, first) = state_watch::read(&config, &store, &Seen::default(), true).await?;
    work::apply_seen(first.clone(), &mut engine, &deploy_tx, &mut guards);
    guards.take_ended(Instant::now());
    rebuild_windows(&mut engine, &config, &store).await?;

    // The read-only listener comes up before READY=1, so a bad `listen` is
    // a startup error and a client may connect as soon as systemd says so.
    let (snapshot_tx, snapshot_rx) = watch::channel(snapshot(
        &config,
        started_ms,
        active,
        String::new(),
        &[],
        false,
        &None,
    ));
    let app = AppState {
        snapshot: snapshot_rx,
        health: health.clone(),
        metrics: metrics.clone(),
        store: store.clone(),
    };
    let http = start_http(config.daemon.listen, &app)?;
    let heartbeat = tokio::spawn(heartbeat::run(
        config.clone(),
        store.clone(),
        app.snapshot.clone(),
    ));
    // The database's state, read beside the loop (the loop never awaits
    // the database); the active color's one home.
    let (active_tx, active_rx) = watch::channel(active);
    let state = state_watch::start(&config, &store, &hub, first, active_tx);
    let watcher = start_watcher(&config);

    // Writes leave the loop through channels: samples in batches, verdicts
    // in order; retention beside them (a reload sends its new value).
    let (writer_tx, writer_rx) = mpsc::channel::<Sample>(8192);
    let writer = tokio::spawn(
        writer::Writer {
            health: Some(health.clone()),
            metrics: Some(metrics.clone()),
            ..writer::Writer::default()
        }
        .run(store.clone(), writer_rx),
    );
    let (verdict_tx, verdict_rx) = mpsc::channel::<StoredVerdict>(1024);
    let verdict_writer = tokio::spawn(writer::write_verdicts(store.clone(), verdict_rx, health));
    let (retention_tx, retention_rx) = watch::channel(config.daemon.retention);
    let maintenance = tokio::spawn(retention::maintain(store.clone(), retention_rx));
    let (sample_tx, sample_rx) = mpsc::channel::<Sample>(4096);
    let fleet = Fleet::start(&config, &prober, &sample_tx, &deploy_rx);
    // The fleet holds the senders: its end closes the channel.
    drop(sample_tx);

    let last_status = status_line(active, &[], &None);
    metrics.set_active(active);
    systemd::ready(&last_status);
    tracing::info!(
        probes = config.probes.len(),
        rules = config.rules.len(),
        active = active.map(Color::as_str).unwrap_or("unknown"),
        "rollbackd running"
    );
    let work = Work {
        config: config.clone(),
        engine,
        guards,
        active: active_rx,
        deployments: deploy_tx,
        auto: AutoRollback::new(&store, &prober, &hub, &metrics),
        recoveries: notifier::Recoveries::default(),
        hub: hub.clone(),
        metrics,
        app,
        snapshot: snapshot_tx,
        started_ms,
        state,
        entry: EntryWatch::start(&config),
        fleet,
        samples: sample_rx,
        writer_tx,
        writer,
        verdict_tx,
        verdict_writer,
        retention: retention_tx,
        http,
        watcher,
        clock: Clock::new(
            now_ms(),
            Instant::now(),
            clock::boottime(),
            HOUSEKEEPING_PERIOD,
        ),
        pace: matrix::Pace::default(),
        next_eval: Some(Instant::now()),
        transitions: crate::probe::Transitions::default(),
        last_status,
        last_reload: None,
    };
    work.run(control).await;

    // The loop and what it drives have stopped (and dropped their senders).
    if let Err(e) = maintenance.await {
        tracing::error!("database maintenance task panicked: {e}");
    }
    drop(hub);
    if tokio::time::timeout(notify_policy.worst_case(), notify_worker)
        .await
        .is_err()
    {
        tracing::warn!("notifications still being retried at exit were abandoned");
    }
    heartbeat.abort();
    let unwritten = store.drain_shared(Duration::from_secs(3)).await;
    if unwritten > 0 {
        tracing::error!(
            rollbackd.backlog = unwritten,
            "{unwritten} rows for the shared database are lost: it did not take them before exit"
        );
    }
    if let Err(e) = store.flush_kept().await {
        tracing::error!(
            kept = store.kept_len(),
            "rollback records kept in memory are lost: the database still refuses them: {e}"
        );
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

fn start_http(listen: Option<SocketAddr>, app: &AppState) -> Result<Option<Server>, DaemonError> {
    let Some(addr) = listen else { return Ok(None) };
    let server =
        Server::start(addr, app.clone()).map_err(|source| DaemonError::Listen { addr, source })?;
    if !server.local_addr().ip().is_loopback() {
        tracing::warn!(
            "the HTTP listener is bound to {}, not loopback: /status and /metrics are readable from the network",
            server.local_addr()
        );
    }
    tracing::info!("HTTP listener on http://{}", server.local_addr());
    Ok(Some(server))
}

fn start_watcher(config: &Config) -> Option<ConfigWatcher> {
    if !config.daemon.watch_config {
        return None;
    }
    match ConfigWatcher::start(&config.path) {
        Ok(mut w) => {
            w.catch_up(config);
            Some(w)
        }
        Err(e) => {
            tracing::error!(
                "cannot watch {} for changes ({e}); SIGHUP still reloads",
                config.path.display()
            );
            None
        }
    }
}

/// What `/status` and `/healthz` read, published by the work loop after
/// every judgement: `active` is the color the state watcher published.
fn snapshot(
    config: &Config,
    started_ms: i64,
    active: Option<Color>,
    status_line: String,
    verdicts: &[Verdict],
    rollback_in_flight: bool,
    last_reload: &Option<ReloadInfo>,
) -> Snapshot {
    Snapshot {
        at: std::time::Instant::now(),
        started_ms,
        service: config.service.clone(),
        config_path: config.path.clone(),
        dry_run: config.daemon.dry_run,
        active,
        status_line,
        verdicts: verdicts.to_vec(),
        probes: config
            .probes
            .iter()
            .map(|p| ProbeInfo {
                name: p.name.clone(),
                kind: p.check.kind(),
                shared: p.scope == Scope::Shared,
                health: p.health,
                interval_ms: p.interval.as_millis() as u64,
            })
            .collect(),
        rollback_in_flight,
        last_reload: last_reload.clone(),
        stopping: false,
    }
}

/// What a reload may replace. Everything else (the store, the writers,
/// the rollback in flight with its own copy of the old configuration, the
/// metrics) lives on untouched.
struct Live<'a> {
    config: &'a mut Arc<Config>,
    engine: &'a mut Engine,
    fleet: &'a mut Fleet,
    http: &'a mut Option<Server>,
    watcher: &'a mut Option<ConfigWatcher>,
    retention: &'a watch::Sender<Duration>,
}

impl Live<'_> {
    /// Parse and validate with the same code as `check`; on success swap
    /// everything at once, keeping the windows and rule states of what did
    /// not change; on failure keep running the old configuration. Either
    /// way systemd sees RELOADING=1, then READY=1.
    async fn reload(&mut self, app: &AppState, status: &str) -> ReloadInfo {
        systemd::reloading();
        let info = match self.try_reload(app).await {
            Ok(changes) => {
                tracing::info!(
                    "configuration reloaded from {}: {changes}",
                    self.config.path.display()
                );
                ReloadInfo {
                    at_ms: now_ms(),
                    ok: true,
                    message: changes,
                }
            }
            Err(why) => {
                tracing::error!("reload failed, keeping the running configuration: {why}");
                ReloadInfo {
                    at_ms: now_ms(),
                    ok: false,
                    message: why,
                }
            }
        };
        let mut status = status.replace("; last reload failed", "");
        if !info.ok {
            status.push_str("; last reload failed");
        }
        systemd::ready(&status);
        info
    }

    async fn try_reload(&mut self, app: &AppState) -> Result<String, String> {
        let new = Config::load(&self.config.path).map_err(|e| e.to_string())?;
        if let Some(why) = reload::refuse(self.config, &new) {
            return Err(why);
        }
        // The one part that can fail after validation: a new listen
        // address. Bind it before anything is swapped.
        let mut new_http = None;
        if new.daemon.listen != self.config.daemon.listen {
            new_http = Some(start_http(new.daemon.listen, app).map_err(|e| e.to_string())?);
        }
        let changes = reload::diff(self.config, &new);
        for probe in &changes.probes_changed {
            self.engine.forget_probe(probe);
        }
        for rule in &changes.rules_changed {
            self.engine.forget_rule(rule);
        }
        // A degradation rule new in this file gets its baselines from the
        // state watcher, which reads them as it learns the new file.
        self.engine.reconfigure(&new);
        if !changes.rules_removed.is_empty() || !changes.rules_changed.is_empty() {
            app.metrics.forget_verdicts();
        }
        // Only the probes that changed restart (`reload::probes_to_restart`,
        // which compares the old file with the new: asked before the swap):
        // the others keep their task, its schedule and its run in flight,
        // so a storm of reloads changes no cadence. Windows live in the
        // engine and are kept either way.
        let restart = reload::probes_to_restart(self.config, &new, &changes);
        let new = Arc::new(new);
        *self.config = new.clone();
        self.fleet.restart(&new, &restart).await;
        self.retention.send_replace(new.daemon.retention);
        if let Some(server) = new_http {
            if let Some(old) = std::mem::replace(self.http, server) {
                old.stop().await;
            }
        }
        if new.daemon.watch_config != self.watcher.is_some() {
            *self.watcher = start_watcher(&new);
        }
        Ok(changes.summary())
    }
}

fn status_line(
    active: Option<Color>,
    verdicts: &[Verdict],
    last_reload: &Option<ReloadInfo>,
) -> String {
    let active = active.map(Color::as_str).unwrap_or("unknown");
    let mut line = match matrix::worst(verdicts) {
        Some(v) => format!(
            "active {active}; worst: {} fired on {} ({})",
            v.severity, v.color, v.rule
        ),
        None => format!("active {active}; no rule fired"),
    };
    if last_reload.as_ref().is_some_and(|r| !r.ok) {
        line.push_str("; last reload failed");
    }
    line
}

/// After a restart, the windows come back from the stored samples (of each
/// color's current deployment only: the engine drops the others).
async fn rebuild_windows(
    engine: &mut Engine,
    config: &Config,
    store: &Store,
) -> Result<(), DaemonError> {
    let longest = config
        .rules
        .iter()
        .map(|r| r.window + r.hold_for)
        .max()
        .unwrap_or_default();
    let since = now_ms() - duration_ms(longest);
    let samples = store.samples(None, None, since).await?;
    let n = samples.len();
    for s in &samples {
        engine.observe(s);
    }
    if n > 0 {
        tracing::info!(samples = n, "windows rebuilt from stored samples");
    }
    Ok(())
}

#[cfg(test)]
mod reload_tests {
    use super::*;

    fn config_text(green_port: u16, probes: &[&str]) -> String {
        let mut text = format!(
            r#"
[daemon]
state_dir = "state"
listen = "off"
watch_config = false
[service]
name = "t"
[colors.blue]
base_url = "http://127.0.0.1:9"
[colors.green]
base_url = "http://127.0.0.1:{green_port}"
[rollback]
command = ["/bin/true"]
"#
        );
        for name in probes {
            text.push_str(&format!(
                "[[probe]]\nname = \"{name}\"\nkind = \"http\"\npath = \"/{name}\"\ninterval = \"1s\"\ntimeout = \"500ms\"\nhealth = true\n"
            ));
        }
        text
    }

    /// A reload that changes `[colors]` restarts every probe, and one it
    /// also removes is stopped for good: which probes restart is asked of
    /// the old configuration and the new, before the swap (asked after it,
    /// the removed probe went on running).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reload_stops_a_removed_probe_even_when_every_probe_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rollbackd.toml");
        std::fs::write(&path, config_text(9, &["a", "b"])).unwrap();
        let mut config = Arc::new(Config::load(&path).unwrap());
        let store = Store::open_dir(&config.daemon.state_dir).await.unwrap();
        let mut engine = Engine::new(&config);
        let (sample_tx, _samples) = mpsc::channel::<Sample>(1024);
        let (_deploy_tx, deploy_rx) = watch::channel(DeploymentIds::new());
        let mut fleet = Fleet::start(&config, &Prober::new(), &sample_tx, &deploy_rx);
        assert_eq!(fleet.probes(), ["a", "a", "b", "b"]);
        let (_snapshot_tx, snapshot_rx) =
            watch::channel(snapshot(&config, 0, None, String::new(), &[], false, &None));
        let app = AppState {
            snapshot: snapshot_rx,
            health: Arc::new(Health::new()),
            metrics: Arc::new(Metrics::new()),
            store: store.clone(),
        };
        let (retention, _retention_rx) = watch::channel(config.daemon.retention);
        let (mut http, mut watcher) = (None, None);

        std::fs::write(&path, config_text(10, &["a"])).unwrap();
        let mut live = Live {
            config: &mut config,
            engine: &mut engine,
            fleet: &mut fleet,
            http: &mut http,
            watcher: &mut watcher,
            retention: &retention,
        };
        let changes = live.try_reload(&app).await.unwrap();
        assert!(changes.contains("colors"), "{changes}");
        assert_eq!(fleet.probes(), ["a", "a"], "b is gone");
        assert_eq!(config.probes.len(), 1);
        fleet.stop().await;
    }
}

#[cfg(test)]
mod loop_tests {
    /// The non-test part of a source file.
    fn code(src: &str) -> &str {
        src.split("\n#[cfg(test)]\nmod ").next().unwrap_or(src)
    }

    /// Whether a text calls the store or holds one.
    fn names_store(text: &str) -> bool {
        ["store.", "Store::", "Store,", "&Store", "Store;", ": Store"]
            .iter()
            .any(|p| text.contains(p))
    }

    /// The names of the `async fn`s in a source file's code.
    fn async_fns(src: &str) -> Vec<&str> {
        code(src)
            .split("async fn ")
            .skip(1)
            .filter_map(|rest| rest.split(['(', '<']).next())
            .collect()
    }

    /// The invariant "the work loop never awaits the database", held by its
    /// text: every await on the loop's path (`Work::run` and the method of
    /// each event, up to `Work::stop`) is one of these (a channel, a task, a
    /// file watch, the reload), and nothing there names the store. A new
    /// await here must not reach the database: give the read to
    /// `state_watch` (or a task of its own) and add it to the list.
    #[test]
    fn the_work_loop_awaits_no_database() {
        let src = include_str!("work.rs");
        let start = src.find("\nimpl Work {\n").expect("the work loop");
        let end = start
            + src[start..]
                .find("    /// Stop what the loop drives, in order.")
                .expect("the loop's end");
        let body = &src[start..end];
        let allowed = [
            "if self.writer_tx.send(sample).await.is_err() {",
            // `Work::take`: into the matrix, then the writer's channel.
            "self.take(sample).await;",
            "Some(w) => w.changed().await,",
            "None => std::future::pending().await,",
            // `Live::reload`: parses the file, restarts probes, no SQL.
            "self.reload().await;",
            "let info = live.reload(&self.app, &self.last_status).await;",
            // After the loop: the shutdown.
            "self.stop().await;",
        ];
        let awaits: Vec<&str> = body
            .lines()
            .map(str::trim)
            .filter(|l| l.contains(".await"))
            .collect();
        assert_eq!(awaits.len(), 8, "{awaits:#?}");
        for line in awaits {
            assert!(allowed.contains(&line), "the work loop awaits: {line}");
        }
        assert!(!names_store(body), "the work loop calls the store");
        assert!(
            !body.contains("refresh_active") && !body.contains("bake::check"),
            "the work loop reads the database"
        );
    }

    /// What the loop calls into awaits nothing on its path either: the
    /// rollback policy, the entry watch and the verdict queue are plain
    /// functions (the rollback and the closing of a broken one run in tasks
    /// of their own); the only awaits are the rollback task's end, the
    /// fleet's restart on a reload (probe tasks ending), and the shutdown.
    #[test]
    fn what_the_loop_calls_awaits_no_database() {
        let auto = include_str!("autorollback.rs");
        assert_eq!(async_fns(auto), ["finished", "stop"]);
        let finished = &auto[auto.find("pub async fn finished").unwrap()..];
        let finished = &finished[..finished.find("\n    }\n").unwrap()];
        let awaits: Vec<&str> = finished
            .lines()
            .map(str::trim)
            .filter(|l| l.contains(".await"))
            .collect();
        assert_eq!(
            awaits,
            [
                "Some(task) => task.await,",
                "None => std::future::pending().await,"
            ]
        );
        let fleet = include_str!("fleet.rs");
        assert_eq!(async_fns(fleet), ["restart", "stop", "stop_tasks", "run"]);
        let entry = include_str!("entry_watch.rs");
        assert_eq!(async_fns(entry), ["stop", "look"]);
        for (name, src) in [("fleet.rs", fleet), ("entry_watch.rs", entry)] {
            assert!(!names_store(code(src)), "{name} names the store");
        }
        let writer = include_str!("writer.rs");
        assert!(writer.contains("\npub fn queue_verdicts("));
        let verdicts = &writer[writer.find("\npub fn queue_verdicts(").unwrap()..];
        let verdicts = &verdicts[..verdicts.find("\n}\n").unwrap()];
        assert!(!verdicts.contains(".await"), "queueing a verdict waits");
        assert!(verdicts.contains("try_send"), "queueing a verdict waits");
    }
}
