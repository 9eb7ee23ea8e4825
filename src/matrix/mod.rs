//! The rollback decision matrix: samples and times in, verdicts out.
//!
//! Pure: no IO and no clock reads. The daemon feeds it samples as they are
//! stored and asks for verdicts with the current time; `replay` and the
//! tests feed it generated or stored streams the same way. What to *do*
//! about a verdict is [`decide`]; doing it is the daemon's and rollback's job.
//!
//! # How a verdict is computed, and what it costs
//!
//! Each (probe, color) keeps a `Series`: its points for the longest
//! window, numbered, and its current failure streak. Rules that share a
//! window length and a probe list share one incremental `Aggregate` per
//! color (`window.rs`): a point is added to it when observed and removed
//! when it falls out of the window, each exactly once. So, with `P` probes,
//! `R` rules and `W` distinct windows:
//!
//! - `observe` is O(windows the probe feeds) (+ O(log n) for a p95 window);
//! - `evaluate` is O(points that expired since the last call, amortized),
//!   plus O(1) per `error_rate`/`latency_avg` rule, O(probes of the rule)
//!   per `health_failures`/`degradation` rule, and O(k) per `latency_p95`
//!   rule, `k` being the number of distinct latencies among the slowest 5%;
//! - `blind` is O(1) (counters kept on `observe`).
//!
//! Nothing rescans a window. `bench/matrix.rs` measures it
//! (`docs/benchmarks.md`).
//!
//! A point counts in a window from when it is observed until
//! `at_ms <= now - window`. Callers observe samples in time order per probe
//! and do not observe samples from the future (the daemon stamps samples
//! with the time they were taken; `replay` feeds stored samples up to the
//! time it evaluates).
//!
//! # Degradation
//!
//! `degradation` compares the window against the previous deployment's
//! [`Baseline`] of each probe, and is the worse of two numbers, both in `%`:
//!
//! - latency: how much slower the window is than the baseline would have
//!   been for the same samples, `(mean latency - the baseline's mean over
//!   the same samples) / max(that baseline, LATENCY_FLOOR_MS) x 100`: a
//!   fast service's jitter of a millisecond or two is not a regression
//!   ([`signal::LATENCY_FLOOR_MS`]);
//! - error rate: by how many *percentage points* the window's error rate
//!   exceeds the baseline's for the same requests (1% -> 3% is +2, not
//!   +200%: a relative increase of a small error rate is noise).
//!
//! Probes without a baseline do not count. No baseline at all is
//! inconclusive.
//!
//! # Blindness
//!
//! A failed sample either got an answer from its target (a status, a
//! mismatching body, an exit code, a refused or reset connection) or got
//! none (a timeout, an unreachable network, a name that does not resolve,
//! the watchdog's own resource error): [`Sample::answered`]. When nothing
//! answered — no probe on either color and no shared probe got an answer
//! in its latest sample — the fault is more likely the watchdog's (network,
//! starvation) than the service's: every verdict is inconclusive, and
//! [`Engine::take_blind_change`] tells the daemon once, so it can alert with
//! [`BLIND_REASON`] and what was tried ([`Engine::unanswered`]). A color
//! that answers "broken" is judged broken, even when the other color is
//! broken too.

pub mod noise;
pub mod signal;
pub mod traffic;
pub mod window;

mod baseline;
mod decide;
mod pace;
pub use baseline::{
    BASELINE_SPAN_MS, Baseline, BaselineSource, Baselines, Cutover, baseline_sources, baselines,
};
pub use decide::{Decision, decide, worst};
pub use pace::{EVAL_BURST, EVAL_GAP, EVAL_PERIOD, Pace, slide_slack};

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, Rule, Scope, consecutive_needed};
use crate::model::{Color, Millis, Sample, Severity, Signal, duration_ms, format_value};
use signal::{Point, Reading};
use window::Aggregate;

/// What the daemon says when the watchdog goes blind.
pub const BLIND_REASON: &str = "the watchdog may be blind: no probe on either color and no \
     shared probe got an answer (each timed out or could not reach its target), which points at \
     the watchdog (network down, host starved) rather than the service; verdicts are \
     inconclusive and nothing is rolled back until a probe answers again";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Fired,
    Clear,
    Inconclusive,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Fired => "fired",
            State::Clear => "clear",
            State::Inconclusive => "inconclusive",
        }
    }
}

