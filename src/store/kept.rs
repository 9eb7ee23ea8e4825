//! Rollback records the database refused, kept in memory in order and
//! written when it takes writes again: a failing database (full, read-only,
//! locked by another process, the file made immutable) never stops or
//! delays a rollback. No SQL here: these are the store's own verbs, tried
//! once with a short busy timeout ([`KEPT_BUSY`]) and, once anything waits,
//! queued behind it without touching the database at all.
//!
//! The queue is flushed by whoever sees the database take writes again (the
//! sample writer after each stored batch, the daemon at shutdown). An
//! incident opened while the database refused it gets a provisional id;
//! the flush maps it to the id the database gives it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{Incident, NewIncident, Store, StoreError};
use crate::model::{Color, EventKind, IncidentState, Millis, Trigger};

/// How long a rollback's own write waits for another process's write lock
/// before the record is kept in memory instead.
pub const KEPT_BUSY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub(super) struct Kept {
    queue: Mutex<Queue>,
    /// One flush at a time: only the flusher pops from the queue.
    flushing: tokio::sync::Mutex<()>,
    failed_writes: AtomicU64,
}

#[derive(Debug, Default)]
struct Queue {
    writes: VecDeque<Write>,
    /// Provisional incident id -> the id the database gave it.
    ids: HashMap<i64, i64>,
    last_provisional: i64,
}

#[derive(Clone, Debug)]
enum Write {
    Open {
        id: i64,
        new: NewIncident,
        state: IncidentState,
        message: String,
    },
    Advance {
        id: i64,
        at_ms: Millis,
        state: IncidentState,
        message: String,
    },
    Event {
        id: i64,
        at_ms: Millis,
        kind: EventKind,
        message: String,
    },
    SwitchGroup {
        id: i64,
        at_ms: Millis,
        pgid: u32,
        message: String,
    },
    Close {
        id: i64,
        at_ms: Millis,
        state: IncidentState,
        outcome: String,
        downtime_ms: Option<Millis>,
    },
    Deployment {
        color: Color,
        version: String,
        source: String,
        at_ms: Millis,
    },
    Quarantine {
        id: i64,
        version: String,
    },
}

impl Write {
    fn what(&self) -> &'static str {
        match self {
            Write::Open { .. } => "the opening of an incident",
            Write::Advance { .. } | Write::Event { .. } => "an incident event",
            Write::SwitchGroup { .. } => "the switch command's process group",
            Write::Close { .. } => "the closing of an incident",
            Write::Deployment { .. } => "the restored deployment",
            Write::Quarantine { .. } => "a quarantine",
        }
    }

    /// With incident ids mapped from provisional to real.
    fn mapped(mut self, ids: &HashMap<i64, i64>) -> Write {
        match &mut self {
            Write::Advance { id, .. }
            | Write::Event { id, .. }
            | Write::SwitchGroup { id, .. }
            | Write::Close { id, .. } => {
                if let Some(real) = ids.get(id) {
                    *id = *real;
                }
            }
            Write::Open { .. } | Write::Deployment { .. } | Write::Quarantine { .. } => {}
        }
        self
    }
}

impl Kept {
    pub(super) fn failed_write(&self) {
        self.failed_writes.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn failed_writes(&self) -> u64 {
        self.failed_writes.load(Ordering::Relaxed)
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A panic while holding this lock leaves a queue that is still a
        // valid queue (every change is one push or pop): keep using it.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn len(&self) -> usize {
        self.queue().writes.len()
    }

    fn push(&self, write: Write, why: &str) {
        tracing::error!(
            "the database refuses writes ({why}): {} is kept in memory and written when it takes writes again",
            write.what()
        );
        self.queue().writes.push_back(write);
    }
}

impl Store {
    /// Rollback records waiting in memory for the database.
    pub fn kept_len(&self) -> usize {
        self.kept.len()
    }

    /// Open a rollback's incident; when the database refuses it, keep it in
    /// memory under a provisional id. The id and whether it is stored.
    /// Still fails with [`StoreError::RollbackInFlight`] when the database
    /// (as far as it can be read) shows another rollback in flight.
    pub async fn open_incident_or_keep(
        &self,
        new: &NewIncident,
        first_state: IncidentState,
        message: &str,
    ) -> Result<(i64, bool), StoreError> {
        let why = if self.kept.len() == 0 {
            match self
                .open_incident_with(new, first_state, message, KEPT_BUSY)
                .await
            {
                Ok(id) => return Ok((id, true)),
                Err(e @ StoreError::RollbackInFlight(_)) => return Err(e),
                Err(e) => e.to_string(),
            }
        } else {
            "earlier records still wait".to_owned()
        };
        if new.in_flight {
            if let Ok(Some(other)) = self.stored_in_flight_incident().await {
                return Err(StoreError::RollbackInFlight(other.id));
            }
        }
        let stored_max = self.max_incident_id().await.unwrap_or(0);
        let id = {
            let mut q = self.kept.queue();
            q.last_provisional = q.last_provisional.max(stored_max) + 1;
            q.last_provisional
        };
        self.kept.push(
            Write::Open {
                id,
                new: new.clone(),
                state: first_state,
                message: message.to_owned(),
            },
            &why,
        );
        Ok((id, false))
    }

