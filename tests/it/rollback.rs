//! The guarded rollback: its guards (previous deployment, target health,
//! quarantine, cooldown, pause, escalation, dry run), its timeline and
//! notifications, crash recovery (`reconcile`) for every state, and kill -9
//! of a real `rollbackd run` in the middle of a slow switch command.
//!
//! In-process tests drive `rollback::execute` with real HTTP colors, a real
//! SQLite file and real commands; the daemon tests use the real binary.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use rollbackd::config::Config;
use rollbackd::model::{Color, IncidentState, Severity, now_ms};
use rollbackd::notifier::{Hub, Policy};
use rollbackd::probe::Prober;
use rollbackd::rollback::{self, Context, Outcome, Request, Trigger};
use rollbackd::store::Store;
use serde_json::json;

use crate::common::{self, Env, wait_for};
use crate::notify::Receiver;

/// Sections of a test config; the switch command appends "FROM TO" to
/// `switch.log`.
#[derive(Default)]
struct Parts<'a> {
    daemon: &'a str,
    top: &'a str,
    rollback: &'a str,
}

fn config_text(dir: &Path, blue: &str, green: &str, hook: &str, p: Parts) -> String {
    let log = dir.join("switch.log");
    format!(
        r#"
[daemon]
state_dir = "state"
listen = "off"
watch_config = false
{daemon}

[service]
name = "beluga"

[colors.blue]
base_url = "{blue}"
[colors.green]
base_url = "{green}"

[[notify]]
kind = "webhook"
url = "{hook}/json"
format = "json"
min_severity = "low"

{top}

[[probe]]
name = "healthz"
kind = "http"
path = "/healthz"
interval = "200ms"
timeout = "200ms"
body_contains = "ok"
health = true

[rollback]
command = ["/bin/sh", "-c", "echo \"$1 $2\" >> {log}", "switch", "{{from}}", "{{to}}"]
{rollback}
"#,
        daemon = p.daemon,
        top = p.top,
        // Unless the test says otherwise, the restored color gets 3s.
        rollback = if p.rollback.contains("verify_after") {
            p.rollback.to_owned()
        } else {
            format!("verify_after = \"3s\"\n{}", p.rollback)
        },
        log = log.display(),
    )
}

/// One in-process world: two colors, a webhook receiver, a store.
struct World {
    env: Env,
    // Serves blue's /healthz for as long as the world lives.
    _blue: common::Color,
    green: common::Color,
    hook: Receiver,
    config: Config,
    store: Store,
    prober: Prober,
    hub: Hub,
}

impl World {
    async fn new(p: Parts<'_>) -> World {
        let blue = common::Color::start().await;
        let green = common::Color::start().await;
        let hook = Receiver::start().await;
        let env = Env::new("");
        let text = config_text(env.dir.path(), &blue.url, &green.url, &hook.url, p);
        std::fs::write(&env.config, text).unwrap();
        let config = Config::load(&env.config).unwrap();
        let store = env.store().await;
        let (hub, _worker) = Hub::start(Policy {
            attempts: 2,
            backoff: Duration::from_millis(20),
            timeout: Duration::from_secs(2),
        });
        World {
            env,
            _blue: blue,
            green,
            hook,
            config,
            store,
            prober: Prober::new(),
            hub,
        }
    }

    fn ctx(&self) -> Context<'_> {
        Context {
            config: &self.config,
            store: &self.store,
            prober: &self.prober,
            notify: Some(&self.hub),
        }
    }

    async fn execute(&self, req: Request) -> Outcome {
        rollback::execute(&self.ctx(), req).await.unwrap()
    }

    async fn deploy(&self, color: Color, version: &str) -> i64 {
        self.store
            .record_deployment(color, version, "cli", now_ms())
            .await
            .unwrap()
            .id
    }

    fn switches(&self) -> Vec<String> {
        common::read(&self.env.path("switch.log"))
            .lines()
            .map(str::to_owned)
            .collect()
    }

    async fn states(&self, id: i64) -> Vec<String> {
        self.store
            .incident_events(id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.state.to_string())
            .collect()
    }

    /// Wait for a webhook notice of this event and incident.
    async fn notice(&self, event: &str, incident: i64) -> serde_json::Value {
        let find = || {
            self.hook
                .bodies("json")
                .into_iter()
                .find(|b| b["event"] == event && b["incident"] == incident)
        };
        wait_for(
            &format!("a {event} notice for #{incident}"),
            Duration::from_secs(5),
            || async { find().is_some() },
        )
        .await;
        find().unwrap()
    }
}

