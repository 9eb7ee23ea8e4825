//! `prometheus`: scrape the app's metrics endpoint and turn counters into
//! per-interval traffic: how many requests, how many errors, and the latency
//! histogram's average and estimated p95 over the time since the previous
//! scrape of the same (probe, color).
//!
//! It matches series against the selectors `config` parsed once at load
//! (`config::Selector`, held in the probe's `PrometheusCheck`), and owns
//! the memory of the previous scrape ([`Memory`], shared through the
//! cloned `Prober`) and the delta arithmetic: counter resets (a value that went down, as after
//! a restart) count the new value as the increase, and a series that appears
//! counts from zero. It does not judge error rates: the sample carries the
//! counts and the matrix weighs them.
//!
//! Outcomes: a scrape that fails (no answer, bad status, unparsable body) is
//! a failed sample with no counts; the first scrape and an interval with no
//! requests are "no data"; otherwise the sample is ok when the interval had
//! no errors and failed when it had some, with `requests`/`errors` set and
//! `latency_ms` the histogram's average. The p95 estimate goes in the detail.
//! A failed scrape has no latency: how long the metrics page took says
//! nothing about the app's requests.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::Outcome;
use super::exposition::{self, Sample as Scraped};
use super::http::{self, Clients};
use crate::config::{Config, PrometheusCheck, Selector};
use crate::model::{Color, SampleStatus};

/// How much of a metrics page is read. Larger pages fail the sample rather
/// than being parsed half.
pub const SCRAPE_CAP: usize = 8 * 1024 * 1024;
/// How many series a metrics page may hold. More fails the sample, naming
/// the cap: a page of short lines within [`SCRAPE_CAP`] could hold a
/// hundred thousand, each parsed and kept.
pub const SERIES_CAP: usize = 20_000;

// ---------------------------------------------------------------------------
// What one scrape holds for a probe.

