//! `rollbackd incidents` and `incident show N [--json|--markdown]`: the
//! record of every rollback (or refused one) as text, JSON, or a Markdown
//! report an on-call engineer pastes into a post-mortem (written by
//! `report::incident`, which `demo` shares). This file only renders what
//! `store` holds; it changes nothing.

use serde_json::{Value, json};

use super::{NotFound, open_read_only};
use crate::config::Config;
use crate::model::{EventKind, IncidentState, format_ms};
use crate::report::incident::{
    self, color, downtime, evidence_line, label, precise, short_duration, version,
};
use crate::store::{Incident, IncidentEvent, StoreError};

pub async fn list(config: &Config, as_json: bool) -> anyhow::Result<()> {
    let list = open_read_only(config).await?.incidents().await?;
    if as_json {
        let doc = super::with_rfc3339_times(serde_json::to_value(&list)?);
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    if list.is_empty() {
        println!("no incidents");
        return Ok(());
    }
    use super::table::{Align, render};
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            vec![
                format!("#{}", i.id),
                format_ms(i.opened_ms),
                i.severity.as_str().to_owned(),
                i.trigger_kind.as_str().to_owned(),
                format!("{} -> {}", color(i.from_color), color(i.to_color)),
                i.state.as_str().to_owned(),
                i.downtime_ms
                    .map(short_duration)
                    .unwrap_or_else(|| "-".into()),
                i.reason.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        render(
            &[
                "ID", "OPENED", "SEVERITY", "TRIGGER", "SWITCH", "OUTCOME", "DOWNTIME", "REASON"
            ],
            &[
                Align::Left,
                Align::Left,
                Align::Left,
                Align::Left,
                Align::Left,
                Align::Left,
                Align::Right,
                Align::Left
            ],
            &rows,
        )
    );
    Ok(())
}

pub async fn show(config: &Config, id: i64, as_json: bool, markdown: bool) -> anyhow::Result<()> {
    let store = open_read_only(config).await?;
    let inc = match store.incident(id).await {
        Ok(i) => i,
        Err(StoreError::NoIncident(_)) => {
            return Err(NotFound(format!("no incident #{id} (see `rollbackd incidents`)")).into());
        }
        Err(e) => return Err(e.into()),
    };
    let events = store.incident_events(id).await?;
    let chart = if markdown {
        Some(incident::chart(&store, &inc, &events).await?)
    } else {
        None
    };
    print_incident(
        &config.service,
        None,
        &inc,
        &events,
        as_json,
        chart.as_deref(),
    )
}

/// One incident as `incident show` prints it: JSON, Markdown (when
/// `chart` is given) or text. `host` names another host of the fleet whose
/// incident this is (`--all-hosts`); `None` for this host's own.
pub fn print_incident(
    service: &str,
    host: Option<&str>,
    inc: &Incident,
    events: &[IncidentEvent],
    as_json: bool,
    chart: Option<&str>,
) -> anyhow::Result<()> {
    if as_json {
        let evidence: Value = serde_json::from_str(&inc.evidence).unwrap_or(json!(inc.evidence));
        let mut doc = json!({
            "incident": inc,
            "evidence": evidence,
            "timeline": events,
            "milestones": milestones(events),
        });
        if let Some(host) = host {
            doc["host"] = json!(host);
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&super::with_rfc3339_times(doc))?
        );
        return Ok(());
    }
    if let Some(chart) = chart {
        let service = match host {
            Some(h) => format!("{service} on host {h}"),
            None => service.to_owned(),
        };
        print!("{}", incident::markdown(&service, inc, events, chart));
        return Ok(());
    }
    println!(
        "incident #{}{} ({}, {})",
        inc.id,
        host.map(|h| format!(" on host {h}")).unwrap_or_default(),
        inc.severity,
        inc.trigger_kind
    );
    println!("  reason:   {}", inc.reason);
    if let Some(rule) = &inc.rule {
        println!("  rule:     {rule}");
    }
    println!(
        "  from:     {} ({})",
        color(inc.from_color),
        version(&inc.from_version)
    );
    println!(
        "  to:       {} ({})",
        color(inc.to_color),
        version(&inc.to_version)
    );
    println!("  state:    {}", inc.state);
    println!(
        "  outcome:  {}",
        inc.outcome.clone().unwrap_or_else(|| "in progress".into())
    );
    println!("  downtime: {}", downtime(inc));
    println!("  evidence: {}", evidence_line(&inc.evidence));
    println!("timeline (UTC):");
    for e in events {
        println!(
            "  {}  {:<20} {}",
            precise(e.at_ms),
            label(e.state),
            e.message
        );
    }
    Ok(())
}

/// The timeline's milestones for JSON readers: detected, rollback
/// initiated, completed (traffic moved), validated; each a point in time
/// (RFC 3339 with milliseconds) or `null` when the timeline never got
/// there.
fn milestones(events: &[IncidentEvent]) -> Value {
    let first = |state: EventKind| -> Option<String> {
        events
            .iter()
            .find(|e| e.state == state)
            .map(|e| format_ms(e.at_ms))
    };
    json!({
        "detected": first(EventKind::Detected),
        "initiated": first(IncidentState::Requested.into()),
        "completed": first(IncidentState::Switched.into()),
        "validated": first(IncidentState::Verified.into()),
    })
}
