//! The mirror into the shared database: what the local store wrote is
//! queued here and written to PostgreSQL by one task, in order, batched.
//! While the database is away the queue holds it, bounded by
//! [`MAX_SAMPLES`] samples (the oldest samples are dropped and counted
//! beyond it; incidents, deployments and quarantines are never dropped),
//! and it is written when the database returns. A row the database
//! refuses [`REFUSALS`] times while it answers the heartbeat is set aside
//! and counted, so it never holds back the rows behind it. Nothing waits
//! on it: a push is a lock and a `VecDeque` push.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Beat, Shared};
use crate::model::{Millis, Sample};
use crate::store::{Store, StoreError};

/// Samples held for the database at most (about 20-40 MB): past it the
/// oldest are dropped, and counted.
pub const MAX_SAMPLES: usize = 100_000;

/// The most verdicts the queue holds (about 3 MB): a rule that flaps
/// through a long outage must not grow it for ever. Past it the oldest
/// waiting verdicts are dropped and counted, as samples are.
pub const MAX_VERDICTS: usize = 10_000;
/// Samples written in one statement at most.
const BATCH: usize = 5_000;
/// The heartbeat's pace, and the retry pace while the database is away.
const PACE: Duration = Duration::from_secs(1);
/// Tries of the queue's front that the database refuses while it answers
/// the heartbeat (so it is this row, not an outage) before the row is set
/// aside: the queue is written in order, and one row it can never take
/// must not hold back every row behind it.
const REFUSALS: u32 = 5;

/// What the local store wrote, for the shared database.
#[derive(Clone, Debug)]
pub enum Item {
    Samples(Vec<Sample>),
    /// An incident changed: its row is read from the local journal when
    /// shipped, so the latest state goes.
    Incident(i64),
    Deployment(i64),
    Quarantine {
        version: String,
        at_ms: Millis,
    },
    Pause(crate::store::Pause),
    /// This host's holds ended at `at_ms`.
    Resume {
        at_ms: Millis,
    },
    /// A verdict recorded, with its id in the journal.
    Verdict(i64, Box<crate::store::StoredVerdict>),
    /// A drill started or ended: its row is read from the journal.
    Drill(i64),
    /// The quarantine marks of a version's deployments changed (of every
    /// deployment with `None`: a daemon's start, so that rows shipped by
    /// an older version get theirs): they are read from the journal when
    /// shipped.
    DeploymentsOf(Option<String>),
}

/// The mirror's queue and what it reports. Cheap to clone.
#[derive(Clone, Default)]
pub struct Mirror {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("backlog", &self.backlog())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    queue: Mutex<Queue>,
    wake: tokio::sync::Notify,
    beat: Mutex<Beat>,
    health: Mutex<MirrorHealth>,
    /// Held by the one writing the queue's front (the shipper, or a
    /// stopping daemon's drain), so no row is written twice.
    writing: tokio::sync::Mutex<()>,
    /// The newest sample pushed (ms), for the heartbeat.
    last_sample_ms: std::sync::atomic::AtomicI64,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Item>,
    samples: usize,
    /// [`Item::Verdict`]s held.
    verdicts: usize,
    /// Samples and verdicts dropped for room.
    dropped: u64,
    /// Rows set aside because the database refused them (see [`REFUSALS`]).
    refused: u64,
}

/// How the shared database has answered lately.
#[derive(Clone, Debug, Default)]
pub struct MirrorHealth {
    /// Since when writes fail (monotonic); `None` while they succeed.
    pub failing_since: Option<Instant>,
    pub error: Option<String>,
    /// Whether any write ever succeeded (a daemon that started while the
    /// database was down has never reached it).
    pub reached: bool,
}

impl Mirror {
    pub fn push_samples(&self, samples: &[Sample]) {
        if samples.is_empty() {
            return;
        }
        if let Some(newest) = samples.iter().map(|s| s.at_ms).max() {
            self.inner
                .last_sample_ms
                .fetch_max(newest, std::sync::atomic::Ordering::Relaxed);
        }
        if let Ok(mut q) = self.inner.queue.lock() {
            q.samples += samples.len();
            q.items.push_back(Item::Samples(samples.to_vec()));
            // Over the bound: drop the oldest samples, never anything else.
            while q.samples > MAX_SAMPLES {
                let Some(at) = q.items.iter().position(|i| matches!(i, Item::Samples(_))) else {
                    break;
                };
                let over = q.samples - MAX_SAMPLES;
                let Some(Item::Samples(batch)) = q.items.get_mut(at) else {
                    break;
                };
                let cut = over.min(batch.len());
                batch.drain(..cut);
                let emptied = batch.is_empty();
                q.samples -= cut;
                q.dropped += cut as u64;
                if emptied {
                    q.items.remove(at);
                }
            }
        }
        self.inner.wake.notify_one();
    }

