//! One incident as words for people: the post-mortem Markdown report
//! (`incident show --markdown`, the demo's report), its one-sentence
//! summary, its charts, and the small formatters the incident listing
//! shares. Renders what `store` holds; no SQL, no writes.

use std::time::Duration;

use serde_json::{Value, json};

use crate::model::{Color, EventKind, IncidentState, Millis, Signal, format_ms, format_value};
use crate::store::{Incident, IncidentEvent, StoreError};

/// How much of the time around an incident its chart shows: before the
/// fault (what normal looked like) and after it closed (that it held).
const CHART_MARGIN_MS: Millis = 30_000;

/// The incident's charts (`chart::Timeline::markdown`): both colors' error
/// rate and latency from shortly before the fault until shortly after the
/// end (or now), with the fault (`detected`), the decision (`requested`)
/// and the switch (`switched`) marked. Starts at the first stored sample
/// of that time, so a daemon started just before is not a flat line.
pub async fn chart(
    store: &crate::store::Store,
    inc: &Incident,
    events: &[IncidentEvent],
) -> Result<String, StoreError> {
    let (from, until) = chart_span(inc, events);
    let samples = store.samples_between(from, until).await?;
    Ok(chart_of(&samples, inc, events))
}

/// The first and last moments of an incident: its opening or first event,
/// and its close (or now) or last event.
fn incident_bounds(inc: &Incident, events: &[IncidentEvent]) -> (Millis, Millis) {
    let first = events
        .iter()
        .map(|e| e.at_ms)
        .min()
        .unwrap_or(inc.opened_ms)
        .min(inc.opened_ms);
    let now = crate::model::now_ms();
    let last = events
        .iter()
        .map(|e| e.at_ms)
        .max()
        .unwrap_or(inc.opened_ms)
        .max(inc.closed_ms.unwrap_or(now));
    (first, last)
}

/// The samples an incident's chart reads: `[from, until)`.
pub fn chart_span(inc: &Incident, events: &[IncidentEvent]) -> (Millis, Millis) {
    let (first, last) = incident_bounds(inc, events);
    (
        first - CHART_MARGIN_MS,
        (last + CHART_MARGIN_MS).min(crate::model::now_ms()),
    )
}

/// [`chart`] drawn from `samples`, the ones [`chart_span`] names (this
/// host's journal, or a host's rows in the shared database).
pub fn chart_of(
    samples: &[crate::model::Sample],
    inc: &Incident,
    events: &[IncidentEvent],
) -> String {
    let (first, last) = incident_bounds(inc, events);
    let (from, until) = chart_span(inc, events);
    let start = samples
        .iter()
        .map(|s| s.at_ms)
        .min()
        .unwrap_or(from)
        .min(first);
    let mut timeline = crate::report::chart::Timeline::new(start, until.max(last));
    for s in samples {
        timeline.add(s);
    }
    for (state, kind) in [
        (EventKind::Detected, crate::report::chart::MarkKind::Fault),
        (
            IncidentState::Requested.into(),
            crate::report::chart::MarkKind::Decision,
        ),
        (
            IncidentState::Switched.into(),
            crate::report::chart::MarkKind::Switch,
        ),
    ] {
        if let Some(e) = events.iter().find(|e| e.state == state) {
            timeline.mark(e.at_ms, kind);
        }
    }
    timeline.markdown()
}

/// The post-mortem starter: summary, severity, timeline, the charts
/// ([`chart`], empty for none), evidence, a root-cause placeholder
/// and the resolution.
pub fn markdown(service: &str, inc: &Incident, events: &[IncidentEvent], chart: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let kind = inc.trigger_kind.as_str();
    let _ = writeln!(
        out,
        "# Incident #{}: {} {} rollback of {service}\n",
        inc.id, inc.severity, kind
    );
    let _ = writeln!(out, "## Summary\n");
    let _ = writeln!(out, "{}\n", summary(service, inc, events));
    let _ = writeln!(out, "| | |\n|---|---|");
    let _ = writeln!(out, "| **Severity** | {} |", inc.severity);
    let _ = writeln!(
        out,
        "| **Trigger** | {kind}{} |",
        inc.rule
            .as_deref()
            .map(|r| format!(": `{}`", md(r)))
            .unwrap_or_default()
    );
    let _ = writeln!(out, "| **Reason** | {} |", md(&inc.reason));
    let _ = writeln!(
        out,
        "| **From** | {} (`{}`) |",
        color(inc.from_color),
        md(&version(&inc.from_version))
    );
    let _ = writeln!(
        out,
        "| **To** | {} (`{}`) |",
        color(inc.to_color),
        md(&version(&inc.to_version))
    );
    let _ = writeln!(out, "| **Outcome** | {} |", inc.state);
    let _ = writeln!(out, "| **Measured downtime** | {} |", downtime(inc));
    let _ = writeln!(out, "| **Opened** | {} |", format_ms(inc.opened_ms));
    if let Some(c) = inc.closed_ms {
        let _ = writeln!(out, "| **Closed** | {} |", format_ms(c));
    }
    let _ = writeln!(out, "\n## Timeline (UTC)\n");
    let _ = writeln!(out, "| time | step | event |\n|---|---|---|");
    for e in events {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            precise(e.at_ms),
            label(e.state),
            md(&e.message)
        );
    }
    if !chart.is_empty() {
        let _ = write!(out, "\n## Error rate and latency\n\n{chart}");
    }
    let _ = writeln!(out, "\n## Evidence\n");
    let _ = writeln!(out, "{}\n", md(&evidence_line(&inc.evidence)));
    let pretty = serde_json::from_str::<Value>(&inc.evidence)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| inc.evidence.clone());
    let _ = writeln!(out, "```json\n{pretty}\n```");
    let _ = writeln!(out, "\n## Root cause\n");
    let _ = writeln!(
        out,
        "_To be filled in by the on-call engineer: what changed in `{}`, why the checks caught it, why it was not caught before the cutover._",
        md(&version(&inc.from_version))
    );
    let _ = writeln!(out, "\n## Resolution\n");
    let _ = writeln!(
        out,
        "{}",
        md(&inc
            .outcome
            .clone()
            .unwrap_or_else(|| "_Rollback still in progress._".into()))
    );
    let _ = writeln!(out, "\n## Follow-up\n\n- [ ] ");
    out
}

