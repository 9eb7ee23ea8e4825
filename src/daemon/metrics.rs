//! The daemon's Prometheus metrics: one registry, created once per daemon
//! run, so counters and histograms survive every reload. The work loop and
//! the sample writer update it; `http` encodes it for `/metrics`.
//!
//! This file owns metric names, labels and buckets, and the two text
//! formats: OpenMetrics for a scraper that asks for it in `Accept` (as
//! Prometheus does), the classic Prometheus text format 0.0.4 otherwise
//! (what `curl | promtool check metrics` expects). It does not serve HTTP
//! (that is `http.rs`) and reads no database: the database size is passed
//! in at encode time.
//!
//! Every series whose labels can be known is there from the start at 0
//! (rollback and reload outcomes, each probe's colors and statuses, each
//! notifier), so that `increase()` sees the first event.

use crate::model::IncidentState;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::config::{Config, Scope};
use crate::matrix::{State, Verdict};
use crate::model::{Color, Sample, SampleStatus, now_ms};

/// OpenMetrics' content type, served to a scraper that asks for it.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format's content type, served otherwise.
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Which text format a scrape gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Classic,
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when `Accept` lists `application/openmetrics-text` with
    /// a quality above 0; the classic format otherwise (no header, `*/*`,
    /// `text/plain`).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Classic;
        };
        let wanted = accept.split(',').any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f64>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        });
        if wanted {
            Format::OpenMetrics
        } else {
            Format::Classic
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Classic => CLASSIC,
            Format::OpenMetrics => OPENMETRICS,
        }
    }
}

/// Every rollback outcome the daemon counts (`rollback::Outcome::word`, and
/// "error" when the attempt itself failed).
pub const ROLLBACK_OUTCOMES: [&str; 7] = [
    IncidentState::Verified.as_str(),
    IncidentState::Escalated.as_str(),
    IncidentState::Refused.as_str(),
    IncidentState::Failed.as_str(),
    IncidentState::DryRun.as_str(),
    "skipped",
    "error",
];

const SAMPLE_STATUSES: [SampleStatus; 5] = [
    SampleStatus::Ok,
    SampleStatus::Failed,
    SampleStatus::Timeout,
    SampleStatus::Unreachable,
    SampleStatus::NoData,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    probe: String,
    /// "blue", "green", or "shared".
    color: &'static str,
}

// Labels from a fixed set are `&'static str`: a sample's lookup allocates
// only its probe's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SampleLabels {
    probe: String,
    color: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    rule: String,
    severity: &'static str,
    color: &'static str,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeNameLabels {
    probe: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

/// A notifier, named by its place among the `[[notify]]` tables and its
/// format: never by its URL, which is a secret.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotifierLabels {
    notifier: String,
    format: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ColorLabels {
    color: String,
}

/// Create a counter's series at 0 (an existing one keeps its count).
fn zero<L: Clone + std::hash::Hash + Eq>(family: &Family<L, Counter>, labels: &L) {
    // The guard only holds the family's lock; dropping it at once is the
    // point.
    drop(family.get_or_create(labels));
}

