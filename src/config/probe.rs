//! Probes: the validated `[[probe]]` tables (one `Check` per kind, each
//! with its endpoint, headers and kind-specific keys), their defaults, and
//! the validation that turns a raw table into a [`Probe`]: keys that do not
//! apply to the kind, intervals and timeouts, endpoints against each
//! color's `base_url`, scope (per color or shared).

use std::collections::BTreeMap;
use std::ops::{Range, RangeInclusive};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use url::Url;

use super::locate::{Source, header_span};
use super::raw::{Confirm, HttpUrl, Kind, RawProbe};
use super::secret::Secret;
use super::selector::Selector;
use super::{Colors, ConfigError, Template, validate_template};
use crate::model::Color;

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
    pub requests: Selector,
    pub errors: Selector,
    pub latency: Option<Selector>,
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

// ---------------------------------------------------------------------------
// Defaults: SPEC sections 2 and 3.

const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Fast confirm is on unless `confirm_interval = "off"` (SPEC section 2):
/// this pace, or the probe's interval when that is shorter.
pub const DEFAULT_CONFIRM_INTERVAL: Duration = Duration::from_millis(200);

pub(super) fn validate_probe(
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
            // Selectors are parsed here, once: a typo is a config error at
            // load time rather than "no data" forever, and every scrape
            // uses the parsed selector.
            let selector = |key: &str, text: &str| {
                Selector::parse(text).map_err(|e| {
                    err(key, format!("invalid selector {text:?}: {e}; expected a metric name with optional label matchers, like 'http_requests_total{{code=~\"5..\"}}'"))
                })
            };
            let requests = selector("requests", &requests)?;
            let errors = selector("errors", &errors)?;
            let latency = raw
                .latency
                .as_deref()
                .map(|text| selector("latency", text))
                .transpose()?;
            Check::Prometheus(PrometheusCheck {
                endpoint: endpoint(raw.path, raw.url)?,
                headers: headers(raw.headers)?,
                requests,
                errors,
                latency,
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
