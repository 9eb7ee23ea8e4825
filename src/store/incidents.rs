//! Incidents and their timelines: opening, advancing, closing a rollback's
//! record, the single in-flight slot and who holds it, and what the
//! automatic guards read (cooldown start, unresolved escalation). Stored
//! words become `model`'s enums here, or an error naming the text.

use std::time::Duration;

use serde::Serialize;
use sqlx::{FromRow, Row};

use super::shared::ship::Item;
use super::{BUSY_TIMEOUT, Store, StoreError, q};
use crate::model::{Color, EventKind, IncidentState, Millis, Severity, Trigger};

/// What a new incident starts with.
#[derive(Clone, Debug)]
pub struct NewIncident {
    pub at_ms: Millis,
    pub trigger_kind: Trigger,
    pub severity: Severity,
    pub rule: Option<String>,
    pub reason: String,
    pub evidence: String,
    pub from_color: Option<Color>,
    pub to_color: Option<Color>,
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    /// Whether it holds the single in-flight rollback slot.
    pub in_flight: bool,
    /// The process running it (see `rollback::holder_alive`).
    pub holder: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Incident {
    pub id: i64,
    pub opened_ms: Millis,
    pub closed_ms: Option<Millis>,
    pub trigger_kind: Trigger,
    pub severity: Severity,
    pub rule: Option<String>,
    pub reason: String,
    /// JSON text; serialized as the JSON it holds (an object), not a string.
    #[serde(serialize_with = "evidence_as_json")]
    pub evidence: String,
    pub from_color: Option<Color>,
    pub to_color: Option<Color>,
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    pub state: IncidentState,
    pub outcome: Option<String>,
    pub downtime_ms: Option<Millis>,
    pub in_flight: bool,
    pub holder: Option<String>,
    /// The switch command's process group, once it started (see
    /// `Store::record_switch_group`); `None` before, and for incidents
    /// written by a version that kept it only on the timeline. Not part
    /// of the printed record.
    #[serde(skip)]
    pub switch_pgid: Option<u32>,
}

/// Stored evidence is JSON text: out of the store it is that JSON (text
/// that does not parse stays a string).
fn evidence_as_json<S: serde::Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => v.serialize(s),
        Err(_) => s.serialize_str(text),
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IncidentEvent {
    pub at_ms: Millis,
    pub state: EventKind,
    pub message: String,
}

/// An incident's row as both backends return it (the shared database's
/// query names its columns to match: `shared/timeline.rs`).
#[derive(FromRow)]
pub(super) struct IncidentRow {
    pub(super) id: i64,
    pub(super) opened_ms: i64,
    pub(super) closed_ms: Option<i64>,
    pub(super) trigger_kind: String,
    pub(super) severity: String,
    pub(super) rule: Option<String>,
    pub(super) reason: String,
    pub(super) evidence: String,
    pub(super) from_color: Option<String>,
    pub(super) to_color: Option<String>,
    pub(super) from_version: Option<String>,
    pub(super) to_version: Option<String>,
    pub(super) state: String,
    pub(super) outcome: Option<String>,
    pub(super) downtime_ms: Option<i64>,
    pub(super) in_flight: Option<i64>,
    pub(super) holder: Option<String>,
    pub(super) switch_pgid: Option<i64>,
}

/// A stored word parsed into its type, or [`StoreError::Unrecognised`]
/// naming the text (never a panic, never a silent default).
pub(super) fn parsed<T: std::str::FromStr<Err = String>>(
    what: &'static str,
    text: &str,
) -> Result<T, StoreError> {
    text.parse()
        .map_err(|why| StoreError::Unrecognised { what, why })
}

impl TryFrom<IncidentRow> for Incident {
    type Error = StoreError;
    fn try_from(r: IncidentRow) -> Result<Incident, StoreError> {
        Ok(Incident {
            id: r.id,
            opened_ms: r.opened_ms,
            closed_ms: r.closed_ms,
            trigger_kind: parsed("a rollback trigger", &r.trigger_kind)?,
            severity: r.severity.parse().unwrap_or(Severity::Critical),
            rule: r.rule,
            reason: r.reason,
            evidence: r.evidence,
            from_color: r.from_color.and_then(|c| c.parse().ok()),
            to_color: r.to_color.and_then(|c| c.parse().ok()),
            from_version: r.from_version,
            to_version: r.to_version,
            state: parsed("an incident state", &r.state)?,
            outcome: r.outcome,
            downtime_ms: r.downtime_ms,
            in_flight: r.in_flight.is_some(),
            holder: r.holder,
            switch_pgid: r
                .switch_pgid
                .map(|p| {
                    u32::try_from(p).map_err(|_| StoreError::Unrecognised {
                        what: "a process group",
                        why: format!("{p} is not a process group id"),
                    })
                })
                .transpose()?,
        })
    }
}

pub(super) const INCIDENT_COLUMNS: &str = "id, opened_ms, closed_ms, trigger_kind, severity, rule, reason, evidence, \
     from_color, to_color, from_version, to_version, state, outcome, downtime_ms, in_flight, holder, switch_pgid";

impl Store {
    // --- incidents -------------------------------------------------------

