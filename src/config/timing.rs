//! Timing: each rule's worst-case detection time (SPEC section 2), how long
//! a gate must probe to judge it, and how often independent noise would
//! fire a consecutive-failure rule ([`firings_per_year`], the closed form
//! that `matrix::noise` holds against its generator and the engine); the
//! load-time check that rejects a Critical/High rule too slow to act on in
//! time. Pure arithmetic over the validated configuration.

use std::time::Duration;

use super::locate::{Source, probe_span, rule_span};
use super::probe::{Check, Probe};
use super::rule::{ASSUMED_REQUESTS_PER_S, Rule, consecutive_needed};
use super::{Config, ConfigError};
use crate::model::{Severity, Signal};

impl Config {
    /// Reject Critical/High rules that cannot be acted on within the
    /// matrix's time, or can never gather `min_samples`; warn for the others.
    pub(super) fn check_matrix_timing(&mut self, src: &Source) -> Result<(), ConfigError> {
        let mut warnings = Vec::new();
        for rule in &self.rules {
            if let Some(w) = self.noise_warning(rule) {
                warnings.push(w);
            }
            let limit = rule.severity.acted_on_within();
            let urgent = matches!(rule.severity, Severity::Critical | Severity::High);
            let problem = match self.detection_time(rule) {
                // A default rule nothing feeds (no health probe, say) is
                // not the operator's mistake: a warning.
                Detection::Unfed(signal) => {
                    warnings.push(format!(
                        "rule {:?} can never fire: no probe feeds {}",
                        rule.name,
                        signal.as_str()
                    ));
                    continue;
                }
                Detection::Never(why) => format!("rule {:?} can never fire: {why}", rule.name),
                Detection::Within(t) if t > limit => format!(
                    "rule {:?} detects in {} at worst, but {} must be acted on within {}",
                    rule.name,
                    humantime::format_duration(t),
                    rule.severity,
                    humantime::format_duration(limit)
                ),
                Detection::Within(_) => continue,
            };
            if !urgent {
                warnings.push(problem);
                continue;
            }
            if self.default_rules {
                // The default matrix is fixed; what makes it late is the
                // probes: point at the slowest one feeding this rule.
                let slowest = rule
                    .probes
                    .iter()
                    .filter_map(|n| self.probe(n))
                    .max_by_key(|p| p.interval + p.timeout);
                let table = slowest
                    .and_then(|p| probe_span(src.text, &p.name))
                    .unwrap_or(0..0);
                return Err(src.key_error(
                    &table,
                    "interval",
                    format!("{problem} (default matrix): probe more often (shorter `interval`/`timeout`, or a `confirm_interval`)"),
                ));
            }
            let rule_span = rule_span(src.text, &self.rules, rule);
            return Err(src.error(
                rule_span,
                format!(
                    "{problem}: shorten `window`/`for`, lower `min_samples`, or probe more often"
                ),
            ));
        }
        self.warnings.extend(warnings);
        Ok(())
    }

    /// A Critical/High rule that would fire on independent noise at
    /// `[daemon] assumed_noise` more than once a year, in plain words with
    /// what fixes it; `check --strict` fails on it.
    pub fn noise_warning(&self, rule: &Rule) -> Option<String> {
        if rule.severity < Severity::High {
            return None;
        }
        let per_year = self.noise_firings(rule).filter(|f| *f > 1.0)?;
        Some(format!(
            "rule {:?} would fire on noise {} at {} independent failures ([daemon] assumed_noise): \
             ask for more consecutive failures (fast confirm keeps them quick) or add a second health probe \
             (the rule takes the smallest streak)",
            rule.name,
            how_often(per_year),
            format_rate(self.daemon.assumed_noise),
        ))
    }

    /// Expected false firings per year of a consecutive-failure rule at
    /// `[daemon] assumed_noise`; `None` for other rules.
    pub fn noise_firings(&self, rule: &Rule) -> Option<f64> {
        if rule.condition.signal != Signal::HealthFailures {
            return None;
        }
        let cadences: Vec<NoiseCadence> = rule
            .probes
            .iter()
            .filter_map(|n| self.probe(n))
            .map(|p| NoiseCadence {
                interval: p.interval,
                confirm: p.confirm_interval,
            })
            .collect();
        if cadences.is_empty() {
            return None;
        }
        Some(firings_per_year(
            self.daemon.assumed_noise,
            consecutive_needed(&rule.condition),
            &cadences,
        ))
    }

