//! Outgoing notifications: `[[notify]]` webhooks in `slack`, `discord`,
//! `json` or `template` format (see `config::template`), filtered by
//! `min_severity`.
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
//! Every notice carries a `key` and a `phase`: what opens something
//! (a rollback started, an alert) and what closes it (the incident's end,
//! the rule's recovery) share the key, so an external incident (PagerDuty's
//! dedup key, a Statuspage incident) is resolved by the notice that ends it.
//! Deliveries of one key to one target go out in order, and what the
//! opening request answered (JSON) is kept in memory for the closing one
//! (`opened` in a template), until the close is delivered.
//!
//! During a `rollbackd drill` the daemon's hub ([`Hub::start_with_drills`])
//! withholds notices unless the drill asked for them (`--notify`); those it
//! sends are marked as a drill.
//!
//! This file owns the payload shapes and the delivery policy. What deserves a
//! notice is decided by its callers (`rollback` for the rollback lifecycle,
//! `daemon` for alerts and recoveries, through [`Recoveries`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use crate::config::{Notifier, NotifyFormat};
use crate::matrix::{State, Verdict};
use crate::model::{Color, Severity, format_ms};
// A notice's vocabulary lives in `model` (config checks templates against
// sample notices); here under its old names.
pub use crate::model::{Event, Notice, Phase};
use crate::store::Store;

static FAILED: AtomicU64 = AtomicU64::new(0);

/// Notifications given up on (after every retry, or dropped because the
/// queue was full) since the process started.
pub fn failed_total() -> u64 {
    FAILED.load(Ordering::Relaxed)
}

/// Per notifier, named by its place among the `[[notify]]` tables and its
/// format (never its URL, which is a secret): (delivered, given up on) since
/// the process started. A std `Mutex`: held for one map update.
static PER_TARGET: Mutex<BTreeMap<TargetKey, (u64, u64)>> = Mutex::new(BTreeMap::new());

/// A notifier's place among the `[[notify]]` tables and its format.
type TargetKey = (usize, &'static str);

/// One notifier's totals (see [`target_totals`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetTotals {
    /// Its place among the `[[notify]]` tables, 1-based.
    pub id: usize,
    pub format: &'static str,
    pub sent: u64,
    pub failed: u64,
}

/// Deliveries per notifier since the process started (for `/metrics`).
pub fn target_totals() -> Vec<TargetTotals> {
    let Ok(map) = PER_TARGET.lock() else {
        return Vec::new();
    };
    map.iter()
        .map(|(&(id, format), &(sent, failed))| TargetTotals {
            id,
            format,
            sent,
            failed,
        })
        .collect()
}

fn count_target(target: &Notifier, sent: u64, failed: u64) {
    if let Ok(mut map) = PER_TARGET.lock() {
        let e = map
            .entry((target.id, format_name(target.format)))
            .or_default();
        e.0 += sent;
        e.1 += failed;
    }
}

/// The format's name as the configuration spells it.
pub fn format_name(format: NotifyFormat) -> &'static str {
    match format {
        NotifyFormat::Slack => "slack",
        NotifyFormat::Discord => "discord",
        NotifyFormat::Json => "json",
        NotifyFormat::Template => "template",
    }
}

/// How many notices may wait for the worker before new ones are dropped.
const QUEUE: usize = 256;
/// How many deliveries run at once.
const PARALLEL: usize = 8;

impl Notice {
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
            v["key"] = json!(n.key());
            v["phase"] = json!(n.phase().as_str());
            v
        }
        // Rendered by `request`; here, its fields (for a test or a preview).
        NotifyFormat::Template => crate::config::template::context(n, None, &[]),
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
/// total of failures is [`failed_total`]).
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

    fn add_sent(&self, target: &Notifier) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        count_target(target, 1, 0);
    }

    fn add_failed(&self, targets: &[Notifier]) {
        let n = targets.len() as u64;
        self.failed.fetch_add(n, Ordering::Relaxed);
        FAILED.fetch_add(n, Ordering::Relaxed);
        for t in targets {
            count_target(t, 0, 1);
        }
    }
}

