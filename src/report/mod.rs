//! The post-deploy report: what a deployment's lifetime looked like, per
//! color and probe (samples, error rate, latency avg/p95), which rules
//! fired, and the active color's availability against the 99.9% target.
//! Built from stored samples, verdicts and incidents; rendered as text,
//! Markdown (with charts of error rate and latency per color) or JSON.
//! The daemon sends it (without the charts) through the notifiers once a
//! deployment has baked.

pub mod bake;
pub mod chart;
pub mod incident;

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::config::{Config, Scope};
use crate::model::{Color, Millis, Severity, format_ms, now_ms};
use crate::store::{Deployment, Store, StoreError};

/// The availability target of the service's operational plan.
pub const AVAILABILITY_TARGET: f64 = 99.9;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no deployment #{0}")]
    NoDeployment(i64),
    #[error("no deployment recorded yet: run `rollbackd deploy` first")]
    NoDeployments,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ProbeRow {
    /// `None` for a shared probe.
    pub color: Option<Color>,
    pub probe: String,
    pub samples: u64,
    pub failures: u64,
    pub error_rate_pct: Option<f64>,
    pub latency_avg_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FiredRule {
    pub at_ms: Millis,
    pub rule: String,
    pub severity: Severity,
    pub color: Color,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub service: String,
    pub deployment: Deployment,
    /// End of the period: the next deployment, or now.
    pub until_ms: Millis,
    pub rows: Vec<ProbeRow>,
    pub fired: Vec<FiredRule>,
    /// Percent of the active color's health samples that passed.
    pub availability_pct: Option<f64>,
    pub target_pct: f64,
    /// Health samples taken during a `rollbackd drill` (a fault injected on
    /// purpose): left out of availability.
    pub drill_samples: u64,
    /// Error rate and latency per color over the period, with the faults,
    /// decisions and switches of the period's incidents marked (Mermaid,
    /// `chart::Timeline::markdown`); empty without samples. Markdown only.
    #[serde(skip)]
    pub chart: String,
}

impl ProbeRow {
    /// The row as the text table and the Markdown table both show it.
    fn cells(&self) -> [String; 7] {
        [
            self.color.map(Color::as_str).unwrap_or("shared").to_owned(),
            self.probe.clone(),
            self.samples.to_string(),
            self.failures.to_string(),
            pct(self.error_rate_pct),
            ms(self.latency_avg_ms),
            ms(self.latency_p95_ms),
        ]
    }
}

impl Report {
    pub fn meets_target(&self) -> Option<bool> {
        self.availability_pct.map(|a| a >= self.target_pct)
    }

    fn availability_text(&self) -> String {
        let text = match (self.availability_pct, self.meets_target()) {
            (Some(a), Some(true)) => format!("{a:.3}% (target {}%: met)", self.target_pct),
            (Some(a), _) => format!("{a:.3}% (target {}%: MISSED)", self.target_pct),
            (None, _) => "no samples".into(),
        };
        match self.drill_samples {
            0 => text,
            n => format!("{text}; {n} sample(s) taken during drills left out"),
        }
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        let d = &self.deployment;
        let _ = writeln!(
            out,
            "deployment #{}: {} {} ({}), {} -> {}",
            d.id,
            d.color,
            d.version,
            d.source,
            format_ms(d.at_ms),
            format_ms(self.until_ms)
        );
        let _ = writeln!(out, "active color: {}", d.color);
        let _ = writeln!(out, "availability: {}", self.availability_text());
        let _ = writeln!(
            out,
            "{:<7} {:<16} {:>8} {:>8} {:>9} {:>11} {:>11}",
            "COLOR", "PROBE", "SAMPLES", "FAILED", "ERRORS", "AVG", "P95"
        );
        for r in &self.rows {
            let [color, probe, samples, failures, errors, avg, p95] = r.cells();
            let _ = writeln!(
                out,
                "{color:<7} {probe:<16} {samples:>8} {failures:>8} {errors:>9} {avg:>11} {p95:>11}"
            );
        }
        if self.fired.is_empty() {
            let _ = writeln!(out, "rules fired: none");
        } else {
            let _ = writeln!(out, "rules fired:");
            for f in &self.fired {
                let _ = writeln!(
                    out,
                    "  {} {:<8} {:<6} {} ({})",
                    format_ms(f.at_ms),
                    f.severity.as_str(),
                    f.color.as_str(),
                    f.rule,
                    f.detail
                );
            }
        }
        out
    }

    /// The Markdown report with its charts (`rollbackd report --markdown`).
    pub fn markdown(&self) -> String {
        let mut out = self.markdown_for_notice();
        if !self.chart.is_empty() {
            let _ = write!(out, "\n### Error rate and latency\n\n{}", self.chart);
        }
        out
    }

    /// The Markdown report without the charts: a chat notifier (Slack,
    /// Discord) would show a chart's source, not a picture.
    pub fn markdown_for_notice(&self) -> String {
        let mut out = String::new();
        let d = &self.deployment;
        let _ = writeln!(
            out,
            "## Post-deploy report: {} {} on {}\n",
            self.service, d.version, d.color
        );
        let _ = writeln!(
            out,
            "- **Deployment:** #{} ({}), {} → {}",
            d.id,
            d.source,
            format_ms(d.at_ms),
            format_ms(self.until_ms)
        );
        let _ = writeln!(out, "- **Active color:** {}", d.color);
        let _ = writeln!(out, "- **Availability:** {}", self.availability_text());
        let _ = writeln!(out, "- **Rules fired:** {}\n", self.fired.len());
        let _ = writeln!(
            out,
            "| color | probe | samples | failures | error rate | latency avg | latency p95 |\n|---|---|---:|---:|---:|---:|---:|"
        );
        for r in &self.rows {
            let _ = writeln!(out, "| {} |", r.cells().join(" | "));
        }
        if !self.fired.is_empty() {
            let _ = writeln!(
                out,
                "\n| time (UTC) | severity | color | rule | evidence |\n|---|---|---|---|---|"
            );
            for f in &self.fired {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} |",
                    format_ms(f.at_ms),
                    f.severity,
                    f.color,
                    f.rule,
                    f.detail.replace('|', "\\|")
                );
            }
        }
        out
    }
}

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}%")).unwrap_or_else(|| "–".into())
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}ms")).unwrap_or_else(|| "–".into())
}