fn automatic() -> Request {
    Request {
        trigger: Trigger::Automatic,
        severity: Severity::Critical,
        rule: Some("critical: health_failures >= 3 over 10m".into()),
        reason: "health_failures >= 3 on the active color".into(),
        evidence: json!({ "rule": "critical: health_failures >= 3 over 10m", "color": "blue" }),
        since_ms: Some(now_ms() - 3000),
    }
}

fn manual(reason: &str) -> Request {
    Request {
        trigger: Trigger::Manual,
        severity: Severity::Critical,
        rule: None,
        reason: reason.into(),
        evidence: json!({ "manual": true, "reason": reason }),
        since_ms: None,
    }
}

#[tokio::test]
async fn automatic_rollback_records_the_timeline_quarantines_and_cools_down() {
    let mut w = World::new(Parts::default()).await;
    w.deploy(Color::Green, "v1").await;
    let v2 = w.deploy(Color::Blue, "v2").await;
    let req = automatic();
    let since = req.since_ms.unwrap();

    let Outcome::Verified { incident, to } = w.execute(req).await else {
        panic!("expected a verified rollback");
    };
    assert_eq!(to, Color::Green);
    assert_eq!(w.switches(), ["blue green"]);
    let events = w.store.incident_events(incident).await.unwrap();
    let states: Vec<&str> = events.iter().map(|e| e.state.as_str()).collect();
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
    assert_eq!(events[0].at_ms, since, "detected when the trouble began");
    let inc = w.store.incident(incident).await.unwrap();
    assert!(!inc.in_flight);
    assert!(
        inc.downtime_ms.unwrap() >= 3000,
        "downtime runs from detection to validation: {:?}",
        inc.downtime_ms
    );
    assert_eq!(
        (inc.from_version.as_deref(), inc.to_version.as_deref()),
        (Some("v2"), Some("v1"))
    );
    let started = w.notice("rollback_started", incident).await;
    assert_eq!(started["severity"], "critical");
    let done = w.notice("rollback_completed", incident).await;
    assert_eq!(
        (&done["from"], &done["to"]),
        (&json!("blue"), &json!("green"))
    );

    // The rolled-back deployment is quarantined; the restored one is not.
    let deps = w.store.deployments().await.unwrap();
    assert!(deps.iter().find(|d| d.id == v2).unwrap().quarantined);
    let latest = w.store.latest_deployment().await.unwrap().unwrap();
    assert_eq!(
        (latest.color, latest.version.as_str(), latest.quarantined),
        (Color::Green, "v1", false)
    );

    // Cooldown: the next automatic rollback within 30m is not attempted.
    match w.execute(automatic()).await {
        Outcome::Skipped { why, .. } => assert!(why.contains("cooldown"), "{why}"),
        other => panic!("expected a cooldown skip, got {other:?}"),
    }
    assert_eq!(w.store.incidents().await.unwrap().len(), 1);

    // Without the cooldown, quarantine still refuses to restore v2.
    w.config.rollback.cooldown = Duration::ZERO;
    match w.execute(automatic()).await {
        Outcome::Refused { incident, why } => {
            assert!(why.contains("quarantined"), "{why}");
            let n = w.notice("rollback_refused", incident).await;
            assert!(n["summary"].as_str().unwrap().contains("quarantined"));
            assert_eq!(
                w.store.incident(incident).await.unwrap().state,
                IncidentState::Refused
            );
        }
        other => panic!("expected a quarantine refusal, got {other:?}"),
    }
    assert_eq!(w.switches().len(), 1, "a refusal runs nothing");

    // A new deploy of blue (even of v2 again), then green v3 failing: the
    // new blue deployment starts clean and may be restored automatically.
    w.deploy(Color::Blue, "v2").await;
    w.deploy(Color::Green, "v3").await;
    let Outcome::Verified { to, .. } = w.execute(automatic()).await else {
        panic!("a new deployment is not quarantined");
    };
    assert_eq!(to, Color::Blue);
    assert_eq!(w.switches(), ["blue green", "green blue"]);
}