    /// Median detection of a consecutive-failure rule when the color goes
    /// hard down and answers at once (refused, 503): the fault lands half an
    /// interval before the next run on average, then the confirming runs
    /// follow at the confirm pace (or the interval). `None` for other rules.
    pub fn median_detection(&self, rule: &Rule) -> Option<Duration> {
        if rule.condition.signal != Signal::HealthFailures {
            return None;
        }
        let needed = consecutive_needed(&rule.condition).max(1);
        rule.probes
            .iter()
            .filter_map(|n| self.probe(n))
            .map(|p| p.interval / 2 + p.confirm_interval.unwrap_or(p.interval) * (needed - 1))
            .max()
            .map(|d| d + rule.hold_for)
    }

    /// How long a gate must probe for this rule to be judged: until its
    /// window holds `min_samples` (a probe's first run comes up to a second
    /// after the start, a prometheus probe's first scrape is "no data").
    /// `None` when it never can be.
    pub fn judge_time(&self, rule: &Rule) -> Option<Duration> {
        let feeding: Vec<&Probe> = rule.probes.iter().filter_map(|n| self.probe(n)).collect();
        if feeding.is_empty() {
            return None;
        }
        let need = u64::from(rule.min_samples.max(1));
        let samples_by = |t: Duration| -> u64 {
            feeding
                .iter()
                .map(|p| {
                    let lag = p.interval.min(Duration::from_secs(1))
                        + if matches!(p.check, Check::Prometheus(_)) {
                            p.interval
                        } else {
                            Duration::ZERO
                        };
                    match t.checked_sub(lag) {
                        Some(rest) => (rest.as_millis() / p.interval.as_millis().max(1)) as u64 + 1,
                        None => 0,
                    }
                })
                .sum()
        };
        // Whole seconds, and at most the window (else it is never judged).
        let mut t = Duration::from_secs(1);
        while t <= rule.window + Duration::from_secs(1) {
            if samples_by(t) >= need {
                // The answer lands within a probe's timeout after its run.
                let slowest = feeding.iter().map(|p| p.timeout).max().unwrap_or_default();
                return Some(Duration::from_secs(
                    (t + slowest).as_secs_f64().ceil() as u64
                ));
            }
            t += Duration::from_secs(1);
        }
        None
    }

    /// The shortest `gate --for` that judges every Critical/High rule.
    pub fn gate_time(&self) -> Option<Duration> {
        self.rules
            .iter()
            .filter(|r| r.severity >= Severity::High)
            .map(|r| self.judge_time(r))
            .try_fold(Duration::ZERO, |acc, t| t.map(|t| acc.max(t)))
    }

    /// Worst-case detection time of a rule (SPEC section 2): for
    /// `health_failures`, the first sample up to one interval after the
    /// fault, then the confirming samples; for windowed signals, the window.
    /// Both plus `for`.
    pub fn detection_time(&self, rule: &Rule) -> Detection {
        let feeding: Vec<&Probe> = rule
            .probes
            .iter()
            .filter_map(|n| self.probes.iter().find(|p| &p.name == n))
            .collect();
        if feeding.is_empty() {
            return Detection::Unfed(rule.condition.signal);
        }
        if rule.condition.signal == Signal::HealthFailures {
            // The first failing run starts up to one interval after the
            // fault and may take its whole timeout (a hung service). With
            // fast confirm, confirm runs start every confirm_interval
            // without waiting for the earlier ones (`probe::schedule`),
            // once a run failed or has gone unanswered that long, and each
            // ends at its own timeout; without, runs start on the interval.
            let needed = consecutive_needed(&rule.condition).max(1);
            let worst = feeding
                .iter()
                .map(|p| match p.confirm_interval {
                    Some(c) => {
                        let first = p.interval + p.timeout + c * (needed - 1);
                        // A confirm interval no shorter than the timeout
                        // starts after the first failure, not before.
                        if c >= p.timeout && needed > 1 {
                            first + p.timeout
                        } else {
                            first
                        }
                    }
                    None => p.interval * needed + p.timeout,
                })
                .max()
                .unwrap_or_default();
            return Detection::Within(worst + rule.hold_for);
        }
        let per_window: u64 = feeding
            .iter()
            .map(|p| match p.check {
                // A sample per request: at the assumed traffic.
                Check::AccessLog(_) => (rule.window.as_secs_f64() * ASSUMED_REQUESTS_PER_S) as u64,
                _ => (rule.window.as_millis() / p.interval.as_millis().max(1)) as u64,
            })
            .sum();
        if per_window < u64::from(rule.min_samples) {
            return Detection::Never(format!(
                "its {} window holds at most {per_window} samples per color but min_samples = {}",
                humantime::format_duration(rule.window),
                rule.min_samples
            ));
        }
        Detection::Within(rule.window + rule.hold_for)
    }

