use super::*;
use crate::model::SampleStatus;
use std::path::Path;

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
health = true
[[probe]]
name = "lavalink"
kind = "http"
url = "http://127.0.0.1:3/version"
interval = "1s"
timeout = "500ms"
[rollback]
command = ["/bin/true"]
"#;

fn config() -> Config {
    Config::parse(Path::new("/tmp/t.toml"), CONFIG).unwrap()
}

fn sample(at_s: i64, probe: &str, color: Option<Color>, ok: bool) -> Sample {
    Sample::answer(at_s * 1000, probe, color, ok, 10.0)
}

fn state_of(vs: &[Verdict], prefix: &str) -> State {
    vs.iter()
        .find(|v| v.rule.starts_with(prefix))
        .unwrap()
        .state
}

#[test]
fn five_consecutive_health_failures_fire_critical_and_hysteresis_clears() {
    let mut e = Engine::new(&config());
    let crit = "critical: health_failures";
    for t in 0..5 {
        e.observe(&sample(t, "healthz", Some(Color::Blue), true));
        e.observe(&sample(t, "healthz", Some(Color::Green), true));
        e.observe(&sample(t, "lavalink", None, true));
    }
    assert_eq!(state_of(&e.evaluate(5000, Color::Blue), crit), State::Clear);
    for t in 5..9 {
        e.observe(&sample(t, "healthz", Some(Color::Blue), false));
    }
    assert_eq!(
        state_of(&e.evaluate(9000, Color::Blue), crit),
        State::Clear,
        "four failures are a blip"
    );
    e.observe(&sample(9, "healthz", Some(Color::Blue), false));
    let vs = e.evaluate(10000, Color::Blue);
    assert_eq!(state_of(&vs, crit), State::Fired);
    let d = decide(&vs, Color::Blue, &config().actions);
    assert!(matches!(&d[0], Decision::Rollback(v) if v.rule.starts_with(crit)));
    // One clean sample does not clear it: three clean evaluations do.
    e.observe(&sample(10, "healthz", Some(Color::Blue), true));
    assert_eq!(
        state_of(&e.evaluate(11000, Color::Blue), crit),
        State::Fired
    );
    assert_eq!(
        state_of(&e.evaluate(12000, Color::Blue), crit),
        State::Fired
    );
    assert_eq!(
        state_of(&e.evaluate(13000, Color::Blue), crit),
        State::Clear
    );
}

#[test]
fn standby_failures_only_alert() {
    let mut e = Engine::new(&config());
    for t in 0..6 {
        e.observe(&sample(t, "healthz", Some(Color::Green), false));
        e.observe(&sample(t, "healthz", Some(Color::Blue), true));
    }
    let vs = e.evaluate(6000, Color::Green);
    assert_eq!(state_of(&vs, "critical: health_failures"), State::Fired);
    let d = decide(&vs, Color::Blue, &config().actions);
    assert!(d.iter().all(|d| !matches!(d, Decision::Rollback(_))));
    assert!(d.iter().any(|d| matches!(d, Decision::Alert(_))));
}

/// A sample that got no answer: `status` is a timeout or unreachable.
fn unanswered(at_s: i64, probe: &str, color: Option<Color>, status: SampleStatus) -> Sample {
    Sample {
        status,
        latency_ms: None,
        detail: format!("{} on {color:?}", status.as_str()),
        ..sample(at_s, probe, color, false)
    }
}

#[test]
fn blind_watchdog_is_inconclusive_not_a_rollback() {
    let mut e = Engine::new(&config());
    for t in 0..5 {
        e.observe(&unanswered(
            t,
            "healthz",
            Some(Color::Blue),
            SampleStatus::Timeout,
        ));
        e.observe(&unanswered(
            t,
            "healthz",
            Some(Color::Green),
            SampleStatus::Unreachable,
        ));
        e.observe(&unanswered(t, "lavalink", None, SampleStatus::Timeout));
    }
    assert!(e.blind());
    let vs = e.evaluate(5000, Color::Blue);
    assert!(vs.iter().all(|v| v.state == State::Inconclusive), "{vs:#?}");
    assert!(vs[0].detail.contains("blind"));
    // What was tried, for the alert: every probe and color, with its error.
    assert_eq!(
        e.unanswered(),
        vec![
            ("healthz", Some(Color::Blue), "timeout on Some(Blue)"),
            ("healthz", Some(Color::Green), "unreachable on Some(Green)"),
            ("lavalink", None, "timeout on None"),
        ]
    );
}

