//! Independent noise, generated and priced: how often would a rule fire on a
//! healthy service whose probes fail now and then for no reason?
//!
//! Two halves that check each other. [`generate`] makes the samples the
//! daemon's scheduler would take of a healthy service whose probes fail at
//! random with a given rate (seeded, in memory, in time order), including
//! the fast-confirm runs a failure triggers; `replay --synthetic-noise`
//! feeds them to the engine. [`firings_per_year`] is the closed form `check`
//! prints for consecutive-failure rules; a test holds it against the
//! generator and the engine.
//!
//! Pure like the rest of `matrix`: no IO, no clock (the start time and the
//! seed are arguments). A failure is an *answered* one (`Failed`, like an
//! HTTP 503): noise is a service that says "no" now and then, not a
//! watchdog that cannot reach it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::{Config, Scope};
use crate::model::{Color, Millis, Sample, SampleStatus, duration_ms};

// The closed form lives with the rest of a rule's timing, in `config`.
pub use crate::config::{NoiseCadence as Cadence, YEAR_S, firings_per_year};

/// The most a probe's first run is delayed (as `probe::schedule`).
const MAX_OFFSET_MS: Millis = 1000;

/// What to generate.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Probability that a sample fails.
    pub rate: f64,
    pub start_ms: Millis,
    pub period: Duration,
    /// The probes that fail at `rate`; the other configured probes are
    /// generated too, always ok. Empty: all of them.
    pub noisy: Vec<String>,
    pub seed: u64,
}

/// A generated sample's latency: a healthy service's few milliseconds.
fn latency(rng: &mut StdRng) -> f64 {
    5.0 + rng.gen_range(0.0..5.0)
}

/// One (probe, color) series being generated.
struct Series {
    probe: usize,
    color: Option<Color>,
    next_ms: Millis,
    interval_ms: Millis,
    confirm_ms: Option<Millis>,
    noisy: bool,
    /// Confirm runs made in the current burst (0: not in one).
    confirming: u32,
}

/// How many samples [`generate`] will make, about: to refuse what would
/// not fit in memory before making it.
pub fn estimate(config: &Config, period: Duration) -> u64 {
    config
        .probes
        .iter()
        .map(|p| {
            let per_color = (duration_ms(period) / duration_ms(p.interval).max(1)) as u64 + 1;
            match p.scope {
                Scope::PerColor => 2 * per_color,
                Scope::Shared => per_color,
            }
        })
        .sum()
}

