//! The one status document: what `rollbackd status --json` prints and what
//! the daemon's `/status` serves, the same serde struct for both (SPEC 5:
//! "the same document as `status --json`").
//!
//! The two fill it from different places. `status --json` reads the
//! database (the daemon need not run) and leaves the daemon's own view
//! (`healthy`, `problems`, `status`, `work_loop`, ...) `null`. `/status`
//! answers from the loop's snapshot and never queries the database (it must
//! answer during a storage fault), so what only the database knows
//! (`protection`, `pause`, `cooldown_until`, `escalation_hold`,
//! `last_incident`, `standby`, the active deployment) is `null` there. Every
//! time is RFC 3339 with milliseconds in UTC; durations are `_ms` numbers.

use serde::Serialize;

use crate::model::{Color, Millis, Severity, format_ms};

#[derive(Debug, Default, Serialize)]
pub struct StatusDocument {
    pub service: String,
    /// This rollbackd's version.
    pub version: &'static str,
    pub daemon: DaemonDoc,
    /// What protection is in force (`status --json` only).
    pub protection: Option<serde_json::Value>,
    pub active: Option<ActiveDoc>,
    /// Why the active color is uncertain (an interrupted switch with
    /// nothing to tell where traffic went), when it is.
    pub active_uncertain: Option<String>,
    pub standby: Option<serde_json::Value>,
    pub verdicts: Vec<VerdictDoc>,
    pub pause: Option<PauseDoc>,
    pub cooldown_until: Option<String>,
    /// The escalated incident holding automatic rollbacks.
    pub escalation_hold: Option<i64>,
    /// Its times (`opened`, `closed`, evidence's `at`) as every time here.
    #[serde(serialize_with = "incident_with_rfc3339_times")]
    pub last_incident: Option<crate::store::Incident>,
    pub database: DatabaseDoc,
    /// With a shared database (SPEC section 7): this host's name, the
    /// database's reference (never its URL) and, from the daemon, its
    /// leadership and what it holds for the database.
    pub fleet: Option<serde_json::Value>,
    pub config: String,
    pub dry_run: bool,
    // The daemon's own view: `/status` only.
    pub healthy: Option<bool>,
    pub problems: Option<Vec<String>>,
    /// The systemd `STATUS=` line.
    pub status: Option<String>,
    pub rollback_in_flight: Option<bool>,
    pub stopping: Option<bool>,
    pub probes: Option<serde_json::Value>,
    pub last_reload: Option<serde_json::Value>,
    pub work_loop: Option<serde_json::Value>,
}

/// An incident as the store serializes it, its points in time in RFC 3339.
fn incident_with_rfc3339_times<S: serde::Serializer>(
    incident: &Option<crate::store::Incident>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let value = serde_json::to_value(incident).map_err(serde::ser::Error::custom)?;
    crate::model::with_rfc3339_times(value).serialize(s)
}

#[derive(Debug, Default, Serialize)]
pub struct DaemonDoc {
    pub running: bool,
    pub pid: Option<u32>,
    pub since: Option<String>,
    pub uptime_seconds: Option<i64>,
}

impl DaemonDoc {
    pub fn running(pid: u32, since_ms: Millis, now_ms: Millis) -> DaemonDoc {
        DaemonDoc {
            running: true,
            pid: Some(pid),
            since: Some(format_ms(since_ms)),
            uptime_seconds: Some((now_ms - since_ms).max(0) / 1000),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ActiveDoc {
    pub color: Color,
    pub deployment: Option<DeploymentDoc>,
}

#[derive(Debug, Serialize)]
pub struct DeploymentDoc {
    pub id: i64,
    pub version: String,
    pub at: String,
    pub source: String,
    pub quarantined: bool,
}

impl From<&crate::store::Deployment> for DeploymentDoc {
    fn from(d: &crate::store::Deployment) -> Self {
        DeploymentDoc {
            id: d.id,
            version: d.version.clone(),
            at: format_ms(d.at_ms),
            source: d.source.clone(),
            quarantined: d.quarantined,
        }
    }
}

/// One rule's latest verdict on one color.
#[derive(Debug, Serialize)]
pub struct VerdictDoc {
    pub at: String,
    pub rule: String,
    pub severity: Severity,
    pub color: Color,
    pub state: String,
    pub n: u64,
    pub value: Option<f64>,
    pub threshold: f64,
    pub window_ms: i64,
    pub baseline: Option<f64>,
    pub detail: String,
}

impl From<&crate::matrix::Verdict> for VerdictDoc {
    fn from(v: &crate::matrix::Verdict) -> Self {
        VerdictDoc {
            at: format_ms(v.at_ms),
            rule: v.rule.clone(),
            severity: v.severity,
            color: v.color,
            state: v.state.as_str().to_owned(),
            n: v.n,
            value: v.value,
            threshold: v.threshold,
            window_ms: v.window_ms,
            baseline: v.baseline,
            detail: v.detail.clone(),
        }
    }
}

impl From<&crate::store::StoredVerdict> for VerdictDoc {
    fn from(v: &crate::store::StoredVerdict) -> Self {
        VerdictDoc {
            at: format_ms(v.at_ms),
            rule: v.rule.clone(),
            severity: v.severity,
            color: v.color,
            state: v.state.as_str().to_owned(),
            n: v.n.max(0) as u64,
            value: v.value,
            threshold: v.threshold,
            window_ms: v.window_ms,
            baseline: v.baseline,
            detail: v.detail.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct PauseDoc {
    pub id: i64,
    pub since: String,
    pub until: String,
    pub reason: String,
}

impl From<&crate::store::Pause> for PauseDoc {
    fn from(p: &crate::store::Pause) -> Self {
        PauseDoc {
            id: p.id,
            since: format_ms(p.at_ms),
            until: format_ms(p.until_ms),
            reason: p.reason.clone(),
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct DatabaseDoc {
    pub path: String,
    pub size_bytes: u64,
    // The daemon's view of its writes: `/status` only.
    pub writable: Option<bool>,
    pub error: Option<String>,
    pub ok: Option<bool>,
    pub kept_records: Option<usize>,
    pub failed_writes: Option<u64>,
    pub file_problem: Option<String>,
}