/// A handle on the notification queue. Cloning is cheap; the worker stops
/// once every handle is dropped and the notices queued are delivered.
#[derive(Clone)]
pub struct Hub {
    tx: mpsc::Sender<Job>,
    stats: Arc<Stats>,
}

/// The longest a `Retry-After` is honoured; a receiver asking for more is
/// retried after this (and the notice may run out of attempts).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// How many opened keys (and their answers) the worker remembers; past
/// this the oldest are forgotten.
const REMEMBERED: usize = 1024;

impl Hub {
    /// Start the worker. The caller owns its handle: await it (bounded by
    /// [`Policy::worst_case`]) after dropping every [`Hub`] to deliver what
    /// is queued before exiting.
    pub fn start(policy: Policy) -> (Hub, JoinHandle<()>) {
        Hub::start_inner(policy, None)
    }

    /// [`Hub::start`] for the daemon: each notice is first checked against
    /// the drills recorded in `store` (`rollbackd drill`), and withheld when
    /// it belongs to a drill that did not ask for notifications.
    pub fn start_with_drills(policy: Policy, store: Store) -> (Hub, JoinHandle<()>) {
        Hub::start_inner(policy, Some(store))
    }

    fn start_inner(policy: Policy, drills: Option<Store>) -> (Hub, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(Stats::default());
        let worker = tokio::spawn(work(rx, policy, stats.clone(), drills));
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
        if let Err(e) = self.tx.try_send(Job { targets, notice }) {
            let targets = match &e {
                mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => {
                    &j.targets
                }
            };
            self.stats.add_failed(targets);
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "the notification queue is full",
                mpsc::error::TrySendError::Closed(_) => "the notification worker has stopped",
            };
            tracing::error!("notification dropped: {why}");
        }
    }
}

/// The deliveries of one key to one target still going (each resolves to
/// `true` when done).
#[derive(Default)]
struct Pending {
    opens: Vec<tokio::sync::watch::Receiver<bool>>,
    close: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Pending {
    fn settled(&self) -> bool {
        self.opens.iter().chain(&self.close).all(|rx| *rx.borrow())
    }
}

/// What the opening request for one key to one target answered, kept for
/// the closing one.
#[derive(Default)]
struct Memory {
    opened: std::sync::Mutex<HashMap<String, Value>>,
    order: std::sync::Mutex<std::collections::VecDeque<String>>,
}

impl Memory {
    fn opened(&self, slot: &str) -> Option<Value> {
        // A poisoned lock only means a delivery panicked mid-insert; the
        // map itself is still usable.
        let map = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        map.get(slot).cloned()
    }

