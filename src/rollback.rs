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
//! database means two rollbacks (daemon and CLI) can never run at once.

use std::time::Duration;

use serde_json::json;

use crate::active;
use crate::config::{Config, Scope};
use crate::model::{Color, Millis, Severity, now_ms};
use crate::probe::Prober;
use crate::process;
use crate::store::{Deployment, NewIncident, Store, StoreError};

/// Fixed journald MESSAGE_IDs (SPEC section 5), so operators can
/// `journalctl MESSAGE_ID=...` across versions.
pub mod message_id {
    pub const STARTED: &str = "5f1d2a6c0b7e4d3f9a8c1e2b3d4f5a61";
    pub const COMPLETED: &str = "5f1d2a6c0b7e4d3f9a8c1e2b3d4f5a62";
    pub const FAILED: &str = "5f1d2a6c0b7e4d3f9a8c1e2b3d4f5a63";
    pub const REFUSED: &str = "5f1d2a6c0b7e4d3f9a8c1e2b3d4f5a64";
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The matrix fired a rule.
    Automatic,
    /// `rollbackd rollback --reason`.
    Manual,
}

#[derive(Clone, Debug)]
pub struct Request {
    pub trigger: Trigger,
    pub severity: Severity,
    pub rule: Option<String>,
    pub reason: String,
    /// The verdict's evidence, as JSON.
    pub evidence: serde_json::Value,
    /// When the trouble was first seen (first failing sample), for downtime.
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
    /// another rollback holds the slot.
    Skipped { why: String },
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
}

/// Run one guarded rollback from the active color to the other.
pub async fn execute(ctx: &Context<'_>, req: Request) -> Result<Outcome, RollbackError> {
    let Context { config, store, .. } = *ctx;
    let now = now_ms();
    if req.trigger == Trigger::Automatic {
        if let Some(p) = store.active_pause(now).await? {
            return Ok(Outcome::Skipped {
                why: format!(
                    "automatic rollbacks are paused until {}: {}",
                    crate::model::format_ms(p.until_ms),
                    p.reason
                ),
            });
        }
        if let Some(last) = store.last_automatic_switch_ms().await? {
            let cooldown = crate::model::duration_ms(config.rollback.cooldown);
            if now - last < cooldown {
                return Ok(Outcome::Skipped {
                    why: format!(
                        "in cooldown: the last automatic rollback was at {}, cooldown is {}",
                        crate::model::format_ms(last),
                        humantime::format_duration(config.rollback.cooldown)
                    ),
                });
            }
        }
    }
    let Some((from, active_dep)) = active::current(config, store).await? else {
        return Ok(Outcome::Skipped {
            why: "no active color is known yet: record a deployment first".into(),
        });
    };
    let to = from.other();
    let target_dep = store.previous_deployment_of(to, active_dep.id).await?;
    let new = NewIncident {
        at_ms: now,
        trigger_kind: match req.trigger {
            Trigger::Automatic => "automatic",
            Trigger::Manual => "manual",
        },
        severity: req.severity,
        rule: req.rule.clone(),
        reason: req.reason.clone(),
        evidence: req.evidence.to_string(),
        from_color: Some(from),
        to_color: Some(to),
        from_version: Some(active_dep.version.clone()),
        to_version: target_dep.as_ref().map(|d| d.version.clone()),
        in_flight: true,
    };
    let id = match store
        .open_incident(
            &new,
            "requested",
            &format!("rollback requested: {}", req.reason),
        )
        .await
    {
        Ok(id) => id,
        Err(StoreError::RollbackInFlight(other)) => {
            return Ok(Outcome::Skipped {
                why: format!("rollback already in flight (incident #{other})"),
            });
        }
        Err(e) => return Err(e.into()),
    };
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
    let run = Run {
        ctx,
        id,
        from,
        to,
        active_dep,
        target_dep,
        req,
    };
    run.proceed().await
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
}

