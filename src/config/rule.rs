//! Rules: the validated `[[rule]]` tables, the default matrix of SPEC
//! section 2 (and its rows for real traffic), and which probes feed a rule.
//! A rule's timing (how soon it can fire, what noise would fire it) is in
//! `timing`.

use std::ops::Range;
use std::time::Duration;

use super::ConfigError;
use super::locate::Source;
use super::probe::{Check, Probe, Scope};
use super::raw::RawRule;
use crate::model::{Condition, Severity, Signal};

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub severity: Severity,
    pub condition: Condition,
    pub window: Duration,
    pub hold_for: Duration,
    pub min_samples: u32,
    pub clear_after: u32,
    /// The probes that feed this rule's signal, resolved at load time.
    pub probes: Vec<String>,
}

/// The default decision matrix of SPEC section 2.
fn default_rule_specs() -> Vec<(Severity, &'static str, &'static str, u32)> {
    vec![
        (Severity::Critical, "health_failures >= 5", "10m", 5),
        (Severity::Critical, "error_rate >= 100%", "1m", 5),
        (Severity::High, "error_rate > 50%", "2m", 10),
        (Severity::High, "latency_avg > 5000ms", "5m", 10),
        (Severity::High, "degradation > 50%", "5m", 10),
        (Severity::Medium, "error_rate > 10%", "5m", 10),
        (Severity::Medium, "latency_avg > 2000ms", "5m", 10),
        (Severity::Low, "error_rate > 2%", "15m", 20),
        (Severity::Low, "latency_avg > 1000ms", "15m", 20),
    ]
}

/// The traffic an `access_log` probe is assumed to see when `check` states
/// detection times and `min_samples` feasibility: requests per second per
/// color. Real traffic is what it is; this is the rate the figures assume.
pub const ASSUMED_REQUESTS_PER_S: f64 = 20.0;

/// Rules added to the default matrix when there are `access_log` probes,
/// fed by those probes only (docs/ARCHITECTURE.md says why these numbers):
/// a window of 400 ms all failing (at 20 requests/s, eight requests in a
/// row) is a hard-down color, rolled back ~0.4 s after the fault; more
/// than half failing over 30 s (at least 100 requests) is High.
fn default_access_log_rule_specs() -> Vec<(Severity, &'static str, &'static str, u32)> {
    vec![
        (Severity::Critical, "error_rate >= 100%", "400ms", 6),
        (Severity::High, "error_rate > 50%", "30s", 100),
    ]
}

/// The default matrix for these probes: SPEC section 2's rows, plus the
/// real-traffic rows fed by access logs only when there are `access_log`
/// probes.
pub(super) fn default_rules(probes: &[Probe]) -> Vec<Rule> {
    default_rule_specs()
        .into_iter()
        .map(|spec| (spec, false))
        .chain(
            default_access_log_rule_specs()
                .into_iter()
                .map(|spec| (spec, true))
                .filter(|_| {
                    probes
                        .iter()
                        .any(|p| matches!(p.check, Check::AccessLog(_)))
                }),
        )
        .map(|((severity, when, window, min_samples), access_log_only)| {
            let condition: Condition = when.parse().unwrap_or_else(|e| unreachable!("{e}"));
            let window = humantime::parse_duration(window).unwrap_or_else(|e| unreachable!("{e}"));
            let mut rule = make_rule(
                None,
                severity,
                condition,
                window,
                None,
                Some(min_samples),
                None,
                probes,
            );
            if access_log_only {
                rule.probes.retain(|n| {
                    probes
                        .iter()
                        .any(|p| &p.name == n && matches!(p.check, Check::AccessLog(_)))
                });
            }
            rule
        })
        .collect()
}

/// How many consecutive failed samples a `health_failures` condition needs.
pub fn consecutive_needed(c: &Condition) -> u32 {
    use crate::model::Op;
    let t = c.threshold.max(0.0);
    match c.op {
        Op::Gt => t.floor() as u32 + 1,
        _ => t.ceil() as u32,
    }
}

/// Which probes feed a signal when a rule names none: every per-color probe
/// that produces it. Shared probes never judge a color.
fn feeds(signal: Signal, probe: &Probe) -> bool {
    if probe.scope == Scope::Shared {
        return false;
    }
    match signal {
        Signal::HealthFailures => probe.health,
        Signal::ErrorRate | Signal::Errors => true,
        Signal::LatencyAvg | Signal::LatencyP95 | Signal::Degradation => match &probe.check {
            Check::Log(_) | Check::Unit(_) => false,
            Check::Prometheus(p) => p.latency.is_some(),
            _ => true,
        },
    }
}

#[allow(clippy::too_many_arguments)]
fn make_rule(
    name: Option<String>,
    severity: Severity,
    condition: Condition,
    window: Duration,
    hold_for: Option<Duration>,
    min_samples: Option<u32>,
    clear_after: Option<u32>,
    probes: &[Probe],
) -> Rule {
    let min_default = match condition.signal {
        Signal::HealthFailures => consecutive_needed(&condition),
        // A count is its own evidence: one sample in the window will do.
        Signal::Errors => 1,
        _ => 10,
    };
    Rule {
        name: name.unwrap_or_else(|| {
            format!(
                "{severity}: {condition} over {}",
                humantime::format_duration(window)
            )
        }),
        severity,
        condition,
        window,
        hold_for: hold_for.unwrap_or_default(),
        min_samples: min_samples.unwrap_or(min_default),
        clear_after: clear_after.unwrap_or(3),
        probes: probes
            .iter()
            .filter(|p| feeds(condition.signal, p))
            .map(|p| p.name.clone())
            .collect(),
    }
}

pub(super) fn validate_rule(
    src: &Source,
    span: &Range<usize>,
    raw: RawRule,
    probes: &[Probe],
) -> Result<Rule, ConfigError> {
    let err = |key: &str, msg: String| src.key_error(span, key, msg);
    let condition = raw.when.0;
    let window = raw
        .window
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(5 * 60));
    if window.is_zero() {
        return Err(err(
            "window",
            "expected a window above zero, like \"2m\"".into(),
        ));
    }
    if raw.clear_after == Some(0) {
        return Err(err(
            "clear_after",
            "expected at least 1 clean evaluation".into(),
        ));
    }
    let mut rule = make_rule(
        raw.name,
        raw.severity.0,
        condition,
        window,
        raw.hold_for.map(|d| d.0),
        raw.min_samples,
        raw.clear_after,
        probes,
    );
    if let Some(names) = raw.probes {
        let mut chosen = Vec::new();
        for name in names {
            let probe = probes
                .iter()
                .find(|p| p.name == name)
                .ok_or_else(|| err("probes", format!("no probe is named {name:?}")))?;
            if !feeds(condition.signal, probe) {
                let why = if probe.scope == Scope::Shared {
                    "it is shared, and a shared dependency cannot judge a color".to_owned()
                } else {
                    format!("it does not produce {}", condition.signal.as_str())
                };
                return Err(err(
                    "probes",
                    format!("probe {name:?} cannot feed this rule: {why}"),
                ));
            }
            chosen.push(name);
        }
        rule.probes = chosen;
    }
    Ok(rule)
}