#[test]
fn both_colors_answering_broken_are_judged_not_blind() {
    // Both colors answer 503 (Failed: an answer) and the shared
    // dependency times out: the watchdog sees, the active is judged.
    let mut e = Engine::new(&config());
    for t in 0..5 {
        e.observe(&sample(t, "healthz", Some(Color::Blue), false));
        e.observe(&sample(t, "healthz", Some(Color::Green), false));
        e.observe(&unanswered(t, "lavalink", None, SampleStatus::Timeout));
    }
    assert!(!e.blind());
    assert_eq!(e.take_blind_change(), None);
    let vs = e.evaluate(5000, Color::Blue);
    assert_eq!(state_of(&vs, "critical: health_failures"), State::Fired);
    let d = decide(&vs, Color::Blue, &config().actions);
    assert!(matches!(&d[0], Decision::Rollback(v) if v.color == Color::Blue));
}

#[test]
fn a_refused_connection_is_an_answer_a_timeout_is_not() {
    // Blue times out, green refuses connections (Failed, answered):
    // one color answered, so the watchdog is not blind.
    let mut e = Engine::new(&config());
    for t in 0..5 {
        e.observe(&unanswered(
            t,
            "healthz",
            Some(Color::Blue),
            SampleStatus::Timeout,
        ));
        e.observe(&sample(t, "healthz", Some(Color::Green), false));
    }
    assert!(!e.blind());
    // The refused color answers nothing further; now green's latest
    // sample is a timeout too: nothing answered.
    e.observe(&unanswered(
        5,
        "healthz",
        Some(Color::Green),
        SampleStatus::Timeout,
    ));
    assert!(e.blind());
    assert_eq!(e.take_blind_change(), Some(true));
}

#[test]
fn failing_shared_dependency_alone_does_not_judge_a_color() {
    let mut e = Engine::new(&config());
    for t in 0..30 {
        e.observe(&sample(t, "healthz", Some(Color::Blue), true));
        e.observe(&sample(t, "lavalink", None, false));
    }
    let vs = e.evaluate(30_000, Color::Blue);
    assert!(vs.iter().all(|v| v.state != State::Fired), "{vs:#?}");
}

#[test]
fn a_window_judges_only_its_colors_current_deployment() {
    let crit = "critical: health_failures";
    let of = |s: Sample, deployment| Sample {
        deployment: Some(deployment),
        ..s
    };
    // A restart: the engine learns that blue now runs deployment 3
    // before the stored samples come back; blue's are of deployment 2,
    // which failed and was rolled back.
    let mut e = Engine::new(&config());
    e.set_deployments([Some(3), Some(1)]);
    for t in 0..10 {
        e.observe(&of(sample(t, "healthz", Some(Color::Blue), false), 2));
        e.observe(&of(sample(t, "healthz", Some(Color::Green), true), 1));
    }
    let vs = e.evaluate(10_000, Color::Blue);
    assert_eq!(state_of(&vs, crit), State::Inconclusive, "{vs:#?}");
    assert_eq!(e.failing_since(Color::Blue), None);
    // Deployment 3's own failures are judged.
    for t in 10..15 {
        e.observe(&of(sample(t, "healthz", Some(Color::Blue), false), 3));
    }
    assert_eq!(
        state_of(&e.evaluate(15_000, Color::Blue), crit),
        State::Fired
    );

    // In memory: a new deployment on blue starts clean, and a sample
    // stamped with the old one (in flight at the change) does not count.
    e.set_deployments([Some(4), Some(1)]);
    assert_eq!(
        state_of(&e.evaluate(15_000, Color::Blue), crit),
        State::Inconclusive
    );
    for t in 15..20 {
        e.observe(&of(sample(t, "healthz", Some(Color::Blue), false), 3));
        e.observe(&of(sample(t, "healthz", Some(Color::Blue), true), 4));
    }
    assert_eq!(
        state_of(&e.evaluate(20_000, Color::Blue), crit),
        State::Clear
    );
    // Green's windows were untouched by blue's deployment.
    assert_eq!(
        state_of(&e.evaluate(20_000, Color::Green), crit),
        State::Clear
    );
}

#[test]
fn too_few_samples_is_inconclusive() {
    let mut e = Engine::new(&config());
    e.observe(&sample(0, "healthz", Some(Color::Blue), false));
    let vs = e.evaluate(1000, Color::Blue);
    assert_eq!(state_of(&vs, "critical: error_rate"), State::Inconclusive);
    assert_eq!(
        state_of(&vs, "critical: health_failures"),
        State::Inconclusive
    );
}
