//! `rollbackd status`: what an operator asks first.

use serde_json::json;

use super::open_read_only;
use crate::config::Config;
use crate::model::{Color, format_ms, format_value, now_ms};

pub async fn run(config: &Config, as_json: bool) -> anyhow::Result<()> {
    let store = open_read_only(config).await?;
    let now = now_ms();
    // Whether a daemon protects this state directory right now: without
    // one, nothing is armed whatever the database says.
    let daemon = crate::daemon::statelock::holder(&config.daemon.state_dir);
    // A read only: `status` records nothing, not even a cutover the
    // `[active] file` shows (the daemon does that).
    let active = crate::rollback::active::read(config, &store)
        .await
        .ok()
        .flatten();
    let verdicts = store.latest_verdicts().await?;
    let last_incident = store.incidents().await?.pop();
    // The pause and the cooldown as the daemon judges them, from the same
    // stored values (`guards::holds_at`).
    let holds = crate::rollback::guards::holds_at(
        store.active_pause(now).await?,
        store.cooldown_start_ms(config.daemon.dry_run).await?,
        config.rollback.cooldown,
        now,
    );
    let (pause, cooldown_until) = (holds.pause.as_ref(), holds.cooldown_until);
    let escalation = store.unresolved_escalation().await?;
    let uncertain = uncertain_active(&active, last_incident.as_ref());
    let standby = match &active {
        Some(a) => Some(standby_health(config, &store, a.color().other(), now).await?),
        None => None,
    };
    let protection = Protection::assess(
        config,
        daemon.is_some(),
        &holds,
        escalation.as_ref().map(|i| i.id),
    );
    if as_json {
        use crate::daemon::status::{
            ActiveDoc, DaemonDoc, DatabaseDoc, StatusDocument, VerdictDoc,
        };
        let doc = StatusDocument {
            service: config.service.clone(),
            version: env!("CARGO_PKG_VERSION"),
            daemon: match &daemon {
                Some(h) => DaemonDoc::running(h.pid, h.since_ms, now),
                None => DaemonDoc::default(),
            },
            protection: serde_json::to_value(&protection).ok(),
            active: active.as_ref().map(|a| ActiveDoc {
                color: a.color(),
                deployment: a.deployment().map(Into::into),
            }),
            standby: standby.as_ref().and_then(|s| serde_json::to_value(s).ok()),
            verdicts: verdicts.iter().map(VerdictDoc::from).collect(),
            pause: pause.map(Into::into),
            cooldown_until: cooldown_until.map(format_ms),
            escalation_hold: escalation.as_ref().map(|i| i.id),
            last_incident,
            database: DatabaseDoc {
                path: store.path().display().to_string(),
                size_bytes: store.size_bytes(),
                ..DatabaseDoc::default()
            },
            // The reference only (`env:NAME`, `file:/path`): never the URL.
            fleet: config.daemon.database.as_ref().map(|db| {
                serde_json::json!({
                    "host": config.daemon.host,
                    "database": db.to_string(),
                    // Which backend this answer came from (SPEC section 7).
                    "read_from": if store.reads_shared().is_some() { "shared" } else { "journal" },
                })
            }),
            config: config.path.display().to_string(),
            dry_run: config.daemon.dry_run,
            active_uncertain: uncertain.clone(),
            ..StatusDocument::default()
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    match &daemon {
        Some(h) => println!(
            "daemon: running (pid {}) since {}",
            h.pid,
            format_ms(h.since_ms)
        ),
        None => println!(
            "daemon: not running on {} — nothing is probed or rolled back automatically",
            config.daemon.state_dir.display()
        ),
    }
    match active.as_ref().map(|a| (a.color(), a.deployment())) {
        Some((c, None)) => {
            println!("active: {c} (the [active] file says so; no deployment recorded for it yet)")
        }
        Some((c, Some(d))) if uncertain.is_some() => println!(
            "active: uncertain — {} (last recorded: {c} version {}, deployment #{})",
            uncertain.as_deref().unwrap_or_default(),
            d.version,
            d.id
        ),
        Some((c, Some(d))) => println!(
            "active: {c} version {} since {} (deployment #{})",
            d.version,
            format_ms(d.at_ms),
            d.id
        ),
        None => println!("active: unknown (no deployment recorded)"),
    }
    if let Some(s) = &standby {
        println!("standby: {} {}", s.color, s.summary());
    }
    for line in &protection.lines {
        println!("automatic rollbacks: {line}");
    }
    println!("verdicts:");
    if verdicts.is_empty() {
        println!("  none yet");
    }
    let mut rows = Vec::new();
    for v in &verdicts {
        let rule = config.rules.iter().find(|r| r.name == v.rule);
        let show = |x: f64| match rule {
            Some(r) => format_value(r.condition.signal, x),
            None => format!("{x:.2}"),
        };
        let value = v.value.map(show).unwrap_or_else(|| "-".into());
        let window =
            humantime::format_duration(std::time::Duration::from_millis(v.window_ms.max(0) as u64));
        rows.push(vec![
            v.color.as_str().to_owned(),
            v.state.as_str().to_owned(),
            v.rule.clone(),
            value,
            show(v.threshold),
            v.n.to_string(),
            window.to_string(),
            format_ms(v.at_ms),
            v.detail.clone(),
        ]);
    }
    if !rows.is_empty() {
        use super::table::{Align, render};
        let table = render(
            &[
                "COLOR",
                "STATE",
                "RULE",
                "VALUE",
                "THRESHOLD",
                "N",
                "WINDOW",
                "SINCE",
                "DETAIL",
            ],
            &[
                Align::Left,
                Align::Left,
                Align::Left,
                Align::Right,
                Align::Right,
                Align::Right,
                Align::Left,
                Align::Left,
                Align::Left,
            ],
            &rows,
        );
        for line in table.lines() {
            println!("  {}", line.trim_end());
        }
    }
    match &last_incident {
        Some(i) => println!(
            "last incident: #{} {} {} -> {} {} ({}){}",
            i.id,
            i.severity,
            i.from_color.map(Color::as_str).unwrap_or("?"),
            i.to_color.map(Color::as_str).unwrap_or("?"),
            i.state,
            format_ms(i.opened_ms),
            // Why it ended so, e.g. which probe of the standby failed.
            i.outcome
                .as_deref()
                .map(|o| format!(" — {o}"))
                .unwrap_or_default()
        ),
        None => println!("last incident: none"),
    }
    println!(
        "database: {} ({} bytes)",
        store.path().display(),
        store.size_bytes()
    );
    if store.reads_shared().is_some() {
        println!(
            "read from: the shared database (this host's rows, as {})",
            config.daemon.host
        );
    }
    Ok(())
}

/// The standby's latest health samples: is there somewhere to roll back to?
#[derive(serde::Serialize)]
struct Standby {
    color: Color,
    /// `None` when no health sample arrived in the last five minutes.
    healthy: Option<bool>,
    probes: Vec<serde_json::Value>,
}

impl Standby {
    fn summary(&self) -> String {
        let state = match self.healthy {
            Some(true) => "healthy",
            Some(false) => "FAILING",
            None => "unknown (no recent health samples)",
        };
        let details: Vec<String> = self
            .probes
            .iter()
            .map(|p| {
                format!(
                    "{} {} {}",
                    p["probe"].as_str().unwrap_or(""),
                    p["status"].as_str().unwrap_or(""),
                    p["at"].as_str().unwrap_or("")
                )
            })
            .collect();
        if details.is_empty() {
            state.to_owned()
        } else {
            format!("{state} ({})", details.join("; "))
        }
    }
}

async fn standby_health(
    config: &Config,
    store: &crate::store::Store,
    color: Color,
    now: i64,
) -> anyhow::Result<Standby> {
    let mut probes = Vec::new();
    let mut healthy: Option<bool> = None;
    for p in config.probes.iter().filter(|p| p.health) {
        let recent = store
            .samples(Some(&p.name), Some(color), now - 5 * 60 * 1000)
            .await?;
        if let Some(last) = recent.last() {
            healthy = Some(healthy.unwrap_or(true) && last.ok);
            probes.push(json!({ "probe": p.name, "ok": last.ok, "status": last.status.as_str(), "at": format_ms(last.at_ms), "detail": last.detail }));
        }
    }
    Ok(Standby {
        color,
        healthy,
        probes,
    })
}

/// Why the active color is uncertain, if it is: the last rollback's switch
/// command started and was interrupted with nothing to tell where traffic
/// went (its incident closed `unknown`), and no deployment was recorded
/// since. The last recorded deployment is then not known to be serving.
fn uncertain_active(
    active: &Option<crate::rollback::active::Active>,
    last: Option<&crate::store::Incident>,
) -> Option<String> {
    let inc = last.filter(|i| i.state == crate::model::IncidentState::Unknown)?;
    if let Some(d) = active.as_ref().and_then(|a| a.deployment()) {
        if d.at_ms > inc.closed_ms.unwrap_or(inc.opened_ms) {
            return None;
        }
    }
    let color = |c: Option<Color>| c.map(|c| c.as_str()).unwrap_or("?");
    Some(format!(
        "rollback #{} ({} -> {}) was interrupted after its switch command started; {}",
        inc.id,
        color(inc.from_color),
        color(inc.to_color),
        crate::rollback::OUTCOME_UNKNOWN
    ))
}

/// What protection is really in force: whether a rollback would happen
/// now, on what, and every reason it would not. `lines` are the words
/// `status` prints after "automatic rollbacks: ".
#[derive(Debug, serde::Serialize)]
pub(crate) struct Protection {
    /// `armed`, `held` (a pause, a cooldown, an escalation), `none` (no
    /// daemon, a dry run, or no severity whose action is rollback).
    pub state: &'static str,
    /// The severities that would roll back once nothing holds them.
    pub rolls_back_on: Vec<&'static str>,
    pub lines: Vec<String>,
}

impl Protection {
    /// `holds` is what [`crate::rollback::guards::holds_at`] says: the
    /// pause and cooldown are judged there, only worded here.
    pub(crate) fn assess(
        config: &Config,
        daemon_running: bool,
        holds: &crate::rollback::guards::Holds,
        escalation: Option<i64>,
    ) -> Protection {
        use crate::model::{Action, Severity};
        let rolls_back_on: Vec<&'static str> = [
            Severity::Critical,
            Severity::High,
            Severity::Medium,
            Severity::Low,
        ]
        .into_iter()
        .filter(|s| config.actions.for_severity(*s) == Action::Rollback)
        .map(Severity::as_str)
        .collect();
        let mut none = Vec::new();
        if !daemon_running {
            none.push("none (no daemon running)".to_owned());
        }
        if config.daemon.dry_run {
            none.push("none (dry run: decides and alerts, never switches)".to_owned());
        }
        if rolls_back_on.is_empty() {
            none.push("none (no severity's action is rollback: alerts only)".to_owned());
        }
        let mut held = Vec::new();
        if let Some(p) = &holds.pause {
            held.push(format!(
                "paused until {}: {}",
                format_ms(p.until_ms),
                p.reason
            ));
        }
        if let Some(id) = escalation {
            held.push(format!(
                "held by escalated incident #{id} until a deployment is recorded"
            ));
        }
        if let Some(until) = holds.cooldown_until {
            held.push(format!("in cooldown until {}", format_ms(until)));
        }
        let state = if !none.is_empty() {
            "none"
        } else if !held.is_empty() {
            "held"
        } else {
            "armed"
        };
        let mut lines = none;
        lines.extend(held);
        if lines.is_empty() {
            lines.push(format!("armed on {}", rolls_back_on.join(", ")));
        }
        Protection {
            state,
            rolls_back_on,
            lines,
        }
    }
}
