//! The shared vocabulary of SPEC section 1: colors, severities, actions,
//! signals, conditions and samples, and notices (`model/notice.rs`). Plain
//! values; no IO.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

mod notice;
pub use notice::{Event, Notice, Phase};

/// Milliseconds since the Unix epoch: how every timestamp is stored.
pub type Millis = i64;

/// The wall clock, in [`Millis`]. Only the daemon, the CLI and the store read
/// it; the matrix is handed times.
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

pub fn duration_ms(d: Duration) -> Millis {
    d.as_millis().min(i64::MAX as u128) as Millis
}

/// Nearest-rank 95th percentile (the value at rank ceil(0.95 n)); sorts
/// `values` in place. `None` for no values. The one definition every p95
/// in rollbackd uses (the matrix's incremental window keeps the same rank).
pub fn p95(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((0.95 * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

/// The one average latency: the mean of the latencies seen, in ms, `None`
/// over none. Every average latency in rollbackd is this (the matrix's
/// windows, degradation, the charts, `gate`, `report`); the matrix's
/// windows keep their running sum in whole microseconds, so that a point
/// leaving takes back exactly what it added, and hand it over with
/// [`LatencyMean::from_sum`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencyMean {
    sum_ms: f64,
    n: u64,
}

impl LatencyMean {
    /// A mean over `n` latencies adding up to `sum_ms`.
    pub fn from_sum(sum_ms: f64, n: u64) -> LatencyMean {
        LatencyMean { sum_ms, n }
    }

    pub fn add(&mut self, latency_ms: f64) {
        self.sum_ms += latency_ms;
        self.n += 1;
    }

    /// Both means' latencies as one.
    pub fn merge(&mut self, other: LatencyMean) {
        self.sum_ms += other.sum_ms;
        self.n += other.n;
    }

    /// How many latencies.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// The mean in ms; `None` over no latency.
    pub fn ms(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum_ms / self.n as f64)
    }
}

impl FromIterator<f64> for LatencyMean {
    fn from_iter<I: IntoIterator<Item = f64>>(latencies: I) -> LatencyMean {
        let mut mean = LatencyMean::default();
        latencies.into_iter().for_each(|l| mean.add(l));
        mean
    }
}

/// RFC 3339 in UTC, to the millisecond: a rollback's steps are often
/// milliseconds apart.
pub fn format_ms(ms: Millis) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The keys of points in time, stored as Unix milliseconds.
const TIME_KEYS: &[&str] = &[
    "at_ms",
    "opened_ms",
    "closed_ms",
    "started_ms",
    "ended_ms",
    "until_ms",
    "deadline_ms",
];

/// A document for printing (`--json`, `/status`) with every point in time
/// as RFC 3339 with milliseconds (`at_ms: 1764...` becomes `at:
/// "2026-...Z"`), the one time format anything prints. Durations
/// (`after_ms`, `window_ms`, `downtime_ms`) stay numbers.
pub fn with_rfc3339_times(mut value: serde_json::Value) -> serde_json::Value {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for key in TIME_KEYS {
                    if let Some(ms) = map.get(*key).map(|t| t.as_i64()) {
                        map.remove(*key);
                        let name = key.trim_end_matches("_ms").to_owned();
                        map.insert(
                            name,
                            ms.map(format_ms)
                                .map_or(serde_json::Value::Null, serde_json::Value::String),
                        );
                    }
                }
                map.values_mut().for_each(walk);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut value);
    value
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Blue,
    Green,
}

impl Color {
    pub const ALL: [Color; 2] = [Color::Blue, Color::Green];

    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Color {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "blue" => Ok(Color::Blue),
            "green" => Ok(Color::Green),
            other => Err(format!("expected \"blue\" or \"green\", found {other:?}")),
        }
    }
}