/// One evaluation of one rule for one color, with its evidence.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    pub at_ms: Millis,
    pub rule: String,
    pub severity: Severity,
    pub signal: Signal,
    pub color: Color,
    pub state: State,
    /// Samples the value rests on.
    pub n: u64,
    pub value: Option<f64>,
    pub threshold: f64,
    pub window_ms: Millis,
    /// For `degradation`: the baseline the value was measured against, in
    /// the unit of the side that decided it (ms for latency, % for the
    /// error rate; `detail` says which).
    pub baseline: Option<f64>,
    /// Plain words: what was seen, or why it is inconclusive.
    pub detail: String,
    /// Whether the state differs from this rule's previous verdict.
    pub changed: bool,
}

pub(crate) fn point(s: &Sample) -> Point {
    Point {
        at_ms: s.at_ms,
        ok: s.ok,
        latency_ms: s.latency_ms,
        counts: s.counts(),
    }
}

/// Where a series lives in [`ProbeSlot::series`].
fn slot(color: Option<Color>) -> usize {
    match color {
        Some(Color::Blue) => 0,
        Some(Color::Green) => 1,
        None => 2,
    }
}

fn color_slot(color: Color) -> usize {
    slot(Some(color))
}

/// Per (probe, color): the recent points, numbered, and the failure streak.
#[derive(Default, Debug)]
struct Series {
    points: VecDeque<Point>,
    /// Sequence number of `points[0]`.
    first_seq: u64,
    /// Samples ever observed (including "no data").
    observed: u64,
    consecutive_failures: u64,
    /// When the current failure streak began.
    streak_started: Option<Millis>,
    /// Whether the latest sample with data got an answer.
    last_answered: Option<bool>,
    /// The latest sample's detail when it got no answer: what was tried,
    /// for the blindness alert.
    last_unanswered: Option<String>,
    /// Nothing observed since the watchdog's own running had a gap
    /// ([`Engine::gap`]): what this series says may be out of date.
    stale: bool,
}

impl Series {
    fn end_seq(&self) -> u64 {
        self.first_seq + self.points.len() as u64
    }

    fn get(&self, seq: u64) -> Option<&Point> {
        self.points.get(seq.checked_sub(self.first_seq)? as usize)
    }
}

#[derive(Debug)]
struct ProbeSlot {
    name: String,
    scope: Scope,
    /// Blue, green, shared.
    series: [Series; 3],
    /// (window index, position of this probe in that window).
    windows: Vec<(usize, usize)>,
    /// Per color.
    baseline: [Option<Baseline>; 2],
}

/// What makes two rules share a window.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct WindowKey {
    window_ms: Millis,
    probes: Vec<String>,
    p95: bool,
}

#[derive(Debug)]
struct WindowSlot {
    key: WindowKey,
    /// Probe indices, in `key.probes` order.
    probes: Vec<usize>,
    /// Per color; built from the series when first needed.
    aggs: [Option<Aggregate>; 2],
}

#[derive(Default, Debug, Clone)]
struct RuleState {
    fired: bool,
    holding_since: Option<Millis>,
    clean_streak: u32,
    last: Option<State>,
}

#[derive(Debug)]
pub struct Engine {
    rules: Vec<Rule>,
    /// Per rule: its window index.
    rule_window: Vec<usize>,
    /// Per rule: blue, green.
    states: Vec<[RuleState; 2]>,
    probes: Vec<ProbeSlot>,
    probe_index: HashMap<String, usize>,
    windows: Vec<WindowSlot>,
    baselines: Baselines,
    keep_ms: Millis,
    /// Series whose latest sample got an answer (ok or failed).
    answering: usize,
    /// Series whose latest sample got no answer, per slot (blue, green,
    /// shared).
    unanswered: [usize; 3],
    /// Whether blindness was last reported as on.
    blind_reported: bool,
    /// Each color's current deployment, once the caller says
    /// ([`Engine::set_deployments`]): samples of another deployment are not
    /// observed. `None` until then (replay, gate: every sample counts).
    deployments: Option<[Option<i64>; 2]>,
    /// The latest gap in the watchdog's own running: when it was seen and
    /// how long it lasted ([`Engine::gap`]).
    gap: Option<(Millis, Millis)>,
    /// When the rules were last judged.
    last_judged: Option<Millis>,
}

