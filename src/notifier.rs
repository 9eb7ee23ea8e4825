//! Outgoing notifications: `[[notify]]` webhooks in `slack`, `discord` or
//! `json` format, filtered by `min_severity`.
//!
//! A [`Hub`] is a handle on a bounded queue served by one worker task;
//! [`Hub::send`] never waits (a full queue drops the notice, logged and
//! counted), so nothing that notifies — least of all a rollback — is ever
//! delayed by a slow or dead receiver. The worker delivers each notice with a
//! per-attempt timeout and retries with exponential backoff; a notice that
//! cannot be delivered is logged and counted in [`failed_total`] (for
//! `/metrics`). Webhook URLs are secrets: they are never logged, and the
//! errors logged here are stripped of them.
//!
//! This file owns the payload shapes and the delivery policy. What deserves a
//! notice is decided by its callers (`rollback` for the rollback lifecycle,
//! `daemon` for alerts and recoveries, through [`Recoveries`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use crate::config::{Notifier, NotifyFormat};
use crate::matrix::{State, Verdict};
use crate::model::{Color, Millis, Severity, format_ms, now_ms};

static SENT: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);

/// Notifications delivered since the process started.
pub fn sent_total() -> u64 {
    SENT.load(Ordering::Relaxed)
}

/// Notifications given up on (after every retry, or dropped because the
/// queue was full) since the process started.
pub fn failed_total() -> u64 {
    FAILED.load(Ordering::Relaxed)
}

/// How many notices may wait for the worker before new ones are dropped.
const QUEUE: usize = 256;
/// How many deliveries run at once.
const PARALLEL: usize = 8;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    RollbackStarted,
    RollbackCompleted,
    RollbackFailed,
    RollbackRefused,
    RollbackEscalated,
    /// dry_run: the rollback that would have run.
    RollbackDryRun,
    /// A rule asked for a rollback, but a pause, the cooldown or an
    /// escalation holds automatic rollbacks.
    RollbackHeld,
    /// A rule whose action is `alert` fired.
    Alert,
    /// A rule that was notified about is clear again.
    Recovered,
    /// A deployment stayed healthy for `[rollback] bake`: its post-deploy
    /// report. Sent to every target, whatever its `min_severity`.
    DeployReport,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::RollbackStarted => "rollback started",
            Event::RollbackCompleted => "rollback completed",
            Event::RollbackFailed => "rollback failed",
            Event::RollbackRefused => "rollback refused",
            Event::RollbackEscalated => "rollback escalated",
            Event::RollbackDryRun => "dry run: would roll back",
            Event::RollbackHeld => "rollback held",
            Event::Alert => "alert",
            Event::Recovered => "recovered",
            Event::DeployReport => "post-deploy report",
        }
    }
}

/// One notification, independent of its wire format.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Notice {
    pub event: Event,
    pub severity: Severity,
    pub service: String,
    /// One line, plain words.
    pub summary: String,
    /// More, if there is more to say.
    pub detail: String,
    pub incident: Option<i64>,
    pub rule: Option<String>,
    pub color: Option<Color>,
    pub from: Option<Color>,
    pub to: Option<Color>,
    pub version: Option<String>,
    pub at_ms: Millis,
}

impl Notice {
    pub fn new(event: Event, severity: Severity, service: &str, summary: String) -> Notice {
        Notice {
            event,
            severity,
            service: service.to_owned(),
            summary,
            detail: String::new(),
            incident: None,
            rule: None,
            color: None,
            from: None,
            to: None,
            version: None,
            at_ms: now_ms(),
        }
    }

    fn headline(&self) -> String {
        format!(
            "[{}] {}: {} — {}",
            self.severity.as_str().to_uppercase(),
            self.service,
            self.event.as_str(),
            self.summary
        )
    }

    fn facts(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![("severity", self.severity.as_str().to_owned())];
        if let Some(i) = self.incident {
            f.push(("incident", format!("#{i}")));
        }
        if let Some(r) = &self.rule {
            f.push(("rule", r.clone()));
        }
        if let Some(c) = self.color {
            f.push(("color", c.as_str().to_owned()));
        }
        if let (Some(a), Some(b)) = (self.from, self.to) {
            f.push(("switch", format!("{a} -> {b}")));
        }
        if let Some(v) = &self.version {
            f.push(("version", v.clone()));
        }
        f
    }
}

