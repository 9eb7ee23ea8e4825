//! `rollbackd gate`: before a cutover, probe a color for a while with the
//! configured probes, run the matrix over what was seen, and say pass or
//! fail. Uses the daemon's own probe scheduler and matrix engine, so the
//! gate judges exactly as the daemon would; it writes nothing to the
//! database, so it runs the same with the daemon up or down.
//!
//! Both colors and the shared probes are probed, as the daemon does, so the
//! matrix can tell a broken color from a blind watchdog; only the gated
//! color is judged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::Config;
use crate::daemon::{DeploymentIds, spawn_probes, stop_probes};
use crate::matrix::{Engine, State, Verdict};
use crate::model::{Color, Sample, Severity, Signal, format_value, now_ms};
use crate::probe::Prober;

/// What one probe saw of the gated color.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProbeStats {
    pub samples: u64,
    pub failures: u64,
    pub latencies: Vec<f64>,
}

impl ProbeStats {
    pub fn avg_ms(&self) -> Option<f64> {
        (!self.latencies.is_empty())
            .then(|| self.latencies.iter().sum::<f64>() / self.latencies.len() as f64)
    }

    pub fn p95_ms(&self) -> Option<f64> {
        crate::model::p95(&mut self.latencies.clone())
    }
}

/// Live progress, reported about four times a second.
#[derive(Clone, Debug)]
pub struct Progress {
    pub elapsed: Duration,
    pub total: Duration,
    pub samples: u64,
    pub failures: u64,
    /// The worst verdict fired so far on the gated color.
    pub worst: Option<Verdict>,
}

#[derive(Clone, Debug)]
pub struct GateResult {
    pub service: String,
    pub color: Color,
    pub duration: Duration,
    pub probes: BTreeMap<String, ProbeStats>,
    /// The final verdict of every rule for the gated color.
    pub verdicts: Vec<Verdict>,
    /// Every Critical/High rule that fired at any point during the gate.
    pub fired: Vec<Verdict>,
    /// Why the gate fails, or empty when it passes.
    pub reasons: Vec<String>,
}

impl GateResult {
    pub fn passed(&self) -> bool {
        self.reasons.is_empty()
    }

    /// Critical/High rules still inconclusive at the end, with why. They do
    /// not fail the gate (degradation has no baseline before a cutover, a
    /// short gate cannot fill a 5-minute window) but the summary says so.
    pub fn unjudged(&self) -> Vec<String> {
        self.verdicts
            .iter()
            .filter(|v| {
                v.severity >= Severity::High
                    && v.state == State::Inconclusive
                    && v.signal != Signal::HealthFailures
            })
            .map(|v| format!("{} ({})", v.rule, v.detail))
            .collect()
    }

    /// A Markdown summary for a CI step summary.
    pub fn markdown(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        let _ = writeln!(
            out,
            "## rollbackd gate: {} {} — {verdict}\n",
            self.service, self.color
        );
        let total: u64 = self.probes.values().map(|p| p.samples).sum();
        let _ = writeln!(
            out,
            "Probed **{}** for {} ({total} samples) with the configured probes and decision matrix.\n",
            self.color,
            humantime::format_duration(self.duration)
        );
        let _ = writeln!(
            out,
            "| probe | samples | failures | avg latency | p95 latency |\n|---|---:|---:|---:|---:|"
        );
        let ms = |v: Option<f64>| {
            v.map(|v| format!("{v:.1} ms"))
                .unwrap_or_else(|| "–".into())
        };
        for (name, s) in &self.probes {
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} |",
                s.samples,
                s.failures,
                ms(s.avg_ms()),
                ms(s.p95_ms())
            );
        }
        let _ = writeln!(
            out,
            "\n| severity | rule | verdict | value | samples |\n|---|---|---|---:|---:|"
        );
        for v in &self.verdicts {
            let fired_during = self.fired.iter().any(|f| f.rule == v.rule);
            let state = if fired_during && v.state != State::Fired {
                "fired (cleared)"
            } else {
                v.state.as_str()
            };
            let value = v
                .value
                .map(|x| format_value(v.signal, x))
                .unwrap_or_else(|| "–".into());
            let _ = writeln!(
                out,
                "| {} | {} | {state} | {value} | {} |",
                v.severity, v.rule, v.n
            );
        }
        let unjudged = self.unjudged();
        if !unjudged.is_empty() {
            let _ = writeln!(
                out,
                "\n**Not judged** (inconclusive at the end; a longer `--for` would judge them): {}",
                unjudged.join("; ")
            );
        }
        if self.passed() {
            let _ = writeln!(
                out,
                "\n**Result: PASS** — no Critical or High rule fired on {}.",
                self.color
            );
        } else {
            let _ = writeln!(out, "\n**Result: FAIL**");
            for r in &self.reasons {
                let _ = writeln!(out, "- {r}");
            }
        }
        out
    }
}