    /// Open an incident and its first timeline event in one transaction.
    /// With `in_flight`, fails with [`StoreError::RollbackInFlight`] when
    /// another rollback holds the slot (in this process or any other).
    pub async fn open_incident(
        &self,
        new: &NewIncident,
        first_state: IncidentState,
        message: &str,
    ) -> Result<i64, StoreError> {
        self.open_incident_with(new, first_state, message, BUSY_TIMEOUT)
            .await
    }

    pub(super) async fn open_incident_with(
        &self,
        new: &NewIncident,
        first_state: IncidentState,
        message: &str,
        busy: Duration,
    ) -> Result<i64, StoreError> {
        const DOING: &str = "opening an incident";
        let mut w = self.writing(DOING, busy).await?;
        let mut tx = w.begin(DOING).await?;
        let inserted = sqlx::query_scalar::<_, i64>(
            "INSERT INTO incidents (opened_ms, trigger_kind, severity, rule, reason, evidence, from_color, to_color, \
             from_version, to_version, state, in_flight, holder) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(new.at_ms)
        .bind(new.trigger_kind.as_str())
        .bind(new.severity.as_str())
        .bind(&new.rule)
        .bind(&new.reason)
        .bind(&new.evidence)
        .bind(new.from_color.map(Color::as_str))
        .bind(new.to_color.map(Color::as_str))
        .bind(&new.from_version)
        .bind(&new.to_version)
        .bind(first_state.as_str())
        .bind(new.in_flight.then_some(1i64))
        .bind(&new.holder)
        .fetch_one(&mut *tx)
        .await;
        let id = match inserted {
            Ok(id) => id,
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                // Not a storage fault: roll back and hand the connection on.
                tx.rollback().await.map_err(q(DOING))?;
                w.done().await;
                drop(w);
                let holder = self.in_flight_incident().await?.map(|i| i.id).unwrap_or(0);
                return Err(StoreError::RollbackInFlight(holder));
            }
            Err(e) => return Err(q(DOING)(e)),
        };
        insert_event(&mut tx, id, new.at_ms, first_state.into(), message).await?;
        tx.commit().await.map_err(q(DOING))?;
        w.done().await;
        self.mirror_item(Item::Incident(id));
        Ok(id)
    }

    /// Move an incident to a new state, with its timeline event, atomically.
    pub async fn advance_incident(
        &self,
        id: i64,
        at_ms: Millis,
        state: IncidentState,
        message: &str,
    ) -> Result<(), StoreError> {
        self.advance_incident_with(id, at_ms, state, message, BUSY_TIMEOUT)
            .await
    }

    pub(super) async fn advance_incident_with(
        &self,
        id: i64,
        at_ms: Millis,
        state: IncidentState,
        message: &str,
        busy: Duration,
    ) -> Result<(), StoreError> {
        const DOING: &str = "advancing an incident";
        let mut w = self.writing(DOING, busy).await?;
        let mut tx = w.begin(DOING).await?;
        let changed = sqlx::query("UPDATE incidents SET state = ? WHERE id = ?")
            .bind(state.as_str())
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(q(DOING))?
            .rows_affected();
        if changed == 0 {
            tx.rollback().await.map_err(q(DOING))?;
            w.done().await;
            return Err(StoreError::NoIncident(id));
        }
        insert_event(&mut tx, id, at_ms, state.into(), message).await?;
        tx.commit().await.map_err(q(DOING))?;
        w.done().await;
        self.mirror_item(Item::Incident(id));
        Ok(())
    }

    /// Record a timeline event without changing the state.
    pub async fn add_incident_event(
        &self,
        id: i64,
        at_ms: Millis,
        kind: impl Into<EventKind>,
        message: &str,
    ) -> Result<(), StoreError> {
        self.add_incident_event_with(id, at_ms, kind.into(), message, BUSY_TIMEOUT)
            .await
    }

    pub(super) async fn add_incident_event_with(
        &self,
        id: i64,
        at_ms: Millis,
        kind: EventKind,
        message: &str,
        busy: Duration,
    ) -> Result<(), StoreError> {
        const DOING: &str = "adding an incident event";
        let mut w = self.writing(DOING, busy).await?;
        let mut tx = w.begin(DOING).await?;
        insert_event(&mut tx, id, at_ms, kind, message).await?;
        tx.commit().await.map_err(q(DOING))?;
        w.done().await;
        self.mirror_item(Item::Incident(id));
        Ok(())
    }