/// Ordered from least to most urgent, so `max()` is the worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 4] = [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// The matrix's "must be acted on within" column (SPEC section 2).
    pub fn acted_on_within(self) -> Duration {
        match self {
            Severity::Critical => Duration::from_secs(2 * 60),
            Severity::High => Duration::from_secs(5 * 60),
            Severity::Medium => Duration::from_secs(15 * 60),
            Severity::Low => Duration::from_secs(60 * 60),
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "low" => Ok(Severity::Low),
            "medium" => Ok(Severity::Medium),
            "high" => Ok(Severity::High),
            "critical" => Ok(Severity::Critical),
            other => Err(format!(
                "expected one of \"critical\", \"high\", \"medium\", \"low\", found {other:?}"
            )),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Rollback,
    Alert,
    Log,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Rollback => "rollback",
            Action::Alert => "alert",
            Action::Log => "log",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    ErrorRate,
    LatencyAvg,
    LatencyP95,
    HealthFailures,
    Degradation,
    /// A count of failed samples (for `log`/`access_log`: matching lines,
    /// failed requests) over the window.
    Errors,
}

/// What a threshold is measured in, and so which units it may be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Percent,
    Millis,
    Count,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::ErrorRate => "error_rate",
            Signal::LatencyAvg => "latency_avg",
            Signal::LatencyP95 => "latency_p95",
            Signal::HealthFailures => "health_failures",
            Signal::Degradation => "degradation",
            Signal::Errors => "errors",
        }
    }

    pub fn unit(self) -> Unit {
        match self {
            Signal::ErrorRate | Signal::Degradation => Unit::Percent,
            Signal::LatencyAvg | Signal::LatencyP95 => Unit::Millis,
            Signal::HealthFailures | Signal::Errors => Unit::Count,
        }
    }
}

impl FromStr for Signal {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "error_rate" => Ok(Signal::ErrorRate),
            "latency_avg" => Ok(Signal::LatencyAvg),
            "latency_p95" => Ok(Signal::LatencyP95),
            "health_failures" => Ok(Signal::HealthFailures),
            "degradation" => Ok(Signal::Degradation),
            "errors" => Ok(Signal::Errors),
            other => Err(format!(
                "unknown signal {other:?}: expected error_rate, latency_avg, latency_p95, health_failures, degradation or errors"
            )),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "==")]
    Eq,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Eq => "==",
        }
    }

    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Gt => value > threshold,
            Op::Ge => value >= threshold,
            Op::Lt => value < threshold,
            Op::Le => value <= threshold,
            Op::Eq => (value - threshold).abs() < 1e-9,
        }
    }
}

/// `SIGNAL OP VALUE`, with VALUE normalised to the signal's unit: percent as
/// a number of percent (50.0), latency in milliseconds, counts as counts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Condition {
    pub signal: Signal,
    pub op: Op,
    pub threshold: f64,
}

impl Condition {
    pub fn holds(&self, value: f64) -> bool {
        self.op.holds(value, self.threshold)
    }

    /// The threshold written back with its unit, e.g. `50%`, `5000ms`, `3`.
    pub fn threshold_text(&self) -> String {
        format_value(self.signal, self.threshold)
    }
}

/// A signal value written with its unit.
pub fn format_value(signal: Signal, value: f64) -> String {
    let n = if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    };
    match signal.unit() {
        Unit::Percent => format!("{n}%"),
        Unit::Millis => format!("{n}ms"),
        Unit::Count => n,
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.signal.as_str(),
            self.op.as_str(),
            self.threshold_text()
        )
    }
}

