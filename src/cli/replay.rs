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

use super::{ReplayArgs, open_read_only};

use crate::config::{Actions, Config};
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
    // With a shared database, this host's samples there may be replayed
    // without its journal (`open_read_only`).
    let db = config.db_path();
    if !db.exists() && config.daemon.database.is_none() {
        anyhow::bail!(
            "no database at {}: nothing to replay (is `state_dir` in {} the daemon's? \
             to try other rules on this host's samples, keep --config and pass --rules FILE)",
            db.display(),
            config.path.display()
        );
    }
    let store = open_read_only(config).await?;
    let now = now_ms();
    let start = now - duration_ms(a.since);
    let warmup = rules
        .rules
        .iter()
        .map(|r| duration_ms(r.window + r.hold_for))
        .max()
        .unwrap_or(0);
    let deployments = store.deployments().await?;
    let fallback_active = match &config.active_file {
        Some(file) => crate::rollback::active::read_file(file).ok(),
        None => None,
    };
    let step = duration_ms(a.step).max(1);
    let origin = match store.reads_shared() {
        Some(shared) => format!("the shared database (host {})", shared.host()),
        None => format!("database {}", config.db_path().display()),
    };
    // The samples stream from the database into the replay, which runs
    // beside on a blocking thread: memory stays bounded (a few chunks in
    // flight) whatever the period.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<Sample>>(STREAM_CHUNKS);
    let as_json = a.json;
    let replaying = tokio::task::spawn_blocking(move || {
        let replay = Replay {
            origin,
            rules: &rules,
            samples: std::cell::RefCell::new(Samples::streamed(rx)),
            deployments: &deployments,
            fallback_active,
            start,
            end: now,
            step,
            warmup,
        };
        replay.run(&a)
    });
    let streamed = async {
        let mut pages = store
            .sample_pages(start - warmup - BASELINE_SPAN_MS)
            .await?;
        while let Some(page) = pages.next_page().await? {
            if tx.send(page).await.is_err() {
                break;
            }
        }
        anyhow::Ok(())
    };
    let streamed = streamed.await;
    drop(tx);
    let out = replaying.await?;
    store.close().await;
    streamed?;
    print_replay(out, as_json)
}

/// Pages of samples (`store::PAGE` each) in flight into the replay.
const STREAM_CHUNKS: usize = 4;

/// The replay's samples in time order, pulled as it goes: a slice in
/// memory (`--synthetic-noise`), or chunks streamed from the database.
/// With degradation rules, the samples of the last [`BASELINE_SPAN_MS`]
/// are kept for the baselines of a deployment landing next.
enum Source<'a> {
    Slice(std::slice::Iter<'a, Sample>),
    Streamed {
        rx: tokio::sync::mpsc::Receiver<Vec<Sample>>,
        chunk: std::vec::IntoIter<Sample>,
    },
}

struct Samples<'a> {
    source: Source<'a>,
    head: Option<Sample>,
    started: bool,
    recent: std::collections::VecDeque<Sample>,
    keep_recent: bool,
    /// The latest deployment so far: the next deployment's baseline is
    /// taken from its samples only (`matrix::baseline_sources`: the
    /// deployment before it), so only they are kept.
    latest_deployment: Option<i64>,
}

impl<'a> Samples<'a> {
    fn slice(samples: &'a [Sample]) -> Self {
        Samples::new(Source::Slice(samples.iter()))
    }

    fn streamed(rx: tokio::sync::mpsc::Receiver<Vec<Sample>>) -> Self {
        Samples::new(Source::Streamed {
            rx,
            chunk: Vec::new().into_iter(),
        })
    }

    fn new(source: Source<'a>) -> Self {
        Samples {
            source,
            head: None,
            started: false,
            recent: Default::default(),
            keep_recent: false,
            latest_deployment: None,
        }
    }

    fn pull(&mut self) -> Option<Sample> {
        match &mut self.source {
            Source::Slice(it) => it.next().cloned(),
            Source::Streamed { rx, chunk } => loop {
                if let Some(s) = chunk.next() {
                    return Some(s);
                }
                *chunk = rx.blocking_recv()?.into_iter();
            },
        }
    }

