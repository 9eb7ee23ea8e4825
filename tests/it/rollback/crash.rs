//! kill -9 and restarts around a switch command: a rollback in flight when
//! its process died is finished or closed, never run twice.

use super::*;

/// A daemon config for the kill -9 tests: the active file, a switch command
/// that records each run, then blocks on a fifo until the test writes a
/// line, then writes `{to}` into the active file.
pub(super) fn crash_config(dir: &Path, blue: &str, green: &str, hook: &str) -> String {
    let script = format!(
        "echo $$ >> {runs}; read line < {fifo}; printf '%s\\n' \"$1\" > {active}",
        runs = dir.join("runs").display(),
        fifo = dir.join("fifo").display(),
        active = dir.join("active").display(),
    );
    let text = config_text(
        dir,
        blue,
        green,
        hook,
        Parts {
            top: "[active]\nfile = \"active\"",
            rollback: "timeout = \"2m\"",
            ..Parts::default()
        },
    );
    let default = format!(
        "command = [\"/bin/sh\", \"-c\", \"echo \\\"$1 $2\\\" >> {}\", \"switch\", \"{{from}}\", \"{{to}}\"]",
        dir.join("switch.log").display()
    );
    assert!(text.contains(&default));
    text.replace(
        &default,
        &format!(
            "command = [\"/bin/sh\", \"-c\", {}, \"switch\", \"{{to}}\"]",
            toml_string(&script)
        ),
    )
}

pub(super) fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

pub(super) fn mkfifo(path: &Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfifo");
}

/// Let the blocked switch command go on.
pub(super) async fn release(fifo: PathBuf) {
    tokio::task::spawn_blocking(move || std::fs::write(fifo, "go\n").unwrap())
        .await
        .unwrap();
}

pub(super) async fn crash_setup() -> (Env, common::Color, common::Color, Receiver) {
    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    let hook = Receiver::start().await;
    let env = Env::new("");
    let dir = env.dir.path();
    std::fs::write(
        &env.config,
        crash_config(dir, &blue.url, &green.url, &hook.url),
    )
    .unwrap();
    mkfifo(&dir.join("fifo"));
    // The pipeline deployed v1 to green, then v2 to blue and switched.
    env.cli_ok(&["deploy", "--color", "green", "--version", "v1"]);
    std::fs::write(dir.join("active"), "blue\n").unwrap();
    env.cli_ok(&["deploy", "--color", "blue", "--version", "v2"]);
    (env, blue, green, hook)
}