impl FromStr for Condition {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const GRAMMAR: &str =
            "expected \"SIGNAL OP VALUE\", like \"error_rate > 50%\" or \"latency_avg > 5000ms\"";
        let s = s.trim();
        let op_at = s
            .find(['<', '>', '='])
            .ok_or_else(|| format!("no comparison operator in {s:?}: {GRAMMAR}"))?;
        let signal: Signal = s[..op_at].trim().parse()?;
        let rest = &s[op_at..];
        let (op, value) = [
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("==", Op::Eq),
            (">", Op::Gt),
            ("<", Op::Lt),
        ]
        .into_iter()
        .find_map(|(text, op)| rest.strip_prefix(text).map(|v| (op, v.trim())))
        .ok_or_else(|| format!("bad operator in {s:?}: expected one of > >= < <= =="))?;
        if value.is_empty() {
            return Err(format!("missing value in {s:?}: {GRAMMAR}"));
        }
        let split = value
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(value.len());
        let (number, unit) = (value[..split].trim(), value[split..].trim());
        let number: f64 = number
            .parse()
            .map_err(|_| format!("{value:?} is not a number with a unit: {GRAMMAR}"))?;
        let threshold = match (signal.unit(), unit) {
            (Unit::Percent, "%") => number,
            (Unit::Millis, "ms") => number,
            (Unit::Millis, "s") => number * 1000.0,
            (Unit::Count, "") => number,
            (Unit::Percent, _) => {
                return Err(format!(
                    "{} is a percentage: write the value like \"50%\"",
                    signal.as_str()
                ));
            }
            (Unit::Millis, _) => {
                return Err(format!(
                    "{} is a latency: write the value in ms or s, like \"5000ms\" or \"5s\"",
                    signal.as_str()
                ));
            }
            (Unit::Count, _) => {
                return Err(format!(
                    "{} is a count: write a bare number, like \"3\"",
                    signal.as_str()
                ));
            }
        };
        Ok(Condition {
            signal,
            op,
            threshold,
        })
    }
}

/// Where a rollback's incident stands (SPEC section 4): the `state` of an
/// incident row, persisted before the effect it announces.
///
/// ```text
/// requested -> target_verified -> switching -> switched -> verified
///          \-> refused        \-> failed              \-> escalated
/// ```
///
/// `dry_run` closes a rollback that ran everything but the command;
/// `unknown` one whose switch command started and whose outcome nothing
/// can tell (`status` then calls the active color uncertain). This is the
/// only place an incident state is spelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentState {
    Requested,
    TargetVerified,
    Switching,
    Switched,
    Verified,
    Escalated,
    Refused,
    Failed,
    DryRun,
    Unknown,
}

impl IncidentState {
    pub const ALL: [IncidentState; 10] = [
        IncidentState::Requested,
        IncidentState::TargetVerified,
        IncidentState::Switching,
        IncidentState::Switched,
        IncidentState::Verified,
        IncidentState::Escalated,
        IncidentState::Refused,
        IncidentState::Failed,
        IncidentState::DryRun,
        IncidentState::Unknown,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            IncidentState::Requested => "requested",
            IncidentState::TargetVerified => "target_verified",
            IncidentState::Switching => "switching",
            IncidentState::Switched => "switched",
            IncidentState::Verified => "verified",
            IncidentState::Escalated => "escalated",
            IncidentState::Refused => "refused",
            IncidentState::Failed => "failed",
            IncidentState::DryRun => "dry_run",
            IncidentState::Unknown => "unknown",
        }
    }

    /// Whether an incident in this state is over (it no longer holds the
    /// in-flight slot).
    pub fn is_closed(self) -> bool {
        match self {
            IncidentState::Requested
            | IncidentState::TargetVerified
            | IncidentState::Switching
            | IncidentState::Switched => false,
            IncidentState::Verified
            | IncidentState::Escalated
            | IncidentState::Refused
            | IncidentState::Failed
            | IncidentState::DryRun
            | IncidentState::Unknown => true,
        }
    }
}

impl fmt::Display for IncidentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for IncidentState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        IncidentState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown incident state {s:?}"))
    }
}

/// What a timeline event records: the moment the trouble was first seen
/// (`detected`, before the incident opened), or a step taken in (or into)
/// an incident state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Detected,
    State(IncidentState),
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Detected => "detected",
            EventKind::State(state) => state.as_str(),
        }
    }
}

