//! The matrix inside the real daemon: a watchdog that can see nothing
//! (no target answers at all) blames nothing, and says so once, naming what
//! it tried.

use std::time::Duration;

use rollbackd::model::{Color, now_ms};

use crate::common::{self, Env, read};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blind_watchdog_alerts_once_and_rolls_nothing_back() {
    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    let lavalink = common::Color::start().await;
    let dir = tempfile::tempdir().unwrap();
    let shared = format!(
        r#"
[[probe]]
name = "lavalink"
kind = "http"
url = "{}/healthz"
interval = "200ms"
timeout = "200ms"
"#,
        lavalink.url
    );
    let env = Env::new(
        &common::fast_config(&blue, &green, dir.path(), "")
            .replace("[rollback]", &format!("{shared}\n[rollback]")),
    );
    env.cli_ok(&["deploy", "--color", "blue", "--version", "v2"]);
    let daemon = env.daemon();
    let store = env.store().await;
    let failing = |probe: &'static str, color: Option<Color>, since: i64| {
        let store = &store;
        async move {
            store
                .samples(Some(probe), color, since)
                .await
                .unwrap()
                .iter()
                .filter(|s| !s.ok)
                .count()
        }
    };

    // The standby and the shared dependency stop answering first (nothing
    // to roll back: the standby only alerts), then the active color: from
    // its first timed-out sample, no probe anywhere answers. (A 503 would
    // be an answer: `decisions` tests that two broken colors are judged.)
    let t0 = now_ms();
    green.set(0);
    lavalink.set(0);
    common::wait_for(
        "green and lavalink failing",
        Duration::from_secs(20),
        || async {
            failing("healthz", Some(Color::Green), t0).await >= 2
                && failing("lavalink", None, t0).await >= 2
        },
    )
    .await;
    let t1 = now_ms();
    blue.set(0);
    common::wait_for("the blindness alert", Duration::from_secs(20), || async {
        read(&daemon.log).contains("alert: the watchdog may be blind")
    })
    .await;
    // Far beyond three consecutive failures on the active color.
    common::wait_for(
        "15 failed blue samples",
        Duration::from_secs(30),
        || async { failing("healthz", Some(Color::Blue), t1).await >= 15 },
    )
    .await;
    let log = read(&daemon.log);
    let alert = log
        .lines()
        .find(|l| l.contains("alert: the watchdog may be blind"))
        .unwrap_or_default();
    for tried in [
        format!("healthz on blue ({}/healthz)", blue.url),
        format!("healthz on green ({}/healthz)", green.url),
        format!("lavalink on shared ({}/healthz)", lavalink.url),
        "no answer within 200ms".to_owned(),
    ] {
        assert!(
            alert.contains(&tried),
            "the alert names {tried:?}:\n{alert}"
        );
    }
    assert_eq!(
        log.matches("alert: the watchdog may be blind").count(),
        1,
        "one alert per spell:\n{log}"
    );
    assert!(
        store.incidents().await.unwrap().is_empty(),
        "a blind watchdog rolls nothing back:\n{log}"
    );
    assert!(!dir.path().join("switch.log").exists());

    // The shared dependency answers again: the watchdog can see.
    lavalink.set(200);
    common::wait_for("sight restored", Duration::from_secs(20), || async {
        read(&daemon.log).contains("a probe answers again")
    })
    .await;
    assert!(daemon.stop().await.success());
}