impl Run<'_, '_> {
    fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("from", self.from.as_str().to_owned()),
            ("to", self.to.as_str().to_owned()),
            (
                "version",
                self.target_dep
                    .as_ref()
                    .map(|d| d.version.clone())
                    .unwrap_or_default(),
            ),
            ("incident", self.id.to_string()),
        ]
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ROLLBACKD_FROM", self.from.as_str().to_owned()),
            ("ROLLBACKD_TO", self.to.as_str().to_owned()),
            ("ROLLBACKD_REASON", self.req.reason.clone()),
            ("ROLLBACKD_SEVERITY", self.req.severity.as_str().to_owned()),
            ("ROLLBACKD_INCIDENT", self.id.to_string()),
            (
                "ROLLBACKD_VERSION",
                self.target_dep
                    .as_ref()
                    .map(|d| d.version.clone())
                    .unwrap_or_default(),
            ),
        ]
    }

    async fn event(&self, state: &str, message: &str) -> Result<(), StoreError> {
        self.ctx
            .store
            .advance_incident(self.id, now_ms(), state, message)
            .await
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
            .close_incident(
                self.id,
                now_ms(),
                "refused",
                &format!("refused: {why}"),
                None,
            )
            .await?;
        Ok(Outcome::Refused {
            incident: self.id,
            why,
        })
    }

    async fn fail(&self, why: String) -> Result<Outcome, RollbackError> {
        tracing::error!(
            rollbackd.incident = self.id,
            rollbackd.color = self.from.as_str(),
            rollbackd.severity = self.req.severity.as_str(),
            message_id = message_id::FAILED,
            "rollback failed: {why}"
        );
        self.ctx
            .store
            .close_incident(self.id, now_ms(), "failed", &format!("failed: {why}"), None)
            .await?;
        Ok(Outcome::Failed {
            incident: self.id,
            why,
        })
    }

    async fn run_step(&self, name: &str, argv: &[String]) -> process::Finished {
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
        process::run(&argv, &self.env(), self.ctx.config.rollback.timeout).await
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
                    "version {} on {} is quarantined (it was rolled back before)",
                    target.version, self.to
                ))
                .await;
        }
        if let Some(prepare) = &config.rollback.prepare {
            let done = self.run_step("prepare", &prepare.0).await;
            if !done.success() {
                return self
                    .refuse(format!("prepare command failed: {}", done.describe()))
                    .await;
            }
            self.ctx
                .store
                .add_incident_event(
                    self.id,
                    now_ms(),
                    "requested",
                    &format!("prepared {}: {}", self.to, done.describe()),
                )
                .await?;
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
                "target_verified",
                &format!("{} ({}) passes its health probes", self.to, target.version),
            )
            .await?;
        } else {
            self.event(
                "target_verified",
                "verify_target = false: target not checked",
            )
            .await?;
        }
        if config.daemon.dry_run {
            tracing::warn!(
                rollbackd.incident = self.id,
                color = self.from.as_str(),
                "dry run: would roll back {} -> {}",
                self.from,
                self.to
            );
            self.ctx
                .store
                .close_incident(
                    self.id,
                    now_ms(),
                    "dry_run",
                    &format!("dry run: would have switched {} -> {}", self.from, self.to),
                    None,
                )
                .await?;
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
            "switching",
            &format!("running the switch command to {}", self.to),
        )
        .await?;
        let done = self.run_step("switch", &command.0).await;
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
        self.switched(target, done.describe()).await
    }

    async fn switched(self, target: Deployment, how: String) -> Result<Outcome, RollbackError> {
        let store = self.ctx.store;
        store
            .record_deployment(self.to, &target.version, "rollback", now_ms())
            .await?;
        if self.ctx.config.rollback.quarantine {
            store.quarantine_version(&self.active_dep.version).await?;
        }
        self.event(
            "switched",
            &format!("traffic moved to {} ({}): {how}", self.to, target.version),
        )
        .await?;
        self.verify_after().await
    }

    async fn verify_after(self) -> Result<Outcome, RollbackError> {
        let config = self.ctx.config;
        match wait_healthy(self.ctx, self.to, config.rollback.verify_after).await {
            Ok(()) => {
                let now = now_ms();
                let downtime = self.req.since_ms.map(|s| (now - s).max(0));
                if let Some(retire) = &config.rollback.retire {
                    let done = self.run_step("retire", &retire.0).await;
                    self.ctx
                        .store
                        .add_incident_event(
                            self.id,
                            now_ms(),
                            "switched",
                            &format!("retired {}: {}", self.from, done.describe()),
                        )
                        .await?;
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
                    .close_incident(
                        self.id,
                        now_ms(),
                        "verified",
                        &format!("rolled back to {}; verified healthy", self.to),
                        downtime,
                    )
                    .await?;
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
                    .close_incident(
                        self.id,
                        now_ms(),
                        "escalated",
                        &format!("escalated: {why}"),
                        None,
                    )
                    .await?;
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

/// After a restart: close or resume the rollback that was in flight when
/// the daemon (or CLI) stopped. Never runs the switch command twice.
pub async fn reconcile(ctx: &Context<'_>) -> Result<Option<Outcome>, RollbackError> {
    let store = ctx.store;
    let Some(inc) = store.in_flight_incident().await? else {
        return Ok(None);
    };
    let (Some(from), Some(to)) = (inc.from_color, inc.to_color) else {
        store
            .close_incident(
                inc.id,
                now_ms(),
                "failed",
                "interrupted; colors unknown",
                None,
            )
            .await?;
        return Ok(Some(Outcome::Failed {
            incident: inc.id,
            why: "interrupted".into(),
        }));
    };
    tracing::warn!(
        rollbackd.incident = inc.id,
        "found rollback #{} interrupted in state {}: reconciling",
        inc.id,
        inc.state
    );
    match inc.state.as_str() {
        "requested" | "target_verified" => {
            let why = "interrupted before the switch command ran (restart); nothing was changed"
                .to_owned();
            store
                .close_incident(inc.id, now_ms(), "failed", &why, None)
                .await?;
            Ok(Some(Outcome::Failed {
                incident: inc.id,
                why,
            }))
        }
        "switching" | "switched" => {
            // Did the switch happen? The active file says so when there is
            // one; otherwise only `switched` (recorded after exit 0) does.
            let landed = match &ctx.config.active_file {
                Some(file) => active::read_file(file).ok() == Some(to),
                None => inc.state == "switched",
            };
            if !landed {
                let why = format!(
                    "interrupted while switching {from} -> {to}; the command's outcome is unknown and it was NOT run again: check which color serves traffic"
                );
                tracing::error!(
                    rollbackd.incident = inc.id,
                    message_id = message_id::FAILED,
                    "rollback failed: {why}"
                );
                store
                    .close_incident(inc.id, now_ms(), "failed", &why, None)
                    .await?;
                return Ok(Some(Outcome::Failed {
                    incident: inc.id,
                    why,
                }));
            }
            let latest = store.latest_deployment().await?;
            let active_dep = latest.clone().unwrap_or(Deployment {
                id: 0,
                color: from,
                version: inc.from_version.clone().unwrap_or_default(),
                at_ms: inc.opened_ms,
                source: "unknown".into(),
                quarantined: false,
            });
            let target = Deployment {
                id: 0,
                color: to,
                version: inc.to_version.clone().unwrap_or_else(|| "unknown".into()),
                at_ms: now_ms(),
                source: "rollback".into(),
                quarantined: false,
            };
            let req = Request {
                trigger: if inc.trigger_kind == "manual" {
                    Trigger::Manual
                } else {
                    Trigger::Automatic
                },
                severity: inc.severity,
                rule: inc.rule.clone(),
                reason: inc.reason.clone(),
                evidence: json!({}),
                since_ms: Some(inc.opened_ms),
            };
            let run = Run {
                ctx,
                id: inc.id,
                from,
                to,
                active_dep: Deployment {
                    color: from,
                    version: inc.from_version.clone().unwrap_or_default(),
                    ..active_dep
                },
                target_dep: Some(target.clone()),
                req,
            };
            store
                .add_incident_event(
                    inc.id,
                    now_ms(),
                    &inc.state,
                    "resumed after restart: the switch had landed",
                )
                .await?;
            let already_recorded = latest.is_some_and(|d| d.color == to && d.source == "rollback");
            if inc.state == "switched" || already_recorded {
                Ok(Some(run.verify_after().await?))
            } else {
                Ok(Some(
                    run.switched(target, "confirmed after restart".into())
                        .await?,
                ))
            }
        }
        other => {
            let why = format!("interrupted in unexpected state {other}");
            store
                .close_incident(inc.id, now_ms(), "failed", &why, None)
                .await?;
            Ok(Some(Outcome::Failed {
                incident: inc.id,
                why,
            }))
        }
    }
}
