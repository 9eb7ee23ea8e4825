//! The guarded switch, as a state machine persisted in SQLite at every step:
//!
//! ```text
//! requested -> target_verified -> switching -> switched -> verified
//!          \-> refused        \-> failed              \-> escalated
//! ```
//!
//! Each transition is written (with its timeline event) *before* the effect
//! it announces, so a crash at any point leaves a state that says exactly
//! what may have happened: `switching` means the command may have run, and
//! [`reconcile`] never runs it again. The single in-flight slot in the
//! database means two rollbacks (daemon and CLI) can never run at once; the
//! slot names the process holding it, so a rollback whose process died is
//! taken over (by exactly one process) and closed, never left open.
//!
//! Guards on automatic rollbacks only: a pause, the cooldown (one automatic
//! rollback whose command ran per `cooldown`), an unresolved escalation, and
//! quarantine (a rolled-back deployment is never restored automatically; a
//! new deployment starts clean). Guards on every rollback: a previous
//! deployment must exist and the target must pass its health probes.
//!
//! This file decides and records; it does not choose when to roll back (the
//! daemon and the CLI do) and it does not speak SQL (`store` does).

pub mod active;
pub mod entry;
mod fleet;
pub mod guards;
mod recovery;

use std::time::Duration;

use crate::config::{Config, Scope};
pub use crate::model::Trigger;
use crate::model::{Color, EventKind, IncidentState, Millis, Severity, format_ms, now_ms};
use crate::notifier::{Event, Hub, Notice};
use crate::probe::Prober;
use crate::process;
pub use crate::rollback::guards::Guards;
pub use crate::rollback::recovery::{abandon, holder_alive, reconcile};
use crate::store::{Deployment, NewIncident, Store, StoreError};

/// Fixed journald MESSAGE_IDs (SPEC section 5), so operators can
/// `journalctl MESSAGE_ID=...` across versions.
pub mod message_id {
    pub const STARTED: &str = "5f1d2a6c0b7e4d3f9a8c1e2b3d4f5a61";
    pub const COMPLETED: &str = "5f1d2a6c0b7e4d3f9a8c1e2b3d4f5a62";
    pub const FAILED: &str = "5f1d2a6c0b7e4d3f9a8c1e2b3d4f5a63";
    pub const REFUSED: &str = "5f1d2a6c0b7e4d3f9a8c1e2b3d4f5a64";
}

/// How the timeline tells a switch command's process group, followed by
/// the id. Before the `switch_pgid` column this prose was the only record;
/// [`legacy_switch_group`] still reads it for incidents written then.
const SWITCH_GROUP_PROSE: &str = "switch command running as process group ";

/// How the outcome of a rollback closed [`IncidentState::Unknown`] (its
/// switch command started, nothing can tell whether it landed) is worded, first in the incident's outcome.
pub const OUTCOME_UNKNOWN: &str = "outcome unknown — check the proxy";

#[derive(Clone, Debug)]
pub struct Request {
    pub trigger: Trigger,
    pub severity: Severity,
    pub rule: Option<String>,
    pub reason: String,
    /// The verdict's evidence, as JSON.
    pub evidence: serde_json::Value,
    /// When the trouble was first seen (first failing sample), for the
    /// "detected" event and the downtime: the matrix's streak start for an
    /// automatic rollback (`None`: no streak); for a manual one, `None`
    /// reads it from stored samples.
    pub since_ms: Option<Millis>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Switched and the restored color passed health.
    Verified { incident: i64, to: Color },
    /// Switched, but the restored color did not pass health in time.
    Escalated { incident: i64, why: String },
    /// Not switched: the target was unhealthy, quarantined, or absent.
    Refused { incident: i64, why: String },
    /// The command failed, or the switch could not be confirmed.
    Failed { incident: i64, why: String },
    /// dry_run: everything but the command.
    DryRun { incident: i64, to: Color },
    /// Not attempted, and no incident opened: paused, in cooldown, or
    /// another rollback holds the slot. `retry_in`: when the hold is known
    /// to end (another host's rollback in flight, at its bound), the
    /// daemon asks again then, not at its usual retry.
    Skipped {
        why: String,
        retry_in: Option<Duration>,
    },
}