    pub async fn advance_incident_or_keep(
        &self,
        id: i64,
        at_ms: Millis,
        state: IncidentState,
        message: &str,
    ) {
        self.write_or_keep(Write::Advance {
            id,
            at_ms,
            state,
            message: message.to_owned(),
        })
        .await
    }

    pub async fn add_incident_event_or_keep(
        &self,
        id: i64,
        at_ms: Millis,
        kind: impl Into<EventKind>,
        message: &str,
    ) {
        self.write_or_keep(Write::Event {
            id,
            at_ms,
            kind: kind.into(),
            message: message.to_owned(),
        })
        .await
    }

    pub async fn record_switch_group_or_keep(
        &self,
        id: i64,
        at_ms: Millis,
        pgid: u32,
        message: &str,
    ) {
        self.write_or_keep(Write::SwitchGroup {
            id,
            at_ms,
            pgid,
            message: message.to_owned(),
        })
        .await
    }

    pub async fn close_incident_or_keep(
        &self,
        id: i64,
        at_ms: Millis,
        state: IncidentState,
        outcome: &str,
        downtime_ms: Option<Millis>,
    ) {
        self.write_or_keep(Write::Close {
            id,
            at_ms,
            state,
            outcome: outcome.to_owned(),
            downtime_ms,
        })
        .await
    }

    pub async fn record_deployment_or_keep(
        &self,
        color: Color,
        version: &str,
        source: &str,
        at_ms: Millis,
    ) {
        self.write_or_keep(Write::Deployment {
            color,
            version: version.to_owned(),
            source: source.to_owned(),
            at_ms,
        })
        .await
    }

    pub async fn quarantine_deployment_or_keep(&self, id: i64, version: &str) {
        self.write_or_keep(Write::Quarantine {
            id,
            version: version.to_owned(),
        })
        .await
    }

    /// Write now when nothing waits and the database takes it; else queue.
    async fn write_or_keep(&self, write: Write) {
        if self.kept.len() > 0 {
            self.kept.push(write, "earlier records still wait");
            return;
        }
        match self.apply(&write, KEPT_BUSY).await {
            Ok(_) => {}
            Err(StoreError::NoIncident(id)) => {
                tracing::error!("no incident #{id} to record {} in", write.what());
            }
            Err(e) => self.kept.push(write, &e.to_string()),
        }
    }

    /// Write what was kept, in order, until it is all stored or the
    /// database refuses again. How many records were written.
    pub async fn flush_kept(&self) -> Result<usize, StoreError> {
        if self.kept.len() == 0 {
            return Ok(0);
        }
        let _flushing = self.kept.flushing.lock().await;
        let mut written = 0;
        loop {
            let next = {
                let q = self.kept.queue();
                q.writes.front().cloned().map(|w| w.mapped(&q.ids))
            };
            let Some(write) = next else { break };
            let opened = match self.apply(&write, super::BUSY_TIMEOUT).await {
                Ok(opened) => opened,
                Err(StoreError::NoIncident(id)) => {
                    tracing::error!("no incident #{id} to record {} in", write.what());
                    None
                }
                Err(e) => return Err(e),
            };
            let mut q = self.kept.queue();
            q.writes.pop_front();
            if let (Write::Open { id, .. }, Some(real)) = (&write, opened) {
                if *id != real {
                    tracing::warn!("incident #{id}, kept in memory, is stored as #{real}");
                }
                q.ids.insert(*id, real);
            }
            written += 1;
        }
        tracing::info!(
            "the database takes writes again: {written} kept rollback records are stored"
        );
        Ok(written)
    }

