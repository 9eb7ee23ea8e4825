//! Samples on disk: the compact table of migration
//! `20261125450000_compact-samples.sql`, its lookup tables, and the verbs
//! the rest of the daemon uses (`insert_samples`, `samples`, ...), whose
//! signatures did not change with the layout.
//!
//! A row is (at_ms, series, n, status, latency_us, detail, requests,
//! errors), WITHOUT ROWID, clustered on (at_ms, series, n). `series` is an
//! id for (probe, color, deployment) in `sample_series`; ids are never
//! reused or deleted, so [`Series`] caches them for the life of the store.
//! `detail` points into `sample_details` (one row per distinct text).
//!
//! Writing: one `BEGIN IMMEDIATE` transaction per batch (all or nothing, as
//! the writer and the storage-fault tests expect), multi-row INSERTs of
//! [`ROWS_PER_INSERT`] prepared once and reused. Reading: one range scan
//! over the primary key; [`Store::sample_pages`] pages through it in bounded
//! memory (`replay`).

use std::collections::HashMap;
use std::sync::Arc;

use super::{BUSY_TIMEOUT, MINUTE_MS, MinuteStats, RetentionReport, Store, StoreError, q};
use crate::model::{Color, Millis, Sample, SampleStatus};

/// Rows per multi-row INSERT (8 values each, well under SQLite's limit).
const ROWS_PER_INSERT: usize = 128;
/// Most samples a batch sends in one round trip ([`insert_known`]): an idle
/// daemon's batches and those of 100 probes/s. Its statement list looks
/// each detail up in each row, which SQLite compiles once per row: larger
/// batches (a busy daemon's, up to the writer's 500) go statement by
/// statement, where the round trips matter less than that (the store
/// bench's writer: 63,000 samples/s with every batch in one trip, against
/// 195,000 and more this way).
const ONE_TRIP_MAX: usize = 48;
/// Columns of the compact `samples` table, in insert order.
const COLUMNS: &str = "at_ms, series, n, status, latency_us, detail, requests, errors";
/// What a read selects: the sample's columns and its detail text.
const SELECT: &str = "SELECT s.at_ms, s.series, s.status, s.latency_us, d.text, s.requests, s.errors \
     FROM samples s LEFT JOIN sample_details d ON d.id = s.detail";
/// Unused detail texts are deleted once there are more than this many.
const DETAILS_KEPT: i64 = 1_000;

type SeriesKey = (String, Option<Color>, Option<i64>);
/// What a series id stands for: probe, color, deployment.
type SeriesOf = HashMap<i64, (Arc<str>, Option<Color>, Option<i64>)>;

/// The `sample_series` rows this store has seen, both ways.
#[derive(Debug, Default)]
pub(super) struct Series {
    by_key: HashMap<SeriesKey, i64>,
    by_id: SeriesOf,
    max_id: i64,
}

impl Series {
    fn add(&mut self, id: i64, key: SeriesKey) {
        self.max_id = self.max_id.max(id);
        self.by_id
            .insert(id, (Arc::from(key.0.as_str()), key.1, key.2));
        self.by_key.insert(key, id);
    }
}

fn status_code(s: &Sample) -> i64 {
    let code = match s.status {
        SampleStatus::Ok => 0,
        SampleStatus::Failed => 1,
        SampleStatus::Timeout => 2,
        SampleStatus::Unreachable => 3,
        SampleStatus::NoData => 4,
    };
    code * 2 + i64::from(s.ok)
}

fn status_from_code(code: i64) -> (SampleStatus, bool) {
    let status = match code >> 1 {
        0 => SampleStatus::Ok,
        2 => SampleStatus::Timeout,
        3 => SampleStatus::Unreachable,
        4 => SampleStatus::NoData,
        _ => SampleStatus::Failed,
    };
    (status, code & 1 == 1)
}

/// `status` values of a failure (failed, timeout, unreachable; either ok bit).
const FAILURE_CODES: &str = "status BETWEEN 2 AND 7";

