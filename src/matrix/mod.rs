//! The rollback decision matrix: samples and times in, verdicts out.
//!
//! Pure: no IO and no clock reads. The daemon feeds it samples as they are
//! stored and asks for verdicts with the current time; `replay` and the
//! tests feed it generated or stored streams the same way. What to *do*
//! about a verdict is [`decide`]; doing it is the daemon's and rollback's job.

pub mod signal;

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde::Serialize;

use crate::config::{Actions, Config, Rule, Scope, consecutive_needed};
use crate::model::{Action, Color, Millis, Sample, Severity, Signal, duration_ms, format_value};
use signal::{Point, Reading};

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
    pub baseline: Option<f64>,
    /// Plain words: what was seen, or why it is inconclusive.
    pub detail: String,
    /// Whether the state differs from this rule's previous verdict.
    pub changed: bool,
}

/// Per (probe, color): the recent points and the current failure streak.
#[derive(Default, Debug)]
struct Series {
    points: VecDeque<Point>,
    consecutive_failures: u64,
    /// When the current failure streak began.
    streak_started: Option<Millis>,
    last_ok: Option<bool>,
}

#[derive(Default, Debug, Clone)]
struct RuleState {
    fired: bool,
    holding_since: Option<Millis>,
    clean_streak: u32,
    last: Option<State>,
}

/// The previous deployment's latency per probe, for `degradation`.
pub type Baselines = HashMap<(String, Color), f64>;

#[derive(Debug)]
pub struct Engine {
    rules: Vec<Rule>,
    /// (probe name, shared?) for every configured probe: the blindness check
    /// needs them all.
    probes: Vec<(String, Scope)>,
    series: HashMap<(String, Option<Color>), Series>,
    states: HashMap<(String, Color), RuleState>,
    baselines: Baselines,
    keep_ms: Millis,
}

impl Engine {
    pub fn new(config: &Config) -> Engine {
        let mut engine = Engine {
            rules: Vec::new(),
            probes: Vec::new(),
            series: HashMap::new(),
            states: HashMap::new(),
            baselines: HashMap::new(),
            keep_ms: 0,
        };
        engine.reconfigure(config);
        engine
    }

    /// Take a new configuration, keeping the windows of probes and the
    /// states of rules that are still there (a reload must not reset them).
    pub fn reconfigure(&mut self, config: &Config) {
        self.rules = config.rules.clone();
        self.probes = config
            .probes
            .iter()
            .map(|p| (p.name.clone(), p.scope))
            .collect();
        let max_window = self
            .rules
            .iter()
            .map(|r| r.window + r.hold_for)
            .max()
            .unwrap_or(Duration::from_secs(60));
        self.keep_ms = duration_ms(max_window);
        self.series
            .retain(|(probe, _), _| config.probe(probe).is_some());
        let names: Vec<&str> = self.rules.iter().map(|r| r.name.as_str()).collect();
        self.states
            .retain(|(rule, _), _| names.contains(&rule.as_str()));
    }

    /// Forget one probe's windows: its definition changed on reload, so
    /// its old samples measured something else.
    pub fn forget_probe(&mut self, probe: &str) {
        self.series.retain(|(p, _), _| p != probe);
    }

    /// Forget one rule's state (hysteresis, hold): its definition changed
    /// on reload.
    pub fn forget_rule(&mut self, rule: &str) {
        self.states.retain(|(r, _), _| r != rule);
    }

    pub fn set_baselines(&mut self, baselines: Baselines) {
        self.baselines = baselines;
    }

    /// Forget a color's samples: a new deployment on it starts clean.
    pub fn reset_color(&mut self, color: Color) {
        self.series.retain(|(_, c), _| *c != Some(color));
        self.states.retain(|(_, c), _| *c != color);
    }