impl Engine {
    pub fn new(config: &Config) -> Engine {
        let mut engine = Engine {
            rules: Vec::new(),
            rule_window: Vec::new(),
            states: Vec::new(),
            probes: Vec::new(),
            probe_index: HashMap::new(),
            windows: Vec::new(),
            baselines: HashMap::new(),
            keep_ms: 0,
            answering: 0,
            unanswered: [0; 3],
            blind_reported: false,
            deployments: None,
            gap: None,
            last_judged: None,
        };
        engine.reconfigure(config);
        engine
    }

    /// Take a new configuration, keeping the series of probes, the windows
    /// (same length, same probes) and the states of rules (same name) that
    /// are still there: a reload must not reset them. A new window is built
    /// from the kept series, so a new rule sees the recent past at once.
    pub fn reconfigure(&mut self, config: &Config) {
        let mut old_probes: HashMap<String, ProbeSlot> = std::mem::take(&mut self.probes)
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect();
        self.probes = config
            .probes
            .iter()
            .map(|p| {
                let mut slot = old_probes.remove(&p.name).unwrap_or_else(|| ProbeSlot {
                    name: p.name.clone(),
                    scope: p.scope,
                    series: Default::default(),
                    windows: Vec::new(),
                    baseline: [None; 2],
                });
                slot.scope = p.scope;
                slot.windows.clear();
                slot
            })
            .collect();
        self.probe_index = self
            .probes
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();

        let mut old_windows: HashMap<WindowKey, WindowSlot> = std::mem::take(&mut self.windows)
            .into_iter()
            .map(|w| (w.key.clone(), w))
            .collect();
        let mut old_states: HashMap<String, [RuleState; 2]> = self
            .rules
            .iter()
            .map(|r| r.name.clone())
            .zip(std::mem::take(&mut self.states))
            .collect();
        self.rules = config.rules.clone();
        self.rule_window.clear();
        for rule in &self.rules {
            let mut names: Vec<String> = rule
                .probes
                .iter()
                .filter(|p| self.probe_index.contains_key(*p))
                .cloned()
                .collect();
            names.sort();
            names.dedup();
            let key = WindowKey {
                window_ms: duration_ms(rule.window),
                probes: names,
                p95: rule.condition.signal == Signal::LatencyP95,
            };
            let index = match self.windows.iter().position(|w| w.key == key) {
                Some(i) => i,
                None => {
                    let probes = key.probes.iter().map(|n| self.probe_index[n]).collect();
                    let aggs = old_windows.remove(&key).map(|w| w.aggs).unwrap_or_default();
                    self.windows.push(WindowSlot { key, probes, aggs });
                    self.windows.len() - 1
                }
            };
            self.rule_window.push(index);
            self.states
                .push(old_states.remove(&rule.name).unwrap_or_default());
        }
        for (w, window) in self.windows.iter().enumerate() {
            for (pos, &p) in window.probes.iter().enumerate() {
                self.probes[p].windows.push((w, pos));
            }
        }
        let max_window = self
            .rules
            .iter()
            .map(|r| r.window + r.hold_for)
            .max()
            .unwrap_or(Duration::from_secs(60));
        self.keep_ms = duration_ms(max_window);
        let baselines = std::mem::take(&mut self.baselines);
        self.set_baselines(baselines);
        self.recount_answers();
    }

    /// Forget one probe's windows: its definition changed on reload, so
    /// its old samples measured something else.
    pub fn forget_probe(&mut self, probe: &str) {
        let Some(&index) = self.probe_index.get(probe) else {
            return;
        };
        self.probes[index].series = Default::default();
        for (w, _) in self.probes[index].windows.clone() {
            // Rebuilt from the (now empty) series when next needed.
            self.windows[w].aggs = [None, None];
        }
        self.recount_answers();
    }