impl Outcome {
    /// One word for metrics labels and `rollback --json`: the state the
    /// incident closed in (`model::IncidentState`'s word), or `skipped`
    /// when none was opened.
    pub fn word(&self) -> &'static str {
        use crate::model::IncidentState;
        match self {
            Outcome::Verified { .. } => IncidentState::Verified.as_str(),
            Outcome::Escalated { .. } => IncidentState::Escalated.as_str(),
            Outcome::Refused { .. } => IncidentState::Refused.as_str(),
            Outcome::Failed { .. } => IncidentState::Failed.as_str(),
            Outcome::DryRun { .. } => IncidentState::DryRun.as_str(),
            Outcome::Skipped { .. } => "skipped",
        }
    }
}

/// In words, for logs: "verified: back on blue (incident #3)".
impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Verified { incident, to } => {
                write!(f, "verified: back on {to} (incident #{incident})")
            }
            Outcome::DryRun { incident, to } => {
                write!(
                    f,
                    "dry run: would have switched to {to} (incident #{incident})"
                )
            }
            Outcome::Escalated { incident, why } => {
                write!(f, "escalated (incident #{incident}): {why}")
            }
            Outcome::Refused { incident, why } => {
                write!(f, "refused (incident #{incident}): {why}")
            }
            Outcome::Failed { incident, why } => write!(f, "failed (incident #{incident}): {why}"),
            Outcome::Skipped { why, .. } => write!(f, "not started: {why}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Active(#[from] active::ActiveError),
}

pub struct Context<'a> {
    pub config: &'a Config,
    pub store: &'a Store,
    pub prober: &'a Prober,
    /// Where rollback notices go (`[[notify]]`); `None` sends none.
    pub notify: Option<&'a Hub>,
}

impl Context<'_> {
    fn notify(&self, notice: Notice) {
        if let Some(hub) = self.notify {
            hub.send(&self.config.notify, notice);
        }
    }
}

/// Who runs this process, for a manual rollback's record: the user behind
/// `sudo` when there is one.
pub fn operator() -> Option<String> {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .find(|u| !u.is_empty())
}

/// This process as an in-flight slot's holder: `pid/starttime` (the start
/// time, from `/proc`, tells a reused pid from the process that died).
pub fn holder_id() -> String {
    let pid = std::process::id();
    format!(
        "{pid}/{}",
        process::proc_stat(pid).map_or(0, |p| p.start_time)
    )
}

/// Run one guarded rollback from the active color to the other.
pub async fn execute(ctx: &Context<'_>, req: Request) -> Result<Outcome, RollbackError> {
    execute_guarded(ctx, req, Guards::default(), None).await
}

