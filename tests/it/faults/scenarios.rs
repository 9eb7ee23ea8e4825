//! The scenarios of the fault-injection suite, one function each; the
//! table that runs them (and its expectations) is in `faults.rs`.

use super::*;

pub(super) async fn hard_down() -> Result_ {
    let mut w = World::new(Opts::default()).await;
    w.start().await;
    let t0 = now_ms();
    w.blue.set(Mode::Status(503));
    let found = expect_rollback(&w, t0, Duration::from_secs(20)).await?;
    w.stop().await;
    Ok(found)
}

pub(super) async fn errors_60() -> Result_ {
    let mut w = World::new(Opts {
        rules: COMPRESSED,
        ..Opts::default()
    })
    .await;
    w.start().await;
    let t0 = now_ms();
    w.blue.set(Mode::Errors { pct: 60 });
    let found = expect_rollback(&w, t0, Duration::from_secs(30)).await?;
    w.stop().await;
    Ok(found)
}

pub(super) async fn latency_6s() -> Result_ {
    let rules = r#"
[[rule]]
name = "critical: health_failures >= 5"
severity = "critical"
when = "health_failures >= 5"
window = "2m"
min_samples = 1
[[rule]]
name = "high: latency_avg > 5000ms over 20s"
severity = "high"
when = "latency_avg > 5000ms"
window = "20s"
min_samples = 2
"#;
    // Answers take 6 s: the probe runs every 7 s with a 7 s timeout.
    let mut w = World::new(Opts {
        rules,
        interval: "7s",
        timeout: "7s",
        ..Opts::default()
    })
    .await;
    w.start().await;
    let t0 = now_ms();
    w.blue.set(Mode::Slow { ms: 6000, pct: 0 });
    let found = expect_rollback(&w, t0, Duration::from_secs(40)).await?;
    let inc = &w.incidents().await[0];
    ensure!(
        inc.rule
            .as_deref()
            .is_some_and(|r| r.contains("latency_avg > 5000ms")),
        "rolled back by {:?}, not the latency rule",
        inc.rule
    );
    w.stop().await;
    Ok(found)
}

pub(super) async fn latency_2x_previous() -> Result_ {
    let rules = r#"
[[rule]]
name = "high: degradation > 50% over 4s"
severity = "high"
when = "degradation > 50%"
window = "4s"
min_samples = 10
"#;
    let mut w = World::new(Opts {
        rules,
        interval: "300ms",
        timeout: "300ms",
        ..Opts::default()
    })
    .await;
    // v1 on green serves at 100 ms; v2 on blue at 250 ms: 2.5x.
    w.green.set(Mode::Slow { ms: 100, pct: 0 });
    w.blue.set(Mode::Slow { ms: 100, pct: 0 });
    w.deploy("green", "v1");
    w.run().await;
    // The baseline: v1's samples.
    tokio::time::sleep(Duration::from_secs(3)).await;
    w.blue.set(Mode::Slow { ms: 250, pct: 0 });
    let t0 = now_ms();
    w.deploy("blue", "v2");
    let found = expect_rollback(&w, t0, Duration::from_secs(30)).await?;
    w.stop().await;
    Ok(found)
}

pub(super) async fn hang() -> Result_ {
    let mut w = World::new(Opts::default()).await;
    w.start().await;
    let t0 = now_ms();
    w.blue.set(Mode::Hang);
    let found = expect_rollback(&w, t0, Duration::from_secs(20)).await?;
    w.stop().await;
    Ok(found)
}

pub(super) async fn resetting() -> Result_ {
    let mut w = World::new(Opts::default()).await;
    w.start().await;
    let t0 = now_ms();
    w.blue.set(Mode::Reset);
    let found = expect_rollback(&w, t0, Duration::from_secs(20)).await?;
    w.stop().await;
    Ok(found)
}

