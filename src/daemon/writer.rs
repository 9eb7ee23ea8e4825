//! The batching sample writer: samples from the work loop go to SQLite in
//! batches, one transaction each.
//!
//! When the database is locked or failing, samples wait in a bounded buffer
//! while the write is retried with backoff, and the channel keeps being
//! drained meanwhile, so a locked database never stalls the work loop. Only
//! when the buffer overflows are samples dropped: the oldest first, counted
//! in [`WriterStats`] and logged. At shutdown (the channel closed) it keeps
//! trying for [`SHUTDOWN_GRACE`] and then gives up loudly.
//!
//! Verdicts leave the work loop the same way, beside the samples:
//! [`queue_verdicts`] queues those that changed state without waiting (a
//! full queue drops, logged) and [`write_verdicts`] stores them in order,
//! retrying while the database is locked.
//!
//! It owns no SQL (that is `store/`) and makes no decision about samples or
//! verdicts.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::daemon::health::Health;
use crate::matrix::{State, Verdict};
use crate::model::Sample;
use crate::store::{Store, StoredVerdict};

/// Samples kept in memory while the database refuses writes.
pub const WRITE_BUFFER_CAP: usize = 100_000;
/// After the channel closed, how long unstored samples are still retried.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Counters a caller can read while the writer runs (e.g. for `/metrics`).
#[derive(Debug, Default)]
pub struct WriterStats {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    /// Failed write attempts (locked or failing database).
    pub retries: AtomicU64,
}

/// The writer's limits; [`Writer::default`] is what the daemon uses.
#[derive(Clone)]
pub struct Writer {
    /// How long to gather samples into one batch once the first arrives.
    pub batch_window: Duration,
    /// Most samples in one transaction.
    pub batch_max: usize,
    /// Most samples waiting in memory; beyond it the oldest are dropped.
    pub buffer_cap: usize,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    pub stats: Arc<WriterStats>,
    /// Told of every write's success or failure (`/healthz`).
    pub health: Option<Arc<Health>>,
    /// Told of drops and of what waits in the buffer (`/metrics`).
    pub metrics: Option<Arc<crate::daemon::metrics::Metrics>>,
}

impl Default for Writer {
    fn default() -> Self {
        Writer {
            batch_window: Duration::from_millis(200),
            batch_max: 500,
            buffer_cap: WRITE_BUFFER_CAP,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            stats: Arc::default(),
            health: None,
            metrics: None,
        }
    }
}

struct Buffer<'a> {
    pending: VecDeque<Sample>,
    cap: usize,
    stats: &'a WriterStats,
    /// Drops since the last log line, so an overflow logs once in a while,
    /// not once per sample.
    unlogged: u64,
}

impl Buffer<'_> {
    fn push(&mut self, sample: Sample) {
        if self.pending.len() >= self.cap {
            self.pending.pop_front();
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            self.unlogged += 1;
            if self.unlogged == 1 || self.unlogged % 1000 == 0 {
                tracing::error!(
                    dropped = self.stats.dropped.load(Ordering::Relaxed),
                    cap = self.cap,
                    "sample buffer full while the database refuses writes: dropping the oldest samples"
                );
            }
        }
        self.pending.push_back(sample);
    }
}

/// Say loudly when the database file at the path is no longer the one
/// open (deleted, replaced), and when it is again.
fn check_file(store: &Store, reported: &mut Option<String>) {
    let now = store.file_problem();
    if now == *reported {
        return;
    }
    match &now {
        Some(problem) => tracing::error!(
            "{problem}; copy it out of /proc/{}/fd before stopping the daemon",
            std::process::id()
        ),
        None => tracing::info!("the database file at the path is the one open again"),
    }
    *reported = now;
}

impl Writer {
    pub fn stats(&self) -> Arc<WriterStats> {
        self.stats.clone()
    }