    /// The switch command of incident `id` runs as process group `pgid`:
    /// stored on the incident (what a restart reads) with its timeline
    /// event (what a person reads), atomically.
    pub async fn record_switch_group(
        &self,
        id: i64,
        at_ms: Millis,
        pgid: u32,
        message: &str,
    ) -> Result<(), StoreError> {
        self.record_switch_group_with(id, at_ms, pgid, message, BUSY_TIMEOUT)
            .await
    }

    pub(super) async fn record_switch_group_with(
        &self,
        id: i64,
        at_ms: Millis,
        pgid: u32,
        message: &str,
        busy: Duration,
    ) -> Result<(), StoreError> {
        const DOING: &str = "recording the switch command's process group";
        let mut w = self.writing(DOING, busy).await?;
        let mut tx = w.begin(DOING).await?;
        let changed = sqlx::query("UPDATE incidents SET switch_pgid = ? WHERE id = ?")
            .bind(i64::from(pgid))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(q(DOING))?
            .rows_affected();
        if changed == 0 {
            tx.rollback().await.map_err(q(DOING))?;
            w.done().await;
            return Err(StoreError::NoIncident(id));
        }
        insert_event(&mut tx, id, at_ms, IncidentState::Switching.into(), message).await?;
        tx.commit().await.map_err(q(DOING))?;
        w.done().await;
        self.mirror_item(Item::Incident(id));
        Ok(())
    }

    /// Close an incident: final state, outcome, downtime; frees the slot.
    pub async fn close_incident(
        &self,
        id: i64,
        at_ms: Millis,
        state: IncidentState,
        outcome: &str,
        downtime_ms: Option<Millis>,
    ) -> Result<(), StoreError> {
        self.close_incident_with(id, at_ms, state, outcome, downtime_ms, BUSY_TIMEOUT)
            .await
    }

    pub(super) async fn close_incident_with(
        &self,
        id: i64,
        at_ms: Millis,
        state: IncidentState,
        outcome: &str,
        downtime_ms: Option<Millis>,
        busy: Duration,
    ) -> Result<(), StoreError> {
        const DOING: &str = "closing an incident";
        let mut w = self.writing(DOING, busy).await?;
        let mut tx = w.begin(DOING).await?;
        sqlx::query(
            "UPDATE incidents SET state = ?, outcome = ?, downtime_ms = ?, closed_ms = ?, in_flight = NULL WHERE id = ?",
        )
        .bind(state.as_str())
        .bind(outcome)
        .bind(downtime_ms)
        .bind(at_ms)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(q(DOING))?;
        insert_event(&mut tx, id, at_ms, state.into(), outcome).await?;
        tx.commit().await.map_err(q(DOING))?;
        w.done().await;
        self.mirror_item(Item::Incident(id));
        Ok(())
    }

    pub async fn incident(&self, id: i64) -> Result<Incident, StoreError> {
        if let Some(db) = self.reads_shared() {
            return db.own_incident(id).await;
        }
        let row: Option<IncidentRow> = sqlx::query_as(&format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(self.db()?)
        .await
        .map_err(q("reading an incident"))?;
        row.map(Incident::try_from)
            .transpose()?
            .ok_or(StoreError::NoIncident(id))
    }

    pub async fn incidents(&self) -> Result<Vec<Incident>, StoreError> {
        if let Some(db) = self.reads_shared() {
            return db.own_incidents().await;
        }
        let rows: Vec<IncidentRow> = sqlx::query_as(&format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents ORDER BY id"
        ))
        .fetch_all(self.db()?)
        .await
        .map_err(q("listing incidents"))?;
        rows.into_iter().map(Incident::try_from).collect()
    }

    /// The rollback in flight: in the database, or (while the database
    /// refuses writes) one this process keeps in memory.
    pub async fn in_flight_incident(&self) -> Result<Option<Incident>, StoreError> {
        match self.stored_in_flight_incident().await {
            Ok(None) => Ok(self.kept_in_flight()),
            Err(e) => match self.kept_in_flight() {
                Some(kept) => Ok(Some(kept)),
                None => Err(e),
            },
            found => found,
        }
    }

    pub(super) async fn max_incident_id(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM incidents")
            .fetch_one(self.db()?)
            .await
            .map_err(q("reading the last incident id"))
    }

    pub(super) async fn stored_in_flight_incident(&self) -> Result<Option<Incident>, StoreError> {
        let read = self.stored_in_flight_read().await;
        self.remembered(read, |l| &mut l.in_flight)
    }

    async fn stored_in_flight_read(&self) -> Result<Option<Incident>, StoreError> {
        if let Some(db) = self.reads_shared() {
            return db.own_in_flight().await;
        }
        let row: Option<IncidentRow> = sqlx::query_as(&format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE in_flight IS NOT NULL"
        ))
        .fetch_optional(self.db()?)
        .await
        .map_err(q("reading the in-flight rollback"))?;
        row.map(Incident::try_from).transpose()
    }

