//! The automatic rollback: what the daemon does when the matrix asks for a
//! rollback, and after.
//!
//! [`AutoRollback`] holds the one rollback task the daemon runs at a time,
//! starts it when a rollback-worthy verdict changes or a retry falls due,
//! and settles its outcome: logs and counts it, announces a hold once per
//! change, and plans the retry ([`Policy`]). While a rule stays fired, a
//! rollback skipped by a hold (pause, cooldown) is tried again after
//! [`RETRY_AFTER`]; consecutive refusals back off (1, 2, 4, 8 minutes) up
//! to [`RETRY_REFUSED_MAX`]; a task that panicked or stopped on an error
//! counts as a refusal, and its incident is closed beside the loop. The
//! policy does no IO and reads the tokio clock only as it is handed
//! `now`; the task and the closing of a broken one are the only IO here,
//! each in a task of its own, so the work loop never awaits the database.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;

use crate::config::Config;
use crate::daemon::metrics::Metrics;
use crate::matrix::Verdict;
use crate::model::{Color, Millis};
use crate::notifier::{Hub, Notice, Recoveries};
use crate::probe::Prober;
use crate::rollback::{self, Guards, Outcome, Request, RollbackError, Trigger};
use crate::store::Store;

/// While a rollback-worthy rule stays fired but the rollback was skipped or
/// refused, how long before trying again.
pub const RETRY_AFTER: Duration = Duration::from_secs(60);
/// Consecutive refusals back off (1, 2, 4, ... minutes) up to this, so a
/// rule stuck fired against a broken standby does not open an incident and
/// notify every minute.
pub const RETRY_REFUSED_MAX: Duration = Duration::from_secs(15 * 60);

/// When to try again after `refusals` refusals in a row.
pub fn retry_delay(refusals: u32) -> Duration {
    RETRY_AFTER
        .saturating_mul(1 << refusals.saturating_sub(1).min(8))
        .min(RETRY_REFUSED_MAX)
}

/// What a rollback task returns, as its `JoinHandle` hands it over.
pub type TaskResult = Result<Result<Outcome, RollbackError>, JoinError>;

/// When an automatic rollback goes, and what its end means. No IO.
#[derive(Debug, Default)]
pub struct Policy {
    next_attempt: Option<Instant>,
    refusals: u32,
    /// The verdict the task in flight was started for.
    verdict: Option<Verdict>,
}

impl Policy {
    /// Whether a rollback the matrix asks for (`v`) goes now: its verdict
    /// just changed, or a retry fell due.
    pub fn due(&self, v: &Verdict, now: Instant) -> bool {
        v.changed || self.retry_due(now)
    }

    /// A retry (or a rollback a hold kept back) is due: judge now.
    pub fn retry_due(&self, now: Instant) -> bool {
        self.next_attempt.is_some_and(|t| now >= t)
    }

    /// A hold (pause, cooldown) just ended: what it held back goes now.
    pub fn hold_ended(&mut self, now: Instant) {
        self.next_attempt = Some(now);
    }

    /// A rollback started for `v`.
    fn started(&mut self, v: &Verdict) {
        self.verdict = Some(v.clone());
        self.next_attempt = None;
    }

    /// The task ended with `outcome` at `now`: plan the retry, and return
    /// the notice of a hold, once per distinct hold (`Recoveries::held`).
    pub fn ended(
        &mut self,
        outcome: &Outcome,
        service: &str,
        recoveries: &mut Recoveries,
        now: Instant,
    ) -> Option<Notice> {
        let verdict = self.verdict.take();
        let notice = match (outcome, &verdict) {
            (Outcome::Skipped { why, .. }, Some(v)) => recoveries.held(service, v, why),
            _ => None,
        };
        match outcome {
            Outcome::Refused { .. } => {
                self.refusals += 1;
                self.next_attempt = Some(now + retry_delay(self.refusals));
            }
            Outcome::Skipped { retry_in, .. } => {
                let wait = retry_in.map_or(RETRY_AFTER, |d| d.min(RETRY_AFTER));
                self.next_attempt = Some(now + wait);
            }
            _ => self.refusals = 0,
        }
        notice
    }

