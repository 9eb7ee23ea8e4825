//! The state watcher: the daemon's periodic database reads, off the work
//! loop.
//!
//! Beside the work loop, this task reads what other processes may change
//! (the active color, each color's deployment and the degradation
//! baselines they imply, pauses, the last automatic rollback) every
//! [`PERIOD`], at once when the `[active] file` changes or the loop asks
//! ([`Handle::look_now`], after a rollback), and sends the loop a [`Seen`]
//! only when something changed. It also checks the latest deployment's
//! bake (which reads and writes the store) when it falls due: once the
//! bake has run its course, then every [`BAKE_CHECK_PERIOD`] until the
//! report is sent; not at all after that, until the next deployment (an
//! idle daemon's reads cost most of its CPU: docs/benchmarks.md). The loop
//! applies a `Seen` without awaiting SQL: a slow or locked database delays
//! these reads, never a verdict.
//!
//! The active color has its home here: the watcher is the one writer of
//! the [`Active`] channel; the work loop, `/status`, the metrics and the
//! rollback task read what it publishes. A new active color is published
//! after the `Seen` read with it, so the loop knows a cutover's deployment
//! before it judges the color the cutover made active.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::Config;
use crate::daemon::DaemonError;
use crate::daemon::fleet::DeploymentIds;
use crate::matrix::{self, Baselines};
use crate::model::{Color, Millis, Signal, duration_ms, now_ms};
use crate::notifier::Hub;
use crate::report::bake::Baked;
use crate::rollback::active;
use crate::store::{Pause, Store};

/// How often the database is read. A `pause`, `resume` or `deploy` by the
/// CLI is seen within this (plus the read); a rollback reads the pause
/// afresh before it acts (`rollback::execute_guarded`), so this bounds only how soon
/// the loop and `status` show it. Each read is three queries, a good part
/// of an idle daemon's cost (docs/benchmarks.md): once a second, not twice.
pub const PERIOD: Duration = Duration::from_secs(1);
/// How often the latest deployment's bake is checked once it is due and
/// its report not sent yet (a rule fired during the bake, or an incident).
pub const BAKE_CHECK_PERIOD: Duration = Duration::from_secs(1);

/// The active color, as the watcher last read it (`None`: nothing says
/// yet). Its one writer is the watcher.
pub type Active = watch::Receiver<Option<Color>>;

/// What the database says, as last read (beside the active color, which is
/// published on its own: [`Active`]).
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub deployments: DeploymentIds,
    /// The latest pause not resumed, whatever its end (the loop judges the
    /// end on the monotonic clock: `guards`).
    pub pause: Option<Pause>,
    /// The last automatic rollback's start, for the cooldown.
    pub cooldown_start_ms: Option<Millis>,
    /// New degradation baselines: when the deployments or the
    /// configuration changed.
    pub baselines: Option<Arc<Baselines>>,
}

/// The loop's end of the watcher.
pub struct Handle {
    pub seen: mpsc::Receiver<Seen>,
    look: Arc<Notify>,
    config: watch::Sender<Arc<Config>>,
    task: JoinHandle<()>,
    reads: Arc<AtomicU64>,
}

impl Handle {
    /// How many times the watcher has read the database (and the `[active]
    /// file`) since it started: about one a [`PERIOD`] when nothing
    /// happens.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Read again now (after a rollback, which changes the active color).
    pub fn look_now(&self) {
        self.look.notify_one();
    }

    /// A reload's new configuration: its `[active] file`, its rules.
    pub fn reconfigure(&self, config: &Arc<Config>) {
        self.config.send_replace(config.clone());
    }

    /// Stop the task and wait for it.
    pub async fn stop(self) {
        drop(self.config);
        drop(self.seen);
        if let Err(e) = self.task.await {
            tracing::error!("the state watcher panicked: {e}");
        }
    }
}

/// Start the watcher; `last` is what the loop already knows (read before
/// it started), so only changes are sent. The watcher publishes the active
/// color on `active` from now on.
pub fn start(
    config: &Arc<Config>,
    store: &Store,
    hub: &Hub,
    last: Seen,
    active: watch::Sender<Option<Color>>,
) -> Handle {
    let (seen_tx, seen_rx) = mpsc::channel(4);
    let (config_tx, config_rx) = watch::channel(config.clone());
    let look = Arc::new(Notify::new());
    let reads = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(run(
        config_rx,
        store.clone(),
        hub.clone(),
        Wakes {
            look: look.clone(),
            reads: reads.clone(),
        },
        seen_tx,
        last,
        active,
    ));
    Handle {
        seen: seen_rx,
        look,
        config: config_tx,
        task,
        reads,
    }
}

/// The watcher's side of [`Handle::look_now`] and [`Handle::reads`].
struct Wakes {
    look: Arc<Notify>,
    reads: Arc<AtomicU64>,
}

