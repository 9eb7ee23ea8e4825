//! `format = "template"` with the templates `config/templates/` ships,
//! against local receivers that check each request as the real API would
//! (PagerDuty Events v2, Statuspage incidents, GitHub commit comments, a
//! Discord webhook) and answer as it does — including a 429 with
//! `Retry-After`, which must be honoured. Rollbacks are real
//! (`rollback::execute` with real colors, commands and SQLite); so is the
//! rule that what opens is closed with the same key (issue 16, point 3).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use rollbackd::config::Config;
use rollbackd::model::{Color, Severity, now_ms};
use rollbackd::notifier::{Hub, Policy};
use rollbackd::probe::Prober;
use rollbackd::rollback::{self, Context, Outcome, Request, Trigger};
use rollbackd::store::Store;
use serde_json::{Value, json};

use crate::common::{self, Env, wait_for};

const ROUTING_KEY: &str = "R0UT1NGKEYR0UT1NGKEYR0UT1NGKEY32";
const STATUSPAGE_KEY: &str = "OAuth sp-k3y";
const GITHUB_TOKEN: &str = "Bearer ghp_t0ken";

/// One request as an API received it.
#[derive(Clone, Debug)]
struct Got {
    api: &'static str,
    method: String,
    path: String,
    body: Value,
    at: Instant,
}

/// The four APIs on one local server. Each handler checks the request
/// against the API's documented required fields and answers as it does.
#[derive(Clone, Default)]
struct Apis {
    url: String,
    got: Arc<Mutex<Vec<Got>>>,
    /// PagerDuty answers this many requests with 429 and `Retry-After: 1`.
    pd_throttle: Arc<AtomicU32>,
    /// Requests an API refused as invalid, with why.
    invalid: Arc<Mutex<Vec<String>>>,
    next_statuspage_id: Arc<AtomicU32>,
}

impl Apis {
    async fn start() -> Apis {
        let mut apis = Apis::default();
        let app = Router::new()
            .route("/v2/enqueue", post(pagerduty))
            .route("/v1/pages/p4ge/incidents", post(statuspage_create))
            .route("/v1/pages/p4ge/incidents/{id}", patch(statuspage_update))
            .route(
                "/repos/{owner}/{repo}/commits/{sha}/comments",
                post(github_comment),
            )
            .route("/discord", post(discord))
            .with_state(apis.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        apis.url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        apis
    }

    fn record(&self, api: &'static str, method: &str, path: String, body: &Value) {
        self.got.lock().unwrap().push(Got {
            api,
            method: method.to_owned(),
            path,
            body: body.clone(),
            at: Instant::now(),
        });
    }

    fn refuse(&self, why: String) -> String {
        self.invalid.lock().unwrap().push(why.clone());
        why
    }

    fn of(&self, api: &str) -> Vec<Got> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.api == api)
            .cloned()
            .collect()
    }
}

fn json_body(headers: &HeaderMap, body: &str) -> Result<Value, String> {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/json") {
        return Err(format!("content-type {ct:?} is not JSON"));
    }
    serde_json::from_str(body).map_err(|e| format!("body is not JSON: {e}"))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// PagerDuty Events API v2 (`POST /v2/enqueue`).