pub(super) async fn medium_alert() -> Result_ {
    let rules = r#"
[[rule]]
name = "critical: health_failures >= 5"
severity = "critical"
when = "health_failures >= 5"
window = "2m"
min_samples = 1
[[rule]]
name = "high: error_rate > 50% over 30s"
severity = "high"
when = "error_rate > 50%"
window = "30s"
min_samples = 5
[[rule]]
name = "high: latency_avg > 5000ms over 20s"
severity = "high"
when = "latency_avg > 5000ms"
window = "20s"
min_samples = 2
[[rule]]
name = "medium: error_rate > 10% over 30s"
severity = "medium"
when = "error_rate > 10%"
window = "30s"
min_samples = 5
[[rule]]
name = "medium: latency_avg > 2000ms over 20s"
severity = "medium"
when = "latency_avg > 2000ms"
window = "20s"
min_samples = 3
"#;
    // Answers take 2.5 s: the probe runs every 3 s with a 3 s timeout.
    let mut w = World::new(Opts {
        rules,
        interval: "3s",
        timeout: "3s",
        ..Opts::default()
    })
    .await;
    w.start().await;
    let t0 = now_ms();
    w.blue.set(Mode::Slow { ms: 2500, pct: 15 });
    let alert = w.wait_notice("alert", Duration::from_secs(40)).await?;
    ensure!(alert["severity"] == "medium", "alert {alert}");
    let at = now_ms();
    expect_no_rollback(&w, Duration::from_secs(5)).await?;
    let fired_high = w
        .log()
        .lines()
        .any(|l| l.contains("rule fired") && l.contains("high:"));
    ensure!(!fired_high, "a High rule fired:\n{}", w.log());
    w.stop().await;
    Ok(Found {
        outcome: format!(
            "alert ({}), no rollback",
            alert["rule"].as_str().unwrap_or("")
        ),
        detection: ms_since(t0, at),
    })
}