fn latency_us(ms: Option<f64>) -> Option<i64> {
    ms.map(|l| (l * 1000.0).round() as i64)
}

/// A latency as the journal keeps it (whole microseconds): what the
/// mirror writes to the shared database, so both backends answer alike.
pub(super) fn stored_latency(ms: Option<f64>) -> Option<f64> {
    latency_us(ms).map(|us| us as f64 / 1000.0)
}

type RawRow = (
    Millis,
    i64,
    i64,
    Option<i64>,
    Option<String>,
    Option<f64>,
    Option<f64>,
);

fn decode(r: RawRow, series: &SeriesOf) -> Sample {
    let (at_ms, id, code, lat, detail, requests, errors) = r;
    let (probe, color, deployment) = match series.get(&id) {
        Some((p, c, d)) => (p.to_string(), *c, *d),
        // Not possible while ids are never deleted; shown, not hidden.
        None => (format!("series#{id}"), None, None),
    };
    let (status, ok) = status_from_code(code);
    Sample {
        at_ms,
        probe,
        color,
        deployment,
        ok,
        latency_ms: lat.map(|us| us as f64 / 1000.0),
        status,
        detail: detail.unwrap_or_default(),
        requests,
        errors,
    }
}

impl Store {
    fn series(&self) -> std::sync::MutexGuard<'_, Series> {
        // Entries are only ever added whole: a poisoned lock is consistent.
        self.series.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Learn the series rows added since the last look (by any process).
    async fn refresh_series<'c, E>(&self, db: E) -> Result<(), StoreError>
    where
        E: sqlx::Executor<'c, Database = sqlx::Sqlite>,
    {
        let after = self.series().max_id;
        let rows: Vec<(i64, String, Option<String>, Option<i64>)> = sqlx::query_as(
            "SELECT id, probe, color, deployment_id FROM sample_series WHERE id > ? ORDER BY id",
        )
        .bind(after)
        .fetch_all(db)
        .await
        .map_err(q("reading sample series"))?;
        let mut series = self.series();
        for (id, probe, color, dep) in rows {
            series.add(id, (probe, color.and_then(|c| c.parse().ok()), dep));
        }
        Ok(())
    }

    /// Insert a batch in one transaction: all or nothing. A batch the
    /// local journal took goes to the shared database too (a batch it
    /// refused is retried by the writer, and must not go twice).
    pub async fn insert_samples(&self, samples: &[Sample]) -> Result<(), StoreError> {
        self.write_samples(samples).await?;
        if let Some(mirror) = self.mirror() {
            mirror.push_samples(samples);
        }
        Ok(())
    }