    /// Forget one rule's state (hysteresis, hold): its definition changed
    /// on reload.
    pub fn forget_rule(&mut self, rule: &str) {
        if let Some(index) = self.rules.iter().position(|r| r.name == rule) {
            self.states[index] = Default::default();
        }
    }

    pub fn set_baselines(&mut self, baselines: Baselines) {
        for p in &mut self.probes {
            p.baseline = Color::ALL.map(|c| baselines.get(&(p.name.clone(), c)).copied());
        }
        self.baselines = baselines;
    }

    /// Forget a color's samples: a new deployment on it starts clean.
    pub fn reset_color(&mut self, color: Color) {
        let s = color_slot(color);
        for p in &mut self.probes {
            p.series[s] = Series::default();
        }
        for w in &mut self.windows {
            w.aggs[s] = None;
        }
        for st in &mut self.states {
            st[s] = RuleState::default();
        }
        self.recount_answers();
    }

    /// Each color's current deployment (blue, green). A window judges one
    /// deployment: a color whose deployment changed starts clean, and from
    /// now on a sample of that color stamped with another deployment (taken
    /// before the change, or stored by an earlier run) is not observed.
    /// Call it before rebuilding windows from stored samples.
    pub fn set_deployments(&mut self, current: [Option<i64>; 2]) {
        let before = self.deployments.replace(current);
        for color in Color::ALL {
            let s = color_slot(color);
            if before.is_some_and(|b| b[s] != current[s]) {
                self.reset_color(color);
            }
        }
    }

    /// Whether a sample belongs to its color's current deployment (always,
    /// for a shared probe or before [`Engine::set_deployments`]).
    fn current_deployment(&self, sample: &Sample) -> bool {
        match (self.deployments, sample.color) {
            (Some(ids), Some(color)) => sample.deployment == ids[color_slot(color)],
            _ => true,
        }
    }

    /// Observe a sample at its own time (`sample.at_ms`): replay, gate and
    /// the tests, whose samples' times are their clock.
    pub fn observe(&mut self, sample: &Sample) {
        self.observe_at(sample, sample.at_ms);
    }

    /// Observe a sample at `at_ms` on the caller's clock: the daemon passes
    /// its monotonic time (the sample's wall-clock stamp is what is stored
    /// and shown, and what a failure streak reports as its start), so a
    /// wall-clock jump moves no window and no hold.
    pub fn observe_at(&mut self, sample: &Sample, at_ms: Millis) {
        if !self.current_deployment(sample) {
            return;
        }
        let Some(&index) = self.probe_index.get(&sample.probe) else {
            // A probe no longer configured (e.g. samples rebuilt from the
            // database after a reload removed it): nothing judges it.
            return;
        };
        let s = slot(sample.color);
        let p = Point {
            at_ms,
            ..point(sample)
        };
        let fresh = self.gap.is_none_or(|(seen, _)| at_ms >= seen);
        let probe = &mut self.probes[index];
        let series = &mut probe.series[s];
        series.observed += 1;
        if fresh {
            series.stale = false;
        }
        if p.counts.is_some() {
            match series.last_answered {
                Some(true) => self.answering -= 1,
                Some(false) => self.unanswered[s] -= 1,
                None => {}
            }
            if sample.ok {
                series.consecutive_failures = 0;
                series.streak_started = None;
            } else {
                series.consecutive_failures += 1;
                series.streak_started.get_or_insert(sample.at_ms);
            }
            let answered = sample.answered();
            if answered {
                self.answering += 1;
                series.last_unanswered = None;
            } else {
                self.unanswered[s] += 1;
                series.last_unanswered = Some(sample.detail.clone());
            }
            series.last_answered = Some(answered);
        }
        series.points.push_back(p);
        if s < 2 {
            for &(w, pos) in &probe.windows {
                if let Some(agg) = &mut self.windows[w].aggs[s] {
                    agg.add(pos, &p);
                }
            }
        }
        // Trim what no window can need; a window still counting the point
        // lets go of it first.
        let horizon = at_ms - self.keep_ms;
        while let Some(front) = series.points.front().copied() {
            if front.at_ms >= horizon {
                break;
            }
            if s < 2 {
                for &(w, pos) in &probe.windows {
                    if let Some(agg) = &mut self.windows[w].aggs[s] {
                        if agg.oldest[pos] == series.first_seq {
                            agg.expire(pos, &front);
                        }
                    }
                }
            }
            series.points.pop_front();
            series.first_seq += 1;
        }
    }