/// Cumulative counts of one histogram series.
#[derive(Debug, Clone, Default, PartialEq)]
struct Hist {
    /// (upper bound, cumulative count), ascending by bound.
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

#[derive(Debug, Clone, Default)]
struct Snapshot {
    requests: HashMap<String, f64>,
    errors: HashMap<String, f64>,
    latency: HashMap<String, Hist>,
}

fn series_key(name: &str, labels: &HashMap<String, String>, skip: &str) -> String {
    let mut pairs: Vec<_> = labels.iter().filter(|(k, _)| k.as_str() != skip).collect();
    pairs.sort();
    let mut key = name.to_owned();
    for (k, v) in pairs {
        key.push_str(&format!("|{k}={v}"));
    }
    key
}

fn counters(scrape: &[Scraped], sel: &Selector) -> HashMap<String, f64> {
    scrape
        .iter()
        .filter(|s| s.metric == sel.name && sel.matches_labels(&s.labels))
        .map(|s| (series_key(&s.metric, &s.labels, ""), s.value))
        .collect()
}

fn histograms(scrape: &[Scraped], sel: &Selector) -> HashMap<String, Hist> {
    let mut out: HashMap<String, Hist> = HashMap::new();
    let bucket_name = format!("{}_bucket", sel.name);
    let sum_name = format!("{}_sum", sel.name);
    let count_name = format!("{}_count", sel.name);
    for s in scrape {
        let v = &s.value;
        if s.metric != bucket_name && s.metric != sum_name && s.metric != count_name {
            continue;
        }
        let mut without_le = s.labels.clone();
        let le = without_le.remove("le");
        if !sel.matches_labels(&without_le) {
            continue;
        }
        let key = || series_key(&sel.name, &without_le, "");
        if s.metric == bucket_name {
            if let Some(bound) = le.and_then(|l| parse_bound(&l)) {
                out.entry(key()).or_default().buckets.push((bound, *v));
            }
        } else if s.metric == sum_name {
            out.entry(key()).or_default().sum = *v;
        } else {
            out.entry(key()).or_default().count = *v;
        }
    }
    for h in out.values_mut() {
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        if h.count == 0.0 {
            // No `_count` line: the +Inf bucket holds the same number.
            h.count = h.buckets.last().map(|b| b.1).unwrap_or(0.0);
        }
    }
    out
}

fn parse_bound(text: &str) -> Option<f64> {
    match text.trim() {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        t => t.parse().ok(),
    }
}

/// The first selected series whose value is NaN or infinite, named.
fn non_finite(s: &Snapshot) -> Option<String> {
    let name = |key: &str| key.replace('|', " ");
    for (key, v) in s.requests.iter().chain(&s.errors) {
        if !v.is_finite() {
            return Some(format!("counter {} is {v}, not a finite number", name(key)));
        }
    }
    for (key, h) in &s.latency {
        let values = [h.sum, h.count]
            .into_iter()
            .chain(h.buckets.iter().map(|b| b.1));
        if let Some(v) = values.into_iter().find(|v| !v.is_finite()) {
            return Some(format!(
                "histogram {} holds {v}, not a finite number",
                name(key)
            ));
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Deltas.

/// The increase of a set of counter series since `prev`. A series that went
/// down was reset (the process restarted): its current value is the
/// increase. A series not seen before counts from zero.
fn counter_increase(prev: &HashMap<String, f64>, cur: &HashMap<String, f64>) -> (f64, bool) {
    let mut total = 0.0;
    let mut reset = false;
    for (key, &v) in cur {
        match prev.get(key) {
            Some(&p) if v >= p => total += v - p,
            Some(_) => {
                reset = true;
                total += v;
            }
            None => total += v,
        }
    }
    (total, reset)
}

/// The histogram observed between two scrapes, summed over its series.
fn histogram_increase(prev: &HashMap<String, Hist>, cur: &HashMap<String, Hist>) -> (Hist, bool) {
    let mut merged: Vec<(f64, f64)> = Vec::new();
    let (mut sum, mut count, mut reset) = (0.0, 0.0, false);
    for (key, h) in cur {
        let delta = match prev.get(key) {
            Some(p)
                if h.count >= p.count
                    && p.buckets.len() == h.buckets.len()
                    && p.buckets
                        .iter()
                        .zip(&h.buckets)
                        .all(|(a, b)| a.0 == b.0 && b.1 >= a.1) =>
            {
                Hist {
                    buckets: h
                        .buckets
                        .iter()
                        .zip(&p.buckets)
                        .map(|(c, p)| (c.0, c.1 - p.1))
                        .collect(),
                    sum: (h.sum - p.sum).max(0.0),
                    count: h.count - p.count,
                }
            }
            Some(_) => {
                reset = true;
                h.clone()
            }
            None => h.clone(),
        };
        sum += delta.sum;
        count += delta.count;
        for (bound, n) in delta.buckets {
            match merged.iter_mut().find(|(b, _)| *b == bound) {
                Some(slot) => slot.1 += n,
                None => merged.push((bound, n)),
            }
        }
    }
    merged.sort_by(|a, b| a.0.total_cmp(&b.0));
    (
        Hist {
            buckets: merged,
            sum,
            count,
        },
        reset,
    )
}

/// Estimate a quantile from cumulative buckets the way Prometheus'
/// `histogram_quantile` does: find the bucket holding the rank and
/// interpolate linearly inside it. A rank in the +Inf bucket gives the
/// largest finite bound.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for (i, &(bound, n)) in buckets.iter().enumerate() {
        if n >= rank {
            if bound.is_infinite() {
                return if i == 0 { None } else { Some(prev.0) };
            }
            let lower = if i == 0 { 0.0_f64.min(bound) } else { prev.0 };
            let in_bucket = n - prev.1;
            if in_bucket <= 0.0 {
                return Some(bound);
            }
            return Some(lower + (bound - lower) * (rank - prev.1) / in_bucket);
        }
        prev = (bound, n);
    }
    Some(prev.0)
}

/// Histogram values are in seconds unless the name says otherwise.
fn to_millis(name: &str) -> f64 {
    if name.ends_with("_milliseconds") || name.ends_with("_ms") {
        1.0
    } else {
        1000.0
    }
}

// ---------------------------------------------------------------------------
// Memory between scrapes.

struct Previous {
    /// The selectors it was taken with: a reload that changes them starts over.
    fingerprint: String,
    snapshot: Snapshot,
    at: Instant,
}

/// The previous scrape of each (probe, color). Shared by every clone of the
/// `Prober`; a std mutex because it is held only to swap a snapshot, never
/// across an await.
#[derive(Default)]
pub struct Memory {
    previous: HashMap<(String, Option<Color>), Previous>,
}

impl Memory {
    /// Forget the scrapes of probes not in `keep` (a reload removed them).
    pub fn retain_probes(&mut self, keep: &dyn Fn(&str) -> bool) {
        self.previous.retain(|(probe, _), _| keep(probe));
    }
}

/// What the interval between two scrapes held.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    pub requests: f64,
    pub errors: f64,
    pub latency_avg_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub reset: bool,
    pub seconds: f64,
}

fn interval(check: &PrometheusCheck, prev: &Snapshot, cur: &Snapshot, seconds: f64) -> Interval {
    let (requests, r1) = counter_increase(&prev.requests, &cur.requests);
    let (errors, r2) = counter_increase(&prev.errors, &cur.errors);
    let (hist, r3) = histogram_increase(&prev.latency, &cur.latency);
    let scale = check
        .latency
        .as_ref()
        .map(|s| to_millis(&s.name))
        .unwrap_or(1000.0);
    let (avg, p95) = if check.latency.is_some() && hist.count > 0.0 {
        (
            Some(hist.sum / hist.count * scale),
            quantile(0.95, &hist.buckets).map(|v| v * scale),
        )
    } else {
        (None, None)
    };
    Interval {
        requests,
        errors,
        latency_avg_ms: avg,
        latency_p95_ms: p95,
        reset: r1 || r2 || r3,
        seconds,
    }
}

fn outcome(i: &Interval, scrape_ms: f64) -> Outcome {
    let mut detail = if i.requests <= 0.0 {
        format!("no requests in the last {:.0}s", i.seconds)
    } else {
        format!(
            "{:.0} requests, {:.0} errors ({:.2}%) in {:.0}s",
            i.requests,
            i.errors,
            (i.errors / i.requests * 100.0).min(100.0),
            i.seconds
        )
    };
    if let Some(avg) = i.latency_avg_ms {
        detail.push_str(&format!("; latency avg {avg:.1}ms"));
        if let Some(p95) = i.latency_p95_ms {
            detail.push_str(&format!(" p95~{p95:.1}ms"));
        }
    }
    if i.reset {
        detail.push_str("; counter reset");
    }
    detail.push_str(&format!("; scrape {scrape_ms:.0}ms"));
    if i.requests <= 0.0 {
        // No traffic is not an error rate of 0: it is no data.
        return Outcome::no_data(detail);
    }
    Outcome {
        status: if i.errors > 0.0 {
            SampleStatus::Failed
        } else {
            SampleStatus::Ok
        },
        latency_ms: i.latency_avg_ms,
        detail,
        requests: Some(i.requests),
        errors: Some(i.errors),
    }
}

pub async fn run(
    clients: &Clients,
    memory: &Mutex<Memory>,
    config: &Config,
    probe: &str,
    check: &PrometheusCheck,
    color: Option<Color>,
) -> Outcome {
    let Some(url) = config.endpoint_url(&check.endpoint, color) else {
        return Outcome::unreachable(None, "no URL for this color (missing base_url)");
    };
    let mut request = clients.plain().get(url);
    for (name, value) in &check.headers {
        match value.expose() {
            Ok(v) => request = request.header(name.as_str(), v),
            Err(problem) => {
                return Outcome::unreachable(None, format!("header {name}: {problem}"));
            }
        }
    }
    let started = Instant::now();
    let mut response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            return Outcome::failure(
                http::classify(&e),
                None,
                format!("scrape failed: {}", http::describe_error(&e)),
            );
        }
    };
    let code = response.status();
    let body = match http::read_capped(&mut response, SCRAPE_CAP).await {
        Ok((_, true)) => {
            return Outcome::failed(
                None,
                format!(
                    "scrape failed: the metrics page is larger than {} MiB",
                    SCRAPE_CAP >> 20
                ),
            );
        }
        Ok((body, false)) => body,
        Err(e) => {
            return Outcome::failed(None, format!("scrape failed: {}", http::describe_error(&e)));
        }
    };
    let scrape_ms = super::ms(started.elapsed());
    if !code.is_success() {
        return Outcome::failed(None, format!("scrape failed: HTTP {}", code.as_u16()));
    }
    let text = String::from_utf8_lossy(&body);
    let scrape = match exposition::parse_capped(&text, SERIES_CAP) {
        Ok(s) => s,
        Err(e) => return Outcome::failed(None, format!("scrape failed: unusable metrics: {e}")),
    };
    let snapshot = Snapshot {
        requests: counters(&scrape, &check.requests),
        errors: counters(&scrape, &check.errors),
        latency: check
            .latency
            .as_ref()
            .map(|l| histograms(&scrape, l))
            .unwrap_or_default(),
    };
    if snapshot.requests.is_empty() && scrape.is_empty() {
        return Outcome::failed(None, "scrape failed: the page holds no metrics");
    }
    drop(scrape);
    if let Some(bad) = non_finite(&snapshot) {
        // A NaN compares false with everything: it would pass as "no
        // errors". Not a number is not an answer.
        return Outcome::failed(None, format!("scrape failed: {bad}"));
    }
    let fingerprint = format!(
        "{}\n{}\n{:?}",
        check.requests,
        check.errors,
        check.latency.as_ref().map(Selector::as_str)
    );
    let now = Instant::now();
    let previous = {
        // Poisoning would mean a panic while swapping a map entry; the map
        // is still usable, so take it back rather than stop probing.
        let mut memory = memory.lock().unwrap_or_else(|p| p.into_inner());
        memory.previous.insert(
            (probe.to_owned(), color),
            Previous {
                fingerprint: fingerprint.clone(),
                snapshot: snapshot.clone(),
                at: now,
            },
        )
    };
    let Some(previous) = previous.filter(|p| p.fingerprint == fingerprint) else {
        return Outcome::no_data(format!(
            "first scrape: {} series of {} recorded; deltas start with the next one",
            snapshot.requests.len(),
            check.requests.name
        ));
    };
    let seconds = now.duration_since(previous.at).as_secs_f64();
    let i = interval(check, &previous.snapshot, &snapshot, seconds);
    outcome(&i, scrape_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<Scraped> {
        exposition::parse(text).unwrap()
    }

    fn check(latency: Option<&str>) -> PrometheusCheck {
        PrometheusCheck {
            endpoint: crate::config::Endpoint::Relative("/metrics".into()),
            headers: vec![],
            requests: Selector::parse("http_requests_total").unwrap(),
            errors: Selector::parse(r#"http_requests_total{code=~"5.."}"#).unwrap(),
            latency: latency.map(|l| Selector::parse(l).unwrap()),
        }
    }

    fn snap(text: &str, c: &PrometheusCheck) -> Snapshot {
        let s = parse(text);
        Snapshot {
            requests: counters(&s, &c.requests),
            errors: counters(&s, &c.errors),
            latency: c
                .latency
                .as_ref()
                .map(|l| histograms(&s, l))
                .unwrap_or_default(),
        }
    }

    #[test]
    fn counters_give_per_interval_deltas_and_survive_resets() {
        let c = check(None);
        let a = snap(
            r#"
# TYPE http_requests_total counter
http_requests_total{code="200"} 100
http_requests_total{code="503"} 10
"#,
            &c,
        );
        let b = snap(
            r#"
http_requests_total{code="200"} 150
http_requests_total{code="503"} 20
http_requests_total{code="500"} 5
"#,
            &c,
        );
        let i = interval(&c, &a, &b, 5.0);
        assert_eq!((i.requests, i.errors, i.reset), (65.0, 15.0, false));

        // The app restarted: every counter starts again from zero.
        let restarted = snap(
            r#"
http_requests_total{code="200"} 7
http_requests_total{code="503"} 3
"#,
            &c,
        );
        let i = interval(&c, &b, &restarted, 5.0);
        assert_eq!((i.requests, i.errors, i.reset), (10.0, 3.0, true));
    }

    #[test]
    fn an_interval_without_requests_is_no_data_not_zero_errors() {
        let c = check(None);
        let a = snap("http_requests_total{code=\"200\"} 100\n", &c);
        let i = interval(&c, &a, &a.clone(), 5.0);
        let o = outcome(&i, 1.0);
        assert_eq!(o.status, SampleStatus::NoData);
        assert_eq!((o.requests, o.errors), (None, None));
        assert!(o.detail.contains("no requests"), "{}", o.detail);
    }

    #[test]
    fn histogram_gives_average_and_p95_per_interval() {
        let c = check(Some("http_request_duration_seconds"));
        let before = r#"
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.1"} 0
http_request_duration_seconds_bucket{le="0.5"} 0
http_request_duration_seconds_bucket{le="1"} 0
http_request_duration_seconds_bucket{le="+Inf"} 0
http_request_duration_seconds_sum 0
http_request_duration_seconds_count 0
http_requests_total{code="200"} 0
"#;
        // 100 requests: 90 under 100 ms, 10 between 0.5 s and 1 s.
        let after = r#"
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.1"} 90
http_request_duration_seconds_bucket{le="0.5"} 90
http_request_duration_seconds_bucket{le="1"} 100
http_request_duration_seconds_bucket{le="+Inf"} 100
http_request_duration_seconds_sum 11.5
http_request_duration_seconds_count 100
http_requests_total{code="200"} 100
"#;
        let i = interval(&c, &snap(before, &c), &snap(after, &c), 5.0);
        assert!((i.latency_avg_ms.unwrap() - 115.0).abs() < 1e-9);
        // rank 95 lies halfway through the (0.5, 1] bucket.
        assert!((i.latency_p95_ms.unwrap() - 750.0).abs() < 1e-9, "{i:?}");
        let o = outcome(&i, 1.0);
        assert!(o.is_ok());
        assert_eq!(o.latency_ms, Some(115.0));
        assert!(o.detail.contains("p95~750.0ms"), "{}", o.detail);

        // Untyped buckets (no TYPE line) are understood the same way.
        let untyped = after.replace("# TYPE http_request_duration_seconds histogram\n", "");
        let i2 = interval(&c, &snap(before, &c), &snap(&untyped, &c), 5.0);
        assert_eq!(i2.latency_p95_ms, i.latency_p95_ms);
    }

    #[test]
    fn quantile_in_the_inf_bucket_is_the_largest_finite_bound() {
        assert_eq!(
            quantile(0.95, &[(0.1, 1.0), (f64::INFINITY, 100.0)]),
            Some(0.1)
        );
        assert_eq!(quantile(0.95, &[(0.1, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(
            quantile(0.5, &[(1.0, 10.0), (f64::INFINITY, 10.0)]),
            Some(0.5)
        );
    }
}