    /// The task ended without an outcome (panicked, stopped on an error):
    /// counted as a refusal. Returns when to try again.
    pub fn broke(&mut self, now: Instant) -> Duration {
        self.verdict = None;
        self.refusals += 1;
        let delay = retry_delay(self.refusals);
        self.next_attempt = Some(now + delay);
        delay
    }
}

/// The daemon's automatic rollback: the task in flight, the policy, and
/// the closing of a broken task.
pub struct AutoRollback {
    store: Store,
    prober: Prober,
    hub: Hub,
    metrics: Arc<Metrics>,
    policy: Policy,
    task: Option<JoinHandle<Result<Outcome, RollbackError>>>,
    /// Closing the incident of a broken rollback task, beside the loop.
    closing: Option<JoinHandle<()>>,
    /// Whether this daemon could switch the service when last asked (a
    /// shared database's leader lock; always without one).
    could_switch: bool,
}

impl AutoRollback {
    pub fn new(store: &Store, prober: &Prober, hub: &Hub, metrics: &Arc<Metrics>) -> AutoRollback {
        AutoRollback {
            store: store.clone(),
            prober: prober.clone(),
            hub: hub.clone(),
            metrics: metrics.clone(),
            policy: Policy::default(),
            task: None,
            closing: None,
            could_switch: store.leadership().may_switch(),
        }
    }

    /// True once when this daemon has just become the service's switcher
    /// (it took the shared database's leader lock): what a follower held
    /// back goes now, not at the next retry. Reads a watch; never waits.
    pub fn lead_gained(&mut self) -> bool {
        let may = self.store.leadership().may_switch();
        let gained = may && !self.could_switch;
        self.could_switch = may;
        gained
    }

    /// Whether a rollback task runs.
    pub fn in_flight(&self) -> bool {
        self.task.is_some()
    }

    pub fn retry_due(&self, now: Instant) -> bool {
        self.policy.retry_due(now)
    }

    pub fn hold_ended(&mut self, now: Instant) {
        self.policy.hold_ended(now);
    }

    /// The matrix asks for a rollback of `active` for `v`: start one unless
    /// one runs or it is not due (see [`Policy::due`]). `since_ms` is when
    /// the matrix saw the failure streak begin; `guards` the daemon's pause
    /// and cooldown. Never waits.
    #[allow(clippy::too_many_arguments)]
    pub fn consider(
        &mut self,
        config: &Arc<Config>,
        v: &Verdict,
        active: Color,
        since_ms: Option<Millis>,
        guards: &Guards,
        recoveries: &mut Recoveries,
        now: Instant,
    ) {
        if self.task.is_some() || !self.policy.due(v, now) {
            return;
        }
        recoveries.notified(v);
        self.policy.started(v);
        self.task = Some(self.spawn(config, v, active, since_ms, guards.clone()));
    }

