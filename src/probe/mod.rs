//! Probes: one file per kind. A probe runs against one color (or once, for a
//! shared dependency) and always yields an [`Outcome`]; a dead, slow or
//! lying target is a failed sample, never an `Err` and never a panic.
//!
//! This module knows nothing of windows, rules or the database: the daemon
//! stamps the outcome with time and deployment and hands it on.

pub mod access_log;
pub mod exec;
pub mod exposition;
pub mod h1;
pub mod http;
pub mod log;
pub mod prometheus;
pub mod schedule;
pub mod tcp;
pub mod unit;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{Check, Config, Probe};
use crate::model::{Color, Millis, Sample, SampleStatus};

/// What one run of a probe saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: SampleStatus,
    pub latency_ms: Option<f64>,
    pub detail: String,
    /// Real-traffic counts (prometheus, log); `None` for plain checks.
    pub requests: Option<f64>,
    pub errors: Option<f64>,
}

impl Outcome {
    pub fn ok(latency: Duration, detail: impl Into<String>) -> Outcome {
        Outcome {
            status: SampleStatus::Ok,
            latency_ms: Some(ms(latency)),
            detail: detail.into(),
            requests: None,
            errors: None,
        }
    }

    /// Ok, for a check whose time says nothing about the service (unit).
    pub fn ok_without_latency(detail: impl Into<String>) -> Outcome {
        Outcome {
            status: SampleStatus::Ok,
            latency_ms: None,
            detail: detail.into(),
            requests: None,
            errors: None,
        }
    }

    pub fn failed(latency: Option<Duration>, detail: impl Into<String>) -> Outcome {
        Outcome {
            status: SampleStatus::Failed,
            latency_ms: latency.map(ms),
            detail: detail.into(),
            requests: None,
            errors: None,
        }
    }

    /// No answer came: the target could not be reached (a name that does
    /// not resolve, an unreachable network), or the watchdog could not ask
    /// (its own resource error, a secret it cannot read).
    pub fn unreachable(latency: Option<Duration>, detail: impl Into<String>) -> Outcome {
        Outcome {
            status: SampleStatus::Unreachable,
            ..Outcome::failed(latency, detail)
        }
    }

    /// A failure of the given kind ([`io_status`], [`http::classify`]).
    pub fn failure(
        status: SampleStatus,
        latency: Option<Duration>,
        detail: impl Into<String>,
    ) -> Outcome {
        Outcome {
            status,
            ..Outcome::failed(latency, detail)
        }
    }

    pub fn no_data(detail: impl Into<String>) -> Outcome {
        Outcome {
            status: SampleStatus::NoData,
            latency_ms: None,
            detail: detail.into(),
            requests: None,
            errors: None,
        }
    }

    pub fn is_ok(&self) -> bool {
        self.status == SampleStatus::Ok
    }

    pub fn into_sample(
        self,
        at_ms: Millis,
        probe: &str,
        color: Option<Color>,
        deployment: Option<i64>,
    ) -> Sample {
        Sample {
            at_ms,
            probe: probe.to_owned(),
            color,
            deployment,
            ok: self.status == SampleStatus::Ok,
            latency_ms: self.latency_ms,
            status: self.status,
            detail: self.detail,
            requests: self.requests,
            errors: self.errors,
        }
    }
}

/// The most of a detail a sample keeps: details are short, and the full
/// story (a body, a command's output) belongs in logs, not in every row.
pub const DETAIL_CAP: usize = 1024;

fn cap_detail(mut o: Outcome) -> Outcome {
    if o.detail.len() > DETAIL_CAP {
        let mut end = DETAIL_CAP;
        while !o.detail.is_char_boundary(end) {
            end -= 1;
        }
        o.detail.truncate(end);
        o.detail.push_str(" [...]");
    }
    o
}

