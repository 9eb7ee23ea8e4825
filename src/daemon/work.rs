//! The work loop: one task that feeds the matrix and acts on its verdicts.
//!
//! [`Work::run`] waits on everything that can change a verdict or the
//! daemon: samples from the probe fleet (judged as they land, then passed
//! to the sample writer), the state watcher's [`Seen`] and the active color
//! it publishes, the time the matrix says a verdict next changes, the end
//! of a rollback task, the `[entry]` watch, the config file watch, the
//! systemd watchdog's tick and the [`Control`] channel. Each event has its
//! own method, and none of them awaits the database: reads arrive as
//! messages or published values, writes leave through channels
//! (`writer`), the rollback runs in a task of its own (`autorollback`).
//! The loop is the only place that pings the watchdog, so a loop that is
//! stuck stops the pings.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::{Check, Config};
use crate::daemon::autorollback::{AutoRollback, TaskResult};
use crate::daemon::clock::{self, Clock};
use crate::daemon::entry_watch::EntryWatch;
use crate::daemon::fleet::{DeploymentIds, Fleet};
use crate::daemon::http::{AppState, ReloadInfo, Server, Snapshot};
use crate::daemon::metrics::Metrics;
use crate::daemon::reload::ConfigWatcher;
use crate::daemon::signals::Control;
use crate::daemon::state_watch::{self, Active, Seen};
use crate::daemon::{Live, snapshot, status_line, systemd, writer};
use crate::matrix::{self, Decision, Engine};
use crate::model::{Color, Sample, Severity, now_ms};
use crate::notifier::{self, Hub, Recoveries};
use crate::probe::Transitions;
use crate::rollback::Guards;
use crate::store::StoredVerdict;

/// How often the loop checks its own clock for a gap, a pause that ran out
/// and a retry that fell due (verdicts do not wait for it: a sample is
/// judged as it lands, a time-based change when the matrix says it falls
/// due). It reads no database: `state_watch` does, beside it.
pub const HOUSEKEEPING_PERIOD: Duration = matrix::EVAL_PERIOD;

/// The most samples already queued that the loop takes along with the one
/// it woke for, before it judges: the probes of one beat land together and
/// are judged once, not once each.
const SAMPLE_BURST: usize = 512;

/// The loop's state and the parts it drives; `run` (in `mod.rs`) builds it.
pub(super) struct Work {
    pub(super) config: Arc<Config>,
    pub(super) engine: Engine,
    /// Pause and cooldown, on the monotonic clock.
    pub(super) guards: Guards,
    pub(super) active: Active,
    pub(super) deployments: watch::Sender<DeploymentIds>,
    pub(super) auto: AutoRollback,
    pub(super) recoveries: Recoveries,
    pub(super) hub: Hub,
    pub(super) metrics: Arc<Metrics>,
    pub(super) app: AppState,
    pub(super) snapshot: watch::Sender<Snapshot>,
    pub(super) started_ms: i64,
    pub(super) state: state_watch::Handle,
    pub(super) entry: EntryWatch,
    pub(super) fleet: Fleet,
    pub(super) samples: mpsc::Receiver<Sample>,
    pub(super) writer_tx: mpsc::Sender<Sample>,
    pub(super) writer: JoinHandle<u64>,
    pub(super) verdict_tx: mpsc::Sender<StoredVerdict>,
    pub(super) verdict_writer: JoinHandle<()>,
    pub(super) retention: watch::Sender<Duration>,
    pub(super) http: Option<Server>,
    pub(super) watcher: Option<ConfigWatcher>,
    /// Durations on the monotonic clock: the matrix is handed this clock's
    /// times, never the wall clock's.
    pub(super) clock: Clock,
    /// When the loop will judge next: as a sample lands, when the matrix's
    /// next time-based change falls due, else not at all; at the pace
    /// `matrix::Pace` allows (as `replay`).
    pub(super) pace: matrix::Pace,
    pub(super) next_eval: Option<Instant>,
    pub(super) transitions: Transitions,
    pub(super) last_status: String,
    pub(super) last_reload: Option<ReloadInfo>,
}

