//! Keeping the database bounded: a periodic task that rolls raw samples
//! older than `[daemon] retention` up into per-minute rollups, deletes them,
//! deletes rollups older than [`ROLLUP_RETENTION`], and compacts the file
//! (incremental vacuum, WAL truncation); with a shared database, deletes
//! this host's samples there that are as old.
//!
//! The SQL lives in `store.rs`; this file only says when and with which
//! cut-offs. The daemon starts [`maintain`] and stops it by dropping the
//! retention sender (which also carries a reloaded retention).

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::model::{Millis, duration_ms, now_ms};
use crate::store::{CompactReport, RetentionReport, Store, StoreError};

/// Per-minute rollups are kept this long (or as long as raw samples, if
/// that is longer): enough for reports and `replay` over a quarter.
pub const ROLLUP_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);
/// How often the maintenance runs.
pub const PERIOD: Duration = Duration::from_secs(10 * 60);
/// The first run, shortly after start (not at once: startup is busy).
pub const FIRST_RUN_AFTER: Duration = Duration::from_secs(60);

/// One maintenance pass at `now`: roll up and delete raw samples older than
/// `raw`, delete rollups older than `rollups`, compact.
pub async fn run_once(
    store: &Store,
    now: Millis,
    raw: Duration,
    rollups: Duration,
) -> Result<(RetentionReport, u64, CompactReport), StoreError> {
    let report = store.roll_up_samples(now - duration_ms(raw)).await?;
    let deleted_rollups = store
        .delete_rollups(now - duration_ms(rollups.max(raw)))
        .await?;
    let compact = store.compact().await?;
    Ok((report, deleted_rollups, compact))
}

/// Run maintenance every [`PERIOD`] until the sender of `retention` is
/// dropped. A failed pass is logged and tried again next period.
pub async fn maintain(store: Store, mut retention: watch::Receiver<Duration>) {
    let mut ticker = tokio::time::interval_at(Instant::now() + FIRST_RUN_AFTER, PERIOD);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = retention.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        }
        let raw = *retention.borrow_and_update();
        match run_once(&store, now_ms(), raw, ROLLUP_RETENTION).await {
            Ok((report, deleted_rollups, compact)) => {
                if report.deleted_samples > 0 || deleted_rollups > 0 {
                    tracing::info!(
                        deleted_samples = report.deleted_samples,
                        rollup_minutes = report.minutes,
                        deleted_rollups,
                        freed_pages = compact.freed_pages,
                        size_bytes = compact.size_bytes,
                        "old samples rolled up and deleted"
                    );
                }
                if !compact.checkpointed {
                    tracing::debug!("WAL checkpoint deferred: a reader holds it");
                }
            }
            Err(e) => tracing::warn!("database maintenance failed, trying again later: {e}"),
        }
        prune_shared(&store, now_ms() - duration_ms(raw)).await;
    }
}

/// With a shared database, this host's samples there are kept as long as
/// its journal keeps raw ones: without this the fleet's `samples` table
/// only grows. A failure (the database away, a role without `DELETE`) is
/// logged and tried again next period; protection never waits on it.
async fn prune_shared(store: &Store, before: Millis) {
    let Some(db) = store.shared() else { return };
    match db.prune_samples(before).await {
        Ok(0) => {}
        Ok(deleted) => tracing::info!(
            deleted_samples = deleted,
            "old samples deleted from the shared database"
        ),
        Err(e) => tracing::warn!(
            "old samples not deleted from the shared database, trying again later: {e}"
        ),
    }
}