#[tokio::test]
async fn refusals_are_incidents_that_alert_and_do_not_start_the_cooldown() {
    let w = World::new(Parts::default()).await;
    w.deploy(Color::Blue, "v1").await;
    // Nothing to go back to.
    let Outcome::Refused { incident, why } = w.execute(manual("bad deploy")).await else {
        panic!("expected a refusal with no previous deployment");
    };
    assert!(why.contains("no previous deployment"), "{why}");
    w.notice("rollback_refused", incident).await;

    // A standby failing its health probes is never switched onto.
    w.deploy(Color::Green, "v2").await;
    w.deploy(Color::Blue, "v3").await;
    w.green.set(503);
    let Outcome::Refused { incident, why } = w.execute(automatic()).await else {
        panic!("expected a refusal onto an unhealthy standby");
    };
    assert!(why.contains("green is not healthy"), "{why}");
    let inc = w.store.incident(incident).await.unwrap();
    assert_eq!((inc.state.as_str(), inc.in_flight), ("refused", false));
    assert_eq!(w.states(incident).await.last().unwrap(), "refused");
    w.notice("rollback_refused", incident).await;
    assert!(w.switches().is_empty());

    // A pause holds automatic rollbacks, not manual ones.
    w.green.set(200);
    let now = now_ms();
    w.store
        .pause(now, now + 60_000, "maintenance")
        .await
        .unwrap();
    match w.execute(automatic()).await {
        Outcome::Skipped { why, .. } => {
            assert!(why.contains("paused") && why.contains("maintenance"))
        }
        other => panic!("expected a pause skip, got {other:?}"),
    }
    w.store.resume(now_ms()).await.unwrap();
    // The refusal did not start a cooldown: this one runs.
    let Outcome::Verified { to, .. } = w.execute(automatic()).await else {
        panic!("expected the rollback once green is healthy");
    };
    assert_eq!(to, Color::Green);
    assert_eq!(w.switches(), ["blue green"]);
}

#[tokio::test]
async fn dry_run_does_everything_but_the_command() {
    let w = World::new(Parts {
        daemon: "dry_run = true",
        ..Parts::default()
    })
    .await;
    w.deploy(Color::Green, "v1").await;
    w.deploy(Color::Blue, "v2").await;
    let Outcome::DryRun { incident, to } = w.execute(automatic()).await else {
        panic!("expected a dry run");
    };
    assert_eq!(to, Color::Green);
    assert!(w.switches().is_empty(), "the command never runs in dry run");
    let inc = w.store.incident(incident).await.unwrap();
    assert_eq!(inc.state, IncidentState::DryRun);
    assert!(
        inc.outcome
            .unwrap()
            .contains("would roll back blue -> green")
    );
    w.notice("rollback_dry_run", incident).await;
    let latest = w.store.latest_deployment().await.unwrap().unwrap();
    assert_eq!(latest.color, Color::Blue, "nothing was switched");
    // In dry run the cooldown is simulated too: one incident, not one a minute.
    assert!(matches!(
        w.execute(automatic()).await,
        Outcome::Skipped { .. }
    ));
}