    /// One write; for an opening, the id the database gave.
    async fn apply(&self, write: &Write, busy: Duration) -> Result<Option<i64>, StoreError> {
        match write {
            Write::Open {
                new,
                state,
                message,
                ..
            } => match self.open_incident_with(new, *state, message, busy).await {
                Ok(id) => Ok(Some(id)),
                // Another rollback took the slot meanwhile: this one is
                // stored as a record that holds no slot.
                Err(StoreError::RollbackInFlight(_)) => {
                    let unheld = NewIncident {
                        in_flight: false,
                        ..new.clone()
                    };
                    Ok(Some(
                        self.open_incident_with(&unheld, *state, message, busy)
                            .await?,
                    ))
                }
                Err(e) => Err(e),
            },
            Write::Advance {
                id,
                at_ms,
                state,
                message,
            } => self
                .advance_incident_with(*id, *at_ms, *state, message, busy)
                .await
                .map(|()| None),
            Write::Event {
                id,
                at_ms,
                kind,
                message,
            } => self
                .add_incident_event_with(*id, *at_ms, *kind, message, busy)
                .await
                .map(|()| None),
            Write::SwitchGroup {
                id,
                at_ms,
                pgid,
                message,
            } => self
                .record_switch_group_with(*id, *at_ms, *pgid, message, busy)
                .await
                .map(|()| None),
            Write::Close {
                id,
                at_ms,
                state,
                outcome,
                downtime_ms,
            } => self
                .close_incident_with(*id, *at_ms, *state, outcome, *downtime_ms, busy)
                .await
                .map(|()| None),
            Write::Deployment {
                color,
                version,
                source,
                at_ms,
            } => self
                .record_deployment_with(*color, version, source, *at_ms, busy)
                .await
                .map(|_| None),
            Write::Quarantine { id, version } => self
                .quarantine_deployment_with(*id, version, busy)
                .await
                .map(|()| None),
        }
    }

    /// The rollback in flight that only memory knows of yet (opened while
    /// the database refused it, not closed).
    pub(super) fn kept_in_flight(&self) -> Option<Incident> {
        let q = self.kept.queue();
        let mut found: Option<Incident> = None;
        for w in &q.writes {
            match w {
                Write::Open { id, new, state, .. } if new.in_flight => {
                    found = Some(Incident {
                        id: *id,
                        opened_ms: new.at_ms,
                        closed_ms: None,
                        trigger_kind: new.trigger_kind,
                        severity: new.severity,
                        rule: new.rule.clone(),
                        reason: new.reason.clone(),
                        evidence: new.evidence.clone(),
                        from_color: new.from_color,
                        to_color: new.to_color,
                        from_version: new.from_version.clone(),
                        to_version: new.to_version.clone(),
                        state: *state,
                        outcome: None,
                        downtime_ms: None,
                        in_flight: true,
                        holder: new.holder.clone(),
                        switch_pgid: None,
                    });
                }
                Write::Advance { id, state, .. } => {
                    if let Some(inc) = found.as_mut().filter(|i| i.id == *id) {
                        inc.state = *state;
                    }
                }
                Write::SwitchGroup { id, pgid, .. } => {
                    if let Some(inc) = found.as_mut().filter(|i| i.id == *id) {
                        inc.switch_pgid = Some(*pgid);
                    }
                }
                Write::Close { id, .. } if found.as_ref().is_some_and(|i| i.id == *id) => {
                    found = None;
                }
                _ => {}
            }
        }
        found
    }

    /// When the last automatic rollback whose switch command ran (or, with
    /// `dry_run`, would have) was opened, among those only memory knows.
    pub(super) fn kept_cooldown_start(&self, dry_run: bool) -> Option<Millis> {
        let q = self.kept.queue();
        let mut opened: HashMap<i64, Millis> = HashMap::new();
        let mut start = None;
        for w in &q.writes {
            match w {
                Write::Open { id, new, .. } if new.trigger_kind == Trigger::Automatic => {
                    opened.insert(*id, new.at_ms);
                }
                Write::Advance {
                    id,
                    at_ms,
                    state: IncidentState::Switching,
                    ..
                }
                | Write::Event {
                    id,
                    at_ms,
                    kind: EventKind::State(IncidentState::Switching),
                    ..
                }
                | Write::SwitchGroup { id, at_ms, .. } => {
                    // Opened in the database, switched in memory: the
                    // switch's own time starts the cooldown (a little later
                    // than the opening, never earlier).
                    start = start.max(Some(opened.get(id).copied().unwrap_or(*at_ms)));
                }
                Write::Close {
                    id,
                    state: IncidentState::DryRun,
                    ..
                } if dry_run => {
                    start = start.max(opened.get(id).copied());
                }
                _ => {}
            }
        }
        start
    }
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection, SqliteConnection};

    use super::*;
    use crate::model::Severity;

    fn incident(at_ms: Millis, holder: &str) -> NewIncident {
        NewIncident {
            at_ms,
            trigger_kind: Trigger::Automatic,
            severity: Severity::Critical,
            rule: Some("health_failures".into()),
            reason: "blue fails".into(),
            evidence: "{}".into(),
            from_color: Some(Color::Blue),
            to_color: Some(Color::Green),
            from_version: Some("v2".into()),
            to_version: Some("v1".into()),
            in_flight: true,
            holder: Some(holder.into()),
        }
    }