    /// The watchdog's own running had a gap of `length_ms` (frozen,
    /// suspended, starved), noticed at `now_ms`: every `for` hold restarts,
    /// and every rule is inconclusive until each probe it reads has a
    /// sample taken after now. What was measured before the gap may no
    /// longer be true, and a hold did not watch the time it claims.
    pub fn gap(&mut self, now_ms: Millis, length_ms: Millis) {
        self.gap = Some((now_ms, length_ms));
        for p in &mut self.probes {
            for series in &mut p.series {
                series.stale = true;
            }
        }
        for st in self.states.iter_mut().flatten() {
            st.holding_since = None;
        }
    }

    /// When the verdicts next change with no new sample (a `for` hold
    /// elapsing, a point leaving its window, a fired rule's next clean
    /// evaluation toward `clear_after`), on the clock `judge` is given:
    /// the caller judges then, or when the next sample lands, and sleeps
    /// in between. `None`: nothing changes until a sample lands.
    pub fn next_due(&self) -> Option<Millis> {
        let mut due: Option<Millis> = None;
        let mut at = |t: Millis| due = Some(due.map_or(t, |d| d.min(t)));
        for (i, rule) in self.rules.iter().enumerate() {
            for st in &self.states[i] {
                if let Some(since) = st.holding_since.filter(|_| !st.fired) {
                    at(since + duration_ms(rule.hold_for));
                }
                if st.fired {
                    // `clear_after` counts evaluations at the daemon's pace.
                    if let Some(last) = self.last_judged {
                        at(last + duration_ms(EVAL_PERIOD));
                    }
                }
            }
        }
        for w in &self.windows {
            let slack = slide_slack(w.key.window_ms);
            for (s, agg) in w.aggs.iter().enumerate() {
                let Some(agg) = agg else { continue };
                for (pos, &p) in w.probes.iter().enumerate() {
                    if let Some(oldest) = self.probes[p].series[s].get(agg.oldest[pos]) {
                        // Out of the window once `at_ms <= now - window`;
                        // judged on the window's grid (see `slide_slack`).
                        let expiry = oldest.at_ms + w.key.window_ms;
                        at(expiry.div_euclid(slack) * slack
                            + if expiry.rem_euclid(slack) == 0 {
                                0
                            } else {
                                slack
                            });
                    }
                }
            }
        }
        due
    }

    /// When the color's current trouble began: the earliest start of a
    /// failure streak among its probes.
    pub fn failing_since(&self, color: Color) -> Option<Millis> {
        let s = color_slot(color);
        self.probes
            .iter()
            .filter_map(|p| p.series[s].streak_started)
            .min()
    }

    /// True when nothing answers: no probe on either color and no shared
    /// probe got an answer in its latest sample (each timed out or could
    /// not reach its target), and both colors (or, without per-color
    /// probes, the shared ones) have been tried. The fault is more likely
    /// ours (network, starvation) than the service's, and no verdict may
    /// blame a color. A failed answer (a 503, a refused connection) is an
    /// answer: two broken colors are judged, not a blind watchdog.
    pub fn blind(&self) -> bool {
        let per_color = self.probes.iter().any(|p| p.scope == Scope::PerColor);
        self.answering == 0
            && if per_color {
                self.unanswered[0] > 0 && self.unanswered[1] > 0
            } else {
                self.unanswered[2] > 0
            }
    }

    /// What was tried and got no answer: (probe, color or `None` for a
    /// shared probe, the latest sample's detail), in configuration order.
    /// What the blindness alert lists.
    pub fn unanswered(&self) -> Vec<(&str, Option<Color>, &str)> {
        let mut out = Vec::new();
        for p in &self.probes {
            for (s, color) in [Some(Color::Blue), Some(Color::Green), None]
                .into_iter()
                .enumerate()
            {
                if let Some(detail) = &p.series[s].last_unanswered {
                    out.push((p.name.as_str(), color, detail.as_str()));
                }
            }
        }
        out
    }