    async fn write_samples(&self, samples: &[Sample]) -> Result<(), StoreError> {
        if samples.is_empty() {
            return Ok(());
        }
        let mut w = self
            .writing("starting a sample batch", BUSY_TIMEOUT)
            .await?;
        // A small batch (an idle daemon's) whose series are known: one
        // round trip.
        let known: Option<Vec<i64>> = if samples.len() > ONE_TRIP_MAX {
            None
        } else {
            let series = self.series();
            samples
                .iter()
                .map(|s| {
                    series
                        .by_key
                        .get(&(s.probe.clone(), s.color, s.deployment))
                        .copied()
                })
                .collect()
        };
        if let Some(ids) = known {
            if insert_known(&mut w.conn, samples, &ids).await? {
                w.done().await;
                return Ok(());
            }
        }
        let mut tx = w.begin("starting a sample batch").await?;

        // Series ids: from the cache; a miss looks again (another process
        // may have added it), then adds the row. Rows added here join the
        // cache only after the commit: a rolled-back id may be reused.
        let key = |s: &Sample| (s.probe.clone(), s.color, s.deployment);
        let mut ids: Vec<i64> = Vec::with_capacity(samples.len());
        let mut added: Vec<(i64, SeriesKey)> = Vec::new();
        let mut refreshed = false;
        for s in samples {
            let k = key(s);
            let found = self
                .series()
                .by_key
                .get(&k)
                .copied()
                .or_else(|| added.iter().find(|(_, a)| *a == k).map(|(id, _)| *id));
            let id = match found {
                Some(id) => id,
                None => {
                    if !refreshed {
                        refreshed = true;
                        self.refresh_series(&mut *tx).await?;
                    }
                    let cached = self.series().by_key.get(&k).copied();
                    match cached {
                        Some(id) => id,
                        None => {
                            let id: i64 = sqlx::query_scalar(
                                "INSERT INTO sample_series (probe, color, deployment_id) \
                                 VALUES (?, ?, ?) RETURNING id",
                            )
                            .bind(&s.probe)
                            .bind(s.color.map(Color::as_str))
                            .bind(s.deployment)
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(q("recording a sample series"))?;
                            added.push((id, k));
                            id
                        }
                    }
                }
            };
            ids.push(id);
        }

        // Detail texts: one row each, shared by every sample that says it.
        let mut details: HashMap<&str, i64> = HashMap::new();
        for s in samples.iter().filter(|s| !s.detail.is_empty()) {
            if details.contains_key(s.detail.as_str()) {
                continue;
            }
            sqlx::query(
                "INSERT INTO sample_details (text) VALUES (?) ON CONFLICT (text) DO NOTHING",
            )
            .bind(&s.detail)
            .execute(&mut *tx)
            .await
            .map_err(q("recording a sample detail"))?;
            let id: i64 = sqlx::query_scalar("SELECT id FROM sample_details WHERE text = ?")
                .bind(&s.detail)
                .fetch_one(&mut *tx)
                .await
                .map_err(q("recording a sample detail"))?;
            details.insert(&s.detail, id);
        }

        // `n` tells apart samples of one series in one millisecond: 0 for
        // the first of the batch, counted up within it.
        let ns = numbers(samples, &ids);

        let rows: Vec<usize> = (0..samples.len()).collect();
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            // A sample whose (at_ms, series, n) a stored one already holds
            // (one millisecond split across batches) fails the statement,
            // which SQLite undoes whole (the transaction stays open); the
            // chunk then goes in row by row, each with the next free `n`.
            // No savepoint: the usual batch is three statements in all.
            let sql = insert_sql(chunk.len());
            let mut query = sqlx::query(&sql);
            for &i in chunk {
                let s = &samples[i];
                query = query
                    .bind(s.at_ms)
                    .bind(ids[i])
                    .bind(ns[i])
                    .bind(status_code(s))
                    .bind(latency_us(s.latency_ms))
                    .bind(details.get(s.detail.as_str()).copied())
                    .bind(s.requests)
                    .bind(s.errors);
            }
            match query.execute(&mut *tx).await {
                Ok(_) => continue,
                Err(sqlx::Error::Database(e))
                    if e.kind() == sqlx::error::ErrorKind::UniqueViolation => {}
                Err(e) => return Err(q("inserting samples")(e)),
            }
            {
                for &i in chunk {
                    let s = &samples[i];
                    sqlx::query(&format!(
                        "INSERT INTO samples ({COLUMNS}) VALUES (?1, ?2, \
                         (SELECT IFNULL(MAX(n) + 1, 0) FROM samples WHERE at_ms = ?1 AND series = ?2), \
                         ?3, ?4, ?5, ?6, ?7)"
                    ))
                    .bind(s.at_ms)
                    .bind(ids[i])
                    .bind(status_code(s))
                    .bind(latency_us(s.latency_ms))
                    .bind(details.get(s.detail.as_str()).copied())
                    .bind(s.requests)
                    .bind(s.errors)
                    .execute(&mut *tx)
                    .await
                    .map_err(q("inserting samples"))?;
                }
            }
        }
        tx.commit().await.map_err(q("committing samples"))?;
        w.done().await;
        if !added.is_empty() {
            let mut series = self.series();
            for (id, k) in added {
                series.add(id, k);
            }
        }
        Ok(())
    }

    /// The series ids of a probe and/or color, for a filter; `None` for no
    /// filter.
    async fn series_filter(
        &self,
        probe: Option<&str>,
        color: Option<Color>,
    ) -> Result<Option<String>, StoreError> {
        if probe.is_none() && color.is_none() {
            return Ok(None);
        }
        self.refresh_series(self.db()?).await?;
        let series = self.series();
        let ids: Vec<String> = series
            .by_id
            .iter()
            .filter(|(_, (p, c, _))| {
                probe.is_none_or(|probe| &**p == probe)
                    && color.is_none_or(|color| *c == Some(color))
            })
            .map(|(id, _)| id.to_string())
            .collect();
        Ok(Some(if ids.is_empty() {
            "AND 0".to_owned()
        } else {
            format!("AND s.series IN ({})", ids.join(", "))
        }))
    }

    async fn read_samples(&self, sql: &str, binds: &[Millis]) -> Result<Vec<Sample>, StoreError> {
        self.refresh_series(self.db()?).await?;
        let mut query = sqlx::query_as::<_, RawRow>(sql);
        for b in binds {
            query = query.bind(*b);
        }
        let rows = query
            .fetch_all(self.db()?)
            .await
            .map_err(q("reading samples"))?;
        let series = self.series();
        Ok(rows.into_iter().map(|r| decode(r, &series.by_id)).collect())
    }

    /// Samples since a time, oldest first, optionally for one probe and color.
    pub async fn samples(
        &self,
        probe: Option<&str>,
        color: Option<Color>,
        since_ms: Millis,
    ) -> Result<Vec<Sample>, StoreError> {
        if let Some(db) = self.reads_shared() {
            return db.own_samples(probe, color, since_ms, Millis::MAX).await;
        }
        let filter = self.series_filter(probe, color).await?.unwrap_or_default();
        self.read_samples(
            &format!("{SELECT} WHERE s.at_ms >= ? {filter} ORDER BY s.at_ms, s.series, s.n"),
            &[since_ms],
        )
        .await
    }

    /// Every sample since a time, oldest first, in pages: memory stays
    /// bounded however long the period (`replay`). See [`SamplePages`].
    pub async fn sample_pages(&self, since_ms: Millis) -> Result<SamplePages<'_>, StoreError> {
        Ok(SamplePages {
            store: self,
            after: (since_ms, -1, -1),
            // Probe names are never empty: every sample at `since_ms` is after it.
            shared_after: (since_ms, String::new(), String::new()),
            details: HashMap::new(),
            rows: Vec::with_capacity(PAGE),
            done: false,
        })
    }

    /// Samples in `[from, until)`, oldest first: a deployment's lifetime.
    pub async fn samples_between(
        &self,
        from_ms: Millis,
        until_ms: Millis,
    ) -> Result<Vec<Sample>, StoreError> {
        if let Some(db) = self.reads_shared() {
            return db.own_samples(None, None, from_ms, until_ms).await;
        }
        self.read_samples(
            &format!("{SELECT} WHERE s.at_ms >= ? AND s.at_ms < ? ORDER BY s.at_ms, s.series, s.n"),
            &[from_ms, until_ms],
        )
        .await
    }

    pub async fn sample_count(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COUNT(*) FROM samples")
            .fetch_one(self.db()?)
            .await
            .map_err(q("counting samples"))
    }

    /// The first failed sample at or after `since_ms`, if there is one yet:
    /// of `color` or a shared probe, or of any color when `color` is `None`.
    pub async fn first_failure_since(
        &self,
        since_ms: Millis,
        color: Option<Color>,
    ) -> Result<Option<Sample>, StoreError> {
        self.refresh_series(self.db()?).await?;
        let filter = match color {
            None => String::new(),
            Some(color) => {
                let series = self.series();
                let ids: Vec<String> = series
                    .by_id
                    .iter()
                    .filter(|(_, (_, c, _))| c.is_none() || *c == Some(color))
                    .map(|(id, _)| id.to_string())
                    .collect();
                if ids.is_empty() {
                    return Ok(None);
                }
                format!("AND s.series IN ({})", ids.join(", "))
            }
        };
        let rows = self
            .read_samples(
                &format!(
                    "{SELECT} WHERE s.at_ms >= ? AND s.{FAILURE_CODES} {filter} \
                     ORDER BY s.at_ms, s.series, s.n LIMIT 1"
                ),
                &[since_ms],
            )
            .await?;
        Ok(rows.into_iter().next())
    }

    /// Roll up and delete every raw sample older than `before_ms` (rounded
    /// down to a whole minute, so a minute is never split), an hour of
    /// samples per transaction so a long backlog never holds the write lock
    /// for long. No-data samples are deleted without being counted.
    pub async fn roll_up_samples(&self, before_ms: Millis) -> Result<RetentionReport, StoreError> {
        const CHUNK_MS: Millis = 60 * 60 * 1000;
        let before_ms = before_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
        let mut report = RetentionReport::default();
        loop {
            let oldest: Option<Millis> =
                sqlx::query_scalar("SELECT MIN(at_ms) FROM samples WHERE at_ms < ?")
                    .bind(before_ms)
                    .fetch_one(self.db()?)
                    .await
                    .map_err(q("finding old samples"))?;
            let Some(oldest) = oldest else { break };
            let end = (oldest.div_euclid(MINUTE_MS) * MINUTE_MS + CHUNK_MS).min(before_ms);
            self.refresh_series(self.db()?).await?;
            let mut w = self.writing("rolling up samples", BUSY_TIMEOUT).await?;
            let mut tx = w.begin("rolling up samples").await?;
            let rows: Vec<(i64, Millis, i64, Option<i64>)> = sqlx::query_as(
                "SELECT series, at_ms, status, latency_us FROM samples WHERE at_ms < ?",
            )
            .bind(end)
            .fetch_all(&mut *tx)
            .await
            .map_err(q("reading samples to roll up"))?;
            let mut minutes: std::collections::BTreeMap<(Arc<str>, &str, Millis), MinuteStats> =
                Default::default();
            let series = self.series().by_id.clone();
            for (id, at, code, lat) in rows {
                let (status, ok) = status_from_code(code);
                if status == SampleStatus::NoData {
                    continue;
                }
                let (probe, color) = match series.get(&id) {
                    Some((p, c, _)) => (p.clone(), c.map(Color::as_str).unwrap_or("")),
                    None => (Arc::from(format!("series#{id}").as_str()), ""),
                };
                let m = minutes
                    .entry((probe, color, at.div_euclid(MINUTE_MS) * MINUTE_MS))
                    .or_default();
                m.count += 1;
                if !ok {
                    m.failures += 1;
                }
                if let Some(us) = lat {
                    m.latencies.push(us as f64 / 1000.0);
                }
            }
            for ((probe, color, minute), m) in &minutes {
                let (avg, p95, max) = m.latency();
                sqlx::query(
                    "INSERT INTO rollups (probe, color, minute_ms, count, failures, latency_avg, latency_p95, latency_max) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
                     ON CONFLICT (probe, color, minute_ms) DO UPDATE SET \
                       latency_avg = CASE WHEN latency_avg IS NULL THEN excluded.latency_avg \
                         WHEN excluded.latency_avg IS NULL THEN latency_avg \
                         ELSE (latency_avg * count + excluded.latency_avg * excluded.count) / (count + excluded.count) END, \
                       latency_p95 = MAX(COALESCE(latency_p95, excluded.latency_p95), COALESCE(excluded.latency_p95, latency_p95)), \
                       latency_max = MAX(COALESCE(latency_max, excluded.latency_max), COALESCE(excluded.latency_max, latency_max)), \
                       count = count + excluded.count, \
                       failures = failures + excluded.failures",
                )
                .bind(&**probe)
                .bind(*color)
                .bind(minute)
                .bind(m.count)
                .bind(m.failures)
                .bind(avg)
                .bind(p95)
                .bind(max)
                .execute(&mut *tx)
                .await
                .map_err(q("writing rollups"))?;
            }
            let deleted = sqlx::query("DELETE FROM samples WHERE at_ms < ?")
                .bind(end)
                .execute(&mut *tx)
                .await
                .map_err(q("deleting rolled-up samples"))?
                .rows_affected();
            // Detail texts no sample points at any more, once there are
            // enough of them to be worth a scan.
            let details: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sample_details")
                .fetch_one(&mut *tx)
                .await
                .map_err(q("counting sample details"))?;
            if details > DETAILS_KEPT {
                sqlx::query(
                    "DELETE FROM sample_details WHERE id NOT IN \
                     (SELECT detail FROM samples WHERE detail IS NOT NULL)",
                )
                .execute(&mut *tx)
                .await
                .map_err(q("deleting unused sample details"))?;
            }
            tx.commit().await.map_err(q("rolling up samples"))?;
            w.done().await;
            report.deleted_samples += deleted;
            report.minutes += minutes.len() as u64;
        }
        Ok(report)
    }
}

