//! The `[entry]` watch, beside the work loop: a task looks at what the
//! users' entry serves every [`PERIOD`] (`rollback::entry::served`) and
//! sends each look to the loop; [`EntryWatch::seen`] turns looks into one
//! alert per drift (`entry::Drift`), held while a rollback moves traffic
//! on purpose. A slow entry delays the next look, never the loop.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::config::{Config, Entry};
use crate::model::{Color, Severity};
use crate::notifier::{self, Hub};
use crate::rollback::entry;

/// How often the `[entry]` is looked at for drift.
pub const PERIOD: Duration = Duration::from_secs(1);

/// The loop's end of the entry watch.
pub struct EntryWatch {
    /// Each look, as it is made.
    pub looks: mpsc::Receiver<entry::Seen>,
    config: watch::Sender<Option<Entry>>,
    drift: entry::Drift,
    task: JoinHandle<()>,
}

impl EntryWatch {
    /// Start looking at `config`'s `[entry]` (none: the task waits for a
    /// reload that brings one).
    pub fn start(config: &Config) -> EntryWatch {
        let (config_tx, config_rx) = watch::channel(config.entry.clone());
        let (looks_tx, looks) = mpsc::channel(16);
        EntryWatch {
            looks,
            config: config_tx,
            drift: entry::Drift::default(),
            task: tokio::spawn(look(config_rx, looks_tx)),
        }
    }

    /// A reload's `[entry]`: the task restarts its looks only when the URL
    /// or header changed.
    pub fn reconfigure(&self, config: &Config) {
        self.config.send_if_modified(|e| {
            let new = config.entry.clone();
            let changed = e.as_ref().map(|e| (&e.url, &e.color_header))
                != new.as_ref().map(|e| (&e.url, &e.color_header));
            *e = new;
            changed
        });
    }

    /// One look, against the active color: log and notify when a drift
    /// starts, log when it ends. While a rollback is in flight (`rolling`)
    /// a mismatch is expected and held.
    pub fn seen(
        &mut self,
        look: entry::Seen,
        active: Option<Color>,
        rolling: bool,
        config: &Config,
        hub: &Hub,
    ) {
        let (entry::Seen::Color(served), Some(active)) = (look, active) else {
            return;
        };
        if rolling {
            // A rollback moves traffic on purpose.
            self.drift.hold();
            return;
        }
        match self.drift.look(served, active) {
            Some(entry::DriftChange::Started { served, active }) => {
                let summary =
                    format!("drift: the entry serves {served} while {active} is the active color");
                tracing::warn!(
                    rollbackd.color = served.as_str(),
                    rollbackd.severity = Severity::High.as_str(),
                    "alert: {summary}"
                );
                let mut notice = notifier::Notice::new(
                    notifier::Event::Alert,
                    Severity::High,
                    &config.service,
                    summary,
                );
                notice.color = Some(served);
                hub.send(&config.notify, notice);
            }
            Some(entry::DriftChange::Ended { active }) => tracing::info!(
                rollbackd.color = active.as_str(),
                "the entry serves the active color {active} again"
            ),
            None => {}
        }
    }

    /// Stop the task and wait for it.
    pub async fn stop(self) {
        drop(self.config);
        drop(self.looks);
        if let Err(e) = self.task.await {
            tracing::error!("entry watch panicked: {e}");
        }
    }
}

/// Look at the `[entry]` every [`PERIOD`] and send what it serves, until
/// the configuration sender or the loop goes away.
async fn look(mut config: watch::Receiver<Option<Entry>>, seen: mpsc::Sender<entry::Seen>) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        let current = config.borrow_and_update().clone();
        tokio::select! {
            changed = config.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tick.tick(), if current.is_some() => {
                if let Some(e) = &current {
                    // A slow entry delays the next look, never the loop.
                    let look = tokio::select! {
                        s = entry::served(e) => s,
                        _ = config.changed() => continue,
                    };
                    if seen.send(look).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