    fn remember(&self, slot: &str, answer: Value) {
        let mut map = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        let mut order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        if map.insert(slot.to_owned(), answer).is_none() {
            order.push_back(slot.to_owned());
        }
        while order.len() > REMEMBERED {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    fn forget(&self, slot: &str) {
        let mut map = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(slot);
        let mut order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        order.retain(|s| s != slot);
    }
}

async fn work(
    mut rx: mpsc::Receiver<Job>,
    policy: Policy,
    stats: Arc<Stats>,
    drills: Option<Store>,
) {
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
                stats.add_failed(&job.targets);
            }
            return;
        }
    };
    // Per key and target, the deliveries still going: a close waits for
    // the opens before it (it must never overtake them, and may need what
    // they answered), and an open for the close before it. Opens among
    // themselves go in parallel.
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let memory = Arc::new(Memory::default());
    let mut running = JoinSet::new();
    while let Some(mut job) = rx.recv().await {
        if let Some(store) = &drills {
            match store.drill_at(job.notice.at_ms, job.notice.incident).await {
                Ok(Some(d)) if !d.notify => {
                    tracing::info!(
                        rollbackd.incident = job.notice.incident,
                        "notification withheld: drill #{} is running without --notify ({})",
                        d.id,
                        job.notice.event.as_str()
                    );
                    continue;
                }
                Ok(Some(d)) => job.notice.drill = Some(d.id),
                Ok(None) => {}
                // Better a drill's notice sent than a real one lost.
                Err(e) => tracing::warn!("cannot read drills, notifying anyway: {e}"),
            }
        }
        let key = job.notice.key();
        for target in job.targets {
            while running.len() >= PARALLEL {
                running.join_next().await;
            }
            let slot = format!("{}|{key}", target.id);
            let (done_tx, done_rx) = tokio::sync::watch::channel(false);
            let p = pending.entry(slot.clone()).or_default();
            p.opens.retain(|rx| !*rx.borrow());
            let before: Vec<_> = match job.notice.phase() {
                Phase::Close => {
                    let opens = std::mem::take(&mut p.opens);
                    p.close = Some(done_rx);
                    opens
                }
                Phase::Open | Phase::Info => {
                    let close = p.close.take().into_iter().collect();
                    p.opens.push(done_rx);
                    close
                }
            };
            if pending.len() > REMEMBERED {
                pending.retain(|_, p| !p.settled());
            }
            let (client, notice, stats, memory) = (
                client.clone(),
                job.notice.clone(),
                stats.clone(),
                memory.clone(),
            );
            running.spawn(async move {
                for mut earlier in before {
                    // Err: the earlier delivery's task is gone; go on.
                    let _ = earlier.wait_for(|done| *done).await;
                }
                deliver(&client, &target, &notice, policy, &stats, &memory, &slot).await;
                let _ = done_tx.send(true);
            });
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
    memory: &Memory,
    slot: &str,
) {
    match attempt_all(client, target, notice, policy, memory.opened(slot)).await {
        Ok(Delivered::Sent { attempts, answer }) => {
            stats.add_sent(target);
            match notice.phase() {
                Phase::Open => {
                    if let Some(a) = answer {
                        memory.remember(slot, a);
                    }
                }
                Phase::Close => memory.forget(slot),
                Phase::Info => {}
            }
            tracing::debug!(
                rollbackd.severity = notice.severity.as_str(),
                "notification sent to {} ({}) after {attempts} attempt(s)",
                target.url,
                format_name(target.format)
            );
        }
        Ok(Delivered::Nothing) => {
            tracing::debug!(
                "template for {} renders nothing for {}: not sent",
                target.url,
                notice.event.as_str()
            );
        }
        Err(why) => {
            stats.add_failed(std::slice::from_ref(target));
            tracing::error!(
                rollbackd.severity = notice.severity.as_str(),
                rollbackd.incident = notice.incident,
                "notification to {} ({}) failed: {why}; {} not notified",
                target.url,
                format_name(target.format),
                notice.event.as_str()
            );
        }
    }
}

enum Delivered {
    /// Accepted; with the answer's body when it was JSON.
    Sent {
        attempts: u32,
        answer: Option<Value>,
    },
    /// The template rendered an empty body: nothing to send.
    Nothing,
}

/// One request, ready to send (and to send again).
struct Request {
    method: reqwest::Method,
    url: String,
    content_type: String,
    body: String,
}

/// Build the request for one target. Its errors never carry a secret.
fn request(target: &Notifier, notice: &Notice, opened: Option<&Value>) -> Result<Request, String> {
    // `Display` of a Secret names only where it comes from.
    let url = target.url.expose().map_err(str::to_owned)?;
    match (&target.template, target.format) {
        (Some(t), NotifyFormat::Template) => {
            let mut secrets = Vec::with_capacity(target.secrets.len());
            for (name, secret) in &target.secrets {
                secrets.push((
                    name.clone(),
                    secret.expose().map_err(str::to_owned)?.to_owned(),
                ));
            }
            let ctx = crate::config::template::context(notice, opened, &secrets);
            let r = t.render(&ctx)?;
            let method = reqwest::Method::from_bytes(r.method.as_bytes())
                .map_err(|_| format!("method renders to {:?}: not an HTTP method", r.method))?;
            Ok(Request {
                method,
                url: format!("{url}{}", r.path),
                content_type: target
                    .content_type
                    .clone()
                    .unwrap_or_else(|| "application/json".into()),
                body: r.body,
            })
        }
        _ => Ok(Request {
            method: reqwest::Method::POST,
            url: url.to_owned(),
            content_type: target
                .content_type
                .clone()
                .unwrap_or_else(|| "application/json".into()),
            body: payload(target.format, notice).to_string(),
        }),
    }
}

/// How long a 429 or 503 asks to wait: `Retry-After` in seconds (an HTTP
/// date is not honoured: the backoff applies), at most [`MAX_RETRY_AFTER`].
fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let secs: u64 = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// Returns the attempts it took and the answer, or why it gave up.
async fn attempt_all(
    client: &reqwest::Client,
    target: &Notifier,
    notice: &Notice,
    policy: Policy,
    opened: Option<Value>,
) -> Result<Delivered, String> {
    let req = request(target, notice, opened.as_ref())?;
    if req.body.trim().is_empty() && target.format == NotifyFormat::Template {
        return Ok(Delivered::Nothing);
    }
    let mut wait = policy.backoff;
    let mut last = String::new();
    for attempt in 1..=policy.attempts.max(1) {
        let mut builder = client
            .request(req.method.clone(), &req.url)
            .header(reqwest::header::CONTENT_TYPE, &req.content_type)
            .body(req.body.clone());
        for (name, value) in &target.headers {
            builder = builder.header(name.as_str(), value.expose().map_err(str::to_owned)?);
        }
        let mut pause = wait;
        match builder.send().await {
            Ok(resp) if resp.status().is_success() => {
                let answer = resp
                    .bytes()
                    .await
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
                return Ok(Delivered::Sent {
                    attempts: attempt,
                    answer,
                });
            }
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
                if let Some(asked) = retry_after(&resp) {
                    pause = pause.max(asked);
                    last = format!("{last}, Retry-After {}s", asked.as_secs());
                }
            }
            // The error's text would carry the URL, which is a secret.
            Err(e) => last = e.without_url().to_string(),
        }
        if attempt < policy.attempts {
            tracing::debug!(
                "notification attempt {attempt} failed ({last}); retrying in {}",
                humantime::format_duration(pause)
            );
            tokio::time::sleep(pause).await;
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
        // Its clearing closes what this notice opened.
        self.notified(v);
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

    /// Issue 16: every way an incident ends closes it, under the key it
    /// was opened with.
    #[test]
    fn every_end_of_an_incident_closes_the_key_its_start_opened() {
        let start = Notice {
            event: Event::RollbackStarted,
            ..notice()
        };
        assert_eq!(start.phase(), Phase::Open);
        for end in [
            Event::RollbackCompleted,
            Event::RollbackFailed,
            Event::RollbackRefused,
            Event::RollbackEscalated,
            Event::RollbackDryRun,
        ] {
            let n = Notice {
                event: end,
                severity: Severity::Low,
                ..notice()
            };
            assert_eq!(n.phase(), Phase::Close, "{end:?}");
            assert_eq!(n.key(), start.key(), "{end:?}");
        }
        assert_eq!(start.key(), "rollbackd/beluga/incident/7");
        // An alert and its recovery share the rule's key on that color.
        let alert = Notice {
            event: Event::Alert,
            incident: None,
            rule: Some("medium: error_rate > 10%".into()),
            color: Some(Color::Blue),
            ..notice()
        };
        let recovered = Notice {
            event: Event::Recovered,
            ..alert.clone()
        };
        assert_eq!(alert.phase(), Phase::Open);
        assert_eq!(recovered.phase(), Phase::Close);
        assert_eq!(alert.key(), recovered.key());
        let green = Notice {
            color: Some(Color::Green),
            ..alert.clone()
        };
        assert_ne!(green.key(), alert.key());
        assert_eq!(
            Notice {
                event: Event::DeployReport,
                incident: None,
                ..notice()
            }
            .phase(),
            Phase::Info
        );
    }

    #[test]
    fn a_drill_notice_says_so_in_its_headline() {
        let mut n = notice();
        assert!(n.headline().starts_with("[CRITICAL]"));
        n.drill = Some(3);
        assert!(n.headline().starts_with("DRILL [CRITICAL]"));
        let p = payload(NotifyFormat::Json, &n);
        assert_eq!(p["drill"], 3);
        assert_eq!(p["key"], "rollbackd/beluga/incident/7");
        assert_eq!(p["phase"], "close");
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
