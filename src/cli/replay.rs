//! `rollbackd replay`: run the rules over stored samples and print what
//! would have fired, when, and what it would have done — the tool for
//! tuning thresholds to zero false positives before trusting them.
//!
//! Reads samples and deployments from the database under `--config`'s
//! `state_dir`; the rules and `[actions]` come from `--rules FILE` when
//! given (another config file, e.g. a copy with new thresholds), else from
//! `--config` itself. Writes nothing: no verdict, no deployment, no
//! incident. Owns the replay loop and its report; the judging is
//! `matrix::Engine`, exactly as the daemon runs it.
//!
//! How it follows the daemon: it takes the daemon's decision path, not a
//! copy of it: `Engine::judge` on both colors, `matrix::decide` on the
//! verdicts, baselines from `matrix::baseline_sources`. And it judges at
//! the daemon's moments: as each sample lands (at its time, after every
//! sample and deployment up to it; a flood of samples is judged at the pace
//! `matrix::Pace` allows, as in the daemon), when
//! the matrix's next time-based change falls due (`Engine::next_due`: a
//! `for` elapsing, a window sliding, a fired rule's next clean evaluation),
//! and at most `--step` (default 250 ms) after the last judgement. The
//! daemon sleeps between those moments; replay's extra judgements at
//! `--step` find nothing new (what changes a verdict is a sample or a due
//! change), so both decide the same.
//! Judging at the sample puts a firing before the deployment record of the
//! rollback it caused, as in the daemon. Samples from the longest window
//! before the start warm the windows up. A new deployment of a color
//! forgets that color's windows (`Engine::set_deployments`: only samples
//! of a color's current deployment count) and reloads baselines, as in the
//! daemon.
//! The active color at a time is the latest deployment's (else the
//! `[active] file` now). It cannot know what a rollback would have changed
//! afterwards: a rule that keeps firing is reported once, when it fires.
//! Across a gap in the samples longer than the longest window (the daemon
//! was stopped), it jumps to the next sample.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::{ReplayArgs, open};

use crate::config::Config;
use crate::matrix::{self, Baselines, Decision, Engine, State, Verdict, noise};
use crate::model::{
    Action, Color, Millis, Op, Sample, Signal, duration_ms, format_ms, format_value, now_ms,
};
use crate::store::Deployment;

use crate::matrix::BASELINE_SPAN_MS;

pub async fn run(config: &Config, a: ReplayArgs) -> anyhow::Result<()> {
    let rules = match &a.rules {
        Some(path) => Config::load(path)?,
        None => config.clone(),
    };
    if let Some(rate) = a.synthetic_noise {
        return synthetic(config, &rules, &a, rate);
    }
    // Replay writes nothing: not even an empty database where none was.
    let db = config.db_path();
    if !db.exists() {
        anyhow::bail!(
            "no database at {}: nothing to replay (is `state_dir` in {} the daemon's? \
             to try other rules on this host's samples, keep --config and pass --rules FILE)",
            db.display(),
            config.path.display()
        );
    }
    let store = open(config).await?;
    let now = now_ms();
    let start = now - duration_ms(a.since);
    let warmup = rules
        .rules
        .iter()
        .map(|r| duration_ms(r.window + r.hold_for))
        .max()
        .unwrap_or(0);
    let samples = store
        .samples(None, None, start - warmup - BASELINE_SPAN_MS)
        .await?;
    let deployments = store.deployments().await?;
    store.close().await;
    let fallback_active = match &config.active_file {
        Some(file) => crate::active::read_file(file).ok(),
        None => None,
    };
    let step = duration_ms(a.step).max(1);
    let replay = Replay {
        origin: format!("database {}", config.db_path().display()),
        rules: &rules,
        samples: &samples,
        deployments: &deployments,
        fallback_active,
        start,
        end: now,
        step,
        warmup,
    };
    print!("{}", replay.run(&a));
    Ok(())
}

/// The most samples `--synthetic-noise` makes (a few GB of memory).
const SYNTHETIC_CAP: u64 = 20_000_000;

