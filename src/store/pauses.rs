//! Holds on automatic rollbacks (`rollbackd pause`/`resume`) and drills
//! (`rollbackd drill` marks its rehearsal and the incidents it caused).

use serde::Serialize;
use sqlx::Row;

use super::incidents::{INCIDENT_COLUMNS, IncidentRow};
use super::shared::ship::Item;
use super::{Incident, Store, StoreError, q};
use crate::model::Millis;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Pause {
    pub id: i64,
    pub at_ms: Millis,
    pub until_ms: Millis,
    pub reason: String,
}

impl Store {
    // --- pauses ----------------------------------------------------------

    pub async fn pause(
        &self,
        at_ms: Millis,
        until_ms: Millis,
        reason: &str,
    ) -> Result<i64, StoreError> {
        self.fence("recording a pause")?;
        let id = sqlx::query_scalar(
            "INSERT INTO pauses (at_ms, until_ms, reason) VALUES (?, ?, ?) RETURNING id",
        )
        .bind(at_ms)
        .bind(until_ms)
        .bind(reason)
        .fetch_one(self.db()?)
        .await
        .map_err(q("recording a pause"))?;
        self.mirror_item(Item::Pause(Pause {
            id,
            at_ms,
            until_ms,
            reason: reason.to_owned(),
        }));
        Ok(id)
    }

    /// End every hold now; returns how many were in force at `at_ms`.
    /// Holds the wall clock says have run out are ended too: a daemon
    /// keeps a hold for its length on the monotonic clock
    /// (`Guards::learn_pause`), so after the wall clock stepped forward it
    /// may still be keeping one of them.
    pub async fn resume(&self, at_ms: Millis) -> Result<u64, StoreError> {
        self.fence("resuming")?;
        let ends: Vec<Millis> = sqlx::query_scalar(
            "UPDATE pauses SET resumed_ms = ? WHERE resumed_ms IS NULL RETURNING until_ms",
        )
        .bind(at_ms)
        .fetch_all(self.db()?)
        .await
        .map_err(q("resuming"))?;
        self.mirror_item(Item::Resume { at_ms });
        Ok(ends.iter().filter(|&&until| until > at_ms).count() as u64)
    }

    /// The hold in force at `now`, if any (the one that lasts longest).
    pub async fn active_pause(&self, now_ms: Millis) -> Result<Option<Pause>, StoreError> {
        let read = self.active_pause_read(now_ms).await;
        let pause = self.remembered(read, |l| &mut l.pause)?;
        // A remembered pause may have run out since.
        Ok(pause.filter(|p| p.until_ms > now_ms))
    }

    async fn active_pause_read(&self, now_ms: Millis) -> Result<Option<Pause>, StoreError> {
        if let Some(db) = self.reads_shared() {
            return db.own_active_pause(now_ms).await;
        }
        let row = sqlx::query(
            "SELECT id, at_ms, until_ms, reason FROM pauses WHERE resumed_ms IS NULL AND until_ms > ? \
             ORDER BY until_ms DESC LIMIT 1",
        )
        .bind(now_ms)
        .fetch_optional(self.db()?)
        .await
        .map_err(q("reading pauses"))?;
        Ok(row.map(|r| Pause {
            id: r.get("id"),
            at_ms: r.get("at_ms"),
            until_ms: r.get("until_ms"),
            reason: r.get("reason"),
        }))
    }
}

// --- drills (issue 16): `rollbackd drill` marks its rehearsal here ------

/// One `rollbackd drill`, as recorded.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Drill {
    pub id: i64,
    pub started_ms: Millis,
    pub deadline_ms: Millis,
    pub ended_ms: Option<Millis>,
    pub expect: String,
    pub notify: bool,
}

/// How long after a drill ends its aftermath (a recovery, a rollback that
/// closes late) still counts as the drill's.
pub const DRILL_AFTERMATH_MS: Millis = 120_000;