/// How a failed connection or request is judged: a refused, reset or
/// aborted connection is the target answering "no", and data we reject (a
/// TLS certificate we do not trust) is an answer too (`Failed`); a timeout
/// is `Timeout`; anything else (no route, a name that does not resolve, the
/// watchdog out of file descriptors) got no answer (`Unreachable`).
pub fn io_status(e: &std::io::Error) -> SampleStatus {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused | ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
        | InvalidData => SampleStatus::Failed,
        TimedOut => SampleStatus::Timeout,
        _ => SampleStatus::Unreachable,
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Shared clients and state for running probes. Cheap to clone: every clone
/// shares the HTTP connection pools and the memory of stateful probes (the
/// previous scrape of each prometheus probe, the followed log files), keyed
/// by (probe, color). A reload keeps the `Prober`, so an unchanged probe
/// keeps its memory; a changed one starts over.
#[derive(Clone)]
pub struct Prober {
    http: http::Clients,
    scrapes: Arc<Mutex<prometheus::Memory>>,
    logs: Arc<Mutex<log::Memory>>,
    units: Arc<Mutex<unit::Memory>>,
}

impl Prober {
    pub fn new() -> Prober {
        Prober {
            http: http::Clients::new(),
            scrapes: Arc::default(),
            logs: Arc::default(),
            units: Arc::default(),
        }
    }

    /// After a reload: drop the memory of probes the config no longer has
    /// (their followed files and watches close). Changed probes start over
    /// by themselves; unchanged ones keep their memory.
    pub fn forget_removed(&self, config: &Config) {
        let keep = |name: &str| config.probe(name).is_some();
        self.scrapes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain_probes(&keep);
        self.units
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain_probes(&keep);
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain_probes(&keep);
    }

    /// Run `probe` once against `color` (`None` for a shared probe), bounded
    /// by the probe's timeout. The detail is capped at [`DETAIL_CAP`].
    pub async fn run(&self, config: &Config, probe: &Probe, color: Option<Color>) -> Outcome {
        let url = http_url(config, probe, color);
        self.run_at(config, probe, color, url.as_ref()).await
    }

    /// [`Prober::run`] with the URL of an http probe already resolved
    /// ([`http_url`]): a probe's task resolves it once, not on every run.
    pub async fn run_at(
        &self,
        config: &Config,
        probe: &Probe,
        color: Option<Color>,
        url: Option<&url::Url>,
    ) -> Outcome {
        cap_detail(self.run_uncapped(config, probe, color, url).await)
    }

    async fn run_uncapped(
        &self,
        config: &Config,
        probe: &Probe,
        color: Option<Color>,
        url: Option<&url::Url>,
    ) -> Outcome {
        if let Check::Exec(check) = &probe.check {
            // exec bounds itself: it must kill the process group on timeout,
            // which dropping its future would not do. Boxed: its future
            // holds two 4 KiB read buffers, and inline they would make every
            // probe's run (one allocation per run in flight, `schedule`)
            // that large, an http probe's too (about 10 KiB instead of 1.6).
            return Box::pin(exec::run(check, color, probe.timeout)).await;
        }
        let started = Instant::now();
        let work = async {
            match &probe.check {
                Check::Http(check) => self.http.run(check, url).await,
                Check::Tcp(check) => tcp::run(config, check, color).await,
                Check::Prometheus(check) => {
                    prometheus::run(&self.http, &self.scrapes, config, &probe.name, check, color)
                        .await
                }
                Check::Log(check) => log::run(&self.logs, &probe.name, check, color).await,
                Check::Unit(check) => unit::run(&self.units, &probe.name, check, color).await,
                // Followed, not run: `access_log::follow` sends its samples.
                Check::AccessLog(_) => {
                    Outcome::no_data("an access log is followed, not run on an interval")
                }
                // Handled above; never reached, but a sample rather than a panic.
                Check::Exec(_) => Outcome::failed(None, "exec probe scheduled wrongly"),
            }
        };
        match tokio::time::timeout(probe.timeout, work).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome {
                status: SampleStatus::Timeout,
                // For prometheus and log probes the time spent is not the
                // service's latency.
                latency_ms: matches!(probe.check, Check::Http(_) | Check::Tcp(_))
                    .then(|| ms(started.elapsed())),
                detail: format!(
                    "no answer within {}",
                    humantime::format_duration(probe.timeout)
                ),
                requests: None,
                errors: None,
            },
        }
    }
}

impl Default for Prober {
    fn default() -> Self {
        Prober::new()
    }
}

/// The URL an http probe asks on `color` (`None` for other kinds, or when
/// the color has no `base_url`). Parsed once per probe task: parsing (IDNA
/// included) showed in the per-run profile.
pub fn http_url(config: &Config, probe: &Probe, color: Option<Color>) -> Option<url::Url> {
    match &probe.check {
        Check::Http(check) => config.endpoint_url(&check.endpoint, color),
        _ => None,
    }
}