/// Probe for `duration`, then judge `color`. `progress` is called about
/// four times a second.
pub async fn run(
    config: Arc<Config>,
    color: Color,
    duration: Duration,
    mut progress: impl FnMut(&Progress),
) -> GateResult {
    let prober = Prober::new();
    let (sample_tx, mut sample_rx) = mpsc::channel::<Sample>(1024);
    // The gate records nothing, so samples carry no deployment.
    let (_deploy_tx, deploy_rx) = watch::channel(DeploymentIds::new());
    let tasks = spawn_probes(&config, &prober, &sample_tx, &deploy_rx);
    drop(sample_tx);

    let mut engine = Engine::new(&config);
    let mut transitions = crate::probe::Transitions::default();
    let mut probes: BTreeMap<String, ProbeStats> = config
        .probes
        .iter()
        .filter(|p| p.scope == crate::config::Scope::PerColor)
        .map(|p| (p.name.clone(), ProbeStats::default()))
        .collect();
    let mut fired: Vec<Verdict> = Vec::new();
    let started = Instant::now();
    let deadline = started + duration;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            Some(sample) = sample_rx.recv() => {
                transitions.note(&sample);
                if sample.color == Some(color) {
                    if let Some(stats) = probes.get_mut(&sample.probe) {
                        stats.samples += 1;
                        stats.failures += u64::from(!sample.ok);
                        stats.latencies.extend(sample.latency_ms);
                    }
                }
                engine.observe(&sample);
            }
            _ = tick.tick() => {
                let verdicts = engine.evaluate(now_ms(), color);
                for v in verdicts.iter().filter(|v| v.state == State::Fired && v.severity >= Severity::High) {
                    if !fired.iter().any(|f| f.rule == v.rule) {
                        fired.push(v.clone());
                    }
                }
                let worst = fired.iter().chain(verdicts.iter().filter(|v| v.state == State::Fired)).max_by_key(|v| v.severity).cloned();
                progress(&Progress {
                    elapsed: started.elapsed().min(duration),
                    total: duration,
                    samples: probes.values().map(|p| p.samples).sum(),
                    failures: probes.values().map(|p| p.failures).sum(),
                    worst,
                });
                if Instant::now() >= deadline {
                    break;
                }
            }
        }
    }
    stop_probes(tasks).await;
    let verdicts = engine.evaluate(now_ms(), color);

    let mut reasons: Vec<String> = fired
        .iter()
        .map(|v| format!("{} rule fired: {} ({})", v.severity, v.rule, v.detail))
        .collect();
    if probes.values().all(|p| p.samples == 0) {
        reasons.push(format!(
            "no sample of {color} was taken: is the gate long enough for the probe intervals?"
        ));
    }
    if engine.blind() {
        reasons.push("every probe on both colors was failing: the gate could not judge".into());
    }
    for v in verdicts
        .iter()
        .filter(|v| v.signal == Signal::HealthFailures && v.state == State::Inconclusive)
    {
        reasons.push(format!(
            "could not prove health: {} is inconclusive ({})",
            v.rule, v.detail
        ));
    }
    GateResult {
        service: config.service.clone(),
        color,
        duration,
        probes,
        verdicts,
        fired,
        reasons,
    }
}