    /// Wait for the task in flight to end (pending while none runs: use
    /// with `if self.in_flight()` in a `select!`).
    pub async fn finished(&mut self) -> TaskResult {
        match self.task.as_mut() {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    }

    /// The task ended with `result`: log and count it, send a hold's
    /// notice, plan the retry; a broken task's incident is closed in a task
    /// of its own. Never waits.
    pub fn settle(
        &mut self,
        config: &Arc<Config>,
        result: TaskResult,
        recoveries: &mut Recoveries,
    ) {
        self.task = None;
        let now = Instant::now();
        let why = match result {
            Ok(Ok(outcome)) => {
                tracing::info!("rollback finished: {outcome}");
                self.metrics.rollback(outcome.word());
                if let Some(notice) = self
                    .policy
                    .ended(&outcome, &config.service, recoveries, now)
                {
                    self.hub.send(&config.notify, notice);
                }
                return;
            }
            Ok(Err(e)) => {
                tracing::error!("rollback stopped on an error: {e}");
                e.to_string()
            }
            Err(e) => {
                tracing::error!("rollback task panicked: {e}");
                e.to_string()
            }
        };
        self.metrics.rollback("error");
        self.policy.broke(now);
        self.closing = Some(abandon(
            config,
            &self.store,
            &self.prober,
            Some(&self.hub),
            why,
        ));
    }

    /// At shutdown: wait for the closing of a broken task, and for the
    /// rollback in flight, within [`rollback_bound`].
    pub async fn stop(self, config: &Config) {
        if let Some(task) = self.closing {
            if let Err(e) = task.await {
                tracing::error!("closing a broken rollback panicked: {e}");
            }
        }
        let Some(mut task) = self.task else { return };
        // Never abandon a rollback half-way: every step is bounded by the
        // rollback timeout and verification by verify_after, so this wait
        // is bounded too. Past that bound the rollback's state is already
        // in the database (each step is written before its effect), and the
        // next start reconciles it.
        let bound = rollback_bound(config);
        tracing::warn!(
            "waiting (at most {}) for the rollback in flight to finish before exiting",
            humantime::format_duration(bound)
        );
        match tokio::time::timeout(bound, &mut task).await {
            Ok(Ok(Ok(outcome))) => tracing::info!("rollback finished: {outcome}"),
            Ok(Ok(Err(e))) => tracing::error!("rollback stopped on an error: {e}"),
            Ok(Err(e)) => tracing::error!("rollback task panicked: {e}"),
            Err(_) => {
                task.abort();
                tracing::error!(
                    "the rollback in flight did not finish within {}; exiting with its state recorded for the next start to reconcile",
                    humantime::format_duration(bound)
                );
            }
        }
    }

    fn spawn(
        &self,
        config: &Arc<Config>,
        verdict: &Verdict,
        active: Color,
        since_ms: Option<Millis>,
        guards: Guards,
    ) -> JoinHandle<Result<Outcome, RollbackError>> {
        let (config, store, prober, hub) = (
            config.clone(),
            self.store.clone(),
            self.prober.clone(),
            self.hub.clone(),
        );
        let request = Request {
            trigger: Trigger::Automatic,
            severity: verdict.severity,
            rule: Some(verdict.rule.clone()),
            reason: format!("{} on {}: {}", verdict.rule, verdict.color, verdict.detail),
            evidence: serde_json::to_value(verdict).unwrap_or_default(),
            since_ms,
        };
        tokio::spawn(async move {
            let ctx = rollback::Context {
                config: &config,
                store: &store,
                prober: &prober,
                notify: Some(&hub),
            };
            rollback::execute_guarded(&ctx, request, guards, Some(active)).await
        })
    }
}

/// The rollback task ended without an outcome (it panicked, or stopped on
/// an error): close its incident as failed and free the in-flight slot
/// (`rollback::abandon`) in a task of its own (the loop does not await the
/// database). Returns the closing task.
fn abandon(
    config: &Arc<Config>,
    store: &Store,
    prober: &Prober,
    hub: Option<&Hub>,
    why: String,
) -> JoinHandle<()> {
    let (config, store, prober, hub) =
        (config.clone(), store.clone(), prober.clone(), hub.cloned());
    tokio::spawn(async move {
        let ctx = rollback::Context {
            config: &config,
            store: &store,
            prober: &prober,
            notify: hub.as_ref(),
        };
        match rollback::abandon(&ctx, &why).await {
            Ok(Some(outcome)) => tracing::warn!("closed the broken rollback: {outcome}"),
            Ok(None) => {}
            // The database refuses: the slot stays held by this live process
            // (`reconcile` never takes over a live holder) until a restart.
            // Say so.
            Err(e) => tracing::error!(
                "cannot close the broken rollback's incident ({e}); automatic rollbacks stay blocked until the daemon restarts"
            ),
        }
    })
}

/// The longest a rollback can take: prepare, switch and retire each within
/// the rollback timeout, the target's and the restored color's health each
/// within verify_after, plus a margin for the database writes between.
fn rollback_bound(config: &Config) -> Duration {
    config.rollback.timeout * 3 + config.rollback.verify_after * 2 + Duration::from_secs(30)
}

#[cfg(test)]
mod policy_tests {
    use super::*;
    use crate::matrix::State;
    use crate::model::{Severity, Signal};