pub(super) async fn low_logged() -> Result_ {
    let mut w = World::new(Opts {
        rules: COMPRESSED,
        ..Opts::default()
    })
    .await;
    w.start().await;
    let t0 = now_ms();
    w.blue.set(Mode::Errors { pct: 3 });
    // The compressed Low window is a minute: it must fill (min_samples)
    // before the rule can judge, and a loaded machine probes slower.
    let deadline = Instant::now() + Duration::from_secs(150);
    let line = loop {
        if let Some(l) = w
            .log()
            .lines()
            .find(|l| l.contains("rule fired on blue") && l.contains("low: error_rate"))
        {
            break l.to_owned();
        }
        ensure!(Instant::now() < deadline, "low never fired:\n{}", w.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let at = now_ms();
    ensure!(line.contains("blue"), "{line}");
    expect_no_rollback(&w, Duration::from_secs(1)).await?;
    ensure!(
        w.notices("alert").is_empty(),
        "a Low rule is logged, not alerted: {:?}",
        w.notices("alert")
    );
    w.stop().await;
    Ok(Found {
        outcome: "logged (low: error_rate), no alert, no rollback".into(),
        detection: ms_since(t0, at),
    })
}

pub(super) async fn noise_2pct() -> Result_ {
    let mut w = World::new(Opts {
        rules: COMPRESSED,
        ..Opts::default()
    })
    .await;
    w.blue.set(Mode::Jitter { ms: 40, pct: 2 });
    w.green.set(Mode::Jitter { ms: 40, pct: 2 });
    w.start().await;
    // 45 s at 400 ms: ~110 samples a color, three compressed minutes.
    expect_no_rollback(&w, Duration::from_secs(45)).await?;
    w.stop().await;
    Ok(Found {
        outcome: "zero rollbacks over 45s (3 compressed min)".into(),
        detection: None,
    })
}

pub(super) async fn both_down() -> Result_ {
    let mut w = World::new(Opts::default()).await;
    w.start().await;
    let t0 = now_ms();
    w.blue.set(Mode::Status(503));
    w.green.set(Mode::Status(503));
    let inc = w
        .closed_incident(&["refused"], Duration::from_secs(20))
        .await?;
    ensure!(
        w.switches().is_empty(),
        "switched onto a broken green: {:?}",
        w.switches()
    );
    w.wait_notice("rollback_refused", Duration::from_secs(10))
        .await?;
    w.stop().await;
    Ok(Found {
        outcome: format!("refused: {}", inc.outcome.unwrap_or_default()),
        detection: ms_since(t0, inc.opened_ms),
    })
}

pub(super) async fn standby_stopped_prepare() -> Result_ {
    // prepare "starts" green: the test's service listens again when the
    // prepare command has touched its marker file.
    let mut w = World::new(Opts::default()).await;
    let marker = w.env.path("prepared");
    let text = common::read(&w.env.config).replace(
        "timeout = \"2s\"\n",
        &format!(
            "timeout = \"2s\"\nprepare = [\"/usr/bin/touch\", \"{}\"]\n",
            marker.display()
        ),
    );
    std::fs::write(&w.env.config, text).unwrap();
    w.start().await;
    w.green.set(Mode::Stopped);
    let t0 = now_ms();
    w.blue.set(Mode::Status(503));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !marker.exists() {
        ensure!(Instant::now() < deadline, "prepare never ran:\n{}", w.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.green.set(Mode::Healthy);
    let found = expect_rollback(&w, t0, Duration::from_secs(20)).await?;
    w.stop().await;
    Ok(found)
}

pub(super) async fn standby_stopped_no_prepare() -> Result_ {
    let mut w = World::new(Opts::default()).await;
    w.start().await;
    w.green.set(Mode::Stopped);
    let t0 = now_ms();
    w.blue.set(Mode::Status(503));
    let inc = w
        .closed_incident(&["refused"], Duration::from_secs(20))
        .await?;
    let why = inc.outcome.clone().unwrap_or_default();
    ensure!(
        why.contains("healthz"),
        "the refusal names green's failing probe: {why}"
    );
    ensure!(w.switches().is_empty(), "switched: {:?}", w.switches());
    w.wait_notice("rollback_refused", Duration::from_secs(10))
        .await?;
    w.stop().await;
    Ok(Found {
        outcome: format!("refused: {why}"),
        detection: ms_since(t0, inc.opened_ms),
    })
}

pub(super) async fn switch_fails() -> Result_ {
    let mut w = World::new(Opts::default()).await;
    w.switch_mode("fail");
    w.start().await;
    let t0 = now_ms();
    w.blue.set(Mode::Status(503));
    let inc = w
        .closed_incident(&["failed"], Duration::from_secs(20))
        .await?;
    let why = inc.outcome.clone().unwrap_or_default();
    ensure!(why.contains("exit") || why.contains("3"), "{why}");
    w.wait_notice("rollback_failed", Duration::from_secs(10))
        .await?;
    ensure!(
        w.nginx.serves().await.as_deref() == Some("blue"),
        "nginx moved"
    );
    ensure!(w.switches().len() == 1, "switch ran {:?}", w.switches());
    w.stop().await;
    Ok(Found {
        outcome: format!("failed: {why}"),
        detection: ms_since(t0, inc.opened_ms),
    })
}

pub(super) async fn switch_hangs() -> Result_ {
    let mut w = World::new(Opts::default()).await;
    w.switch_mode("hang");
    w.start().await;
    let t0 = now_ms();
    w.blue.set(Mode::Status(503));
    let inc = w
        .closed_incident(&["failed"], Duration::from_secs(25))
        .await?;
    let why = inc.outcome.clone().unwrap_or_default();
    ensure!(
        why.contains("timed out") || why.contains("timeout"),
        "{why}"
    );
    w.wait_notice("rollback_failed", Duration::from_secs(10))
        .await?;
    w.stop().await;
    Ok(Found {
        outcome: format!("failed: {why}"),
        detection: ms_since(t0, inc.opened_ms),
    })
}

pub(super) async fn switch_without_effect() -> Result_ {
    let mut w = World::new(Opts::default()).await;
    w.start().await;
    // The new upstream file is one nginx rejects: `kill -HUP` exits 0,
    // nginx logs the error and keeps serving blue.
    std::fs::write(
        w.env.path("upstream-green.conf"),
        format!("upstream active {{ server {} bogus; }}\n", w.green.addr),
    )
    .unwrap();
    let t0 = now_ms();
    w.blue.set(Mode::Status(503));
    let inc = w
        .closed_incident(&["escalated"], Duration::from_secs(25))
        .await?;
    let why = inc.outcome.clone().unwrap_or_default();
    ensure!(
        why.contains("switch command exited 0 but the entry still serves blue"),
        "{why}"
    );
    let notice = w
        .wait_notice("rollback_escalated", Duration::from_secs(10))
        .await?;
    ensure!(
        notice["summary"]
            .as_str()
            .is_some_and(|s| s.contains("still serves blue")),
        "{notice}"
    );
    ensure!(
        w.nginx.serves().await.as_deref() == Some("blue"),
        "nginx moved"
    );
    w.stop().await;
    Ok(Found {
        outcome: "escalated: the entry still serves blue".into(),
        detection: ms_since(t0, inc.opened_ms),
    })
}

pub(super) async fn drift() -> Result_ {
    let mut w = World::new(Opts::default()).await;
    w.start().await;
    // Someone points nginx at green behind the watchdog's back.
    let t0 = now_ms();
    std::fs::copy(
        w.env.path("upstream-green.conf"),
        w.env.path("upstream.conf"),
    )
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(w.nginx.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let drifts = || {
        w.notices("alert")
            .into_iter()
            .filter(|a| a["summary"].as_str().is_some_and(|s| s.contains("drift")))
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while drifts().is_empty() {
        ensure!(
            Instant::now() < deadline,
            "no drift alert: {:?}",
            w.notices("alert")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at = now_ms();
    let alert = drifts().remove(0);
    ensure!(
        alert["summary"]
            .as_str()
            .is_some_and(|s| s.contains("drift: the entry serves green while blue")),
        "{alert}"
    );
    // Once per change.
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(drifts().len() == 1, "{:?}", drifts());
    expect_no_rollback(&w, Duration::from_millis(10)).await?;
    w.stop().await;
    Ok(Found {
        outcome: "one drift alert, no rollback".into(),
        detection: ms_since(t0, at),
    })
}

pub(super) async fn quarantine_cooldown() -> Result_ {
    let mut w = World::new(Opts {
        rollback: "cooldown = \"1h\"\nquarantine = true",
        ..Opts::default()
    })
    .await;
    w.start().await;
    let t0 = now_ms();
    w.blue.set(Mode::Status(503));
    let found = expect_rollback(&w, t0, Duration::from_secs(20)).await?;
    // Now green fails too: blue (v2, quarantined) is healthy again, but
    // the cooldown holds and the bad version is never restored.
    w.blue.set(Mode::Healthy);
    w.green.set(Mode::Status(503));
    w.wait_notice("rollback_held", Duration::from_secs(20))
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        w.switches().len() == 1,
        "a second switch: {:?}",
        w.switches()
    );
    ensure!(
        w.nginx.serves().await.as_deref() == Some("green"),
        "the quarantined version was restored"
    );
    w.stop().await;
    Ok(Found {
        outcome: format!("{}; second rollback held, v2 not restored", found.outcome),
        detection: found.detection,
    })
}

pub(super) async fn kill9_mid_rollback() -> Result_ {
    let mut w = World::new(Opts::default()).await;
    w.switch_mode("slow");
    w.start().await;
    let t0 = now_ms();
    w.blue.set(Mode::Status(503));
    let deadline = Instant::now() + Duration::from_secs(20);
    while w.switches().is_empty() {
        ensure!(
            Instant::now() < deadline,
            "the switch never started:\n{}",
            w.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The switch command sleeps 1 s (within the 2 s `[rollback] timeout`):
    // kill -9 the daemon in the middle.
    let before = {
        let store = w.env.store().await;
        let n = store.samples(None, None, 0).await.unwrap().len();
        store.close().await;
        n
    };
    let d = w.daemon.take().unwrap();
    d.signal(nix::sys::signal::Signal::SIGKILL);
    drop(d);
    std::fs::remove_file(w.env.path("switch-mode")).unwrap();
    w.daemon = Some(w.env.daemon());
    let inc = w
        .closed_incident(&["verified"], Duration::from_secs(30))
        .await
        .map_err(|e| format!("{e}\n{}", w.log()))?;
    ensure!(
        w.switches().len() == 1,
        "the command ran again: {:?}",
        w.switches()
    );
    let after = {
        let store = w.env.store().await;
        let n = store.samples(None, None, 0).await.unwrap().len();
        store.close().await;
        n
    };
    ensure!(
        after >= before,
        "samples lost: {before} before, {after} after"
    );
    // The restarted daemon saw the entry serve green; an old nginx worker
    // may still take a request or two right after the reload.
    let serves = w.nginx.settles_on("green", Duration::from_secs(20)).await;
    ensure!(
        serves.as_deref() == Some("green"),
        "not on green: nginx serves {serves:?}; timeline {:?}",
        w.timeline(inc.id).await
    );
    w.stop().await;
    Ok(Found {
        outcome: "command ran once; reconciled, verified after restart".into(),
        detection: ms_since(t0, inc.opened_ms),
    })
}

pub(super) async fn sighup_broken_config() -> Result_ {
    let mut w = World::new(Opts::default()).await;
    w.start().await;
    let good = common::read(&w.env.config);
    std::fs::write(&w.env.config, format!("{good}\n[bogus\n")).unwrap();
    w.daemon
        .as_ref()
        .unwrap()
        .signal(nix::sys::signal::Signal::SIGHUP);
    let t0 = now_ms();
    w.blue.set(Mode::Status(503));
    let found = expect_rollback(&w, t0, Duration::from_secs(20)).await?;
    ensure!(w.log().contains("reload failed"), "{}", w.log());
    w.stop().await;
    Ok(Found {
        outcome: format!("reload refused; {}", found.outcome),
        detection: found.detection,
    })
}

pub(super) async fn pause_then_expiry() -> Result_ {
    let mut w = World::new(Opts::default()).await;
    w.start().await;
    // The pause starts inside the command, so it ends 4 s after this at
    // the earliest, however long the command took to run.
    let pausing = now_ms();
    w.env
        .cli_ok(&["pause", "--for", "4s", "--reason", "maintenance"]);
    let t0 = now_ms();
    w.blue.set(Mode::Status(503));
    w.wait_notice("rollback_held", Duration::from_secs(10))
        .await?;
    ensure!(w.switches().is_empty(), "switched during the pause");
    // The hold expires: the rollback goes then.
    let found = expect_rollback(&w, t0, Duration::from_secs(20)).await?;
    let inc = &w.incidents().await[0];
    ensure!(
        inc.opened_ms >= pausing + 4_000,
        "rolled back {} ms after `pause` was run, inside the 4 s pause",
        inc.opened_ms - pausing
    );
    w.stop().await;
    Ok(Found {
        outcome: format!("held, then after expiry: {}", found.outcome),
        detection: found.detection,
    })
}

pub(super) async fn restart_after_deploy() -> Result_ {
    let mut w = World::new(Opts::default()).await;
    w.start().await;
    w.blue.set(Mode::Status(503));
    expect_rollback(&w, now_ms(), Duration::from_secs(20)).await?;
    w.stop().await;
    // The pipeline deploys a healthy v3 to blue and cuts over; the daemon
    // starts right after and must not judge v3 on v2's samples.
    w.blue.set(Mode::Healthy);
    std::fs::copy(
        w.env.path("upstream-blue.conf"),
        w.env.path("upstream.conf"),
    )
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(w.nginx.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    w.deploy("blue", "v3");
    w.run().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(
        w.switches().len() == 1,
        "v3 rolled back: {:?}",
        w.switches()
    );
    ensure!(w.incidents().await.len() == 1, "a second incident");
    w.stop().await;
    Ok(Found {
        outcome: "v3 kept (not judged on v2's samples)".into(),
        detection: None,
    })
}

pub(super) async fn metrics_burst() -> Result_ {
    let extra = r#"
[[probe]]
name = "traffic"
kind = "prometheus"
path = "/metrics"
interval = "500ms"
timeout = "500ms"
requests = "http_requests_total"
errors = 'http_requests_total{code=~"5.."}'
"#;
    let rules = r#"
[[rule]]
name = "high: error_rate > 50% over 3s"
severity = "high"
when = "error_rate > 50%"
window = "3s"
min_samples = 3
probes = ["traffic"]
"#;
    let mut w = World::new(Opts {
        rules,
        extra,
        ..Opts::default()
    })
    .await;
    // `extra` must be a table after [rollback]; probes may follow it.
    w.start().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t0 = now_ms();
    w.blue.metrics(10, 9);
    let found = expect_rollback(&w, t0, Duration::from_secs(20)).await?;
    w.stop().await;
    Ok(found)
}

pub(super) async fn read_only_state(switches: bool) -> Result_ {
    // chattr +i on the database's folder: as root, chmod would not stop us.
    if !common::have_tool("chattr", "e2fsprogs") {
        return Err("skipped: no chattr".into());
    }
    let mut w = World::new(Opts::default()).await;
    // The HTTP listener on, for /healthz.
    let text = std::fs::read_to_string(&w.env.config).unwrap();
    std::fs::write(
        &w.env.config,
        text.replace("listen = \"off\"", "listen = \"127.0.0.1:0\""),
    )
    .unwrap();
    w.start().await;
    let state = w.env.path("state");
    let mut locked = Vec::new();
    for entry in std::fs::read_dir(&state).unwrap() {
        locked.push(entry.unwrap().path());
    }
    locked.push(state.clone());
    let status = Command::new("chattr")
        .arg("+i")
        .args(&locked)
        .status()
        .unwrap();
    if !status.success() {
        return Err("skipped: chattr +i does not work on this file system".into());
    }
    let unlock = || {
        let _ = Command::new("chattr").arg("-i").args(&locked).status();
    };
    let t0 = now_ms();
    w.blue.set(Mode::Status(503));
    // Still decides: the rule fires on blue although nothing can be
    // written.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !w
        .log()
        .lines()
        .any(|l| l.contains("rule fired on blue") && l.contains("critical"))
    {
        if Instant::now() > deadline {
            unlock();
            return Err(format!(
                "no decision with a read-only state dir:\n{}",
                w.log()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let decided = now_ms();
    if !switches {
        unlock();
        // Not a SIGTERM: its shutdown waits on the verdict writer's
        // retries against the broken database (left alone, see the
        // report); this scenario is about deciding.
        drop(w.daemon.take());
        return Ok(Found {
            outcome: "the daemon lives and decides with its state dir immutable".into(),
            detection: ms_since(t0, decided),
        });
    }
    // ... and switches, and says so on /healthz and in the log.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut moved = false;
    while Instant::now() < deadline {
        if w.nginx.serves().await.as_deref() == Some("green") {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at = now_ms();
    if !moved {
        unlock();
    }
    ensure!(moved, "no switch with a read-only state dir:\n{}", w.log());
    let healthz = || async {
        let log = w.log();
        const LINE: &str = "HTTP listener on http://";
        let Some(i) = log.find(LINE) else {
            return (0, String::new());
        };
        let addr = log[i + LINE.len()..]
            .split_whitespace()
            .next()
            .unwrap_or("");
        match reqwest::Client::new()
            .get(format!("http://{addr}/healthz"))
            .timeout(Duration::from_secs(3))
            .send()
            .await
        {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    };
    let (code, body) = healthz().await;
    let said = code == 503 && body.contains("cannot be written");
    let logged = w
        .log()
        .lines()
        .any(|l| l.contains("kept in memory") && l.contains("cannot be written"));
    unlock();
    ensure!(said, "/healthz during the fault: {code} {body}");
    ensure!(
        logged,
        "the log does not name the storage fault:\n{}",
        w.log()
    );
    // The fault ends: /healthz clears and the rollback's record is stored.
    let deadline = Instant::now() + Duration::from_secs(30);
    while healthz().await.0 != 200 {
        ensure!(
            Instant::now() < deadline,
            "/healthz still failing after the fault: {:?}\n{}",
            healthz().await,
            w.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The rollback may still be verifying: its record lands as it goes.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let incidents = w.incidents().await;
        if incidents.len() == 1 && incidents[0].state == rollbackd::model::IncidentState::Verified {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the kept incident: {incidents:?}\n{}",
            w.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(w.daemon.take());
    Ok(Found {
        outcome: "switched with the state dir immutable, /healthz said so, record stored after"
            .into(),
        detection: ms_since(t0, at),
    })
}

pub(super) async fn read_only_state_decides() -> Result_ {
    read_only_state(false).await
}

pub(super) async fn read_only_state_switches() -> Result_ {
    read_only_state(true).await
}

pub(super) async fn true_blindness() -> Result_ {
    // Every target unreachable: the colors at a loopback address where
    // nothing listens is refused (an answer); only a daemon in its own
    // network namespace, whose `lo` is down, gets no answer at all.
    if !common::have_tool("unshare", "util-linux") {
        return Err("skipped: no unshare".into());
    }
    let probe = Command::new("unshare")
        .args(["-n", "true"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !probe {
        return Err("skipped: unshare -n is not permitted here".into());
    }
    let w = World::new(Opts::default()).await;
    w.deploy("green", "v1");
    w.deploy("blue", "v2");
    let log = std::fs::File::create(w.env.path("daemon.log")).unwrap();
    let child = Command::new("unshare")
        .arg("-n")
        .arg(common::BIN)
        .arg("--config")
        .arg(&w.env.config)
        .args(["--log-format", "text", "run"])
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(child);
    let t0 = now_ms();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !w.log().contains("blind") {
        ensure!(Instant::now() < deadline, "never said blind:\n{}", w.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at = now_ms();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let alerts = w
        .log()
        .lines()
        .filter(|l| l.contains("alert:") && l.contains("blind"))
        .count();
    ensure!(alerts == 1, "{alerts} blind alerts:\n{}", w.log());
    ensure!(w.switches().is_empty(), "switched while blind");
    ensure!(w.incidents().await.is_empty(), "an incident while blind");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let _ = child.0.wait();
    Ok(Found {
        outcome: "blind: one alert, no rollback".into(),
        detection: ms_since(t0, at),
    })
}