/// [`execute`], with the daemon's time guards: a pause or cooldown it
/// already knows keeps the monotonic deadline it got when first learned
/// (`guards`); one it does not know yet is learned now. `active` is the
/// active color the daemon judged (its state watcher owns it); `None`
/// reads it here (`active::current`).
pub async fn execute_guarded(
    ctx: &Context<'_>,
    req: Request,
    guards: Guards,
    active: Option<Color>,
) -> Result<Outcome, RollbackError> {
    let Context { config, store, .. } = *ctx;
    // A rollback left in flight by a process that died is closed (or
    // finished) first, so its slot never blocks this one for good.
    if let Some(outcome) = reconcile(ctx).await? {
        tracing::warn!("reconciled an interrupted rollback first: {outcome}");
    }
    let now = now_ms();
    if req.trigger == Trigger::Automatic {
        if let Some(Hold { why, retry_in }) = automatic_hold(ctx, now, guards).await? {
            return Ok(Outcome::Skipped { why, retry_in });
        }
    }
    let current = match active {
        Some(color) => store.latest_deployment_of(color).await?.map(|d| (color, d)),
        None => active::current(config, store).await?,
    };
    let Some((from, active_dep)) = current else {
        return Ok(Outcome::Skipped {
            why: "no active color is known yet: record a deployment first".into(),
            retry_in: None,
        });
    };
    let to = from.other();
    let target_dep = store.previous_deployment_of(to, active_dep.id).await?;
    let new = NewIncident {
        at_ms: now,
        trigger_kind: req.trigger,
        severity: req.severity,
        rule: req.rule.clone(),
        reason: req.reason.clone(),
        evidence: req.evidence.to_string(),
        from_color: Some(from),
        to_color: Some(to),
        from_version: Some(active_dep.version.clone()),
        to_version: target_dep.as_ref().map(|d| d.version.clone()),
        in_flight: true,
        holder: Some(holder_id()),
    };
    let requested = match req.trigger {
        Trigger::Automatic => format!("automatic rollback requested: {}", req.reason),
        Trigger::Manual => format!(
            "manual rollback requested{}: {}",
            operator().map(|u| format!(" by {u}")).unwrap_or_default(),
            req.reason
        ),
    };
    // A database that refuses the record does not stop the rollback: the
    // incident is kept in memory and written when it takes writes again.
    let id = match store
        .open_incident_or_keep(&new, IncidentState::Requested, &requested)
        .await
    {
        Ok((id, _stored)) => id,
        Err(StoreError::RollbackInFlight(other)) => {
            return Ok(Outcome::Skipped {
                why: format!("rollback already in flight (incident #{other})"),
                retry_in: None,
            });
        }
        Err(e) => return Err(e.into()),
    };
    let since_ms = match req.since_ms {
        Some(s) => Some(s),
        // An automatic rollback's streak start is the matrix's, or none.
        None if req.trigger == Trigger::Automatic => None,
        None => stored_failing_since(ctx, from, now)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!("cannot read when {from} started failing: {e}");
                None
            }),
    };
    if let Some(since) = since_ms.filter(|s| *s <= now) {
        store
            .add_incident_event_or_keep(
                id,
                since,
                EventKind::Detected,
                &format!(
                    "{from} ({}) started failing{}",
                    active_dep.version,
                    req.rule
                        .as_deref()
                        .map(|r| format!("; rule {r} fired at {}", format_ms(now)))
                        .unwrap_or_default()
                ),
            )
            .await;
    }
    tracing::warn!(
        rollbackd.incident = id,
        rollbackd.color = from.as_str(),
        rollbackd.severity = req.severity.as_str(),
        rollbackd.rule = req.rule.as_deref().unwrap_or(""),
        message_id = message_id::STARTED,
        "rollback started: {} -> {to}: {}",
        from,
        req.reason
    );
    // A fault point for the tests of a rollback task that dies mid-way
    // (its incident open, its slot held): see `abandon`.
    #[cfg(test)]
    if req.reason.contains(PANIC_FAULT) {
        panic!("injected fault: {PANIC_FAULT}");
    }
    let run = Run {
        ctx,
        id,
        from,
        to,
        active_dep,
        target_dep,
        req,
        since_ms,
    };
    run.notify(
        Event::RollbackStarted,
        run.req.severity,
        format!(
            "rolling back {} -> {}: {}",
            run.from, run.to, run.req.reason
        ),
    );
    run.proceed().await
}

/// Why an automatic rollback may not start now, and when it is known to
/// end (another host's rollback reaching its bound), how soon to ask again;
/// without that, the usual retry applies.
pub(super) struct Hold {
    why: String,
    retry_in: Option<Duration>,
}

impl Hold {
    /// A hold whose end is not known here.
    fn new(why: String) -> Self {
        Self {
            why,
            retry_in: None,
        }
    }
}