    /// The next sample's time, without taking it.
    fn peek_at(&mut self) -> Option<Millis> {
        if !self.started {
            self.started = true;
            self.head = self.pull();
        }
        self.head.as_ref().map(|s| s.at_ms)
    }

    /// Take the next sample (after [`Samples::peek_at`] said there is one).
    fn take(&mut self) -> Option<Sample> {
        self.peek_at()?;
        let next = self.pull();
        let sample = std::mem::replace(&mut self.head, next)?;
        if self.keep_recent && sample.deployment == self.latest_deployment {
            while self
                .recent
                .front()
                .is_some_and(|r| r.at_ms < sample.at_ms - BASELINE_SPAN_MS)
            {
                self.recent.pop_front();
            }
            self.recent.push_back(sample.clone());
        }
        Some(sample)
    }
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
        .and_then(|f| crate::rollback::active::read_file(f).ok())
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
        samples: std::cell::RefCell::new(Samples::slice(&samples)),
        deployments: &[],
        fallback_active: Some(active),
        start,
        end,
        step: duration_ms(a.step).max(1),
        warmup,
    };
    print_replay(replay.run(a), a.json)
}

fn print_replay((text, doc): (String, serde_json::Value), as_json: bool) -> anyhow::Result<()> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{text}");
    }
    Ok(())
}