/// `n` of each sample: 0 for the first of its series in a millisecond of
/// the batch, counted up within it.
fn numbers(samples: &[Sample], ids: &[i64]) -> Vec<i64> {
    let mut seen: HashMap<(Millis, i64), i64> = HashMap::new();
    samples
        .iter()
        .zip(ids)
        .map(|(s, id)| {
            let n = seen.entry((s.at_ms, *id)).or_insert(-1);
            *n += 1;
            *n
        })
        .collect()
}

/// A batch whose series are all known, as one list of statements sent in
/// one round trip to the connection's thread (each query through sqlx is
/// a hand-off to that thread and back, the bulk of an idle daemon's cost):
/// `BEGIN IMMEDIATE`, the batch's detail texts (added unless present), its
/// rows (each detail looked up by its text), `COMMIT`. `Ok(false)`: a row's
/// key was taken (one millisecond split across batches); the transaction
/// is rolled back and the caller takes the slower path, which numbers such
/// rows one by one. An error leaves the transaction open: the caller's
/// `Writing` closes the connection, which rolls it back.
async fn insert_known(
    conn: &mut sqlx::SqliteConnection,
    samples: &[Sample],
    ids: &[i64],
) -> Result<bool, StoreError> {
    let ns = numbers(samples, ids);
    let mut details: Vec<&str> = samples
        .iter()
        .map(|s| s.detail.as_str())
        .filter(|d| !d.is_empty())
        .collect();
    details.sort_unstable();
    details.dedup();
    let mut sql = String::from("BEGIN IMMEDIATE;\n");
    if !details.is_empty() {
        sql.push_str("INSERT INTO sample_details (text) VALUES ");
        for i in 0..details.len() {
            sql.push_str(if i == 0 { "(?)" } else { ", (?)" });
        }
        sql.push_str(" ON CONFLICT (text) DO NOTHING;\n");
    }
    for chunk in samples.chunks(ROWS_PER_INSERT) {
        sql.push_str(&format!("INSERT INTO samples ({COLUMNS}) VALUES "));
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str("(?, ?, ?, ?, ?, (SELECT id FROM sample_details WHERE text = ?), ?, ?)");
        }
        sql.push_str(";\n");
    }
    sql.push_str("COMMIT;");
    // Batches of a few dozen at most repeat their shape: kept prepared.
    let mut query = sqlx::query(&sql);
    for d in &details {
        query = query.bind(*d);
    }
    for (i, s) in samples.iter().enumerate() {
        query = query
            .bind(s.at_ms)
            .bind(ids[i])
            .bind(ns[i])
            .bind(status_code(s))
            .bind(latency_us(s.latency_ms))
            .bind((!s.detail.is_empty()).then_some(s.detail.as_str()))
            .bind(s.requests)
            .bind(s.errors);
    }
    match query.execute(&mut *conn).await {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.kind() == sqlx::error::ErrorKind::UniqueViolation => {
            sqlx::query("ROLLBACK")
                .execute(&mut *conn)
                .await
                .map_err(q("inserting samples"))?;
            Ok(false)
        }
        Err(e) => Err(q("inserting samples")(e)),
    }
}