    pub async fn incident_events(&self, id: i64) -> Result<Vec<IncidentEvent>, StoreError> {
        if let Some(db) = self.reads_shared() {
            return db.own_incident_events(id).await;
        }
        Ok(self
            .numbered_incident_events(id)
            .await?
            .into_iter()
            .map(|(_, e)| e)
            .collect())
    }

    /// The timeline with each event's id in the journal (what the mirror
    /// keys it by in the shared database).
    pub(super) async fn numbered_incident_events(
        &self,
        id: i64,
    ) -> Result<Vec<(i64, IncidentEvent)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at_ms, state, message FROM incident_events WHERE incident_id = ? ORDER BY at_ms, id",
        )
        .bind(id)
        .fetch_all(self.db()?)
        .await
        .map_err(q("reading an incident timeline"))?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    r.get("id"),
                    IncidentEvent {
                        at_ms: r.get("at_ms"),
                        state: parsed("a timeline event kind", r.get("state"))?,
                        message: r.get("message"),
                    },
                ))
            })
            .collect()
    }

    // --- guarded rollback (issue 5): cooldown, escalations, holders ------

    /// When the cooldown started: the last automatic rollback whose switch
    /// command ran (it may have moved traffic even if it then failed), and
    /// with `dry_run` also the last one that would have run it.
    pub async fn cooldown_start_ms(&self, dry_run: bool) -> Result<Option<Millis>, StoreError> {
        let kept = self.kept_cooldown_start(dry_run);
        let read = self.cooldown_read(dry_run).await;
        let stored = self.remembered(read, |l| &mut l.cooldown[usize::from(dry_run)])?;
        Ok(stored.max(kept))
    }

    async fn cooldown_read(&self, dry_run: bool) -> Result<Option<Millis>, StoreError> {
        if let Some(db) = self.reads_shared() {
            return db.own_cooldown_start(dry_run).await;
        }
        sqlx::query_scalar(
            "SELECT MAX(i.opened_ms) FROM incidents i WHERE i.trigger_kind = ? \
             AND (EXISTS (SELECT 1 FROM incident_events e WHERE e.incident_id = i.id AND e.state = ?) \
                  OR (? AND i.state = ?))",
        )
        .bind(Trigger::Automatic.as_str())
        .bind(IncidentState::Switching.as_str())
        .bind(dry_run)
        .bind(IncidentState::DryRun.as_str())
        .fetch_one(self.db()?)
        .await
        .map_err(q("reading the last rollback"))
    }

    /// The last escalated incident, unless a deployment was recorded after
    /// it closed (an operator or pipeline acted since).
    pub async fn unresolved_escalation(&self) -> Result<Option<Incident>, StoreError> {
        let read = self.unresolved_escalation_read().await;
        self.remembered(read, |l| &mut l.escalation)
    }

    async fn unresolved_escalation_read(&self) -> Result<Option<Incident>, StoreError> {
        if let Some(db) = self.reads_shared() {
            return db.own_unresolved_escalation().await;
        }
        let row: Option<IncidentRow> = sqlx::query_as(&format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents i WHERE i.state = ? \
             AND NOT EXISTS (SELECT 1 FROM deployments d WHERE d.at_ms > i.closed_ms) \
             ORDER BY i.id DESC LIMIT 1"
        ))
        .bind(IncidentState::Escalated.as_str())
        .fetch_optional(self.db()?)
        .await
        .map_err(q("reading escalations"))?;
        row.map(Incident::try_from).transpose()
    }

    /// Take over an in-flight incident from `old` (a process that died):
    /// true for exactly one caller.
    pub async fn take_over_incident(
        &self,
        id: i64,
        old: Option<&str>,
        new: &str,
    ) -> Result<bool, StoreError> {
        self.fence("taking over a rollback")?;
        let done = sqlx::query(
            "UPDATE incidents SET holder = ? WHERE id = ? AND in_flight IS NOT NULL AND holder IS ?",
        )
        .bind(new)
        .bind(id)
        .bind(old)
        .execute(self.db()?)
        .await
        .map_err(q("taking over a rollback"))?;
        Ok(done.rows_affected() == 1)
    }
}

async fn insert_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    id: i64,
    at_ms: Millis,
    kind: EventKind,
    message: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO incident_events (incident_id, at_ms, state, message) VALUES (?, ?, ?, ?)",
    )
    .bind(id)
    .bind(at_ms)
    .bind(kind.as_str())
    .bind(message)
    .execute(&mut **tx)
    .await
    .map_err(q("recording an incident event"))?;
    Ok(())
}
