//! Configuration: the TOML of SPEC section 3 parsed into raw serde structs,
//! then validated once into [`Config`], which holds only real objects
//! (`Duration`, `Url`, `Regex`, enums, resolved [`Secret`]s).
//!
//! Strings and seconds stop here. Every error names the file, the line, the
//! key (as a dotted path such as `probe[2].timeout`, 1-based) and what was
//! expected. `check`, `run` and a reload all go through [`Config::load`].
//! This module does no IO besides reading the file and resolving secrets.

pub mod secret;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use toml::Spanned;
use url::Url;

use crate::config::secret::Secret;
use crate::matrix::noise;
use crate::model::{Action, Color, Condition, Severity, Signal};

pub const DEFAULT_PATH: &str = "/etc/rollbackd/rollbackd.toml";

/// `--config`, else `ROLLBACKD_CONFIG`, else [`DEFAULT_PATH`].
pub fn resolve_path(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    match std::env::var_os("ROLLBACKD_CONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_PATH),
    }
}

/// The shortest `[daemon] retention` accepted: rules' windows (up to 15m
/// by default) and reports read samples that recent.
pub const MIN_RETENTION: Duration = Duration::from_secs(3600);

/// The largest configuration file read (a config is a few KiB).
pub const CONFIG_CAP: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the configuration: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {key}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
}

// ---------------------------------------------------------------------------
// The validated configuration.

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub daemon: Daemon,
    pub service: String,
    pub colors: Colors,
    pub active_file: Option<PathBuf>,
    /// `[entry]`: the service as users reach it, to confirm a switch by
    /// the traffic itself and to see drift.
    pub entry: Option<Entry>,
    pub probes: Vec<Probe>,
    pub rules: Vec<Rule>,
    /// True when the file has no `[[rule]]` and the SPEC's matrix applies.
    pub default_rules: bool,
    pub actions: Actions,
    pub rollback: Rollback,
    pub notify: Vec<Notifier>,
    /// Non-fatal findings `check` prints (a rule that can never fire, ...).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Daemon {
    pub state_dir: PathBuf,
    pub listen: Option<SocketAddr>,
    pub retention: Duration,
    pub dry_run: bool,
    pub watch_config: bool,
    /// The independent failure rate `check` assumes when it says how often
    /// a consecutive-failure rule would fire on noise (a fraction: 0.02).
    pub assumed_noise: f64,
}

#[derive(Debug, Clone)]
pub struct Colors {
    pub blue: ColorTarget,
    pub green: ColorTarget,
}

impl Colors {
    pub fn get(&self, color: Color) -> &ColorTarget {
        match color {
            Color::Blue => &self.blue,
            Color::Green => &self.green,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ColorTarget {
    pub base_url: Option<Url>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Run once per color.
    PerColor,
    /// Run once: a dependency both colors share (an absolute `url`).
    Shared,
}

#[derive(Debug, Clone)]
pub struct Probe {
    pub name: String,
    pub scope: Scope,
    pub interval: Duration,
    pub timeout: Duration,
    pub confirm_interval: Option<Duration>,
    pub health: bool,
    pub check: Check,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Joined to each color's `base_url`.
    Relative(String),
    Absolute(Url),
}

#[derive(Debug, Clone)]
pub enum Check {
    Http(HttpCheck),
    Tcp(TcpCheck),
    Exec(ExecCheck),
    Prometheus(PrometheusCheck),
    Log(LogCheck),
    AccessLog(AccessLogCheck),
    Unit(UnitCheck),
}

impl Check {
    pub fn kind(&self) -> &'static str {
        match self {
            Check::Http(_) => "http",
            Check::Tcp(_) => "tcp",
            Check::Exec(_) => "exec",
            Check::Prometheus(_) => "prometheus",
            Check::Log(_) => "log",
            Check::AccessLog(_) => "access_log",
            Check::Unit(_) => "unit",
        }
    }
}

#[derive(Debug, Clone)]
pub struct HttpCheck {
    pub method: reqwest::Method,
    pub endpoint: Endpoint,
    pub headers: Vec<(String, Secret)>,
    pub expect_status: Vec<RangeInclusive<u16>>,
    pub body_contains: Option<String>,
    pub body_regex: Option<Regex>,
    pub expect_headers: Vec<String>,
    pub follow_redirects: bool,
}

#[derive(Debug, Clone)]
pub struct TcpCheck {
    /// `None`: the host and port of each color's `base_url`.
    pub address: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ExecCheck {
    pub command: Template,
}

#[derive(Debug, Clone)]
pub struct PrometheusCheck {
    pub endpoint: Endpoint,
    pub headers: Vec<(String, Secret)>,
    pub requests: String,
    pub errors: String,
    pub latency: Option<String>,
}

#[derive(Debug, Clone)]
pub enum LogSource {
    File(String),
    Unit(String),
}

#[derive(Debug, Clone)]
pub struct LogCheck {
    pub source: LogSource,
    pub pattern: Regex,
}

/// How an access log's lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// One JSON object per line (nginx `log_format ... escape=json`).
    Json,
    /// nginx/Apache combined, with `$request_time` (seconds) appended last.
    Combined,
}

#[derive(Debug, Clone)]
pub struct AccessLogCheck {
    /// The log's path; `{color}` in it names the color of every line.
    pub file: String,
    pub format: AccessLogFormat,
    /// The JSON field naming the upstream (`host:port`), matched against
    /// each color's `base_url`; `None` when the file name carries `{color}`.
    pub color_field: Option<String>,
    pub status_field: String,
    pub latency_field: String,
}

/// `memory_max`: a share of the unit's own `memory.max`, or bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemoryLimit {
    Percent(f64),
    Bytes(u64),
}

#[derive(Debug, Clone)]
pub struct UnitCheck {
    /// The systemd unit (`{color}` rendered); its state and restarts come
    /// from `systemctl show`, its cgroup from its `ControlGroup`.
    pub unit: Option<String>,
    /// A cgroup v2 directory, read without systemd.
    pub cgroup: Option<String>,
    pub memory_max: Option<MemoryLimit>,
}

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

#[derive(Debug, Clone, Copy)]
pub struct Actions {
    pub critical: Action,
    pub high: Action,
    pub medium: Action,
    pub low: Action,
}

impl Actions {
    pub fn for_severity(&self, s: Severity) -> Action {
        match s {
            Severity::Critical => self.critical,
            Severity::High => self.high,
            Severity::Medium => self.medium,
            Severity::Low => self.low,
        }
    }
}

/// `[entry]`: where users reach the service, and the response header that
/// names the color that answered.
#[derive(Debug, Clone)]
pub struct Entry {
    pub url: Url,
    pub color_header: reqwest::header::HeaderName,
}

#[derive(Debug, Clone)]
pub struct Rollback {
    pub prepare: Option<Template>,
    pub command: Option<Template>,
    pub retire: Option<Template>,
    pub timeout: Duration,
    pub verify_target: bool,
    pub verify_after: Duration,
    pub cooldown: Duration,
    pub quarantine: bool,
    pub bake: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyFormat {
    Slack,
    Discord,
    Json,
    /// The body rendered from `template` (see `template.rs`).
    Template,
}

#[derive(Debug, Clone)]
pub struct Notifier {
    /// Its place among the `[[notify]]` tables (1-based), naming it in
    /// the worker's memory of what it opened.
    pub id: usize,
    pub url: Secret,
    pub format: NotifyFormat,
    pub min_severity: Severity,
    /// `format = "template"`: the body, method and path templates.
    pub template: Option<std::sync::Arc<crate::notifier::template::NotifyTemplate>>,
    /// Sent with every request; values may be secret references.
    pub headers: Vec<(String, Secret)>,
    /// Default `application/json`.
    pub content_type: Option<String>,
    /// Secret values a template reads as `secret.NAME` (a routing key that
    /// travels in the body).
    pub secrets: Vec<(String, Secret)>,
}

impl Notifier {
    /// A webhook in a built-in format, with no extra header.
    pub fn webhook(url: Secret, format: NotifyFormat, min_severity: Severity) -> Notifier {
        Notifier {
            id: 0,
            url,
            format,
            min_severity,
            template: None,
            headers: Vec::new(),
            content_type: None,
            secrets: Vec::new(),
        }
    }
}

/// An argv with `{name}` placeholders; never run through a shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(pub Vec<String>);

impl Template {
    pub fn render(&self, vars: &[(&str, &str)]) -> Vec<String> {
        self.0.iter().map(|arg| render(arg, vars)).collect()
    }