/// Why an automatic rollback may not start now, if it may not. The pause
/// and cooldown are judged on the monotonic clock (`guards`); the store
/// says which pause and which last rollback there are.
async fn automatic_hold(
    ctx: &Context<'_>,
    now: Millis,
    mut guards: Guards,
) -> Result<Option<Hold>, StoreError> {
    let Context { config, store, .. } = *ctx;
    if let Some(hold) = fleet::hold(ctx, now).await {
        return Ok(Some(hold));
    }
    let at = tokio::time::Instant::now();
    // Every pause not resumed, whatever the wall clock says of its end.
    guards.learn_pause(store.active_pause(Millis::MIN).await?, now, at);
    if let Some(p) = guards.paused(at) {
        return Ok(Some(Hold::new(format!(
            "automatic rollbacks are paused until {}: {}",
            format_ms(p.until_ms),
            p.reason
        ))));
    }
    if let Some(inc) = store.unresolved_escalation().await? {
        return Ok(Some(Hold::new(format!(
            "rollback #{} escalated: no further automatic switch until a deployment is recorded or an operator rolls back",
            inc.id
        ))));
    }
    guards.learn_cooldown(
        store.cooldown_start_ms(config.daemon.dry_run).await?,
        now,
        at,
    );
    Ok(guards.hold(at, config.rollback.cooldown).map(Hold::new))
}