async fn pagerduty(State(a): State<Apis>, headers: HeaderMap, body: String) -> Response {
    let v = match json_body(&headers, &body) {
        Ok(v) => v,
        Err(why) => return (StatusCode::BAD_REQUEST, a.refuse(why)).into_response(),
    };
    a.record("pagerduty", "POST", "/v2/enqueue".into(), &v);
    if a.pd_throttle
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            axum::Json(json!({"status": "throttle event", "message": "Requests for this service are arriving too quickly."})),
        )
            .into_response();
    }
    let mut errors = Vec::new();
    if v["routing_key"].as_str().map(str::len) != Some(32) {
        errors.push("routing_key must be a 32-character integration key".to_owned());
    }
    let action = v["event_action"].as_str().unwrap_or("");
    if !["trigger", "acknowledge", "resolve"].contains(&action) {
        errors.push(format!("event_action {action:?} is invalid"));
    }
    let dedup = v["dedup_key"].as_str();
    if action != "trigger" && dedup.is_none() {
        errors.push("dedup_key is required for acknowledge and resolve".into());
    }
    if dedup.is_some_and(|d| d.len() > 255) {
        errors.push("dedup_key is longer than 255".into());
    }
    if action == "trigger" {
        let p = &v["payload"];
        if p["summary"]
            .as_str()
            .is_none_or(|s| s.is_empty() || s.chars().count() > 1024)
        {
            errors.push("payload.summary is required (at most 1024 characters)".into());
        }
        if p["source"].as_str().is_none_or(str::is_empty) {
            errors.push("payload.source is required".into());
        }
        let sev = p["severity"].as_str().unwrap_or("");
        if !["critical", "error", "warning", "info"].contains(&sev) {
            errors.push(format!("payload.severity {sev:?} is invalid"));
        }
    }
    if !errors.is_empty() {
        let why = a.refuse(errors.join("; "));
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"status": "invalid event", "message": "Event object is invalid", "errors": [why]})),
        )
            .into_response();
    }
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({"status": "success", "message": "Event processed", "dedup_key": dedup.unwrap_or("generated")})),
    )
        .into_response()
}

/// Statuspage's answer to a request without the right key, if it is one.
fn statuspage_unauthorized(a: &Apis, headers: &HeaderMap) -> Option<Response> {
    (header(headers, "authorization") != STATUSPAGE_KEY).then(|| {
        (
            StatusCode::UNAUTHORIZED,
            a.refuse("statuspage: bad Authorization".into()),
        )
            .into_response()
    })
}

const STATUSES: [&str; 4] = ["investigating", "identified", "monitoring", "resolved"];

/// Statuspage: create an incident (`POST /v1/pages/PAGE/incidents`).
async fn statuspage_create(State(a): State<Apis>, headers: HeaderMap, body: String) -> Response {
    if let Some(r) = statuspage_unauthorized(&a, &headers) {
        return r;
    }
    let v = match json_body(&headers, &body) {
        Ok(v) => v,
        Err(why) => return (StatusCode::BAD_REQUEST, a.refuse(why)).into_response(),
    };
    a.record("statuspage", "POST", "/incidents".into(), &v);
    let inc = &v["incident"];
    let name_ok = inc["name"].as_str().is_some_and(|n| !n.is_empty());
    let status_ok = inc["status"].as_str().is_none_or(|s| STATUSES.contains(&s));
    if !name_ok || !status_ok {
        let why = a.refuse("statuspage: incident.name is required; status must be known".into());
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({"error": why})),
        )
            .into_response();
    }
    let id = format!(
        "sp{}",
        a.next_statuspage_id.fetch_add(1, Ordering::SeqCst) + 1
    );
    (
        StatusCode::CREATED,
        axum::Json(
            json!({"id": id, "name": inc["name"], "status": inc["status"], "page_id": "p4ge"}),
        ),
    )
        .into_response()
}

/// Statuspage: update (resolve) an incident (`PATCH .../incidents/ID`).
async fn statuspage_update(
    State(a): State<Apis>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Some(r) = statuspage_unauthorized(&a, &headers) {
        return r;
    }
    let v = match json_body(&headers, &body) {
        Ok(v) => v,
        Err(why) => return (StatusCode::BAD_REQUEST, a.refuse(why)).into_response(),
    };
    a.record("statuspage", "PATCH", format!("/incidents/{id}"), &v);
    let created = a.next_statuspage_id.load(Ordering::SeqCst);
    let known = id
        .strip_prefix("sp")
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| n >= 1 && n <= created);
    if !known {
        return (
            StatusCode::NOT_FOUND,
            a.refuse(format!("statuspage: no incident {id}")),
        )
            .into_response();
    }
    if v["incident"]["status"]
        .as_str()
        .is_some_and(|s| !STATUSES.contains(&s))
    {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            a.refuse("statuspage: bad status".into()),
        )
            .into_response();
    }
    (
        StatusCode::OK,
        axum::Json(json!({"id": id, "status": v["incident"]["status"]})),
    )
        .into_response()
}

