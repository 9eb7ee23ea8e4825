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