    pub fn push(&self, item: Item) {
        if let Ok(mut q) = self.inner.queue.lock() {
            // An incident is read from the journal when it goes, so one
            // waiting behind the front already carries this change (the
            // front may be mid-write with the state before it).
            let waiting =
                |i: &Item| matches!((i, &item), (Item::Incident(a), Item::Incident(b)) if a == b);
            if matches!(item, Item::Verdict(..)) {
                q.verdicts += 1;
            }
            if !q.items.iter().skip(1).any(waiting) {
                q.items.push_back(item);
            }
            // Over the bound: the oldest verdict that is not being written.
            while q.verdicts > MAX_VERDICTS {
                let Some(at) = q
                    .items
                    .iter()
                    .skip(1)
                    .position(|i| matches!(i, Item::Verdict(..)))
                else {
                    break;
                };
                q.items.remove(at + 1);
                q.verdicts -= 1;
                q.dropped += 1;
            }
        }
        self.inner.wake.notify_one();
    }

    /// Rows held for the database (samples, plus other records).
    pub fn backlog(&self) -> usize {
        self.inner
            .queue
            .lock()
            .map(|q| {
                q.samples
                    + q.items
                        .iter()
                        .filter(|i| !matches!(i, Item::Samples(_)))
                        .count()
            })
            .unwrap_or(0)
    }

    /// The newest sample this daemon took (ms), if any.
    pub fn last_sample_ms(&self) -> Option<Millis> {
        let at = self
            .inner
            .last_sample_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        (at > 0).then_some(at)
    }

    /// Samples and verdicts dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner.queue.lock().map(|q| q.dropped).unwrap_or(0)
    }

    /// Rows the database refused again and again while it answered, set
    /// aside (they stay in this host's journal).
    pub fn refused(&self) -> u64 {
        self.inner.queue.lock().map(|q| q.refused).unwrap_or(0)
    }

    /// Set the queue's first item aside (one pushed item: a refused batch
    /// of joined samples loses only its first part), counted and logged.
    fn set_aside(&self, why: &StoreError) {
        let Ok(mut q) = self.inner.queue.lock() else {
            return;
        };
        let (what, rows) = match q.items.pop_front() {
            Some(Item::Samples(s)) => {
                q.samples -= s.len();
                ("samples", s.len())
            }
            Some(Item::Incident(_)) => ("an incident", 1),
            Some(Item::Deployment(_)) => ("a deployment", 1),
            Some(Item::Quarantine { .. }) => ("a quarantine", 1),
            Some(Item::Pause(_)) => ("a pause", 1),
            Some(Item::Resume { .. }) => ("a resume", 1),
            Some(Item::Verdict(..)) => {
                q.verdicts -= 1;
                ("a verdict", 1)
            }
            Some(Item::Drill(_)) => ("a drill", 1),
            Some(Item::DeploymentsOf(_)) => ("a version's deployments", 1),
            None => return,
        };
        q.refused += rows as u64;
        drop(q);
        tracing::error!(
            rollbackd.error = %why,
            "the shared database refused {what} ({rows} rows) {REFUSALS} times while it answered: set aside so the rows behind it go; this host's journal keeps it"
        );
    }

    pub fn health(&self) -> MirrorHealth {
        self.inner
            .health
            .lock()
            .map(|h| h.clone())
            .unwrap_or_default()
    }

    /// What the next heartbeat says.
    pub fn set_beat(&self, beat: Beat) {
        if let Ok(mut b) = self.inner.beat.lock() {
            *b = beat;
        }
    }

    fn beat(&self) -> Beat {
        self.inner
            .beat
            .lock()
            .map(|b| b.clone())
            .unwrap_or_default()
    }

    fn ok(&self) {
        if let Ok(mut h) = self.inner.health.lock() {
            if h.failing_since.is_some() {
                tracing::info!("the shared database answers again: writing what was held");
            }
            *h = MirrorHealth {
                reached: true,
                ..MirrorHealth::default()
            };
        }
    }

    fn failed(&self, e: &StoreError) {
        if let Ok(mut h) = self.inner.health.lock() {
            if h.failing_since.is_none() {
                tracing::error!(
                    rollbackd.error = %e,
                    "the shared database is unreachable: protection goes on from this host's own journal; rows are held (at most {MAX_SAMPLES} samples) until it returns"
                );
            }
            h.failing_since.get_or_insert_with(Instant::now);
            h.error = Some(e.to_string());
        }
    }

    /// The front of the queue as one write: adjacent sample batches up to
    /// [`BATCH`] samples, or one other record.
    fn front(&self) -> Option<(Item, usize)> {
        let q = self.inner.queue.lock().ok()?;
        match q.items.front()? {
            Item::Samples(_) => {
                let mut joined = Vec::new();
                let mut n = 0;
                for item in q.items.iter() {
                    match item {
                        Item::Samples(s) if joined.len() + s.len() <= BATCH || n == 0 => {
                            joined.extend_from_slice(s);
                            n += 1;
                        }
                        _ => break,
                    }
                }
                Some((Item::Samples(joined), n))
            }
            other => Some((other.clone(), 1)),
        }
    }

    /// The first `n` items were written.
    fn pop(&self, n: usize) {
        if let Ok(mut q) = self.inner.queue.lock() {
            for _ in 0..n {
                match q.items.pop_front() {
                    Some(Item::Samples(s)) => q.samples -= s.len(),
                    Some(Item::Verdict(..)) => q.verdicts -= 1,
                    _ => {}
                }
            }
        }
    }
}