/// Build the request body for one format.
pub fn payload(format: NotifyFormat, n: &Notice) -> Value {
    match format {
        NotifyFormat::Json => {
            let mut v = serde_json::to_value(n).unwrap_or_else(|_| json!({}));
            v["at"] = json!(format_ms(n.at_ms));
            v
        }
        NotifyFormat::Slack => {
            let facts = n
                .facts()
                .into_iter()
                .map(|(k, v)| format!("*{k}:* {}", slack_escape(&v)))
                .collect::<Vec<_>>()
                .join("  ·  ");
            let mut text = format!("*{}*", slack_escape(&n.headline()));
            if !n.detail.is_empty() {
                text.push('\n');
                text.push_str(&slack_escape(&n.detail));
            }
            json!({
                "text": cap(&n.headline(), 3000),
                "blocks": [
                    { "type": "section", "text": { "type": "mrkdwn", "text": cap(&text, 3000) } },
                    { "type": "context", "elements": [
                        { "type": "mrkdwn", "text": cap(&format!("{facts}  ·  {}", format_ms(n.at_ms)), 3000) }
                    ] }
                ]
            })
        }
        NotifyFormat::Discord => {
            let fields: Vec<Value> = n
                .facts()
                .into_iter()
                .map(|(k, v)| json!({ "name": k, "value": cap(&v, 1024), "inline": true }))
                .collect();
            json!({
                "content": cap(&n.headline(), 2000),
                "embeds": [{
                    "title": cap(&format!("{}: {}", n.service, n.event.as_str()), 256),
                    "description": cap(format!("{}\n{}", n.summary, n.detail).trim(), 4096),
                    "color": severity_color(n.severity),
                    "timestamp": format_ms(n.at_ms),
                    "fields": fields,
                }],
                // A reason typed by someone must not ping @everyone.
                "allowed_mentions": { "parse": [] },
            })
        }
    }
}

fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn cap(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max_chars.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn severity_color(s: Severity) -> u32 {
    match s {
        Severity::Critical => 0xD0_1F_2E,
        Severity::High => 0xF0_7C_1A,
        Severity::Medium => 0xE8_C3_1A,
        Severity::Low => 0x8A_8F_98,
    }
}

/// How deliveries are attempted.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Attempts in all, the first one included.
    pub attempts: u32,
    /// Wait before the second attempt; doubled after each failure.
    pub backoff: Duration,
    /// Bound on one attempt (connect, send, response).
    pub timeout: Duration,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            attempts: 4,
            backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        }
    }
}

impl Policy {
    /// The longest a notice can take, all retries included.
    pub fn worst_case(&self) -> Duration {
        let mut total = self.timeout * self.attempts;
        let mut wait = self.backoff;
        for _ in 1..self.attempts {
            total += wait;
            wait *= 2;
        }
        total
    }
}

struct Job {
    targets: Vec<Notifier>,
    notice: Notice,
}

/// Deliveries made and given up on by one [`Hub`] (the process-wide
/// totals are [`sent_total`] and [`failed_total`]).
#[derive(Default, Debug)]
pub struct Stats {
    sent: AtomicU64,
    failed: AtomicU64,
}

impl Stats {
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    fn add_sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        SENT.fetch_add(1, Ordering::Relaxed);
    }

    fn add_failed(&self, n: u64) {
        self.failed.fetch_add(n, Ordering::Relaxed);
        FAILED.fetch_add(n, Ordering::Relaxed);
    }
}

/// A handle on the notification queue. Cloning is cheap; the worker stops
/// once every handle is dropped and the notices queued are delivered.
#[derive(Clone)]
pub struct Hub {
    tx: mpsc::Sender<Job>,
    stats: Arc<Stats>,
}

impl Hub {
    /// Start the worker. The caller owns its handle: await it (bounded by
    /// [`Policy::worst_case`]) after dropping every [`Hub`] to deliver what
    /// is queued before exiting.
    pub fn start(policy: Policy) -> (Hub, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(Stats::default());
        let worker = tokio::spawn(work(rx, policy, stats.clone()));
        (Hub { tx, stats }, worker)
    }

