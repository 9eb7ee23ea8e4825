//! Reloads under systemd: SIGHUP keeps what did not change, a bad file
//! keeps the old config, bursts of signals and edits, a reload or SIGTERM
//! during a rollback.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(super) async fn good_reload_keeps_unchanged_windows_and_counters_and_resets_changed_ones() {
    let _slot = daemon_slot().await;
    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("rollbackd.toml");
    let text = config(&blue, &green, r#"["/bin/true"]"#, "");
    write_config(&cfg, &text);
    cli_ok(&cfg, &["deploy", "--color", "blue", "--version", "v1"]);
    let daemon = Proc::start(&cfg, &dir.path().join("daemon.log"), &[]);
    let base = format!("http://{}", daemon.http().await);
    let rule = "low: error_rate > 2% over 15m";

    wait_for(
        "20 samples in blue's window",
        Duration::from_secs(30),
        || async { verdict_n(&status_json(&base).await, rule) >= 20 },
    )
    .await;
    let n_before = verdict_n(&status_json(&base).await, rule);
    let counted_before = metric(
        &base,
        "rollbackd_samples_total",
        &[("probe", "healthz"), ("color", "blue")],
    )
    .await;

    // Add a shared probe: healthz and the rules are unchanged.
    let added = text.replace(
        "[rollback]",
        &format!(
            "[[probe]]\nname = \"dependency\"\nkind = \"http\"\nurl = \"{}/healthz\"\ninterval = \"200ms\"\n\n[rollback]",
            green.url
        ),
    );
    write_config(&cfg, &added);
    daemon.signal(Signal::SIGHUP);
    daemon
        .wait_log("probes added: dependency", Duration::from_secs(10))
        .await;
    let status = fresh_status(&base, now_ms()).await;
    assert!(
        verdict_n(&status, rule) >= n_before,
        "blue's window was kept: {} >= {n_before}",
        verdict_n(&status, rule)
    );
    assert_eq!(status["last_reload"]["ok"], true);
    assert!(
        status["probes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "dependency" && p["shared"] == true),
        "{status}"
    );
    assert!(
        metric(
            &base,
            "rollbackd_samples_total",
            &[("probe", "healthz"), ("color", "blue")]
        )
        .await
            >= counted_before,
        "counters survive a reload"
    );
    wait_for(
        "samples of the new probe",
        Duration::from_secs(10),
        || async {
            metric(&base, "rollbackd_samples_total", &[("probe", "dependency")]).await > 0.0
        },
    )
    .await;

    // Change healthz itself: its old samples measured something else, so
    // its window starts again.
    write_config(
        &cfg,
        &added.replace("timeout = \"200ms\"", "timeout = \"190ms\""),
    );
    daemon.signal(Signal::SIGHUP);
    daemon
        .wait_log("probes changed: healthz", Duration::from_secs(10))
        .await;
    let reloaded_at = Instant::now();
    let n_after = verdict_n(&fresh_status(&base, now_ms()).await, rule);
    assert!(
        n_after < n_before / 2,
        "healthz's window restarted: {n_after} samples {:?} after the reload (was {n_before})",
        reloaded_at.elapsed()
    );
    assert_eq!(
        metric(
            &base,
            "rollbackd_config_reloads_total",
            &[("outcome", "ok")]
        )
        .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(super) async fn bad_reload_keeps_the_old_config_and_names_file_and_line() {
    let _slot = daemon_slot().await;
    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("rollbackd.toml");
    let text = config(&blue, &green, r#"["/bin/true"]"#, "");
    write_config(&cfg, &text);
    let notify = Notifications::bind(dir.path());
    let mut daemon = Proc::start(
        &cfg,
        &dir.path().join("daemon.log"),
        &[("NOTIFY_SOCKET", notify.path.display().to_string())],
    );
    let base = format!("http://{}", daemon.http().await);

    let broken = text.replace("health = true", "health = true\nhelth = false");
    let line = broken.lines().position(|l| l == "helth = false").unwrap() + 1;
    write_config(&cfg, &broken);
    daemon.signal(Signal::SIGHUP);
    daemon
        .wait_log(
            "reload failed, keeping the running configuration",
            Duration::from_secs(10),
        )
        .await;
    let log = daemon.log();
    let expected = format!("{}:{line}:1: probe", cfg.display());
    assert!(log.contains(&expected), "{expected} in\n{log}");
    assert!(daemon.running(), "a bad reload never kills the daemon");

    // Still probing on the old configuration, and saying so.
    let before = metric(&base, "rollbackd_samples_total", &[]).await;
    wait_for("more samples", Duration::from_secs(10), || async {
        metric(&base, "rollbackd_samples_total", &[]).await >= before + 4.0
    })
    .await;
    let status = status_json(&base).await;
    assert_eq!(status["last_reload"]["ok"], false);
    assert!(
        status["last_reload"]["message"]
            .as_str()
            .unwrap()
            .contains(&expected),
        "{status}"
    );
    assert!(
        status["status"]
            .as_str()
            .unwrap()
            .contains("last reload failed")
    );
    wait_for(
        "READY=1 after the failed reload",
        Duration::from_secs(5),
        || async {
            notify
                .texts()
                .iter()
                .any(|m| m.contains("READY=1") && m.contains("last reload failed"))
        },
    )
    .await;
    assert_eq!(
        metric(
            &base,
            "rollbackd_config_reloads_total",
            &[("outcome", "failed")]
        )
        .await,
        1.0
    );

    // A valid file whose listen address is taken is refused whole, and the
    // old listener keeps serving.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    write_config(&cfg, &text.replace("127.0.0.1:0", &taken_addr));
    daemon.signal(Signal::SIGHUP);
    daemon
        .wait_log(
            &format!("cannot listen on {taken_addr}"),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);

    // Fixed: the next reload succeeds.
    write_config(&cfg, &text);
    daemon.signal(Signal::SIGHUP);
    daemon
        .wait_log("configuration reloaded", Duration::from_secs(10))
        .await;
    daemon.signal(Signal::SIGTERM);
    assert!(daemon.exit(Duration::from_secs(10)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(super) async fn fifty_sighups_in_a_burst_end_in_one_consistent_config() {
    let _slot = daemon_slot().await;
    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("rollbackd.toml");
    let text = config(&blue, &green, r#"["/bin/true"]"#, "");
    write_config(&cfg, &text);
    let notify = Notifications::bind(dir.path());
    let mut daemon = Proc::start(
        &cfg,
        &dir.path().join("daemon.log"),
        &[("NOTIFY_SOCKET", notify.path.display().to_string())],
    );
    let base = format!("http://{}", daemon.http().await);
    wait_for("READY=1", Duration::from_secs(20), || async {
        notify.count("READY=1") >= 1
    })
    .await;

    write_config(
        &cfg,
        &text.replace(
            "[rollback]",
            &format!(
                "[[probe]]\nname = \"second\"\nkind = \"http\"\nurl = \"{}/healthz\"\ninterval = \"200ms\"\n\n[rollback]",
                blue.url
            ),
        ),
    );
    for _ in 0..50 {
        daemon.signal(Signal::SIGHUP);
    }
    daemon
        .wait_log("probes added: second", Duration::from_secs(10))
        .await;
    wait_for(
        "samples of the new probe",
        Duration::from_secs(10),
        || async { metric(&base, "rollbackd_samples_total", &[("probe", "second")]).await > 0.0 },
    )
    .await;
    // Every RELOADING=1 got its READY=1, and the burst collapsed.
    wait_for("reloads to settle", Duration::from_secs(10), || async {
        notify.count("READY=1") == notify.count("RELOADING=1") + 1
    })
    .await;
    let reloads = notify.count("RELOADING=1");
    assert!(
        (1..50).contains(&reloads),
        "{reloads} reloads for 50 SIGHUPs"
    );
    assert_eq!(daemon.log().matches("probes added: second").count(), 1);
    assert!(daemon.running());
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    daemon.signal(Signal::SIGTERM);
    assert!(daemon.exit(Duration::from_secs(10)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(super) async fn watch_config_reloads_once_per_burst_of_edits() {
    let _slot = daemon_slot().await;
    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("rollbackd.toml");
    let text = config(&blue, &green, r#"["/bin/true"]"#, "")
        .replace("watch_config = false", "watch_config = true");
    write_config(&cfg, &text);
    let daemon = Proc::start(&cfg, &dir.path().join("daemon.log"), &[]);
    let base = format!("http://{}", daemon.http().await);

    // An editor session: several saves in quick succession, the last one
    // adding a rule.
    let edited = text.replace(
        "[rollback]",
        "[[rule]]\nname = \"slow\"\nseverity = \"low\"\nwhen = \"latency_avg > 1000ms\"\nwindow = \"15m\"\n\n[rollback]",
    );
    for i in 0..5 {
        write_config(&cfg, &format!("{text}\n# save {i}\n"));
    }
    write_config(&cfg, &edited);
    daemon
        .wait_log("configuration reloaded", Duration::from_secs(10))
        .await;
    wait_for(
        "the new rule's verdicts",
        Duration::from_secs(10),
        || async {
            status_json(&base).await["verdicts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["rule"] == "slow")
        },
    )
    .await;
    assert_eq!(
        daemon.log().matches("changed on disk: reloading").count(),
        1,
        "one reload per burst:\n{}",
        daemon.log()
    );
    assert!(daemon.log().contains("rules added: slow"));
}

/// A rollback in flight is not disturbed by a reload (it finishes on the
/// configuration it started with), and SIGTERM waits for it, then exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(super) async fn reload_and_sigterm_during_a_rollback_let_it_finish_once() {
    let _slot = daemon_slot().await;
    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("rollbackd.toml");
    let text = config(&blue, &green, &gated_switch(dir.path()), "");
    write_config(&cfg, &text);
    cli_ok(&cfg, &["deploy", "--color", "green", "--version", "v1"]);
    cli_ok(&cfg, &["deploy", "--color", "blue", "--version", "v2"]);
    let mut daemon = Proc::start(&cfg, &dir.path().join("daemon.log"), &[]);
    let base = format!("http://{}", daemon.http().await);

    blue.set(503);
    wait_for(
        "the switch command to start",
        Duration::from_secs(20),
        || async { dir.path().join("started").exists() },
    )
    .await;
    wait_for(
        "/status to show the rollback",
        Duration::from_secs(5),
        || async { status_json(&base).await["rollback_in_flight"] == true },
    )
    .await;

    // Reload with a different config while the switch runs.
    write_config(
        &cfg,
        &text.replace("verify_after = \"5s\"", "verify_after = \"6s\""),
    );
    daemon.signal(Signal::SIGHUP);
    daemon
        .wait_log("configuration reloaded", Duration::from_secs(10))
        .await;
    assert!(daemon.log().contains("changed: rollback"));

    // SIGTERM: probing stops, but the daemon waits for the switch.
    daemon.signal(Signal::SIGTERM);
    daemon
        .wait_log(
            "for the rollback in flight to finish",
            Duration::from_secs(10),
        )
        .await;
    assert!(daemon.running(), "exited with a rollback half-way");
    let (code, body) = get(&format!("{base}/healthz")).await;
    assert_eq!((code, body.as_str()), (503, "unhealthy\nstopping\n"));
    assert_eq!(status_json(&base).await["rollback_in_flight"], true);
    let stop_sent = Instant::now();
    std::fs::write(dir.path().join("gate"), "").unwrap();
    let exit = daemon.exit(Duration::from_secs(30)).await;
    assert!(
        exit.success(),
        "exit 0 after the rollback, got {exit}\n{}",
        daemon.log()
    );
    assert!(stop_sent.elapsed() < Duration::from_secs(20));

    assert_eq!(common::read(&dir.path().join("switch.log")), "green\n");
    let store = rollbackd::store::Store::open_dir(&dir.path().join("state"))
        .await
        .unwrap();
    let incidents = store.incidents().await.unwrap();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(
        incidents[0].state,
        rollbackd::model::IncidentState::Verified,
        "{}",
        daemon.log()
    );
    assert!(store.in_flight_incident().await.unwrap().is_none());
}