/// When the current failure streak of `color`'s health probes began,
/// from the stored samples (a manual rollback, or after a restart). Only a
/// streak that is still going (its last sample within a minute) counts.
async fn stored_failing_since(
    ctx: &Context<'_>,
    color: Color,
    now: Millis,
) -> Result<Option<Millis>, StoreError> {
    let mut earliest: Option<Millis> = None;
    for probe in ctx
        .config
        .probes
        .iter()
        .filter(|p| p.health && p.scope == Scope::PerColor)
    {
        let samples = ctx
            .store
            .samples(Some(&probe.name), Some(color), now - 15 * 60 * 1000)
            .await?;
        let Some(last) = samples.last() else { continue };
        if last.ok || now - last.at_ms > 60_000 {
            continue;
        }
        let start = samples
            .iter()
            .rev()
            .take_while(|s| !s.ok)
            .last()
            .map(|s| s.at_ms);
        earliest = match (earliest, start) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(earliest)
}

/// One rollback in progress: what it switches and where it stands.
struct Run<'c, 'a> {
    ctx: &'c Context<'a>,
    id: i64,
    from: Color,
    to: Color,
    active_dep: Deployment,
    target_dep: Option<Deployment>,
    req: Request,
    since_ms: Option<Millis>,
}

impl Run<'_, '_> {
    fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("from", self.from.as_str().to_owned()),
            ("to", self.to.as_str().to_owned()),
            ("version", self.target_version()),
            ("incident", self.id.to_string()),
        ]
    }

    fn target_version(&self) -> String {
        self.target_dep
            .as_ref()
            .map(|d| d.version.clone())
            .unwrap_or_default()
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ROLLBACKD_FROM", self.from.as_str().to_owned()),
            ("ROLLBACKD_TO", self.to.as_str().to_owned()),
            ("ROLLBACKD_REASON", self.req.reason.clone()),
            ("ROLLBACKD_SEVERITY", self.req.severity.as_str().to_owned()),
            ("ROLLBACKD_INCIDENT", self.id.to_string()),
            ("ROLLBACKD_VERSION", self.target_version()),
        ]
    }

    fn notify(&self, event: Event, severity: Severity, summary: String) {
        let mut n = Notice::new(event, severity, &self.ctx.config.service, summary);
        n.incident = Some(self.id);
        n.rule = self.req.rule.clone();
        n.color = Some(self.from);
        n.from = Some(self.from);
        n.to = Some(self.to);
        n.version = self.target_dep.as_ref().map(|d| d.version.clone());
        n.from_version = Some(self.active_dep.version.clone());
        n.detail = format!("trigger: {}", self.req.reason);
        self.ctx.notify(n);
    }

    /// Record a step; a database that refuses it keeps it in memory (the
    /// rollback never waits on the database).
    async fn event(&self, state: IncidentState, message: &str) -> Result<(), StoreError> {
        self.ctx
            .store
            .advance_incident_or_keep(self.id, now_ms(), state, message)
            .await;
        Ok(())
    }

    async fn refuse(&self, why: String) -> Result<Outcome, RollbackError> {
        tracing::error!(
            rollbackd.incident = self.id,
            rollbackd.color = self.from.as_str(),
            rollbackd.severity = self.req.severity.as_str(),
            message_id = message_id::REFUSED,
            "rollback refused: {why}"
        );
        self.ctx
            .store
            .close_incident_or_keep(
                self.id,
                now_ms(),
                IncidentState::Refused,
                &format!("refused: {why}"),
                None,
            )
            .await;
        self.notify(
            Event::RollbackRefused,
            self.req.severity,
            format!(
                "{} keeps serving: rollback to {} refused: {why}",
                self.from, self.to
            ),
        );
        Ok(Outcome::Refused {
            incident: self.id,
            why,
        })
    }

    async fn fail(&self, why: String) -> Result<Outcome, RollbackError> {
        tracing::error!(
            rollbackd.incident = self.id,
            rollbackd.color = self.from.as_str(),
            rollbackd.severity = Severity::Critical.as_str(),
            message_id = message_id::FAILED,
            "rollback failed: {why}"
        );
        self.ctx
            .store
            .close_incident_or_keep(
                self.id,
                now_ms(),
                IncidentState::Failed,
                &format!("failed: {why}"),
                None,
            )
            .await;
        self.notify(
            Event::RollbackFailed,
            Severity::Critical,
            format!("rollback {} -> {} failed: {why}", self.from, self.to),
        );
        Ok(Outcome::Failed {
            incident: self.id,
            why,
        })
    }

    /// The switch command started and nothing can tell whether it landed
    /// (no `[active] file`, no `[entry]`): the incident closes as
    /// `unknown` ([`OUTCOME_UNKNOWN`]), never as a failure that would make
    /// `status` name the old color as surely active. Reported as a failed
    /// outcome (an operator must look) and notified as one.
    async fn unknown(&self, why: String) -> Result<Outcome, RollbackError> {
        let why = format!("{OUTCOME_UNKNOWN}: {why}");
        tracing::error!(
            rollbackd.incident = self.id,
            rollbackd.color = self.from.as_str(),
            rollbackd.severity = Severity::Critical.as_str(),
            message_id = message_id::FAILED,
            "rollback {why}"
        );
        self.ctx
            .store
            .close_incident_or_keep(self.id, now_ms(), IncidentState::Unknown, &why, None)
            .await;
        self.notify(
            Event::RollbackFailed,
            Severity::Critical,
            format!("rollback {} -> {}: {why}", self.from, self.to),
        );
        Ok(Outcome::Failed {
            incident: self.id,
            why,
        })
    }

    async fn run_step(
        &self,
        name: &str,
        argv: &[String],
        started: Option<tokio::sync::oneshot::Sender<u32>>,
    ) -> process::Finished {
        let owned = self.vars();
        let vars: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let argv: Vec<String> = argv
            .iter()
            .map(|a| crate::config::render(a, &vars))
            .collect();
        tracing::info!(
            rollbackd.incident = self.id,
            "running {name}: {}",
            argv.join(" ")
        );
        process::run_reporting(
            &argv,
            &self.env(),
            self.ctx.config.rollback.timeout,
            started,
        )
        .await
    }

    async fn proceed(self) -> Result<Outcome, RollbackError> {
        let config = self.ctx.config;
        let Some(target) = self.target_dep.clone() else {
            return self
                .refuse(format!(
                    "there is no previous deployment on {} to restore",
                    self.to
                ))
                .await;
        };
        if target.quarantined && self.req.trigger == Trigger::Automatic {
            return self
                .refuse(format!(
                    "version {} on {} is quarantined (it was rolled back before); only a new deploy or a manual rollback restores it",
                    target.version, self.to
                ))
                .await;
        }
        if let Some(prepare) = &config.rollback.prepare {
            self.ctx
                .store
                .add_incident_event_or_keep(
                    self.id,
                    now_ms(),
                    IncidentState::Requested,
                    &format!("preparing {}: running the prepare command", self.to),
                )
                .await;
            let done = self.run_step("prepare", &prepare.0, None).await;
            if !done.success() {
                return self
                    .refuse(format!("prepare command failed: {}", done.describe()))
                    .await;
            }
            self.ctx
                .store
                .add_incident_event_or_keep(
                    self.id,
                    now_ms(),
                    IncidentState::Requested,
                    &format!("prepared {}: {}", self.to, done.describe()),
                )
                .await;
        }
        if config.rollback.verify_target {
            // After `prepare` the standby may need a moment to start: give it
            // up to verify_after; without prepare it must be healthy now.
            let budget = if config.rollback.prepare.is_some() {
                config.rollback.verify_after
            } else {
                Duration::ZERO
            };
            if let Err(why) = wait_healthy(self.ctx, self.to, budget).await {
                return self
                    .refuse(format!("{} is not healthy: {why}", self.to))
                    .await;
            }
            self.event(
                IncidentState::TargetVerified,
                &format!("{} ({}) passes its health probes", self.to, target.version),
            )
            .await?;
        } else {
            self.event(
                IncidentState::TargetVerified,
                "verify_target = false: target not checked",
            )
            .await?;
        }
        if config.daemon.dry_run {
            tracing::warn!(
                rollbackd.incident = self.id,
                rollbackd.color = self.from.as_str(),
                rollbackd.severity = self.req.severity.as_str(),
                "dry run: would roll back {} -> {} ({})",
                self.from,
                self.to,
                target.version
            );
            self.ctx
                .store
                .close_incident_or_keep(
                    self.id,
                    now_ms(),
                    IncidentState::DryRun,
                    &format!(
                        "dry run: would roll back {} -> {} ({}); the command was not run",
                        self.from, self.to, target.version
                    ),
                    None,
                )
                .await;
            self.notify(
                Event::RollbackDryRun,
                self.req.severity,
                format!(
                    "would roll back {} -> {} ({}): {}",
                    self.from, self.to, target.version, self.req.reason
                ),
            );
            return Ok(Outcome::DryRun {
                incident: self.id,
                to: self.to,
            });
        }
        self.switch(target).await
    }

    async fn switch(self, target: Deployment) -> Result<Outcome, RollbackError> {
        let config = self.ctx.config;
        let Some(command) = &config.rollback.command else {
            return self
                .refuse("no [rollback] command is configured".into())
                .await;
        };
        // Persisted before the command runs: after a crash, `switching` says
        // the command may have run, and it is never run again.
        self.event(
            IncidentState::Switching,
            &format!("running the switch command to {}", self.to),
        )
        .await?;
        // Its process group is stored on the incident (and told on the
        // timeline) as soon as it runs: if this process dies, the command
        // (its own group) may go on, and a restart waits for it instead of
        // guessing.
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let record_group = async {
            if let Ok(pgid) = started_rx.await {
                let message = format!("{SWITCH_GROUP_PROSE}{pgid}");
                self.ctx
                    .store
                    .record_switch_group_or_keep(self.id, now_ms(), pgid, &message)
                    .await;
            }
        };
        let (done, ()) = tokio::join!(
            self.run_step("switch", &command.0, Some(started_tx)),
            record_group
        );
        if !done.success() {
            return self
                .fail(format!("switch command: {}", done.describe()))
                .await;
        }
        if let Some(file) = &config.active_file {
            match active::read_file(file) {
                Ok(c) if c == self.to => {}
                Ok(c) => {
                    return self
                        .fail(format!(
                            "switch command exited 0 but {} still says {c}",
                            file.display()
                        ))
                        .await;
                }
                Err(e) => return self.fail(format!("switch command exited 0 but {e}")).await,
            }
        }
        // With `[entry]`, exit 0 is not enough: the traffic itself must name
        // the target (a proxy that rejected its new config keeps serving the
        // old color while its reload exits 0).
        if let Some(entry) = &config.entry {
            match crate::rollback::entry::wait_serving(entry, self.to, config.rollback.verify_after)
                .await
            {
                Ok(()) => {
                    self.event(
                        IncidentState::Switching,
                        &format!(
                            "switch confirmed by traffic: the entry serves {} ({})",
                            self.to, entry.url
                        ),
                    )
                    .await?
                }
                Err(why) => {
                    return self
                        .escalate(format!(
                            "switch command exited 0 but {why} (after {}); traffic did not move, no further automatic switch",
                            humantime::format_duration(config.rollback.verify_after)
                        ))
                        .await;
                }
            }
        }
        self.switched(target, done.describe()).await
    }

    /// Close the incident as escalated (an operator must act; automatic
    /// rollbacks hold until a deployment is recorded) and notify.
    async fn escalate(&self, why: String) -> Result<Outcome, RollbackError> {
        tracing::error!(
            rollbackd.incident = self.id,
            rollbackd.color = self.from.as_str(),
            rollbackd.severity = Severity::Critical.as_str(),
            message_id = message_id::FAILED,
            "rollback escalated: {why}"
        );
        self.ctx
            .store
            .close_incident(
                self.id,
                now_ms(),
                IncidentState::Escalated,
                &format!("escalated: {why}"),
                None,
            )
            .await?;
        self.notify(
            Event::RollbackEscalated,
            Severity::Critical,
            format!("ESCALATED: {why}"),
        );
        Ok(Outcome::Escalated {
            incident: self.id,
            why,
        })
    }

    /// The switch landed: record the deployment it made and quarantine the
    /// one it left (each idempotent, so a resumed run may redo them).
    async fn record_switch(
        &self,
        target: &Deployment,
        already_recorded: bool,
    ) -> Result<(), StoreError> {
        let store = self.ctx.store;
        if !already_recorded {
            store
                .record_deployment_or_keep(self.to, &target.version, "rollback", now_ms())
                .await;
        }
        if self.ctx.config.rollback.quarantine {
            store
                .quarantine_deployment_or_keep(self.active_dep.id, &self.active_dep.version)
                .await;
        }
        Ok(())
    }

    async fn switched(self, target: Deployment, how: String) -> Result<Outcome, RollbackError> {
        self.record_switch(&target, false).await?;
        self.event(
            IncidentState::Switched,
            &format!("traffic moved to {} ({}): {how}", self.to, target.version),
        )
        .await?;
        self.verify_after().await
    }

    async fn verify_after(self) -> Result<Outcome, RollbackError> {
        let config = self.ctx.config;
        match wait_healthy(self.ctx, self.to, config.rollback.verify_after).await {
            Ok(()) => {
                let verified_at = now_ms();
                let downtime = self.since_ms.map(|s| (verified_at - s).max(0));
                if let Some(retire) = &config.rollback.retire {
                    let done = self.run_step("retire", &retire.0, None).await;
                    self.ctx
                        .store
                        .add_incident_event_or_keep(
                            self.id,
                            now_ms(),
                            IncidentState::Switched,
                            &format!("retired {}: {}", self.from, done.describe()),
                        )
                        .await;
                }
                tracing::info!(
                    rollbackd.incident = self.id,
                    rollbackd.color = self.to.as_str(),
                    rollbackd.severity = self.req.severity.as_str(),
                    message_id = message_id::COMPLETED,
                    "rollback completed: {} serves traffic and passes health",
                    self.to
                );
                self.ctx
                    .store
                    .close_incident_or_keep(
                        self.id,
                        verified_at,
                        IncidentState::Verified,
                        &format!(
                            "rolled back to {} ({}); verified healthy",
                            self.to,
                            self.target_version()
                        ),
                        downtime,
                    )
                    .await;
                self.notify(
                    Event::RollbackCompleted,
                    self.req.severity,
                    format!(
                        "rolled back {} -> {} ({}); {} passes health{}",
                        self.from,
                        self.to,
                        self.target_version(),
                        self.to,
                        downtime
                            .map(|d| format!(
                                "; measured downtime {}",
                                humantime::format_duration(Duration::from_secs(
                                    (d as u64).div_ceil(1000)
                                ))
                            ))
                            .unwrap_or_default()
                    ),
                );
                Ok(Outcome::Verified {
                    incident: self.id,
                    to: self.to,
                })
            }
            Err(why) => {
                let why = format!(
                    "{} did not pass health within {}: {why}; no further automatic switch",
                    self.to,
                    humantime::format_duration(config.rollback.verify_after)
                );
                tracing::error!(
                    rollbackd.incident = self.id,
                    rollbackd.color = self.to.as_str(),
                    rollbackd.severity = Severity::Critical.as_str(),
                    message_id = message_id::FAILED,
                    "rollback escalated: {why}"
                );
                self.ctx
                    .store
                    .close_incident_or_keep(
                        self.id,
                        now_ms(),
                        IncidentState::Escalated,
                        &format!("escalated: {why}"),
                        None,
                    )
                    .await;
                self.notify(
                    Event::RollbackEscalated,
                    Severity::Critical,
                    format!("ESCALATED: switched to {} but {why}", self.to),
                );
                Ok(Outcome::Escalated {
                    incident: self.id,
                    why,
                })
            }
        }
    }
}