    pub fn observe(&mut self, sample: &Sample) {
        let series = self
            .series
            .entry((sample.probe.clone(), sample.color))
            .or_default();
        let counts = sample.counts();
        if counts.is_some() {
            if sample.ok {
                series.consecutive_failures = 0;
                series.streak_started = None;
            } else {
                series.consecutive_failures += 1;
                series.streak_started.get_or_insert(sample.at_ms);
            }
            series.last_ok = Some(sample.ok);
        }
        series.points.push_back(Point {
            at_ms: sample.at_ms,
            ok: sample.ok,
            latency_ms: sample.latency_ms,
            counts,
        });
        let horizon = sample.at_ms - self.keep_ms;
        while series.points.front().is_some_and(|p| p.at_ms < horizon) {
            series.points.pop_front();
        }
    }

    /// When the color's current trouble began: the earliest start of a
    /// failure streak among its probes.
    pub fn failing_since(&self, color: Color) -> Option<Millis> {
        self.series
            .iter()
            .filter(|((_, c), _)| *c == Some(color))
            .filter_map(|(_, s)| s.streak_started)
            .min()
    }

    /// True when every probe, on both colors and shared, is failing right
    /// now: the fault is more likely ours (network, starvation) than the
    /// service's, and no verdict may blame a color.
    pub fn blind(&self) -> bool {
        let mut seen = 0;
        for (name, scope) in &self.probes {
            let colors: &[Option<Color>] = match scope {
                Scope::Shared => &[None],
                Scope::PerColor => &[Some(Color::Blue), Some(Color::Green)],
            };
            for color in colors {
                match self
                    .series
                    .get(&(name.clone(), *color))
                    .and_then(|s| s.last_ok)
                {
                    Some(true) => return false,
                    Some(false) => seen += 1,
                    None => {}
                }
            }
        }
        seen >= 2
    }

