//! Notifications against a real local HTTP receiver: payload shapes per
//! format, `min_severity`, retries with backoff, the per-attempt timeout,
//! failures counted, and `send` never waiting on a receiver.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use rollbackd::config::secret::Secret;
use rollbackd::config::{Notifier, NotifyFormat};
use rollbackd::model::Severity;
use rollbackd::notifier::{Event, Hub, Notice, Policy};
use serde_json::Value;

use crate::common::{CapturedLog, wait_for};

/// A webhook receiver: records every request body by path; answers each
/// with the next scripted status (200 once the script is used up); the
/// path `/hang` never answers.
#[derive(Clone, Default)]
pub struct Receiver {
    pub url: String,
    pub got: Arc<Mutex<Vec<(String, Value)>>>,
    pub script: Arc<Mutex<VecDeque<u16>>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let mut r = Receiver::default();
        let app = Router::new()
            .route(
                "/{name}",
                post(
                    |State(r): State<Receiver>, Path(name): Path<String>, body: String| async move {
                        let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                        r.got.lock().unwrap().push((name.clone(), body));
                        if name == "hang" {
                            std::future::pending::<()>().await;
                        }
                        let code = r.script.lock().unwrap().pop_front().unwrap_or(200);
                        StatusCode::from_u16(code).unwrap()
                    },
                ),
            )
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        r.url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        r
    }

    pub fn target(&self, path: &str, format: NotifyFormat, min: Severity) -> Notifier {
        Notifier::webhook(
            Secret::resolve(&format!("{}/{path}", self.url)).unwrap(),
            format,
            min,
        )
    }

    pub fn bodies(&self, path: &str) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

fn fast() -> Policy {
    Policy {
        attempts: 3,
        backoff: Duration::from_millis(50),
        timeout: Duration::from_millis(500),
    }
}

fn notice(event: Event, severity: Severity) -> Notice {
    let mut n = Notice::new(event, severity, "beluga", "blue -> green".into());
    n.incident = Some(3);
    n
}

#[tokio::test]
async fn each_format_reaches_its_receiver_and_min_severity_filters() {
    let rx = Receiver::start().await;
    let (hub, worker) = Hub::start(fast());
    let targets = vec![
        rx.target("slack", NotifyFormat::Slack, Severity::Medium),
        rx.target("discord", NotifyFormat::Discord, Severity::High),
        rx.target("json", NotifyFormat::Json, Severity::Low),
    ];
    hub.send(
        &targets,
        notice(Event::RollbackCompleted, Severity::Critical),
    );
    hub.send(&targets, notice(Event::Alert, Severity::Medium));
    hub.send(&targets, notice(Event::Recovered, Severity::Low));
    let stats = hub.stats();
    drop(hub);
    tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .unwrap()
        .unwrap();

    let slack = rx.bodies("slack");
    assert_eq!(slack.len(), 2, "critical and medium, not low: {slack:?}");
    assert!(
        slack[0]["text"]
            .as_str()
            .unwrap()
            .starts_with("[CRITICAL] beluga: rollback completed")
            || slack[1]["text"]
                .as_str()
                .unwrap()
                .starts_with("[CRITICAL] beluga: rollback completed"),
        "{slack:?}"
    );
    assert!(slack.iter().all(|b| b["blocks"].is_array()));

    let discord = rx.bodies("discord");
    assert_eq!(discord.len(), 1, "only critical meets high: {discord:?}");
    assert_eq!(
        discord[0]["embeds"][0]["title"],
        "beluga: rollback completed"
    );
    assert_eq!(
        discord[0]["allowed_mentions"]["parse"],
        serde_json::json!([])
    );

    let json = rx.bodies("json");
    assert_eq!(json.len(), 3, "low passes min_severity = low");
    let events: Vec<&str> = json.iter().map(|b| b["event"].as_str().unwrap()).collect();
    for e in ["rollback_completed", "alert", "recovered"] {
        assert!(events.contains(&e), "{events:?}");
    }
    assert!(
        json.iter()
            .all(|b| b["incident"] == 3 && b["service"] == "beluga")
    );
    assert_eq!(stats.sent(), 6);
    assert_eq!(stats.failed(), 0);
}