fn histogram() -> Histogram {
    // 5 ms .. ~20 s: from a loopback health check to a probe at its timeout.
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

/// Every metric the daemon exports. Cheap to share behind an `Arc`; all
/// updates are atomic.
pub struct Metrics {
    registry: Registry,
    latency: Family<ProbeLabels, Histogram, fn() -> Histogram>,
    samples: Family<SampleLabels, Counter>,
    verdicts: Family<VerdictLabels, Gauge>,
    rollbacks: Family<OutcomeLabels, Counter>,
    reloads: Family<OutcomeLabels, Counter>,
    active: Family<ColorLabels, Gauge>,
    dropped: Counter,
    buffered: Gauge,
    db_size: Gauge,
    malformed: Family<ProbeNameLabels, Counter>,
    notifications_sent: Family<NotifierLabels, Counter>,
    notifications_failed: Family<NotifierLabels, Counter>,
    reload_successful: Gauge,
    reload_success_at: Gauge<f64, AtomicU64>,
    storage_ok: Gauge,
    storage_failed: Counter,
    storage_kept: Gauge,
    shared_ok: Gauge,
    shared_backlog: Gauge,
    shared_dropped: Counter,
    leader: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("rollbackd");
        let latency = Family::<ProbeLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            histogram as fn() -> Histogram,
        );
        let samples = Family::<SampleLabels, Counter>::default();
        let verdicts = Family::<VerdictLabels, Gauge>::default();
        let rollbacks = Family::<OutcomeLabels, Counter>::default();
        let reloads = Family::<OutcomeLabels, Counter>::default();
        let active = Family::<ColorLabels, Gauge>::default();
        let dropped = Counter::default();
        let buffered = Gauge::default();
        let db_size = Gauge::default();
        let malformed = Family::<ProbeNameLabels, Counter>::default();
        let notifications_sent = Family::<NotifierLabels, Counter>::default();
        let notifications_failed = Family::<NotifierLabels, Counter>::default();
        let reload_successful = Gauge::default();
        let reload_success_at = Gauge::<f64, AtomicU64>::default();
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1; the version label says which rollbackd is running",
            build_info,
        );
        registry.register(
            "notifications_sent",
            "Notifications delivered, per notifier (its place among [[notify]]) and format",
            notifications_sent.clone(),
        );
        registry.register(
            "notifications_failed",
            "Notifications given up on after every retry or dropped, per notifier and format",
            notifications_failed.clone(),
        );
        registry.register(
            "config_last_reload_successful",
            "1 when the configuration in force is the file's latest (the last reload succeeded), 0 otherwise",
            reload_successful.clone(),
        );
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "When the configuration in force was loaded (Unix time)",
            reload_success_at.clone(),
        );
        // The daemon starts with a configuration that loaded.
        reload_successful.set(1);
        reload_success_at.set(now_ms() as f64 / 1000.0);
        for outcome in ROLLBACK_OUTCOMES {
            zero(
                &rollbacks,
                &OutcomeLabels {
                    outcome: outcome.to_owned(),
                },
            );
        }
        for outcome in ["ok", "failed"] {
            zero(
                &reloads,
                &OutcomeLabels {
                    outcome: outcome.to_owned(),
                },
            );
        }
        registry.register(
            "access_log_malformed_lines",
            "Access log lines skipped because they did not parse, per probe",
            malformed.clone(),
        );
        let storage_ok = Gauge::default();
        let storage_failed = Counter::default();
        let storage_kept = Gauge::default();
        let (shared_ok, shared_backlog, shared_dropped, leader) = (
            Gauge::default(),
            Gauge::default(),
            Counter::default(),
            Gauge::default(),
        );
        registry.register(
            "probe_latency_seconds",
            "Probe latency, per probe and color",
            latency.clone(),
        );
        registry.register(
            "samples",
            "Samples taken, per probe, color and status (ok, failed, timeout, unreachable, no_data)",
            samples.clone(),
        );
        registry.register(
            "verdict_state",
            "1 for each rule and color's current state (fired, clear, inconclusive), 0 otherwise",
            verdicts.clone(),
        );
        registry.register(
            "rollbacks",
            "Rollbacks the daemon attempted, by outcome",
            rollbacks.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads, by outcome (ok, failed)",
            reloads.clone(),
        );
        registry.register(
            "active_color",
            "1 for the color serving traffic",
            active.clone(),
        );
        registry.register(
            "samples_dropped",
            "Samples dropped because the database refused writes for too long",
            dropped.clone(),
        );
        registry.register(
            "samples_buffered",
            "Samples waiting to be written to the database",
            buffered.clone(),
        );
        registry.register(
            "database_size_bytes",
            "Size of rollbackd.db and its write-ahead log",
            db_size.clone(),
        );
        registry.register(
            "storage_ok",
            "1 while the database takes writes, nothing waits in memory and the file at the path is the one open; 0 during a storage fault",
            storage_ok.clone(),
        );
        registry.register(
            "storage_write_failures",
            "Write transactions the database refused (full, read-only, locked past the busy timeout)",
            storage_failed.clone(),
        );
        registry.register(
            "storage_kept_records",
            "Rollback records kept in memory until the database takes writes again",
            storage_kept.clone(),
        );
        registry.register(
            "shared_database_ok",
            "1 while the fleet's shared PostgreSQL takes writes (or none is configured); 0 while it is lost",
            shared_ok.clone(),
        );
        registry.register(
            "shared_backlog_rows",
            "Rows held in memory for the shared database until it takes them",
            shared_backlog.clone(),
        );
        registry.register(
            "shared_dropped_samples",
            "Samples the shared database never got: the backlog was full",
            shared_dropped.clone(),
        );
        registry.register(
            "leader",
            "1 while this daemon may switch its service (the shared database's leader, or no shared database)",
            leader.clone(),
        );
        Metrics {
            registry,
            latency,
            samples,
            verdicts,
            rollbacks,
            reloads,
            active,
            dropped,
            buffered,
            db_size,
            malformed,
            notifications_sent,
            notifications_failed,
            reload_successful,
            reload_success_at,
            storage_ok,
            storage_failed,
            storage_kept,
            shared_ok,
            shared_backlog,
            shared_dropped,
            leader,
        }
    }

    /// Create at 0 the series the configuration makes known: each probe's
    /// samples per color and status, each notifier's deliveries. Called at
    /// start and after each successful reload; existing counts are kept.
    pub fn configure(&self, config: &Config) {
        for probe in &config.probes {
            let colors: &[&'static str] = match probe.scope {
                Scope::PerColor => &["blue", "green"],
                Scope::Shared => &["shared"],
            };
            for &color in colors {
                for status in SAMPLE_STATUSES {
                    zero(
                        &self.samples,
                        &SampleLabels {
                            probe: probe.name.clone(),
                            color,
                            status: status.as_str(),
                        },
                    );
                }
            }
        }
        for n in &config.notify {
            let labels = NotifierLabels {
                notifier: n.id.to_string(),
                format: crate::notifier::format_name(n.format).to_owned(),
            };
            zero(&self.notifications_sent, &labels);
            zero(&self.notifications_failed, &labels);
        }
    }

    pub fn observe_sample(&self, sample: &Sample) {
        let color = sample.color.map(Color::as_str).unwrap_or("shared");
        self.samples
            .get_or_create(&SampleLabels {
                probe: sample.probe.clone(),
                color,
                status: sample.status.as_str(),
            })
            .inc();
        if let Some(ms) = sample.latency_ms {
            self.latency
                .get_or_create(&ProbeLabels {
                    probe: sample.probe.clone(),
                    color,
                })
                .observe(ms / 1000.0);
        }
    }

    /// Publish the latest verdicts: each (rule, color) has its current
    /// state at 1 and the other two at 0.
    pub fn set_verdicts(&self, verdicts: &[Verdict]) {
        for v in verdicts {
            for state in [State::Fired, State::Clear, State::Inconclusive] {
                self.verdicts
                    .get_or_create(&VerdictLabels {
                        rule: v.rule.clone(),
                        severity: v.severity.as_str(),
                        color: v.color.as_str(),
                        state: state.as_str(),
                    })
                    .set(i64::from(v.state == state));
            }
        }
    }

    /// After a reload: rules may be gone; their series go with them (the
    /// next evaluation fills the family again).
    pub fn forget_verdicts(&self) {
        self.verdicts.clear();
    }

    pub fn rollback(&self, outcome: &str) {
        self.rollbacks
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn reload(&self, ok: bool) {
        self.reload_successful.set(i64::from(ok));
        if ok {
            self.reload_success_at.set(now_ms() as f64 / 1000.0);
        }
        self.reloads
            .get_or_create(&OutcomeLabels {
                outcome: if ok { "ok" } else { "failed" }.to_owned(),
            })
            .inc();
    }

    pub fn set_active(&self, active: Option<Color>) {
        for color in Color::ALL {
            self.active
                .get_or_create(&ColorLabels {
                    color: color.as_str().to_owned(),
                })
                .set(i64::from(active == Some(color)));
        }
    }

    pub fn dropped(&self, n: u64) {
        self.dropped.inc_by(n);
    }

    pub fn set_buffered(&self, n: usize) {
        self.buffered.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The storage's state, read by the caller before [`Metrics::encode`]:
    /// whether it is free of faults, the store's count of failed writes
    /// (only ever grows) and the records waiting in memory.
    pub fn set_storage(&self, ok: bool, failed_writes: u64, kept: usize) {
        self.storage_ok.set(i64::from(ok));
        let seen = self.storage_failed.get();
        if failed_writes > seen {
            self.storage_failed.inc_by(failed_writes - seen);
        }
        self.storage_kept
            .set(i64::try_from(kept).unwrap_or(i64::MAX));
    }

    /// The shared database's state, read by the caller before
    /// [`Metrics::encode`]: whether it takes writes, the rows held for it,
    /// the samples dropped so far (only ever grows), and leadership.
    pub fn set_shared(&self, ok: bool, backlog: usize, dropped: u64, leader: bool) {
        self.shared_ok.set(i64::from(ok));
        self.shared_backlog
            .set(i64::try_from(backlog).unwrap_or(i64::MAX));
        let seen = self.shared_dropped.get();
        if dropped > seen {
            self.shared_dropped.inc_by(dropped - seen);
        }
        self.leader.set(i64::from(leader));
    }

    /// The text exposition in `format`, with the database size read by the
    /// caller.
    pub fn encode(&self, db_size_bytes: u64, format: Format) -> String {
        self.db_size
            .set(i64::try_from(db_size_bytes).unwrap_or(i64::MAX));
        // Counted process-wide by the followers (they survive reloads).
        for (probe, total) in crate::probe::access_log::malformed_totals() {
            let c = self.malformed.get_or_create(&ProbeNameLabels { probe });
            let seen = c.get();
            if total > seen {
                c.inc_by(total - seen);
            }
        }
        // Counted process-wide by the notification worker.
        for t in crate::notifier::target_totals() {
            let labels = NotifierLabels {
                notifier: t.id.to_string(),
                format: t.format.to_owned(),
            };
            for (family, total) in [
                (&self.notifications_sent, t.sent),
                (&self.notifications_failed, t.failed),
            ] {
                let c = family.get_or_create(&labels);
                let seen = c.get();
                if total > seen {
                    c.inc_by(total - seen);
                }
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would be a
        // bug in a metric, and an empty scrape says so loudly enough.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("cannot encode metrics: {e}");
            out.clear();
        }
        match format {
            Format::OpenMetrics => out,
            Format::Classic => classic(&out),
        }
    }
}

/// Rewrite the OpenMetrics text `prometheus_client` writes into the classic
/// Prometheus text format 0.0.4. The samples are the same; what differs is
/// in the comments: a counter's HELP and TYPE name its `_total` series, an
/// info metric is a gauge named `_info`, `unknown` is `untyped`, there is
/// no `# UNIT` and no `# EOF`, and HELP escapes only `\\` and `\n`.
fn classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // A family's HELP comes before its TYPE, which may rename it.
    let mut help: Option<(&str, String)> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text.replace("\\\"", "\"")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "stateset" => (name.to_owned(), "gauge"),
                "gaugehistogram" => (name.to_owned(), "histogram"),
                "unknown" => (name.to_owned(), "untyped"),
                other => (name.to_owned(), other),
            };
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if let Some((name, text)) = help.take() {
            out.push_str(&format!("# HELP {name} {text}\n"));
        }
        // A sample: the same in both formats (no exemplars are recorded).
        out.push_str(line);
        out.push('\n');
    }
    out
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Millis, SampleStatus, Severity, Signal};

    fn sample(probe: &str, color: Option<Color>, status: SampleStatus, ms: f64) -> Sample {
        Sample {
            at_ms: 0 as Millis,
            probe: probe.into(),
            color,
            deployment: None,
            ok: status == SampleStatus::Ok,
            latency_ms: Some(ms),
            status,
            detail: String::new(),
            requests: None,
            errors: None,
        }
    }

    #[test]
    fn encodes_samples_latency_verdicts_and_size_in_prometheus_text() {
        let m = Metrics::new();
        m.observe_sample(&sample(
            "healthz",
            Some(Color::Blue),
            SampleStatus::Ok,
            12.0,
        ));
        m.observe_sample(&sample(
            "healthz",
            Some(Color::Blue),
            SampleStatus::Failed,
            30.0,
        ));
        m.observe_sample(&sample("lavalink", None, SampleStatus::Ok, 3.0));
        m.set_verdicts(&[Verdict {
            at_ms: 0,
            rule: "high: error_rate > 50% over 2m".into(),
            severity: Severity::High,
            signal: Signal::ErrorRate,
            color: Color::Green,
            state: State::Fired,
            n: 10,
            value: Some(80.0),
            threshold: 50.0,
            window_ms: 120_000,
            baseline: None,
            detail: String::new(),
            changed: true,
        }]);
        m.rollback("verified");
        m.dropped(7);
        let text = m.encode(4096, Format::OpenMetrics);

        let scrape = crate::probe::exposition::parse(&text).unwrap();
        let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
            scrape
                .iter()
                .find(|s| {
                    s.metric == name
                        && labels
                            .iter()
                            .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
                })
                .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
                .value
        };
        assert_eq!(
            value(
                "rollbackd_samples_total",
                &[
                    ("probe", "healthz"),
                    ("color", "blue"),
                    ("status", "failed")
                ]
            ),
            1.0
        );
        assert_eq!(
            value(
                "rollbackd_samples_total",
                &[("probe", "lavalink"), ("color", "shared")]
            ),
            1.0
        );
        assert_eq!(
            value(
                "rollbackd_verdict_state",
                &[("color", "green"), ("state", "fired")]
            ),
            1.0
        );
        assert_eq!(
            value(
                "rollbackd_verdict_state",
                &[("color", "green"), ("state", "clear")]
            ),
            0.0
        );
        assert_eq!(
            value("rollbackd_rollbacks_total", &[("outcome", "verified")]),
            1.0
        );
        assert_eq!(value("rollbackd_samples_dropped_total", &[]), 7.0);
        assert_eq!(value("rollbackd_database_size_bytes", &[]), 4096.0);
        // Two blue healthz samples in the histogram, one under 25 ms.
        assert!(
            text.contains(
                "rollbackd_probe_latency_seconds_count{probe=\"healthz\",color=\"blue\"} 2"
            )
        );
        assert!(text.contains(
            "rollbackd_probe_latency_seconds_bucket{le=\"0.02\",probe=\"healthz\",color=\"blue\"} 1"
        ));
    }

    #[test]
    fn negotiates_openmetrics_only_when_accept_asks_for_it() {
        assert_eq!(Format::negotiate(None), Format::Classic);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Classic);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::Classic
        );
        // What Prometheus 2.x sends.
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            )),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text; q=0, text/plain")),
            Format::Classic
        );
    }

    #[test]
    fn classic_format_names_counters_by_their_total_and_has_no_eof() {
        let m = Metrics::new();
        m.rollback("verified");
        let om = m.encode(0, Format::OpenMetrics);
        assert!(om.contains("# TYPE rollbackd_rollbacks counter\n"), "{om}");
        assert!(om.trim_end().ends_with("# EOF"), "{om}");

        let text = m.encode(0, Format::Classic);
        assert!(!text.contains("# EOF"), "{text}");
        assert!(!text.contains("# UNIT"), "{text}");
        assert!(
            text.contains("# HELP rollbackd_rollbacks_total Rollbacks"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE rollbackd_rollbacks_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("rollbackd_rollbacks_total{outcome=\"verified\"} 1\n"),
            "{text}"
        );
        // Every counter family's TYPE names its `_total` series.
        for line in text.lines().filter(|l| l.ends_with(" counter")) {
            let name = line.split(' ').nth(2).unwrap();
            assert!(name.ends_with("_total"), "{line}");
        }
    }

    #[test]
    fn known_series_start_at_zero_and_build_info_is_one() {
        let m = Metrics::new();
        let text = m.encode(0, Format::Classic);
        for outcome in ROLLBACK_OUTCOMES {
            assert!(
                text.contains(&format!(
                    "rollbackd_rollbacks_total{{outcome=\"{outcome}\"}} 0\n"
                )),
                "{outcome} missing in\n{text}"
            );
        }
        assert!(text.contains("rollbackd_config_reloads_total{outcome=\"failed\"} 0\n"));
        assert!(text.contains(&format!(
            "rollbackd_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(text.contains("rollbackd_config_last_reload_successful 1\n"));

        m.reload(false);
        let text = m.encode(0, Format::Classic);
        assert!(text.contains("rollbackd_config_last_reload_successful 0\n"));
        assert!(text.contains("rollbackd_config_reloads_total{outcome=\"failed\"} 1\n"));
        let at: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("rollbackd_config_last_reload_success_timestamp_seconds "))
            .unwrap()
            .parse()
            .unwrap();
        let now = now_ms() as f64 / 1000.0;
        assert!(at > now - 60.0 && at <= now, "{at} vs {now}");
    }
}