/// `INSERT ... VALUES (...), ...` for `rows` rows.
fn insert_sql(rows: usize) -> String {
    let mut sql = format!("INSERT INTO samples ({COLUMNS}) VALUES ");
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?)");
    }
    sql
}

/// Pages of [`PAGE`] samples, oldest first, each one query. A row each
/// through sqlx costs more than SQLite's reading it (a channel message and
/// a boxed row per sample: about 300,000 samples/s), and packing a page
/// into one text (`group_concat`) made SQLite sort and print it (about
/// 450,000/s). So a page is read on a blocking thread straight through
/// SQLite's C API on a pooled connection ([`raw`]): one statement stepped
/// row by row, integers read as integers, nothing allocated per row but
/// the decoded [`Sample`]. Pages resume after the last key read, so
/// samples stored meanwhile are read too, and no read transaction is held
/// between pages.
pub struct SamplePages<'a> {
    store: &'a Store,
    after: (Millis, i64, i64),
    /// The cursor in the shared database, when the store reads there:
    /// (at_ms, probe, color or "").
    shared_after: (Millis, String, String),
    details: HashMap<i64, String>,
    /// The page read last, reused for the next one.
    rows: Vec<raw::Row>,
    done: bool,
}

/// Samples per page of [`SamplePages`].
pub const PAGE: usize = 8192;