/// Writes the mirror's queue, and the heartbeat, to the shared database.
#[derive(Clone)]
pub struct Shipper {
    pub mirror: Mirror,
    pub shared: Shared,
    /// The local journal, read for the rows an [`Item`] names.
    pub local: Store,
    /// Whether this is a daemon's (which publishes the host's heartbeat) or
    /// a command's (which must not overwrite it).
    pub beats: bool,
}

/// The mirrors of a command's stores (`rollback`, `deploy`, ...): written
/// once, when the command ends ([`drain_commands`]).
static COMMANDS: Mutex<Vec<Shipper>> = Mutex::new(Vec::new());

/// A command's store mirrors into the shared database at its end.
pub(crate) fn register_command(shipper: Shipper) {
    if let Ok(mut all) = COMMANDS.lock() {
        all.push(shipper);
    }
}

/// At a command's end: write what its stores wrote into the shared
/// database, bounded by `within` in all (an unreachable database costs the
/// command that long, once, and is reported: the local journal has it all).
pub async fn drain_commands(within: Duration) {
    let all: Vec<Shipper> = COMMANDS
        .lock()
        .map(|mut a| a.drain(..).collect())
        .unwrap_or_default();
    let deadline = Instant::now() + within;
    for shipper in all {
        if shipper.mirror.backlog() == 0 {
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let migrated = tokio::time::timeout(left, shipper.shared.migrate()).await;
        let unwritten = match migrated {
            Ok(Ok(())) => {
                shipper
                    .drain(deadline.saturating_duration_since(Instant::now()))
                    .await
            }
            _ => shipper.mirror.backlog(),
        };
        if unwritten > 0 {
            tracing::warn!(
                "the shared database did not take this command's {unwritten} records: they are in this host's journal only"
            );
        }
    }
}

impl Shipper {
    /// Run until the process ends: write, beat, and wait for more.
    pub async fn run(self) {
        // The schema first (each host may be the first, or newer): nothing
        // is written before it is there. Retried while the database is away.
        loop {
            match self.shared.migrate().await {
                Ok(()) => break,
                Err(e) => {
                    self.mirror.failed(&e);
                    tokio::time::sleep(PACE).await;
                }
            }
        }
        let mut last_beat: Option<Instant> = None;
        let mut answers = false;
        let mut refusals = 0;
        loop {
            if last_beat.is_none_or(|t| t.elapsed() >= PACE) {
                last_beat = Some(Instant::now());
                answers = match self.send_beat().await {
                    Ok(()) => true,
                    Err(e) => {
                        self.mirror.failed(&e);
                        false
                    }
                };
            }
            match self.step().await {
                // Written: go on at once.
                Ok(true) => {
                    refusals = 0;
                    continue;
                }
                // Nothing held: sleep until something is, or the beat.
                Ok(false) => {
                    let _ = tokio::time::timeout(PACE, self.mirror.inner.wake.notified()).await;
                }
                Err(e) => {
                    self.mirror.failed(&e);
                    // The database took the heartbeat but not this row (or
                    // the journal holds a row this build cannot read).
                    let refused = matches!(
                        e,
                        StoreError::Shared { .. } | StoreError::Unrecognised { .. }
                    );
                    refusals = if answers && refused { refusals + 1 } else { 0 };
                    if refusals >= REFUSALS {
                        self.mirror.set_aside(&e);
                        refusals = 0;
                        continue;
                    }
                    tokio::time::sleep(PACE).await;
                }
            }
        }
    }

    /// Write what is held, within `within` (a stopping daemon's last
    /// chance). Returns the rows left unwritten.
    pub async fn drain(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            match tokio::time::timeout(
                deadline.saturating_duration_since(Instant::now()),
                self.step(),
            )
            .await
            {
                Ok(Ok(true)) => continue,
                Ok(Ok(false)) => break,
                Ok(Err(_)) | Err(_) => break,
            }
        }
        if self.beats {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.send_beat()).await;
        }
        self.mirror.backlog()
    }

    async fn send_beat(&self) -> Result<(), StoreError> {
        // Under the writing lock, so that a beat counted before a write
        // cannot land after a later one: a stopping daemon's last beat
        // (after its drain) is the one that stays, backlog and all.
        let _writing = self.mirror.inner.writing.lock().await;
        let backlog = i64::try_from(self.mirror.backlog()).unwrap_or(i64::MAX);
        // What `fleet` shows as dropped: rows this host could not write.
        let dropped =
            i64::try_from(self.mirror.dropped() + self.mirror.refused()).unwrap_or(i64::MAX);
        timed(self.shared.beat(&self.mirror.beat(), backlog, dropped)).await?;
        self.mirror.ok();
        Ok(())
    }

    /// Write the queue's front. `Ok(false)` when nothing is held.
    async fn step(&self) -> Result<bool, StoreError> {
        let _writing = self.mirror.inner.writing.lock().await;
        let Some((item, n)) = self.mirror.front() else {
            return Ok(false);
        };
        match &item {
            Item::Samples(samples) => timed(self.shared.put_samples(samples)).await?,
            Item::Incident(id) => match self.local.incident(*id).await {
                Ok(incident) => {
                    let events = self.local.numbered_incident_events(*id).await?;
                    timed(self.shared.put_incident_with_timeline(&incident, &events)).await?
                }
                // Gone from the journal (never committed): nothing to send.
                Err(StoreError::NoIncident(_)) => {}
                Err(e) => return Err(e),
            },
            Item::Deployment(id) => {
                let deployments = self.local.deployments().await?;
                if let Some(d) = deployments.iter().find(|d| d.id == *id) {
                    timed(self.shared.put_deployment(d)).await?;
                }
            }
            Item::Quarantine { version, at_ms } => {
                // The rollback that quarantined it: the newest incident
                // that moved traffic away from this version.
                let incident = self
                    .local
                    .incidents()
                    .await?
                    .into_iter()
                    .filter(|i| i.from_version.as_deref() == Some(version.as_str()))
                    .map(|i| i.id)
                    .max();
                timed(self.shared.quarantine(version, incident, *at_ms)).await?;
            }
            Item::Pause(p) => timed(self.shared.put_pause(p)).await?,
            Item::Resume { at_ms } => timed(self.shared.resume(*at_ms)).await?,
            Item::Verdict(id, v) => timed(self.shared.put_verdict(*id, v)).await?,
            Item::Drill(id) => {
                if let Some(d) = self.local.drill(*id).await? {
                    timed(self.shared.put_drill(&d)).await?;
                }
            }
            Item::DeploymentsOf(version) => {
                for d in self.local.deployments().await? {
                    if version.as_ref().is_none_or(|v| d.version == *v) {
                        timed(self.shared.put_deployment(&d)).await?;
                    }
                }
            }
        }
        self.mirror.pop(n);
        self.mirror.ok();
        Ok(true)
    }
}