    /// This hub's counters; they outlive the hub.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Queue a notice for every target whose `min_severity` it meets.
    /// Never waits.
    pub fn send(&self, targets: &[Notifier], notice: Notice) {
        let targets: Vec<Notifier> = targets
            .iter()
            .filter(|t| notice.event == Event::DeployReport || notice.severity >= t.min_severity)
            .cloned()
            .collect();
        if targets.is_empty() {
            return;
        }
        let n = targets.len() as u64;
        if let Err(e) = self.tx.try_send(Job { targets, notice }) {
            self.stats.add_failed(n);
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "the notification queue is full",
                mpsc::error::TrySendError::Closed(_) => "the notification worker has stopped",
            };
            tracing::error!("notification dropped: {why}");
        }
    }
}

async fn work(mut rx: mpsc::Receiver<Job>, policy: Policy, stats: Arc<Stats>) {
    let client = match reqwest::Client::builder()
        .connect_timeout(policy.timeout)
        .timeout(policy.timeout)
        .user_agent(concat!("rollbackd/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("cannot build the HTTP client for notifications: {e}");
            while let Some(job) = rx.recv().await {
                stats.add_failed(job.targets.len() as u64);
            }
            return;
        }
    };
    let mut running = JoinSet::new();
    while let Some(job) = rx.recv().await {
        for target in job.targets {
            while running.len() >= PARALLEL {
                running.join_next().await;
            }
            let (client, notice, stats) = (client.clone(), job.notice.clone(), stats.clone());
            running.spawn(async move { deliver(&client, &target, &notice, policy, &stats).await });
        }
        // Reap what has finished, without waiting.
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
}

async fn deliver(
    client: &reqwest::Client,
    target: &Notifier,
    notice: &Notice,
    policy: Policy,
    stats: &Stats,
) {
    match attempt_all(client, target, notice, policy).await {
        Ok(attempts) => {
            stats.add_sent();
            tracing::debug!(
                rollbackd.severity = notice.severity.as_str(),
                "notification sent to {} ({:?}) after {attempts} attempt(s)",
                target.url,
                target.format
            );
        }
        Err(why) => {
            stats.add_failed(1);
            tracing::error!(
                rollbackd.severity = notice.severity.as_str(),
                rollbackd.incident = notice.incident,
                "notification to {} ({:?}) failed: {why}; {} not notified",
                target.url,
                target.format,
                notice.event.as_str()
            );
        }
    }
}

/// Returns the attempts it took, or why it gave up.
async fn attempt_all(
    client: &reqwest::Client,
    target: &Notifier,
    notice: &Notice,
    policy: Policy,
) -> Result<u32, String> {
    // `Display` of a Secret names only where it comes from.
    let url = target.url.expose().map_err(str::to_owned)?;
    let body = payload(target.format, notice);
    let mut wait = policy.backoff;
    let mut last = String::new();
    for attempt in 1..=policy.attempts.max(1) {
        match client.post(url).json(&body).send().await {
            Ok(resp) if resp.status().is_success() => return Ok(attempt),
            Ok(resp) => {
                let status = resp.status();
                last = format!("HTTP {status}");
                // A 4xx (bad URL, revoked token) will not get better by itself.
                if status.is_client_error()
                    && status != reqwest::StatusCode::TOO_MANY_REQUESTS
                    && status != reqwest::StatusCode::REQUEST_TIMEOUT
                {
                    return Err(format!("{last} (not retried)"));
                }
            }
            // The error's text would carry the URL, which is a secret.
            Err(e) => last = e.without_url().to_string(),
        }
        if attempt < policy.attempts {
            tracing::debug!("notification attempt {attempt} failed ({last}); retrying in {wait:?}");
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }
    Err(format!(
        "{last} after {} attempt(s)",
        policy.attempts.max(1)
    ))
}

/// Remembers which rules were notified about (fired on alert or rollback)
/// so their clearing can be announced as a recovery.
#[derive(Default, Debug)]
pub struct Recoveries {
    notified: HashMap<(String, Color), Severity>,
    /// Why the last held rollback was held: each hold is announced once,
    /// not at every retry.
    last_hold: Option<String>,
}

impl Recoveries {
    /// Note that a fired verdict was notified about.
    pub fn notified(&mut self, v: &Verdict) {
        self.notified.insert((v.rule.clone(), v.color), v.severity);
    }

    /// Recovery notices for notified rules that are clear now.
    pub fn cleared(&mut self, service: &str, verdicts: &[Verdict]) -> Vec<Notice> {
        let mut out = Vec::new();
        for v in verdicts.iter().filter(|v| v.state == State::Clear) {
            if let Some(severity) = self.notified.remove(&(v.rule.clone(), v.color)) {
                let mut n = Notice::new(
                    Event::Recovered,
                    severity,
                    service,
                    format!("{} on {} is clear again", v.rule, v.color),
                );
                n.rule = Some(v.rule.clone());
                n.color = Some(v.color);
                n.detail = v.detail.clone();
                out.push(n);
            }
        }
        out
    }

    /// The notice for a rollback the matrix asked for but a hold skipped,
    /// once per distinct hold.
    pub fn held(&mut self, service: &str, v: &Verdict, why: &str) -> Option<Notice> {
        if self.last_hold.as_deref() == Some(why) {
            return None;
        }
        self.last_hold = Some(why.to_owned());
        let mut n = Notice::new(
            Event::RollbackHeld,
            v.severity,
            service,
            format!("{} fired on {}, not rolled back: {why}", v.rule, v.color),
        );
        n.rule = Some(v.rule.clone());
        n.color = Some(v.color);
        n.detail = v.detail.clone();
        Some(n)
    }

    /// The notice for a rule that fired with action `alert`.
    pub fn alert(&mut self, service: &str, v: &Verdict) -> Notice {
        self.notified(v);
        let mut n = Notice::new(
            Event::Alert,
            v.severity,
            service,
            format!("{} fired on {}", v.rule, v.color),
        );
        n.rule = Some(v.rule.clone());
        n.color = Some(v.color);
        n.detail = v.detail.clone();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice() -> Notice {
        let mut n = Notice::new(
            Event::RollbackCompleted,
            Severity::Critical,
            "beluga",
            "blue -> green <v1> & done".into(),
        );
        n.incident = Some(7);
        n.from = Some(Color::Blue);
        n.to = Some(Color::Green);
        n.version = Some("v1".into());
        n.at_ms = 0;
        n
    }

    #[test]
    fn slack_payload_escapes_and_has_text_fallback() {
        let p = payload(NotifyFormat::Slack, &notice());
        let text = p["text"].as_str().unwrap();
        assert!(text.starts_with("[CRITICAL] beluga: rollback completed"));
        let block = p["blocks"][0]["text"]["text"].as_str().unwrap();
        assert!(block.contains("&lt;v1&gt; &amp; done"), "{block}");
        let context = p["blocks"][1]["elements"][0]["text"].as_str().unwrap();
        assert!(context.contains("*incident:* #7"), "{context}");
    }

    #[test]
    fn discord_payload_has_an_embed_and_no_mentions() {
        let p = payload(NotifyFormat::Discord, &notice());
        assert_eq!(p["embeds"][0]["color"], 0xD0_1F_2E);
        assert_eq!(p["embeds"][0]["timestamp"], "1970-01-01T00:00:00.000Z");
        assert_eq!(p["allowed_mentions"]["parse"], json!([]));
        let long = Notice {
            summary: "x".repeat(5000),
            ..notice()
        };
        let p = payload(NotifyFormat::Discord, &long);
        assert_eq!(p["content"].as_str().unwrap().chars().count(), 2000);
    }

    #[test]
    fn json_payload_is_the_notice() {
        let p = payload(NotifyFormat::Json, &notice());
        assert_eq!(p["event"], "rollback_completed");
        assert_eq!(p["severity"], "critical");
        assert_eq!(p["incident"], 7);
        assert_eq!(p["to"], "green");
        assert_eq!(p["at"], "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn worst_case_adds_timeouts_and_backoff() {
        let p = Policy {
            attempts: 3,
            backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        };
        assert_eq!(p.worst_case(), Duration::from_secs(15 + 1 + 2));
    }
}
