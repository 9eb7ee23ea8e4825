//! Signal arithmetic by rescanning a window's points. Pure functions.
//!
//! The engine does not call these on its hot path: it keeps running totals
//! (`window.rs`) and reads signals from them in O(1). These are the plain
//! definitions, kept as the reference the incremental windows are tested
//! against (and for callers holding a one-off list of points).

/// One sample as the matrix keeps it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub at_ms: i64,
    pub ok: bool,
    pub latency_ms: Option<f64>,
    /// Requests and errors this point stands for; `None` = no data.
    pub counts: Option<(f64, f64)>,
}

/// What a signal computation found: the value, and how many samples it
/// rests on (for `min_samples`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    pub value: Option<f64>,
    pub n: u64,
}

/// Errors over requests, in percent. No requests at all is no value.
pub fn error_rate<'a>(points: impl Iterator<Item = &'a Point>) -> Reading {
    let (mut n, mut requests, mut errors) = (0u64, 0.0, 0.0);
    for (r, e) in points.filter_map(|p| p.counts) {
        n += 1;
        requests += r;
        errors += e;
    }
    let value = (requests > 0.0).then(|| (errors / requests * 100.0).min(100.0));
    Reading { value, n }
}

pub fn latency_avg<'a>(points: impl Iterator<Item = &'a Point>) -> Reading {
    let (mut n, mut sum) = (0u64, 0.0);
    for l in points.filter_map(|p| p.latency_ms) {
        n += 1;
        sum += l;
    }
    Reading {
        value: (n > 0).then(|| sum / n as f64),
        n,
    }
}

/// Nearest-rank 95th percentile.
pub fn latency_p95<'a>(points: impl Iterator<Item = &'a Point>) -> Reading {
    let mut all: Vec<f64> = points.filter_map(|p| p.latency_ms).collect();
    Reading {
        n: all.len() as u64,
        value: crate::model::p95(&mut all),
    }
}

/// In `degradation`, a latency baseline counts as at least this: on a
/// service answering in 2 ms, a loaded host adds 1 ms (+50%) out of
/// nothing, and the default High rule (`degradation > 50%`) would roll
/// back a healthy release. With the floor, such a service must be 10 ms
/// slower to reach +50%; a baseline above the floor is unchanged.
pub const LATENCY_FLOOR_MS: f64 = 20.0;

/// Percent by which `current` is slower than `baseline` (negative =
/// faster), of the baseline counted as at least [`LATENCY_FLOOR_MS`].
pub fn degradation(current: f64, baseline: f64) -> Option<f64> {
    (baseline > 0.0).then(|| (current - baseline) / baseline.max(LATENCY_FLOOR_MS) * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(ok: bool, latency: f64) -> Point {
        Point {
            at_ms: 0,
            ok,
            latency_ms: Some(latency),
            counts: Some((1.0, if ok { 0.0 } else { 1.0 })),
        }
    }

    #[test]
    fn error_rate_weighs_counts_and_skips_no_data() {
        let mut pts = vec![p(true, 1.0), p(false, 1.0)];
        pts.push(Point {
            at_ms: 0,
            ok: true,
            latency_ms: None,
            counts: Some((98.0, 0.0)),
        });
        pts.push(Point {
            at_ms: 0,
            ok: false,
            latency_ms: None,
            counts: None,
        });
        let r = error_rate(pts.iter());
        assert_eq!(r.n, 3);
        assert!((r.value.unwrap() - 1.0).abs() < 1e-9);
        assert_eq!(error_rate([].iter()).value, None);
    }

    #[test]
    fn p95_is_nearest_rank() {
        let pts: Vec<Point> = (1..=100).map(|i| p(true, i as f64)).collect();
        assert_eq!(latency_p95(pts.iter()).value, Some(95.0));
        assert_eq!(latency_avg(pts.iter()).value, Some(50.5));
        assert_eq!(degradation(150.0, 100.0), Some(50.0));
        assert_eq!(degradation(3.0, 2.0), Some(5.0), "of the 20 ms floor");
        assert_eq!(degradation(1.0, 2.0), Some(-5.0));
    }

    #[test]
    fn the_oracle_average_agrees_with_the_one_latency_mean() {
        let pts: Vec<Point> = [10.0, 20.0, 60.0]
            .into_iter()
            .map(|l| Point {
                at_ms: 0,
                ok: true,
                latency_ms: Some(l),
                counts: None,
            })
            .collect();
        let mean: crate::model::LatencyMean = [10.0, 20.0, 60.0].into_iter().collect();
        assert_eq!(latency_avg(pts.iter()).value, mean.ms());
    }
}