#[tokio::test]
async fn a_restored_color_that_stays_unhealthy_escalates_and_holds_automatic_switches() {
    let mut w = World::new(Parts {
        rollback: "verify_target = false\nverify_after = \"600ms\"\ncooldown = \"0s\"",
        ..Parts::default()
    })
    .await;
    w.deploy(Color::Green, "v1").await;
    w.deploy(Color::Blue, "v2").await;
    w.green.set(503);
    let Outcome::Escalated { incident, why } = w.execute(automatic()).await else {
        panic!("expected an escalation");
    };
    assert!(why.contains("no further automatic switch"), "{why}");
    assert_eq!(w.switches(), ["blue green"]);
    let n = w.notice("rollback_escalated", incident).await;
    assert_eq!(n["severity"], "critical");
    assert_eq!(
        w.store.incident(incident).await.unwrap().state,
        IncidentState::Escalated
    );

    // No second automatic switch, even with quarantine off and no cooldown.
    w.config.rollback.quarantine = false;
    match w.execute(automatic()).await {
        Outcome::Skipped { why, .. } => assert!(why.contains("escalated"), "{why}"),
        other => panic!("expected an escalation hold, got {other:?}"),
    }
    // Deployments recorded afterwards (the pipeline shipped a fix to blue,
    // then v4 to green) lift the hold: v4 failing rolls back to blue v3.
    w.deploy(Color::Blue, "v3").await;
    w.deploy(Color::Green, "v4").await;
    let outcome = w.execute(automatic()).await;
    assert!(
        matches!(
            outcome,
            Outcome::Verified {
                to: Color::Blue,
                ..
            }
        ),
        "{outcome:?}"
    );
}

/// A color whose health is a file: 200 while `path` exists.
async fn file_color(path: PathBuf) -> String {
    let app = Router::new()
        .route(
            "/healthz",
            get(|State(p): State<PathBuf>| async move {
                if p.exists() {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "stopped")
                }
            }),
        )
        .with_state(path);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test]
async fn prepare_restarts_the_standby_and_retire_stops_the_old_color() {
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("green.up");
    let green = file_color(up.clone()).await;
    let blue = common::Color::start().await;
    let hook = Receiver::start().await;
    let retired = dir.path().join("retired");
    let rollback = format!(
        "prepare = [\"/usr/bin/touch\", \"{}/{{to}}.up\"]\nretire = [\"/bin/sh\", \"-c\", \"echo $1 > {}\", \"retire\", \"{{from}}\"]",
        dir.path().display(),
        retired.display()
    );
    let env = Env::new("");
    let text = config_text(
        env.dir.path(),
        &blue.url,
        &green,
        &hook.url,
        Parts {
            rollback: &rollback,
            ..Parts::default()
        },
    );
    std::fs::write(&env.config, text).unwrap();
    let config = Config::load(&env.config).unwrap();
    let store = env.store().await;
    store
        .record_deployment(Color::Green, "v1", "cli", 1)
        .await
        .unwrap();
    store
        .record_deployment(Color::Blue, "v2", "cli", 2)
        .await
        .unwrap();
    let prober = Prober::new();
    let ctx = Context {
        config: &config,
        store: &store,
        prober: &prober,
        notify: None,
    };
    assert!(!up.exists(), "green starts stopped");
    let outcome = rollback::execute(&ctx, manual("v2 corrupts queues"))
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Verified { .. }), "{outcome:?}");
    assert!(up.exists(), "prepare started green");
    assert_eq!(common::read(&retired).trim(), "blue", "retire stopped blue");
    let events = store.incident_events(1).await.unwrap();
    let text: Vec<String> = events.iter().map(|e| e.message.clone()).collect();
    let prepared = text.iter().position(|m| m.starts_with("prepared green"));
    let verified = events
        .iter()
        .position(|e| e.state == IncidentState::TargetVerified);
    assert!(
        prepared.is_some() && prepared < verified,
        "prepare runs before the target is verified: {text:?}"
    );
    assert!(
        text.iter().any(|m| m.starts_with("retired blue")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|m| m.starts_with("manual rollback requested")),
        "{text:?}"
    );
}

fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn a_hanging_switch_command_is_killed_with_its_group_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let rollback = format!(
        "timeout = \"500ms\"\ncommand = [\"/bin/sh\", \"-c\", \"sleep 60 & echo $! > {}; wait\"]",
        pidfile.display()
    );
    // Replace the default command: a config with this one only.
    let w = World::new(Parts::default()).await;
    let text = common::read(&w.env.config).replace(
        &format!(
            "command = [\"/bin/sh\", \"-c\", \"echo \\\"$1 $2\\\" >> {}\", \"switch\", \"{{from}}\", \"{{to}}\"]",
            w.env.path("switch.log").display()
        ),
        &rollback,
    );
    assert!(text.contains("sleep 60"), "the command was replaced");
    std::fs::write(&w.env.config, text).unwrap();
    let config = Config::load(&w.env.config).unwrap();
    w.deploy(Color::Green, "v1").await;
    w.deploy(Color::Blue, "v2").await;
    let ctx = Context {
        config: &config,
        ..w.ctx()
    };
    let started = std::time::Instant::now();
    let outcome = rollback::execute(&ctx, automatic()).await.unwrap();
    let Outcome::Failed { incident, why } = outcome else {
        panic!("expected a failure, got {outcome:?}");
    };
    assert!(why.contains("timed out"), "{why}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let child: i32 = common::read(&pidfile).trim().parse().unwrap();
    wait_for(
        "the command's background child to be killed",
        Duration::from_secs(5),
        || async { gone(child) },
    )
    .await;
    w.notice("rollback_failed", incident).await;
    // The command ran: the cooldown counts it, no automatic retry.
    assert!(matches!(
        rollback::execute(&ctx, automatic()).await.unwrap(),
        Outcome::Skipped { .. }
    ));
}

