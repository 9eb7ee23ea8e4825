//! Right decisions in the states a blue/green host goes through (issue 10),
//! with the real `rollbackd run`: both colors broken, a stopped standby
//! with and without `prepare`, a restart right after a `deploy`, and a
//! second daemon on the same state directory. Plus the probe's side of
//! "an answer is not blindness".

use std::path::Path;
use std::time::Duration;

use rollbackd::config::Config;
use rollbackd::model::{Color, SampleStatus, now_ms};
use rollbackd::probe::Prober;
use rollbackd::store::{Incident, Store};

use crate::common::{self, Env, read, wait_for};
use crate::notify::Receiver;

/// A loopback address nobody listens on: connections are refused, as by a
/// stopped service.
async fn closed_addr() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// `fast_config` with a webhook receiver for every notice, `rollback`
/// lines added to `[rollback]`.
fn config(blue: &str, green: &str, dir: &Path, hook: &Receiver, rollback: &str) -> String {
    let (b, g) = (
        common::Color::url_only(blue),
        common::Color::url_only(green),
    );
    common::fast_config(
        &b,
        &g,
        dir,
        &format!(
            "{rollback}\n\n[[notify]]\nkind = \"webhook\"\nurl = \"{}/json\"\nformat = \"json\"\nmin_severity = \"low\"\n",
            hook.url
        ),
    )
}

/// The first incident, once it is closed.
async fn closed_incident(store: &Store, daemon_log: &Path) -> Incident {
    let closed = || async {
        store
            .incidents()
            .await
            .unwrap()
            .into_iter()
            .find(|i| !i.in_flight && i.closed_ms.is_some())
    };
    wait_for("a closed incident", Duration::from_secs(30), || async {
        closed().await.is_some()
    })
    .await;
    closed()
        .await
        .unwrap_or_else(|| panic!("no incident:\n{}", read(daemon_log)))
}

async fn notice(hook: &Receiver, event: &str) -> serde_json::Value {
    let find = || {
        hook.bodies("json")
            .into_iter()
            .find(|b| b["event"] == event)
    };
    wait_for(
        &format!("a {event:?} notice"),
        Duration::from_secs(10),
        || async { find().is_some() },
    )
    .await;
    find().unwrap()
}

// ---------------------------------------------------------------------------
// 1. An answer is not blindness.

#[tokio::test]
async fn a_refused_connection_is_an_answer_and_a_hang_is_not() {
    let hung = common::Color::start().await;
    hung.set(0);
    let refused = closed_addr().await;
    let dir = tempfile::tempdir().unwrap();
    let text = common::fast_config(
        &common::Color::url_only(&format!("http://{refused}")),
        &common::Color::url_only(&hung.url),
        dir.path(),
        "",
    );
    let config = Config::parse(&dir.path().join("rollbackd.toml"), &text).unwrap();
    let probe = config.probe("healthz").unwrap();
    let prober = Prober::new();
    let o = prober.run(&config, probe, Some(Color::Blue)).await;
    assert_eq!(o.status, SampleStatus::Failed, "{o:?}");
    assert!(o.status.answered(), "a refused connection answers: {o:?}");
    let o = prober.run(&config, probe, Some(Color::Green)).await;
    assert_eq!(o.status, SampleStatus::Timeout, "{o:?}");
    assert!(
        !o.status.answered(),
        "a hung service does not answer: {o:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_colors_answering_503_fire_and_the_rollback_is_refused() {
    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    let hook = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new(&config(&blue.url, &green.url, dir.path(), &hook, ""));
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

    blue.set(503);
    green.set(503);
    let incident = closed_incident(&store, &daemon.log).await;
    let log = read(&daemon.log);
    assert!(!log.contains("may be blind"), "a 503 is an answer:\n{log}");
    assert_eq!(
        incident.state,
        rollbackd::model::IncidentState::Refused,
        "{incident:#?}"
    );
    assert_eq!(incident.from_color, Some(Color::Blue));
    assert!(
        incident
            .rule
            .as_deref()
            .unwrap_or("")
            .starts_with("critical"),
        "{incident:#?}"
    );
    let outcome = incident.outcome.clone().unwrap_or_default();
    assert!(
        outcome.contains("green is not healthy") && outcome.contains("healthz: HTTP 503"),
        "the refusal names the standby's failing probe: {outcome}"
    );
    let n = notice(&hook, "rollback_refused").await;
    assert!(
        n["summary"].as_str().unwrap_or("").contains("healthz"),
        "{n:#}"
    );
    let status = env.cli_ok(&["status"]);
    assert!(
        status.contains("refused") && status.contains("healthz: HTTP 503"),
        "{status}"
    );
    assert!(!dir.path().join("switch.log").exists(), "nothing switched");
    // Refusals back off (a minute, then more): one incident, not one per
    // evaluation.
    assert_eq!(store.incidents().await.unwrap().len(), 1);
    assert!(daemon.stop().await.success());
}

// ---------------------------------------------------------------------------
// 3. A window judges one deployment.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_right_after_a_deploy_does_not_judge_it_on_the_old_samples() {
    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    let hook = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    // No cooldown to hide behind: a second rollback could run at once.
    // High rules only alert: what v2's failures would fire, if counted
    // against v3, is the Critical row, and this keeps the test about it
    // alone (the latency floor of `degradation` already keeps loopback
    // jitter from firing the default High rule).
    let env = Env::new(&config(
        &blue.url,
        &green.url,
        dir.path(),
        &hook,
        "cooldown = \"1s\"\n\n[actions]\nhigh = \"alert\"",
    ));
    env.cli_ok(&["deploy", "--color", "green", "--version", "v1"]);
    env.cli_ok(&["deploy", "--color", "blue", "--version", "v2"]);
    let store = env.store().await;

    // v2 fails and is rolled back to green.
    let daemon = env.daemon();
    blue.set(503);
    let first = closed_incident(&store, &daemon.log).await;
    assert_eq!(
        first.state,
        rollbackd::model::IncidentState::Verified,
        "{first:#?}\n{}",
        read(&daemon.log)
    );
    assert!(daemon.stop().await.success());

    // The pipeline deploys a healthy v3 to blue while the daemon is down;
    // v2's failing samples are still the latest blue ones in the database.
    blue.set(200);
    env.cli_ok(&["deploy", "--color", "blue", "--version", "v3"]);
    let v3 = store.latest_deployment().await.unwrap().unwrap();
    let restarted = now_ms();
    let daemon = env.daemon();
    // Judged on its own samples only: enough of them to fire Critical twice
    // over had they been failing.
    wait_for("ten samples of v3", Duration::from_secs(20), || async {
        store
            .samples(Some("healthz"), Some(Color::Blue), restarted)
            .await
            .unwrap()
            .iter()
            .filter(|s| s.deployment == Some(v3.id) && s.ok)
            .count()
            >= 10
    })
    .await;
    let log = read(&daemon.log);
    assert!(
        !log.contains("rule fired on blue: critical") && !log.contains("rollback started"),
        "v3 judged on v2's samples:\n{log}"
    );
    assert_eq!(store.incidents().await.unwrap().len(), 1, "{log}");
    assert!(daemon.stop().await.success());
}