/// The samples the daemon would have taken of a healthy service over
/// `spec.period`, in time order: every configured probe on each color (or
/// once, shared), at its interval from a random offset, a failure with
/// probability `spec.rate` (on the noisy probes) followed by fast-confirm
/// runs as the scheduler makes them (up to `confirms`, stopping at the
/// first success; the interval restarts after them).
pub fn generate(config: &Config, spec: &Spec, confirms: u32) -> Vec<Sample> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let end = spec.start_ms + duration_ms(spec.period);
    let mut series = Vec::new();
    for (i, p) in config.probes.iter().enumerate() {
        let colors: &[Option<Color>] = match p.scope {
            Scope::PerColor => &[Some(Color::Blue), Some(Color::Green)],
            Scope::Shared => &[None],
        };
        let interval_ms = duration_ms(p.interval).max(1);
        for &color in colors {
            series.push(Series {
                probe: i,
                color,
                next_ms: spec.start_ms + rng.gen_range(0..=interval_ms.min(MAX_OFFSET_MS)),
                interval_ms,
                confirm_ms: p.confirm_interval.map(|c| duration_ms(c).max(1)),
                noisy: spec.noisy.is_empty() || spec.noisy.contains(&p.name),
                confirming: 0,
            });
        }
    }
    let mut due: BinaryHeap<Reverse<(Millis, usize)>> = series
        .iter()
        .enumerate()
        .map(|(i, s)| Reverse((s.next_ms, i)))
        .collect();
    let mut out = Vec::with_capacity(estimate(config, spec.period).min(1 << 24) as usize);
    while let Some(Reverse((at, i))) = due.pop() {
        if at >= end {
            continue;
        }
        let s = &mut series[i];
        let failed = s.noisy && rng.gen_bool(spec.rate);
        out.push(Sample {
            at_ms: at,
            probe: config.probes[s.probe].name.clone(),
            color: s.color,
            deployment: None,
            ok: !failed,
            latency_ms: Some(latency(&mut rng)),
            status: if failed {
                SampleStatus::Failed
            } else {
                SampleStatus::Ok
            },
            detail: if failed {
                "synthetic noise: HTTP 503".to_owned()
            } else {
                String::new()
            },
            requests: None,
            errors: None,
        });
        // As `probe::schedule::drive`: a failure on a tick starts a burst
        // of up to `confirms` confirm runs at the confirm pace; the burst
        // ends at a success or when they are all made, and the interval
        // restarts from its end.
        let pace = s.confirm_ms.filter(|_| confirms > 0);
        s.next_ms = match (pace, s.confirming) {
            (Some(pace), 0) if failed => {
                s.confirming = 1;
                at + pace
            }
            (Some(pace), made) if made > 0 && failed && made < confirms => {
                s.confirming += 1;
                at + pace
            }
            _ => {
                s.confirming = 0;
                at + s.interval_ms
            }
        };
        due.push(Reverse((s.next_ms, i)));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::matrix::{Engine, State};

    fn config(extra_probe: &str, rules: &str) -> Config {
        let text = format!(
            r#"
[daemon]
state_dir = "/nonexistent"
[service]
name = "svc"
[colors.blue]
base_url = "http://127.0.0.1:1"
[colors.green]
base_url = "http://127.0.0.1:2"
[[probe]]
name = "healthz"
kind = "http"
path = "/healthz"
interval = "1s"
health = true
{extra_probe}
{rules}
[actions]
critical = "alert"
high = "alert"
"#
        );
        Config::parse(Path::new("/test.toml"), &text).unwrap()
    }

    /// Fire counts of one rule on one color over generated noise, with the
    /// engine evaluated as each sample lands.
    fn count_firings(config: &Config, samples: &[Sample]) -> u32 {
        let mut engine = Engine::new(config);
        let mut fired = 0;
        for s in samples {
            engine.observe(s);
            if s.color != Some(Color::Blue) {
                continue;
            }
            for v in engine.evaluate(s.at_ms, Color::Blue) {
                if v.changed && v.state == State::Fired {
                    fired += 1;
                }
            }
        }
        fired
    }

    #[test]
    fn the_formula_gives_the_specs_figures() {
        let one = [Cadence {
            interval: Duration::from_secs(1),
            confirm: Some(Duration::from_millis(200)),
        }];
        // SPEC section 2: 5 in a row at 2% about once in ten years, 3 in a
        // row about once a day.
        let five = firings_per_year(0.02, 5, &one);
        assert!((0.08..0.12).contains(&five), "{five}");
        let three = firings_per_year(0.02, 3, &one) / 365.25;
        assert!((0.5..1.0).contains(&three), "{three} per day");
        // A second health probe makes it practically never.
        let two = firings_per_year(0.02, 3, &[one[0], one[0]]);
        assert!(two < 0.01, "{two}");
    }

    /// The closed form against the generator and the engine, at a noise
    /// level high enough to count firings in a simulated day.
    #[test]
    fn the_formula_agrees_with_a_simulation() {
        for (confirm, needed, rate) in [
            ("", 3, 0.15),
            ("confirm_interval = \"off\"", 3, 0.15),
            ("", 4, 0.25),
        ] {
            let rules = format!(
                "[[rule]]\nseverity = \"critical\"\nwhen = \"health_failures >= {needed}\"\nwindow = \"10m\"\nmin_samples = 1\nclear_after = 1\n"
            );
            let mut c = config("", &rules);
            let probe = &mut c.probes[0];
            if !confirm.is_empty() {
                probe.confirm_interval = None;
            }
            let cadence = Cadence {
                interval: probe.interval,
                confirm: probe.confirm_interval,
            };
            let period = Duration::from_secs(2 * 86400);
            let samples = generate(
                &c,
                &Spec {
                    rate,
                    start_ms: 0,
                    period,
                    noisy: vec![],
                    seed: 7,
                },
                needed - 1,
            );
            // Green stays silent: the formula prices one color's rule, and
            // must not depend on what the other color does.
            let blue: Vec<Sample> = samples
                .into_iter()
                .filter(|s| s.color == Some(Color::Blue))
                .collect();
            let simulated = f64::from(count_firings(&c, &blue));
            let expected =
                firings_per_year(rate, needed, &[cadence]) * period.as_secs_f64() / YEAR_S;
            assert!(
                (simulated / expected - 1.0).abs() < 0.1,
                "{confirm:?} needed {needed} at {rate}: simulated {simulated}, formula {expected}"
            );
        }
    }

    #[test]
    fn the_generator_confirms_like_the_scheduler_and_is_seeded() {
        let c = config("", "");
        let spec = Spec {
            rate: 0.3,
            start_ms: 1_000_000,
            period: Duration::from_secs(600),
            noisy: vec![],
            seed: 42,
        };
        let a = generate(&c, &spec, 4);
        assert_eq!(a, generate(&c, &spec, 4), "same seed, same samples");
        assert!(a.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        let blue: Vec<&Sample> = a.iter().filter(|s| s.color == Some(Color::Blue)).collect();
        for w in blue.windows(2) {
            let gap = w[1].at_ms - w[0].at_ms;
            // After a failure the next run comes at the confirm pace (or,
            // once the burst is over, an interval later); after a success,
            // an interval later.
            if w[0].ok {
                assert_eq!(gap, 1000);
            } else {
                assert!(gap == 200 || gap == 1000, "{gap}");
            }
        }
        assert!(blue.windows(2).any(|w| w[1].at_ms - w[0].at_ms == 200));
        // A burst is at most `confirms` runs after the failure that began it.
        let mut run = 0;
        for w in blue.windows(2) {
            run = if w[1].at_ms - w[0].at_ms == 200 {
                run + 1
            } else {
                0
            };
            assert!(run <= 4);
        }
        let failed = a.iter().filter(|s| !s.ok).count() as f64 / a.len() as f64;
        assert!((0.25..0.35).contains(&failed), "{failed}");
        assert!(
            a.iter().all(
                |s| s.ok == (s.status == SampleStatus::Ok) && s.status != SampleStatus::Timeout
            )
        );
    }

    #[test]
    fn only_the_named_probes_are_noisy() {
        let c = config(
            "[[probe]]\nname = \"tcp\"\nkind = \"tcp\"\ninterval = \"1s\"\n",
            "",
        );
        let samples = generate(
            &c,
            &Spec {
                rate: 0.5,
                start_ms: 0,
                period: Duration::from_secs(300),
                noisy: vec!["tcp".into()],
                seed: 1,
            },
            2,
        );
        assert!(
            samples
                .iter()
                .filter(|s| s.probe == "healthz")
                .all(|s| s.ok)
        );
        assert!(samples.iter().any(|s| s.probe == "tcp" && !s.ok));
    }
}
