//! The state watcher: the daemon's periodic database reads, off the work
//! loop.
//!
//! Beside the work loop, this task reads what other processes may change
//! (the active color, each color's deployment, pauses, the last automatic
//! rollback) every [`PERIOD`], at once when the `[active] file` changes or
//! the loop asks ([`Handle::look_now`], after a rollback), and sends the
//! loop a [`Seen`] only when something changed. It also checks the latest
//! deployment's bake (which reads and writes the store) every
//! [`BAKE_CHECK_PERIOD`]. The loop applies a `Seen` without awaiting SQL:
//! a slow or locked database delays these reads, never a verdict.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::active;
use crate::config::Config;
use crate::daemon::{DaemonError, DeploymentIds};
use crate::matrix::Baselines;
use crate::model::{Color, Millis};
use crate::notifier::Hub;
use crate::store::{Pause, Store};

/// How often the database is read. A `pause`, `resume` or `deploy` by the
/// CLI is seen within this (plus the read).
pub const PERIOD: Duration = Duration::from_millis(500);
/// How often the latest deployment's bake is checked.
pub const BAKE_CHECK_PERIOD: Duration = Duration::from_secs(1);

/// What the database says, as last read.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub active: Option<Color>,
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
}

impl Handle {
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
/// it started), so only changes are sent.
pub fn start(config: &Arc<Config>, store: &Store, hub: &Hub, last: Seen) -> Handle {
    let (seen_tx, seen_rx) = mpsc::channel(4);
    let (config_tx, config_rx) = watch::channel(config.clone());
    let look = Arc::new(Notify::new());
    let task = tokio::spawn(run(
        config_rx,
        store.clone(),
        hub.clone(),
        look.clone(),
        seen_tx,
        last,
    ));
    Handle {
        seen: seen_rx,
        look,
        config: config_tx,
        task,
    }
}

async fn run(
    mut config: watch::Receiver<Arc<Config>>,
    store: Store,
    hub: Hub,
    look: Arc<Notify>,
    tx: mpsc::Sender<Seen>,
    mut last: Seen,
) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut current = config.borrow_and_update().clone();
    let mut active_file = active::Watch::new(&current);
    let mut last_bake = Instant::now();
    let mut new_config = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = look.notified() => {}
            _ = active_file.changed() => {}
            changed = config.changed() => {
                if changed.is_err() {
                    return;
                }
                current = config.borrow_and_update().clone();
                active_file = active::Watch::new(&current);
                new_config = true;
            }
        }
        match read(&current, &store, &last, std::mem::take(&mut new_config)).await {
            Ok(seen) => {
                let changed = seen.baselines.is_some()
                    || (
                        seen.active,
                        &seen.deployments,
                        &seen.pause,
                        seen.cooldown_start_ms,
                    ) != (
                        last.active,
                        &last.deployments,
                        &last.pause,
                        last.cooldown_start_ms,
                    );
                last = Seen {
                    baselines: None,
                    ..seen.clone()
                };
                if changed && tx.send(seen).await.is_err() {
                    return;
                }
            }
            Err(e) => tracing::error!("cannot read the active color, pauses or holds: {e}"),
        }
        if last_bake.elapsed() >= BAKE_CHECK_PERIOD {
            last_bake = Instant::now();
            if let Err(e) = crate::bake::check(&current, &store, &hub).await {
                tracing::error!("cannot check the bake of the latest deployment: {e}");
            }
        }
    }
}

/// One read of the database; baselines when the deployments changed since
/// `last` or `reconfigured`.
pub async fn read(
    config: &Config,
    store: &Store,
    last: &Seen,
    reconfigured: bool,
) -> Result<Seen, DaemonError> {
    let active = active::current(config, store).await?.map(|(c, _)| c);
    let mut deployments = DeploymentIds::new();
    for d in store.deployments().await? {
        deployments.insert(d.color, d.id);
    }
    let baselines = if reconfigured || deployments != last.deployments {
        Some(Arc::new(
            crate::daemon::baselines(config, store, &deployments).await?,
        ))
    } else {
        None
    };
    Ok(Seen {
        active,
        deployments,
        pause: store.active_pause(Millis::MIN).await?,
        cooldown_start_ms: store.cooldown_start_ms(config.daemon.dry_run).await?,
        baselines,
    })
}