/// GitHub: `POST /repos/OWNER/REPO/commits/SHA/comments`.
async fn github_comment(
    State(a): State<Apis>,
    Path((owner, repo, sha)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if header(&headers, "authorization") != GITHUB_TOKEN {
        return (
            StatusCode::UNAUTHORIZED,
            a.refuse("github: bad credentials".into()),
        )
            .into_response();
    }
    if header(&headers, "user-agent").is_empty() {
        // GitHub refuses requests without a User-Agent.
        return (
            StatusCode::FORBIDDEN,
            a.refuse("github: no User-Agent".into()),
        )
            .into_response();
    }
    if header(&headers, "accept") != "application/vnd.github+json" {
        a.refuse("github: Accept is not application/vnd.github+json".into());
    }
    let v = match json_body(&headers, &body) {
        Ok(v) => v,
        Err(why) => return (StatusCode::BAD_REQUEST, a.refuse(why)).into_response(),
    };
    a.record(
        "github",
        "POST",
        format!("/repos/{owner}/{repo}/commits/{sha}/comments"),
        &v,
    );
    if v["body"].as_str().is_none_or(str::is_empty) {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({"message": a.refuse("github: body is required".into())})),
        )
            .into_response();
    }
    (
        StatusCode::CREATED,
        axum::Json(json!({"id": 1, "commit_id": sha, "body": v["body"]})),
    )
        .into_response()
}