impl From<IncidentState> for EventKind {
    fn from(state: IncidentState) -> Self {
        EventKind::State(state)
    }
}

impl PartialEq<IncidentState> for EventKind {
    fn eq(&self, other: &IncidentState) -> bool {
        *self == EventKind::State(*other)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == EventKind::Detected.as_str() {
            return Ok(EventKind::Detected);
        }
        s.parse()
            .map(EventKind::State)
            .map_err(|_| format!("unknown timeline event kind {s:?}"))
    }
}

impl Serialize for EventKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// What started a rollback.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// The matrix fired a rule.
    Automatic,
    /// `rollbackd rollback --reason`.
    Manual,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Automatic => "automatic",
            Trigger::Manual => "manual",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Trigger {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "automatic" => Ok(Trigger::Automatic),
            "manual" => Ok(Trigger::Manual),
            other => Err(format!("unknown rollback trigger {other:?}")),
        }
    }
}

/// What one probe run saw. `Ok` and `Failed` got an answer from the
/// target (a failed answer: a bad status, a mismatching body, an exit code,
/// a refused or reset connection, errors in metrics or logs); `Timeout` and
/// `Unreachable` got none (no answer in time; a name that does not resolve,
/// an unreachable network, the watchdog's own resource error); `NoData` is
/// neither a pass nor a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleStatus {
    Ok,
    Failed,
    Timeout,
    Unreachable,
    NoData,
}

impl SampleStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SampleStatus::Ok => "ok",
            SampleStatus::Failed => "failed",
            SampleStatus::Timeout => "timeout",
            SampleStatus::Unreachable => "unreachable",
            SampleStatus::NoData => "no_data",
        }
    }
}

impl SampleStatus {
    /// True for `Ok` and `Failed`: the target answered.
    pub fn answered(self) -> bool {
        matches!(self, SampleStatus::Ok | SampleStatus::Failed)
    }
}

impl FromStr for SampleStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ok" => Ok(SampleStatus::Ok),
            "failed" => Ok(SampleStatus::Failed),
            "timeout" => Ok(SampleStatus::Timeout),
            "unreachable" => Ok(SampleStatus::Unreachable),
            "no_data" => Ok(SampleStatus::NoData),
            other => Err(format!("unknown sample status {other:?}")),
        }
    }
}

/// One probe result. `requests`/`errors` carry counts for probes that see
/// real traffic (prometheus, log); a plain check is one request, failed or not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub at_ms: Millis,
    pub probe: String,
    /// `None` for a shared probe (an absolute URL: a dependency of both colors).
    pub color: Option<Color>,
    pub deployment: Option<i64>,
    pub ok: bool,
    pub latency_ms: Option<f64>,
    pub status: SampleStatus,
    pub detail: String,
    pub requests: Option<f64>,
    pub errors: Option<f64>,
}