impl SamplePages<'_> {
    /// The next page, or `None` after the last.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Sample>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let store = self.store;
        if let Some(db) = store.reads_shared() {
            let page = db.own_sample_page(&self.shared_after, PAGE as i64).await?;
            self.done = page.len() < PAGE;
            let Some(last) = page.last() else {
                return Ok(None);
            };
            self.shared_after = (
                last.at_ms,
                last.probe.clone(),
                last.color.map_or("", |c| c.as_str()).to_owned(),
            );
            return Ok(Some(page));
        }
        // `db` checks the fence; the read itself is on a pooled connection.
        store.db()?;
        let conn = store.pool.acquire().await.map_err(q("reading samples"))?;
        let after = self.after;
        let mut rows = std::mem::take(&mut self.rows);
        let (conn, read) = tokio::task::spawn_blocking(move || {
            let mut conn = conn;
            let read = tokio::runtime::Handle::current().block_on(async {
                let mut locked = conn.lock_handle().await?;
                raw::page(locked.as_raw_handle(), after, PAGE, &mut rows)
                    .map_err(sqlx::Error::Protocol)
            });
            (conn, read.map(|()| rows))
        })
        .await
        .map_err(|e| q("reading samples")(sqlx::Error::Protocol(e.to_string())))?;
        drop(conn);
        let rows = read.map_err(q("reading samples"))?;
        if rows.len() < PAGE {
            self.done = true;
        }
        if rows.is_empty() {
            self.rows = rows;
            return Ok(None);
        }
        let mut series = store.series().by_id.clone();
        let mut page = Vec::with_capacity(rows.len());
        for r in &rows {
            if !series.contains_key(&r.series) {
                store.refresh_series(store.db()?).await?;
                series = store.series().by_id.clone();
            }
            let detail = match r.detail {
                None => None,
                Some(d) => {
                    if !self.details.contains_key(&d) {
                        let all: Vec<(i64, String)> =
                            sqlx::query_as("SELECT id, text FROM sample_details")
                                .fetch_all(store.db()?)
                                .await
                                .map_err(q("reading sample details"))?;
                        self.details = all.into_iter().collect();
                    }
                    self.details.get(&d).cloned()
                }
            };
            page.push(decode(
                (
                    r.at_ms,
                    r.series,
                    r.code,
                    r.latency_us,
                    detail,
                    r.requests,
                    r.errors,
                ),
                &series,
            ));
        }
        if let Some(last) = rows.last() {
            self.after = (last.at_ms, last.series, last.n);
        }
        self.rows = rows;
        Ok(Some(page))
    }
}