    /// `Some(true)` when the watchdog went blind since the last call,
    /// `Some(false)` when it can see again, `None` when nothing changed: the
    /// daemon alerts once per change, with [`BLIND_REASON`].
    pub fn take_blind_change(&mut self) -> Option<bool> {
        let now = self.blind();
        (now != self.blind_reported).then(|| {
            self.blind_reported = now;
            now
        })
    }

    fn recount_answers(&mut self) {
        self.answering = 0;
        self.unanswered = [0; 3];
        for p in &self.probes {
            for (s, series) in p.series.iter().enumerate() {
                match series.last_answered {
                    Some(true) => self.answering += 1,
                    Some(false) => self.unanswered[s] += 1,
                    None => {}
                }
            }
        }
    }

    /// Bring every window of `color` up to `now`: build the missing ones
    /// from the series, expire what fell out.
    fn advance(&mut self, now_ms: Millis, color: Color) {
        let s = color_slot(color);
        for w in &mut self.windows {
            let since = now_ms - w.key.window_ms;
            let agg = w.aggs[s].get_or_insert_with(|| {
                let mut agg = Aggregate::new(w.probes.len(), w.key.p95);
                for (pos, &p) in w.probes.iter().enumerate() {
                    let series = &self.probes[p].series[s];
                    agg.oldest[pos] = series.first_seq;
                    for point in &series.points {
                        agg.add(pos, point);
                    }
                }
                agg
            });
            for (pos, &p) in w.probes.iter().enumerate() {
                let series = &self.probes[p].series[s];
                while let Some(point) = series.get(agg.oldest[pos]) {
                    if point.at_ms > since {
                        break;
                    }
                    agg.expire(pos, point);
                }
                // Points trimmed from the series are gone from the window
                // too (trimming expires them first).
                agg.oldest[pos] = agg.oldest[pos].max(series.first_seq);
                debug_assert!(agg.oldest[pos] <= series.end_seq());
            }
        }
    }

    /// One evaluation of every rule on both colors at `now`, blue's then
    /// green's: what the daemon runs as each sample lands (and every
    /// `EVAL_PERIOD` without one), and what `replay` runs at the same moments.
    pub fn judge(&mut self, now_ms: Millis) -> Vec<Verdict> {
        self.last_judged = Some(now_ms);
        let mut verdicts = self.evaluate(now_ms, Color::Blue);
        verdicts.extend(self.evaluate(now_ms, Color::Green));
        verdicts
    }