/// What a probe run against `color` tries to reach, in words for an alert:
/// a URL (without any password), an address, a command, a file or unit.
pub fn target(config: &Config, probe: &Probe, color: Option<Color>) -> String {
    let vars = [("color", color.map(Color::as_str).unwrap_or(""))];
    let url = |endpoint| match config.endpoint_url(endpoint, color) {
        Some(mut url) => {
            let _ = url.set_password(None);
            url.to_string()
        }
        None => "no URL".to_owned(),
    };
    match &probe.check {
        Check::Http(c) => url(&c.endpoint),
        Check::Prometheus(c) => url(&c.endpoint),
        Check::Tcp(c) => match (&c.address, color) {
            (Some(a), _) => crate::config::render(a, &vars),
            (None, Some(c)) => config
                .colors
                .get(c)
                .base_url
                .as_ref()
                .map(|u| {
                    format!(
                        "{}:{}",
                        u.host_str().unwrap_or(""),
                        u.port_or_known_default().unwrap_or(0)
                    )
                })
                .unwrap_or_else(|| "no address".to_owned()),
            (None, None) => "no address".to_owned(),
        },
        Check::Exec(c) => c.command.render(&vars).join(" "),
        Check::Log(c) => match &c.source {
            crate::config::LogSource::File(f) => crate::config::render(f, &vars),
            crate::config::LogSource::Unit(u) => crate::config::render(u, &vars),
        },
        Check::AccessLog(c) => crate::config::render(&c.file, &vars),
        Check::Unit(c) => match (&c.unit, &c.cgroup) {
            (Some(u), _) => crate::config::render(u, &vars),
            (None, Some(g)) => crate::config::render(g, &vars),
            (None, None) => "no unit".to_owned(),
        },
    }
}

/// Logs when a probe starts failing on a color and when it answers again,
/// with the `rollbackd.probe` and `rollbackd.color` fields (journald:
/// `ROLLBACKD_PROBE`, `ROLLBACKD_COLOR`). One line per change, not per
/// sample; "no data" changes nothing.
#[derive(Debug, Default)]
pub struct Transitions {
    last_ok: std::collections::HashMap<(String, Option<Color>), bool>,
}

impl Transitions {
    pub fn note(&mut self, sample: &Sample) {
        if sample.status == SampleStatus::NoData {
            return;
        }
        let key = (sample.probe.clone(), sample.color);
        let before = self.last_ok.insert(key, sample.ok);
        let color = sample.color.map(Color::as_str).unwrap_or("shared");
        match (before, sample.ok) {
            (Some(true) | None, false) => tracing::warn!(
                rollbackd.probe = sample.probe.as_str(),
                rollbackd.color = color,
                "probe {} failing on {color}: {}",
                sample.probe,
                sample.detail
            ),
            (Some(false), true) => tracing::info!(
                rollbackd.probe = sample.probe.as_str(),
                rollbackd.color = color,
                "probe {} answers again on {color}",
                sample.probe
            ),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every run in flight is one allocation of `run_at`'s future
    /// (`schedule`): 100 http probes on both colors hold 200 at once. It
    /// stays small because exec's run (two 4 KiB read buffers) is boxed;
    /// inline, it made every probe's run about 10 KiB, and 1000 probes a
    /// second 5 MiB more resident (docs/benchmarks.md).
    #[test]
    fn a_runs_future_is_small_whatever_kinds_of_probe_exist() {
        // The future is one type whatever the probe's kind: one probe
        // measures it.
        let config = Config::parse(
            std::path::Path::new("/tmp/t.toml"),
            crate::config::TEST_CONFIG,
        )
        .unwrap();
        let prober = Prober::new();
        for probe in &config.probes {
            let run = prober.run_at(&config, probe, Some(Color::Blue), None);
            let size = std::mem::size_of_val(&run);
            assert!(size < 4096, "{}: {size} bytes", probe.name);
        }
    }

    #[test]
    fn refused_and_reset_connections_answer_the_rest_does_not() {
        use std::io::Error;
        let status = |errno| io_status(&Error::from_raw_os_error(errno));
        // ECONNREFUSED, ECONNRESET, ECONNABORTED: the target said no.
        for errno in [111, 104, 103] {
            assert_eq!(status(errno), SampleStatus::Failed, "errno {errno}");
        }
        assert_eq!(status(110), SampleStatus::Timeout, "ETIMEDOUT");
        let bad_certificate =
            Error::new(std::io::ErrorKind::InvalidData, "invalid peer certificate");
        assert_eq!(io_status(&bad_certificate), SampleStatus::Failed);
        // ENETUNREACH, EHOSTUNREACH, EMFILE (our own), ENFILE: no answer.
        for errno in [101, 113, 24, 23] {
            assert_eq!(status(errno), SampleStatus::Unreachable, "errno {errno}");
        }
        assert!(SampleStatus::Failed.answered() && SampleStatus::Ok.answered());
        for s in [
            SampleStatus::Timeout,
            SampleStatus::Unreachable,
            SampleStatus::NoData,
        ] {
            assert!(!s.answered(), "{s:?}");
            assert_eq!(s.as_str().parse::<SampleStatus>(), Ok(s));
        }
    }
}