/// Reading samples through SQLite's C API, on a connection sqlx lent
/// (`SqliteConnection::lock_handle`: its worker thread makes no call on
/// the handle meanwhile). The only unsafe code of the store.
mod raw {
    use std::ffi::{CStr, c_int};
    use std::ptr::NonNull;

    use libsqlite3_sys as ffi;

    use crate::model::Millis;

    /// A sample row as stored: series and detail are still ids.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub(super) struct Row {
        pub at_ms: Millis,
        pub series: i64,
        pub n: i64,
        pub code: i64,
        pub latency_us: Option<i64>,
        pub detail: Option<i64>,
        pub requests: Option<f64>,
        pub errors: Option<f64>,
    }

    const PAGE_SQL: &CStr =
        c"SELECT at_ms, series, n, status, latency_us, detail, requests, errors \
        FROM samples WHERE (at_ms, series, n) > (?1, ?2, ?3) ORDER BY at_ms, series, n LIMIT ?4";

    /// A prepared statement, finalized when dropped.
    struct Statement(NonNull<ffi::sqlite3_stmt>);

    impl Drop for Statement {
        fn drop(&mut self) {
            // SAFETY: the statement came from `sqlite3_prepare_v2` and is
            // finalized once, here.
            unsafe { ffi::sqlite3_finalize(self.0.as_ptr()) };
        }
    }

    fn error(db: NonNull<ffi::sqlite3>, rc: c_int, doing: &str) -> String {
        // SAFETY: `db` is an open connection; `sqlite3_errmsg` returns a
        // NUL-terminated text it owns, copied before any other call.
        let message = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(db.as_ptr())) };
        format!("{doing}: {} (SQLite code {rc})", message.to_string_lossy())
    }

    /// Up to `limit` rows after the key `after`, in key order, into `out`
    /// (cleared first).
    pub(super) fn page(
        db: NonNull<ffi::sqlite3>,
        after: (Millis, i64, i64),
        limit: usize,
        out: &mut Vec<Row>,
    ) -> Result<(), String> {
        out.clear();
        let mut stmt = std::ptr::null_mut();
        // SAFETY: `db` is an open connection this thread has to itself
        // (sqlx's lock); the SQL is NUL-terminated; `stmt` is written by
        // SQLite and owned by `Statement` from here on.
        let rc = unsafe {
            ffi::sqlite3_prepare_v2(
                db.as_ptr(),
                PAGE_SQL.as_ptr(),
                -1,
                &mut stmt,
                std::ptr::null_mut(),
            )
        };
        let Some(stmt) = NonNull::new(stmt).filter(|_| rc == ffi::SQLITE_OK) else {
            return Err(error(db, rc, "preparing the read of samples"));
        };
        let stmt = Statement(stmt);
        let s = stmt.0.as_ptr();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        for (i, v) in [after.0, after.1, after.2, limit].into_iter().enumerate() {
            // SAFETY: `s` is a live statement with four parameters.
            let rc = unsafe { ffi::sqlite3_bind_int64(s, i as c_int + 1, v) };
            if rc != ffi::SQLITE_OK {
                return Err(error(db, rc, "binding the read of samples"));
            }
        }
        // SAFETY (every call below): `s` is a live statement; columns are
        // read only after `sqlite3_step` returned a row, by index within
        // the eight selected.
        let int = |i: c_int| unsafe { ffi::sqlite3_column_int64(s, i) };
        let is_null = |i: c_int| unsafe { ffi::sqlite3_column_type(s, i) == ffi::SQLITE_NULL };
        let opt_int = |i| (!is_null(i)).then(|| int(i));
        let opt_real = |i| (!is_null(i)).then(|| unsafe { ffi::sqlite3_column_double(s, i) });
        loop {
            match unsafe { ffi::sqlite3_step(s) } {
                ffi::SQLITE_ROW => out.push(Row {
                    at_ms: int(0),
                    series: int(1),
                    n: int(2),
                    code: int(3),
                    latency_us: opt_int(4),
                    detail: opt_int(5),
                    requests: opt_real(6),
                    errors: opt_real(7),
                }),
                ffi::SQLITE_DONE => return Ok(()),
                rc => return Err(error(db, rc, "reading samples")),
            }
        }
    }
}

#[cfg(test)]
mod tests;