#[tokio::test]
async fn a_failing_receiver_is_retried_then_counted() {
    let rx = Receiver::start().await;
    let (hub, worker) = Hub::start(fast());
    // Two failures then success: delivered on the third attempt.
    rx.script.lock().unwrap().extend([503, 500]);
    hub.send(
        &[rx.target("flaky", NotifyFormat::Json, Severity::Low)],
        notice(Event::RollbackStarted, Severity::High),
    );
    wait_for("the retried delivery", Duration::from_secs(5), || async {
        hub.stats().sent() == 1
    })
    .await;
    assert_eq!(rx.bodies("flaky").len(), 3, "two failures, then success");

    // Always failing: every attempt made, then counted as failed.
    rx.script.lock().unwrap().extend([500, 500, 500]);
    hub.send(
        &[rx.target("down", NotifyFormat::Json, Severity::Low)],
        notice(Event::RollbackFailed, Severity::Critical),
    );
    wait_for(
        "the failure to be counted",
        Duration::from_secs(5),
        || async { hub.stats().failed() == 1 },
    )
    .await;
    assert_eq!(rx.bodies("down").len(), 3, "attempts = 3");
    assert!(rollbackd::notifier::failed_total() >= 1);

    // A 4xx is not retried: the URL or token is wrong, waiting won't help.
    rx.script.lock().unwrap().push_back(404);
    hub.send(
        &[rx.target("gone", NotifyFormat::Slack, Severity::Low)],
        notice(Event::Alert, Severity::Medium),
    );
    wait_for("the 404 to be counted", Duration::from_secs(5), || async {
        hub.stats().failed() == 2
    })
    .await;
    assert_eq!(rx.bodies("gone").len(), 1);
    drop(hub);
    worker.await.unwrap();
}

#[tokio::test]
async fn send_never_waits_for_a_receiver_that_hangs() {
    let rx = Receiver::start().await;
    let policy = Policy {
        attempts: 2,
        backoff: Duration::from_millis(10),
        timeout: Duration::from_millis(300),
    };
    let (hub, worker) = Hub::start(policy);
    let targets = [rx.target("hang", NotifyFormat::Json, Severity::Low)];
    let started = Instant::now();
    for _ in 0..20 {
        hub.send(&targets, notice(Event::RollbackStarted, Severity::Critical));
    }
    let spent = started.elapsed();
    assert!(
        spent < Duration::from_millis(100),
        "20 sends to a hanging receiver took {spent:?}"
    );
    // Each attempt is cut at the timeout; all 20 end up counted as failed.
    wait_for(
        "every hung delivery to time out",
        Duration::from_secs(10),
        || async { hub.stats().failed() == 20 },
    )
    .await;
    assert_eq!(hub.stats().sent(), 0);
    drop(hub);
    tokio::time::timeout(Duration::from_secs(5), worker)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn an_unreadable_secret_url_fails_without_leaking_anything() {
    // The tests here run on tokio's current-thread runtime, so the hub's
    // worker logs on this thread too.
    let log = CapturedLog::default();
    let _guard = log.capture();
    let dir = tempfile::tempdir().unwrap();
    // One reference that cannot be read at all, one whose value is no URL
    // but carries a token: neither the token nor the file's content may
    // reach the log, only the references.
    let garbled = dir.path().join("hook-url");
    std::fs::write(&garbled, "htp:://hooks.example/T0KEN-s3cr3t\n").unwrap();
    let (hub, worker) = Hub::start(fast());
    let unset = Notifier::webhook(
        Secret::resolve("env:ROLLBACKD_TEST_UNSET_HOOK_4711").unwrap(),
        NotifyFormat::Slack,
        Severity::Low,
    );
    let bad = Notifier::webhook(
        Secret::resolve(&format!("file:{}", garbled.display())).unwrap(),
        NotifyFormat::Slack,
        Severity::Low,
    );
    hub.send(&[unset, bad], notice(Event::Alert, Severity::High));
    wait_for("both failures", Duration::from_secs(5), || async {
        hub.stats().failed() == 2
    })
    .await;
    drop(hub);
    worker.await.unwrap();
    let text = log.text();
    assert!(
        text.contains("env:ROLLBACKD_TEST_UNSET_HOOK_4711"),
        "the failure names the reference:\n{text}"
    );
    assert!(
        text.contains(&format!("file:{}", garbled.display())),
        "the failure names the reference:\n{text}"
    );
    for secret in ["T0KEN-s3cr3t", "hooks.example", "htp:"] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_notification_from_the_cli_is_logged_without_its_url() {
    let blue = crate::common::Color::start().await;
    let green = crate::common::Color::start().await;
    // A port with nothing listening: every attempt is refused.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let env = crate::common::Env::new("");
    let secret = env.path("hook-url");
    std::fs::write(&secret, format!("http://{closed}/T0KEN-s3cr3t\n")).unwrap();
    let mut text = crate::common::fast_config(&blue, &green, env.dir.path(), "");
    text.push_str(&format!(
        "\n[[notify]]\nkind = \"webhook\"\nurl = \"file:{}\"\nformat = \"slack\"\nmin_severity = \"high\"\n",
        secret.display()
    ));
    std::fs::write(&env.config, text).unwrap();
    env.cli_ok(&["deploy", "--color", "blue", "--version", "v1"]);
    // Nothing to roll back to: refused, and the refusal is notified.
    let out = env.cli(&["rollback", "--reason", "test"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("notification to file:{}", secret.display())),
        "{stderr}"
    );
    assert!(stderr.contains("after 4 attempt(s)"), "{stderr}");
    assert!(!stderr.contains("T0KEN"), "the URL leaked: {stderr}");
}
