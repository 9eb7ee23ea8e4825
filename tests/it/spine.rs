//! The spine end to end: config -> probe -> SQLite -> matrix -> rollback,
//! with two real HTTP servers and the real binary.

use std::time::Duration;

use rollbackd::model::{Color, now_ms};

use crate::common::{self, Env, Setup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_then_failing_active_color_rolls_back_exactly_once() {
    let (service, daemon) = Setup::new()
        .await
        // green ran v1, then blue got v2 and became active.
        .deploy("green", "v1")
        .deploy("blue", "v2")
        .start()
        .await;
    let (blue, env, switch_log) = (&service.blue, &service.env, service.switch_log());
    let store = env.store().await;

    // Healthy: plenty of samples on both colors, and no action at all.
    let started = now_ms();
    common::wait_for(
        "15 healthy samples per color",
        Duration::from_secs(20),
        || async {
            let blue_n = store
                .samples(Some("healthz"), Some(Color::Blue), started)
                .await
                .unwrap()
                .len();
            let green_n = store
                .samples(Some("healthz"), Some(Color::Green), started)
                .await
                .unwrap()
                .len();
            blue_n >= 15 && green_n >= 15
        },
    )
    .await;
    assert!(
        store.incidents().await.unwrap().is_empty(),
        "no incident while healthy"
    );
    assert!(!switch_log.exists(), "no switch while healthy");
    let samples = store.samples(Some("healthz"), None, started).await.unwrap();
    assert!(samples.iter().all(|s| s.ok), "healthy samples: {samples:?}");
    assert!(
        samples
            .iter()
            .any(|s| s.color == Some(Color::Blue) && s.deployment.is_some())
    );

    // The active color starts failing.
    blue.set(503);
    common::wait_for(
        "the rollback to be verified",
        Duration::from_secs(20),
        || async {
            store
                .incidents()
                .await
                .unwrap()
                .first()
                .is_some_and(|i| i.state == rollbackd::model::IncidentState::Verified)
        },
    )
    .await;

    let lines = common::read(&switch_log);
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "the switch ran once: {lines:?}\n{}",
        common::read(&daemon.log)
    );
    let parts: Vec<&str> = lines[0].split('|').collect();
    assert_eq!(
        parts[0], "blue green v1",
        "placeholders {{from}} {{to}} {{version}}"
    );
    assert_eq!(
        parts[1], "blue green v1 critical 1",
        "ROLLBACKD_* environment"
    );
    assert!(
        parts[2].contains("health_failures"),
        "ROLLBACKD_REASON names the rule: {}",
        parts[2]
    );

    let latest = store.latest_deployment().await.unwrap().unwrap();
    assert_eq!(
        (
            latest.color,
            latest.version.as_str(),
            latest.source.as_str()
        ),
        (Color::Green, "v1", "rollback")
    );

    // Blue keeps failing as the standby: more samples arrive, nothing else runs.
    let after = now_ms();
    common::wait_for(
        "10 more samples of each color",
        Duration::from_secs(20),
        || async {
            store
                .samples(Some("healthz"), Some(Color::Blue), after)
                .await
                .unwrap()
                .len()
                >= 10
                && store
                    .samples(Some("healthz"), Some(Color::Green), after)
                    .await
                    .unwrap()
                    .len()
                    >= 10
        },
    )
    .await;
    assert_eq!(
        common::read(&switch_log).lines().count(),
        1,
        "still exactly one switch"
    );
    assert_eq!(store.incidents().await.unwrap().len(), 1);

    let incident = store.incident(1).await.unwrap();
    assert_eq!(
        (incident.from_color, incident.to_color),
        (Some(Color::Blue), Some(Color::Green))
    );
    assert_eq!(incident.from_version.as_deref(), Some("v2"));
    assert!(incident.downtime_ms.is_some());
    let states: Vec<String> = store
        .incident_events(1)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.state.to_string())
        .collect();
    assert_eq!(
        states,
        [
            "detected",
            "requested",
            "target_verified",
            "switching",
            // The switch command's process group, recorded once it runs.
            "switching",
            "switched",
            "verified"
        ]
    );

    let status = env.cli_ok(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["active"]["color"], "green");
    assert_eq!(status["standby"]["color"], "blue");
    assert_eq!(
        status["standby"]["healthy"], false,
        "the rolled-back color is failing: {status}"
    );
    let text = env.cli_ok(&["status"]);
    assert!(text.contains("standby: blue FAILING"), "{text}");
    assert!(
        text.contains("automatic rollbacks: in cooldown until"),
        "the 30m default cooldown runs: {text}"
    );
    assert!(status["cooldown_until"].is_string(), "{status}");
    assert!(status["escalation_hold"].is_null(), "{status}");

    let exit = daemon.stop().await;
    assert!(exit.success(), "SIGTERM exits 0, got {exit}");
}