    /// Evaluate every rule for `color` at `now`.
    pub fn evaluate(&mut self, now_ms: Millis, color: Color) -> Vec<Verdict> {
        self.advance(now_ms, color);
        let blind = self.blind();
        let s = color_slot(color);
        let mut out = Vec::with_capacity(self.rules.len());
        for (i, rule) in self.rules.iter().enumerate() {
            let Read {
                reading,
                baseline,
                why,
                extra,
            } = self.read(i, rule, color);
            let stale = self.stale(i, s);
            let st = &mut self.states[i][s];
            let conclusive = !blind
                && stale.is_none()
                && reading.value.is_some()
                && reading.n >= u64::from(rule.min_samples);
            let state = if !conclusive {
                State::Inconclusive
            } else {
                // Safe: `conclusive` implies a value.
                let value = reading.value.unwrap_or_default();
                if rule.condition.holds(value) {
                    st.clean_streak = 0;
                    let since = *st.holding_since.get_or_insert(now_ms);
                    if now_ms - since >= duration_ms(rule.hold_for) {
                        st.fired = true;
                    }
                } else {
                    st.holding_since = None;
                    if st.fired {
                        st.clean_streak += 1;
                        if st.clean_streak >= rule.clear_after {
                            st.fired = false;
                            st.clean_streak = 0;
                        }
                    }
                }
                if st.fired { State::Fired } else { State::Clear }
            };
            let detail = if blind {
                BLIND_REASON.to_owned()
            } else if let Some(why) = stale {
                why
            } else if let Some(why) = why {
                why
            } else if reading.n < u64::from(rule.min_samples) {
                format!("{} samples of {} needed", reading.n, rule.min_samples)
            } else {
                let value = reading
                    .value
                    .map(|v| format_value(rule.condition.signal, v))
                    .unwrap_or_default();
                let holds = rule.condition.holds(reading.value.unwrap_or_default());
                match state {
                    State::Fired if holds => format!(
                        "{} = {value} (threshold {})",
                        rule.condition.signal.as_str(),
                        rule.condition.threshold_text()
                    ),
                    State::Fired => format!(
                        "{} = {value}, clean {} of {} evaluations needed to clear",
                        rule.condition.signal.as_str(),
                        st.clean_streak,
                        rule.clear_after
                    ),
                    State::Clear if holds => format!(
                        "{} = {value} (threshold {}), must hold for {}",
                        rule.condition.signal.as_str(),
                        rule.condition.threshold_text(),
                        humantime::format_duration(rule.hold_for)
                    ),
                    _ => format!("{} = {value}", rule.condition.signal.as_str()),
                }
            };
            let detail = match extra {
                Some(extra) if !blind => format!("{detail}; {extra}"),
                _ => detail,
            };
            let changed = st.last != Some(state);
            st.last = Some(state);
            out.push(Verdict {
                at_ms: now_ms,
                rule: rule.name.clone(),
                severity: rule.severity,
                signal: rule.condition.signal,
                color,
                state,
                n: reading.n,
                value: reading.value,
                threshold: rule.condition.threshold,
                window_ms: duration_ms(rule.window),
                baseline,
                detail,
                changed,
            });
        }
        out
    }

    /// Why rule `i` cannot be judged on series slot `s` after a gap: a
    /// probe it reads has no sample since ([`Engine::gap`]).
    fn stale(&self, i: usize, s: usize) -> Option<String> {
        let (_, length_ms) = self.gap?;
        let window = &self.windows[self.rule_window[i]];
        let probe = window.probes.iter().find(|&&p| {
            let p = &self.probes[p];
            // A shared probe's series is its own slot.
            let s = if p.scope == Scope::Shared { 2 } else { s };
            p.series[s].stale
        })?;
        Some(format!(
            "the watchdog was not running for {} (frozen, suspended or starved): waiting for a fresh sample from {}",
            humantime::format_duration(Duration::from_millis(length_ms.max(0) as u64)),
            self.probes[*probe].name
        ))
    }

    /// Rule `i`'s signal for a color, from its window (already advanced):
    /// the reading, the baseline used (for degradation) and, when there is
    /// no value, why.
    fn read(&self, i: usize, rule: &Rule, color: Color) -> Read {
        let s = color_slot(color);
        let window = &self.windows[self.rule_window[i]];
        let Some(agg) = window.aggs[s].as_ref() else {
            return Read::value(Reading { value: None, n: 0 });
        };
        let total = &agg.total;
        match rule.condition.signal {
            Signal::ErrorRate => Read::value(Reading {
                value: total.error_rate(),
                n: total.n_counts,
            }),
            Signal::LatencyAvg => Read::value(Reading {
                value: total.latency_avg(),
                n: total.n_latency,
            }),
            Signal::LatencyP95 => Read::value(Reading {
                value: agg.p95.as_ref().and_then(|q| q.p95()),
                n: total.n_latency,
            }),
            Signal::HealthFailures => {
                if window.probes.is_empty() {
                    return Read::none("no health probe on this color".to_owned());
                }
                // The smallest streak across the health probes: every health
                // probe must be failing for the color to be called down.
                let mut streak = u64::MAX;
                let mut n = u64::MAX;
                for (pos, &p) in window.probes.iter().enumerate() {
                    let series = &self.probes[p].series[s];
                    if series.observed == 0 {
                        return Read::none(format!("no samples yet from {}", self.probes[p].name));
                    }
                    streak = streak.min(series.consecutive_failures);
                    n = n.min(agg.per_probe[pos].n_counts);
                }
                let needed = u64::from(consecutive_needed(&rule.condition));
                // A streak counts its own samples even when the window
                // holds fewer (a slow probe): the streak is the evidence.
                let n = n.max(streak.min(needed));
                Read::value(Reading {
                    value: Some(streak as f64),
                    n,
                })
            }
            Signal::Degradation => self.degradation(window, agg, s),
            // Failed samples, weighted like the error rate: a log sample
            // counts its matching lines, an access_log sample its request.
            Signal::Errors => Read::value(Reading {
                value: (total.n_counts > 0).then(|| total.errors()),
                n: total.n_counts,
            }),
        }
    }

