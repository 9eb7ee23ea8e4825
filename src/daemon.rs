//! The daemon: schedule -> probe -> store -> decide -> act.
//!
//! [`run`] owns every task it starts and awaits them all before it returns:
//! one task per (probe, color) sends [`Sample`]s to the work loop; the work
//! loop feeds the matrix, forwards samples to the batching writer, evaluates
//! verdicts, starts at most one rollback task, pings the systemd watchdog
//! (so a stuck loop stops pinging) and handles [`Control`] messages. The
//! caller passes the control channel: `main` connects signals to it, tests a
//! plain sender.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::active;
use crate::config::{Config, ConfigError, Scope, consecutive_needed};
use crate::matrix::{self, Decision, Engine, State, Verdict};
use crate::model::{Color, Sample, Signal, duration_ms, now_ms};
use crate::notifier;
use crate::probe::Prober;
use crate::probe::schedule::{self, Cadence};
use crate::retention;
use crate::rollback::{self, Outcome, Request, RollbackError, Trigger};
use crate::signals::Control;
use crate::store::{Store, StoreError, StoredVerdict};
use crate::systemd;
use crate::writer::write_samples;

/// How often the latest deployment's bake is checked.
const BAKE_CHECK_PERIOD: Duration = Duration::from_secs(1);
/// How often verdicts are evaluated.
const EVAL_PERIOD: Duration = Duration::from_millis(250);
/// While a rollback-worthy rule stays fired but the rollback was skipped or
/// refused, how long before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(60);

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
}

/// The latest deployment id of each color: samples are stamped with it.
pub(crate) type DeploymentIds = HashMap<Color, i64>;