/// A holder id for a process that has exited.
fn dead_holder() -> String {
    let mut child = std::process::Command::new("/bin/true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    // Start time 1 never matches a live process that reused the pid.
    format!("{pid}/1")
}

async fn stranded(w: &World, holder: String, states: &[IncidentState]) -> i64 {
    let new = rollbackd::store::NewIncident {
        at_ms: now_ms(),
        trigger_kind: Trigger::Automatic,
        severity: Severity::Critical,
        rule: Some("critical: health_failures >= 3 over 10m".into()),
        reason: "test".into(),
        evidence: "{}".into(),
        from_color: Some(Color::Blue),
        to_color: Some(Color::Green),
        from_version: Some("v2".into()),
        to_version: Some("v1".into()),
        in_flight: true,
        holder: Some(holder),
    };
    let id = w
        .store
        .open_incident(&new, IncidentState::Requested, "requested")
        .await
        .unwrap();
    for s in states {
        w.store
            .advance_incident(id, now_ms(), *s, s.as_str())
            .await
            .unwrap();
    }
    id
}

#[tokio::test]
async fn reconcile_closes_or_resumes_what_a_dead_process_left_and_waits_for_a_live_one() {
    let w = World::new(Parts::default()).await;
    w.deploy(Color::Green, "v1").await;
    w.deploy(Color::Blue, "v2").await;

    // A live holder (a CLI mid-rollback): left alone, and it blocks others.
    let mut cli = std::process::Command::new("/bin/sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let id = stranded(
        &w,
        format!("{}/0", cli.id()),
        &[IncidentState::TargetVerified],
    )
    .await;
    assert_eq!(rollback::reconcile(&w.ctx()).await.unwrap(), None);
    match w.execute(manual("now")).await {
        Outcome::Skipped { why, .. } => assert!(why.contains("in flight"), "{why}"),
        other => panic!("two rollbacks at once: {other:?}"),
    }
    assert!(w.store.incident(id).await.unwrap().in_flight);
    // It dies: the next reconcile closes it; nothing was switched.
    cli.kill().unwrap();
    cli.wait().unwrap();
    let Some(Outcome::Failed { why, .. }) = rollback::reconcile(&w.ctx()).await.unwrap() else {
        panic!("expected the interrupted rollback to be closed");
    };
    assert!(why.contains("before the switch command ran"), "{why}");
    let inc = w.store.incident(id).await.unwrap();
    assert_eq!((inc.state.as_str(), inc.in_flight), ("failed", false));
    w.notice("rollback_failed", id).await;

    // `switching` with no active file to prove it landed: never rerun, and
    // its outcome recorded as unknown, not failed (issue 11).
    let id = stranded(
        &w,
        dead_holder(),
        &[IncidentState::TargetVerified, IncidentState::Switching],
    )
    .await;
    let Some(Outcome::Failed { why, .. }) = rollback::reconcile(&w.ctx()).await.unwrap() else {
        panic!("expected an unknown outcome");
    };
    assert!(why.contains("NOT run again"), "{why}");
    let inc = w.store.incident(id).await.unwrap();
    assert!(!inc.in_flight);
    assert_eq!(inc.state, IncidentState::Unknown);
    assert!(
        inc.outcome
            .unwrap_or_default()
            .starts_with("outcome unknown — check the proxy"),
        "{why}"
    );
    // `status` calls the active color uncertain, not blue (the command may
    // have moved traffic to green).
    let status = w.env.cli_ok(&["status"]);
    assert!(
        status.contains(&format!(
            "active: uncertain — rollback #{id} (blue -> green) was interrupted after its switch command started; outcome unknown — check the proxy"
        )),
        "{status}"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&w.env.cli_ok(&["status", "--json"])).unwrap();
    assert!(doc["active_uncertain"].is_string(), "{doc}");

    // `switched`: the switch landed; verify and close it.
    let id = stranded(
        &w,
        dead_holder(),
        &[
            IncidentState::TargetVerified,
            IncidentState::Switching,
            IncidentState::Switched,
        ],
    )
    .await;
    let outcome = rollback::reconcile(&w.ctx()).await.unwrap();
    assert_eq!(
        outcome,
        Some(Outcome::Verified {
            incident: id,
            to: Color::Green
        })
    );
    let latest = w.store.latest_deployment().await.unwrap().unwrap();
    assert_eq!(
        (
            latest.color,
            latest.version.as_str(),
            latest.source.as_str()
        ),
        (Color::Green, "v1", "rollback")
    );
    assert!(
        w.store
            .deployments()
            .await
            .unwrap()
            .iter()
            .any(|d| d.version == "v2" && d.quarantined)
    );
    assert!(w.switches().is_empty(), "reconcile never runs the command");
    assert_eq!(rollback::reconcile(&w.ctx()).await.unwrap(), None);
    assert!(w.store.in_flight_incident().await.unwrap().is_none());
}

/// The switch command's process group is read from its column, and from
/// the timeline's words only for a row written by an older version (no
/// column value): a daemon upgraded mid-incident still waits for the
/// orphaned command and kills it at the timeout, never reruns it.
#[tokio::test]
async fn reconcile_waits_for_the_switch_group_from_its_column_or_an_older_versions_timeline() {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let w = World::new(Parts {
        rollback: "timeout = \"1s\"",
        ..Parts::default()
    })
    .await;
    w.deploy(Color::Green, "v1").await;
    w.deploy(Color::Blue, "v2").await;
    for old_format in [false, true] {
        // The switch command that outlived its daemon: its own group.
        let mut orphan = std::process::Command::new("/bin/sleep")
            .arg("60")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = orphan.id();
        let id = stranded(
            &w,
            dead_holder(),
            &[IncidentState::TargetVerified, IncidentState::Switching],
        )
        .await;
        if old_format {
            // How versions before the column recorded it: words only.
            w.store
                .add_incident_event(
                    id,
                    now_ms(),
                    IncidentState::Switching,
                    &format!("switch command running as process group {pgid}"),
                )
                .await
                .unwrap();
        } else {
            // The words no longer name the group: only the column does.
            w.store
                .record_switch_group(id, now_ms(), pgid, "switch command started")
                .await
                .unwrap();
        }
        let stored = w.store.incident(id).await.unwrap().switch_pgid;
        assert_eq!(stored, (!old_format).then_some(pgid));
        let outcome = rollback::reconcile(&w.ctx()).await.unwrap();
        let Some(Outcome::Failed { why, .. }) = outcome else {
            panic!("expected an unknown outcome, got {outcome:?}");
        };
        assert!(why.contains("NOT run again"), "{why}");
        let messages: Vec<String> = w
            .store
            .incident_events(id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.message)
            .collect();
        assert!(
            messages.iter().any(|m| m.contains(&format!(
                "(process group {pgid}) is still running after the restart"
            ))),
            "old format {old_format}: {messages:?}"
        );
        assert!(
            messages.contains(&format!(
                "killed the switch command (process group {pgid}) at its timeout"
            )),
            "old format {old_format}: {messages:?}"
        );
        let status = orphan.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "old format {old_format}");
        assert!(!w.store.incident(id).await.unwrap().in_flight);
    }
    assert!(w.switches().is_empty(), "reconcile never runs the command");
}