    pub fn uses(&self, name: &str) -> bool {
        let needle = format!("{{{name}}}");
        self.0.iter().any(|a| a.contains(&needle))
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(" "))
    }
}

/// Replace `{name}` with its value in one string.
pub fn render(text: &str, vars: &[(&str, &str)]) -> String {
    let mut out = text.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

fn placeholders(text: &str) -> impl Iterator<Item = &str> {
    text.match_indices('{').filter_map(move |(i, _)| {
        let rest = &text[i + 1..];
        let end = rest.find('}')?;
        Some(&rest[..end])
    })
}

// ---------------------------------------------------------------------------
// Defaults: SPEC sections 2 and 3.

const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Fast confirm is on unless `confirm_interval = "off"` (SPEC section 2):
/// this pace, or the probe's interval when that is shorter.
pub const DEFAULT_CONFIRM_INTERVAL: Duration = Duration::from_millis(200);
/// `[daemon] assumed_noise`: the failure rate `check` prices rules at.
pub const DEFAULT_ASSUMED_NOISE: f64 = 0.02;

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

// ---------------------------------------------------------------------------
// Raw TOML shapes. Values that can be checked on their own are checked while
// deserializing, so toml attaches the span of the bad value.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    daemon: RawDaemon,
    service: RawService,
    colors: RawColors,
    #[serde(default)]
    active: RawActive,
    entry: Option<Spanned<RawEntry>>,
    #[serde(default, rename = "probe")]
    probes: Vec<Spanned<RawProbe>>,
    #[serde(default, rename = "rule")]
    rules: Option<Vec<Spanned<RawRule>>>,
    #[serde(default)]
    actions: RawActions,
    rollback: Option<Spanned<RawRollback>>,
    #[serde(default, rename = "notify")]
    notify: Vec<Spanned<RawNotify>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    state_dir: Option<PathBuf>,
    listen: Option<Listen>,
    retention: Option<HumanDuration>,
    dry_run: Option<bool>,
    watch_config: Option<bool>,
    assumed_noise: Option<Percent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColors {
    blue: RawColor,
    green: RawColor,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColor {
    base_url: Option<HttpUrl>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawActive {
    file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    url: HttpUrl,
    color_header: String,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Http,
    Tcp,
    Exec,
    Prometheus,
    Log,
    AccessLog,
    Unit,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    name: String,
    kind: Kind,
    path: Option<String>,
    url: Option<HttpUrl>,
    address: Option<String>,
    interval: Option<HumanDuration>,
    timeout: Option<HumanDuration>,
    confirm_interval: Option<Confirm>,
    health: Option<bool>,
    method: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    expect_status: Option<Vec<StatusSpec>>,
    body_contains: Option<String>,
    body_regex: Option<Pattern>,
    expect_headers: Option<Vec<String>>,
    follow_redirects: Option<bool>,
    command: Option<Vec<String>>,
    requests: Option<String>,
    errors: Option<String>,
    latency: Option<String>,
    file: Option<String>,
    unit: Option<String>,
    pattern: Option<Pattern>,
    format: Option<AccessLogFormat>,
    color_field: Option<String>,
    status_field: Option<String>,
    latency_field: Option<String>,
    cgroup: Option<String>,
    memory_max: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    severity: SeverityValue,
    when: ConditionValue,
    window: Option<HumanDuration>,
    #[serde(rename = "for")]
    hold_for: Option<HumanDuration>,
    min_samples: Option<u32>,
    clear_after: Option<u32>,
    probes: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawActions {
    critical: Option<Action>,
    high: Option<Action>,
    medium: Option<Action>,
    low: Option<Action>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRollback {
    prepare: Option<Vec<String>>,
    command: Option<Vec<String>>,
    retire: Option<Vec<String>>,
    timeout: Option<HumanDuration>,
    verify_target: Option<bool>,
    verify_after: Option<HumanDuration>,
    cooldown: Option<HumanDuration>,
    quarantine: Option<bool>,
    bake: Option<HumanDuration>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum NotifyKind {
    Webhook,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    #[allow(dead_code)] // one kind today; the key is required so files stay explicit
    kind: NotifyKind,
    url: String,
    format: Option<NotifyFormat>,
    min_severity: Option<SeverityValue>,
    template: Option<PathBuf>,
    method: Option<String>,
    path: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    content_type: Option<String>,
    secrets: Option<BTreeMap<String, String>>,
}

/// A humantime duration: "5s", "2m", "14d".
#[derive(Clone, Copy)]
struct HumanDuration(Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map(HumanDuration).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({e}): expected a number with a unit, like \"500ms\", \"5s\", \"2m\", \"14d\""
            ))
        })
    }
}

struct HttpUrl(Url);

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let url = Url::parse(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid URL {text:?} ({e}): expected an absolute http(s) URL like \"http://127.0.0.1:8081\""
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(serde::de::Error::custom(format!(
                "URL {text:?} has scheme {:?}: expected http or https",
                url.scheme()
            )));
        }
        Ok(HttpUrl(url))
    }
}

struct Pattern(Regex);

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Regex::new(&text).map(Pattern).map_err(|e| {
            serde::de::Error::custom(format!("invalid regular expression {text:?}: {e}"))
        })
    }
}

struct SeverityValue(Severity);

impl<'de> Deserialize<'de> for SeverityValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map(SeverityValue)
            .map_err(serde::de::Error::custom)
    }
}

struct ConditionValue(Condition);

impl<'de> Deserialize<'de> for ConditionValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map(ConditionValue)
            .map_err(serde::de::Error::custom)
    }
}

/// `confirm_interval = "200ms"`, or `"off"` for no fast confirm.
struct Confirm(Option<Duration>);

impl<'de> Deserialize<'de> for Confirm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text == "off" {
            return Ok(Confirm(None));
        }
        humantime::parse_duration(&text)
            .map(|d| Confirm(Some(d)))
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid confirm_interval {text:?}: {e}; expected a duration like \"200ms\", or \"off\""
                ))
            })
    }
}

/// A rate in percent above 0 and below 100, e.g. `"2%"`; kept as a fraction.
struct Percent(f64);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_percent(&text).map(Percent).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid rate {text:?}: expected a percentage above 0 and below 100, like \"2%\""
            ))
        })
    }
}

/// `"2%"` or `"0.5%"` -> 0.02, 0.005: a rate strictly between 0% and 100%.
pub fn parse_percent(text: &str) -> Option<f64> {
    let n: f64 = text.trim().strip_suffix('%')?.trim().parse().ok()?;
    (n > 0.0 && n < 100.0).then_some(n / 100.0)
}

/// `listen = "127.0.0.1:9797"`, or `"off"` for no HTTP listener.
struct Listen(Option<SocketAddr>);

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text == "off" {
            return Ok(Listen(None));
        }
        text.parse().map(|a| Listen(Some(a))).map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid listen address {text:?}: expected IP:PORT like \"127.0.0.1:9797\", or \"off\""
            ))
        })
    }
}

/// `200`, `"2xx"` or `"200-299"`.
struct StatusSpec(RangeInclusive<u16>);

impl<'de> Deserialize<'de> for StatusSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Code(i64),
            Text(String),
        }
        let bad = |what: &str| {
            serde::de::Error::custom(format!(
                "invalid status {what}: expected a code like 200, a class like \"2xx\" or a range like \"200-299\""
            ))
        };
        let in_range = |n: i64| (100..=599).contains(&n).then_some(n as u16);
        match Either::deserialize(d)? {
            Either::Code(n) => in_range(n)
                .map(|c| StatusSpec(c..=c))
                .ok_or_else(|| bad(&n.to_string())),
            Either::Text(t) => {
                let parsed = if let Some(class) = t.strip_suffix("xx") {
                    class
                        .parse::<i64>()
                        .ok()
                        .and_then(|c| in_range(c * 100))
                        .map(|lo| lo..=lo + 99)
                } else if let Some((a, b)) = t.split_once('-') {
                    match (
                        a.trim().parse().ok().and_then(in_range),
                        b.trim().parse().ok().and_then(in_range),
                    ) {
                        (Some(a), Some(b)) if a <= b => Some(a..=b),
                        _ => None,
                    }
                } else {
                    t.parse().ok().and_then(in_range).map(|c| c..=c)
                };
                parsed.map(StatusSpec).ok_or_else(|| bad(&format!("{t:?}")))
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Loading and validation.

/// The source text, kept to turn byte spans into line, column and key.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_col(self.text, span.start);
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            key: key_path_at(self.text, span.start),
            message: message.into(),
        }
    }

    /// An error about `key` inside the table spanning `table`: points at the
    /// key's own line when it is written there.
    fn key_error(
        &self,
        table: &Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let span = find_key(self.text, table, key).unwrap_or_else(|| table.clone());
        let mut err = self.error(span, message);
        if let ConfigError::Invalid { key: k, .. } = &mut err {
            if !k.ends_with(key) {
                *k = format!("{k}.{key}");
            }
        }
        err
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

fn assignment_key(line: &str) -> Option<&str> {
    let line = line.trim_start();
    let eq = line.find('=')?;
    let key = line[..eq].trim().trim_matches('"');
    (!key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)))
    .then_some(key)
}

