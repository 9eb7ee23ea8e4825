//! The daemon: schedule -> probe -> store -> decide -> act.
//!
//! [`run`] owns every task it starts and awaits them all before it returns:
//! one task per (probe, color) sends [`Sample`]s to the work loop; the state
//! watcher (`state_watch`) sends it what the database says; the work loop,
//! which never awaits the database, feeds the matrix, forwards samples to the batching writer, evaluates
//! verdicts, starts at most one rollback task, pings the systemd watchdog
//! (so a stuck loop stops pinging) and handles [`Control`] messages. The
//! caller passes the control channel: `main` connects signals to it, tests a
//! plain sender.

pub mod clock;
pub mod http;
pub mod metrics;
pub mod reload;
pub mod retention;
pub mod signals;
pub mod state_watch;
pub mod statelock;
pub mod status;
pub mod systemd;
pub mod writer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::{Check, Config, ConfigError, Scope};
use crate::daemon::clock::Clock;
use crate::daemon::http::{AppState, Health, ProbeInfo, ReloadInfo, Server, Snapshot};
use crate::daemon::metrics::Metrics;
use crate::daemon::reload::ConfigWatcher;
use crate::daemon::signals::Control;
use crate::daemon::state_watch::Seen;
use crate::matrix::{self, Decision, Engine, State, Verdict};
use crate::model::{Color, Sample, Signal, duration_ms, now_ms};
use crate::notifier;
use crate::probe::schedule::{self, Cadence};
use crate::probe::{Prober, access_log};
use crate::rollback::active;
use crate::rollback::entry;
use crate::rollback::{self, Guards, Outcome, Request, RollbackError, Trigger};
use crate::store::{Store, StoreError, StoredVerdict};

/// How often the loop checks its own clock for a gap, a pause that ran out
/// and a retry that fell due (verdicts do not wait for it: a sample is
/// judged as it lands, a time-based change when the matrix says it falls
/// due). It reads no database: `state_watch` does, beside it.
const HOUSEKEEPING_PERIOD: Duration = matrix::EVAL_PERIOD;
/// While a rollback-worthy rule stays fired but the rollback was skipped or
/// refused, how long before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(60);
/// Consecutive refusals back off (1, 2, 4, ... minutes) up to this, so a
/// rule stuck fired against a broken standby does not open an incident and
/// notify every minute.
const RETRY_REFUSED_MAX: Duration = Duration::from_secs(15 * 60);

/// When to try again after `refusals` refusals in a row.
fn retry_delay(refusals: u32) -> Duration {
    RETRY_AFTER
        .saturating_mul(1 << refusals.saturating_sub(1).min(8))
        .min(RETRY_REFUSED_MAX)
}

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

/// The latest deployment id of each color: samples are stamped with it.
pub(crate) type DeploymentIds = HashMap<Color, i64>;

pub(crate) struct ProbeTask {
    /// The probe it runs.
    probe: String,
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

/// Run until a [`Control::Shutdown`] arrives (or the channel closes).
pub async fn run(config: Config, mut control: mpsc::Receiver<Control>) -> Result<(), DaemonError> {
    let mut config = Arc::new(config);
    // One daemon per state_dir: held until `run` returns (or the process
    // dies: the kernel lets go of it).
    let _state_lock = crate::daemon::statelock::acquire(&config.daemon.state_dir)?;
    let store = Store::open_dir(&config.daemon.state_dir).await?;
    let prober = Prober::new();
    // Notifications: a queue and its worker; sending never waits.
    let notify_policy = notifier::Policy::default();
    let (hub, notify_worker) = notifier::Hub::start_with_drills(notify_policy, store.clone());
    let mut recoveries = notifier::Recoveries::default();
    // Pause and cooldown, on the monotonic clock.
    let mut guards = Guards::default();
    let mut rollback_verdict: Option<Verdict> = None;
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
    let (deploy_tx, deploy_rx) = watch::channel(DeploymentIds::new());
    let first = state_watch::read(&config, &store, &Seen::default(), true).await?;
    let mut active = apply_seen(first.clone(), &mut engine, &deploy_tx, &mut guards, None);
    guards.take_ended(Instant::now());
    rebuild_windows(&mut engine, &config, &store).await?;

    // The read-only listener comes up before READY=1, so a bad `listen` is
    // a startup error and a client may connect as soon as systemd says so.
    let mut last_reload: Option<ReloadInfo> = None;
    let (snapshot_tx, snapshot_rx) = watch::channel(snapshot(
        &config,
        started_ms,
        active,
        String::new(),
        &[],
        false,
        &last_reload,
    ));
    let app = AppState {
        snapshot: snapshot_rx,
        health: health.clone(),
        metrics: metrics.clone(),
        db_path: store.path().to_path_buf(),
        store: store.clone(),
    };
    let mut http = start_http(config.daemon.listen, &app)?;
    // The database's state, read beside the loop: the loop never awaits
    // the database.
    let mut state = state_watch::start(&config, &store, &hub, first);
    let mut watcher = start_watcher(&config);

    let (writer_tx, writer_rx) = mpsc::channel::<Sample>(8192);
    let writer = tokio::spawn(
        crate::daemon::writer::Writer {
            health: Some(health.clone()),
            metrics: Some(metrics.clone()),
            ..crate::daemon::writer::Writer::default()
        }
        .run(store.clone(), writer_rx),
    );
    // Retention: dropping the sender stops it; a reload sends the new value.
    let (retention_tx, retention_rx) = watch::channel(config.daemon.retention);
    let maintenance = tokio::spawn(retention::maintain(store.clone(), retention_rx));
    let (verdict_tx, verdict_rx) = mpsc::channel::<StoredVerdict>(1024);
    let verdict_writer = tokio::spawn(write_verdicts(store.clone(), verdict_rx, health.clone()));
    let (sample_tx, mut sample_rx) = mpsc::channel::<Sample>(4096);
    let mut probes = spawn_probes(&config, &prober, &sample_tx, &deploy_rx);
    // `[entry]`: what the users' entry serves, looked at on a pace of its
    // own; a reload sends the new `[entry]`, dropping the sender stops it.
    let (entry_cfg_tx, entry_cfg_rx) = watch::channel(config.entry.clone());
    let (seen_tx, mut seen_rx) = mpsc::channel::<entry::Seen>(16);
    let entry_watch = tokio::spawn(watch_entry(entry_cfg_rx, seen_tx));
    let mut drift = entry::Drift::default();

    // Durations on the monotonic clock: the matrix is handed this clock's
    // times, never the wall clock's.
    let mut clock = Clock::new(
        now_ms(),
        Instant::now(),
        clock::boottime(),
        HOUSEKEEPING_PERIOD,
    );
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING_PERIOD);
    housekeeping.set_missed_tick_behavior(MissedTickBehavior::Skip);
    // When the loop will judge next: as a sample lands, when the matrix's
    // next time-based change falls due, else not at all; at the pace
    // `matrix::Pace` allows (as `replay`).
    let mut pace = matrix::Pace::default();
    let mut next_eval: Option<Instant> = Some(Instant::now());
    // The watchdog is pinged from this loop and only from it: while the loop
    // is stuck (an await that never returns, a blocked thread), the pings
    // stop and systemd restarts the daemon.
    let watchdog_period = systemd::watchdog_period();
    let mut watchdog = tokio::time::interval(watchdog_period.unwrap_or(Duration::from_secs(3600)));
    watchdog.set_missed_tick_behavior(MissedTickBehavior::Skip);

