//! Retention: rollups of old samples per probe, color and minute, their
//! deletion, and giving freed pages back (a bounded file).

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError, q};
use crate::model::{Color, Millis};

// --- retention types ----------------------------------------------------

pub(super) const MINUTE_MS: Millis = 60_000;

/// What one retention pass did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RetentionReport {
    /// Raw samples deleted (after being rolled up, unless no-data).
    pub deleted_samples: u64,
    /// (probe, color, minute) rollup rows written or merged into.
    pub minutes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CompactReport {
    pub freed_pages: u64,
    /// False when a reader kept the WAL from being truncated this time.
    pub checkpointed: bool,
    pub size_bytes: u64,
}

/// One probe's samples on one color over one minute, after the raw samples
/// are gone. `color` is `None` for a shared probe.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rollup {
    pub probe: String,
    pub color: Option<Color>,
    pub minute_ms: Millis,
    pub count: i64,
    pub failures: i64,
    pub latency_avg: Option<f64>,
    pub latency_p95: Option<f64>,
    pub latency_max: Option<f64>,
}

#[derive(Default)]
pub(super) struct MinuteStats {
    pub(super) count: i64,
    pub(super) failures: i64,
    pub(super) latencies: Vec<f64>,
}

impl MinuteStats {
    /// Average, p95 (nearest rank) and maximum latency.
    pub(super) fn latency(&self) -> (Option<f64>, Option<f64>, Option<f64>) {
        if self.latencies.is_empty() {
            return (None, None, None);
        }
        let mut all = self.latencies.clone();
        let p95 = crate::model::p95(&mut all);
        let avg = all.iter().sum::<f64>() / all.len() as f64;
        (Some(avg), p95, all.last().copied())
    }
}

impl Store {
    // --- retention: rollups, deletion, a bounded file ----------------------
    //
    // Raw samples older than the retention are rolled up per probe, color
    // and minute, then deleted; old rollups are deleted; freed pages go back
    // to the file system (incremental vacuum) and the WAL is truncated.

    /// Delete rollups of minutes before `before_ms`.
    pub async fn delete_rollups(&self, before_ms: Millis) -> Result<u64, StoreError> {
        self.fence("deleting old rollups")?;
        Ok(sqlx::query("DELETE FROM rollups WHERE minute_ms < ?")
            .bind(before_ms)
            .execute(self.db()?)
            .await
            .map_err(q("deleting old rollups"))?
            .rows_affected())
    }

    /// Give free pages back to the file system and truncate the WAL. The
    /// checkpoint is skipped (not an error) while a reader holds the WAL;
    /// `journal_size_limit` bounds it then.
    pub async fn compact(&self) -> Result<CompactReport, StoreError> {
        self.fence("compacting the database")?;
        let free_before: i64 = sqlx::query_scalar("PRAGMA freelist_count")
            .fetch_one(self.db()?)
            .await
            .map_err(q("reading the free page count"))?;
        sqlx::query("PRAGMA incremental_vacuum")
            .execute(self.db()?)
            .await
            .map_err(q("vacuuming"))?;
        let row = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(self.db()?)
            .await
            .map_err(q("checkpointing the WAL"))?;
        let busy: i64 = row.get(0);
        Ok(CompactReport {
            freed_pages: free_before.max(0) as u64,
            checkpointed: busy == 0,
            size_bytes: self.size_bytes(),
        })
    }

    /// Rollups since a minute, oldest first, optionally for one probe and color.
    pub async fn rollups(
        &self,
        probe: Option<&str>,
        color: Option<Color>,
        since_ms: Millis,
    ) -> Result<Vec<Rollup>, StoreError> {
        let rows = sqlx::query(
            "SELECT probe, color, minute_ms, count, failures, latency_avg, latency_p95, latency_max \
             FROM rollups WHERE minute_ms >= ? AND (? IS NULL OR probe = ?) AND (? IS NULL OR color = ?) \
             ORDER BY minute_ms, probe, color",
        )
        .bind(since_ms)
        .bind(probe)
        .bind(probe)
        .bind(color.map(Color::as_str))
        .bind(color.map(Color::as_str))
        .fetch_all(self.db()?)
        .await
        .map_err(q("reading rollups"))?;
        Ok(rows
            .into_iter()
            .map(|r| Rollup {
                probe: r.get("probe"),
                color: r.get::<String, _>("color").parse().ok(),
                minute_ms: r.get("minute_ms"),
                count: r.get("count"),
                failures: r.get("failures"),
                latency_avg: r.get("latency_avg"),
                latency_p95: r.get("latency_p95"),
                latency_max: r.get("latency_max"),
            })
            .collect())
    }

    // --- end of retention ------------------------------------------------
}
