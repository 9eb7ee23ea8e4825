//! Time in the matrix: the caller's (monotonic) clock drives windows,
//! holds and hysteresis; a gap in the watchdog's own running restarts
//! holds; `next_due` says when the next time-based change falls due.

use std::path::Path;

use super::*;

const CONFIG: &str = r#"
[service]
name = "t"
[colors.blue]
base_url = "http://127.0.0.1:1"
[colors.green]
base_url = "http://127.0.0.1:2"
[[probe]]
name = "healthz"
kind = "http"
path = "/healthz"
interval = "1s"
timeout = "500ms"
confirm_interval = "off"
health = true
[[rule]]
name = "held"
severity = "critical"
when = "health_failures >= 2"
window = "1m"
for = "20s"
min_samples = 1
[[rule]]
name = "rate"
severity = "high"
when = "error_rate > 50%"
window = "1m"
min_samples = 5
[rollback]
command = ["/bin/true"]
"#;

fn engine() -> Engine {
    Engine::new(&Config::parse(Path::new("/tmp/t.toml"), CONFIG).unwrap())
}

/// A blue healthz sample stamped `wall_ms` on the wall clock.
fn sample(wall_ms: Millis, ok: bool) -> Sample {
    Sample::answer(wall_ms, "healthz", Some(Color::Blue), ok, 10.0)
}

fn state(vs: &[Verdict], rule: &str) -> State {
    vs.iter().find(|v| v.rule == rule).unwrap().state
}

/// Feed blue one sample a second on the monotonic clock from `from_s` to
/// `to_s` (exclusive), the wall clock reading `wall_offset_ms` more, and
/// judge after each; returns the last verdicts.
fn feed(e: &mut Engine, from_s: i64, to_s: i64, ok: bool, wall_offset_ms: Millis) -> Vec<Verdict> {
    let mut last = Vec::new();
    for t in from_s..to_s {
        let mono = t * 1000;
        e.observe_at(&sample(mono + wall_offset_ms, ok), mono);
        last = e.evaluate(mono, Color::Blue);
    }
    last
}

#[test]
fn a_gap_restarts_every_hold_and_rules_wait_for_fresh_samples() {
    let mut e = engine();
    feed(&mut e, 0, 10, true, 0);
    let vs = feed(&mut e, 10, 15, false, 0);
    assert_eq!(state(&vs, "held"), State::Clear, "holding, 20 s not yet");
    // Frozen 30 s (from 14 s to 44 s): the hold would have "run" 34 s.
    e.gap(44_000, 30_000);
    let vs = e.evaluate(44_000, Color::Blue);
    assert_eq!(state(&vs, "held"), State::Inconclusive);
    assert_eq!(state(&vs, "rate"), State::Inconclusive);
    let v = vs.iter().find(|v| v.rule == "held").unwrap();
    assert!(v.detail.contains("not running for 30s"), "{}", v.detail);
    // A sample taken before the gap but read after it is not fresh.
    e.observe_at(&sample(14_500, false), 14_500);
    assert_eq!(
        state(&e.evaluate(44_100, Color::Blue), "held"),
        State::Inconclusive
    );
    // The color recovered meanwhile: the first fresh sample clears it.
    e.observe_at(&sample(44_200, true), 44_200);
    assert_eq!(
        state(&e.evaluate(44_200, Color::Blue), "held"),
        State::Clear
    );

    // Had it still been failing, the hold restarts from the gap: 20 s of
    // fresh failures, not 20 s counted across the freeze.
    let mut e = engine();
    feed(&mut e, 0, 10, true, 0);
    feed(&mut e, 10, 15, false, 0);
    e.gap(44_000, 30_000);
    let vs = feed(&mut e, 45, 64, false, 0);
    assert_eq!(state(&vs, "held"), State::Clear, "19 s of fresh failures");
    let vs = feed(&mut e, 64, 66, false, 0);
    assert_eq!(state(&vs, "held"), State::Fired);
}

#[test]
fn a_wall_clock_jump_either_way_changes_no_verdict() {
    let run = |jump_ms: Millis| {
        let mut e = engine();
        let mut states = Vec::new();
        let mut feed_one = |e: &mut Engine, t: i64, ok: bool| {
            // The wall clock jumps at 12 s; the monotonic one goes on.
            let wall = if t >= 12 {
                t * 1000 + jump_ms
            } else {
                t * 1000
            };
            e.observe_at(&sample(wall, ok), t * 1000);
            let vs = e.evaluate(t * 1000, Color::Blue);
            states.push((state(&vs, "held"), state(&vs, "rate")));
        };
        for t in 0..10 {
            feed_one(&mut e, t, true);
        }
        for t in 10..40 {
            feed_one(&mut e, t, false);
        }
        for t in 40..60 {
            feed_one(&mut e, t, true);
        }
        states
    };
    let steady = run(0);
    assert!(steady.contains(&(State::Fired, State::Fired)), "{steady:?}");
    assert_eq!(run(3_600_000), steady, "+1 h");
    assert_eq!(run(-3_600_000), steady, "-1 h");
}

#[test]
fn next_due_names_the_hold_ending_and_the_window_sliding() {
    let mut e = engine();
    assert_eq!(e.next_due(), None, "nothing observed, nothing due");
    e.observe_at(&sample(500, true), 500);
    e.judge(500);
    // The point leaves the 1 m windows at 60.5 s, judged on their 1 s grid.
    assert_eq!(slide_slack(60_000), 1000);
    assert_eq!(e.next_due(), Some(61_000));
    e.observe_at(&sample(1_000, false), 1_000);
    e.observe_at(&sample(2_000, false), 2_000);
    e.judge(2_000);
    // health_failures >= 2 holds from 2 s: due to fire at 22 s, before
    // any point leaves a window.
    assert_eq!(e.next_due(), Some(22_000));
    let vs = e.judge(22_000);
    assert_eq!(state(&vs, "held"), State::Fired);
    // Fired: its clearing is judged at the loop's pace.
    assert_eq!(e.next_due(), Some(22_000 + duration_ms(EVAL_PERIOD)));
    // A short window slides to within EVAL_GAP.
    assert_eq!(slide_slack(400), duration_ms(EVAL_GAP));
}

#[test]
fn samples_are_judged_at_once_and_a_flood_at_one_per_gap() {
    let gap = duration_ms(EVAL_GAP);
    let mut pace = Pace::default();
    // A health probe's samples, far apart: each at once.
    for t in [0, 200, 400, 1000] {
        assert_eq!(pace.earliest(t), t);
        pace.judged(t);
    }
    // A flood (a sample per millisecond): a burst at once, then one per gap.
    let mut at = Vec::new();
    let mut t = 5_000;
    while at.len() < 8 {
        let when = pace.earliest(t);
        pace.judged(when);
        at.push(when - 5_000);
        t = when + 1;
    }
    let burst = EVAL_BURST as usize;
    assert_eq!(at[..burst], (0..burst as i64).collect::<Vec<_>>()[..]);
    for pair in at[burst..].windows(2) {
        assert_eq!(pair[1] - pair[0], gap, "{at:?}");
    }
}