/// The dotted key at a byte offset: the enclosing table (`probe[2]`,
/// 1-based for arrays of tables) and the nearest `key =` at or above it.
fn key_path_at(text: &str, offset: usize) -> String {
    let target_line = line_col(text, offset).0;
    let mut table = String::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut key: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        if i + 1 > target_line {
            break;
        }
        let trimmed = line.trim();
        if let Some(name) = trimmed
            .strip_prefix("[[")
            .and_then(|r| r.split("]]").next())
        {
            let name = name.trim().to_owned();
            let n = counts.entry(name.clone()).or_default();
            *n += 1;
            table = format!("{name}[{n}]");
            key = None;
        } else if let Some(name) = trimmed.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_owned();
            key = None;
        } else if let Some(k) = assignment_key(line) {
            key = Some(k.to_owned());
        }
    }
    match (table.is_empty(), key) {
        (true, Some(k)) => k,
        (false, Some(k)) => format!("{table}.{k}"),
        (_, None) if table.is_empty() => "(top level)".to_owned(),
        (_, None) => table,
    }
}

fn find_key(text: &str, within: &Range<usize>, key: &str) -> Option<Range<usize>> {
    let region = text.get(within.clone())?;
    let mut offset = within.start;
    for line in region.split_inclusive('\n') {
        if assignment_key(line) == Some(key) {
            let start = offset + (line.len() - line.trim_start().len());
            return Some(start..start + key.len());
        }
        offset += line.len();
    }
    None
}

fn toml_error(src: &Source, e: toml::de::Error) -> ConfigError {
    let span = e.span().unwrap_or(0..0);
    let message = e.message().trim().to_owned();
    let mut err = src.error(span.clone(), message.clone());
    // A missing top-level table is reported against the whole document:
    // name the table itself, not whatever header comes first.
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    if let (Some(field), ConfigError::Invalid { key, .. }) = (missing, &mut err) {
        if span.start == 0 {
            *key = field.to_owned();
        } else {
            // Name the key that is missing, in the table that lacks it. The
            // span may be one segment of a dotted header (`colors` in
            // `[colors.blue]` when `[colors.green]` is missing): the table
            // is the header up to that segment, not the whole header.
            let at = src.text.get(span.clone()).unwrap_or("");
            let line_start = src.text[..span.start].rfind('\n').map_or(0, |i| i + 1);
            let before = &src.text[line_start..span.start];
            let table = if !at.is_empty()
                && !at.contains(['[', '\n', '='])
                && before.trim_start().starts_with('[')
            {
                let header = &src.text[line_start..span.end];
                header.trim().trim_start_matches('[').trim().to_owned()
            } else {
                key.clone()
            };
            *key = format!("{table}.{field}");
        }
    }
    err
}

impl Config {
    /// Read, parse and validate: the one path used by `check`, `run` and reload.
    /// Only a regular file of at most [`CONFIG_CAP`] bytes is read: a FIFO
    /// or `/dev/zero` at the path is refused at once, naming what it is.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            crate::hostfile::read_capped(path, CONFIG_CAP).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let src = Source { path, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(&src, e))?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let relative_to_config = |p: PathBuf| if p.is_relative() { base_dir.join(p) } else { p };
        let mut warnings = Vec::new();

