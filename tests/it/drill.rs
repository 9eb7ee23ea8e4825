//! `rollbackd drill` end to end: the real daemon binary, the real `drill`
//! binary meeting it only through the database, and a real fault — the
//! active color is a separate HTTP server process (python3's http.server)
//! that the fault command kills. Also: a drill whose expectation fails
//! exits 1, and the daemon's hub withholds a drill's notices unless the
//! drill asked for them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rollbackd::config::NotifyFormat;
use rollbackd::model::{Severity, now_ms};
use rollbackd::notifier::{Event, Hub, Notice, Policy};
use serde_json::Value;

use crate::common::{self, Env, have_tool, wait_for};
use crate::notify::Receiver;

/// A color served by its own process: `python3 -m http.server` over a
/// folder holding `healthz` ("ok").
struct ProcessColor {
    child: Child,
    url: String,
}

impl ProcessColor {
    fn start(dir: &std::path::Path) -> ProcessColor {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("healthz"), "ok").unwrap();
        let mut child = Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // It binds before it prints "Serving HTTP on 127.0.0.1 port N".
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        ProcessColor {
            url: format!("http://127.0.0.1:{port}"),
            child,
        }
    }
}

impl Drop for ProcessColor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(blue: &str, green: &str, dir: &std::path::Path, hook: &str) -> String {
    include_str!("../../config/test-fast.toml")
        .replace("@BLUE@", blue)
        .replace("@GREEN@", green)
        .replace(
            "@SWITCH_LOG@",
            &dir.join("switch.log").display().to_string(),
        )
        .replace(
            "@EXTRA@",
            &format!(
                "\n[[notify]]\nkind = \"webhook\"\nurl = \"{hook}/json\"\nformat = \"json\"\nmin_severity = \"low\"\n"
            ),
        )
}