#[tokio::test]
async fn check_exits_0_on_the_example_and_78_on_a_bad_file() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/rollbackd.toml");
    let out = std::process::Command::new(common::BIN)
        .args(["--config", example, "check"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("health_failures >= 5") && text.contains("DETECTS IN"),
        "{text}"
    );

    let env = Env::new("[service]\nname = \"x\"\nbogus = 1\n");
    let out = env.cli(&["check"]);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:3:1: service.bogus", env.config.display())),
        "{err}"
    );

    // A missing file: exit 78, one line, its cause said once.
    let missing = env.path("nope.toml");
    let out = std::process::Command::new(common::BIN)
        .arg("--config")
        .arg(&missing)
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(err.matches("No such file").count(), 1, "{err}");

    // ROLLBACKD_CONFIG is used when --config is absent.
    let out = std::process::Command::new(common::BIN)
        .arg("check")
        .env("ROLLBACKD_CONFIG", &env.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
}

/// Issue 17: `check` prices every consecutive-failure rule (median and
/// worst detection, false firings per year at `[daemon] assumed_noise`);
/// a Critical rule that would fire on noise more than once a year is a
/// warning, and `check --strict` fails on it with exit 1 (a failed check;
/// the file itself is valid).
#[test]
fn issue17_check_prices_streak_rules_and_strict_fails_a_noisy_one() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/rollbackd.toml");
    let out = std::process::Command::new(common::BIN)
        .args(["--config", example, "check"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "the example is valid:\n{text}");
    assert!(!text.contains("would fire on noise"), "and quiet:\n{text}");
    // One health probe at 1 s, confirmed every 200 ms, 5 in a row.
    assert!(
        text.contains(
            "detects a 503 in 1s 300ms and a hang in 2s 300ms (medians), 2s 800ms at worst; on noise fires about once every 10 years (0.10 a year)"
        ),
        "{text}"
    );
    assert!(text.contains("at 2% independent failures"), "{text}");

    let noisy = std::fs::read_to_string(example).unwrap().replace(
        "# [[rule]]\n# name = \"high error rate\"",
        "[[rule]]\nseverity = \"critical\"\nwhen = \"health_failures >= 3\"\nwindow = \"10m\"\n\n# [[rule]]\n# name = \"high error rate\"",
    );
    let env = Env::new(&noisy);
    let out = env.cli(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a warning, not an error:\n{text}"
    );
    assert!(
        text.contains("would fire on noise about once a day at 2% independent failures"),
        "{text}"
    );
    let out = env.cli(&["check", "--strict"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--strict: critical: health_failures >= 3 over 10m would fire on noise"),
        "{err}"
    );
    // A lower assumed noise makes the same rule acceptable (the example's
    // other warnings, an unset secret and the dry run's missing switch
    // command, still fail --strict: warnings are fatal there).
    let env = Env::new(&noisy.replace("assumed_noise = \"2%\"", "assumed_noise = \"0.1%\""));
    let out = env.cli(&["check", "--strict"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("would fire on noise"), "{err}");
    assert!(err.contains("--strict: 2 warnings"), "{err}");
}