/// Run every health probe of `color` until all pass, or `budget` runs out
/// (at least one round always runs). The error says which probe failed how.
pub async fn wait_healthy(ctx: &Context<'_>, color: Color, budget: Duration) -> Result<(), String> {
    let started = tokio::time::Instant::now();
    let probes: Vec<_> = ctx
        .config
        .probes
        .iter()
        .filter(|p| p.health && p.scope == Scope::PerColor)
        .collect();
    if probes.is_empty() {
        return Ok(());
    }
    let pace = probes
        .iter()
        .map(|p| p.confirm_interval.unwrap_or(p.interval))
        .min()
        .unwrap_or(Duration::from_secs(1));
    loop {
        let mut failure = None;
        for probe in &probes {
            let outcome = ctx.prober.run(ctx.config, probe, Some(color)).await;
            if !outcome.is_ok() {
                failure = Some(format!("{}: {}", probe.name, outcome.detail));
                break;
            }
        }
        match failure {
            None => return Ok(()),
            Some(why) if started.elapsed() + pace > budget => return Err(why),
            Some(_) => tokio::time::sleep(pace).await,
        }
    }
}

/// A request whose reason holds this panics once its incident is open
/// (tests only).
#[cfg(test)]
pub(crate) const PANIC_FAULT: &str = "[test fault: panic in the rollback task]";

#[cfg(test)]
mod outcome_words {
    use super::Outcome;
    use crate::model::Color;

    /// Issue 15: logs said `Verified { incident: 1, to: Blue }`.
    #[test]
    fn an_outcome_reads_as_words_not_a_rust_debug_form() {
        let verified = Outcome::Verified {
            incident: 1,
            to: Color::Blue,
        };
        assert_eq!(verified.to_string(), "verified: back on blue (incident #1)");
        let refused = Outcome::Refused {
            incident: 2,
            why: "green is not healthy".into(),
        };
        assert_eq!(
            refused.to_string(),
            "refused (incident #2): green is not healthy"
        );
        for o in [
            verified,
            refused,
            Outcome::Skipped {
                why: "paused".into(),
                retry_in: None,
            },
        ] {
            let text = o.to_string();
            assert!(!text.contains('{') && !text.contains("Some("), "{text}");
        }
    }
}
