//! A notice: one notification, independent of its wire format — what
//! happened ([`Event`]), where it stands in the life of what it names
//! ([`Phase`]), and its fields. Shared vocabulary: rollbacks, the daemon
//! and the bake check make notices, `notifier` delivers them, and a
//! notification template (`config::template`) is checked against sample
//! notices when the configuration loads.

use serde::Serialize;

use super::{Color, Millis, Severity, now_ms};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    RollbackStarted,
    RollbackCompleted,
    RollbackFailed,
    RollbackRefused,
    RollbackEscalated,
    /// dry_run: the rollback that would have run.
    RollbackDryRun,
    /// A rule asked for a rollback, but a pause, the cooldown or an
    /// escalation holds automatic rollbacks.
    RollbackHeld,
    /// A rule whose action is `alert` fired.
    Alert,
    /// A rule that was notified about is clear again.
    Recovered,
    /// A deployment stayed healthy for `[rollback] bake`: its post-deploy
    /// report. Sent to every target, whatever its `min_severity`.
    DeployReport,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::RollbackStarted => "rollback started",
            Event::RollbackCompleted => "rollback completed",
            Event::RollbackFailed => "rollback failed",
            Event::RollbackRefused => "rollback refused",
            Event::RollbackEscalated => "rollback escalated",
            Event::RollbackDryRun => "dry run: would roll back",
            Event::RollbackHeld => "rollback held",
            Event::Alert => "alert",
            Event::Recovered => "recovered",
            Event::DeployReport => "post-deploy report",
        }
    }

    /// Whether this event opens something, closes it, or only informs.
    pub fn phase(self) -> Phase {
        match self {
            Event::RollbackStarted | Event::Alert | Event::RollbackHeld => Phase::Open,
            Event::RollbackCompleted
            | Event::RollbackFailed
            | Event::RollbackRefused
            | Event::RollbackEscalated
            | Event::RollbackDryRun
            | Event::Recovered => Phase::Close,
            Event::DeployReport => Phase::Info,
        }
    }
}

/// Where a notice stands in the life of what its key names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// A rollback started, a rule fired (alert, held rollback).
    Open,
    /// The incident ended (verified, failed, refused, escalated, dry run),
    /// or the rule is clear again.
    Close,
    /// Neither: a post-deploy report.
    Info,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Open => "open",
            Phase::Close => "close",
            Phase::Info => "info",
        }
    }
}

/// One notification, independent of its wire format.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Notice {
    pub event: Event,
    pub severity: Severity,
    pub service: String,
    /// One line, plain words.
    pub summary: String,
    /// More, if there is more to say.
    pub detail: String,
    pub incident: Option<i64>,
    pub rule: Option<String>,
    pub color: Option<Color>,
    pub from: Option<Color>,
    pub to: Option<Color>,
    pub version: Option<String>,
    /// The version being left (a rollback's broken release).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_version: Option<String>,
    pub at_ms: Millis,
    /// The `rollbackd drill` this notice comes from (sent with `--notify`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drill: Option<i64>,
}

impl Notice {
    pub fn new(event: Event, severity: Severity, service: &str, summary: String) -> Notice {
        Notice {
            event,
            severity,
            service: service.to_owned(),
            summary,
            detail: String::new(),
            incident: None,
            rule: None,
            color: None,
            from: None,
            to: None,
            version: None,
            from_version: None,
            at_ms: now_ms(),
            drill: None,
        }
    }

    /// What this notice is about, the same for what opens and what closes
    /// it: the incident, else the rule on its color, else the event.
    pub fn key(&self) -> String {
        match (self.incident, &self.rule, self.event) {
            (Some(id), _, _) => format!("rollbackd/{}/incident/{id}", self.service),
            (None, Some(rule), _) => format!(
                "rollbackd/{}/rule/{rule}/{}",
                self.service,
                self.color.map(Color::as_str).unwrap_or("shared")
            ),
            (None, None, Event::DeployReport) => format!(
                "rollbackd/{}/deploy/{}",
                self.service,
                self.version.as_deref().unwrap_or("unknown")
            ),
            (None, None, e) => format!("rollbackd/{}/{}/{}", self.service, e.as_str(), self.at_ms),
        }
    }

    pub fn phase(&self) -> Phase {
        self.event.phase()
    }

    pub fn headline(&self) -> String {
        format!(
            "{}[{}] {}: {} — {}",
            if self.drill.is_some() { "DRILL " } else { "" },
            self.severity.as_str().to_uppercase(),
            self.service,
            self.event.as_str(),
            self.summary
        )
    }
}