struct Replay<'a> {
    /// Where the samples come from, for the header.
    origin: String,
    rules: &'a Config,
    samples: std::cell::RefCell<Samples<'a>>,
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
    /// The text report, and the same as one JSON document (`--json`).
    fn run(&self, a: &ReplayArgs) -> (String, serde_json::Value) {
        let rules = self.rules;
        // The header names the samples in range: counted as they stream
        // by, written in front at the end.
        let mut out = String::new();
        let mut events: Vec<serde_json::Value> = Vec::new();
        let mut in_range = 0usize;
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
        let mut next_deploy = 0usize;
        let mut last_sample_at: Option<Millis> = None;
        let mut pace = matrix::Pace::default();
        let wants_baselines = rules
            .rules
            .iter()
            .any(|r| r.condition.signal == Signal::Degradation);
        self.samples.borrow_mut().keep_recent = wants_baselines;
        let mut baselines = Baselines::default();

        // Warm-up: feed what precedes the first evaluation.
        let mut t = self.start;
        while t <= self.end {
            // Every deployment and sample up to `t`, in time order
            // (a deployment first on a tie).
            loop {
                let d_at = self.deployments.get(next_deploy).map(|d| d.at_ms);
                let s_at = self.samples.borrow_mut().peek_at();
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
                            baselines = self.baselines(&ids, d.color, baselines);
                            engine.set_baselines(baselines.clone());
                            let mut samples = self.samples.borrow_mut();
                            samples.recent.clear();
                            samples.latest_deployment = Some(d.id);
                        }
                    }
                    (_, Some(s)) if s <= t => {
                        let Some(sample) = self.samples.borrow_mut().take() else {
                            break;
                        };
                        if sample.at_ms >= self.start {
                            in_range += 1;
                        }
                        engine.observe(&sample);
                        last_sample_at = Some(sample.at_ms);
                    }
                    _ => break,
                }
            }

            let active = self.active_at(t);
            let verdicts = engine.judge(t);
            pace.judged(t);
            if let Some(blind) = engine.take_blind_change() {
                events.push(serde_json::json!({
                    "at": format_ms(t),
                    "event": if blind { "blind" } else { "sees" },
                }));
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
            let mut what: HashMap<(String, Color), &'static str> = HashMap::new();
            for (decision, text) in decisions(&verdicts, active, &rules.actions) {
                let v = match &decision {
                    Decision::Rollback(v) | Decision::Alert(v) | Decision::Log(v) => v,
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
                            .copied()
                            .unwrap_or_default();
                        events.push(event_json(
                            t,
                            v,
                            "fired",
                            &format!("{}; n={} {what}", v.detail, v.n),
                        ));
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
                        let evidence = format!("after {}; {}", seconds(t - since), v.detail);
                        events.push(event_json(t, v, event, &evidence));
                        let _ = writeln!(out, "{}", line(t, v, event, &evidence));
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
            let next_sample_at = self.samples.borrow_mut().peek_at();
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
        let mut rule_docs = Vec::new();
        for (i, rule) in rules.rules.iter().enumerate() {
            for color in Color::ALL {
                let tally = tallies.remove(&(i, color)).unwrap_or_default();
                rule_docs.push(serde_json::json!({
                    "rule": rule.name,
                    "color": color,
                    "fired": tally.fired,
                    "first_fired": tally.first_fired.map(format_ms),
                    "fired_ms": tally.fired_ms,
                    "peak": tally.peak,
                    "threshold": format!("{} {}", rule.condition.op.as_str(), rule.condition.threshold_text()),
                }));
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
        let mut head = String::new();
        let _ = writeln!(
            head,
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
                head,
                "no samples in this period: every verdict below is inconclusive"
            );
        }
        let doc = serde_json::json!({
            "from": format_ms(self.start),
            "to": format_ms(self.end),
            "origin": self.origin,
            "rules_from": rules.path.display().to_string(),
            "step_ms": self.step,
            "samples": in_range,
            "events": events,
            "rules": rule_docs,
            "rollbacks": rollbacks,
            "alerts": alerts,
            "blind_spells": blind_spells,
        });
        (head + &out, doc)
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
    /// daemon chooses them, when a deployment of `color` lands: that
    /// color's from the samples of the span just before it (kept by
    /// [`Samples`]), the other color's as they were (its source did not
    /// change, and its samples may have streamed by long ago).
    fn baselines(&self, ids: &HashMap<Color, i64>, color: Color, before: Baselines) -> Baselines {
        let cutovers: Vec<matrix::Cutover> =
            self.deployments.iter().map(matrix::Cutover::from).collect();
        let sources = matrix::baseline_sources(&cutovers, ids);
        let samples = self.samples.borrow();
        let mut now = matrix::baselines(&sources, &samples.recent);
        now.retain(|(_, c), _| *c == color);
        now.extend(before.into_iter().filter(|((_, c), _)| *c != color));
        now
    }
}

/// What the daemon would decide on `verdicts`, each decision with its
/// words for the report: `matrix::decide` with the active color; while it
/// is unknown, each color's verdicts as if that color were the active one
/// (a rollback there is what would happen if it were).
fn decisions(
    verdicts: &[Verdict],
    active: Option<Color>,
    actions: &Actions,
) -> Vec<(Decision, &'static str)> {
    let Some(active) = active else {
        let mut out = Vec::new();
        for color in Color::ALL {
            let of_color: Vec<Verdict> = verdicts
                .iter()
                .filter(|v| v.color == color)
                .cloned()
                .collect();
            out.extend(
                matrix::decide(&of_color, color, actions)
                    .into_iter()
                    .map(|d| {
                        let text = match &d {
                            Decision::Rollback(_) => {
                                "-> would roll back if active (active color unknown)"
                            }
                            Decision::Alert(_) => "-> alert",
                            Decision::Log(_) => "-> log",
                        };
                        (d, text)
                    }),
            );
        }
        return out;
    };
    matrix::decide(verdicts, active, actions)
        .into_iter()
        .map(|d| {
            let text = match &d {
                Decision::Rollback(_) => "-> would roll back (active color)",
                Decision::Alert(v) if actions.for_severity(v.severity) == Action::Rollback => {
                    if v.color == active {
                        "-> alert (a worse rule asks for the rollback)"
                    } else {
                        "-> alert (standby: never rolled back)"
                    }
                }
                Decision::Alert(_) => "-> alert",
                Decision::Log(_) => "-> log",
            };
            (d, text)
        })
        .collect()
}

/// A duration in whole seconds, for humans.
fn seconds(ms: Millis) -> String {
    humantime::format_duration(std::time::Duration::from_secs(
        (ms.max(0) + 500) as u64 / 1000,
    ))
    .to_string()
}

fn event_json(t: Millis, v: &Verdict, event: &str, evidence: &str) -> serde_json::Value {
    serde_json::json!({
        "at": format_ms(t),
        "color": v.color,
        "event": event,
        "severity": v.severity.as_str(),
        "rule": v.rule,
        "evidence": evidence,
    })
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

#[cfg(test)]
mod decision_tests {
    use super::*;
    use crate::model::Severity;

    fn fired(rule: &str, severity: Severity, color: Color) -> Verdict {
        Verdict {
            at_ms: 0,
            rule: rule.into(),
            severity,
            signal: Signal::HealthFailures,
            color,
            state: State::Fired,
            n: 3,
            value: Some(3.0),
            threshold: 3.0,
            window_ms: 60_000,
            baseline: None,
            detail: String::new(),
            changed: true,
        }
    }

    const ACTIONS: Actions = Actions {
        critical: Action::Rollback,
        high: Action::Rollback,
        medium: Action::Alert,
        low: Action::Log,
    };

    fn said(d: &[(Decision, &'static str)]) -> Vec<(String, &'static str)> {
        d.iter()
            .map(|(d, text)| match d {
                Decision::Rollback(v) => (format!("rollback {} {}", v.rule, v.color), *text),
                Decision::Alert(v) => (format!("alert {} {}", v.rule, v.color), *text),
                Decision::Log(v) => (format!("log {} {}", v.rule, v.color), *text),
            })
            .collect()
    }

    /// With the active color known, `decide` as the daemon runs it; unknown,
    /// each color as if it were the active one: one rollback per color (the
    /// worst rule), never one per rule.
    #[test]
    fn decisions_follow_decide_with_and_without_an_active_color() {
        let verdicts = vec![
            fired("crit", Severity::Critical, Color::Blue),
            fired("high", Severity::High, Color::Blue),
            fired("crit", Severity::Critical, Color::Green),
            fired("med", Severity::Medium, Color::Green),
        ];
        let known = said(&decisions(&verdicts, Some(Color::Blue), &ACTIONS));
        assert_eq!(
            known,
            vec![
                (
                    "rollback crit blue".to_owned(),
                    "-> would roll back (active color)"
                ),
                (
                    "alert crit green".to_owned(),
                    "-> alert (standby: never rolled back)"
                ),
                ("alert med green".to_owned(), "-> alert"),
            ]
        );
        let unknown = said(&decisions(&verdicts, None, &ACTIONS));
        let if_active = "-> would roll back if active (active color unknown)";
        assert_eq!(
            unknown,
            vec![
                ("rollback crit blue".to_owned(), if_active),
                ("rollback crit green".to_owned(), if_active),
                ("alert med green".to_owned(), "-> alert"),
            ]
        );
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;

    fn sample(at_ms: Millis) -> Sample {
        Sample {
            deployment: Some(1),
            ..Sample::answer(at_ms, "healthz", Some(Color::Blue), true, 1.0)
        }
    }

    #[test]
    fn streamed_samples_come_in_order_across_chunks_and_keep_only_the_baseline_span() {
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_CHUNKS);
        let minute = 60_000;
        let all: Vec<Millis> = (0..120).map(|i| i * minute).collect();
        let producer = std::thread::spawn({
            let all = all.clone();
            move || {
                for chunk in all.chunks(7) {
                    let chunk = chunk.iter().map(|at| sample(*at)).collect();
                    if tx.blocking_send(chunk).is_err() {
                        return;
                    }
                }
            }
        });
        let mut samples = Samples::streamed(rx);
        samples.keep_recent = true;
        samples.latest_deployment = Some(1);
        let mut seen = Vec::new();
        while let Some(at) = samples.peek_at() {
            let s = samples.take().unwrap();
            assert_eq!(s.at_ms, at);
            seen.push(at);
            assert!(
                samples
                    .recent
                    .front()
                    .is_some_and(|r| r.at_ms >= at - BASELINE_SPAN_MS),
                "kept more than the baseline span"
            );
        }
        producer.join().unwrap();
        assert_eq!(seen, all);
        assert_eq!(
            samples.recent.len() as Millis,
            BASELINE_SPAN_MS / minute + 1,
            "the last half hour, both ends included"
        );
    }
}