impl Store {
    /// Record the start of a drill: from now until it ends (or until
    /// `deadline_ms`, if its process dies first) notifications are withheld
    /// unless `notify`.
    pub async fn start_drill(
        &self,
        started_ms: Millis,
        deadline_ms: Millis,
        inject: &str,
        expect: &str,
        notify: bool,
    ) -> Result<i64, StoreError> {
        let id = sqlx::query_scalar(
            "INSERT INTO drills (started_ms, deadline_ms, inject, expect, notify) VALUES (?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(started_ms)
        .bind(deadline_ms)
        .bind(inject)
        .bind(expect)
        .bind(i64::from(notify))
        .fetch_one(self.db()?)
        .await
        .map_err(q("recording a drill"))?;
        self.mirror_item(Item::Drill(id));
        Ok(id)
    }

    /// Drill `id` as recorded (what the mirror ships).
    pub(super) async fn drill(&self, id: i64) -> Result<Option<Drill>, StoreError> {
        let row: Option<DrillRow> = sqlx::query_as(
            "SELECT id, started_ms, deadline_ms, ended_ms, expect, notify FROM drills WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(self.db()?)
        .await
        .map_err(q("reading a drill"))?;
        Ok(row.map(Drill::from))
    }

    /// Record how a drill ended, and mark the incidents opened while it ran
    /// as the drill's.
    pub async fn end_drill(
        &self,
        id: i64,
        ended_ms: Millis,
        observed: &str,
        matched: bool,
    ) -> Result<(), StoreError> {
        let mut tx = self.db()?.begin().await.map_err(q("ending a drill"))?;
        sqlx::query("UPDATE drills SET ended_ms = ?, observed = ?, matched = ? WHERE id = ?")
            .bind(ended_ms)
            .bind(observed)
            .bind(i64::from(matched))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(q("ending a drill"))?;
        sqlx::query(
            "UPDATE incidents SET drill_id = ? WHERE drill_id IS NULL \
             AND opened_ms >= (SELECT started_ms FROM drills WHERE id = ?) AND opened_ms <= ?",
        )
        .bind(id)
        .bind(id)
        .bind(ended_ms)
        .execute(&mut *tx)
        .await
        .map_err(q("marking a drill's incidents"))?;
        tx.commit().await.map_err(q("ending a drill"))?;
        self.mirror_item(Item::Drill(id));
        Ok(())
    }

    /// Mark one incident as a drill's (the drill does so as soon as it sees
    /// the incident open).
    pub async fn mark_drill_incident(&self, drill: i64, incident: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE incidents SET drill_id = ? WHERE id = ? AND drill_id IS NULL")
            .bind(drill)
            .bind(incident)
            .execute(self.db()?)
            .await
            .map_err(q("marking a drill's incident"))?;
        Ok(())
    }

    /// The drill a notice belongs to: one running at `at_ms` (or ended
    /// less than [`DRILL_AFTERMATH_MS`] before it), or the drill of
    /// `incident`.
    pub async fn drill_at(
        &self,
        at_ms: Millis,
        incident: Option<i64>,
    ) -> Result<Option<Drill>, StoreError> {
        let row: Option<DrillRow> = sqlx::query_as(
            "SELECT id, started_ms, deadline_ms, ended_ms, expect, notify FROM drills \
             WHERE (started_ms <= ?1 AND ?1 <= COALESCE(ended_ms, deadline_ms) + ?2) \
             OR id = (SELECT drill_id FROM incidents WHERE id = ?3) \
             ORDER BY id DESC LIMIT 1",
        )
        .bind(at_ms)
        .bind(DRILL_AFTERMATH_MS)
        .bind(incident)
        .fetch_optional(self.db()?)
        .await
        .map_err(q("reading drills"))?;
        Ok(row.map(Drill::from))
    }

    /// Drills that overlap `[from, until)`, oldest first: their samples are
    /// not the service's availability.
    pub async fn drills_between(
        &self,
        from_ms: Millis,
        until_ms: Millis,
    ) -> Result<Vec<Drill>, StoreError> {
        if let Some(db) = self.reads_shared() {
            return db.own_drills_between(from_ms, until_ms).await;
        }
        let rows: Vec<DrillRow> = sqlx::query_as(
            "SELECT id, started_ms, deadline_ms, ended_ms, expect, notify FROM drills \
             WHERE started_ms < ? AND COALESCE(ended_ms, deadline_ms) >= ? ORDER BY id",
        )
        .bind(until_ms)
        .bind(from_ms)
        .fetch_all(self.db()?)
        .await
        .map_err(q("reading drills"))?;
        Ok(rows.into_iter().map(Drill::from).collect())
    }

    /// Incidents opened at or after `since_ms`, oldest first, with the
    /// drill each belongs to.
    pub async fn incidents_since(
        &self,
        since_ms: Millis,
    ) -> Result<Vec<(Incident, Option<i64>)>, StoreError> {
        let rows: Vec<IncidentRow> = sqlx::query_as(&format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE opened_ms >= ? ORDER BY id"
        ))
        .bind(since_ms)
        .fetch_all(self.db()?)
        .await
        .map_err(q("listing incidents"))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let incident = Incident::try_from(row)?;
            let drill: Option<i64> =
                sqlx::query_scalar("SELECT drill_id FROM incidents WHERE id = ?")
                    .bind(incident.id)
                    .fetch_one(self.db()?)
                    .await
                    .map_err(q("listing incidents"))?;
            out.push((incident, drill));
        }
        Ok(out)
    }
}

/// A drill's row as both backends return it.
#[derive(sqlx::FromRow)]
pub(super) struct DrillRow {
    id: i64,
    started_ms: i64,
    deadline_ms: i64,
    ended_ms: Option<i64>,
    expect: String,
    notify: bool,
}

impl From<DrillRow> for Drill {
    fn from(r: DrillRow) -> Drill {
        Drill {
            id: r.id,
            started_ms: r.started_ms,
            deadline_ms: r.deadline_ms,
            ended_ms: r.ended_ms,
            expect: r.expect,
            notify: r.notify,
        }
    }
}