async fn cli(env: &Env, args: &[&str]) -> std::process::Output {
    let (config, args): (_, Vec<String>) = (
        env.config.clone(),
        args.iter().map(|s| s.to_string()).collect(),
    );
    tokio::task::spawn_blocking(move || {
        Command::new(common::BIN)
            .arg("--config")
            .arg(config)
            .args(args)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_kills_the_active_color_times_the_rollback_and_keeps_it_out_of_notices_and_availability()
 {
    if !have_tool("python3", "python3") {
        return;
    }
    let env = Env::new("");
    let blue = ProcessColor::start(&env.path("blue-root"));
    let green = common::Color::start().await;
    let hook = Receiver::start().await;
    std::fs::write(
        &env.config,
        config(&blue.url, &green.url, env.dir.path(), &hook.url),
    )
    .unwrap();
    env.cli_ok(&["deploy", "--color", "green", "--version", "v1"]);
    env.cli_ok(&["deploy", "--color", "blue", "--version", "v2"]);
    let daemon = env.daemon();
    let store = env.store().await;
    wait_for(
        "healthy samples of both colors",
        Duration::from_secs(20),
        || async {
            let s = store.samples(None, None, 0).await.unwrap();
            s.iter().filter(|s| s.ok).count() >= 6
        },
    )
    .await;

    // 0. A drill interrupted (SIGTERM) stops watching, still restores, and
    //    fails: "nothing" needs the whole timeout.
    let restored_early = env.path("restored-early");
    let child = Command::new(common::BIN)
        .arg("--config")
        .arg(&env.config)
        .args([
            "drill",
            "--inject",
            "/bin/true",
            "--expect",
            "nothing",
            "--timeout",
            "60s",
        ])
        .arg("--restore")
        .arg(format!("/usr/bin/touch '{}'", restored_early.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the drill marker", Duration::from_secs(10), || async {
        store.drill_at(now_ms(), None).await.unwrap().is_some()
    })
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("note: interrupted"), "{stdout}");
    assert!(
        restored_early.exists(),
        "the restore did not run after SIGTERM"
    );

    // 1. A drill whose expectation does not hold: nothing is broken, so no
    //    rollback comes. Exit 1, and it says why.
    let out = cli(
        &env,
        &[
            "drill",
            "--inject",
            "/bin/true",
            "--expect",
            "rollback",
            "--timeout",
            "1500ms",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("FAILED: expected rollback, saw nothing"),
        "{stdout}"
    );

    // 2. The real drill: kill blue's server; expect the rollback.
    let restored = env.path("restored");
    let out = cli(
        &env,
        &[
            "drill",
            "--inject",
            &format!("/bin/kill {}", blue.child.id()),
            "--restore",
            &format!("/usr/bin/touch '{}'", restored.display()),
            "--expect",
            "rollback",
            "--timeout",
            "40s",
            "--markdown",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{stderr}\n{}",
        common::read(&daemon.log)
    );
    assert!(
        stdout.contains("**PASSED: expected rollback, saw it**"),
        "{stdout}"
    );
    // Every stage was reached, each with its time after the fault, in order.
    let mut last = -1.0;
    for stage in [
        "first failing sample",
        "rule fired",
        "rollback started",
        "switched",
        "verified",
    ] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {stage} |")))
            .unwrap_or_else(|| panic!("no {stage} row in\n{stdout}"));
        let after: f64 = row
            .split('|')
            .nth(2)
            .unwrap()
            .trim()
            .trim_start_matches('+')
            .trim_end_matches('s')
            .parse()
            .unwrap_or_else(|_| panic!("{stage} not reached: {row}"));
        assert!(
            after >= last,
            "{stage} at +{after}s came before +{last}s\n{stdout}"
        );
        last = after;
    }
    assert!(restored.exists(), "the restore command did not run");
    assert!(
        stderr.contains("drill: restoring: /usr/bin/touch"),
        "{stderr}"
    );

    // The incident is the drill's; the switch really ran.
    let incidents = store.incidents_since(0).await.unwrap();
    let (incident, drill) = incidents.last().unwrap();
    assert_eq!(incident.state, rollbackd::model::IncidentState::Verified);
    assert!(drill.is_some(), "the incident is not marked as a drill");
    assert!(common::read(&env.path("switch.log")).starts_with("blue green v1|"));

    // The daemon withheld its notices (it says so), and none arrived.
    wait_for(
        "the daemon to withhold a notice",
        Duration::from_secs(10),
        || async { common::read(&daemon.log).contains("notification withheld: drill #") },
    )
    .await;
    let rollback_notices: Vec<Value> = hook
        .bodies("json")
        .into_iter()
        .filter(|b| b["incident"] == incident.id)
        .collect();
    assert!(
        rollback_notices.is_empty(),
        "sent during the drill: {rollback_notices:?}"
    );

    // Availability leaves the drill's samples out: blue's deployment was
    // healthy whenever no drill ran.
    let out = cli(&env, &["report", "--deployment", "2", "--json"]).await;
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["deployment"]["version"], "v2");
    assert!(report["drill_samples"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(report["availability_pct"], 100.0, "{report}");

    daemon.stop().await;
}

#[tokio::test]
async fn the_daemon_hub_withholds_a_drill_s_notices_unless_it_asked_for_them() {
    let env = Env::new("");
    let store = env.store().await;
    let hook = Receiver::start().await;
    let target = hook.target("json", NotifyFormat::Json, Severity::Low);
    let (hub, worker) = Hub::start_with_drills(
        Policy {
            attempts: 1,
            backoff: Duration::from_millis(10),
            timeout: Duration::from_secs(2),
        },
        store.clone(),
    );
    let notice =
        |summary: &str| Notice::new(Event::Alert, Severity::High, "beluga", summary.to_owned());
    let now = now_ms();
    let quiet = store
        .start_drill(now, now + 60_000, "[\"/bin/true\"]", "alert", false)
        .await
        .unwrap();
    hub.send(
        std::slice::from_ref(&target),
        notice("during a quiet drill"),
    );
    store
        .end_drill(quiet, now_ms(), "alert", true)
        .await
        .unwrap();
    let loud = store
        .start_drill(
            now_ms() + 1,
            now_ms() + 60_000,
            "[\"/bin/true\"]",
            "alert",
            true,
        )
        .await
        .unwrap();
    let mut n = notice("during a drill with --notify");
    n.at_ms = now_ms() + 2;
    hub.send(std::slice::from_ref(&target), n);
    wait_for("the drill's notice", Duration::from_secs(5), || async {
        !hook.bodies("json").is_empty()
    })
    .await;
    drop(hub);
    worker.await.unwrap();
    let got = hook.bodies("json");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["summary"], "during a drill with --notify");
    assert_eq!(got[0]["drill"], loud);
}

#[test]
fn a_fault_that_needs_a_shell_is_a_usage_error() {
    let env = Env::new("");
    let out = env.cli(&["drill", "--inject", "kill $(pidof beluga) | true"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("never run through one"), "{stderr}");
}