impl Sample {
    /// A check of `probe` on `color` at `at_ms` that got an answer, good
    /// (`ok`) or bad, in `latency_ms`: no deployment, no detail, one request.
    /// Tests and benchmarks build their samples from it (other fields by
    /// struct update).
    pub fn answer(
        at_ms: Millis,
        probe: &str,
        color: Option<Color>,
        ok: bool,
        latency_ms: f64,
    ) -> Sample {
        Sample {
            at_ms,
            probe: probe.to_owned(),
            color,
            deployment: None,
            ok,
            latency_ms: Some(latency_ms),
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

    /// Whether the target answered (well or badly): what tells a broken
    /// service from a blind watchdog (SPEC section 2, "An answer is not
    /// blindness").
    pub fn answered(&self) -> bool {
        self.status.answered()
    }

    /// Requests and errors this sample stands for, or `None` for no data.
    pub fn counts(&self) -> Option<(f64, f64)> {
        match self.status {
            SampleStatus::NoData => None,
            _ => match (self.requests, self.errors) {
                (Some(r), Some(e)) => Some((r, e)),
                _ => Some((1.0, if self.ok { 0.0 } else { 1.0 })),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_latency_mean_is_none_over_nothing_and_the_same_however_it_is_built() {
        assert_eq!(LatencyMean::default().ms(), None);
        assert_eq!(LatencyMean::from_sum(0.0, 0).ms(), None);
        let added: LatencyMean = [10.0, 20.0, 60.0].into_iter().collect();
        assert_eq!((added.ms(), added.n()), (Some(30.0), 3));
        assert_eq!(LatencyMean::from_sum(90.0, 3), added);
        let mut merged: LatencyMean = [10.0].into_iter().collect();
        merged.merge([20.0, 60.0].into_iter().collect());
        assert_eq!(merged, added);
    }

    #[test]
    fn conditions_parse_with_units() {
        let c: Condition = "error_rate > 50%".parse().unwrap();
        assert_eq!(
            (c.signal, c.op, c.threshold),
            (Signal::ErrorRate, Op::Gt, 50.0)
        );
        let c: Condition = "latency_avg>5s".parse().unwrap();
        assert_eq!(
            (c.signal, c.op, c.threshold),
            (Signal::LatencyAvg, Op::Gt, 5000.0)
        );
        let c: Condition = "latency_p95 <= 250ms".parse().unwrap();
        assert_eq!((c.op, c.threshold), (Op::Le, 250.0));
        let c: Condition = "health_failures >= 3".parse().unwrap();
        assert_eq!(
            (c.signal, c.op, c.threshold),
            (Signal::HealthFailures, Op::Ge, 3.0)
        );
        assert_eq!(c.to_string(), "health_failures >= 3");
        let c: Condition = "error_rate == 100%".parse().unwrap();
        assert!(c.holds(100.0) && !c.holds(99.0));
    }

    #[test]
    fn conditions_reject_wrong_units_and_garbage() {
        for (text, needle) in [
            ("error_rate > 50", "percentage"),
            ("latency_avg > 5%", "latency"),
            ("health_failures >= 3ms", "count"),
            ("errors > 5%", "count"),
            ("failures > 5", "unknown signal"),
            ("error_rate 50%", "no comparison"),
            ("error_rate => 50%", "bad operator"),
            ("error_rate > %", "not a number"),
            ("error_rate >", "missing value"),
        ] {
            let err = text.parse::<Condition>().unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn severity_orders_by_urgency() {
        assert!(Severity::Critical > Severity::High && Severity::Medium > Severity::Low);
        assert_eq!(Severity::ALL.iter().max(), Some(&Severity::Critical));
    }

    #[test]
    fn incident_vocabulary_round_trips_and_rejects_unknown_text() {
        for state in IncidentState::ALL {
            assert_eq!(state.as_str().parse::<IncidentState>(), Ok(state));
            let kind = EventKind::from(state);
            assert_eq!(kind.as_str().parse::<EventKind>(), Ok(kind));
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::to_value(kind).unwrap()
            );
        }
        assert_eq!("detected".parse::<EventKind>(), Ok(EventKind::Detected));
        // Printed in aligned columns (the demo's timeline): width applies.
        let kind = EventKind::from(IncidentState::Switched);
        assert_eq!(format!("[{kind:<10}]"), "[switched  ]");
        assert_eq!(format!("[{:<8}]", IncidentState::Failed), "[failed  ]");
        assert!("detected".parse::<IncidentState>().is_err());
        for trigger in [Trigger::Automatic, Trigger::Manual] {
            assert_eq!(trigger.as_str().parse::<Trigger>(), Ok(trigger));
        }
        let err = "switchin".parse::<IncidentState>().unwrap_err();
        assert!(err.contains("\"switchin\""), "{err}");
        let err = "bogus".parse::<EventKind>().unwrap_err();
        assert!(err.contains("\"bogus\""), "{err}");
        let err = "cron".parse::<Trigger>().unwrap_err();
        assert!(err.contains("\"cron\""), "{err}");
    }
}