/// `replay --synthetic-noise RATE --for D`: the configured probes of a
/// healthy service over `D`, failing independently at `RATE`
/// (`matrix::noise`), run through the same replay. No database is read or
/// written. The active color is the `[active] file`'s, else blue.
fn synthetic(config: &Config, rules: &Config, a: &ReplayArgs, rate: f64) -> anyhow::Result<()> {
    for name in &a.probes {
        if config.probe(name).is_none() {
            return Err(super::NotFound(format!(
                "--probes: no probe named {name:?} in {}",
                config.path.display()
            ))
            .into());
        }
    }
    let estimate = noise::estimate(config, a.period);
    if estimate > SYNTHETIC_CAP {
        anyhow::bail!(
            "--synthetic-noise would make about {estimate} samples (at most {SYNTHETIC_CAP}): \
             shorten --for or name fewer --probes"
        );
    }
    let seed = a.seed.unwrap_or_else(rand::random);
    let end = now_ms();
    let start = end - duration_ms(a.period);
    let spec = noise::Spec {
        rate,
        start_ms: start,
        period: a.period,
        noisy: a.probes.clone(),
        seed,
    };
    let samples = noise::generate(config, &spec, config.confirms());
    let (active, said) = match config
        .active_file
        .as_ref()
        .and_then(|f| crate::active::read_file(f).ok())
    {
        Some(c) => (c, "from the [active] file"),
        None => (Color::Blue, "assumed"),
    };
    let noisy = if a.probes.is_empty() {
        "every probe".to_owned()
    } else {
        a.probes.join(", ")
    };
    let warmup = rules
        .rules
        .iter()
        .map(|r| duration_ms(r.window + r.hold_for))
        .max()
        .unwrap_or(0);
    let replay = Replay {
        origin: format!(
            "synthetic: {noisy} failing independently at {}, seed {seed}, active color {active} ({said}), no database",
            crate::config::format_rate(rate)
        ),
        rules,
        samples: &samples,
        deployments: &[],
        fallback_active: Some(active),
        start,
        end,
        step: duration_ms(a.step).max(1),
        warmup,
    };
    print!("{}", replay.run(a));
    Ok(())
}

struct Replay<'a> {
    /// Where the samples come from, for the header.
    origin: String,
    rules: &'a Config,
    samples: &'a [Sample],
    deployments: &'a [Deployment],
    fallback_active: Option<Color>,
    start: Millis,
    end: Millis,
    step: Millis,
    warmup: Millis,
}

/// What one (rule, color) did over the replay.
#[derive(Default)]
struct Tally {
    fired: u32,
    first_fired: Option<Millis>,
    fired_since: Option<Millis>,
    fired_ms: Millis,
    /// The worst conclusive value seen (the highest for `>`/`>=`, the
    /// lowest for `<`/`<=`): how close it came to the threshold.
    peak: Option<f64>,
}

