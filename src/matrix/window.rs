//! Incremental sliding windows: running totals that a sample enters once
//! (on `observe`) and leaves once (when it falls out of the window), so an
//! evaluation never rescans the samples.
//!
//! Owns the arithmetic of adding and removing one point; it does not know
//! rules, colors or time (the engine decides which points enter and when
//! they expire). Sums are kept in integers (requests and errors in
//! thousandths, latency in microseconds) so that a value added and later
//! removed leaves exactly nothing behind: floating-point running sums
//! drift over days of adds and subtracts.
//!
//! Costs, with `n` points in a window and `k` distinct latencies among its
//! slowest 5%: add and remove are O(1), O(log n) when the window keeps a
//! p95; `error_rate` and `latency_avg` are O(1); `latency_p95` is O(k).

use std::collections::BTreeMap;

use super::signal::Point;
use crate::model::LatencyMean;

/// Fixed-point scale of request and error counts.
const COUNT_SCALE: f64 = 1000.0;

fn count_units(v: f64) -> i64 {
    (v.max(0.0) * COUNT_SCALE).round() as i64
}

fn latency_units(ms: f64) -> Option<i64> {
    ms.is_finite()
        .then(|| (ms.max(0.0) * 1000.0).round() as i64)
}

/// Running totals over the points of a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Points with request/error counts (every point but "no data").
    pub n_counts: u64,
    requests: i64,
    errors: i64,
    /// Points with a latency.
    pub n_latency: u64,
    latency_us: i64,
}

impl Totals {
    pub fn add(&mut self, p: &Point) {
        if let Some((r, e)) = p.counts {
            self.n_counts += 1;
            self.requests += count_units(r);
            self.errors += count_units(e);
        }
        if let Some(us) = p.latency_ms.and_then(latency_units) {
            self.n_latency += 1;
            self.latency_us += us;
        }
    }

    pub fn remove(&mut self, p: &Point) {
        if let Some((r, e)) = p.counts {
            self.n_counts -= 1;
            self.requests -= count_units(r);
            self.errors -= count_units(e);
        }
        if let Some(us) = p.latency_ms.and_then(latency_units) {
            self.n_latency -= 1;
            self.latency_us -= us;
        }
    }

    pub fn requests(&self) -> f64 {
        self.requests as f64 / COUNT_SCALE
    }

    pub fn errors(&self) -> f64 {
        self.errors as f64 / COUNT_SCALE
    }

    /// Errors over requests, in percent; no requests is no value.
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| (self.errors as f64 / self.requests as f64 * 100.0).min(100.0))
    }

    /// The sum of latencies, in milliseconds.
    pub fn latency_sum_ms(&self) -> f64 {
        self.latency_us as f64 / 1000.0
    }

    /// The window's latencies as the one mean ([`LatencyMean`]).
    pub fn latency_mean(&self) -> LatencyMean {
        LatencyMean::from_sum(self.latency_sum_ms(), self.n_latency)
    }

    pub fn latency_avg(&self) -> Option<f64> {
        self.latency_mean().ms()
    }
}

/// A sorted multiset of latencies (microseconds -> how many), for the
/// nearest-rank 95th percentile.
#[derive(Clone, Debug, Default)]
pub struct Percentile {
    counts: BTreeMap<i64, u32>,
    n: u64,
}

impl Percentile {
    pub fn add(&mut self, p: &Point) {
        if let Some(us) = p.latency_ms.and_then(latency_units) {
            *self.counts.entry(us).or_default() += 1;
            self.n += 1;
        }
    }

    pub fn remove(&mut self, p: &Point) {
        if let Some(us) = p.latency_ms.and_then(latency_units) {
            if let Some(c) = self.counts.get_mut(&us) {
                *c -= 1;
                if *c == 0 {
                    self.counts.remove(&us);
                }
                self.n -= 1;
            }
        }
    }

    /// Nearest-rank p95 in milliseconds: the value at rank ceil(0.95 n),
    /// found by walking down from the slowest.
    pub fn p95(&self) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((0.95 * self.n as f64).ceil() as u64).clamp(1, self.n);
        // Ranks above ours: skip that many from the top.
        let above = self.n - rank;
        let mut seen = 0u64;
        for (&us, &c) in self.counts.iter().rev() {
            seen += u64::from(c);
            if seen > above {
                return Some(us as f64 / 1000.0);
            }
        }
        None
    }
}

/// One window's aggregate over several probes: the totals, each probe's own
/// totals (for `health_failures` and `degradation`), and where each probe's
/// expiry has got to in its series.
#[derive(Clone, Debug)]
pub struct Aggregate {
    pub total: Totals,
    pub per_probe: Vec<Totals>,
    /// Per probe: the sequence number of its oldest point still counted.
    pub oldest: Vec<u64>,
    pub p95: Option<Percentile>,
}

impl Aggregate {
    pub fn new(probes: usize, with_p95: bool) -> Aggregate {
        Aggregate {
            total: Totals::default(),
            per_probe: vec![Totals::default(); probes],
            oldest: vec![0; probes],
            p95: with_p95.then(Percentile::default),
        }
    }

    pub fn add(&mut self, pos: usize, p: &Point) {
        self.total.add(p);
        self.per_probe[pos].add(p);
        if let Some(q) = &mut self.p95 {
            q.add(p);
        }
    }

    /// Remove the oldest counted point of probe `pos` (which is `p`).
    pub fn expire(&mut self, pos: usize, p: &Point) {
        self.total.remove(p);
        self.per_probe[pos].remove(p);
        if let Some(q) = &mut self.p95 {
            q.remove(p);
        }
        self.oldest[pos] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(latency: f64, requests: f64, errors: f64) -> Point {
        Point {
            at_ms: 0,
            ok: errors == 0.0,
            latency_ms: Some(latency),
            counts: Some((requests, errors)),
        }
    }

    #[test]
    fn adding_then_removing_leaves_exactly_nothing() {
        let mut t = Totals::default();
        let pts: Vec<Point> = (0..10_000)
            .map(|i| p(0.1 + i as f64 * 0.37, 3.3, (i % 7) as f64 * 0.1))
            .collect();
        for x in &pts {
            t.add(x);
        }
        for x in &pts {
            t.remove(x);
        }
        assert_eq!(t, Totals::default());
        assert_eq!(t.error_rate(), None);
        assert_eq!(t.latency_avg(), None);
    }

    #[test]
    fn p95_walks_from_the_top_with_duplicates() {
        let mut q = Percentile::default();
        assert_eq!(q.p95(), None);
        // 1..=100 ms: nearest rank 95 is 95 ms.
        let pts: Vec<Point> = (1..=100).map(|i| p(i as f64, 1.0, 0.0)).collect();
        for x in &pts {
            q.add(x);
        }
        assert_eq!(q.p95(), Some(95.0));
        // Twenty more at 500 ms: n = 120, rank 114 lands among them.
        for _ in 0..20 {
            q.add(&p(500.0, 1.0, 0.0));
        }
        assert_eq!(q.p95(), Some(500.0));
        for x in &pts[..50] {
            q.remove(x);
        }
        // 51..=100 and twenty 500s: n = 70, rank 67 -> still 500.
        assert_eq!(q.p95(), Some(500.0));
        let mut one = Percentile::default();
        one.add(&p(7.0, 1.0, 0.0));
        assert_eq!(one.p95(), Some(7.0));
    }
}
