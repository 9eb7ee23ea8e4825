//! Timing: durations on the daemon's monotonic clock (a freeze of the
//! daemon restarts every `for` hold), and reloads that keep schedules.

use std::time::Duration;

use nix::sys::signal::Signal as Sig;
use rollbackd::model::Color;

use crate::common::{self, Env, fast_config, read, wait_for};

/// A `for` rule and nothing else: a short failure holds it, a long one
/// fires it.
const HOLD_RULE: &str = r#"
[[rule]]
name = "critical: health_failures >= 2 for 3s"
severity = "critical"
when = "health_failures >= 2"
window = "1m"
for = "3s"
min_samples = 1
"#;

/// Issue 11, point 2: a daemon frozen (SIGSTOP) longer than a `for`, while
/// the color it was holding against recovers, must not roll that color
/// back on its pre-freeze evidence once it runs again; the same rule still
/// fires on a failure that really lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_daemon_does_not_roll_back_a_color_that_recovered_meanwhile() {
    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new(&fast_config(&blue, &green, dir.path(), HOLD_RULE));
    env.cli_ok(&["deploy", "--color", "green", "--version", "v1"]);
    env.cli_ok(&["deploy", "--color", "blue", "--version", "v2"]);
    let daemon = env.daemon();
    let store = env.store().await;
    wait_for(
        "samples from both colors",
        Duration::from_secs(20),
        || async { store.samples(None, None, 0).await.unwrap().len() >= 4 },
    )
    .await;

    // Blue fails long enough for the rule to start holding (2 failures in
    // a row), far less than its `for`.
    blue.set(503);
    wait_for(
        "two failed blue samples in a row",
        Duration::from_secs(20),
        || async {
            let s = store
                .samples(Some("healthz"), Some(Color::Blue), 0)
                .await
                .unwrap();
            s.len() >= 2 && s[s.len() - 2..].iter().all(|s| !s.ok)
        },
    )
    .await;
    daemon.signal(Sig::SIGSTOP);
    // The fault itself: frozen for longer than the `for`, during which
    // blue recovers.
    blue.set(200);
    tokio::time::sleep(Duration::from_secs(5)).await;
    daemon.signal(Sig::SIGCONT);
    wait_for(
        "fresh ok blue samples after the freeze",
        Duration::from_secs(20),
        || async {
            let s = store
                .samples(Some("healthz"), Some(Color::Blue), 0)
                .await
                .unwrap();
            s.len() >= 3 && s[s.len() - 3..].iter().all(|s| s.ok)
        },
    )
    .await;
    // Long enough for a rollback to have been started and recorded.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = read(&daemon.log);
    assert!(
        store.incidents().await.unwrap().is_empty(),
        "a recovered color was rolled back after the freeze:\n{log}"
    );
    assert!(!dir.path().join("switch.log").exists(), "{log}");
    assert!(
        log.contains("was not running for"),
        "the gap is logged:\n{log}"
    );

    // The rule still works: a failure that lasts its `for` rolls back.
    blue.set(503);
    wait_for(
        "the switch command after a lasting failure",
        Duration::from_secs(30),
        || async { dir.path().join("switch.log").exists() },
    )
    .await;
    assert!(daemon.stop().await.success());
}

/// A color that answers 200 at once and records when each request came.
struct Counted {
    url: String,
    times: std::sync::Arc<std::sync::Mutex<Vec<std::time::Instant>>>,
}

impl Counted {
    async fn start() -> Counted {
        use axum::Router;
        use axum::extract::State;
        use axum::routing::get;
        type Times = std::sync::Arc<std::sync::Mutex<Vec<std::time::Instant>>>;
        let times: Times = Default::default();
        let app = Router::new()
            .route(
                "/healthz",
                get(|State(t): State<Times>| async move {
                    t.lock().unwrap().push(std::time::Instant::now());
                    "ok"
                }),
            )
            .with_state(times.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Counted { url, times }
    }

    fn since(&self, t: std::time::Instant) -> Vec<std::time::Instant> {
        self.times
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|r| *r >= t)
            .collect()
    }
}