        if let Some(r) = &raw.daemon.retention {
            if r.0 < MIN_RETENTION {
                let table = header_span(src.text, "daemon").unwrap_or(0..0);
                return Err(src.key_error(
                    &table,
                    "retention",
                    format!(
                        "{} is too short: samples younger than that would be deleted while \
                         rules still read them; the minimum is 1h",
                        humantime::format_duration(r.0)
                    ),
                ));
            }
        }
        let daemon = Daemon {
            state_dir: relative_to_config(
                raw.daemon
                    .state_dir
                    .unwrap_or_else(|| PathBuf::from("/var/lib/rollbackd")),
            ),
            listen: match raw.daemon.listen {
                Some(Listen(addr)) => addr,
                None => Some(SocketAddr::from(([127, 0, 0, 1], 9797))),
            },
            retention: raw
                .daemon
                .retention
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(14 * 86400)),
            dry_run: raw.daemon.dry_run.unwrap_or(false),
            watch_config: raw.daemon.watch_config.unwrap_or(true),
            assumed_noise: raw
                .daemon
                .assumed_noise
                .map(|p| p.0)
                .unwrap_or(DEFAULT_ASSUMED_NOISE),
        };

        let raw_colors = raw.colors;
        let colors = Colors {
            blue: ColorTarget {
                base_url: raw_colors.blue.base_url.map(|u| u.0),
            },
            green: ColorTarget {
                base_url: raw_colors.green.base_url.map(|u| u.0),
            },
        };

        let mut probes = Vec::new();
        let mut names = HashSet::new();
        for spanned in raw.probes {
            let span = spanned.span();
            let probe = validate_probe(&src, &span, spanned.into_inner(), &colors)?;
            if !names.insert(probe.name.clone()) {
                return Err(src.key_error(
                    &span,
                    "name",
                    format!(
                        "duplicate probe name {:?}: every probe needs its own name",
                        probe.name
                    ),
                ));
            }
            probes.push(probe);
        }
        for p in &probes {
            let headers = match &p.check {
                Check::Http(h) => &h.headers,
                Check::Prometheus(pr) => &pr.headers,
                _ => continue,
            };
            for (name, secret) in headers {
                let sensitive = [
                    "authorization",
                    "token",
                    "secret",
                    "cookie",
                    "api-key",
                    "apikey",
                    "password",
                ]
                .iter()
                .any(|w| name.to_ascii_lowercase().contains(w));
                if sensitive && secret.source() == &crate::config::secret::Source::Inline {
                    warnings.push(format!(
                        "probe {:?} header {name} is written in the file: use \"env:NAME\" or \"file:/path\" for secrets",
                        p.name
                    ));
                }
                if let Some(problem) = secret.problem() {
                    warnings.push(format!(
                        "probe {:?} header {name}: {problem}; the daemon must have it",
                        p.name
                    ));
                }
            }
        }
        if !probes
            .iter()
            .any(|p| p.health && p.scope == Scope::PerColor)
        {
            warnings.push(
                "no probe has `health = true`: the health_failures rules have nothing to judge"
                    .to_owned(),
            );
        }

        let default_rules = raw.rules.is_none();
        let rules = match raw.rules {
            Some(rules) => {
                let mut out = Vec::new();
                for spanned in rules {
                    let span = spanned.span();
                    let rule = validate_rule(&src, &span, spanned.into_inner(), &probes)?;
                    if out.iter().any(|r: &Rule| r.name == rule.name) {
                        return Err(src.key_error(
                            &span,
                            "name",
                            format!(
                                "duplicate rule {:?}: give one of them a distinct `name`",
                                rule.name
                            ),
                        ));
                    }
                    out.push(rule);
                }
                out
            }
            None => default_rule_specs()
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
                    let window =
                        humantime::parse_duration(window).unwrap_or_else(|e| unreachable!("{e}"));
                    let mut rule = make_rule(
                        None,
                        severity,
                        condition,
                        window,
                        None,
                        Some(min_samples),
                        None,
                        &probes,
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
                .collect(),
        };

        let actions = Actions {
            critical: raw.actions.critical.unwrap_or(Action::Rollback),
            high: raw.actions.high.unwrap_or(Action::Rollback),
            medium: raw.actions.medium.unwrap_or(Action::Alert),
            low: raw.actions.low.unwrap_or(Action::Log),
        };

        let (rb_span, rb) = match raw.rollback {
            Some(r) => (r.span(), r.into_inner()),
            None => (text.len()..text.len(), RawRollback::default()),
        };
        let rollback_vars = ["from", "to", "version", "incident"];
        let template =
            |key: &str, argv: Option<Vec<String>>| -> Result<Option<Template>, ConfigError> {
                argv.map(|argv| validate_template(&src, &rb_span, key, argv, &rollback_vars))
                    .transpose()
            };
        let rollback = Rollback {
            prepare: template("prepare", rb.prepare)?,
            command: template("command", rb.command)?,
            retire: template("retire", rb.retire)?,
            timeout: rb.timeout.map(|d| d.0).unwrap_or(Duration::from_secs(120)),
            verify_target: rb.verify_target.unwrap_or(true),
            verify_after: rb
                .verify_after
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(60)),
            cooldown: rb
                .cooldown
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(30 * 60)),
            quarantine: rb.quarantine.unwrap_or(true),
            bake: rb.bake.map(|d| d.0).unwrap_or(Duration::from_secs(30 * 60)),
        };
        if rollback.command.is_none() {
            if let Some(sev) = Severity::ALL
                .into_iter()
                .find(|s| actions.for_severity(*s) == Action::Rollback)
            {
                let mut err = src.key_error(
                    &rb_span,
                    "command",
                    format!(
                        "[rollback] command is required because actions.{sev} = \"rollback\": \
                         expected an argv like [\"/usr/local/bin/switch-color\", \"{{to}}\"] \
                         (or set actions.{sev} = \"alert\")"
                    ),
                );
                if let ConfigError::Invalid { key, .. } = &mut err {
                    *key = "rollback.command".to_owned();
                }
                return Err(err);
            }
        }

        let mut notify = Vec::new();
        for spanned in raw.notify {
            let span = spanned.span();
            let n = spanned.into_inner();
            let url = Secret::resolve(&n.url).map_err(|e| src.key_error(&span, "url", e))?;
            if let Some(problem) = url.problem() {
                warnings.push(format!(
                    "[[notify]] url: {problem}; the daemon must have it"
                ));
            }
            if url.source() == &crate::config::secret::Source::Inline {
                warnings.push(
                    "[[notify]] url is written in the file: a webhook URL is a secret; use \"env:NAME\" or \"file:/path\"".to_owned(),
                );
            }
            let format = n.format.unwrap_or(NotifyFormat::Json);
            let templated = format == NotifyFormat::Template;
            for (key, set) in [
                ("template", n.template.is_some()),
                ("method", n.method.is_some()),
                ("path", n.path.is_some()),
                ("secrets", n.secrets.is_some()),
            ] {
                if set && !templated {
                    return Err(src.key_error(
                        &span,
                        key,
                        format!("`{key}` is only for format = \"template\""),
                    ));
                }
            }
            if let Some(ct) = &n.content_type {
                if reqwest::header::HeaderValue::from_str(ct).is_err() || !ct.contains('/') {
                    return Err(src.key_error(
                        &span,
                        "content_type",
                        format!(
                            "invalid content type {ct:?}: expected one like \"application/json\""
                        ),
                    ));
                }
            }
            let secret_map =
                |key: &str, map: Option<BTreeMap<String, String>>, header_names: bool| {
                    map.unwrap_or_default()
                        .into_iter()
                        .map(|(name, value)| {
                            if header_names
                                && reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                            {
                                return Err(src.key_error(
                                    &span,
                                    key,
                                    format!("invalid header name {name:?}"),
                                ));
                            }
                            let secret = Secret::resolve(&value)
                                .map_err(|e| src.key_error(&span, key, format!("{name}: {e}")))?;
                            Ok((name, secret))
                        })
                        .collect::<Result<Vec<_>, ConfigError>>()
                };
            let headers = secret_map("headers", n.headers, true)?;
            let secrets = secret_map("secrets", n.secrets, false)?;
            for (name, secret) in headers.iter().chain(&secrets) {
                if let Some(problem) = secret.problem() {
                    warnings.push(format!(
                        "[[notify]] {name}: {problem}; the daemon must have it"
                    ));
                }
            }
            let template = match (templated, n.template) {
                (false, _) => None,
                (true, None) => {
                    return Err(src.key_error(
                        &span,
                        "format",
                        "format = \"template\" needs `template`: the path of the body template file",
                    ));
                }
                (true, Some(file)) => {
                    let file = relative_to_config(file);
                    let json_body = n
                        .content_type
                        .as_deref()
                        .is_none_or(|ct| ct.contains("json"));
                    let t = crate::notifier::template::NotifyTemplate::load(
                        &file,
                        n.method.as_deref(),
                        n.path.as_deref(),
                        json_body,
                    )
                    .map_err(|e| src.key_error(&span, "template", e))?;
                    Some(std::sync::Arc::new(t))
                }
            };
            notify.push(Notifier {
                id: notify.len() + 1,
                url,
                format,
                min_severity: n.min_severity.map(|s| s.0).unwrap_or(Severity::Medium),
                template,
                headers,
                content_type: n.content_type,
                secrets,
            });
        }

        let entry = match raw.entry {
            None => None,
            Some(spanned) => {
                let span = spanned.span();
                let e = spanned.into_inner();
                let color_header = reqwest::header::HeaderName::from_bytes(
                    e.color_header.as_bytes(),
                )
                .map_err(|_| {
                    src.key_error(
                        &span,
                        "color_header",
                        format!(
                            "{:?} is not an HTTP header name: expected a name like \"X-Color\"",
                            e.color_header
                        ),
                    )
                })?;
                Some(Entry {
                    url: e.url.0,
                    color_header,
                })
            }
        };

        let mut config = Config {
            path: path.to_path_buf(),
            daemon,
            service: raw.service.name,
            colors,
            active_file: raw.active.file.map(relative_to_config),
            entry,
            probes,
            rules,
            default_rules,
            actions,
            rollback,
            notify,
            warnings,
        };
        config.check_matrix_timing(&src)?;
        Ok(config)
    }

    /// Reject Critical/High rules that cannot be acted on within the
    /// matrix's time, or can never gather `min_samples`; warn for the others.
    fn check_matrix_timing(&mut self, src: &Source) -> Result<(), ConfigError> {
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
        let cadences: Vec<noise::Cadence> = rule
            .probes
            .iter()
            .filter_map(|n| self.probe(n))
            .map(|p| noise::Cadence {
                interval: p.interval,
                confirm: p.confirm_interval,
            })
            .collect();
        if cadences.is_empty() {
            return None;
        }
        Some(noise::firings_per_year(
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

    pub fn probe(&self, name: &str) -> Option<&Probe> {
        self.probes.iter().find(|p| p.name == name)
    }

    /// The URL a probe's endpoint resolves to for a color (or for the shared
    /// target when the endpoint is absolute).
    pub fn endpoint_url(&self, endpoint: &Endpoint, color: Option<Color>) -> Option<Url> {
        match endpoint {
            Endpoint::Absolute(url) => Some(url.clone()),
            Endpoint::Relative(path) => {
                let base = self.colors.get(color?).base_url.as_ref()?;
                base.join(path).ok()
            }
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.daemon.state_dir.join("rollbackd.db")
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

/// How many consecutive failed samples a `health_failures` condition needs.
pub fn consecutive_needed(c: &Condition) -> u32 {
    use crate::model::Op;
    let t = c.threshold.max(0.0);
    match c.op {
        Op::Gt => t.floor() as u32 + 1,
        _ => t.ceil() as u32,
    }
}

/// The span from a `[name]` header to the next header (or the end).
fn header_span(text: &str, name: &str) -> Option<Range<usize>> {
    let mut offset = 0;
    let mut start = None;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            if start.is_some() {
                return start.map(|s| s..offset);
            }
            if trimmed.trim_start_matches('[').trim_end_matches(']').trim() == name {
                start = Some(offset);
            }
        }
        offset += line.len();
    }
    start.map(|s| s..text.len())
}

/// The span of the `[[probe]]` table whose `name` is `name`.
fn probe_span(text: &str, name: &str) -> Option<Range<usize>> {
    let mut starts = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim().starts_with('[') {
            starts.push((offset, line.trim() == "[[probe]]"));
        }
        offset += line.len();
    }
    starts.push((text.len(), false));
    starts
        .windows(2)
        .filter(|w| w[0].1)
        .map(|w| w[0].0..w[1].0)
        .find(|range| {
            find_key(text, range, "name").is_some_and(|k| {
                text[k.start..range.end].lines().next().is_some_and(|l| {
                    l.contains(&format!("\"{name}\"")) || l.contains(&format!("'{name}'"))
                })
            })
        })
}

fn rule_span(text: &str, rules: &[Rule], rule: &Rule) -> Range<usize> {
    // The n-th `[[rule]]` header in the text is the n-th rule.
    let index = rules.iter().position(|r| r == rule).unwrap_or(0);
    let mut offset = 0;
    let mut seen = 0;
    for line in text.split_inclusive('\n') {
        if line.trim() == "[[rule]]" {
            if seen == index {
                return offset..offset + line.trim_end().len();
            }
            seen += 1;
        }
        offset += line.len();
    }
    0..0
}

fn validate_template(
    src: &Source,
    table: &Range<usize>,
    key: &str,
    argv: Vec<String>,
    allowed: &[&str],
) -> Result<Template, ConfigError> {
    if argv.first().is_none_or(|a| a.is_empty()) {
        return Err(src.key_error(
            table,
            key,
            "expected a non-empty argv list, like [\"/usr/local/bin/switch-color\", \"{to}\"]",
        ));
    }
    for arg in &argv {
        for name in placeholders(arg) {
            if !allowed.contains(&name) {
                let list: Vec<String> = allowed.iter().map(|a| format!("{{{a}}}")).collect();
                return Err(src.key_error(
                    table,
                    key,
                    format!(
                        "unknown placeholder {{{name}}}: expected one of {}",
                        list.join(" ")
                    ),
                ));
            }
        }
    }
    Ok(Template(argv))
}

fn validate_probe(
    src: &Source,
    span: &Range<usize>,
    raw: RawProbe,
    colors: &Colors,
) -> Result<Probe, ConfigError> {
    let err = |key: &str, msg: String| src.key_error(span, key, msg);
    let kind_name = match raw.kind {
        Kind::Http => "http",
        Kind::Tcp => "tcp",
        Kind::Exec => "exec",
        Kind::Prometheus => "prometheus",
        Kind::Log => "log",
        Kind::AccessLog => "access_log",
        Kind::Unit => "unit",
    };
    if raw.name.trim().is_empty() {
        return Err(err("name", "expected a non-empty probe name".into()));
    }
    // Keys that only make sense for some kinds: say so rather than ignore them.
    let allowed: &[&str] = match raw.kind {
        Kind::Http => &[
            "path",
            "url",
            "method",
            "headers",
            "expect_status",
            "body_contains",
            "body_regex",
            "expect_headers",
            "follow_redirects",
        ],
        Kind::Tcp => &["address"],
        Kind::Exec => &["command"],
        Kind::Prometheus => &["path", "url", "headers", "requests", "errors", "latency"],
        Kind::Log => &["file", "unit", "pattern"],
        Kind::AccessLog => &[
            "file",
            "format",
            "color_field",
            "status_field",
            "latency_field",
        ],
        Kind::Unit => &["unit", "cgroup", "memory_max"],
    };
    let present = [
        ("path", raw.path.is_some()),
        ("url", raw.url.is_some()),
        ("address", raw.address.is_some()),
        ("method", raw.method.is_some()),
        ("headers", raw.headers.is_some()),
        ("expect_status", raw.expect_status.is_some()),
        ("body_contains", raw.body_contains.is_some()),
        ("body_regex", raw.body_regex.is_some()),
        ("expect_headers", raw.expect_headers.is_some()),
        ("follow_redirects", raw.follow_redirects.is_some()),
        ("command", raw.command.is_some()),
        ("requests", raw.requests.is_some()),
        ("errors", raw.errors.is_some()),
        ("latency", raw.latency.is_some()),
        ("file", raw.file.is_some()),
        ("unit", raw.unit.is_some()),
        ("pattern", raw.pattern.is_some()),
        ("format", raw.format.is_some()),
        ("color_field", raw.color_field.is_some()),
        ("status_field", raw.status_field.is_some()),
        ("latency_field", raw.latency_field.is_some()),
        ("cgroup", raw.cgroup.is_some()),
        ("memory_max", raw.memory_max.is_some()),
    ];
    if let Some((key, _)) = present.iter().find(|(k, set)| *set && !allowed.contains(k)) {
        return Err(err(
            key,
            format!("`{key}` does not apply to kind = \"{kind_name}\""),
        ));
    }

    let interval = raw.interval.map(|d| d.0).unwrap_or(DEFAULT_INTERVAL);
    let timeout = raw
        .timeout
        .map(|d| d.0)
        .unwrap_or(DEFAULT_TIMEOUT.min(interval));
    if interval < Duration::from_millis(100) {
        return Err(err("interval", "expected at least \"100ms\"".into()));
    }
    if timeout.is_zero() || timeout > interval {
        return Err(err(
            "timeout",
            format!(
                "expected a timeout above zero and no longer than the interval ({})",
                humantime::format_duration(interval)
            ),
        ));
    }
    let confirm_interval = match raw.confirm_interval {
        Some(Confirm(explicit)) => explicit,
        None => Some(DEFAULT_CONFIRM_INTERVAL.min(interval)),
    };
    if let Some(c) = confirm_interval {
        if c.is_zero() || c > interval {
            return Err(err(
                "confirm_interval",
                "expected a duration above zero and no longer than `interval`, or \"off\"".into(),
            ));
        }
    }

    let need_bases = |key: &str| -> Result<(), ConfigError> {
        for color in Color::ALL {
            if colors.get(color).base_url.is_none() {
                let table = header_span(src.text, &format!("colors.{color}"))
                    .or_else(|| header_span(src.text, "colors"))
                    .unwrap_or(0..0);
                return Err(src.key_error(
                    &table,
                    "base_url",
                    format!(
                        "probe {:?} uses a relative `{key}`, so [colors.{color}] needs a base_url \
                         (or give the probe an absolute `url`)",
                        raw.name
                    ),
                ));
            }
        }
        Ok(())
    };
    let endpoint = |path: Option<String>, url: Option<HttpUrl>| -> Result<Endpoint, ConfigError> {
        match (path, url) {
            (Some(_), Some(_)) => Err(err(
                "url",
                "set either `path` (per color) or `url` (shared), not both".into(),
            )),
            (Some(p), None) => {
                if !p.starts_with('/') {
                    return Err(err(
                        "path",
                        format!("expected a path starting with '/', found {p:?}"),
                    ));
                }
                need_bases("path")?;
                Ok(Endpoint::Relative(p))
            }
            (None, Some(u)) => Ok(Endpoint::Absolute(u.0)),
            (None, None) => Err(err(
                "path",
                format!(
                    "kind = \"{kind_name}\" needs `path` (against each color's base_url) or `url`"
                ),
            )),
        }
    };
    let headers = |raw_headers: Option<BTreeMap<String, String>>| -> Result<Vec<(String, Secret)>, ConfigError> {
        raw_headers
            .unwrap_or_default()
            .into_iter()
            .map(|(name, value)| {
                reqwest::header::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| err("headers", format!("invalid header name {name:?}")))?;
                let secret = Secret::resolve(&value).map_err(|e| err("headers", format!("{name}: {e}")))?;
                Ok((name, secret))
            })
            .collect()
    };

    let check = match raw.kind {
        Kind::Http => {
            let method = match raw.method {
                Some(m) => reqwest::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| err("method", format!("invalid HTTP method {m:?}")))?,
                None => reqwest::Method::GET,
            };
            Check::Http(HttpCheck {
                method,
                endpoint: endpoint(raw.path, raw.url)?,
                headers: headers(raw.headers)?,
                expect_status: raw
                    .expect_status
                    .map(|v| v.into_iter().map(|s| s.0).collect())
                    .unwrap_or_else(|| vec![200..=299]),
                body_contains: raw.body_contains,
                body_regex: raw.body_regex.map(|p| p.0),
                expect_headers: raw.expect_headers.unwrap_or_default(),
                follow_redirects: raw.follow_redirects.unwrap_or(false),
            })
        }
        Kind::Tcp => {
            if raw.address.is_none() {
                need_bases("address")?;
            }
            Check::Tcp(TcpCheck {
                address: raw.address,
            })
        }
        Kind::Exec => {
            let argv = raw.command.ok_or_else(|| {
                err(
                    "command",
                    "kind = \"exec\" needs `command`, an argv list".into(),
                )
            })?;
            Check::Exec(ExecCheck {
                command: validate_template(src, span, "command", argv, &["color"])?,
            })
        }
        Kind::Prometheus => {
            let requests = raw.requests.ok_or_else(|| {
                err("requests", "kind = \"prometheus\" needs `requests`, a counter like \"http_requests_total\"".into())
            })?;
            let errors = raw.errors.ok_or_else(|| {
                err("errors", "kind = \"prometheus\" needs `errors`, like 'http_requests_total{code=~\"5..\"}'".into())
            })?;
            // Selectors are checked here, so a typo is a config error at
            // load time rather than "no data" forever.
            for (key, text) in [
                ("requests", Some(&requests)),
                ("errors", Some(&errors)),
                ("latency", raw.latency.as_ref()),
            ] {
                if let Some(text) = text {
                    crate::probe::prometheus::Selector::parse(text).map_err(|e| {
                        err(key, format!("invalid selector {text:?}: {e}; expected a metric name with optional label matchers, like 'http_requests_total{{code=~\"5..\"}}'"))
                    })?;
                }
            }
            Check::Prometheus(PrometheusCheck {
                endpoint: endpoint(raw.path, raw.url)?,
                headers: headers(raw.headers)?,
                requests,
                errors,
                latency: raw.latency,
            })
        }
        Kind::Log => {
            let source = match (raw.file, raw.unit) {
                (Some(f), None) => LogSource::File(f),
                (None, Some(u)) => LogSource::Unit(u),
                _ => {
                    return Err(err(
                        "file",
                        "kind = \"log\" needs exactly one of `file` or `unit`".into(),
                    ));
                }
            };
            let pattern = raw.pattern.ok_or_else(|| {
                err(
                    "pattern",
                    "kind = \"log\" needs `pattern`, a regular expression".into(),
                )
            })?;
            Check::Log(LogCheck {
                source,
                pattern: pattern.0,
            })
        }
        Kind::AccessLog => {
            let file = raw.file.ok_or_else(|| {
                err(
                    "file",
                    "kind = \"access_log\" needs `file`, the proxy's access log".into(),
                )
            })?;
            let format = raw.format.unwrap_or(AccessLogFormat::Json);
            let by_file = file.contains("{color}");
            let color_field = match (format, by_file, raw.color_field) {
                (_, true, Some(_)) => {
                    return Err(err(
                        "color_field",
                        "the file name's {color} already names the color: drop `color_field` or the placeholder".into(),
                    ));
                }
                (_, true, None) => None,
                (AccessLogFormat::Json, false, field) => {
                    need_bases("color_field")?;
                    Some(field.unwrap_or_else(|| "upstream_addr".into()))
                }
                (AccessLogFormat::Combined, false, _) => {
                    return Err(err(
                        "file",
                        "format = \"combined\" has no field naming the upstream: put {color} in `file` (one log per color), or use format = \"json\" with a `color_field`".into(),
                    ));
                }
            };
            if format == AccessLogFormat::Combined
                && (raw.status_field.is_some() || raw.latency_field.is_some())
            {
                let key = if raw.status_field.is_some() {
                    "status_field"
                } else {
                    "latency_field"
                };
                return Err(err(
                    key,
                    format!(
                        "`{key}` names a JSON field; format = \"combined\" has fixed positions"
                    ),
                ));
            }
            Check::AccessLog(AccessLogCheck {
                file,
                format,
                color_field,
                status_field: raw.status_field.unwrap_or_else(|| "status".into()),
                latency_field: raw.latency_field.unwrap_or_else(|| "request_time".into()),
            })
        }
        Kind::Unit => {
            if raw.unit.is_some() == raw.cgroup.is_some() {
                return Err(err(
                    "unit",
                    "kind = \"unit\" needs exactly one of `unit` (a systemd unit) or `cgroup` (a cgroup v2 directory)".into(),
                ));
            }
            let memory_max = match raw.memory_max {
                None => None,
                Some(text) => Some(parse_memory_limit(&text).ok_or_else(|| {
                    err(
                        "memory_max",
                        format!("expected a percentage of the unit's MemoryMax like \"90%\", or bytes like \"512M\" or \"1073741824\", found {text:?}"),
                    )
                })?),
            };
            Check::Unit(UnitCheck {
                unit: raw.unit,
                cgroup: raw.cgroup,
                memory_max,
            })
        }
    };

    let per_color = match &check {
        Check::Http(h) => matches!(h.endpoint, Endpoint::Relative(_)),
        Check::Prometheus(p) => matches!(p.endpoint, Endpoint::Relative(_)),
        Check::Tcp(t) => t.address.as_ref().is_none_or(|a| a.contains("{color}")),
        Check::Exec(e) => e.command.uses("color"),
        Check::Log(l) => match &l.source {
            LogSource::File(f) | LogSource::Unit(f) => f.contains("{color}"),
        },
        // Every request names its color (by field or by file).
        Check::AccessLog(_) => true,
        Check::Unit(u) => u
            .unit
            .as_ref()
            .or(u.cgroup.as_ref())
            .is_some_and(|t| t.contains("{color}")),
    };
    let scope = if per_color {
        Scope::PerColor
    } else {
        Scope::Shared
    };
    let health = raw.health.unwrap_or(false);
    if health && scope == Scope::Shared {
        return Err(err(
            "health",
            format!(
                "probe {:?} is shared (it does not run per color), so it cannot count toward a color's health",
                raw.name
            ),
        ));
    }
    Ok(Probe {
        name: raw.name,
        scope,
        interval,
        timeout,
        confirm_interval,
        health,
        check,
    })
}