    /// Evaluate every rule for `color` at `now`.
    pub fn evaluate(&mut self, now_ms: Millis, color: Color) -> Vec<Verdict> {
        let blind = self.blind();
        let mut out = Vec::with_capacity(self.rules.len());
        for rule in &self.rules {
            let (reading, baseline, why) = self.read(rule, now_ms, color);
            let state_key = (rule.name.clone(), color);
            let st = self.states.entry(state_key).or_default();
            let conclusive =
                !blind && reading.value.is_some() && reading.n >= u64::from(rule.min_samples);
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
                "every probe on both colors is failing: the watchdog may be blind (network, overload), not judging".to_owned()
            } else if let Some(why) = why {
                why
            } else if reading.n < u64::from(rule.min_samples) {
                format!("{} samples of {} needed", reading.n, rule.min_samples)
            } else {
                let value = reading
                    .value
                    .map(|v| format_value(rule.condition.signal, v))
                    .unwrap_or_default();
                match state {
                    State::Fired if rule.condition.holds(reading.value.unwrap_or_default()) => {
                        format!(
                            "{} = {value} (threshold {})",
                            rule.condition.signal.as_str(),
                            rule.condition.threshold_text()
                        )
                    }
                    State::Fired => format!(
                        "{} = {value}, clean {} of {} evaluations needed to clear",
                        rule.condition.signal.as_str(),
                        st.clean_streak,
                        rule.clear_after
                    ),
                    _ => format!("{} = {value}", rule.condition.signal.as_str()),
                }
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

    /// The rule's signal for a color: the reading, the baseline used (for
    /// degradation) and, when there is no value, why.
    fn read(
        &self,
        rule: &Rule,
        now_ms: Millis,
        color: Color,
    ) -> (Reading, Option<f64>, Option<String>) {
        let since = now_ms - duration_ms(rule.window);
        let window = |probe: &String| {
            self.series
                .get(&(probe.clone(), Some(color)))
                .into_iter()
                .flat_map(move |s| {
                    s.points
                        .iter()
                        .filter(move |p| p.at_ms > since && p.at_ms <= now_ms)
                })
        };
        let all = || rule.probes.iter().flat_map(window);
        match rule.condition.signal {
            Signal::ErrorRate => (signal::error_rate(all()), None, None),
            Signal::LatencyAvg => (signal::latency_avg(all()), None, None),
            Signal::LatencyP95 => (signal::latency_p95(all()), None, None),
            Signal::HealthFailures => {
                // The smallest streak across the health probes: every health
                // probe must be failing for the color to be called down.
                let mut streak: Option<u64> = None;
                let mut n = u64::MAX;
                for probe in &rule.probes {
                    let Some(series) = self.series.get(&(probe.clone(), Some(color))) else {
                        return (
                            Reading { value: None, n: 0 },
                            None,
                            Some(format!("no samples yet from {probe}")),
                        );
                    };
                    streak = Some(streak.map_or(series.consecutive_failures, |s| {
                        s.min(series.consecutive_failures)
                    }));
                    n = n.min(window(probe).filter(|p| p.counts.is_some()).count() as u64);
                }
                let needed = u64::from(consecutive_needed(&rule.condition));
                // A streak counts its own samples even when the window
                // holds fewer (a slow probe): the streak is the evidence.
                let n = n.max(streak.unwrap_or(0).min(needed));
                (
                    Reading {
                        value: streak.map(|s| s as f64),
                        n: if rule.probes.is_empty() { 0 } else { n },
                    },
                    None,
                    None,
                )
            }
            Signal::Degradation => {
                let current = signal::latency_avg(all());
                let bases: Vec<f64> = rule
                    .probes
                    .iter()
                    .filter_map(|p| self.baselines.get(&(p.clone(), color)).copied())
                    .collect();
                if bases.is_empty() {
                    return (
                        Reading {
                            value: None,
                            n: current.n,
                        },
                        None,
                        Some("no baseline from a previous deployment".to_owned()),
                    );
                }
                let baseline = bases.iter().sum::<f64>() / bases.len() as f64;
                let value = current.value.and_then(|c| signal::degradation(c, baseline));
                (
                    Reading {
                        value,
                        n: current.n,
                    },
                    Some(baseline),
                    None,
                )
            }
        }
    }
}

/// What a fired verdict asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Roll the active color back: the worst fired rule that asks for it.
    Rollback(Verdict),
    Alert(Verdict),
    Log(Verdict),
}

/// Map verdicts to decisions per `[actions]`. Critical/High on the active
/// color may request a rollback; on the standby every action is at most an
/// alert (rolling back would not help the color that is not serving).
pub fn decide(verdicts: &[Verdict], active: Color, actions: &Actions) -> Vec<Decision> {
    let mut out = Vec::new();
    let mut rollback: Option<&Verdict> = None;
    for v in verdicts.iter().filter(|v| v.state == State::Fired) {
        match actions.for_severity(v.severity) {
            Action::Rollback if v.color == active => {
                if rollback.is_none_or(|r| v.severity > r.severity) {
                    rollback = Some(v);
                }
            }
            Action::Rollback | Action::Alert => out.push(Decision::Alert(v.clone())),
            Action::Log => out.push(Decision::Log(v.clone())),
        }
    }
    if let Some(v) = rollback {
        out.insert(0, Decision::Rollback(v.clone()));
    }
    out
}

/// The worst state across verdicts, for `STATUS=` and `/status`.
pub fn worst(verdicts: &[Verdict]) -> Option<&Verdict> {
    verdicts
        .iter()
        .filter(|v| v.state == State::Fired)
        .max_by_key(|v| v.severity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SampleStatus;
    use std::path::Path;

    const CONFIG: &str = r#"
[service]
name = "t"
[colors.blue]
base_url = "http://127.0.0.1:1"
[colors.green]
base_url = "http://127.0.0.1:2"
[[probe]]
name = "healthz"
kind = "http"
path = "/healthz"
interval = "1s"
timeout = "500ms"
health = true
[[probe]]
name = "lavalink"
kind = "http"
url = "http://127.0.0.1:3/version"
interval = "1s"
timeout = "500ms"
[rollback]
command = ["/bin/true"]
"#;

    fn config() -> Config {
        Config::parse(Path::new("/tmp/t.toml"), CONFIG).unwrap()
    }

    fn sample(at_s: i64, probe: &str, color: Option<Color>, ok: bool) -> Sample {
        Sample {
            at_ms: at_s * 1000,
            probe: probe.into(),
            color,
            deployment: None,
            ok,
            latency_ms: Some(10.0),
            status: if ok {
                SampleStatus::Ok
            } else {
                SampleStatus::Failed
            },
            detail: String::new(),
            requests: None,
            errors: None,
        }
    }

    fn state_of(vs: &[Verdict], prefix: &str) -> State {
        vs.iter()
            .find(|v| v.rule.starts_with(prefix))
            .unwrap()
            .state
    }

    #[test]
    fn three_consecutive_health_failures_fire_critical_and_hysteresis_clears() {
        let mut e = Engine::new(&config());
        let crit = "critical: health_failures";
        for t in 0..5 {
            e.observe(&sample(t, "healthz", Some(Color::Blue), true));
            e.observe(&sample(t, "healthz", Some(Color::Green), true));
            e.observe(&sample(t, "lavalink", None, true));
        }
        assert_eq!(state_of(&e.evaluate(5000, Color::Blue), crit), State::Clear);
        for t in 5..7 {
            e.observe(&sample(t, "healthz", Some(Color::Blue), false));
        }
        assert_eq!(
            state_of(&e.evaluate(7000, Color::Blue), crit),
            State::Clear,
            "two failures are a blip"
        );
        e.observe(&sample(7, "healthz", Some(Color::Blue), false));
        let vs = e.evaluate(8000, Color::Blue);
        assert_eq!(state_of(&vs, crit), State::Fired);
        let d = decide(&vs, Color::Blue, &config().actions);
        assert!(matches!(&d[0], Decision::Rollback(v) if v.rule.starts_with(crit)));
        // One clean sample does not clear it: three clean evaluations do.
        e.observe(&sample(8, "healthz", Some(Color::Blue), true));
        assert_eq!(state_of(&e.evaluate(9000, Color::Blue), crit), State::Fired);
        assert_eq!(
            state_of(&e.evaluate(10000, Color::Blue), crit),
            State::Fired
        );
        assert_eq!(
            state_of(&e.evaluate(11000, Color::Blue), crit),
            State::Clear
        );
    }

    #[test]
    fn standby_failures_only_alert() {
        let mut e = Engine::new(&config());
        for t in 0..4 {
            e.observe(&sample(t, "healthz", Some(Color::Green), false));
            e.observe(&sample(t, "healthz", Some(Color::Blue), true));
        }
        let vs = e.evaluate(4000, Color::Green);
        assert_eq!(state_of(&vs, "critical: health_failures"), State::Fired);
        let d = decide(&vs, Color::Blue, &config().actions);
        assert!(d.iter().all(|d| !matches!(d, Decision::Rollback(_))));
        assert!(d.iter().any(|d| matches!(d, Decision::Alert(_))));
    }

    #[test]
    fn blind_watchdog_is_inconclusive_not_a_rollback() {
        let mut e = Engine::new(&config());
        for t in 0..5 {
            e.observe(&sample(t, "healthz", Some(Color::Blue), false));
            e.observe(&sample(t, "healthz", Some(Color::Green), false));
            e.observe(&sample(t, "lavalink", None, false));
        }
        let vs = e.evaluate(5000, Color::Blue);
        assert!(vs.iter().all(|v| v.state == State::Inconclusive), "{vs:#?}");
        assert!(vs[0].detail.contains("blind"));
    }

    #[test]
    fn failing_shared_dependency_alone_does_not_judge_a_color() {
        let mut e = Engine::new(&config());
        for t in 0..30 {
            e.observe(&sample(t, "healthz", Some(Color::Blue), true));
            e.observe(&sample(t, "lavalink", None, false));
        }
        let vs = e.evaluate(30_000, Color::Blue);
        assert!(vs.iter().all(|v| v.state != State::Fired), "{vs:#?}");
    }

    #[test]
    fn too_few_samples_is_inconclusive() {
        let mut e = Engine::new(&config());
        e.observe(&sample(0, "healthz", Some(Color::Blue), false));
        let vs = e.evaluate(1000, Color::Blue);
        assert_eq!(state_of(&vs, "critical: error_rate"), State::Inconclusive);
        assert_eq!(
            state_of(&vs, "critical: health_failures"),
            State::Inconclusive
        );
    }
}