    let mut rollback_task: Option<JoinHandle<Result<Outcome, RollbackError>>> = None;
    let mut next_attempt: Option<Instant> = None;
    let mut refusals = 0u32;
    let mut reload_now = false;
    let mut transitions = crate::probe::Transitions::default();
    let mut last_status = status_line(active, &[], &last_reload);
    // Closing the incident of a broken rollback task, beside the loop.
    let mut closing: Option<JoinHandle<()>> = None;

    metrics.set_active(active);
    systemd::ready(&last_status);
    tracing::info!(
        probes = config.probes.len(),
        rules = config.rules.len(),
        active = active.map(Color::as_str).unwrap_or("unknown"),
        "rollbackd running"
    );

    loop {
        // Only time spent waiting here can be a gap in the daemon's
        // running; its own work in the previous turn is not.
        clock.settle(Instant::now(), clock::boottime());
        tokio::select! {
            Some(sample) = sample_rx.recv() => {
                let arrived = Instant::now();
                noticed_gap(&mut clock, &mut engine, arrived, &mut next_eval);
                // One request is not news: an access log's failing requests
                // speak through the rules, not a log line per change.
                let per_request = config
                    .probe(&sample.probe)
                    .is_some_and(|p| matches!(p.check, Check::AccessLog(_)));
                if !per_request {
                    transitions.note(&sample);
                }
                engine.observe_at(&sample, clock.sample_ms(sample.at_ms, now_ms(), arrived));
                // Judged as it lands (SPEC: decisions are taken as the
                // evidence lands), as `replay` does: now, unless a flood of
                // samples already used the pace's burst.
                let want = clock.instant_of(pace.earliest(clock.ms(arrived)), arrived);
                if next_eval.is_none_or(|t| want < t) {
                    next_eval = Some(want);
                }
                metrics.observe_sample(&sample);
                if writer_tx.send(sample).await.is_err() {
                    tracing::error!("the sample writer stopped; samples are no longer stored");
                }
            }
            _ = housekeeping.tick() => {
                debug_stall();
                let now = Instant::now();
                noticed_gap(&mut clock, &mut engine, now, &mut next_eval);
                // The loop is alive even when nothing needs judging.
                snapshot_tx.send_modify(|s| s.at = std::time::Instant::now());
                if guards.take_ended(now) {
                    // A hold just ended: a rollback it held back goes now.
                    next_attempt = Some(now);
                }
                // A retry due is judged now.
                if next_attempt.is_some_and(|t| now >= t) {
                    next_eval = Some(next_eval.map_or(now, |t| t.min(now)));
                }
            }
            Some(seen) = state.seen.recv() => {
                let now = Instant::now();
                let before = active;
                active = apply_seen(seen, &mut engine, &deploy_tx, &mut guards, active);
                if guards.take_ended(now) {
                    next_attempt = Some(now);
                }
                // A new active color or a hold that ended is judged now.
                if active != before || next_attempt.is_some_and(|t| now >= t) {
                    next_eval = Some(next_eval.map_or(now, |t| t.min(now)));
                }
            }
            _ = sleep_until(next_eval), if next_eval.is_some() => {
                let now = Instant::now();
                // After a gap, rules are inconclusive until fresh samples land.
                noticed_gap(&mut clock, &mut engine, now, &mut next_eval);
                pace.judged(clock.ms(now));
                let mut verdicts = engine.judge(clock.ms(now));
                // Stored and shown on the wall clock.
                let wall = now_ms();
                for v in &mut verdicts {
                    v.at_ms = wall;
                }
                next_eval = engine
                    .next_due()
                    .map(|due| clock.instant_of(pace.earliest(due), now));
                match engine.take_blind_change() {
                    Some(true) => {
                        let tried = blind_tried(&config, &engine);
                        tracing::error!("alert: {}; tried: {tried}", matrix::BLIND_REASON);
                        let mut notice = notifier::Notice::new(
                            notifier::Event::Alert,
                            crate::model::Severity::High,
                            &config.service,
                            "the watchdog may be blind: nothing answered".to_owned(),
                        );
                        notice.detail = format!("{}; tried: {tried}", matrix::BLIND_REASON);
                        hub.send(&config.notify, notice);
                    }
                    Some(false) => tracing::warn!("a probe answers again: the watchdog can see, verdicts resume"),
                    None => {}
                }
                record_changes(&verdict_tx, &verdicts);
                metrics.set_verdicts(&verdicts);
                metrics.set_active(active);
                for notice in recoveries.cleared(&config.service, &verdicts) {
                    hub.send(&config.notify, notice);
                }
                let status = status_line(active, &verdicts, &last_reload);
                if status != last_status {
                    systemd::status(&status);
                    last_status = status;
                }
                snapshot_tx.send_replace(snapshot(
                    &config,
                    started_ms,
                    active,
                    last_status.clone(),
                    &verdicts,
                    rollback_task.is_some(),
                    &last_reload,
                ));
                let Some(active_color) = active else { continue };
                for decision in matrix::decide(&verdicts, active_color, &config.actions) {
                    match decision {
                        Decision::Rollback(v) => {
                            let due = v.changed || next_attempt.is_some_and(|t| Instant::now() >= t);
                            if rollback_task.is_none() && due {
                                let since = engine.failing_since(active_color);
                                recoveries.notified(&v);
                                rollback_verdict = Some(v.clone());
                                rollback_task = Some(start_rollback(&config, &store, &prober, &hub, &v, since, guards.clone()));
                                next_attempt = None;
                            }
                        }
                        Decision::Alert(v) if v.changed => {
                            tracing::warn!(
                                rollbackd.color = v.color.as_str(),
                                rollbackd.rule = v.rule.as_str(),
                                rollbackd.severity = v.severity.as_str(),
                                "alert: {} on {}: {}", v.rule, v.color, v.detail
                            );
                            hub.send(&config.notify, recoveries.alert(&config.service, &v));
                        }
                        Decision::Log(v) if v.changed => tracing::info!(
                            rollbackd.color = v.color.as_str(),
                            rollbackd.rule = v.rule.as_str(),
                            rollbackd.severity = v.severity.as_str(),
                            "{} on {}: {}", v.rule, v.color, v.detail
                        ),
                        _ => {}
                    }
                }
            }
            result = async {
                match rollback_task.as_mut() {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            }, if rollback_task.is_some() => {
                rollback_task = None;
                match result {
                    Ok(Ok(outcome)) => {
                        tracing::info!("rollback finished: {outcome}");
                        metrics.rollback(outcome_label(&outcome));
                        if let (Outcome::Skipped { why }, Some(v)) = (&outcome, rollback_verdict.take()) {
                            if let Some(notice) = recoveries.held(&config.service, &v, why) {
                                hub.send(&config.notify, notice);
                            }
                        }
                        match outcome {
                            Outcome::Refused { .. } => {
                                refusals += 1;
                                next_attempt = Some(Instant::now() + retry_delay(refusals));
                            }
                            Outcome::Skipped { .. } => next_attempt = Some(Instant::now() + RETRY_AFTER),
                            _ => refusals = 0,
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::error!("rollback stopped on an error: {e}");
                        metrics.rollback("error");
                        let (delay, task) = after_broken_rollback(&config, &store, &prober, Some(&hub), e.to_string(), &mut refusals);
                        closing = Some(task);
                        next_attempt = Some(Instant::now() + delay);
                    }
                    Err(e) => {
                        tracing::error!("rollback task panicked: {e}");
                        metrics.rollback("error");
                        let (delay, task) = after_broken_rollback(&config, &store, &prober, Some(&hub), e.to_string(), &mut refusals);
                        closing = Some(task);
                        next_attempt = Some(Instant::now() + delay);
                    }
                }
                // The active color may have changed: the watcher reads it now.
                state.look_now();
                next_eval = Some(Instant::now());
            }
            Some(seen) = seen_rx.recv() => {
                if let (entry::Seen::Color(served), Some(active)) = (seen, active) {
                    if rollback_task.is_some() {
                        // A rollback moves traffic on purpose.
                        drift.hold();
                    } else {
                        match drift.look(served, active) {
                            Some(entry::DriftChange::Started { served, active }) => {
                                let summary = format!(
                                    "drift: the entry serves {served} while {active} is the active color"
                                );
                                tracing::warn!(
                                    rollbackd.color = served.as_str(),
                                    rollbackd.severity = crate::model::Severity::High.as_str(),
                                    "alert: {summary}"
                                );
                                let mut notice = notifier::Notice::new(
                                    notifier::Event::Alert,
                                    crate::model::Severity::High,
                                    &config.service,
                                    summary,
                                );
                                notice.color = Some(served);
                                hub.send(&config.notify, notice);
                            }
                            Some(entry::DriftChange::Ended { active }) => tracing::info!(
                                rollbackd.color = active.as_str(),
                                "the entry serves the active color {active} again"
                            ),
                            None => {}
                        }
                    }
                }
            }
            _ = watchdog.tick(), if watchdog_period.is_some() => systemd::watchdog(),
            _ = async {
                match watcher.as_mut() {
                    Some(w) => w.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                tracing::info!("{} changed on disk: reloading", config.path.display());
                reload_now = true;
            }
            message = control.recv() => match message {
                Some(Control::Reload) => {
                    // A burst of SIGHUPs is one reload: it reads the file as
                    // it is now. A shutdown queued behind them wins.
                    let mut shutdown = false;
                    while let Ok(queued) = control.try_recv() {
                        shutdown |= queued == Control::Shutdown;
                    }
                    if shutdown {
                        break;
                    }
                    reload_now = true;
                }
                Some(Control::Shutdown) | None => break,
            },
        }
        // SIGHUP and a file change reload the same way, outside the select
        // so the reload holds the loop's state mutably.
        if std::mem::take(&mut reload_now) {
            let mut live = Live {
                config: &mut config,
                engine: &mut engine,
                probes: &mut probes,
                http: &mut http,
                watcher: &mut watcher,
                retention: &retention_tx,
            };
            let info = live
                .reload(&prober, &sample_tx, &deploy_rx, &app, &last_status)
                .await;
            metrics.reload(info.ok);
            if info.ok {
                metrics.configure(&config);
                // Its `[active] file`, and baselines for its rules.
                state.reconfigure(&config);
            }
            entry_cfg_tx.send_if_modified(|e| {
                let new = config.entry.clone();
                let changed = e.as_ref().map(|e| (&e.url, &e.color_header))
                    != new.as_ref().map(|e| (&e.url, &e.color_header));
                *e = new;
                changed
            });
            last_reload = Some(info);
            publish_reload(&snapshot_tx, &config, &last_reload);
            // New rules are judged at once.
            next_eval = Some(Instant::now());
        }
    }

    systemd::stopping();
    snapshot_tx.send_modify(|s| {
        s.stopping = true;
        s.rollback_in_flight = rollback_task.is_some();
    });
    tracing::info!("stopping: probes first, then samples are flushed");
    drop(watcher);
    state.stop().await;
    if let Some(task) = closing {
        if let Err(e) = task.await {
            tracing::error!("closing a broken rollback panicked: {e}");
        }
    }
    stop_probes(probes).await;
    drop(sample_tx);
    while let Some(sample) = sample_rx.recv().await {
        metrics.observe_sample(&sample);
        let _ = writer_tx.send(sample).await;
    }
    drop(writer_tx);
    drop(entry_cfg_tx);
    drop(seen_rx);
    if let Err(e) = entry_watch.await {
        tracing::error!("entry watch panicked: {e}");
    }
    if let Some(mut task) = rollback_task {
        // Never abandon a rollback half-way: every step is bounded by the
        // rollback timeout and verification by verify_after, so this wait
        // is bounded too. Past that bound the rollback's state is already
        // in the database (each step is written before its effect), and the
        // next start reconciles it.
        let bound = rollback_bound(&config);
        tracing::warn!(
            "waiting (at most {}) for the rollback in flight to finish before exiting",
            humantime::format_duration(bound)
        );
        match tokio::time::timeout(bound, &mut task).await {
            Ok(Ok(Ok(outcome))) => tracing::info!("rollback finished: {outcome}"),
            Ok(Ok(Err(e))) => tracing::error!("rollback stopped on an error: {e}"),
            Ok(Err(e)) => tracing::error!("rollback task panicked: {e}"),
            Err(_) => {
                task.abort();
                tracing::error!(
                    "the rollback in flight did not finish within {}; exiting with its state recorded for the next start to reconcile",
                    humantime::format_duration(bound)
                );
            }
        }
    }
    match writer.await {
        Ok(0) => {}
        Ok(dropped) => tracing::error!(
            dropped,
            "samples were dropped because the database refused writes"
        ),
        Err(e) => tracing::error!("sample writer panicked: {e}"),
    }
    if let Some(server) = http {
        server.stop().await;
    }
    drop(verdict_tx);
    if let Err(e) = verdict_writer.await {
        tracing::error!("verdict writer panicked: {e}");
    }
    drop(retention_tx);
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

/// Sleep until `at` (never, for `None`: the branch is disabled then).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Check the loop's own clock at a turn: after a gap in the daemon's
/// running (frozen, suspended, starved), every `for` hold restarts and the
/// rules wait for fresh samples (`Engine::gap`), and the loop judges at
/// once so verdicts show it. Returns whether there was a gap.
fn noticed_gap(
    clock: &mut Clock,
    engine: &mut Engine,
    now: Instant,
    next_eval: &mut Option<Instant>,
) -> bool {
    let Some(gap) = clock.wake(now, clock::boottime()) else {
        return false;
    };
    tracing::warn!(
        "the watchdog was not running for {} (frozen, suspended or starved): every `for` hold restarts and rules wait for fresh samples",
        humantime::format_duration(Duration::from_millis(gap.as_millis() as u64))
    );
    engine.gap(clock.ms(now), gap.as_millis() as i64);
    *next_eval = Some(now);
    true
}

/// What the blind watchdog tried, for its alert: each probe and color that
/// got no answer, its target and its error.
/// Debug builds only: while the file named by `ROLLBACKD_DEBUG_STALL_LOOP`
/// exists (at most 60 s), the work loop blocks its thread as a bug that
/// wedged it would. The test of the watchdog's stuck-loop detection needs
/// it: nothing the loop reads (files, the database) can wedge it any more.
/// Release builds compile it to nothing.
#[cfg(debug_assertions)]
fn debug_stall() {
    let Some(path) = std::env::var_os("ROLLBACKD_DEBUG_STALL_LOOP") else {
        return;
    };
    let path = std::path::Path::new(&path);
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while path.exists() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(not(debug_assertions))]
fn debug_stall() {}

fn blind_tried(config: &Config, engine: &Engine) -> String {
    engine
        .unanswered()
        .into_iter()
        .map(|(name, color, detail)| {
            let target = config
                .probe(name)
                .map(|p| crate::probe::target(config, p, color))
                .unwrap_or_default();
            let on = color.map(Color::as_str).unwrap_or("shared");
            format!("{name} on {on} ({target}): {detail}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The rollback task ended without an outcome (it panicked, or stopped on
/// an error): close its incident as failed and free the in-flight slot
/// (`rollback::abandon`) in a task of its own (the loop does not await the
/// database), then count it as a refusal, so the retry backs off like any
/// refusal's. Returns when to try again, and the closing task.
fn after_broken_rollback(
    config: &Arc<Config>,
    store: &Store,
    prober: &Prober,
    hub: Option<&notifier::Hub>,
    why: String,
    refusals: &mut u32,
) -> (Duration, JoinHandle<()>) {
    let (config, store, prober, hub) =
        (config.clone(), store.clone(), prober.clone(), hub.cloned());
    let task = tokio::spawn(async move {
        let ctx = rollback::Context {
            config: &config,
            store: &store,
            prober: &prober,
            notify: hub.as_ref(),
        };
        match rollback::abandon(&ctx, &why).await {
            Ok(Some(outcome)) => tracing::warn!("closed the broken rollback: {outcome}"),
            Ok(None) => {}
            // The database refuses: the slot stays held by this live process
            // (`reconcile` never takes over a live holder) until a restart.
            // Say so.
            Err(e) => tracing::error!(
                "cannot close the broken rollback's incident ({e}); automatic rollbacks stay blocked until the daemon restarts"
            ),
        }
    });
    *refusals += 1;
    (retry_delay(*refusals), task)
}

/// The longest a rollback can take: prepare, switch and retire each within
/// the rollback timeout, the target's and the restored color's health each
/// within verify_after, plus a margin for the database writes between.
fn rollback_bound(config: &Config) -> Duration {
    config.rollback.timeout * 3 + config.rollback.verify_after * 2 + Duration::from_secs(30)
}

fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Verified { .. } => "verified",
        Outcome::Escalated { .. } => "escalated",
        Outcome::Refused { .. } => "refused",
        Outcome::Failed { .. } => "failed",
        Outcome::DryRun { .. } => "dry_run",
        Outcome::Skipped { .. } => "skipped",
    }
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
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!(
                "cannot watch {} for changes ({e}); SIGHUP still reloads",
                config.path.display()
            );
            None
        }
    }
}

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

/// Right after a reload, `/status` shows its outcome and the new probes
/// (the verdicts follow at the next evaluation).
fn publish_reload(tx: &watch::Sender<Snapshot>, config: &Config, last_reload: &Option<ReloadInfo>) {
    let fresh = snapshot(config, 0, None, String::new(), &[], false, last_reload);
    tx.send_modify(|s| {
        s.last_reload = fresh.last_reload;
        s.probes = fresh.probes;
        s.dry_run = fresh.dry_run;
        s.service = fresh.service;
    });
}

/// What a reload may replace. Everything else in `run` (the store, the
/// writer, the rollback in flight with its own copy of the old
/// configuration, the metrics) lives on untouched.
struct Live<'a> {
    config: &'a mut Arc<Config>,
    engine: &'a mut Engine,
    probes: &'a mut Vec<ProbeTask>,
    http: &'a mut Option<Server>,
    watcher: &'a mut Option<ConfigWatcher>,
    retention: &'a watch::Sender<Duration>,
}

impl Live<'_> {
    /// Parse and validate with the same code as `check`; on success swap
    /// everything at once, keeping the windows and rule states of what did
    /// not change; on failure keep running the old configuration. Either
    /// way systemd sees RELOADING=1, then READY=1.
    async fn reload(
        &mut self,
        prober: &Prober,
        sample_tx: &mpsc::Sender<Sample>,
        deploy_rx: &watch::Receiver<DeploymentIds>,
        app: &AppState,
        status: &str,
    ) -> ReloadInfo {
        systemd::reloading();
        let info = match self.try_reload(prober, sample_tx, deploy_rx, app).await {
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

    async fn try_reload(
        &mut self,
        prober: &Prober,
        sample_tx: &mpsc::Sender<Sample>,
        deploy_rx: &watch::Receiver<DeploymentIds>,
        app: &AppState,
    ) -> Result<String, String> {
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
        let new = Arc::new(new);
        *self.config = new.clone();
        // Only the probes that changed restart (`reload::probes_to_restart`):
        // the others keep their task, its schedule and its run in flight,
        // so a storm of reloads changes no cadence. Windows live in the
        // engine and are kept either way.
        let restart = reload::probes_to_restart(self.config, &new, &changes);
        let (stopping, kept): (Vec<ProbeTask>, Vec<ProbeTask>) = std::mem::take(self.probes)
            .into_iter()
            .partition(|t| restart.contains(&t.probe));
        stop_probes(stopping).await;
        prober.forget_removed(&new);
        *self.probes = kept;
        self.probes.extend(spawn_probes_where(
            &new,
            prober,
            sample_tx,
            deploy_rx,
            |name| restart.contains(name),
        ));
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

/// Apply what the state watcher read: each color's deployment (a new one
/// starts clean, and its samples are stamped with it), baselines, pause and
/// cooldown (turned into monotonic deadlines as they are learned). Returns
/// the active color. No IO.
fn apply_seen(
    seen: Seen,
    engine: &mut Engine,
    deploy_tx: &watch::Sender<DeploymentIds>,
    guards: &mut Guards,
    previous: Option<Color>,
) -> Option<Color> {
    let ids = seen.deployments;
    // Resets a color whose deployment changed (a new release starts clean).
    engine.set_deployments(Color::ALL.map(|c| ids.get(&c).copied()));
    if let Some(b) = seen.baselines {
        engine.set_baselines((*b).clone());
    }
    deploy_tx.send_if_modified(|old| {
        let changed = *old != ids;
        *old = ids;
        changed
    });
    let (wall, now) = (now_ms(), Instant::now());
    guards.learn_pause(seen.pause, wall, now);
    guards.learn_cooldown(seen.cooldown_start_ms, wall, now);
    let color = seen.active;
    if color != previous && previous.is_some() {
        tracing::info!(
            rollbackd.color = color.map(Color::as_str).unwrap_or(""),
            "active color is now {}",
            color.map(Color::as_str).unwrap_or("unknown")
        );
    }
    color
}

/// For `degradation`: each probe's latency and error rate under the
/// previous deployment, over its last 30 minutes before the current one took
/// over: chosen by `matrix::baseline_sources`, as `replay` chooses them.
pub(crate) async fn baselines(
    config: &Config,
    store: &Store,
    ids: &DeploymentIds,
) -> Result<matrix::Baselines, DaemonError> {
    if !config
        .rules
        .iter()
        .any(|r| r.condition.signal == Signal::Degradation)
    {
        return Ok(matrix::Baselines::new());
    }
    let cutovers: Vec<matrix::Cutover> = store
        .deployments()
        .await?
        .iter()
        .map(matrix::Cutover::from)
        .collect();
    let sources = matrix::baseline_sources(&cutovers, ids);
    let mut samples = Vec::new();
    for src in &sources {
        samples.extend(
            store
                .samples(None, Some(src.previous.color), src.from_ms)
                .await?,
        );
    }
    Ok(matrix::baselines(&sources, &samples))
}

/// How often the `[entry]` is looked at for drift.
const ENTRY_PERIOD: Duration = Duration::from_secs(1);

/// Look at the `[entry]` every [`ENTRY_PERIOD`] and send what it serves,
/// until the configuration sender or the loop goes away.
async fn watch_entry(
    mut config: watch::Receiver<Option<crate::config::Entry>>,
    seen: mpsc::Sender<entry::Seen>,
) {
    let mut tick = tokio::time::interval(ENTRY_PERIOD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        let current = config.borrow_and_update().clone();
        tokio::select! {
            changed = config.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tick.tick(), if current.is_some() => {
                if let Some(e) = &current {
                    // A slow entry delays the next look, never the loop.
                    let look = tokio::select! {
                        s = entry::served(e) => s,
                        _ = config.changed() => continue,
                    };
                    if seen.send(look).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
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

/// Queue the verdicts that changed state for storage, and log the ones that
/// fired. Never waits: the work loop must not stall on a locked database
/// (its watchdog would stop pinging); a full queue drops, logged.
fn record_changes(verdict_tx: &mpsc::Sender<StoredVerdict>, verdicts: &[Verdict]) {
    for v in verdicts.iter().filter(|v| v.changed) {
        let stored = StoredVerdict {
            at_ms: v.at_ms,
            rule: v.rule.clone(),
            severity: v.severity,
            color: v.color,
            state: v.state,
            n: v.n as i64,
            value: v.value,
            threshold: v.threshold,
            window_ms: v.window_ms,
            baseline: v.baseline,
            detail: v.detail.clone(),
        };
        if verdict_tx.try_send(stored).is_err() {
            tracing::error!(
                rollbackd.rule = v.rule.as_str(),
                "verdict not recorded: the verdict queue is full (database too slow)"
            );
        }
        if v.state == State::Fired {
            tracing::warn!(
                rollbackd.color = v.color.as_str(),
                rollbackd.rule = v.rule.as_str(),
                rollbackd.severity = v.severity.as_str(),
                "rule fired on {}: {} ({})",
                v.color,
                v.rule,
                v.detail
            );
        }
    }
}

/// Store queued verdicts in order, retrying while the database is locked,
/// until the queue closes.
async fn write_verdicts(store: Store, mut rx: mpsc::Receiver<StoredVerdict>, health: Arc<Health>) {
    while let Some(v) = rx.recv().await {
        let mut backoff = Duration::from_millis(100);
        for attempt in 1..=5 {
            match store.insert_verdict(&v).await {
                Ok(()) => {
                    health.write_ok();
                    break;
                }
                Err(e) => {
                    health.write_failed(e.to_string());
                    if attempt == 5 {
                        tracing::error!(
                            rollbackd.rule = v.rule.as_str(),
                            "cannot record a verdict, giving up: {e}"
                        );
                    } else {
                        tokio::time::sleep(backoff).await;
                        backoff *= 2;
                    }
                }
            }
        }
    }
}

fn start_rollback(
    config: &Arc<Config>,
    store: &Store,
    prober: &Prober,
    hub: &notifier::Hub,
    verdict: &Verdict,
    since_ms: Option<i64>,
    guards: Guards,
) -> JoinHandle<Result<Outcome, RollbackError>> {
    let (config, store, prober, hub) = (config.clone(), store.clone(), prober.clone(), hub.clone());
    let request = Request {
        trigger: Trigger::Automatic,
        severity: verdict.severity,
        rule: Some(verdict.rule.clone()),
        reason: format!("{} on {}: {}", verdict.rule, verdict.color, verdict.detail),
        evidence: serde_json::to_value(verdict).unwrap_or_default(),
        since_ms,
    };
    tokio::spawn(async move {
        let ctx = rollback::Context {
            config: &config,
            store: &store,
            prober: &prober,
            notify: Some(&hub),
        };
        rollback::execute_guarded(&ctx, request, guards).await
    })
}

pub(crate) fn spawn_probes(
    config: &Arc<Config>,
    prober: &Prober,
    tx: &mpsc::Sender<Sample>,
    deployments: &watch::Receiver<DeploymentIds>,
) -> Vec<ProbeTask> {
    spawn_probes_where(config, prober, tx, deployments, |_| true)
}

/// Spawn the tasks of the probes `wanted` names.
fn spawn_probes_where(
    config: &Arc<Config>,
    prober: &Prober,
    tx: &mpsc::Sender<Sample>,
    deployments: &watch::Receiver<DeploymentIds>,
    wanted: impl Fn(&str) -> bool,
) -> Vec<ProbeTask> {
    // After a failure, confirm up to the streak the health rules need.
    let confirms = config.confirms();
    let mut tasks = Vec::new();
    for (index, probe) in config.probes.iter().enumerate() {
        if !wanted(&probe.name) {
            continue;
        }
        let colors: Vec<Option<Color>> = match (&probe.check, probe.scope) {
            // One log for both colors (each line names its upstream) is
            // followed once.
            (Check::AccessLog(a), _) if !a.file.contains("{color}") => vec![None],
            (_, Scope::PerColor) => Color::ALL.iter().copied().map(Some).collect(),
            (_, Scope::Shared) => vec![None],
        };
        for color in colors {
            let (stop, stop_rx) = watch::channel(false);
            let job = ProbeJob {
                config: config.clone(),
                index,
                color,
                prober: prober.clone(),
                tx: tx.clone(),
                deployments: deployments.clone(),
                confirms,
            };
            tasks.push(ProbeTask {
                probe: probe.name.clone(),
                stop,
                handle: tokio::spawn(job.run(stop_rx)),
            });
        }
    }
    tasks
}

pub(crate) async fn stop_probes(tasks: Vec<ProbeTask>) {
    for t in &tasks {
        let _ = t.stop.send(true);
    }
    for t in tasks {
        if let Err(e) = t.handle.await {
            tracing::error!("probe task panicked: {e}");
        }
    }
}

struct ProbeJob {
    config: Arc<Config>,
    index: usize,
    color: Option<Color>,
    prober: Prober,
    tx: mpsc::Sender<Sample>,
    deployments: watch::Receiver<DeploymentIds>,
    confirms: u32,
}

impl ProbeJob {
    /// Probe on the probe's cadence (see `probe::schedule`), stamping each
    /// outcome with time and the color's deployment. An access log is
    /// followed instead: a sample per request, as its line lands.
    async fn run(self, stop: watch::Receiver<bool>) {
        let probe = &self.config.probes[self.index];
        if let Check::AccessLog(check) = &probe.check {
            let (tx, deployments) = (&self.tx, &self.deployments);
            access_log::follow(
                &probe.name,
                check,
                &self.config.colors,
                self.color,
                probe.interval,
                move |color, outcome| {
                    let deployment = deployments.borrow().get(&color).copied();
                    let sample =
                        outcome.into_sample(now_ms(), &probe.name, Some(color), deployment);
                    async move { tx.send(sample).await.is_ok() }
                },
                stop,
            )
            .await;
            return;
        }
        let cadence = Cadence::for_probe(probe, self.confirms);
        let (config, prober, color) = (&self.config, &self.prober, self.color);
        let (tx, deployments) = (&self.tx, &self.deployments);
        schedule::drive(
            cadence,
            move || prober.run(config, probe, color),
            move |outcome| {
                let deployment = color.and_then(|c| deployments.borrow().get(&c).copied());
                let sample = outcome.into_sample(now_ms(), &probe.name, color, deployment);
                async move { tx.send(sample).await.is_ok() }
            },
            stop,
        )
        .await;
    }
}

#[cfg(test)]
mod retry_tests {
    use super::*;

    #[test]
    fn refusals_back_off_to_fifteen_minutes() {
        let minutes: Vec<u64> = (1..=6).map(|n| retry_delay(n).as_secs() / 60).collect();
        assert_eq!(minutes, [1, 2, 4, 8, 15, 15]);
    }
}

#[cfg(test)]
mod loop_tests {
    /// The invariant "the work loop never awaits the database", held by its
    /// text: every await on the loop's path is one of these (a channel, a
    /// task, a file watch, the reload), and the loop calls no store method.
    /// A new await here must not reach the database: give the read to
    /// `state_watch` (or a task of its own) and add it to the list.
    #[test]
    fn the_work_loop_awaits_no_database() {
        let src = include_str!("mod.rs");
        let start = src.find("\n    loop {\n").expect("the work loop");
        let end = start
            + src[start..]
                .find("\n    systemd::stopping();")
                .expect("the loop's end");
        let body = &src[start..end];
        let allowed = [
            "if writer_tx.send(sample).await.is_err() {",
            "Some(task) => task.await,",
            "None => std::future::pending().await,",
            "Some(w) => w.changed().await,",
            // `Live::reload`: parses the file, restarts probes, no SQL.
            ".await;",
        ];
        let awaits: Vec<&str> = body
            .lines()
            .map(str::trim)
            .filter(|l| l.contains(".await"))
            .collect();
        assert_eq!(awaits.len(), 6, "{awaits:#?}");
        for line in awaits {
            assert!(allowed.contains(&line), "the work loop awaits: {line}");
        }
        assert!(!body.contains("store."), "the work loop calls the store");
        assert!(
            !body.contains("refresh_active") && !body.contains("bake::check"),
            "the work loop reads the database"
        );
    }
}

#[cfg(test)]
mod broken_rollback_tests {
    use super::*;
    use crate::model::Severity;
    use crate::rollback::{PANIC_FAULT, Trigger};

    fn request(reason: &str) -> Request {
        Request {
            trigger: Trigger::Automatic,
            severity: Severity::Critical,
            rule: Some("critical: health_failures >= 3 over 10m".into()),
            reason: reason.into(),
            evidence: serde_json::json!({}),
            since_ms: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicked_rollback_closes_its_incident_frees_the_slot_and_retries_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rollbackd.toml");
        let text = r#"
[daemon]
state_dir = "state"
listen = "off"
[service]
name = "t"
[colors.blue]
base_url = "http://127.0.0.1:9"
[colors.green]
base_url = "http://127.0.0.1:9"
[[probe]]
name = "healthz"
kind = "http"
path = "/healthz"
interval = "1s"
timeout = "500ms"
health = true
[rollback]
command = ["/bin/true"]
verify_target = false
verify_after = "1s"
"#;
        std::fs::write(&path, text).unwrap();
        let config = Arc::new(Config::load(&path).unwrap());
        let store = Store::open_dir(&config.daemon.state_dir).await.unwrap();
        let now = now_ms();
        store
            .record_deployment(Color::Green, "v1", "cli", now - 2000)
            .await
            .unwrap();
        store
            .record_deployment(Color::Blue, "v2", "cli", now - 1000)
            .await
            .unwrap();
        let prober = Prober::new();

        // The task dies with its incident open and the slot held.
        let task = {
            let (config, store, prober) = (config.clone(), store.clone(), prober.clone());
            tokio::spawn(async move {
                let ctx = rollback::Context {
                    config: &config,
                    store: &store,
                    prober: &prober,
                    notify: None,
                };
                rollback::execute(&ctx, request(&format!("bad {PANIC_FAULT}"))).await
            })
        };
        let panicked = task.await.unwrap_err();
        assert!(panicked.is_panic());
        let open = store.in_flight_incident().await.unwrap().unwrap();
        assert_eq!(open.state, crate::model::IncidentState::Requested);

        let mut refusals = 0;
        let (delay, closing) = after_broken_rollback(
            &config,
            &store,
            &prober,
            None,
            panicked.to_string(),
            &mut refusals,
        );
        closing.await.unwrap();
        // Retried like a refusal: after a minute, then backing off.
        assert_eq!((delay, refusals), (RETRY_AFTER, 1));
        assert_eq!(store.in_flight_incident().await.unwrap(), None);
        let closed = store.incident(open.id).await.unwrap();
        assert_eq!(closed.state, crate::model::IncidentState::Failed);
        let outcome = closed.outcome.unwrap_or_default();
        assert!(
            outcome.contains("the rollback task stopped")
                && outcome.contains("nothing was switched"),
            "{outcome}"
        );
        // The slot is free: the next attempt runs its switch (green, on a
        // closed port, then fails its verification: escalated).
        let ctx = rollback::Context {
            config: &config,
            store: &store,
            prober: &prober,
            notify: None,
        };
        let next = rollback::execute(&ctx, request("blue fails again"))
            .await
            .unwrap();
        assert!(
            matches!(&next, Outcome::Escalated { incident, .. } if *incident != open.id),
            "{next:?}"
        );
    }
}