/// Wait until the daemon's rollback is blocked inside the switch command.
pub(super) async fn wait_switching(env: &Env, store: &Store, daemon: &common::Daemon) -> i64 {
    wait_for(
        "the switch command to be running",
        Duration::from_secs(20),
        || async {
            !common::read(&env.path("runs")).is_empty()
                && store
                    .in_flight_incident()
                    .await
                    .unwrap()
                    .is_some_and(|i| i.state == IncidentState::Switching && i.switch_pgid.is_some())
        },
    )
    .await;
    let inc = store.in_flight_incident().await.unwrap().unwrap();
    assert!(
        inc.holder
            .as_deref()
            .unwrap_or("")
            .starts_with(&format!("{}/", daemon.pid())),
        "the daemon holds the slot: {:?}",
        inc.holder
    );
    inc.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(super) async fn a_restart_waits_for_a_switch_command_that_outlived_the_daemon() {
    let (env, blue, _green, _hook) = crash_setup().await;
    let store = env.store().await;
    let daemon = env.daemon();
    blue.set(503);
    let id = wait_switching(&env, &store, &daemon).await;
    daemon.signal(nix::sys::signal::Signal::SIGKILL);
    drop(daemon);

    // The new daemon starts while the orphaned command still blocks: it
    // must wait for it, not declare the outcome unknown.
    let daemon = env.daemon();
    wait_for(
        "the restart to wait for the command",
        Duration::from_secs(60),
        || async {
            store
                .incident_events(id)
                .await
                .unwrap()
                .iter()
                .any(|e| e.message.contains("is still running after the restart"))
        },
    )
    .await;
    assert!(store.incident(id).await.unwrap().in_flight);
    release(env.path("fifo")).await;
    wait_for("the incident to close", Duration::from_secs(60), || async {
        !store.incident(id).await.unwrap().in_flight
    })
    .await;
    let inc = store.incident(id).await.unwrap();
    assert_eq!(
        inc.state,
        IncidentState::Verified,
        "{}",
        common::read(&daemon.log)
    );
    assert_eq!(
        common::read(&env.path("runs")).lines().count(),
        1,
        "the switch command ran exactly once"
    );
    let messages: Vec<String> = store
        .incident_events(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("switch command running as process group ")),
        "{messages:?}"
    );
    assert!(daemon.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(super) async fn kill_9_during_the_switch_then_restart_finishes_it_without_rerunning() {
    let (env, blue, _green, hook) = crash_setup().await;
    let store = env.store().await;
    let daemon = env.daemon();
    blue.set(503);
    let id = wait_switching(&env, &store, &daemon).await;

    // Two rollbacks can never run at once: the CLI is turned away.
    let out = env.cli(&["rollback", "--reason", "me too"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already in flight"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    daemon.signal(nix::sys::signal::Signal::SIGKILL);
    drop(daemon);
    let inc = store.incident(id).await.unwrap();
    assert_eq!((inc.state.as_str(), inc.in_flight), ("switching", true));

    // The orphaned command finishes the switch while no daemon runs.
    release(env.path("fifo")).await;
    wait_for("the switch to land", Duration::from_secs(10), || async {
        common::read(&env.path("active")).trim() == "green"
    })
    .await;

    let daemon = env.daemon();
    wait_for("the incident to close", Duration::from_secs(20), || async {
        !store.incident(id).await.unwrap().in_flight
    })
    .await;
    let inc = store.incident(id).await.unwrap();
    assert_eq!(
        inc.state,
        IncidentState::Verified,
        "{}",
        common::read(&daemon.log)
    );
    let messages: Vec<String> = store
        .incident_events(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert!(
        messages.iter().any(|m| m.contains("resumed after restart")),
        "{messages:?}"
    );
    let latest = store.latest_deployment().await.unwrap().unwrap();
    assert_eq!(
        (latest.color, latest.version.as_str()),
        (Color::Green, "v1")
    );
    // Blue keeps failing as the standby; more samples, nothing more runs.
    let after = now_ms();
    wait_for("10 more blue samples", Duration::from_secs(20), || async {
        store
            .samples(Some("healthz"), Some(Color::Blue), after)
            .await
            .unwrap()
            .len()
            >= 10
    })
    .await;
    assert_eq!(
        common::read(&env.path("runs")).lines().count(),
        1,
        "the switch command ran exactly once"
    );
    assert_eq!(store.incidents().await.unwrap().len(), 1);
    // The restarted daemon sent the completion the first one could not.
    wait_for("the completion notice", Duration::from_secs(10), || async {
        hook.bodies("json")
            .iter()
            .any(|b| b["event"] == "rollback_completed" && b["incident"] == id)
    })
    .await;
    assert!(daemon.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(super) async fn kill_9_with_the_switch_unfinished_closes_the_incident_and_never_reruns() {
    let (env, blue, _green, _hook) = crash_setup().await;
    let store = env.store().await;
    let daemon = env.daemon();
    blue.set(503);
    let id = wait_switching(&env, &store, &daemon).await;
    daemon.signal(nix::sys::signal::Signal::SIGKILL);
    drop(daemon);
    // The command dies too (say the host's OOM killer took both).
    let pid: i32 = common::read(&env.path("runs")).trim().parse().unwrap();
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("the command to die", Duration::from_secs(5), || async {
        gone(pid)
    })
    .await;

    let daemon = env.daemon();
    wait_for("the incident to close", Duration::from_secs(20), || async {
        !store.incident(id).await.unwrap().in_flight
    })
    .await;
    let inc = store.incident(id).await.unwrap();
    assert_eq!(inc.state, IncidentState::Failed);
    assert!(
        inc.outcome
            .as_deref()
            .unwrap_or("")
            .contains("NOT run again"),
        "{:?}",
        inc.outcome
    );
    // Blue still fails and is still active, but the command that may have
    // run starts the cooldown: no second run, no second incident.
    let after = now_ms();
    wait_for("10 more blue samples", Duration::from_secs(20), || async {
        store
            .samples(Some("healthz"), Some(Color::Blue), after)
            .await
            .unwrap()
            .len()
            >= 10
    })
    .await;
    assert_eq!(common::read(&env.path("runs")).lines().count(), 1);
    assert_eq!(store.incidents().await.unwrap().len(), 1);
    assert!(store.in_flight_incident().await.unwrap().is_none());
    assert!(daemon.stop().await.success());
}