impl Replay<'_> {
    fn run(&self, a: &ReplayArgs) -> String {
        let rules = self.rules;
        let mut out = String::new();
        let in_range = self
            .samples
            .iter()
            .filter(|s| s.at_ms >= self.start)
            .count();
        let _ = writeln!(
            out,
            "replay of {} ({in_range} samples) from {} to {}: {}, {} rules from {}, evaluated every {}",
            humantime::format_duration(std::time::Duration::from_millis(
                (self.end - self.start).max(0) as u64
            )),
            format_ms(self.start),
            format_ms(self.end),
            self.origin,
            rules.rules.len(),
            rules.path.display(),
            humantime::format_duration(a.step),
        );
        if in_range == 0 {
            let _ = writeln!(
                out,
                "no samples in this period: every verdict below is inconclusive"
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<20}  {:<6} {:<12} {:<8}  {:<40} EVIDENCE",
            "TIME", "COLOR", "EVENT", "SEVERITY", "RULE"
        );

        let mut engine = Engine::new(rules);
        let mut tallies: HashMap<(usize, Color), Tally> = HashMap::new();
        let mut rollbacks = 0u32;
        let mut alerts = 0u32;
        let mut blind_spells = 0u32;
        let mut ids: HashMap<Color, i64> = HashMap::new();
        let mut next_sample = 0usize;
        let mut next_deploy = 0usize;
        let mut last_sample_at: Option<Millis> = None;
        let mut pace = matrix::Pace::default();
        let wants_baselines = rules
            .rules
            .iter()
            .any(|r| r.condition.signal == Signal::Degradation);

        // Warm-up: feed what precedes the first evaluation.
        let mut t = self.start;
        while t <= self.end {
            // Every deployment and sample up to `t`, in time order
            // (a deployment first on a tie).
            loop {
                let d_at = self.deployments.get(next_deploy).map(|d| d.at_ms);
                let s_at = self.samples.get(next_sample).map(|s| s.at_ms);
                match (d_at, s_at) {
                    (Some(d), s) if d <= t && s.is_none_or(|s| d <= s) => {
                        let d = &self.deployments[next_deploy];
                        next_deploy += 1;
                        // A window judges one deployment, as in the daemon:
                        // the color starts clean, and samples stamped with
                        // another deployment no longer count.
                        ids.insert(d.color, d.id);
                        engine.set_deployments(Color::ALL.map(|c| ids.get(&c).copied()));
                        if wants_baselines {
                            engine.set_baselines(self.baselines(&ids));
                        }
                    }
                    (_, Some(s)) if s <= t => {
                        let sample = &self.samples[next_sample];
                        next_sample += 1;
                        engine.observe(sample);
                        last_sample_at = Some(sample.at_ms);
                    }
                    _ => break,
                }
            }

            let active = self.active_at(t);
            let verdicts = engine.judge(t);
            pace.judged(t);
            if let Some(blind) = engine.take_blind_change() {
                if blind {
                    blind_spells += 1;
                    let _ = writeln!(
                        out,
                        "{:<20}  {:<6} {:<12} {:<8}  {:<40} {}",
                        format_ms(t),
                        "-",
                        "blind",
                        "-",
                        "-",
                        matrix::BLIND_REASON
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "{:<20}  {:<6} {:<12} {:<8}  {:<40} a probe answers again",
                        format_ms(t),
                        "-",
                        "sees",
                        "-",
                        "-"
                    );
                }
            }
            // What the daemon would do: the same `decide` over the same
            // verdicts. A rollback is requested when its verdict newly fired
            // (the daemon's retries after a refusal are not replayed).
            let mut what: HashMap<(String, Color), String> = HashMap::new();
            match active {
                Some(active) => {
                    for decision in matrix::decide(&verdicts, active, &rules.actions) {
                        let (v, text) = match &decision {
                            Decision::Rollback(v) => {
                                (v, "-> would roll back (active color)".to_owned())
                            }
                            Decision::Alert(v)
                                if rules.actions.for_severity(v.severity) == Action::Rollback =>
                            {
                                let text = if v.color == active {
                                    "-> alert (a worse rule asks for the rollback)"
                                } else {
                                    "-> alert (standby: never rolled back)"
                                };
                                (v, text.to_owned())
                            }
                            Decision::Alert(v) => (v, "-> alert".to_owned()),
                            Decision::Log(v) => (v, "-> log".to_owned()),
                        };
                        if v.changed {
                            match decision {
                                Decision::Rollback(_) => rollbacks += 1,
                                Decision::Alert(_) => alerts += 1,
                                Decision::Log(_) => {}
                            }
                        }
                        what.insert((v.rule.clone(), v.color), text);
                    }
                }
                None => {
                    for v in verdicts.iter().filter(|v| v.state == State::Fired) {
                        let text = match rules.actions.for_severity(v.severity) {
                            Action::Rollback => {
                                if v.changed {
                                    rollbacks += 1;
                                }
                                "-> would roll back if active (active color unknown)"
                            }
                            Action::Alert => {
                                if v.changed {
                                    alerts += 1;
                                }
                                "-> alert"
                            }
                            Action::Log => "-> log",
                        };
                        what.insert((v.rule.clone(), v.color), text.to_owned());
                    }
                }
            }
            for (i, v) in verdicts.iter().enumerate() {
                let rule = &rules.rules[i % rules.rules.len()];
                let tally = tallies.entry((i % rules.rules.len(), v.color)).or_default();
                if v.state != State::Inconclusive {
                    if let Some(value) = v.value {
                        let worse = match rule.condition.op {
                            Op::Lt | Op::Le => tally.peak.is_none_or(|p| value < p),
                            _ => tally.peak.is_none_or(|p| value > p),
                        };
                        if worse {
                            tally.peak = Some(value);
                        }
                    }
                }
                if !v.changed {
                    continue;
                }
                match (v.state, tally.fired_since) {
                    (State::Fired, None) => {
                        tally.fired += 1;
                        tally.first_fired.get_or_insert(t);
                        tally.fired_since = Some(t);
                        let what = what
                            .get(&(v.rule.clone(), v.color))
                            .map(String::as_str)
                            .unwrap_or_default();
                        let _ = writeln!(
                            out,
                            "{}",
                            line(t, v, "fired", &format!("{}; n={} {what}", v.detail, v.n))
                        );
                    }
                    (State::Clear | State::Inconclusive, Some(since)) => {
                        tally.fired_since = None;
                        tally.fired_ms += t - since;
                        // Inconclusive: the data went away (too few samples,
                        // or the watchdog blind); a later fire counts anew,
                        // as it does in the daemon.
                        let event = if v.state == State::Clear {
                            "cleared"
                        } else {
                            "inconclusive"
                        };
                        let _ = writeln!(
                            out,
                            "{}",
                            line(
                                t,
                                v,
                                event,
                                &format!("after {}; {}", seconds(t - since), v.detail)
                            )
                        );
                    }
                    _ => {}
                }
            }

            // The next judgement: when the next sample lands, or one step
            // on, whichever comes first (the daemon's schedule). Across a
            // silence, once the windows are empty, nothing changes until
            // the next sample or deployment: jump there.
            // The matrix's next time-based change (a `for` elapsing, a
            // window sliding, a fired rule's next clean evaluation) is
            // judged when it falls due, as the daemon judges it.
            let next_sample_at = self.samples.get(next_sample).map(|s| s.at_ms);
            let due = engine.next_due();
            let next_event = [
                next_sample_at,
                self.deployments.get(next_deploy).map(|d| d.at_ms),
                due,
            ]
            .into_iter()
            .flatten()
            .min();
            let quiet = last_sample_at.is_none_or(|l| t - l > self.warmup + self.step);
            let mut next = [next_sample_at, due]
                .into_iter()
                .flatten()
                .min()
                .map_or(t + self.step, |s| pace.earliest(s).min(t + self.step));
            if quiet {
                next = next.max(next_event.unwrap_or(self.end + self.step));
            }
            t = next.max(t + 1);
        }
        for ((_, _), tally) in tallies.iter_mut() {
            if let Some(since) = tally.fired_since {
                tally.fired_ms += self.end - since;
            }
        }

        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<40} {:<6} {:>5}  {:<20}  {:>12}  {:>10}  THRESHOLD",
            "RULE", "COLOR", "FIRED", "FIRST FIRED", "TIME FIRED", "PEAK"
        );
        for (i, rule) in rules.rules.iter().enumerate() {
            for color in Color::ALL {
                let tally = tallies.remove(&(i, color)).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "{:<40} {:<6} {:>5}  {:<20}  {:>12}  {:>10}  {} {}",
                    rule.name,
                    color.as_str(),
                    tally.fired,
                    tally
                        .first_fired
                        .map(format_ms)
                        .unwrap_or_else(|| "-".into()),
                    seconds(tally.fired_ms),
                    tally
                        .peak
                        .map(|p| format_value(rule.condition.signal, p))
                        .unwrap_or_else(|| "-".into()),
                    rule.condition.op.as_str(),
                    rule.condition.threshold_text(),
                );
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "would have requested a rollback {rollbacks} time(s) and raised {alerts} alert(s); the watchdog was blind {blind_spells} time(s)"
        );
        out
    }

    /// The active color at `t`: the latest deployment's, else the
    /// `[active] file` as it reads now.
    fn active_at(&self, t: Millis) -> Option<Color> {
        self.deployments
            .iter()
            .rev()
            .find(|d| d.at_ms <= t)
            .map(|d| d.color)
            .or(self.fallback_active)
    }

    /// The daemon's baselines for the deployments in `ids`, chosen as the
    /// daemon chooses them.
    fn baselines(&self, ids: &HashMap<Color, i64>) -> Baselines {
        let cutovers: Vec<matrix::Cutover> =
            self.deployments.iter().map(matrix::Cutover::from).collect();
        let sources = matrix::baseline_sources(&cutovers, ids);
        matrix::baselines(&sources, self.samples)
    }
}

/// A duration in whole seconds, for humans.
fn seconds(ms: Millis) -> String {
    humantime::format_duration(std::time::Duration::from_secs(
        (ms.max(0) + 500) as u64 / 1000,
    ))
    .to_string()
}

fn line(t: Millis, v: &Verdict, event: &str, evidence: &str) -> String {
    format!(
        "{:<20}  {:<6} {:<12} {:<8}  {:<40} {evidence}",
        format_ms(t),
        v.color.as_str(),
        event,
        v.severity.as_str(),
        v.rule,
    )
}