/// Issue 11, point 6: a storm of 200 SIGHUPs in 2 s (the file unchanged)
/// changes no probe's cadence: each color's requests stay one interval
/// apart and no more come than the interval allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_reloads_changes_no_cadence() {
    let blue = Counted::start().await;
    let green = Counted::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = fast_config(
        &common::Color::url_only(&blue.url),
        &common::Color::url_only(&green.url),
        dir.path(),
        "",
    )
    .replace("interval = \"200ms\"", "interval = \"1s\"");
    let env = Env::new(&text);
    env.cli_ok(&["deploy", "--color", "blue", "--version", "v1"]);
    let daemon = env.daemon();
    wait_for(
        "two requests on each color",
        Duration::from_secs(20),
        || {
            let n = (
                blue.times.lock().unwrap().len(),
                green.times.lock().unwrap().len(),
            );
            async move { n.0 >= 2 && n.1 >= 2 }
        },
    )
    .await;

    let start = std::time::Instant::now();
    for _ in 0..200 {
        daemon.signal(Sig::SIGHUP);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // One interval after the storm: the run that follows it is counted.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let span = start.elapsed();
    let log = read(&daemon.log);
    assert!(log.contains("configuration reloaded"), "{log}");
    for (name, color) in [("blue", &blue), ("green", &green)] {
        // From the request before the storm on.
        let all = color.since(start - Duration::from_millis(1100));
        let allowed = span.as_millis() / 1000 + 2;
        assert!(
            all.len() as u128 <= allowed,
            "{name}: {} requests in {span:?} at a 1 s interval",
            all.len()
        );
        for pair in all.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap >= Duration::from_millis(850) && gap <= Duration::from_millis(1150),
                "{name}: requests {gap:?} apart during a reload storm, not 1 s: {:?}",
                all.windows(2).map(|p| p[1] - p[0]).collect::<Vec<_>>()
            );
        }
    }
    assert!(daemon.stop().await.success());
}

/// libfaketime's library (Debian package `faketime`): it moves the daemon's
/// wall clock, not its monotonic clock.
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// Fires on the second failing health sample, no `for`.
const FAST_RULE: &str = r#"
[[rule]]
name = "critical: health_failures >= 2"
severity = "critical"
when = "health_failures >= 2"
window = "1m"
min_samples = 1
"#;

/// Issue 11, point 2: a wall-clock step either way, while the daemon runs,
/// ends no pause early and stretches none. The daemon runs under
/// libfaketime (its wall clock only); `rollbackd pause` runs on the real
/// clock, as another process would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_step_either_way_ends_no_pause_early_and_stretches_none() {
    if !common::have_tool(FAKETIME_LIB, "faketime") {
        return;
    }
    for step in ["+1h", "-1h"] {
        paused_through_a_step(step).await;
    }
}

async fn paused_through_a_step(step: &str) {
    const PAUSE: Duration = Duration::from_secs(12);
    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new(&fast_config(&blue, &green, dir.path(), FAST_RULE));
    env.cli_ok(&["deploy", "--color", "green", "--version", "v1"]);
    env.cli_ok(&["deploy", "--color", "blue", "--version", "v2"]);
    let offset = env.path("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let offset_path = offset.display().to_string();
    let daemon = env.daemon_with_env(&[
        ("LD_PRELOAD", FAKETIME_LIB),
        ("FAKETIME_TIMESTAMP_FILE", offset_path.as_str()),
        // Read the offset file at most once a second.
        ("FAKETIME_CACHE_DURATION", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]);
    wait_for("the daemon running", Duration::from_secs(20), || async {
        read(&daemon.log).contains("rollbackd running")
    })
    .await;
    let paused = std::time::Instant::now();
    env.cli_ok(&["pause", "--for", "12s", "--reason", "clock test"]);
    wait_for("the hold in the log", Duration::from_secs(10), || async {
        read(&daemon.log).contains("automatic rollbacks are held until")
    })
    .await;
    // The daemon's wall clock steps; then the active color fails.
    std::fs::write(&offset, format!("{step}\n")).unwrap();
    blue.set(503);
    let switch_log = dir.path().join("switch.log");
    // Held to the pause's end on the real clock (a second's slack for the
    // daemon learning of it)...
    while paused.elapsed() < PAUSE - Duration::from_secs(1) {
        assert!(
            read(&switch_log).is_empty(),
            "step {step}: switched {:?} into a {PAUSE:?} pause\n{}",
            paused.elapsed(),
            read(&daemon.log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...and not a moment (an hour) longer.
    while read(&switch_log).is_empty() {
        assert!(
            paused.elapsed() < PAUSE + Duration::from_secs(10),
            "step {step}: no rollback {:?} after a {PAUSE:?} pause\n{}",
            paused.elapsed(),
            read(&daemon.log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        paused.elapsed() < PAUSE + Duration::from_secs(10),
        "step {step}: switched {:?} after a {PAUSE:?} pause",
        paused.elapsed()
    );
    // The step reached the daemon: its log line says so in its time stamp.
    let log = read(&daemon.log);
    let ended = log
        .lines()
        .find(|l| l.contains("hold on automatic rollbacks ended"))
        .unwrap_or_else(|| panic!("step {step}: no end of hold logged\n{log}"));
    let stamped = humantime::parse_rfc3339(ended.split_whitespace().next().unwrap()).unwrap();
    let now = std::time::SystemTime::now();
    let off_by = match step {
        "+1h" => stamped.duration_since(now),
        _ => now.duration_since(stamped),
    };
    assert!(
        off_by.is_ok_and(|d| d > Duration::from_secs(50 * 60)),
        "step {step} not applied: {ended}"
    );
    let exit = daemon.stop().await;
    assert!(exit.success(), "step {step}: {exit}");
}