impl Work {
    /// Run until a [`Control::Shutdown`] arrives (or the channel closes),
    /// then stop what the loop drives, in order: probes first, then the
    /// samples are flushed, the rollback in flight is waited for.
    pub(super) async fn run(mut self, mut control: mpsc::Receiver<Control>) {
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_PERIOD);
        housekeeping.set_missed_tick_behavior(MissedTickBehavior::Skip);
        // The watchdog is pinged from this loop and only from it: while the
        // loop is stuck (an await that never returns, a blocked thread), the
        // pings stop and systemd restarts the daemon.
        let watchdog_period = systemd::watchdog_period();
        let mut watchdog =
            tokio::time::interval(watchdog_period.unwrap_or(Duration::from_secs(3600)));
        watchdog.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut reload_now = false;
        loop {
            // Only time spent waiting here can be a gap in the daemon's
            // running; its own work in the previous turn is not.
            self.clock.settle(Instant::now(), clock::boottime());
            tokio::select! {
                Some(sample) = self.samples.recv() => {
                    self.take(sample).await;
                    for _ in 0..SAMPLE_BURST {
                        let Ok(sample) = self.samples.try_recv() else { break };
                        self.take(sample).await;
                    }
                }
                _ = housekeeping.tick() => self.housekeeping(),
                Some(seen) = self.state.seen.recv() => self.seen(seen),
                Ok(()) = self.active.changed() => self.active_changed(),
                _ = sleep_until(self.next_eval), if self.next_eval.is_some() => self.judge(),
                result = self.auto.finished(), if self.auto.in_flight() => self.rollback_ended(result),
                Some(look) = self.entry.looks.recv() => {
                    let active = *self.active.borrow();
                    let rolling = self.auto.in_flight();
                    self.entry.seen(look, active, rolling, &self.config, &self.hub);
                }
                _ = watchdog.tick(), if watchdog_period.is_some() => systemd::watchdog(),
                _ = async {
                    match self.watcher.as_mut() {
                        Some(w) => w.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    tracing::info!("{} changed on disk: reloading", self.config.path.display());
                    reload_now = true;
                }
                message = control.recv() => match message {
                    Some(Control::Reload) => {
                        // A burst of SIGHUPs is one reload: it reads the file
                        // as it is now. A shutdown queued behind them wins.
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
            // SIGHUP and a file change reload the same way, outside the
            // select so the reload holds the loop's state mutably.
            if std::mem::take(&mut reload_now) {
                self.reload().await;
            }
        }
        self.stop().await;
    }

    /// A sample landed: into the matrix and on to the writer.
    async fn take(&mut self, sample: Sample) {
        self.sample(&sample);
        if self.writer_tx.send(sample).await.is_err() {
            tracing::error!("the sample writer stopped; samples are no longer stored");
        }
    }

    /// A sample landed: into the matrix, judged as it lands (SPEC:
    /// decisions are taken as the evidence lands), as `replay` does: now,
    /// unless a flood of samples already used the pace's burst.
    fn sample(&mut self, sample: &Sample) {
        let arrived = Instant::now();
        self.noticed_gap(arrived);
        // One request is not news: an access log's failing requests speak
        // through the rules, not a log line per change.
        let per_request = self
            .config
            .probe(&sample.probe)
            .is_some_and(|p| matches!(p.check, Check::AccessLog(_)));
        if !per_request {
            self.transitions.note(sample);
        }
        let at = self.clock.sample_ms(sample.at_ms, now_ms(), arrived);
        self.engine.observe_at(sample, at);
        let want = self
            .clock
            .instant_of(self.pace.earliest(self.clock.ms(arrived)), arrived);
        if self.next_eval.is_none_or(|t| want < t) {
            self.next_eval = Some(want);
        }
        self.metrics.observe_sample(sample);
    }

    fn housekeeping(&mut self) {
        debug_stall();
        let now = Instant::now();
        self.noticed_gap(now);
        // The loop is alive even when nothing needs judging.
        self.snapshot
            .send_modify(|s| s.at = std::time::Instant::now());
        self.holds_and_retries(now);
    }

    /// A hold that just ended lets what it held back go now; a retry due
    /// is judged now.
    fn holds_and_retries(&mut self, now: Instant) {
        // Both asked every time: each remembers what it last said.
        let lead_gained = self.auto.lead_gained();
        if self.guards.take_ended(now) || lead_gained {
            self.auto.hold_ended(now);
        }
        if self.auto.retry_due(now) {
            self.judge_now(now);
        }
    }

    fn judge_now(&mut self, now: Instant) {
        self.next_eval = Some(self.next_eval.map_or(now, |t| t.min(now)));
    }

    /// The state watcher read something new.
    fn seen(&mut self, seen: Seen) {
        apply_seen(seen, &mut self.engine, &self.deployments, &mut self.guards);
        self.holds_and_retries(Instant::now());
    }

    /// The active color to judge, with every `Seen` read before it applied
    /// first: the watcher queues a `Seen` before it publishes the color
    /// read with it, so a cutover's new deployment (which resets the color)
    /// is in the engine before the color it made active is judged, however
    /// `select!` ordered the two. Never waits.
    fn active_now(&mut self) -> Option<Color> {
        while let Ok(seen) = self.state.seen.try_recv() {
            self.seen(seen);
        }
        *self.active.borrow()
    }

    /// The state watcher published a new active color: judged now.
    fn active_changed(&mut self) {
        let color = *self.active.borrow_and_update();
        tracing::info!(
            rollbackd.color = color.map(Color::as_str).unwrap_or(""),
            "active color is now {}",
            color.map(Color::as_str).unwrap_or("unknown")
        );
        self.judge_now(Instant::now());
    }

    /// Judge every rule, record and publish what changed, and act on the
    /// decisions for the active color.
    fn judge(&mut self) {
        let now = Instant::now();
        let active = self.active_now();
        // After a gap, rules are inconclusive until fresh samples land.
        self.noticed_gap(now);
        self.pace.judged(self.clock.ms(now));
        let mut verdicts = self.engine.judge(self.clock.ms(now));
        // Stored and shown on the wall clock.
        let wall = now_ms();
        for v in &mut verdicts {
            v.at_ms = wall;
        }
        self.next_eval = self
            .engine
            .next_due()
            .map(|due| self.clock.instant_of(self.pace.earliest(due), now));
        self.blindness();
        writer::queue_verdicts(&self.verdict_tx, &verdicts);
        self.metrics.set_verdicts(&verdicts);
        self.metrics.set_active(active);
        for notice in self.recoveries.cleared(&self.config.service, &verdicts) {
            self.hub.send(&self.config.notify, notice);
        }
        let status = status_line(active, &verdicts, &self.last_reload);
        if status != self.last_status {
            systemd::status(&status);
            self.last_status = status;
        }
        self.snapshot.send_replace(snapshot(
            &self.config,
            self.started_ms,
            active,
            self.last_status.clone(),
            &verdicts,
            self.auto.in_flight(),
            &self.last_reload,
        ));
        let Some(active) = active else { return };
        for decision in matrix::decide(&verdicts, active, &self.config.actions) {
            match decision {
                Decision::Rollback(v) => {
                    // When this color's failure streak began: the matrix
                    // knows, from the samples it judged.
                    let since = self.engine.failing_since(active);
                    self.auto.consider(
                        &self.config,
                        &v,
                        active,
                        since,
                        &self.guards,
                        &mut self.recoveries,
                        Instant::now(),
                    );
                }
                Decision::Alert(v) if v.changed => {
                    tracing::warn!(
                        rollbackd.color = v.color.as_str(),
                        rollbackd.rule = v.rule.as_str(),
                        rollbackd.severity = v.severity.as_str(),
                        "alert: {} on {}: {}",
                        v.rule,
                        v.color,
                        v.detail
                    );
                    let notice = self.recoveries.alert(&self.config.service, &v);
                    self.hub.send(&self.config.notify, notice);
                }
                Decision::Log(v) if v.changed => tracing::info!(
                    rollbackd.color = v.color.as_str(),
                    rollbackd.rule = v.rule.as_str(),
                    rollbackd.severity = v.severity.as_str(),
                    "{} on {}: {}",
                    v.rule,
                    v.color,
                    v.detail
                ),
                _ => {}
            }
        }
    }

    /// The watchdog went blind (nothing answers) or sees again: one alert,
    /// one line.
    fn blindness(&mut self) {
        match self.engine.take_blind_change() {
            Some(true) => {
                let tried = blind_tried(&self.config, &self.engine);
                tracing::error!("alert: {}; tried: {tried}", matrix::BLIND_REASON);
                let mut notice = notifier::Notice::new(
                    notifier::Event::Alert,
                    Severity::High,
                    &self.config.service,
                    "the watchdog may be blind: nothing answered".to_owned(),
                );
                notice.detail = format!("{}; tried: {tried}", matrix::BLIND_REASON);
                self.hub.send(&self.config.notify, notice);
            }
            Some(false) => {
                tracing::warn!("a probe answers again: the watchdog can see, verdicts resume")
            }
            None => {}
        }
    }

    /// The rollback task ended: settle it; the active color may have
    /// changed, so the watcher reads it now, and the loop judges now.
    fn rollback_ended(&mut self, result: TaskResult) {
        self.auto.settle(&self.config, result, &mut self.recoveries);
        self.state.look_now();
        self.next_eval = Some(Instant::now());
    }

    /// Reload the configuration (SIGHUP or the file changed): see
    /// [`Live::reload`].
    async fn reload(&mut self) {
        let mut live = Live {
            config: &mut self.config,
            engine: &mut self.engine,
            fleet: &mut self.fleet,
            http: &mut self.http,
            watcher: &mut self.watcher,
            retention: &self.retention,
        };
        let info = live.reload(&self.app, &self.last_status).await;
        self.metrics.reload(info.ok);
        if info.ok {
            self.metrics.configure(&self.config);
            // Its `[active] file`, and baselines for its rules.
            self.state.reconfigure(&self.config);
        }
        self.entry.reconfigure(&self.config);
        self.last_reload = Some(info);
        publish_reload(&self.snapshot, &self.config, &self.last_reload);
        // New rules are judged at once.
        self.next_eval = Some(Instant::now());
    }

    /// Check the loop's own clock at a turn: after a gap in the daemon's
    /// running (frozen, suspended, starved), every `for` hold restarts and
    /// the rules wait for fresh samples (`Engine::gap`), and the loop judges
    /// at once so verdicts show it.
    fn noticed_gap(&mut self, now: Instant) {
        let Some(gap) = self.clock.wake(now, clock::boottime()) else {
            return;
        };
        tracing::warn!(
            "the watchdog was not running for {} (frozen, suspended or starved): every `for` hold restarts and rules wait for fresh samples",
            humantime::format_duration(Duration::from_millis(gap.as_millis() as u64))
        );
        self.engine.gap(self.clock.ms(now), gap.as_millis() as i64);
        self.next_eval = Some(now);
    }

    /// Stop what the loop drives, in order.
    async fn stop(mut self) {
        systemd::stopping();
        let in_flight = self.auto.in_flight();
        self.snapshot.send_modify(|s| {
            s.stopping = true;
            s.rollback_in_flight = in_flight;
        });
        tracing::info!("stopping: probes first, then samples are flushed");
        drop(self.watcher);
        self.state.stop().await;
        self.fleet.stop().await;
        while let Some(sample) = self.samples.recv().await {
            self.metrics.observe_sample(&sample);
            let _ = self.writer_tx.send(sample).await;
        }
        drop(self.writer_tx);
        self.entry.stop().await;
        self.auto.stop(&self.config).await;
        match self.writer.await {
            Ok(0) => {}
            Ok(dropped) => tracing::error!(
                dropped,
                "samples were dropped because the database refused writes"
            ),
            Err(e) => tracing::error!("sample writer panicked: {e}"),
        }
        if let Some(server) = self.http {
            server.stop().await;
        }
        drop(self.verdict_tx);
        if let Err(e) = self.verdict_writer.await {
            tracing::error!("verdict writer panicked: {e}");
        }
    }
}

/// Apply what the state watcher read: each color's deployment (a new one
/// starts clean, and its samples are stamped with it), baselines, pause and
/// cooldown (turned into monotonic deadlines as they are learned). No IO.
pub(super) fn apply_seen(
    seen: Seen,
    engine: &mut Engine,
    deployments: &watch::Sender<DeploymentIds>,
    guards: &mut Guards,
) {
    let ids = seen.deployments;
    // Resets a color whose deployment changed (a new release starts clean).
    engine.set_deployments(Color::ALL.map(|c| ids.get(&c).copied()));
    if let Some(b) = seen.baselines {
        engine.set_baselines((*b).clone());
    }
    deployments.send_if_modified(|old| {
        let changed = *old != ids;
        *old = ids;
        changed
    });
    let (wall, now) = (now_ms(), Instant::now());
    guards.learn_pause(seen.pause, wall, now);
    guards.learn_cooldown(seen.cooldown_start_ms, wall, now);
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

/// Sleep until `at` (never, for `None`: the branch is disabled then).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

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

/// What the blind watchdog tried, for its alert: each probe and color that
/// got no answer, its target and its error.
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
