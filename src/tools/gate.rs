//! `rollbackd gate`: before a cutover, probe a color for a while with the
//! configured probes, run the matrix over what was seen, and say pass or
//! fail. Uses the daemon's own probe fleet (`daemon::fleet`) and matrix
//! engine, so the gate judges exactly as the daemon would; it writes
//! nothing to the database, so it runs the same with the daemon up or down.
//!
//! Both colors and the shared probes are probed, as the daemon does, so the
//! matrix can tell a broken color from a blind watchdog; only the gated
//! color is judged.
//!
//! The gate fails closed: a Critical/High rule it could not judge (too few
//! samples in its window) fails it, unless the caller allows unjudged rules;
//! the summary says how long the gate must run to judge them all
//! (`Config::gate_time`). `degradation` has no previous deployment to
//! compare with before a cutover, so the gate compares the candidate with
//! the other color (the active one) probed over the same period: a
//! simultaneous baseline, fed to the engine as each sample lands.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::Config;
use crate::daemon::fleet::{DeploymentIds, Fleet};
use crate::matrix::{Baseline, Baselines, Engine, State, Verdict};
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
        self.latencies
            .iter()
            .copied()
            .collect::<crate::model::LatencyMean>()
            .ms()
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
    /// The shortest `--for` that judges every Critical/High rule (`None`:
    /// some can never be judged by a gate).
    pub judges_all_in: Option<Duration>,
    /// Both colors' error rate and latency during the gate, with the gated
    /// color's first failure (fault) and first Critical/High firing
    /// (decision) marked, for the summary's charts.
    pub timeline: crate::report::chart::Timeline,
}

impl GateResult {
    pub fn passed(&self) -> bool {
        self.reasons.is_empty()
    }

    /// Critical/High rules still inconclusive at the end, with why (the
    /// health rule has a reason of its own). Each fails the gate unless
    /// unjudged rules were allowed.
    pub fn unjudged(&self) -> Vec<String> {
        unjudged(&self.verdicts)
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
                "\n**Not judged** (inconclusive at the end): {}",
                unjudged.join("; ")
            );
        }
        let _ = match self.judges_all_in {
            Some(t) => writeln!(
                out,
                "\nA gate of `--for {}` or longer judges every Critical/High rule (`rollbackd check` prints it too).",
                humantime::format_duration(t)
            ),
            None => writeln!(
                out,
                "\nSome Critical/High rule can never be judged by a gate: see `rollbackd check`."
            ),
        };
        let chart = self.timeline.markdown();
        if !chart.is_empty() {
            let _ = write!(out, "\n### Error rate and latency\n\n{chart}");
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

fn unjudged(verdicts: &[Verdict]) -> Vec<String> {
    verdicts
        .iter()
        .filter(|v| {
            v.severity >= Severity::High
                && v.state == State::Inconclusive
                && v.signal != Signal::HealthFailures
        })
        .map(|v| format!("{} ({})", v.rule, v.detail))
        .collect()
}

/// Below this the simultaneous baseline's latency is jitter, not a
/// service's speed: two healthy colors a fraction of a millisecond apart
/// are not "50% worse". The baseline latency is floored here.
pub const BASELINE_LATENCY_FLOOR_MS: f64 = 10.0;

/// The other color's samples during the gate, per probe, as the gated
/// color's `degradation` baseline.
#[derive(Default)]
struct Simultaneous {
    by_probe: BTreeMap<String, Vec<Sample>>,
}

impl Simultaneous {
    fn note(&mut self, sample: &Sample) {
        self.by_probe
            .entry(sample.probe.clone())
            .or_default()
            .push(sample.clone());
    }

    fn baselines(&self, judged: Color) -> Baselines {
        self.by_probe
            .iter()
            .map(|(probe, samples)| {
                let mut b = Baseline::from_samples(samples);
                b.latency_ms = b.latency_ms.map(|l| l.max(BASELINE_LATENCY_FLOOR_MS));
                ((probe.clone(), judged), b)
            })
            .collect()
    }
}

/// Probe for `duration`, then judge `color`; a Critical/High rule left
/// unjudged fails it unless `allow_unjudged`. `progress` is called about
/// four times a second.
pub async fn run(
    config: Arc<Config>,
    color: Color,
    duration: Duration,
    allow_unjudged: bool,
    mut progress: impl FnMut(&Progress),
) -> GateResult {
    let prober = Prober::new();
    let (sample_tx, mut sample_rx) = mpsc::channel::<Sample>(1024);
    // The gate records nothing, so samples carry no deployment.
    let (_deploy_tx, deploy_rx) = watch::channel(DeploymentIds::new());
    let fleet = Fleet::start(&config, &prober, &sample_tx, &deploy_rx);
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
    let mut simultaneous = Simultaneous::default();
    let wants_baselines = config
        .rules
        .iter()
        .any(|r| r.condition.signal == Signal::Degradation);
    let started = Instant::now();
    let deadline = started + duration;
    let started_ms = now_ms();
    let mut timeline =
        crate::report::chart::Timeline::new(started_ms, started_ms + duration.as_millis() as i64);
    let mut faulted = false;
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
                if wants_baselines && sample.color == Some(color.other()) {
                    simultaneous.note(&sample);
                }
                timeline.add(&sample);
                if sample.color == Some(color)
                    && !faulted
                    && sample.counts().is_some_and(|(_, errors)| errors > 0.0)
                {
                    faulted = true;
                    timeline.mark(sample.at_ms, crate::report::chart::MarkKind::Fault);
                }
                engine.observe(&sample);
            }
            _ = tick.tick() => {
                if wants_baselines {
                    engine.set_baselines(simultaneous.baselines(color));
                }
                let verdicts = engine.evaluate(now_ms(), color);
                for v in verdicts.iter().filter(|v| v.state == State::Fired && v.severity >= Severity::High) {
                    if !fired.iter().any(|f| f.rule == v.rule) {
                        if fired.is_empty() {
                            timeline.mark(v.at_ms, crate::report::chart::MarkKind::Decision);
                        }
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
    fleet.stop().await;
    if wants_baselines {
        engine.set_baselines(simultaneous.baselines(color));
    }
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
    let judges_all_in = config.gate_time();
    let unjudged = unjudged(&verdicts);
    if !unjudged.is_empty() && !allow_unjudged && !engine.blind() {
        let longer = judges_all_in
            .map(|t| {
                format!(
                    "run the gate for {} or longer",
                    humantime::format_duration(t)
                )
            })
            .unwrap_or_else(|| "see `rollbackd check`".to_owned());
        reasons.push(format!(
            "{} Critical/High rule(s) not judged (too little evidence): {}; {longer}, or pass --allow-unjudged",
            unjudged.len(),
            unjudged.join("; ")
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
        judges_all_in,
        timeline,
    }
}