/// One statement, bounded: a database that stops answering mid-statement
/// counts as lost after [`super::STATEMENT_TIMEOUT`] and a bit.
async fn timed(
    f: impl std::future::Future<Output = Result<(), StoreError>>,
) -> Result<(), StoreError> {
    tokio::time::timeout(super::STATEMENT_TIMEOUT * 2, f)
        .await
        .map_err(|_| StoreError::Shared {
            doing: "writing to the shared database",
            why: "no answer within 6 s".to_owned(),
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: Millis) -> Sample {
        Sample::answer(at_ms, "healthz", None, true, 1.0)
    }

    /// While the database is away, an incident's every event queues a
    /// look at it: one waiting is enough (it is read when it goes), but
    /// the front may be mid-write, so one more may wait behind it.
    #[test]
    fn an_incident_waits_in_the_queue_once_behind_the_front() {
        let m = Mirror::default();
        for _ in 0..3 {
            m.push(Item::Incident(7));
        }
        assert_eq!(m.backlog(), 2, "the front and one behind it");
        m.push(Item::Deployment(1));
        m.push(Item::Incident(8));
        m.push(Item::Incident(7));
        m.push(Item::Incident(8));
        assert_eq!(m.backlog(), 4, "7, 7, the deployment, 8");
    }

    #[test]
    fn a_full_queue_drops_the_oldest_samples_and_counts_them_but_keeps_every_record() {
        let m = Mirror::default();
        m.push(Item::Incident(1));
        let batch: Vec<Sample> = (0..1000).map(sample).collect();
        for _ in 0..(MAX_SAMPLES / 1000) {
            m.push_samples(&batch);
        }
        assert_eq!(m.dropped(), 0);
        m.push_samples(&batch[..10]);
        assert_eq!(m.dropped(), 10, "the overflow is counted");
        assert_eq!(
            m.backlog(),
            MAX_SAMPLES + 1,
            "samples at the bound, plus the incident"
        );
        // The incident is still first; the oldest batch lost its first 10.
        let (front, n) = m.front().unwrap();
        assert!(matches!(front, Item::Incident(1)) && n == 1);
        m.pop(1);
        let (Item::Samples(joined), n) = m.front().unwrap() else {
            panic!("samples next");
        };
        assert_eq!(joined[0].at_ms, 10, "the oldest were dropped");
        assert!(
            joined.len() <= BATCH && n == 5,
            "batched: {} in {n}",
            joined.len()
        );
        m.pop(n);
        assert_eq!(m.backlog(), MAX_SAMPLES - joined.len());
    }

    fn verdict(at_ms: Millis) -> Item {
        Item::Verdict(
            at_ms,
            Box::new(crate::store::StoredVerdict {
                at_ms,
                rule: "critical: error_rate >= 5% over 1m".into(),
                severity: crate::model::Severity::Critical,
                color: crate::model::Color::Blue,
                state: crate::matrix::State::Fired,
                n: 5,
                value: Some(10.0),
                threshold: 5.0,
                window_ms: 60_000,
                baseline: None,
                detail: String::new(),
            }),
        )
    }

    /// A rule flapping through a long outage: the verdicts held stay
    /// bounded, the oldest waiting ones dropped and counted; the one being
    /// written (the front) and every other record stay.
    #[test]
    fn a_flood_of_verdicts_is_bounded_and_counted_but_keeps_every_record() {
        let m = Mirror::default();
        m.push(verdict(0));
        m.push(Item::Incident(1));
        for at in 1..(MAX_VERDICTS as Millis + 5) {
            m.push(verdict(at));
        }
        assert_eq!(m.dropped(), 5, "the overflow is counted");
        assert_eq!(
            m.backlog(),
            MAX_VERDICTS + 1,
            "verdicts at the bound, plus the incident"
        );
        let (front, _) = m.front().unwrap();
        assert!(matches!(front, Item::Verdict(0, _)), "the front stays");
        m.pop(1);
        assert!(matches!(m.front().unwrap().0, Item::Incident(1)));
        m.pop(1);
        let Item::Verdict(oldest, _) = m.front().unwrap().0 else {
            panic!("verdicts next");
        };
        assert_eq!(oldest, 6, "the oldest waiting were dropped");
        // Popping keeps the count: the bound applies to what is held.
        m.pop(1);
        m.push(verdict(99_999));
        assert_eq!(m.dropped(), 5);
    }
}