/// Discord: execute a webhook (`content` at most 2000 characters).
async fn discord(State(a): State<Apis>, headers: HeaderMap, body: String) -> Response {
    let v = match json_body(&headers, &body) {
        Ok(v) => v,
        Err(why) => return (StatusCode::BAD_REQUEST, a.refuse(why)).into_response(),
    };
    a.record("discord", "POST", "/discord".into(), &v);
    let content_ok = v["content"]
        .as_str()
        .is_some_and(|c| !c.is_empty() && c.chars().count() <= 2000);
    if !content_ok {
        return (
            StatusCode::BAD_REQUEST,
            a.refuse("discord: content 1..=2000".into()),
        )
            .into_response();
    }
    StatusCode::NO_CONTENT.into_response()
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A world: two colors, the four APIs as `[[notify]]` targets with the
/// shipped templates, a store and a hub.
struct World {
    env: Env,
    _blue: common::Color,
    green: common::Color,
    apis: Apis,
    config: Config,
    store: Store,
    prober: Prober,
    hub: Hub,
}

impl World {
    async fn new() -> World {
        let blue = common::Color::start().await;
        let green = common::Color::start().await;
        let apis = Apis::start().await;
        let env = Env::new("");
        let templates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/templates");
        let secret = |name: &str, value: &str| {
            let p = env.path(name);
            std::fs::write(&p, format!("{value}\n")).unwrap();
            toml_str(&format!("file:{}", p.display()))
        };
        let text = format!(
            r#"
[daemon]
state_dir = "state"
listen = "off"
watch_config = false

[service]
name = "beluga"

[colors.blue]
base_url = "{blue}"
[colors.green]
base_url = "{green}"

[[probe]]
name = "healthz"
kind = "http"
path = "/healthz"
interval = "200ms"
timeout = "200ms"
body_contains = "ok"
health = true

[rollback]
command = ["/bin/true", "{{to}}"]
verify_after = "3s"

[[notify]]
kind = "webhook"
url = "{api}/v2/enqueue"
format = "template"
template = {pd}
secrets = {{ routing_key = {routing} }}
min_severity = "high"

[[notify]]
kind = "webhook"
url = "{api}/v1/pages/p4ge/incidents"
format = "template"
template = {sp}
method = "{{{{ 'PATCH' if opened else 'POST' }}}}"
path = "{{% if opened %}}/{{{{ opened.id }}}}{{% endif %}}"
headers = {{ Authorization = {sp_key} }}
min_severity = "high"

[[notify]]
kind = "webhook"
url = "{api}/repos/acme/beluga"
format = "template"
template = {gh}
path = "/commits/{{{{ from_version if incident else version }}}}/comments"
headers = {{ Authorization = {gh_token}, Accept = "application/vnd.github+json", X-GitHub-Api-Version = "2022-11-28" }}
min_severity = "high"

[[notify]]
kind = "webhook"
url = "{api}/discord"
format = "template"
template = {discord}
min_severity = "high"
"#,
            blue = blue.url,
            green = green.url,
            api = apis.url,
            pd = toml_str(&templates.join("pagerduty.json").display().to_string()),
            sp = toml_str(&templates.join("statuspage.json").display().to_string()),
            gh = toml_str(
                &templates
                    .join("github-commit-comment.json")
                    .display()
                    .to_string()
            ),
            discord = toml_str(
                &templates
                    .join("discord-announcement.json")
                    .display()
                    .to_string()
            ),
            routing = secret("pd-routing-key", ROUTING_KEY),
            sp_key = secret("statuspage-key", STATUSPAGE_KEY),
            gh_token = secret("github-token", GITHUB_TOKEN),
        );
        std::fs::write(&env.config, text).unwrap();
        let config = Config::load(&env.config).unwrap();
        let store = env.store().await;
        let (hub, _worker) = Hub::start(Policy {
            attempts: 3,
            backoff: Duration::from_millis(50),
            timeout: Duration::from_secs(3),
        });
        World {
            env,
            _blue: blue,
            green,
            apis,
            config,
            store,
            prober: Prober::new(),
            hub,
        }
    }

    async fn rollback(&self, reason: &str) -> Outcome {
        let ctx = Context {
            config: &self.config,
            store: &self.store,
            prober: &self.prober,
            notify: Some(&self.hub),
        };
        let req = Request {
            trigger: Trigger::Manual,
            severity: Severity::Critical,
            rule: None,
            reason: reason.into(),
            evidence: json!({ "manual": true }),
            since_ms: Some(now_ms() - 1000),
        };
        rollback::execute(&ctx, req).await.unwrap()
    }

    async fn deploy(&self, color: Color, version: &str) {
        self.store
            .record_deployment(color, version, "cli", now_ms())
            .await
            .unwrap();
    }

    async fn wait(&self, what: &str, api: &'static str, n: usize) -> Vec<Got> {
        wait_for(what, Duration::from_secs(10), || async {
            self.apis.of(api).len() >= n
        })
        .await;
        self.apis.of(api)
    }

    fn invalid(&self) -> Vec<String> {
        self.apis.invalid.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_triggers_and_resolves_each_incident_by_its_dedup_key_and_honours_retry_after() {
    let w = World::new().await;
    w.deploy(Color::Green, "1111111").await;
    w.deploy(Color::Blue, "2222222").await;
    // The first request is throttled: 429, Retry-After: 1.
    w.apis.pd_throttle.store(1, Ordering::SeqCst);

    // A refused rollback: the standby is broken. It still ends, and what
    // it opened is resolved.
    w.green.set(500);
    let Outcome::Refused {
        incident: refused, ..
    } = w.rollback("drill the refusal").await
    else {
        panic!("expected a refusal");
    };
    // A verified one.
    w.green.set(200);
    let Outcome::Verified {
        incident: verified, ..
    } = w.rollback("bad release").await
    else {
        panic!("expected a verified rollback");
    };
    assert_ne!(refused, verified);

    // 1 throttled + 2 per incident.
    let got = w.wait("five PagerDuty requests", "pagerduty", 5).await;
    assert!(
        w.invalid().is_empty(),
        "invalid requests: {:?}",
        w.invalid()
    );
    assert_eq!(got[0].body["event_action"], "trigger");
    // Another incident's events may pass it; its own retry is the next
    // request with the same body.
    let retry = got[1..]
        .iter()
        .find(|g| g.body == got[0].body)
        .expect("the throttled event is sent again");
    let waited = retry.at - got[0].at;
    assert!(
        waited >= Duration::from_secs(1),
        "Retry-After: 1 was not honoured (retried after {waited:?}; backoff is 50ms)"
    );
    assert!(waited < Duration::from_secs(5), "retried after {waited:?}");

    let accepted = &got[1..];
    let key = |i: i64| format!("rollbackd/beluga/incident/{i}");
    let by_key = |i: i64| -> Vec<&str> {
        accepted
            .iter()
            .filter(|g| g.body["dedup_key"] == key(i))
            .map(|g| g.body["event_action"].as_str().unwrap())
            .collect()
    };
    // The refusal's resolve was queued while its trigger waited out the
    // Retry-After: it still comes second.
    assert_eq!(by_key(refused), ["trigger", "resolve"]);
    assert_eq!(by_key(verified), ["trigger", "resolve"]);
    let trigger = accepted
        .iter()
        .find(|g| g.body["dedup_key"] == key(verified) && g.body["event_action"] == "trigger")
        .unwrap();
    assert_eq!(trigger.body["payload"]["severity"], "critical");
    assert_eq!(trigger.body["payload"]["source"], "beluga");
    assert_eq!(trigger.body["routing_key"], ROUTING_KEY);
    // The routing key is a secret: it went to PagerDuty, nowhere else.
    assert!(!format!("{:?}", w.config).contains(ROUTING_KEY));
    drop(w.env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuspage_github_and_discord_hear_of_a_rollback_as_their_apis_expect() {
    let w = World::new().await;
    w.deploy(Color::Green, "1111111").await;
    w.deploy(Color::Blue, "2222222").await;
    let Outcome::Verified { incident, .. } = w.rollback("bad release").await else {
        panic!("expected a verified rollback");
    };

    // Statuspage: created, then the same incident resolved.
    let sp = w
        .wait("Statuspage create and resolve", "statuspage", 2)
        .await;
    assert_eq!(
        (sp[0].method.as_str(), sp[0].path.as_str()),
        ("POST", "/incidents")
    );
    assert_eq!(sp[0].body["incident"]["status"], "identified");
    assert_eq!(sp[0].body["incident"]["impact_override"], "major");
    assert_eq!(
        (sp[1].method.as_str(), sp[1].path.as_str()),
        ("PATCH", "/incidents/sp1")
    );
    assert_eq!(sp[1].body["incident"]["status"], "resolved");

    // GitHub: one comment, on the commit that was rolled back.
    let gh = w.wait("a GitHub commit comment", "github", 1).await;
    assert_eq!(gh[0].path, "/repos/acme/beluga/commits/2222222/comments");
    let body = gh[0].body["body"].as_str().unwrap();
    assert!(body.contains("rollback completed"), "{body}");
    assert!(body.contains(&format!("incident: #{incident}")), "{body}");

    // Discord: the users' announcement and its all-clear.
    let dc = w.wait("two Discord announcements", "discord", 2).await;
    assert!(
        dc[0].body["content"]
            .as_str()
            .unwrap()
            .contains("restoring the previous version")
    );
    assert!(
        dc[1].body["content"]
            .as_str()
            .unwrap()
            .starts_with("✅ **Resolved**")
    );
    assert_eq!(dc[0].body["allowed_mentions"]["parse"], json!([]));

    assert!(
        w.invalid().is_empty(),
        "invalid requests: {:?}",
        w.invalid()
    );
    // Nothing more went out (each template renders nothing for the rest).
    assert_eq!(w.apis.of("statuspage").len(), 2);
    assert_eq!(w.apis.of("github").len(), 1);
}