pub fn summary(service: &str, inc: &Incident, events: &[IncidentEvent]) -> String {
    let from = format!(
        "{} (`{}`)",
        color(inc.from_color),
        md(&version(&inc.from_version))
    );
    let to = format!(
        "{} (`{}`)",
        color(inc.to_color),
        md(&version(&inc.to_version))
    );
    let detected = events
        .iter()
        .find(|e| e.state == EventKind::Detected)
        .map(|e| format!(" {from} started failing at {}.", precise(e.at_ms)))
        .unwrap_or_default();
    let start = match &inc.rule {
        Some(r) => format!(
            "Rule `{}` fired on {service} {from}; rollbackd rolled back automatically.",
            md(r)
        ),
        None => format!(
            "An operator rolled back {service} {from}: {}.",
            md(inc.reason.trim_end_matches('.'))
        ),
    };
    let end = match inc.state {
        IncidentState::Verified => format!(
            "Traffic moved to {to}, which passed its health probes{}.",
            inc.downtime_ms
                .map(|d| format!("; measured downtime {}", short_duration(d)))
                .unwrap_or_default()
        ),
        IncidentState::Escalated => format!(
            "Traffic moved to {to}, but it did not pass its health probes in time: escalated, no further automatic switch."
        ),
        IncidentState::Refused => format!("The switch to {to} was refused; {from} kept serving."),
        IncidentState::Failed => {
            "The rollback failed; the timeline shows where it stopped.".to_owned()
        }
        IncidentState::Unknown => format!(
            "The switch command to {to} started but was interrupted: its outcome is unknown — check the proxy."
        ),
        IncidentState::DryRun => format!("Dry run: traffic would have moved to {to}."),
        other @ (IncidentState::Requested
        | IncidentState::TargetVerified
        | IncidentState::Switching
        | IncidentState::Switched) => format!("The rollback is in progress (state {other})."),
    };
    format!("{start}{detected} {end}")
}

/// What each state means on a timeline.
pub(crate) fn label(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Detected => "detected",
        EventKind::State(state) => match state {
            IncidentState::Requested => "rollback initiated",
            IncidentState::TargetVerified => "target verified",
            IncidentState::Switched => "rollback completed",
            IncidentState::Verified => "validated",
            IncidentState::Switching
            | IncidentState::Escalated
            | IncidentState::Refused
            | IncidentState::Failed
            | IncidentState::DryRun
            | IncidentState::Unknown => state.as_str(),
        },
    }
}

/// The verdict evidence in one line, when it is a verdict.
pub(crate) fn evidence_line(evidence: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(evidence) else {
        return evidence.to_owned();
    };
    if v.get("manual").is_some() {
        return format!(
            "manual rollback{}: {}",
            v["user"]
                .as_str()
                .filter(|u| !u.is_empty())
                .map(|u| format!(" by {u}"))
                .unwrap_or_default(),
            v["reason"].as_str().unwrap_or("")
        );
    }
    let (Some(rule), Some(color)) = (v["rule"].as_str(), v["color"].as_str()) else {
        return evidence.to_owned();
    };
    let signal: Option<Signal> = serde_json::from_value(v["signal"].clone()).ok();
    let fmt = |x: &Value| match (x.as_f64(), signal) {
        (Some(x), Some(s)) => format_value(s, x),
        (Some(x), None) => format!("{x}"),
        _ => "-".into(),
    };
    format!(
        "`{rule}` {} on {color} at {}: value {} against threshold {} over {} samples in a {} window{}{}",
        v["state"].as_str().unwrap_or("fired"),
        v["at_ms"].as_i64().map(format_ms).unwrap_or_default(),
        fmt(&v["value"]),
        fmt(&v["threshold"]),
        v["n"],
        v["window_ms"]
            .as_i64()
            .map(short_duration)
            .unwrap_or_else(|| "?".into()),
        v["baseline"]
            .as_f64()
            .map(|b| format!(" (baseline {})", fmt(&json!(b))))
            .unwrap_or_default(),
        v["detail"]
            .as_str()
            .filter(|d| !d.is_empty())
            .map(|d| format!("; {d}"))
            .unwrap_or_default(),
    )
}

pub(crate) fn downtime(inc: &Incident) -> String {
    match inc.downtime_ms {
        Some(d) => format!("{} (from detection to validation)", short_duration(d)),
        None => "not measured".into(),
    }
}

pub(crate) fn short_duration(ms: Millis) -> String {
    let ms = ms.max(0) as u64;
    // Whole seconds read better; sub-second ones keep their millis.
    let d = if ms >= 1000 {
        Duration::from_secs(ms.div_ceil(1000))
    } else {
        Duration::from_millis(ms)
    };
    humantime::format_duration(d).to_string()
}

/// A timeline time: steps are often within one second of each other.
pub(crate) fn precise(ms: Millis) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

pub(crate) fn color(c: Option<Color>) -> &'static str {
    c.map(Color::as_str).unwrap_or("?")
}

pub(crate) fn version(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "?".into())
}

/// Text safe inside a Markdown table cell.
fn md(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}