/// The report of deployment `id`, or of the latest one.
pub async fn build(config: &Config, store: &Store, id: Option<i64>) -> Result<Report, ReportError> {
    let deployments = store.deployments().await?;
    let index = match id {
        Some(id) => deployments
            .iter()
            .position(|d| d.id == id)
            .ok_or(ReportError::NoDeployment(id))?,
        None => deployments
            .len()
            .checked_sub(1)
            .ok_or(ReportError::NoDeployments)?,
    };
    let deployment = deployments[index].clone();
    let until_ms = deployments
        .get(index + 1)
        .map(|d| d.at_ms)
        .unwrap_or_else(now_ms);
    let samples = store.samples_between(deployment.at_ms, until_ms).await?;
    let verdicts = store.verdicts_between(deployment.at_ms, until_ms).await?;
    let drills = store.drills_between(deployment.at_ms, until_ms).await?;
    let in_drill = |at: Millis| {
        drills
            .iter()
            .any(|d| d.started_ms <= at && at <= d.ended_ms.unwrap_or(d.deadline_ms))
    };
    let mut drill_samples = 0u64;

    #[derive(Default)]
    struct Acc {
        samples: u64,
        failures: u64,
        requests: f64,
        errors: f64,
        latencies: Vec<f64>,
    }
    let mut groups: BTreeMap<(Option<Color>, String), Acc> = BTreeMap::new();
    let health: Vec<&str> = config
        .probes
        .iter()
        .filter(|p| p.health && p.scope == Scope::PerColor)
        .map(|p| p.name.as_str())
        .collect();
    let per_color: Vec<&str> = config
        .probes
        .iter()
        .filter(|p| p.scope == Scope::PerColor)
        .map(|p| p.name.as_str())
        .collect();
    let judged: &[&str] = if health.is_empty() {
        &per_color
    } else {
        &health
    };
    let (mut up, mut seen) = (0u64, 0u64);
    for s in &samples {
        let acc = groups.entry((s.color, s.probe.clone())).or_default();
        acc.samples += 1;
        acc.failures += u64::from(!s.ok);
        if let Some((r, e)) = s.counts() {
            acc.requests += r;
            acc.errors += e;
        }
        acc.latencies.extend(s.latency_ms);
        if s.color == Some(deployment.color)
            && judged.contains(&s.probe.as_str())
            && s.counts().is_some()
        {
            if in_drill(s.at_ms) {
                drill_samples += 1;
                continue;
            }
            seen += 1;
            up += u64::from(s.ok);
        }
    }
    let rows = groups
        .into_iter()
        .map(|((color, probe), mut acc)| {
            let p95 = crate::model::p95(&mut acc.latencies);
            ProbeRow {
                color,
                probe,
                samples: acc.samples,
                failures: acc.failures,
                error_rate_pct: (acc.requests > 0.0).then(|| acc.errors / acc.requests * 100.0),
                latency_avg_ms: acc
                    .latencies
                    .iter()
                    .copied()
                    .collect::<crate::model::LatencyMean>()
                    .ms(),
                latency_p95_ms: p95,
            }
        })
        .collect();
    let mut timeline = crate::report::chart::Timeline::new(deployment.at_ms, until_ms);
    for s in &samples {
        timeline.add(s);
    }
    let mut incident_marks = 0;
    for inc in store.incidents().await? {
        if inc.opened_ms < deployment.at_ms || inc.opened_ms > until_ms {
            continue;
        }
        for e in store.incident_events(inc.id).await? {
            use crate::model::{EventKind, IncidentState};
            let kind = match e.state {
                EventKind::Detected => crate::report::chart::MarkKind::Fault,
                EventKind::State(IncidentState::Requested) => {
                    crate::report::chart::MarkKind::Decision
                }
                EventKind::State(IncidentState::Switched) => crate::report::chart::MarkKind::Switch,
                EventKind::State(_) => continue,
            };
            timeline.mark(e.at_ms, kind);
            incident_marks += 1;
        }
    }
    if incident_marks == 0 {
        // No rollback: the first Critical/High rule that fired is the
        // decision worth seeing (an alert, a held or refused rollback).
        if let Some(v) = verdicts
            .iter()
            .find(|v| v.state == crate::matrix::State::Fired && v.severity >= Severity::High)
        {
            timeline.mark(v.at_ms, crate::report::chart::MarkKind::Decision);
        }
    }
    let fired = verdicts
        .into_iter()
        .filter(|v| v.state == crate::matrix::State::Fired)
        .map(|v| FiredRule {
            at_ms: v.at_ms,
            rule: v.rule,
            severity: v.severity,
            color: v.color,
            detail: v.detail,
        })
        .collect();
    Ok(Report {
        service: config.service.clone(),
        deployment,
        until_ms,
        rows,
        fired,
        availability_pct: (seen > 0).then(|| up as f64 / seen as f64 * 100.0),
        target_pct: AVAILABILITY_TARGET,
        drill_samples,
        chart: timeline.markdown(),
    })
}
