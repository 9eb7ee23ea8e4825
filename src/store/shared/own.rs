//! This host's own rows in the shared database: the rest of its journal
//! (verdicts, drills) as the mirror writes it, and the read verbs of a
//! command with `[daemon] database` (`Store::open_shared_reads`): each is
//! the journal's verb asked of the rows this host wrote for this service,
//! returning the same types, so `status`, `incidents`, `incident show`,
//! `samples` and `report` answer alike from either backend.

use super::timeline::INCIDENT_COLUMNS;
use super::{Shared, pg_text, pq};
use crate::model::{Color, IncidentState, Millis, Sample, Trigger};
use crate::store::deployments::DeploymentRow;
use crate::store::incidents::IncidentRow;
use crate::store::pauses::DrillRow;
use crate::store::verdicts::{VERDICT_COLUMNS, VerdictRow};
use crate::store::{Deployment, Drill, Incident, IncidentEvent, Pause, StoreError, StoredVerdict};

/// A deployment's columns as the journal names them.
const DEPLOYMENT_COLUMNS: &str = "id, color, version, at_ms, source, quarantined";

impl Shared {
    // --- what the mirror writes --------------------------------------------

    /// One verdict of this host's journal, keyed by its id there (written
    /// over what an earlier journal of this host gave the same id, as
    /// incidents are: the journal says).
    pub async fn put_verdict(&self, id: i64, v: &StoredVerdict) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO verdicts (host, service, id, at_ms, rule, severity, color, state, n, \
             value, threshold, window_ms, baseline, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
             ON CONFLICT (service, host, id) DO UPDATE SET at_ms = $4, rule = $5, \
             severity = $6, color = $7, state = $8, n = $9, value = $10, threshold = $11, \
             window_ms = $12, baseline = $13, detail = $14",
        )
        .bind(&self.host)
        .bind(&self.service)
        .bind(id)
        .bind(v.at_ms)
        .bind(pg_text(&v.rule))
        .bind(v.severity.as_str())
        .bind(v.color.as_str())
        .bind(v.state.as_str())
        .bind(v.n)
        .bind(v.value)
        .bind(v.threshold)
        .bind(v.window_ms)
        .bind(v.baseline)
        .bind(pg_text(&v.detail))
        .execute(&self.pool)
        .await
        .map_err(pq("writing a verdict"))?;
        Ok(())
    }

    /// One drill of this host's journal, as it stands (started or ended).
    pub async fn put_drill(&self, d: &Drill) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO drills (host, service, id, started_ms, deadline_ms, ended_ms, expect, \
             notify) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (service, host, id) DO UPDATE SET started_ms = $4, deadline_ms = $5, \
             ended_ms = $6, expect = $7, notify = $8",
        )
        .bind(&self.host)
        .bind(&self.service)
        .bind(d.id)
        .bind(d.started_ms)
        .bind(d.deadline_ms)
        .bind(d.ended_ms)
        .bind(pg_text(&d.expect))
        .bind(d.notify)
        .execute(&self.pool)
        .await
        .map_err(pq("writing a drill"))?;
        Ok(())
    }

    // --- the read verbs, on this host's rows --------------------------------

    pub async fn own_incidents(&self) -> Result<Vec<Incident>, StoreError> {
        let rows: Vec<IncidentRow> = sqlx::query_as(&format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE service = $1 AND host = $2 ORDER BY id"
        ))
        .bind(&self.service)
        .bind(&self.host)
        .fetch_all(&self.pool)
        .await
        .map_err(pq("listing incidents"))?;
        rows.into_iter().map(Incident::try_from).collect()
    }

    pub async fn own_incident(&self, id: i64) -> Result<Incident, StoreError> {
        match self.incident_of(&self.host, id).await? {
            Some((incident, _)) => Ok(incident),
            None => Err(StoreError::NoIncident(id)),
        }
    }

    pub async fn own_incident_events(&self, id: i64) -> Result<Vec<IncidentEvent>, StoreError> {
        self.events_of(&self.host, id).await
    }

    /// The rollback in flight on this host, if its journal had one.
    pub async fn own_in_flight(&self) -> Result<Option<Incident>, StoreError> {
        let row: Option<IncidentRow> = sqlx::query_as(&format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE service = $1 AND host = $2 \
             AND in_flight ORDER BY id DESC LIMIT 1"
        ))
        .bind(&self.service)
        .bind(&self.host)
        .fetch_optional(&self.pool)
        .await
        .map_err(pq("reading the in-flight rollback"))?;
        row.map(Incident::try_from).transpose()
    }

    /// The latest automatic rollback whose switch command ran (or, with
    /// `dry_run`, would have run): the journal's `cooldown_start_ms`.
    pub async fn own_cooldown_start(&self, dry_run: bool) -> Result<Option<Millis>, StoreError> {
        sqlx::query_scalar(
            "SELECT MAX(i.opened_ms) FROM incidents i WHERE i.service = $1 AND i.host = $2 \
             AND i.trigger_kind = $3 AND (EXISTS (SELECT 1 FROM incident_events e \
             WHERE e.service = i.service AND e.host = i.host AND e.incident_id = i.id \
             AND e.state = $4) OR ($5 AND i.state = $6))",
        )
        .bind(&self.service)
        .bind(&self.host)
        .bind(Trigger::Automatic.as_str())
        .bind(IncidentState::Switching.as_str())
        .bind(dry_run)
        .bind(IncidentState::DryRun.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(pq("reading the last rollback"))
    }

    /// The journal's `unresolved_escalation`: the last escalated incident,
    /// unless this host recorded a deployment after it closed.
    pub async fn own_unresolved_escalation(&self) -> Result<Option<Incident>, StoreError> {
        let row: Option<IncidentRow> = sqlx::query_as(&format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents i WHERE i.service = $1 AND i.host = $2 \
             AND i.state = $3 AND NOT EXISTS (SELECT 1 FROM deployments d \
             WHERE d.service = i.service AND d.host = i.host AND d.at_ms > i.closed_ms) \
             ORDER BY i.id DESC LIMIT 1"
        ))
        .bind(&self.service)
        .bind(&self.host)
        .bind(IncidentState::Escalated.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(pq("reading escalations"))?;
        row.map(Incident::try_from).transpose()
    }

    /// This host's deployments of this service, oldest first; of one color
    /// and before deployment `before_id` when given, newest first, at most
    /// `limit`.
    pub async fn own_deployments(
        &self,
        color: Option<Color>,
        before_id: Option<i64>,
        limit: Option<i64>,
    ) -> Result<Vec<Deployment>, StoreError> {
        let order = if limit.is_some() { "DESC" } else { "ASC" };
        let rows: Vec<DeploymentRow> = sqlx::query_as(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE service = $1 AND host = $2 \
             AND ($3::text IS NULL OR color = $3) AND ($4::bigint IS NULL OR id < $4) \
             ORDER BY id {order} LIMIT $5"
        ))
        .bind(&self.service)
        .bind(&self.host)
        .bind(color.map(|c| c.as_str()))
        .bind(before_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(pq("listing deployments"))?;
        Ok(rows
            .into_iter()
            .map(DeploymentRow::into_deployment)
            .collect())
    }

    /// The hold in force at `now_ms` that lasts longest (the journal's
    /// `active_pause`).
    pub async fn own_active_pause(&self, now_ms: Millis) -> Result<Option<Pause>, StoreError> {
        let row: Option<(i64, i64, i64, String)> = sqlx::query_as(
            "SELECT id, at_ms, until_ms, reason FROM pauses WHERE service = $1 AND host = $2 \
             AND resumed_ms IS NULL AND until_ms > $3 ORDER BY until_ms DESC LIMIT 1",
        )
        .bind(&self.service)
        .bind(&self.host)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(pq("reading pauses"))?;
        Ok(row.map(|(id, at_ms, until_ms, reason)| Pause {
            id,
            at_ms,
            until_ms,
            reason,
        }))
    }

    /// The latest verdict of every (rule, color).
    pub async fn own_latest_verdicts(&self) -> Result<Vec<StoredVerdict>, StoreError> {
        let rows: Vec<VerdictRow> = sqlx::query_as(&format!(
            "SELECT DISTINCT ON (rule, color) {VERDICT_COLUMNS} FROM verdicts \
             WHERE service = $1 AND host = $2 ORDER BY rule, color, id DESC"
        ))
        .bind(&self.service)
        .bind(&self.host)
        .fetch_all(&self.pool)
        .await
        .map_err(pq("reading verdicts"))?;
        rows.into_iter().map(StoredVerdict::try_from).collect()
    }

    /// Verdicts in `[from, until)`, oldest first.
    pub async fn own_verdicts_between(
        &self,
        from_ms: Millis,
        until_ms: Millis,
    ) -> Result<Vec<StoredVerdict>, StoreError> {
        let rows: Vec<VerdictRow> = sqlx::query_as(&format!(
            "SELECT {VERDICT_COLUMNS} FROM verdicts WHERE service = $1 AND host = $2 \
             AND at_ms >= $3 AND at_ms < $4 ORDER BY id"
        ))
        .bind(&self.service)
        .bind(&self.host)
        .bind(from_ms)
        .bind(until_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(pq("reading verdicts"))?;
        rows.into_iter().map(StoredVerdict::try_from).collect()
    }

    /// Drills that overlap `[from, until)`, oldest first.
    pub async fn own_drills_between(
        &self,
        from_ms: Millis,
        until_ms: Millis,
    ) -> Result<Vec<Drill>, StoreError> {
        let rows: Vec<DrillRow> = sqlx::query_as(
            "SELECT id, started_ms, deadline_ms, ended_ms, expect, notify FROM drills \
             WHERE service = $1 AND host = $2 AND started_ms < $3 \
             AND COALESCE(ended_ms, deadline_ms) >= $4 ORDER BY id",
        )
        .bind(&self.service)
        .bind(&self.host)
        .bind(until_ms)
        .bind(from_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(pq("reading drills"))?;
        Ok(rows.into_iter().map(Drill::from).collect())
    }

    /// This host's samples in `[from, until)`, of one probe and color when
    /// given, oldest first.
    pub async fn own_samples(
        &self,
        probe: Option<&str>,
        color: Option<Color>,
        from_ms: Millis,
        until_ms: Millis,
    ) -> Result<Vec<Sample>, StoreError> {
        Ok(self
            .samples_where(Some(&self.host), probe, color, from_ms, until_ms, i64::MAX)
            .await?
            .into_iter()
            .map(|s| s.sample)
            .collect())
    }

    /// Up to `limit` of this host's samples after `after` (at_ms, probe,
    /// color; a shared probe's color is ""), in that order: one page of
    /// `replay`'s stream.
    pub async fn own_sample_page(
        &self,
        after: &(Millis, String, String),
        limit: i64,
    ) -> Result<Vec<Sample>, StoreError> {
        let rows: Vec<super::SampleRow> = sqlx::query_as(&format!(
            "SELECT {} FROM samples WHERE service = $1 AND host = $2 \
             AND (at_ms, probe, COALESCE(color, '')) > ($3, $4, $5) \
             ORDER BY at_ms, probe, COALESCE(color, '') LIMIT $6",
            super::SAMPLE_COLUMNS
        ))
        .bind(&self.service)
        .bind(&self.host)
        .bind(after.0)
        .bind(&after.1)
        .bind(&after.2)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(pq("reading samples"))?;
        rows.into_iter()
            .map(|r| super::host_sample(r).map(|s| s.sample))
            .collect()
    }

    /// Whether this database's schema has every table the read verbs ask
    /// (a database not yet migrated to this version answers `false`).
    pub async fn holds_whole_journals(&self) -> Result<bool, StoreError> {
        sqlx::query_scalar(
            "SELECT to_regclass('drills') IS NOT NULL \
             AND EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('samples') \
             AND attname = 'deployment' AND NOT attisdropped)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(pq("reading the shared schema"))
    }
}

impl Shared {
    /// The newest id this host has in each of `store::reader::MARKED`
    /// (0: none).
    pub async fn own_marks(&self) -> Result<Vec<i64>, StoreError> {
        let mut out = Vec::with_capacity(crate::store::reader::MARKED.len());
        for table in crate::store::reader::MARKED {
            out.push(
                sqlx::query_scalar(&format!(
                    "SELECT COALESCE(MAX(id), 0) FROM {table} WHERE service = $1 AND host = $2"
                ))
                .bind(&self.service)
                .bind(&self.host)
                .fetch_one(&self.pool)
                .await
                .map_err(pq("reading this host's newest ids"))?,
            );
        }
        Ok(out)
    }

    /// What this host's last heartbeat said its journal holds that this
    /// database does not: rows waiting in its mirror, and rows it dropped
    /// or set aside (none when it never beat).
    pub async fn own_gap(&self) -> Result<(i64, i64), StoreError> {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT backlog, dropped FROM hosts WHERE service = $1 AND host = $2")
                .bind(&self.service)
                .bind(&self.host)
                .fetch_optional(&self.pool)
                .await
                .map_err(pq("reading this host's heartbeat"))?;
        Ok(row.unwrap_or((0, 0)))
    }
}

/// This host's rows of this service, for a journal started anew
/// (`Store::restore_from`): each keeps the id its journal gave it.
#[derive(Debug, Default)]
pub struct History {
    pub deployments: Vec<Deployment>,
    pub incidents: Vec<Incident>,
    /// (event id, incident id, event).
    pub events: Vec<(i64, i64, IncidentEvent)>,
    /// (pause, when it was resumed).
    pub pauses: Vec<(Pause, Option<Millis>)>,
    /// The latest verdict of every (rule, color), with its id.
    pub verdicts: Vec<(i64, StoredVerdict)>,
    pub drills: Vec<Drill>,
}

impl History {
    pub fn is_empty(&self) -> bool {
        self.deployments.is_empty()
            && self.incidents.is_empty()
            && self.pauses.is_empty()
            && self.verdicts.is_empty()
            && self.drills.is_empty()
    }
}

impl Shared {
    /// Everything a new journal takes back of this host's history.
    pub async fn own_history(&self) -> Result<History, StoreError> {
        let events: Vec<(i64, i64, i64, String, String)> = sqlx::query_as(
            "SELECT id, incident_id, at_ms, state, message FROM incident_events \
             WHERE service = $1 AND host = $2 ORDER BY id",
        )
        .bind(&self.service)
        .bind(&self.host)
        .fetch_all(&self.pool)
        .await
        .map_err(pq("reading this host's timelines"))?;
        let events = events
            .into_iter()
            .map(|(id, incident, at_ms, state, message)| {
                Ok((
                    id,
                    incident,
                    IncidentEvent {
                        at_ms,
                        state: crate::store::incidents::parsed("a timeline event kind", &state)?,
                        message,
                    },
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let pauses: Vec<(i64, i64, i64, String, Option<i64>)> = sqlx::query_as(
            "SELECT id, at_ms, until_ms, reason, resumed_ms FROM pauses \
             WHERE service = $1 AND host = $2 ORDER BY id",
        )
        .bind(&self.service)
        .bind(&self.host)
        .fetch_all(&self.pool)
        .await
        .map_err(pq("reading this host's pauses"))?;
        #[derive(sqlx::FromRow)]
        struct Numbered {
            id: i64,
            #[sqlx(flatten)]
            row: VerdictRow,
        }
        let verdicts: Vec<Numbered> = sqlx::query_as(&format!(
            "SELECT DISTINCT ON (rule, color) id, {VERDICT_COLUMNS} FROM verdicts \
             WHERE service = $1 AND host = $2 ORDER BY rule, color, id DESC"
        ))
        .bind(&self.service)
        .bind(&self.host)
        .fetch_all(&self.pool)
        .await
        .map_err(pq("reading this host's verdicts"))?;
        Ok(History {
            deployments: self.own_deployments(None, None, None).await?,
            incidents: self.own_incidents().await?,
            events,
            pauses: pauses
                .into_iter()
                .map(|(id, at_ms, until_ms, reason, resumed)| {
                    (
                        Pause {
                            id,
                            at_ms,
                            until_ms,
                            reason,
                        },
                        resumed,
                    )
                })
                .collect(),
            verdicts: verdicts
                .into_iter()
                .map(|n| Ok((n.id, StoredVerdict::try_from(n.row)?)))
                .collect::<Result<Vec<_>, StoreError>>()?,
            drills: self.own_drills_between(Millis::MIN, Millis::MAX).await?,
        })
    }
}