    /// Confirm runs after a first failure: up to the streak the health
    /// rules need (the scheduler's `Cadence::confirms`).
    pub fn confirms(&self) -> u32 {
        self.rules
            .iter()
            .filter(|r| r.condition.signal == Signal::HealthFailures)
            .map(|r| consecutive_needed(&r.condition).saturating_sub(1))
            .max()
            .unwrap_or(2)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Detection {
    Within(Duration),
    /// It can never fire, and why (a window too short for `min_samples`).
    Never(String),
    /// No configured probe produces the rule's signal.
    Unfed(Signal),
}

/// "about 3 times a day", "about once every 10 years": a rate per year in
/// an operator's words.
pub fn how_often(per_year: f64) -> String {
    if per_year <= 0.0 {
        "never".to_owned()
    } else if per_year >= 2.0 * 365.25 {
        format!("about {:.0} times a day", per_year / 365.25)
    } else if per_year >= 365.25 / 1.5 {
        "about once a day".to_owned()
    } else if per_year >= 1.5 {
        format!("about {:.0} times a year", per_year)
    } else if per_year >= 1.0 / 1.5 {
        "about once a year".to_owned()
    } else {
        format!("about once every {} years", significant(1.0 / per_year))
    }
}

/// A number with about two significant digits, for people.
fn significant(x: f64) -> String {
    if x >= 100.0 {
        let mag = 10f64.powi(x.log10().floor() as i32 - 1);
        format!("{:.0}", (x / mag).round() * mag)
    } else {
        format!("{:.0}", x)
    }
}

/// 0.02 -> "2%", 0.005 -> "0.5%".
pub fn format_rate(rate: f64) -> String {
    let pct = rate * 100.0;
    if (pct - pct.round()).abs() < 1e-9 {
        format!("{pct:.0}%")
    } else {
        format!("{pct}%")
    }
}

/// Seconds in a (Julian) year.
pub const YEAR_S: f64 = 365.25 * 86400.0;

/// One health probe's cadence, as far as noise is concerned.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NoiseCadence {
    pub interval: Duration,
    /// `None`: fast confirm is off.
    pub confirm: Option<Duration>,
}

/// Expected firings per year of "every one of these probes failed `needed`
/// times in a row" when each sample fails independently with probability
/// `rate` (0.02 for 2%), with the scheduler confirming failures fast.
///
/// Per probe, a new streak reaches `needed` on a tick when the sample
/// before was ok and this tick's sample and the `needed - 1` after it fail:
/// `(1 - p) p^needed` per tick without fast confirm, `(1 - p^needed)
/// p^needed` with it (a burst that did not confirm ended on a success). Ticks come every `interval`, plus the
/// confirm runs a failure triggers (`confirm x (p + p^2 + ...)` on average:
/// the interval restarts after them). A streak, once reached, lasts about
/// one interval, so at a random moment a probe is in one with probability
/// about `p^needed`; with several health probes (the rule takes the
/// smallest streak) one reaches it while every other is already there.
pub fn firings_per_year(rate: f64, needed: u32, probes: &[NoiseCadence]) -> f64 {
    if probes.is_empty() || needed == 0 || !(0.0..1.0).contains(&rate) {
        return if needed == 0 { f64::INFINITY } else { 0.0 };
    }
    let n = i32::try_from(needed).unwrap_or(i32::MAX);
    let in_streak = rate.powi(n);
    let per_second: f64 = probes
        .iter()
        .map(|c| {
            let confirms: f64 = (1..n).map(|k| rate.powi(k)).sum();
            let cycle = c.interval.as_secs_f64()
                + c.confirm.map(|c| c.as_secs_f64() * confirms).unwrap_or(0.0);
            // The sample before a tick failed only if the burst before
            // confirmed a streak (with fast confirm), or with probability
            // `p` (without): then this tick continues a streak, it does
            // not start one.
            let before_ok = match c.confirm {
                Some(_) => 1.0 - in_streak,
                None => 1.0 - rate,
            };
            before_ok * in_streak / cycle.max(1e-3)
        })
        .sum();
    per_second * in_streak.powi(probes.len() as i32 - 1) * YEAR_S
}