    /// Another process holding the write lock (`BEGIN IMMEDIATE` on a
    /// connection of its own) for as long as the returned connection lives.
    async fn hold_write_lock(store: &Store) -> SqliteConnection {
        let mut other = SqliteConnection::connect(&format!("sqlite://{}", store.path().display()))
            .await
            .unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap();
        other
    }

    #[tokio::test]
    async fn a_locked_database_keeps_the_rollback_record_in_memory_then_stores_it_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_dir(dir.path()).await.unwrap();
        // A rollback opened earlier, stored: the kept one comes after it.
        let before = store
            .open_incident(&incident(1_000, "1/1"), IncidentState::Requested, "first")
            .await
            .unwrap();
        store
            .close_incident(before, 1_500, IncidentState::Verified, "done", None)
            .await
            .unwrap();

        let other = hold_write_lock(&store).await;
        let started = std::time::Instant::now();
        let (id, stored) = store
            .open_incident_or_keep(
                &incident(2_000, "2/2"),
                IncidentState::Requested,
                "opened while locked",
            )
            .await
            .unwrap();
        assert!(!stored, "the lock is held: the opening cannot be stored");
        assert_eq!(id, before + 1, "a provisional id after the last stored one");
        store
            .advance_incident_or_keep(
                id,
                2_100,
                IncidentState::Switching,
                "running the switch command",
            )
            .await;
        store
            .close_incident_or_keep(id, 2_200, IncidentState::Verified, "rolled back", Some(200))
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the rollback's writes waited {:?} on the locked database",
            started.elapsed()
        );
        assert_eq!(store.kept_len(), 3);
        assert!(store.failed_writes() >= 1, "the refused write is counted");
        // The cooldown counts the rollback only memory knows of.
        assert_eq!(store.cooldown_start_ms(false).await.unwrap(), Some(2_000));
        // Still locked: the flush fails and keeps everything.
        assert!(store.flush_kept().await.is_err());
        assert_eq!(store.kept_len(), 3);

        // The other process lets go of the lock and records an incident of
        // its own first: the kept one is stored under the next id.
        drop(other);
        let cli = Store::open(store.path()).await.unwrap();
        let taken = cli
            .open_incident(
                &NewIncident {
                    in_flight: false,
                    trigger_kind: Trigger::Manual,
                    ..incident(2_050, "3/3")
                },
                IncidentState::Refused,
                "cli",
            )
            .await
            .unwrap();
        assert_eq!(taken, id, "the provisional id is taken by another record");

        assert_eq!(store.flush_kept().await.unwrap(), 3);
        assert_eq!(store.kept_len(), 0);
        let all = store.incidents().await.unwrap();
        let kept = all
            .iter()
            .find(|i| i.reason == "blue fails" && i.opened_ms == 2_000);
        let kept = kept.expect("the kept incident is stored");
        assert_eq!(kept.id, id + 1, "mapped to the id the database gave it");
        assert_eq!(kept.state, IncidentState::Verified);
        assert_eq!(kept.downtime_ms, Some(200));
        assert!(!kept.in_flight, "closed: the slot is free");
        let events: Vec<_> = store
            .incident_events(kept.id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.at_ms, e.state))
            .collect();
        assert_eq!(
            events,
            [
                (2_000, IncidentState::Requested.into()),
                (2_100, IncidentState::Switching.into()),
                (2_200, IncidentState::Verified.into())
            ]
        );
        assert_eq!(store.in_flight_incident().await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_rollback_kept_in_memory_holds_the_slot_until_it_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_dir(dir.path()).await.unwrap();
        let other = hold_write_lock(&store).await;
        let (id, stored) = store
            .open_incident_or_keep(&incident(1_000, "7/7"), IncidentState::Requested, "opened")
            .await
            .unwrap();
        assert!(!stored);
        store
            .advance_incident_or_keep(id, 1_100, IncidentState::TargetVerified, "green passes")
            .await;
        let held = store.in_flight_incident().await.unwrap().unwrap();
        assert_eq!(
            (held.id, held.state, held.holder.as_deref()),
            (id, IncidentState::TargetVerified, Some("7/7"))
        );
        drop(other);
        store.flush_kept().await.unwrap();
        // Stored and still in flight: a second rollback is refused the slot.
        let again = store
            .open_incident_or_keep(&incident(1_200, "8/8"), IncidentState::Requested, "second")
            .await;
        assert!(
            matches!(again, Err(StoreError::RollbackInFlight(i)) if i == id),
            "{again:?}"
        );
    }
}