async fn run(
    mut config: watch::Receiver<Arc<Config>>,
    store: Store,
    hub: Hub,
    wakes: Wakes,
    tx: mpsc::Sender<Seen>,
    mut last: Seen,
    active_tx: watch::Sender<Option<Color>>,
) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut current = config.borrow_and_update().clone();
    let mut active_file = active::Watch::new(&current);
    // When the bake is checked next; `None`: its report is sent (or there
    // is no deployment), nothing to check until the deployments change.
    let mut bake_due = Some(Instant::now());
    let mut new_config = false;
    // Whether the cooldown's start is read on the next read: only this
    // daemon's rollbacks change it (one daemon per state_dir), and the loop
    // asks for a look after each, so a plain tick does not read it.
    let mut cooldown_due = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = wakes.look.notified() => cooldown_due = true,
            _ = active_file.changed() => {}
            changed = config.changed() => {
                if changed.is_err() {
                    return;
                }
                current = config.borrow_and_update().clone();
                active_file = active::Watch::new(&current);
                new_config = true;
                cooldown_due = true;
                // The bake's length may have changed.
                bake_due = Some(Instant::now());
            }
        }
        wakes.reads.fetch_add(1, Ordering::Relaxed);
        let read = read_some(
            &current,
            &store,
            &last,
            std::mem::take(&mut new_config),
            cooldown_due,
        );
        match read.await {
            Ok((active, seen)) => {
                cooldown_due = false;
                if seen.deployments != last.deployments {
                    bake_due = Some(Instant::now());
                }
                let changed = seen.baselines.is_some()
                    || (&seen.deployments, &seen.pause, seen.cooldown_start_ms)
                        != (&last.deployments, &last.pause, last.cooldown_start_ms);
                last = Seen {
                    baselines: None,
                    ..seen.clone()
                };
                if changed && tx.send(seen).await.is_err() {
                    return;
                }
                // After the `Seen` read with it (see the file's head).
                active_tx.send_if_modified(|a| std::mem::replace(a, active) != active);
            }
            Err(e) => tracing::error!("cannot read the active color, pauses or holds: {e}"),
        }
        if bake_due.is_some_and(|t| Instant::now() >= t) {
            bake_due = match crate::report::bake::check(&current, &store, &hub).await {
                Ok(Baked::Sent(_)) => None,
                Ok(Baked::No) => next_bake_check(&current, &store).await,
                Err(e) => {
                    tracing::error!("cannot check the bake of the latest deployment: {e}");
                    Some(Instant::now() + BAKE_CHECK_PERIOD)
                }
            };
        }
    }
}

/// When the latest deployment's bake is worth checking again, after a
/// check that sent nothing: when its bake ends (at least a
/// [`BAKE_CHECK_PERIOD`] on), or never (until the deployments change) when
/// there is none or its report was sent.
async fn next_bake_check(config: &Config, store: &Store) -> Option<Instant> {
    let retry = Some(Instant::now() + BAKE_CHECK_PERIOD);
    let latest = match store.latest_deployment().await {
        Ok(Some(d)) => d,
        Ok(None) => return None,
        Err(e) => {
            tracing::error!("cannot check the bake of the latest deployment: {e}");
            return retry;
        }
    };
    match store.report_sent(latest.id).await {
        Ok(true) => None,
        Ok(false) => {
            let left = latest.at_ms + duration_ms(config.rollback.bake) - now_ms();
            let left = Duration::from_millis(u64::try_from(left).unwrap_or(0));
            Some(Instant::now() + left.max(BAKE_CHECK_PERIOD))
        }
        Err(e) => {
            tracing::error!("cannot check the bake of the latest deployment: {e}");
            retry
        }
    }
}

/// One read of the database: the active color and the rest; baselines
/// when the deployments changed since `last` or `reconfigured`.
pub async fn read(
    config: &Config,
    store: &Store,
    last: &Seen,
    reconfigured: bool,
) -> Result<(Option<Color>, Seen), DaemonError> {
    read_some(config, store, last, reconfigured, true).await
}

/// [`read`], the cooldown's start only when `cooldown` (else `last`'s).
async fn read_some(
    config: &Config,
    store: &Store,
    last: &Seen,
    reconfigured: bool,
    cooldown: bool,
) -> Result<(Option<Color>, Seen), DaemonError> {
    let active = active::current(config, store).await?.map(|(c, _)| c);
    let mut deployments = DeploymentIds::new();
    for d in store.deployments().await? {
        deployments.insert(d.color, d.id);
    }
    let baselines = if reconfigured || deployments != last.deployments {
        Some(Arc::new(baselines(config, store, &deployments).await?))
    } else {
        None
    };
    let seen = Seen {
        deployments,
        pause: store.active_pause(Millis::MIN).await?,
        cooldown_start_ms: if cooldown {
            store.cooldown_start_ms(config.daemon.dry_run).await?
        } else {
            last.cooldown_start_ms
        },
        baselines,
    };
    Ok((active, seen))
}

