//! The raw TOML shapes (serde), as the file spells them. Values that can be
//! checked on their own (durations, URLs, regular expressions, severities,
//! conditions, percentages, status codes) are checked while deserializing,
//! so toml attaches the span of the bad value. Nothing here is seen past
//! `config`: validation turns these into the real objects.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use toml::Spanned;
use url::Url;

use super::{AccessLogFormat, NotifyFormat};
use crate::model::{Action, Condition, Severity};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) daemon: RawDaemon,
    pub(super) service: RawService,
    pub(super) colors: RawColors,
    #[serde(default)]
    pub(super) active: RawActive,
    pub(super) entry: Option<Spanned<RawEntry>>,
    #[serde(default, rename = "probe")]
    pub(super) probes: Vec<Spanned<RawProbe>>,
    #[serde(default, rename = "rule")]
    pub(super) rules: Option<Vec<Spanned<RawRule>>>,
    #[serde(default)]
    pub(super) actions: RawActions,
    pub(super) rollback: Option<Spanned<RawRollback>>,
    #[serde(default, rename = "notify")]
    pub(super) notify: Vec<Spanned<RawNotify>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    pub(super) state_dir: Option<PathBuf>,
    pub(super) listen: Option<Listen>,
    pub(super) retention: Option<HumanDuration>,
    pub(super) dry_run: Option<bool>,
    pub(super) watch_config: Option<bool>,
    pub(super) assumed_noise: Option<Percent>,
    pub(super) database: Option<String>,
    pub(super) host: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawColors {
    pub(super) blue: RawColor,
    pub(super) green: RawColor,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawColor {
    pub(super) base_url: Option<HttpUrl>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawActive {
    pub(super) file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEntry {
    pub(super) url: HttpUrl,
    pub(super) color_header: String,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum Kind {
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
pub(super) struct RawProbe {
    pub(super) name: String,
    pub(super) kind: Kind,
    pub(super) path: Option<String>,
    pub(super) url: Option<HttpUrl>,
    pub(super) address: Option<String>,
    pub(super) interval: Option<HumanDuration>,
    pub(super) timeout: Option<HumanDuration>,
    pub(super) confirm_interval: Option<Confirm>,
    pub(super) health: Option<bool>,
    pub(super) method: Option<String>,
    pub(super) headers: Option<BTreeMap<String, String>>,
    pub(super) expect_status: Option<Vec<StatusSpec>>,
    pub(super) body_contains: Option<String>,
    pub(super) body_regex: Option<Pattern>,
    pub(super) expect_headers: Option<Vec<String>>,
    pub(super) follow_redirects: Option<bool>,
    pub(super) command: Option<Vec<String>>,
    pub(super) requests: Option<String>,
    pub(super) errors: Option<String>,
    pub(super) latency: Option<String>,
    pub(super) file: Option<String>,
    pub(super) unit: Option<String>,
    pub(super) pattern: Option<Pattern>,
    pub(super) format: Option<AccessLogFormat>,
    pub(super) color_field: Option<String>,
    pub(super) status_field: Option<String>,
    pub(super) latency_field: Option<String>,
    pub(super) cgroup: Option<String>,
    pub(super) memory_max: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) name: Option<String>,
    pub(super) severity: SeverityValue,
    pub(super) when: ConditionValue,
    pub(super) window: Option<HumanDuration>,
    #[serde(rename = "for")]
    pub(super) hold_for: Option<HumanDuration>,
    pub(super) min_samples: Option<u32>,
    pub(super) clear_after: Option<u32>,
    pub(super) probes: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawActions {
    pub(super) critical: Option<Action>,
    pub(super) high: Option<Action>,
    pub(super) medium: Option<Action>,
    pub(super) low: Option<Action>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRollback {
    pub(super) prepare: Option<Vec<String>>,
    pub(super) command: Option<Vec<String>>,
    pub(super) retire: Option<Vec<String>>,
    pub(super) timeout: Option<HumanDuration>,
    pub(super) verify_target: Option<bool>,
    pub(super) verify_after: Option<HumanDuration>,
    pub(super) cooldown: Option<HumanDuration>,
    pub(super) quarantine: Option<bool>,
    pub(super) bake: Option<HumanDuration>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(super) enum NotifyKind {
    Webhook,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    #[allow(dead_code)] // one kind today; the key is required so files stay explicit
    pub(super) kind: NotifyKind,
    pub(super) url: String,
    pub(super) format: Option<NotifyFormat>,
    pub(super) min_severity: Option<SeverityValue>,
    pub(super) template: Option<PathBuf>,
    pub(super) method: Option<String>,
    pub(super) path: Option<String>,
    pub(super) headers: Option<BTreeMap<String, String>>,
    pub(super) content_type: Option<String>,
    pub(super) secrets: Option<BTreeMap<String, String>>,
}

/// A humantime duration: "5s", "2m", "14d".
#[derive(Clone, Copy)]
pub(super) struct HumanDuration(pub(super) Duration);

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

pub(super) struct HttpUrl(pub(super) Url);

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

pub(super) struct Pattern(pub(super) Regex);

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Regex::new(&text).map(Pattern).map_err(|e| {
            serde::de::Error::custom(format!("invalid regular expression {text:?}: {e}"))
        })
    }
}

pub(super) struct SeverityValue(pub(super) Severity);

impl<'de> Deserialize<'de> for SeverityValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map(SeverityValue)
            .map_err(serde::de::Error::custom)
    }
}

pub(super) struct ConditionValue(pub(super) Condition);

impl<'de> Deserialize<'de> for ConditionValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map(ConditionValue)
            .map_err(serde::de::Error::custom)
    }
}

/// `confirm_interval = "200ms"`, or `"off"` for no fast confirm.
pub(super) struct Confirm(pub(super) Option<Duration>);

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
pub(super) struct Percent(pub(super) f64);

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
pub(super) struct Listen(pub(super) Option<SocketAddr>);

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
pub(super) struct StatusSpec(pub(super) RangeInclusive<u16>);

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