    /// Write until the channel closes and everything is stored (or given up
    /// on). Returns how many samples were dropped in all.
    pub async fn run(self, store: Store, mut rx: mpsc::Receiver<Sample>) -> u64 {
        let stats = self.stats.clone();
        let mut buf = Buffer {
            pending: VecDeque::new(),
            cap: self.buffer_cap.max(1),
            stats: &stats,
            unlogged: 0,
        };
        let mut open = true;
        let mut closed_at: Option<Instant> = None;
        let mut backoff = self.first_backoff;
        let mut dropped_reported = 0u64;
        let mut file_problem: Option<String> = None;
        let report = |buffered: usize, dropped_reported: &mut u64| {
            if let Some(m) = &self.metrics {
                let dropped = stats.dropped.load(Ordering::Relaxed);
                m.dropped(dropped - *dropped_reported);
                *dropped_reported = dropped;
                m.set_buffered(buffered);
            }
        };
        loop {
            if buf.pending.is_empty() {
                if !open {
                    break;
                }
                match rx.recv().await {
                    Some(s) => buf.push(s),
                    None => break,
                }
                // Gather what arrives shortly after, up to a batch.
                let deadline = Instant::now() + self.batch_window;
                while buf.pending.len() < self.batch_max {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(s)) => buf.push(s),
                        Ok(None) => {
                            open = false;
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            // Whatever already waits joins the buffer (bounded by its cap).
            while open {
                match rx.try_recv() {
                    Ok(s) => buf.push(s),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            if !open && closed_at.is_none() {
                closed_at = Some(Instant::now());
            }
            check_file(&store, &mut file_problem);
            let n = buf.pending.len().min(self.batch_max);
            let result = store
                .insert_samples(&buf.pending.make_contiguous()[..n])
                .await;
            match result {
                Ok(()) => {
                    buf.pending.drain(..n);
                    if let Some(h) = &self.health {
                        h.write_ok();
                    }
                    report(buf.pending.len(), &mut dropped_reported);
                    stats.written.fetch_add(n as u64, Ordering::Relaxed);
                    if backoff > self.first_backoff {
                        tracing::info!("the database takes samples again");
                    }
                    backoff = self.first_backoff;
                    buf.unlogged = 0;
                    // Rollback records the database refused go in now.
                    if let Err(e) = store.flush_kept().await {
                        tracing::warn!(
                            kept = store.kept_len(),
                            "cannot store the rollback records kept in memory yet: {e}"
                        );
                    }
                }
                Err(e) => {
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                    if let Some(h) = &self.health {
                        h.write_failed(e.to_string());
                    }
                    report(buf.pending.len(), &mut dropped_reported);
                    if closed_at.is_some_and(|t| t.elapsed() >= SHUTDOWN_GRACE) {
                        let lost = buf.pending.len() as u64;
                        stats.dropped.fetch_add(lost, Ordering::Relaxed);
                        tracing::error!(
                            dropped = lost,
                            "giving up on unstored samples at shutdown: {e}"
                        );
                        break;
                    }
                    tracing::warn!(
                        buffered = buf.pending.len(),
                        "cannot store samples yet ({e}); retrying in {}",
                        humantime::format_duration(backoff)
                    );
                    // Wait out the backoff, still taking samples in.
                    let until = Instant::now() + backoff;
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep_until(until) => break,
                            s = rx.recv(), if open => match s {
                                Some(s) => buf.push(s),
                                None => open = false,
                            },
                        }
                    }
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
        report(0, &mut dropped_reported);
        stats.dropped.load(Ordering::Relaxed)
    }
}

/// Queue the verdicts that changed state for storage, and log the ones that
/// fired. Never waits: the work loop must not stall on a locked database
/// (its watchdog would stop pinging); a full queue drops, logged.
pub fn queue_verdicts(verdict_tx: &mpsc::Sender<StoredVerdict>, verdicts: &[Verdict]) {
    for v in verdicts.iter().filter(|v| v.changed) {
        let stored = StoredVerdict {
            at_ms: v.at_ms,
            rule: v.rule.clone(),
            severity: v.severity,
            color: v.color,
            state: v.state,
            n: v.n as i64,
            value: v.value,
            threshold: v.threshold,
            window_ms: v.window_ms,
            baseline: v.baseline,
            detail: v.detail.clone(),
        };
        if verdict_tx.try_send(stored).is_err() {
            tracing::error!(
                rollbackd.rule = v.rule.as_str(),
                "verdict not recorded: the verdict queue is full (database too slow)"
            );
        }
        if v.state == State::Fired {
            tracing::warn!(
                rollbackd.color = v.color.as_str(),
                rollbackd.rule = v.rule.as_str(),
                rollbackd.severity = v.severity.as_str(),
                "rule fired on {}: {} ({})",
                v.color,
                v.rule,
                v.detail
            );
        }
    }
}

/// Store queued verdicts in order, retrying while the database is locked,
/// until the queue closes.
pub async fn write_verdicts(
    store: Store,
    mut rx: mpsc::Receiver<StoredVerdict>,
    health: Arc<Health>,
) {
    while let Some(v) = rx.recv().await {
        let mut backoff = Duration::from_millis(100);
        for attempt in 1..=5 {
            match store.insert_verdict(&v).await {
                Ok(()) => {
                    health.write_ok();
                    break;
                }
                Err(e) => {
                    health.write_failed(e.to_string());
                    if attempt == 5 {
                        tracing::error!(
                            rollbackd.rule = v.rule.as_str(),
                            "cannot record a verdict, giving up: {e}"
                        );
                    } else {
                        tokio::time::sleep(backoff).await;
                        backoff *= 2;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Color;

    fn sample(i: i64) -> Sample {
        Sample::answer(1_000 + i, "healthz", Some(Color::Blue), true, 1.0)
    }

    #[tokio::test]
    async fn every_sample_lands_in_batches_and_the_writer_ends_with_the_channel() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_dir(dir.path()).await.unwrap();
        let writer = Writer {
            batch_max: 7,
            ..Writer::default()
        };
        let stats = writer.stats();
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(writer.run(store.clone(), rx));
        for i in 0..100 {
            tx.send(sample(i)).await.unwrap();
        }
        drop(tx);
        assert_eq!(task.await.unwrap(), 0);
        assert_eq!(stats.written.load(Ordering::Relaxed), 100);
        let stored = store.samples(None, None, 0).await.unwrap();
        assert_eq!(
            stored.iter().map(|s| s.at_ms).collect::<Vec<_>>(),
            (0..100).map(|i| 1_000 + i).collect::<Vec<_>>(),
            "in order, none lost, none twice"
        );
    }
}