// ---------------------------------------------------------------------------
// 2. A stopped standby is not a broken one when `prepare` can start it.

/// A stopped standby: its port is bound but not listening, so connections
/// are refused, and nobody else can take the port before it "starts".
fn stopped_service() -> (tokio::net::TcpSocket, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("http://{}", socket.local_addr().unwrap());
    (socket, url)
}

/// Start the stopped service: it listens and its `/healthz` answers "ok".
fn start_service(socket: tokio::net::TcpSocket) {
    let listener = socket.listen(64).unwrap();
    let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
}

async fn timeline(store: &Store, incident: i64) -> Vec<String> {
    store
        .incident_events(incident)
        .await
        .unwrap()
        .into_iter()
        .map(|e| format!("{}: {}", e.state, e.message))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_standby_is_prepared_verified_switched_to_then_the_bad_color_retired() {
    let blue = common::Color::start().await;
    let (green_socket, green_url) = stopped_service();
    let hook = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let steps = dir.path().join("steps.log");
    let step = |what: &str, var: &str| {
        format!(
            "[\"/bin/sh\", \"-c\", \"echo \\\"{what} $1\\\" >> {}\", \"{what}\", \"{{{var}}}\"]",
            steps.display()
        )
    };
    let env = Env::new(&config(
        &blue.url,
        &green_url,
        dir.path(),
        &hook,
        &format!(
            "prepare = {}\nretire = {}",
            step("prepare", "to"),
            step("retire", "from")
        ),
    ));
    env.cli_ok(&["deploy", "--color", "green", "--version", "v1"]);
    env.cli_ok(&["deploy", "--color", "blue", "--version", "v2"]);
    let store = env.store().await;
    let daemon = env.daemon();
    wait_for(
        "refused samples from green",
        Duration::from_secs(20),
        || async {
            store
                .samples(Some("healthz"), Some(Color::Green), 0)
                .await
                .unwrap()
                .len()
                >= 3
        },
    )
    .await;

    blue.set(503);
    wait_for("the prepare command", Duration::from_secs(20), || async {
        read(&steps).contains("prepare green")
    })
    .await;
    // What the prepare command stands for: the standby starts.
    start_service(green_socket);
    let incident = closed_incident(&store, &daemon.log).await;
    let events = timeline(&store, incident.id).await;
    assert_eq!(
        incident.state,
        rollbackd::model::IncidentState::Verified,
        "{incident:#?}\n{events:#?}"
    );
    assert_eq!(read(&steps), "prepare green\nretire blue\n");
    let order = [
        "preparing green",
        "prepared green",
        "target_verified: green (v1) passes",
        "switching: running the switch command",
        "switched: traffic moved to green",
        "retired blue",
    ];
    let mut at = 0;
    for needle in order {
        let found = events[at..]
            .iter()
            .position(|e| e.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} after step {at}: {events:#?}"));
        at += found + 1;
    }
    assert!(
        read(&dir.path().join("switch.log")).contains("blue green"),
        "switched once to green"
    );
    notice(&hook, "rollback_completed").await;
    assert!(!read(&daemon.log).contains("may be blind"));
    assert!(daemon.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_standby_without_prepare_refuses_naming_its_failing_probe() {
    let blue = common::Color::start().await;
    let (_green_socket, green_url) = stopped_service();
    let hook = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new(&config(&blue.url, &green_url, dir.path(), &hook, ""));
    env.cli_ok(&["deploy", "--color", "green", "--version", "v1"]);
    env.cli_ok(&["deploy", "--color", "blue", "--version", "v2"]);
    let store = env.store().await;
    let daemon = env.daemon();
    wait_for(
        "samples from both colors",
        Duration::from_secs(20),
        || async { store.samples(None, None, 0).await.unwrap().len() >= 4 },
    )
    .await;

    blue.set(503);
    let incident = closed_incident(&store, &daemon.log).await;
    assert_eq!(
        incident.state,
        rollbackd::model::IncidentState::Refused,
        "{incident:#?}"
    );
    let outcome = incident.outcome.clone().unwrap_or_default();
    assert!(
        outcome.contains("green is not healthy: healthz:") && outcome.contains("refused"),
        "{outcome}"
    );
    let n = notice(&hook, "rollback_refused").await;
    assert!(
        n["summary"].as_str().unwrap_or("").contains("healthz"),
        "{n:#}"
    );
    assert!(!dir.path().join("switch.log").exists(), "nothing switched");
    assert!(!read(&daemon.log).contains("may be blind"));
    assert!(daemon.stop().await.success());
}

// ---------------------------------------------------------------------------
// 7. One daemon per state_dir.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_the_same_state_dir_exits_naming_the_first_until_it_is_killed() {
    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    let hook = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new(&config(&blue.url, &green.url, dir.path(), &hook, ""));
    env.cli_ok(&["deploy", "--color", "blue", "--version", "v1"]);
    // No daemon yet: `status` says nothing is armed (issue 15: it used to
    // say "armed" with no daemon running).
    let status = env.cli_ok(&["status"]);
    assert!(status.contains("daemon: not running"), "{status}");
    assert!(
        status.contains("automatic rollbacks: none (no daemon running)"),
        "{status}"
    );
    let doc: serde_json::Value = serde_json::from_str(&env.cli_ok(&["status", "--json"])).unwrap();
    assert_eq!(doc["daemon"]["running"], false, "{doc:#}");
    let first = env.daemon();
    wait_for(
        "the first daemon running",
        Duration::from_secs(20),
        || async { read(&first.log).contains("rollbackd running") },
    )
    .await;
    // With it running, `status` names it, read from the lock it holds.
    let status = env.cli_ok(&["status"]);
    assert!(
        status.contains(&format!("daemon: running (pid {}) since ", first.pid())),
        "{status}"
    );
    assert!(status.contains("automatic rollbacks: armed"), "{status}");
    let doc: serde_json::Value = serde_json::from_str(&env.cli_ok(&["status", "--json"])).unwrap();
    assert_eq!(doc["daemon"]["running"], true, "{doc:#}");
    assert_eq!(doc["daemon"]["pid"], first.pid(), "{doc:#}");

    // The second exits at once, non-zero, naming the first's PID.
    let mut second = std::process::Command::new(common::BIN)
        .arg("--config")
        .arg(&env.config)
        .args(["--log-format", "text", "run"])
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    wait_for("the second daemon to exit", Duration::from_secs(10), || {
        let done = second.try_wait().unwrap();
        status = status.or(done);
        async move { done.is_some() }
    })
    .await;
    let status = status.unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(70), "{stderr}");
    assert!(
        stderr.contains(&format!("another rollbackd (pid {})", first.pid())),
        "{stderr}"
    );
    assert!(read(&first.log).contains("rollbackd running"));

    // kill -9 of the first: the kernel releases the lock; a new daemon
    // starts on the same state directory.
    let first_log = first.log.clone();
    first.signal(nix::sys::signal::Signal::SIGKILL);
    drop(first); // reaps it
    std::fs::rename(&first_log, env.path("first.log")).unwrap();
    let next = env.daemon();
    wait_for(
        "the next daemon running",
        Duration::from_secs(20),
        || async { read(&next.log).contains("rollbackd running") },
    )
    .await;
    assert!(next.stop().await.success());
}