    #[test]
    fn refusals_back_off_to_fifteen_minutes() {
        let minutes: Vec<u64> = (1..=6).map(|n| retry_delay(n).as_secs() / 60).collect();
        assert_eq!(minutes, [1, 2, 4, 8, 15, 15]);
    }

    fn fired(changed: bool) -> Verdict {
        Verdict {
            at_ms: 0,
            rule: "critical: health_failures >= 5".into(),
            severity: Severity::Critical,
            signal: Signal::HealthFailures,
            color: Color::Blue,
            state: State::Fired,
            n: 5,
            value: Some(5.0),
            threshold: 5.0,
            window_ms: 60_000,
            baseline: None,
            detail: "5 failures in a row".into(),
            changed,
        }
    }

    fn refused() -> Outcome {
        Outcome::Refused {
            incident: 1,
            why: "standby unhealthy".into(),
        }
    }

    fn skipped(why: &str) -> Outcome {
        Outcome::Skipped {
            why: why.into(),
            retry_in: None,
        }
    }

    /// Whether a rule still fired (unchanged) starts a rollback `after`
    /// from now, and not a second before.
    async fn due_after(policy: &Policy, after: Duration) -> bool {
        let v = fired(false);
        tokio::time::advance(after - Duration::from_secs(1)).await;
        let early = policy.due(&v, Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
        !early && policy.due(&v, Instant::now())
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_rollback_is_retried_after_a_minute_then_backs_off_to_fifteen() {
        let mut policy = Policy::default();
        let mut recoveries = Recoveries::default();
        // A verdict that just fired goes at once; one still fired waits.
        assert!(policy.due(&fired(true), Instant::now()));
        assert!(!policy.due(&fired(false), Instant::now()));
        let mut waits = Vec::new();
        for _ in 0..6 {
            policy.started(&fired(true));
            let notice = policy.ended(&refused(), "svc", &mut recoveries, Instant::now());
            assert!(notice.is_none(), "a refusal is no hold");
            let minutes = [1, 2, 4, 8, 15, 15][waits.len()];
            let after = Duration::from_secs(60 * minutes);
            assert!(due_after(&policy, after).await, "after {minutes} min");
            waits.push(minutes);
        }
        assert_eq!(waits, [1, 2, 4, 8, 15, 15]);
        // A rollback that ran resets the backoff: the next refusal waits a
        // minute again.
        policy.started(&fired(true));
        let verified = Outcome::Verified {
            incident: 2,
            to: Color::Green,
        };
        policy.ended(&verified, "svc", &mut recoveries, Instant::now());
        assert!(!policy.retry_due(Instant::now() + Duration::from_secs(3600)));
        policy.started(&fired(true));
        policy.ended(&refused(), "svc", &mut recoveries, Instant::now());
        assert!(due_after(&policy, RETRY_AFTER).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_is_announced_once_per_change_and_retried_every_minute() {
        let mut policy = Policy::default();
        let mut recoveries = Recoveries::default();
        let paused = "automatic rollbacks are paused until 12:00: deploying";
        let mut notices = Vec::new();
        for why in [paused, paused, paused, "cooldown", "cooldown", paused] {
            policy.started(&fired(false));
            let notice = policy.ended(&skipped(why), "svc", &mut recoveries, Instant::now());
            notices.extend(notice.map(|n| n.summary));
            // A hold is no refusal: a minute every time, no backoff.
            assert!(due_after(&policy, RETRY_AFTER).await, "{why}");
        }
        assert_eq!(notices.len(), 3, "{notices:#?}");
        assert!(notices[0].contains("not rolled back: automatic rollbacks are paused"));
        assert!(notices[1].ends_with("not rolled back: cooldown"));
        assert!(notices[2].contains("paused"));
        // A hold that ends lets the rollback go at once.
        policy.started(&fired(false));
        policy.ended(&skipped(paused), "svc", &mut recoveries, Instant::now());
        assert!(!policy.retry_due(Instant::now()));
        policy.hold_ended(Instant::now());
        assert!(policy.retry_due(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_known_to_end_is_asked_again_when_it_ends() {
        let mut policy = Policy::default();
        let mut recoveries = Recoveries::default();
        policy.started(&fired(false));
        let held = Outcome::Skipped {
            why: "host a's rollback #1 of service svc is in flight (switching): not run here too"
                .into(),
            retry_in: Some(Duration::from_secs(4)),
        };
        policy.ended(&held, "svc", &mut recoveries, Instant::now());
        assert!(!policy.retry_due(Instant::now() + Duration::from_millis(3_900)));
        assert!(policy.retry_due(Instant::now() + Duration::from_secs(4)));
        // Never later than the usual retry.
        policy.started(&fired(false));
        let long = Outcome::Skipped {
            why: "held".into(),
            retry_in: Some(Duration::from_secs(3600)),
        };
        policy.ended(&long, "svc", &mut recoveries, Instant::now());
        assert!(policy.retry_due(Instant::now() + RETRY_AFTER));
    }

    #[tokio::test(start_paused = true)]
    async fn a_broken_task_backs_off_like_a_refusal() {
        let mut policy = Policy::default();
        let mut recoveries = Recoveries::default();
        policy.started(&fired(true));
        policy.ended(&refused(), "svc", &mut recoveries, Instant::now());
        assert_eq!(policy.broke(Instant::now()), 2 * RETRY_AFTER);
        assert!(due_after(&policy, 2 * RETRY_AFTER).await);
    }
}

#[cfg(test)]
mod task_tests {
    use super::*;
    use crate::model::{Sample, Severity, now_ms};
    use crate::rollback::{PANIC_FAULT, Trigger};

    /// The unit tests' configuration, its rollback verified by nothing
    /// but a 1 s wait.
    fn config_text() -> String {
        format!(
            "{}verify_target = false\nverify_after = \"1s\"\n",
            crate::config::TEST_CONFIG
        )
    }

    fn request(reason: &str) -> Request {
        Request {
            trigger: Trigger::Automatic,
            severity: Severity::Critical,
            rule: Some("critical: health_failures >= 3 over 10m".into()),
            reason: reason.into(),
            evidence: serde_json::json!({}),
            since_ms: None,
        }
    }

    fn failing_green() -> Verdict {
        Verdict {
            at_ms: now_ms(),
            rule: "critical: health_failures >= 3 over 10m".into(),
            severity: Severity::Critical,
            signal: crate::model::Signal::HealthFailures,
            color: Color::Green,
            state: crate::matrix::State::Fired,
            n: 3,
            value: Some(3.0),
            threshold: 3.0,
            window_ms: 600_000,
            baseline: None,
            detail: "3 failures in a row".into(),
            changed: true,
        }
    }

    /// The task rolls back the color the loop judged (handed in: the state
    /// watcher owns it), not one it reads again, and its "detected" event is
    /// the matrix's streak start, never a second one read from the stored
    /// samples.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_task_rolls_back_the_judged_color_from_the_matrix_streak_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rollbackd.toml");
        std::fs::write(&path, config_text()).unwrap();
        let config = Arc::new(Config::load(&path).unwrap());
        let store = Store::open_dir(&config.daemon.state_dir).await.unwrap();
        let now = now_ms();
        // The database's latest deployment is blue's; green was before it.
        store
            .record_deployment(Color::Green, "v1", "cli", now - 20_000)
            .await
            .unwrap();
        store
            .record_deployment(Color::Blue, "v2", "cli", now - 10_000)
            .await
            .unwrap();
        // Stored health samples say green has failed for 9 s.
        let failing: Vec<Sample> = (1..10)
            .map(|i| Sample {
                at_ms: now - 10_000 + i * 1000,
                probe: "healthz".into(),
                color: Some(Color::Green),
                deployment: None,
                ok: false,
                latency_ms: Some(1.0),
                status: crate::model::SampleStatus::Failed,
                detail: "503".into(),
                requests: None,
                errors: None,
            })
            .collect();
        store.insert_samples(&failing).await.unwrap();
        let (hub, _worker) = Hub::start(crate::notifier::Policy::default());
        let metrics = Arc::new(Metrics::new());
        let mut auto = AutoRollback::new(&store, &Prober::new(), &hub, &metrics);
        let mut recoveries = Recoveries::default();

        let mut attempt = async |since: Option<Millis>| {
            auto.consider(
                &config,
                &failing_green(),
                Color::Green,
                since,
                &Guards::default(),
                &mut recoveries,
                Instant::now(),
            );
            assert!(auto.in_flight());
            let result = tokio::time::timeout(Duration::from_secs(30), auto.finished())
                .await
                .expect("the rollback ends");
            let outcome = result.as_ref().unwrap().as_ref().unwrap().clone();
            auto.settle(&config, result, &mut recoveries);
            assert!(!auto.in_flight());
            let Outcome::Refused { incident, why } = outcome else {
                panic!("{outcome:?}");
            };
            // Green to blue: blue had nothing before green to restore.
            assert!(why.contains("no previous deployment on blue"), "{why}");
            let inc = store.incident(incident).await.unwrap();
            assert_eq!(
                (inc.from_color, inc.to_color),
                (Some(Color::Green), Some(Color::Blue))
            );
            let events = store.incident_events(incident).await.unwrap();
            events
                .iter()
                .filter(|e| e.state == crate::model::EventKind::Detected)
                .map(|e| e.at_ms)
                .collect::<Vec<_>>()
        };
        // No streak in the matrix: no "detected", whatever the samples say.
        assert_eq!(attempt(None).await, Vec::<Millis>::new());
        // The matrix's streak start is the one recorded.
        assert_eq!(attempt(Some(now - 4000)).await, [now - 4000]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicked_rollback_closes_its_incident_frees_the_slot_and_retries_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rollbackd.toml");
        let text = config_text();
        std::fs::write(&path, text).unwrap();
        let config = Arc::new(Config::load(&path).unwrap());
        let store = Store::open_dir(&config.daemon.state_dir).await.unwrap();
        let now = now_ms();
        store
            .record_deployment(Color::Green, "v1", "cli", now - 2000)
            .await
            .unwrap();
        store
            .record_deployment(Color::Blue, "v2", "cli", now - 1000)
            .await
            .unwrap();
        let prober = Prober::new();

        // The task dies with its incident open and the slot held.
        let task = {
            let (config, store, prober) = (config.clone(), store.clone(), prober.clone());
            tokio::spawn(async move {
                let ctx = rollback::Context {
                    config: &config,
                    store: &store,
                    prober: &prober,
                    notify: None,
                };
                rollback::execute(&ctx, request(&format!("bad {PANIC_FAULT}"))).await
            })
        };
        let panicked = task.await.unwrap_err();
        assert!(panicked.is_panic());
        let open = store.in_flight_incident().await.unwrap().unwrap();
        assert_eq!(open.state, crate::model::IncidentState::Requested);

        let mut policy = Policy::default();
        let closing = abandon(&config, &store, &prober, None, panicked.to_string());
        let delay = policy.broke(Instant::now());
        closing.await.unwrap();
        // Retried like a refusal: after a minute, then backing off.
        assert_eq!((delay, policy.refusals), (RETRY_AFTER, 1));
        assert_eq!(policy.broke(Instant::now()), 2 * RETRY_AFTER);
        assert_eq!(store.in_flight_incident().await.unwrap(), None);
        let closed = store.incident(open.id).await.unwrap();
        assert_eq!(closed.state, crate::model::IncidentState::Failed);
        let outcome = closed.outcome.unwrap_or_default();
        assert!(
            outcome.contains("the rollback task stopped")
                && outcome.contains("nothing was switched"),
            "{outcome}"
        );
        // The slot is free: the next attempt runs its switch (green, on a
        // closed port, then fails its verification: escalated).
        let ctx = rollback::Context {
            config: &config,
            store: &store,
            prober: &prober,
            notify: None,
        };
        let next = rollback::execute(&ctx, request("blue fails again"))
            .await
            .unwrap();
        assert!(
            matches!(&next, Outcome::Escalated { incident, .. } if *incident != open.id),
            "{next:?}"
        );
    }
}