    /// See the module documentation, "Degradation".
    fn degradation(&self, window: &WindowSlot, agg: &Aggregate, s: usize) -> Read {
        // Latency: actual sum vs what the baseline predicts for these samples.
        let (mut observed, mut lat_expected) = (crate::model::LatencyMean::default(), 0.0);
        // Errors: actual vs what the baseline rate predicts for these requests.
        let (mut err_n, mut requests, mut errors, mut err_expected) = (0u64, 0.0, 0.0, 0.0);
        let mut any_baseline = false;
        for (pos, &p) in window.probes.iter().enumerate() {
            let Some(base) = self.probes[p].baseline.get(s).copied().flatten() else {
                continue;
            };
            any_baseline = true;
            let t = &agg.per_probe[pos];
            if let Some(b) = base.latency_ms.filter(|b| *b > 0.0) {
                observed.merge(t.latency_mean());
                lat_expected += b * t.n_latency as f64;
            }
            if let Some(b) = base.error_rate {
                err_n += t.n_counts;
                requests += t.requests();
                errors += t.errors();
                err_expected += b / 100.0 * t.requests();
            }
        }
        if !any_baseline {
            return Read {
                reading: Reading {
                    value: None,
                    n: agg.total.n_counts.max(agg.total.n_latency),
                },
                baseline: None,
                why: Some("no baseline from a previous deployment".to_owned()),
                extra: None,
            };
        }
        let latency = observed.ms().filter(|_| lat_expected > 0.0).map(|now| {
            let base = lat_expected / observed.n() as f64;
            (signal::degradation(now, base).unwrap_or(0.0), base, now)
        });
        let error = (requests > 0.0).then(|| {
            let base = err_expected / requests * 100.0;
            let now = errors / requests * 100.0;
            (now - base, base, now)
        });
        let mut parts = Vec::new();
        if let Some((d, base, now)) = latency {
            parts.push(format!(
                "latency {now:.1}ms vs {base:.1}ms baseline ({d:+.1}%)"
            ));
        }
        if let Some((d, base, now)) = error {
            parts.push(format!(
                "error rate {now:.2}% vs {base:.2}% baseline ({d:+.2} points)"
            ));
        }
        let (value, baseline) = match (latency, error) {
            (Some((l, lb, _)), Some((e, eb, _))) => {
                if e > l {
                    (Some(e), Some(eb))
                } else {
                    (Some(l), Some(lb))
                }
            }
            (Some((l, lb, _)), None) => (Some(l), Some(lb)),
            (None, Some((e, eb, _))) => (Some(e), Some(eb)),
            (None, None) => (None, None),
        };
        Read {
            reading: Reading {
                value,
                n: observed.n().max(err_n),
            },
            baseline,
            why: value
                .is_none()
                .then(|| "no samples in the window from probes with a baseline".to_owned()),
            extra: (!parts.is_empty()).then(|| parts.join("; ")),
        }
    }
}

/// A rule's signal as read from its window.
struct Read {
    reading: Reading,
    /// For `degradation`: the baseline the value was measured against.
    baseline: Option<f64>,
    /// Why there is no value.
    why: Option<String>,
    /// More evidence for the detail (degradation's two sides).
    extra: Option<String>,
}

impl Read {
    fn value(reading: Reading) -> Read {
        Read {
            reading,
            baseline: None,
            why: None,
            extra: None,
        }
    }

    fn none(why: String) -> Read {
        Read {
            reading: Reading { value: None, n: 0 },
            baseline: None,
            why: Some(why),
            extra: None,
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod stream_tests;

#[cfg(test)]
mod time_tests;