mod crash;
#[allow(unused_imports)]
use crash::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_rollback_with_the_daemon_stopped_and_its_report() {
    let blue = common::Color::start().await;
    let green = common::Color::start().await;
    let hook = Receiver::start().await;
    let env = Env::new("");
    std::fs::write(
        &env.config,
        config_text(
            env.dir.path(),
            &blue.url,
            &green.url,
            &hook.url,
            Parts::default(),
        ),
    )
    .unwrap();
    env.cli_ok(&["deploy", "--color", "green", "--version", "v1"]);
    env.cli_ok(&["deploy", "--color", "blue", "--version", "v2"]);
    let out = env.cli_ok(&["rollback", "--reason", "v2 | corrupts queues"]);
    assert!(out.contains("rolled back to green"), "{out}");
    assert_eq!(common::read(&env.path("switch.log")).trim(), "blue green");
    // The CLI delivered its notices before exiting.
    let events: Vec<String> = hook
        .bodies("json")
        .iter()
        .map(|b| b["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events, ["rollback_started", "rollback_completed"]);

    let list = env.cli_ok(&["incidents"]);
    assert!(
        list.contains("manual") && list.contains("blue -> green") && list.contains("verified"),
        "{list}"
    );
    let md = env.cli_ok(&["incident", "show", "1", "--markdown"]);
    for part in [
        "# Incident #1: critical manual rollback of beluga",
        "## Summary",
        "| **Severity** | critical |",
        "## Timeline (UTC)",
        "| rollback initiated |",
        "| rollback completed |",
        "| validated |",
        "## Root cause",
        "_To be filled in",
        "## Resolution",
        "rolled back to green (v1); verified healthy",
        "v2 \\| corrupts queues",
    ] {
        assert!(md.contains(part), "missing {part:?} in:\n{md}");
    }
    let shown: serde_json::Value =
        serde_json::from_str(&env.cli_ok(&["incident", "show", "1", "--json"])).unwrap();
    assert_eq!(shown["incident"]["trigger_kind"], "manual");
    assert_eq!(shown["evidence"]["reason"], "v2 | corrupts queues");
    // Milestones are points in time: RFC 3339 with milliseconds, in order.
    let milestone = |k: &str| shown["milestones"][k].as_str().unwrap_or("").to_owned();
    for k in ["initiated", "completed", "validated"] {
        assert!(
            crate::cli::is_rfc3339_millis(&milestone(k)),
            "{k}: {shown:#}"
        );
    }
    // A manual rollback of a service with no failing samples detected
    // nothing: the milestone is there, and null.
    assert!(shown["milestones"]["detected"].is_null(), "{shown:#}");
    assert!(
        milestone("initiated") <= milestone("validated"),
        "{shown:#}"
    );
    assert!(
        shown["milestones"].get("validated_ms").is_none(),
        "{shown:#}"
    );
    let missing = env.cli(&["incident", "show", "9"]);
    assert_eq!(
        missing.status.code(),
        Some(2),
        "an argument that names nothing is a usage error"
    );

    // Pauses always expire: zero and unbounded holds are refused.
    assert_eq!(
        env.cli(&["pause", "--for", "0s", "--reason", "x"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        env.cli(&["pause", "--for", "400d", "--reason", "x"])
            .status
            .code(),
        Some(2)
    );
    let out = env.cli_ok(&["pause", "--for", "1h", "--reason", "db migration"]);
    assert!(out.contains("db migration"), "{out}");
    let status = env.cli_ok(&["status"]);
    assert!(status.contains("paused until"), "{status}");
}

mod daemon;
#[allow(unused_imports)]
use daemon::*;
