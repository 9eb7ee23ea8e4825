//! Configuration: the TOML of SPEC section 3 parsed into raw serde structs,
//! then validated once into [`Config`], which holds only real objects
//! (`Duration`, `Url`, `Regex`, enums, resolved [`Secret`]s).
//!
//! Strings and seconds stop here. Every error names the file, the line, the
//! key (as a dotted path such as `probe[2].timeout`, 1-based) and what was
//! expected. `check`, `run` and a reload all go through [`Config::load`].
//! This module does no IO besides reading the file and resolving secrets.
//!
//! The parts, one concern each: `raw` (the serde shapes), `locate` (byte
//! spans to file, line and key), `probe` (probe kinds and their checks),
//! `selector` (Prometheus selectors, parsed once), `template` (notification
//! templates, checked at load), `rule` (rules and the
//! default matrix), `timing` (detection times and
//! what noise would fire), `secret` (`env:`/`file:` references); this file
//! holds [`Config`], loading, and the tables too small for a file of their
//! own. Nothing here imports a part above it (probe, matrix, notifier,
//! daemon, ...): they import `config`.

mod locate;
mod probe;
mod raw;
mod rule;
pub mod secret;
mod selector;
pub mod template;
#[cfg(test)]
mod tests;
mod timing;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::config::secret::Secret;
use crate::model::{Action, Color, Severity};

use locate::{Source, header_span, toml_error};
use probe::validate_probe;
use raw::{Listen, RawConfig, RawRollback};
use rule::validate_rule;

pub use probe::{
    AccessLogCheck, AccessLogFormat, Check, DEFAULT_CONFIRM_INTERVAL, Endpoint, ExecCheck,
    HttpCheck, LogCheck, LogSource, MemoryLimit, Probe, PrometheusCheck, Scope, TcpCheck,
    UnitCheck,
};
pub use raw::parse_percent;
pub use rule::{ASSUMED_REQUESTS_PER_S, Rule, consecutive_needed};
pub use selector::Selector;
pub use timing::{Detection, NoiseCadence, YEAR_S, firings_per_year, format_rate, how_often};

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
    /// `[daemon] database`: a shared PostgreSQL (SPEC section 7), as a
    /// secret reference to its `postgres://` URL. `None`: the local SQLite
    /// file only.
    pub database: Option<Secret>,
    /// `[daemon] host`: this host's name in a shared database (default:
    /// the machine's hostname).
    pub host: String,
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
    pub template: Option<std::sync::Arc<template::NotifyTemplate>>,
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

/// `[daemon] assumed_noise`: the failure rate `check` prices rules at.
pub const DEFAULT_ASSUMED_NOISE: f64 = 0.02;

/// The head of the unit tests' configurations, a literal for `concat!`:
/// `[daemon]` (a relative state directory, no listener), `[service]` and two
/// colors nobody answers for. A test adds its probes and `[rollback]`.
#[cfg(test)]
macro_rules! test_config_head {
    () => {
        r#"
[daemon]
state_dir = "state"
listen = "off"
[service]
name = "t"
[colors.blue]
base_url = "http://127.0.0.1:9"
[colors.green]
base_url = "http://127.0.0.1:9"
"#
    };
}
#[cfg(test)]
pub(crate) use test_config_head;

/// The smallest whole configuration the unit tests start from: one http
/// health probe `healthz` on [`test_config_head`]'s colors, and a rollback
/// command that does nothing.
#[cfg(test)]
pub(crate) const TEST_CONFIG: &str = concat!(
    test_config_head!(),
    r#"[[probe]]
name = "healthz"
kind = "http"
path = "/healthz"
interval = "1s"
timeout = "500ms"
health = true
[rollback]
command = ["/bin/true"]
"#
);

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
            database: shared_database(&src, raw.daemon.database.as_deref(), &mut warnings)?,
            host: match raw.daemon.host {
                Some(h) if valid_host_name(&h) => h,
                Some(h) => {
                    let table = header_span(src.text, "daemon").unwrap_or(0..0);
                    return Err(src.key_error(
                        &table,
                        "host",
                        format!(
                            "{h:?} is not a host name: expected 1 to 253 letters, digits, '.', '-' or '_'"
                        ),
                    ));
                }
                None => machine_host_name(),
            },
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
            None => rule::default_rules(&probes),
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
                    let t = template::NotifyTemplate::load(
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
}

impl Config {
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

/// `[daemon] database`: a secret reference whose value, once resolved, must
/// be a `postgres://` (or `postgresql://`) URL. The value itself is never
/// quoted in an error or a warning: it carries a password.
fn shared_database(
    src: &Source<'_>,
    raw: Option<&str>,
    warnings: &mut Vec<String>,
) -> Result<Option<Secret>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let table = header_span(src.text, "daemon").unwrap_or(0..0);
    let secret = Secret::resolve(raw).map_err(|e| src.key_error(&table, "database", e))?;
    if let Some(problem) = secret.problem() {
        warnings.push(format!(
            "[daemon] database: {problem}; the daemon must have it"
        ));
    }
    if secret.source() == &crate::config::secret::Source::Inline {
        warnings.push(
            "[daemon] database is written in the file: its URL may carry a password; use \"env:NAME\" or \"file:/path\"".to_owned(),
        );
    }
    if let Ok(value) = secret.expose() {
        if !(value.starts_with("postgres://") || value.starts_with("postgresql://")) {
            return Err(src.key_error(
                &table,
                "database",
                format!(
                    "{} does not hold a postgres:// URL (the local SQLite file needs no setting: leave `database` out)",
                    secret
                ),
            ));
        }
    }
    Ok(Some(secret))
}

fn valid_host_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// The machine's hostname, or "localhost" when it cannot be read.
fn machine_host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| valid_host_name(h))
        .unwrap_or_else(|| "localhost".to_owned())
}