/// For `degradation`: each probe's latency and error rate under the
/// previous deployment, over its last 30 minutes before the current one took
/// over: chosen by `matrix::baseline_sources`, as `replay` chooses them.
async fn baselines(
    config: &Config,
    store: &Store,
    ids: &DeploymentIds,
) -> Result<matrix::Baselines, DaemonError> {
    if !config
        .rules
        .iter()
        .any(|r| r.condition.signal == Signal::Degradation)
    {
        return Ok(matrix::Baselines::new());
    }
    let cutovers: Vec<matrix::Cutover> = store
        .deployments()
        .await?
        .iter()
        .map(matrix::Cutover::from)
        .collect();
    let sources = matrix::baseline_sources(&cutovers, ids);
    let mut samples = Vec::new();
    for src in &sources {
        samples.extend(
            store
                .samples(None, Some(src.previous.color), src.from_ms)
                .await?,
        );
    }
    Ok(matrix::baselines(&sources, &samples))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::now_ms;

    use crate::config::TEST_CONFIG as CONFIG;

    async fn next(handle: &mut Handle) -> Seen {
        tokio::time::timeout(Duration::from_secs(10), handle.seen.recv())
            .await
            .expect("a change within the period")
            .expect("the watcher runs")
    }

    /// A deploy, pause and resume written by another process reach the loop
    /// as messages within a period or two; nothing is sent while nothing
    /// changes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_written_elsewhere_arrive_as_messages_and_idle_sends_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rollbackd.toml");
        std::fs::write(&path, CONFIG).unwrap();
        let config = Arc::new(Config::load(&path).unwrap());
        let store = Store::open_dir(&config.daemon.state_dir).await.unwrap();
        let (hub, _worker) = Hub::start(crate::notifier::Policy::default());
        let (active, first) = read(&config, &store, &Seen::default(), true).await.unwrap();
        assert_eq!(active, None);
        let (active_tx, mut active) = watch::channel(active);
        let mut handle = start(&config, &store, &hub, first, active_tx);

        // Idle: three periods, no message.
        let idle = tokio::time::timeout(PERIOD * 3, handle.seen.recv()).await;
        assert!(idle.is_err(), "sent while nothing changed: {idle:?}");

        // Another process (a second connection) records a deployment.
        let other = Store::open_dir(&config.daemon.state_dir).await.unwrap();
        let at = now_ms();
        let d = other
            .record_deployment(Color::Blue, "v1", "cli", at)
            .await
            .unwrap();
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), active.changed())
            .await
            .expect("published within the period")
            .expect("the watcher runs");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(*active.borrow_and_update(), Some(Color::Blue));
        // The new active color is published after the deployment it comes
        // with: by then that `Seen` already waits in the channel.
        let seen = handle.seen.try_recv().expect("queued before the color");
        assert_eq!(seen.deployments.get(&Color::Blue), Some(&d.id));
        assert!(seen.baselines.is_some(), "new deployments, new baselines");

        let id = other.pause(at, at + 600_000, "deploying").await.unwrap();
        let seen = next(&mut handle).await;
        assert_eq!(
            seen.pause.map(|p| (p.id, p.until_ms)),
            Some((id, at + 600_000))
        );
        assert!(
            seen.baselines.is_none(),
            "same deployments, no new baselines"
        );

        other.resume(now_ms()).await.unwrap();
        let seen = next(&mut handle).await;
        assert_eq!(seen.pause, None);
        assert!(!active.has_changed().unwrap(), "blue all along");

        handle.stop().await;
    }

    /// The watcher's own read of the `[active] file` is no change to it.
    /// inotify reports opening and reading a file too; a watch that woke
    /// the watcher on those made it read the file and the database again
    /// at once, for ever, at a full core. Idle, it reads once a period.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn its_own_reads_of_the_active_file_do_not_wake_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("active-color");
        std::fs::write(&file, "blue\n").unwrap();
        let path = dir.path().join("rollbackd.toml");
        let text = format!(
            "{CONFIG}\n[active]\nfile = {:?}\n",
            file.display().to_string()
        );
        std::fs::write(&path, text).unwrap();
        let config = Arc::new(Config::load(&path).unwrap());
        let store = Store::open_dir(&config.daemon.state_dir).await.unwrap();
        let (hub, _worker) = Hub::start(crate::notifier::Policy::default());
        let (active, first) = read(&config, &store, &Seen::default(), true).await.unwrap();
        assert_eq!(active, Some(Color::Blue));
        let (active_tx, mut active) = watch::channel(active);
        let handle = start(&config, &store, &hub, first, active_tx);

        // Its first read, on starting, then two periods of nothing.
        let deadline = Instant::now() + Duration::from_secs(10);
        while handle.reads() == 0 {
            assert!(Instant::now() < deadline, "the watcher never read");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let before = handle.reads();
        tokio::time::sleep(PERIOD * 2).await;
        let idle = handle.reads() - before;
        assert!(
            idle <= 3,
            "{idle} reads in two idle periods: the watcher wakes itself"
        );

        // And it still sees a switch write the file.
        std::fs::write(&file, "green\n").unwrap();
        tokio::time::timeout(Duration::from_secs(10), active.changed())
            .await
            .expect("the write was seen")
            .expect("the watcher runs");
        assert_eq!(*active.borrow(), Some(Color::Green));
        handle.stop().await;
    }
}
