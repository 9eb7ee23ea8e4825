//! `rollbackd demo` runs the real daemon path end to end, with no config,
//! and finishes well within a minute.

use std::time::{Duration, Instant};

use crate::common;

#[test]
fn demo_detects_rolls_back_verifies_and_reports() {
    let started = Instant::now();
    let out = std::process::Command::new(common::BIN)
        .arg("demo")
        .env_remove("ROLLBACKD_CONFIG")
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    for needle in [
        // The defaults' two numbers, as the reason for them (issue 17).
        "the Critical rule asks for 5 in a row: a hard-down color is caught in about 1s 50ms (median)",
        "while 2% random failures would trip it about once every",
        "FAULT INJECTED",
        "target_verified  green (v1) passes its health probes",
        "switching",
        "verified         rolled back to green",
        "traffic is on green",
        "# Incident #1: critical automatic rollback of beluga",
        "## Root cause",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    // The demo leaves nothing behind.
    let dir = stdout
        .split("state in ")
        .nth(1)
        .and_then(|s| s.lines().next())
        .unwrap()
        .trim();
    assert!(!std::path::Path::new(dir).exists(), "{dir} was left behind");
}
