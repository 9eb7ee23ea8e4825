//! The daemon's Prometheus metrics: one registry, created once per daemon
//! run, so counters and histograms survive every reload. The work loop and
//! the sample writer update it; `http` encodes it for `/metrics`.
//!
//! This file owns metric names, labels and buckets. It does not serve HTTP
//! (that is `http.rs`) and reads no database: the database size is passed
//! in at encode time.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::matrix::{State, Verdict};
use crate::model::{Color, Sample};

/// The text format's content type (OpenMetrics, which Prometheus scrapes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    probe: String,
    /// "blue", "green", or "shared".
    color: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SampleLabels {
    probe: String,
    color: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    rule: String,
    severity: String,
    color: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ColorLabels {
    color: String,
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
    storage_ok: Gauge,
    storage_failed: Counter,
    storage_kept: Gauge,
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
        let storage_ok = Gauge::default();
        let storage_failed = Counter::default();
        let storage_kept = Gauge::default();
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
            storage_ok,
            storage_failed,
            storage_kept,
        }
    }

    pub fn observe_sample(&self, sample: &Sample) {
        let color = sample.color.map(Color::as_str).unwrap_or("shared");
        self.samples
            .get_or_create(&SampleLabels {
                probe: sample.probe.clone(),
                color: color.to_owned(),
                status: sample.status.as_str().to_owned(),
            })
            .inc();
        if let Some(ms) = sample.latency_ms {
            self.latency
                .get_or_create(&ProbeLabels {
                    probe: sample.probe.clone(),
                    color: color.to_owned(),
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
                        severity: v.severity.as_str().to_owned(),
                        color: v.color.as_str().to_owned(),
                        state: state.as_str().to_owned(),
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

    /// The text exposition, with the database size read by the caller.
    pub fn encode(&self, db_size_bytes: u64) -> String {
        self.db_size
            .set(i64::try_from(db_size_bytes).unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would be a
        // bug in a metric, and an empty scrape says so loudly enough.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("cannot encode metrics: {e}");
            out.clear();
        }
        out
    }
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
        let text = m.encode(4096);

        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let scrape = prometheus_parse::Scrape::parse(lines.into_iter().map(Ok)).unwrap();
        let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
            let s = scrape
                .samples
                .iter()
                .find(|s| {
                    s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
                })
                .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"));
            match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("unexpected {other:?}"),
            }
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
}