/// `memory_max`: `90%`, or bytes with an optional K/M/G/T suffix (powers
/// of 1024, as systemd's `MemoryMax=`).
fn parse_memory_limit(text: &str) -> Option<MemoryLimit> {
    let t = text.trim();
    if let Some(p) = t.strip_suffix('%') {
        let p: f64 = p.trim().parse().ok()?;
        return (p > 0.0 && p <= 100.0).then_some(MemoryLimit::Percent(p));
    }
    let (number, scale) = match t.char_indices().last()? {
        (i, 'K' | 'k') => (&t[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&t[..i], 1 << 20),
        (i, 'G' | 'g') => (&t[..i], 1 << 30),
        (i, 'T' | 't') => (&t[..i], 1 << 40),
        _ => (t, 1),
    };
    let n: u64 = number.trim().parse().ok()?;
    n.checked_mul(scale)
        .filter(|b| *b > 0)
        .map(MemoryLimit::Bytes)
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

fn validate_rule(
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[daemon]
state_dir = "state"

[service]
name = "beluga"

[colors.blue]
base_url = "http://127.0.0.1:8081"
[colors.green]
base_url = "http://127.0.0.1:8082"

[[probe]]
name = "healthz"
kind = "http"
path = "/healthz"
health = true

[rollback]
command = ["/bin/true", "{to}"]
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/rollbackd/test.toml"), text)
    }

    #[test]
    fn load_refuses_a_fifo_and_dev_zero_at_once_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("rollbackd.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = Config::load(&fifo).unwrap_err().to_string();
        assert!(e.contains(&fifo.display().to_string()), "{e}");
        assert!(e.contains("is a FIFO, not a regular file"), "{e}");
        let e = Config::load(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/dev/zero") && e.contains("a character device"),
            "{e}"
        );
        let big = dir.path().join("big.toml");
        std::fs::write(&big, "#".repeat(CONFIG_CAP as usize + 1)).unwrap();
        let e = Config::load(&big).unwrap_err().to_string();
        assert!(e.contains("big.toml") && e.contains("limit"), "{e}");
    }

    fn invalid(text: &str) -> (usize, String, String) {
        match parse(text) {
            Err(ConfigError::Invalid {
                line,
                key,
                message,
                path,
                ..
            }) => {
                assert_eq!(path, Path::new("/etc/rollbackd/test.toml"));
                (line, key, message)
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("config was accepted"),
        }
    }

    fn line_of(text: &str, needle: &str) -> usize {
        text.lines().position(|l| l.contains(needle)).unwrap() + 1
    }

    #[test]
    fn good_config_gets_defaults_and_the_default_matrix() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.daemon.state_dir, Path::new("/etc/rollbackd/state"));
        assert_eq!(c.probes[0].interval, Duration::from_secs(5));
        assert_eq!(c.probes[0].scope, Scope::PerColor);
        assert!(c.default_rules);
        assert_eq!(c.rules.len(), 9);
        let crit = &c.rules[0];
        assert_eq!(crit.severity, Severity::Critical);
        assert_eq!(crit.condition.to_string(), "health_failures >= 5");
        assert_eq!(crit.probes, vec!["healthz".to_owned()]);
        // Fast confirm is on by default: 200ms, or the interval if shorter.
        assert_eq!(
            c.probes[0].confirm_interval,
            Some(Duration::from_millis(200))
        );
        assert_eq!(c.daemon.assumed_noise, 0.02);
        assert_eq!(
            c.detection_time(crit),
            Detection::Within(Duration::from_millis(7_800)),
            "5s interval + 2s timeout, the four confirms started 0.2s apart without waiting"
        );
        assert_eq!(
            c.median_detection(crit),
            Some(Duration::from_millis(3_300)),
            "half an interval, then four confirms of 0.2s"
        );
        assert_eq!(
            c.endpoint_url(&Endpoint::Relative("/healthz".into()), Some(Color::Green))
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8082/healthz"
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = GOOD.replace("health = true", "health = true\nhelth = false");
        let (line, key, message) = invalid(&text);
        assert_eq!(line, line_of(&text, "helth"));
        assert_eq!(key, "probe[1].helth");
        assert!(message.contains("unknown field `helth`"), "{message}");
    }

    #[test]
    fn entry_is_read_and_its_errors_are_located() {
        let ok = format!(
            "{GOOD}\n[entry]\nurl = \"http://127.0.0.1:80/healthz\"\ncolor_header = \"X-Color\"\n"
        );
        let c = parse(&ok).unwrap();
        let e = c.entry.expect("[entry] is read");
        assert_eq!(
            e.url.as_str(),
            "http://127.0.0.1/healthz",
            "the default port is implied"
        );
        assert_eq!(e.color_header.as_str(), "x-color");
        assert!(parse(GOOD).unwrap().entry.is_none());

        let text = ok.replace("X-Color", "X Color");
        let (line, key, message) = invalid(&text);
        assert_eq!(line, line_of(&text, "X Color"));
        assert_eq!(key, "entry.color_header");
        assert!(message.contains("not an HTTP header name"), "{message}");

        let text = ok.replace("http://127.0.0.1:80/healthz", "ftp://h/x");
        let (line, key, message) = invalid(&text);
        assert_eq!(line, line_of(&text, "ftp://"));
        assert_eq!(key, "entry.url");
        assert!(message.contains("expected http or https"), "{message}");

        let text = ok.replace(
            "color_header = \"X-Color\"\n",
            "colour_header = \"X-Color\"\n",
        );
        let (line, key, message) = invalid(&text);
        assert_eq!(line, line_of(&text, "colour_header"));
        assert_eq!(key, "entry.colour_header");
        assert!(message.contains("unknown field"), "{message}");

        let text = ok.replace("color_header = \"X-Color\"\n", "");
        let (_, key, message) = invalid(&text);
        assert!(key.starts_with("entry"), "{key}");
        assert!(
            message.contains("missing field `color_header`"),
            "{message}"
        );
    }

    #[test]
    fn bad_duration_is_located() {
        let text = GOOD.replace("health = true", "health = true\ninterval = \"5 parsecs\"");
        let (line, key, message) = invalid(&text);
        assert_eq!(line, line_of(&text, "parsecs"));
        assert_eq!(key, "probe[1].interval");
        assert!(
            message.contains("expected a number with a unit"),
            "{message}"
        );
    }

    #[test]
    fn rule_that_does_not_parse_is_located() {
        let text = format!(
            "{GOOD}\n[[rule]]\nseverity = \"high\"\nwhen = \"error_rate > fifty\"\nwindow = \"2m\"\n"
        );
        let (line, key, message) = invalid(&text);
        assert_eq!(line, line_of(&text, "fifty"));
        assert_eq!(key, "rule[1].when");
        assert!(message.contains("SIGNAL OP VALUE"), "{message}");
    }

    #[test]
    fn missing_color_is_rejected() {
        let text = GOOD.replace("[colors.green]\nbase_url = \"http://127.0.0.1:8082\"\n", "");
        let (_, key, message) = invalid(&text);
        assert_eq!(
            key, "colors.green",
            "the missing key is named, not its sibling"
        );
        assert!(message.contains("missing field `green`"), "{message}");
        let text = GOOD.replace("[colors.blue]\nbase_url = \"http://127.0.0.1:8081\"\n", "");
        let (_, key, _) = invalid(&text);
        assert_eq!(key, "colors.blue");
    }

    #[test]
    fn retention_under_an_hour_is_refused_naming_the_key() {
        let text = GOOD.replace(
            "state_dir = \"state\"\n",
            "state_dir = \"state\"\nretention = \"0s\"\n",
        );
        let (line, key, message) = invalid(&text);
        assert_eq!(key, "daemon.retention");
        assert_eq!(line, line_of(&text, "retention"));
        assert!(message.contains("minimum is 1h"), "{message}");
        let ok = GOOD.replace(
            "state_dir = \"state\"\n",
            "state_dir = \"state\"\nretention = \"1h\"\n",
        );
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn a_missing_key_in_a_table_is_named_with_its_table() {
        let text = GOOD.replace("name = \"healthz\"\n", "");
        let (_, key, message) = invalid(&text);
        assert_eq!(key, "probe[1].name", "{message}");
    }

    #[test]
    fn duplicate_probe_names_are_rejected() {
        let text = format!("{GOOD}\n[[probe]]\nname = \"healthz\"\nkind = \"tcp\"\n");
        let (line, key, message) = invalid(&text);
        assert_eq!(
            line,
            text.lines()
                .enumerate()
                .filter(|(_, l)| l.contains("name = \"healthz\""))
                .nth(1)
                .unwrap()
                .0
                + 1
        );
        assert_eq!(key, "probe[2].name");
        assert!(message.contains("duplicate probe name"), "{message}");
    }

    #[test]
    fn relative_path_without_base_url_is_rejected() {
        let text = GOOD.replace("base_url = \"http://127.0.0.1:8082\"", "");
        let (line, key, message) = invalid(&text);
        assert_eq!(line, line_of(&text, "[colors.green]"));
        assert_eq!(key, "colors.green.base_url");
        assert!(message.contains("needs a base_url"), "{message}");
    }

    #[test]
    fn access_log_and_unit_probes_parse_with_defaults() {
        let text = format!(
            "{GOOD}\n[[probe]]\nname = \"users\"\nkind = \"access_log\"\nfile = \"/var/log/nginx/access.log\"\n\
             [[probe]]\nname = \"per-color\"\nkind = \"access_log\"\nfile = \"/var/log/nginx/{{color}}.log\"\nformat = \"combined\"\n\
             [[probe]]\nname = \"resources\"\nkind = \"unit\"\nunit = \"beluga@{{color}}.service\"\nmemory_max = \"512M\"\n"
        );
        let c = parse(&text).unwrap();
        let Check::AccessLog(a) = &c.probe("users").unwrap().check else {
            panic!()
        };
        assert_eq!(
            (
                a.format,
                a.color_field.as_deref(),
                a.status_field.as_str(),
                a.latency_field.as_str()
            ),
            (
                AccessLogFormat::Json,
                Some("upstream_addr"),
                "status",
                "request_time"
            )
        );
        let Check::AccessLog(a) = &c.probe("per-color").unwrap().check else {
            panic!()
        };
        assert_eq!(
            (a.format, a.color_field.as_deref()),
            (AccessLogFormat::Combined, None)
        );
        let p = c.probe("resources").unwrap();
        assert_eq!(p.scope, Scope::PerColor);
        let Check::Unit(u) = &p.check else { panic!() };
        assert_eq!(u.memory_max, Some(MemoryLimit::Bytes(512 << 20)));
        // The errors signal and the access log rules.
        assert!(
            c.rules
                .iter()
                .any(|r| r.name == "critical: error_rate >= 100% over 400ms"
                    && r.probes == ["users", "per-color"])
        );
        let text = format!(
            "{text}\n[[rule]]\nseverity = \"high\"\nwhen = \"errors >= 20\"\nwindow = \"1m\"\nprobes = [\"users\"]\n"
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.rules[0].min_samples, 1);
        assert_eq!(c.rules[0].condition.signal, Signal::Errors);
    }

    #[test]
    fn bad_access_log_and_unit_keys_are_located() {
        for (probe, key, needle) in [
            (
                "kind = \"access_log\"\nfile = \"/x/a.log\"\nformat = \"combined\"",
                "file",
                "put {color} in `file`",
            ),
            (
                "kind = \"access_log\"\nfile = \"/x/{color}.log\"\ncolor_field = \"up\"",
                "color_field",
                "already names the color",
            ),
            (
                "kind = \"access_log\"\nfile = \"/x/{color}.log\"\nformat = \"combined\"\nstatus_field = \"s\"",
                "status_field",
                "fixed positions",
            ),
            ("kind = \"access_log\"", "file", "needs `file`"),
            ("kind = \"unit\"", "unit", "exactly one of `unit`"),
            (
                "kind = \"unit\"\nunit = \"a\"\nmemory_max = \"150%\"",
                "memory_max",
                "percentage",
            ),
            (
                "kind = \"unit\"\nunit = \"a\"\npattern = \"x\"",
                "pattern",
                "does not apply to kind = \"unit\"",
            ),
        ] {
            let text = format!("{GOOD}\n[[probe]]\nname = \"new\"\n{probe}\n");
            let (line, k, message) = invalid(&text);
            assert_eq!(k, format!("probe[2].{key}"), "{probe}: {message}");
            assert!(message.contains(needle), "{probe}: {message}");
            assert!(
                line + 1 >= line_of(&text, "name = \"new\""),
                "{probe}: line {line}"
            );
        }
    }

    #[test]
    fn key_that_does_not_apply_to_the_kind_is_rejected() {
        let text = GOOD.replace("health = true", "health = true\npattern = \"ERROR\"");
        let (line, key, message) = invalid(&text);
        assert_eq!(line, line_of(&text, "pattern ="));
        assert_eq!(key, "probe[1].pattern");
        assert!(
            message.contains("does not apply to kind = \"http\""),
            "{message}"
        );
    }

    #[test]
    fn unknown_placeholder_is_rejected() {
        let text = GOOD.replace("\"{to}\"", "\"{target}\"");
        let (_, key, message) = invalid(&text);
        assert_eq!(key, "rollback.command");
        assert!(
            message.contains("unknown placeholder {target}"),
            "{message}"
        );
    }

    #[test]
    fn slow_critical_rule_is_rejected() {
        let text = format!(
            "{GOOD}\n[[rule]]\nseverity = \"critical\"\nwhen = \"error_rate > 90%\"\nwindow = \"10m\"\nmin_samples = 3\n"
        );
        let (line, _, message) = invalid(&text);
        assert_eq!(line, line_of(&text, "[[rule]]"));
        assert!(message.contains("must be acted on within 2m"), "{message}");
    }

    #[test]
    fn unreachable_min_samples_is_rejected_for_high() {
        let text = format!(
            "{GOOD}\n[[rule]]\nseverity = \"high\"\nwhen = \"error_rate > 50%\"\nwindow = \"30s\"\nmin_samples = 50\n"
        );
        let (_, _, message) = invalid(&text);
        assert!(message.contains("can never fire"), "{message}");
    }

    #[test]
    fn secrets_resolve_and_never_show_in_debug() {
        // SAFETY (edition 2024 marks set_var unsafe): this test is the only
        // user of this variable name.
        unsafe { std::env::set_var("ROLLBACKD_TEST_HOOK", "https://hooks.example/s3cr3t-token") };
        let text = format!(
            "{GOOD}\n[[notify]]\nkind = \"webhook\"\nurl = \"env:ROLLBACKD_TEST_HOOK\"\nformat = \"slack\"\n"
        );
        let c = parse(&text).unwrap();
        assert_eq!(
            c.notify[0].url.expose(),
            Ok("https://hooks.example/s3cr3t-token")
        );
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cr3t"), "secret leaked into Debug");
        assert!(debug.contains("env:ROLLBACKD_TEST_HOOK"));
    }

    #[test]
    fn rollback_action_requires_a_command() {
        let text = GOOD.replace("[rollback]\ncommand = [\"/bin/true\", \"{to}\"]\n", "");
        let (_, key, message) = invalid(&text);
        assert_eq!(key, "rollback.command");
        assert!(message.contains("required"), "{message}");
    }

    #[test]
    fn status_specs_accept_codes_classes_and_ranges() {
        let text = GOOD.replace(
            "health = true",
            "health = true\nexpect_status = [200, \"3xx\", \"401-403\"]",
        );
        let c = parse(&text).unwrap();
        let Check::Http(h) = &c.probes[0].check else {
            panic!()
        };
        assert_eq!(h.expect_status, vec![200..=200, 300..=399, 401..=403]);
        let bad = GOOD.replace("health = true", "health = true\nexpect_status = [\"9xx\"]");
        assert!(invalid(&bad).2.contains("invalid status"));
    }

    #[test]
    fn bad_prometheus_selector_is_a_config_error() {
        let text = format!(
            "{GOOD}\n[[probe]]\nname = \"traffic\"\nkind = \"prometheus\"\npath = \"/metrics\"\nrequests = \"http_requests_total\"\nerrors = 'http_requests_total{{code=~\"5..\"'\n"
        );
        let (line, key, message) = invalid(&text);
        assert_eq!(line, line_of(&text, "errors ="));
        assert_eq!(key, "probe[2].errors");
        assert!(message.contains("invalid selector"), "{message}");
        let good = text.replace("\"5..\"'", "\"5..\"}'");
        assert!(parse(&good).is_ok());
    }

    #[test]
    fn default_matrix_that_probes_too_slowly_is_rejected_at_the_probe() {
        let text = GOOD.replace(
            "health = true",
            "health = true\ninterval = \"90s\"\nconfirm_interval = \"off\"",
        );
        let (line, key, message) = invalid(&text);
        assert_eq!(line, line_of(&text, "interval = \"90s\""));
        assert_eq!(key, "probe[1].interval");
        assert!(
            message.contains("must be acted on within 2m") && message.contains("default matrix"),
            "{message}"
        );
    }

    #[test]
    fn fast_confirm_shortens_the_detection_time() {
        let text = GOOD.replace(
            "health = true",
            "health = true\nconfirm_interval = \"500ms\"",
        );
        let c = parse(&text).unwrap();
        // 5s + 2s timeout, the four confirms started 0.5s apart.
        assert_eq!(
            c.detection_time(&c.rules[0]),
            Detection::Within(Duration::from_secs(9))
        );
        let off =
            parse(&GOOD.replace("health = true", "health = true\nconfirm_interval = \"off\""))
                .unwrap();
        assert_eq!(off.probes[0].confirm_interval, None);
        // Five runs on the interval, the last one hung for its timeout.
        assert_eq!(
            off.detection_time(&off.rules[0]),
            Detection::Within(Duration::from_secs(27))
        );
        // A short interval bounds the default confirm pace.
        let short = parse(&GOOD.replace(
            "health = true",
            "health = true\ninterval = \"150ms\"\ntimeout = \"100ms\"",
        ))
        .unwrap();
        assert_eq!(
            short.probes[0].confirm_interval,
            Some(Duration::from_millis(150))
        );
        let bad = GOOD.replace(
            "health = true",
            "health = true\nconfirm_interval = \"soon\"",
        );
        let (line, key, message) = invalid(&bad);
        assert_eq!(line, line_of(&bad, "confirm_interval"));
        assert_eq!(key, "probe[1].confirm_interval");
        assert!(message.contains("or \"off\""), "{message}");
    }

    #[test]
    fn assumed_noise_is_a_percentage() {
        let text = GOOD.replace("[daemon]\n", "[daemon]\nassumed_noise = \"0.5%\"\n");
        assert_eq!(parse(&text).unwrap().daemon.assumed_noise, 0.005);
        for bad in ["\"0%\"", "\"100%\"", "\"2\"", "\"lots\""] {
            let text = GOOD.replace("[daemon]\n", &format!("[daemon]\nassumed_noise = {bad}\n"));
            let (line, key, message) = invalid(&text);
            assert_eq!(line, line_of(&text, "assumed_noise"));
            assert_eq!(key, "daemon.assumed_noise");
            assert!(message.contains("like \"2%\""), "{message}");
        }
    }

    #[test]
    fn a_critical_rule_that_fires_on_noise_is_warned_about() {
        let three = GOOD.replace(
            "[rollback]",
            "[[rule]]\nseverity = \"critical\"\nwhen = \"health_failures >= 3\"\nwindow = \"10m\"\n\n[rollback]",
        );
        let c = parse(&three).unwrap();
        // 5s interval, 3 in a row at 2%: 6.3 million ticks a year x 8e-6.
        let per_year = c.noise_firings(&c.rules[0]).unwrap();
        assert!((49.0..52.0).contains(&per_year), "{per_year}");
        let w = c
            .warnings
            .iter()
            .find(|w| w.contains("would fire on noise"))
            .expect("warned");
        assert!(
            w.contains("about 50 times a year at 2% independent failures"),
            "{w}"
        );
        // The default (5 in a row) is quiet; so is 3 in a row on two health
        // probes (the rule takes the smallest streak).
        let quiet = |text: &str| {
            !parse(text)
                .unwrap()
                .warnings
                .iter()
                .any(|w| w.contains("would fire on noise"))
        };
        assert!(quiet(GOOD));
        assert!(quiet(&three.replace(
            "[[rule]]",
            "[[probe]]\nname = \"ready\"\nkind = \"http\"\npath = \"/ready\"\nhealth = true\n\n[[rule]]"
        )));
        // A noisier assumption makes the default speak up too.
        let noisy = GOOD.replace("[daemon]\n", "[daemon]\nassumed_noise = \"20%\"\n");
        assert!(!quiet(&noisy));
    }

    #[test]
    fn secrets_written_inline_are_warned_about_without_showing_them() {
        let text = GOOD.replace("health = true", "health = true\nheaders = { Authorization = \"Bearer hunter2\", Accept = \"text/plain\" }")
            + "\n[[notify]]\nkind = \"webhook\"\nurl = \"https://hooks.example/hunter3\"\n";
        let c = parse(&text).unwrap();
        let all = c.warnings.join("\n");
        assert!(
            all.contains("header Authorization is written in the file"),
            "{all}"
        );
        assert!(!all.contains("header Accept"), "{all}");
        assert!(
            all.contains("[[notify]] url is written in the file"),
            "{all}"
        );
        assert!(
            !all.contains("hunter"),
            "a warning never shows the value: {all}"
        );
    }

    #[test]
    fn a_missing_table_is_named() {
        let text = GOOD.replace("[service]\nname = \"beluga\"\n", "");
        let (_, key, message) = invalid(&text);
        assert_eq!(key, "service");
        assert!(message.contains("missing field `service`"), "{message}");
    }

    #[test]
    fn syntax_error_is_located() {
        let text = GOOD.replace("kind = \"http\"", "kind = \"http");
        let (line, _, _) = invalid(&text);
        assert_eq!(line, line_of(&text, "kind = \"http"));
    }
}