pub(crate) struct ProbeTask {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

/// Run until a [`Control::Shutdown`] arrives (or the channel closes).
pub async fn run(config: Config, mut control: mpsc::Receiver<Control>) -> Result<(), DaemonError> {
    let mut config = Arc::new(config);
    let store = Store::open_dir(&config.daemon.state_dir).await?;
    let prober = Prober::new();
    // Notifications: a queue and its worker; sending never waits.
    let notify_policy = notifier::Policy::default();
    let (hub, notify_worker) = notifier::Hub::start(notify_policy);
    let mut recoveries = notifier::Recoveries::default();
    let mut holds = rollback::HoldLog::default();
    let mut active_watch = active::Watch::new(&config);
    let mut rollback_verdict: Option<Verdict> = None;

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
            tracing::warn!("reconciled interrupted rollback: {outcome:?}");
        }
    }

    let mut engine = Engine::new(&config);
    rebuild_windows(&mut engine, &config, &store).await?;

    let (deploy_tx, deploy_rx) = watch::channel(DeploymentIds::new());
    let mut active = refresh_active(&config, &store, &deploy_tx, &mut engine, None).await?;

    let (writer_tx, writer_rx) = mpsc::channel::<Sample>(8192);
    let writer = tokio::spawn(write_samples(store.clone(), writer_rx));
    // Retention: dropping the sender stops it; a reload sends the new value.
    let (retention_tx, retention_rx) = watch::channel(config.daemon.retention);
    let maintenance = tokio::spawn(retention::maintain(store.clone(), retention_rx));
    let (sample_tx, mut sample_rx) = mpsc::channel::<Sample>(4096);
    let mut probes = spawn_probes(&config, &prober, &sample_tx, &deploy_rx);

    let mut eval = tokio::time::interval(EVAL_PERIOD);
    eval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let watchdog_period = systemd::watchdog_period();
    let mut watchdog = tokio::time::interval(watchdog_period.unwrap_or(Duration::from_secs(3600)));
    watchdog.set_missed_tick_behavior(MissedTickBehavior::Skip);

    let mut rollback_task: Option<JoinHandle<Result<Outcome, RollbackError>>> = None;
    let mut next_attempt: Option<Instant> = None;
    let mut last_status = String::new();
    let mut last_bake_check = Instant::now();

    systemd::ready(&status_line(active, &[]));
    tracing::info!(
        probes = config.probes.len(),
        rules = config.rules.len(),
        active = active.map(Color::as_str).unwrap_or("unknown"),
        "rollbackd running"
    );

    loop {
        tokio::select! {
            Some(sample) = sample_rx.recv() => {
                engine.observe(&sample);
                if writer_tx.send(sample).await.is_err() {
                    tracing::error!("the sample writer stopped; samples are no longer stored");
                }
            }
            _ = eval.tick() => {
                active = refresh_active(&config, &store, &deploy_tx, &mut engine, active).await.unwrap_or_else(|e| {
                    tracing::error!("cannot read the active color: {e}");
                    active
                });
                let now = now_ms();
                if last_bake_check.elapsed() >= BAKE_CHECK_PERIOD {
                    last_bake_check = Instant::now();
                    if let Err(e) = crate::bake::check(&config, &store, &hub).await {
                        tracing::error!("cannot check the bake of the latest deployment: {e}");
                    }
                }
                let mut verdicts = engine.evaluate(now, Color::Blue);
                verdicts.extend(engine.evaluate(now, Color::Green));
                match engine.take_blind_change() {
                    Some(true) => tracing::error!("alert: {}", matrix::BLIND_REASON),
                    Some(false) => tracing::warn!("a probe answers again: the watchdog can see, verdicts resume"),
                    None => {}
                }
                record_changes(&store, &verdicts).await;
                for notice in recoveries.cleared(&config.service, &verdicts) {
                    hub.send(&config.notify, notice);
                }
                if holds.check(&store).await {
                    // A hold just ended: a rollback it held back goes now.
                    next_attempt = Some(Instant::now());
                }
                let status = status_line(active, &verdicts);
                if status != last_status {
                    systemd::status(&status);
                    last_status = status;
                }
                let Some(active_color) = active else { continue };
                for decision in matrix::decide(&verdicts, active_color, &config.actions) {
                    match decision {
                        Decision::Rollback(v) => {
                            let due = v.changed || next_attempt.is_some_and(|t| Instant::now() >= t);
                            if rollback_task.is_none() && due {
                                let since = engine.failing_since(active_color);
                                recoveries.notified(&v);
                                rollback_verdict = Some(v.clone());
                                rollback_task = Some(start_rollback(&config, &store, &prober, &hub, &v, since));
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
                        tracing::info!("rollback finished: {outcome:?}");
                        if let (Outcome::Skipped { why }, Some(v)) = (&outcome, rollback_verdict.take()) {
                            if let Some(notice) = recoveries.held(&config.service, &v, why) {
                                hub.send(&config.notify, notice);
                            }
                        }
                        if matches!(outcome, Outcome::Skipped { .. } | Outcome::Refused { .. }) {
                            next_attempt = Some(Instant::now() + RETRY_AFTER);
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::error!("rollback stopped on an error: {e}");
                        next_attempt = Some(Instant::now() + RETRY_AFTER);
                    }
                    Err(e) => tracing::error!("rollback task panicked: {e}"),
                }
                active = refresh_active(&config, &store, &deploy_tx, &mut engine, active).await.unwrap_or(active);
            }
            _ = active_watch.changed() => {
                active = refresh_active(&config, &store, &deploy_tx, &mut engine, active).await.unwrap_or_else(|e| {
                    tracing::error!("cannot read the active color: {e}");
                    active
                });
            }
            _ = watchdog.tick(), if watchdog_period.is_some() => systemd::watchdog(),
            message = control.recv() => match message {
                Some(Control::Reload) => {
                    systemd::reloading();
                    match Config::load(&config.path) {
                        Ok(new) => {
                            tracing::info!("configuration reloaded from {}", new.path.display());
                            engine.reconfigure(&new);
                            config = Arc::new(new);
                            retention_tx.send_replace(config.daemon.retention);
                            prober.forget_removed(&config);
                            stop_probes(std::mem::take(&mut probes)).await;
                            probes = spawn_probes(&config, &prober, &sample_tx, &deploy_rx);
                        }
                        Err(e) => tracing::error!("reload failed, keeping the running configuration: {e}"),
                    }
                    systemd::ready(&last_status);
                }
                Some(Control::Shutdown) | None => break,
            },
        }
    }

    systemd::stopping();
    tracing::info!("stopping: probes first, then samples are flushed");
    stop_probes(probes).await;
    drop(sample_tx);
    while let Some(sample) = sample_rx.recv().await {
        let _ = writer_tx.send(sample).await;
    }
    drop(writer_tx);
    if let Some(task) = rollback_task {
        // Never abandon a rollback half-way: its every step is bounded by
        // the rollback timeout and verify_after, so this wait is too.
        tracing::warn!("waiting for the rollback in flight to finish before exiting");
        match task.await {
            Ok(Ok(outcome)) => tracing::info!("rollback finished: {outcome:?}"),
            Ok(Err(e)) => tracing::error!("rollback stopped on an error: {e}"),
            Err(e) => tracing::error!("rollback task panicked: {e}"),
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
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

fn status_line(active: Option<Color>, verdicts: &[Verdict]) -> String {
    let active = active.map(Color::as_str).unwrap_or("unknown");
    match matrix::worst(verdicts) {
        Some(v) => format!(
            "active {active}; worst: {} fired on {} ({})",
            v.severity, v.color, v.rule
        ),
        None => format!("active {active}; no rule fired"),
    }
}

/// Re-read the active color; on a new deployment of a color, forget that
/// color's windows (a new release starts clean) and load baselines.
async fn refresh_active(
    config: &Config,
    store: &Store,
    deploy_tx: &watch::Sender<DeploymentIds>,
    engine: &mut Engine,
    previous: Option<Color>,
) -> Result<Option<Color>, DaemonError> {
    let current = active::current(config, store).await?;
    let mut ids = DeploymentIds::new();
    for d in store.deployments().await? {
        ids.insert(d.color, d.id);
    }
    let old = deploy_tx.borrow().clone();
    if ids != old {
        for color in Color::ALL {
            if old.contains_key(&color) && ids.get(&color) != old.get(&color) {
                engine.reset_color(color);
            }
        }
        engine.set_baselines(baselines(config, store, &ids).await?);
        deploy_tx.send_replace(ids);
    }
    let color = current.map(|(c, _)| c);
    if color != previous && previous.is_some() {
        tracing::info!(
            rollbackd.color = color.map(Color::as_str).unwrap_or(""),
            "active color is now {:?}",
            color
        );
    }
    Ok(color)
}

/// For `degradation`: each probe's latency and error rate under the
/// previous deployment, over its last 30 minutes before the current one took
/// over (the arithmetic is `matrix::Baseline::from_samples`).
async fn baselines(
    config: &Config,
    store: &Store,
    ids: &DeploymentIds,
) -> Result<matrix::Baselines, DaemonError> {
    let mut out = matrix::Baselines::new();
    if !config
        .rules
        .iter()
        .any(|r| r.condition.signal == Signal::Degradation)
    {
        return Ok(out);
    }
    let deployments = store.deployments().await?;
    for color in Color::ALL {
        let Some(current) = ids
            .get(&color)
            .and_then(|id| deployments.iter().find(|d| d.id == *id))
        else {
            continue;
        };
        let Some(previous) = deployments.iter().rev().find(|d| d.id < current.id) else {
            continue;
        };
        let mut by_probe: HashMap<String, Vec<Sample>> = HashMap::new();
        for sample in store
            .samples(None, Some(previous.color), current.at_ms - 30 * 60 * 1000)
            .await?
        {
            if sample.at_ms < current.at_ms && sample.deployment == Some(previous.id) {
                by_probe
                    .entry(sample.probe.clone())
                    .or_default()
                    .push(sample);
            }
        }
        out.extend(
            by_probe
                .into_iter()
                .map(|(probe, samples)| ((probe, color), matrix::Baseline::from_samples(&samples))),
        );
    }
    Ok(out)
}

/// After a restart, the windows come back from the stored samples.
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

async fn record_changes(store: &Store, verdicts: &[Verdict]) {
    for v in verdicts.iter().filter(|v| v.changed) {
        let stored = StoredVerdict {
            at_ms: v.at_ms,
            rule: v.rule.clone(),
            severity: v.severity,
            color: v.color,
            state: v.state.as_str().to_owned(),
            n: v.n as i64,
            value: v.value,
            threshold: v.threshold,
            window_ms: v.window_ms,
            baseline: v.baseline,
            detail: v.detail.clone(),
        };
        if let Err(e) = store.insert_verdict(&stored).await {
            tracing::error!("cannot record a verdict: {e}");
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

fn start_rollback(
    config: &Arc<Config>,
    store: &Store,
    prober: &Prober,
    hub: &notifier::Hub,
    verdict: &Verdict,
    since_ms: Option<i64>,
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
        rollback::execute(&ctx, request).await
    })
}

pub(crate) fn spawn_probes(
    config: &Arc<Config>,
    prober: &Prober,
    tx: &mpsc::Sender<Sample>,
    deployments: &watch::Receiver<DeploymentIds>,
) -> Vec<ProbeTask> {
    // After a failure, confirm up to the streak the health rules need.
    let confirms = config
        .rules
        .iter()
        .filter(|r| r.condition.signal == Signal::HealthFailures)
        .map(|r| consecutive_needed(&r.condition).saturating_sub(1))
        .max()
        .unwrap_or(2);
    let mut tasks = Vec::new();
    for (index, probe) in config.probes.iter().enumerate() {
        let colors: Vec<Option<Color>> = match probe.scope {
            Scope::PerColor => Color::ALL.iter().copied().map(Some).collect(),
            Scope::Shared => vec![None],
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
    /// outcome with time and the color's deployment.
    async fn run(self, stop: watch::Receiver<bool>) {
        let probe = &self.config.probes[self.index];
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
