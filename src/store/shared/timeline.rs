//! One incident's whole record in the shared database: the row with its
//! evidence and downtime, its timeline, and the samples around it, so that
//! `incident show N --all-hosts --host H` on any host of the fleet shows
//! what `incident show N` shows on H. The mirror writes it
//! (`ship.rs`, at every change of the incident); commands read it.

use super::{Shared, pg_opt, pg_text, pq};
use crate::model::{Millis, Sample};
use crate::store::incidents::{IncidentRow, parsed};
use crate::store::{Incident, IncidentEvent, StoreError};

/// An incident's columns named as the journal names them, so that one
/// conversion (`IncidentRow`) serves both backends. The switch command's
/// process group stays in the journal: only the host that ran it can
/// signal it.
pub(super) const INCIDENT_COLUMNS: &str = "id, opened_ms, closed_ms, trigger_kind, severity, \
     rule, reason, evidence, from_color, to_color, from_version, to_version, state, outcome, \
     downtime_ms, CASE WHEN in_flight THEN 1::bigint END AS in_flight, holder, \
     NULL::bigint AS switch_pgid";

impl Shared {
    /// Write (or bring up to date) one incident of this host's journal with
    /// its timeline. Events are keyed by their id in the journal: an event
    /// shipped twice is one row. Rows are overwritten with what the journal
    /// says, so a host whose journal started again (its ids from 1) shows
    /// its new incidents, not a mix with the old ones.
    pub async fn put_incident_with_timeline(
        &self,
        i: &Incident,
        events: &[(i64, IncidentEvent)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(pq("writing an incident"))?;
        sqlx::query(
            "INSERT INTO incidents (host, service, id, opened_ms, closed_ms, trigger_kind, \
             severity, rule, reason, from_color, to_color, from_version, to_version, state, \
             outcome, in_flight, evidence, downtime_ms, holder) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
             $17, $18, $19) \
             ON CONFLICT (service, host, id) DO UPDATE SET opened_ms = $4, closed_ms = $5, \
             trigger_kind = $6, severity = $7, rule = $8, reason = $9, from_color = $10, \
             to_color = $11, from_version = $12, to_version = $13, state = $14, outcome = $15, \
             in_flight = $16, evidence = $17, downtime_ms = $18, holder = $19",
        )
        .bind(&self.host)
        .bind(&self.service)
        .bind(i.id)
        .bind(i.opened_ms)
        .bind(i.closed_ms)
        .bind(i.trigger_kind.as_str())
        .bind(i.severity.as_str())
        .bind(pg_opt(&i.rule))
        .bind(pg_text(&i.reason))
        .bind(i.from_color.map(|c| c.as_str()))
        .bind(i.to_color.map(|c| c.as_str()))
        .bind(pg_opt(&i.from_version))
        .bind(pg_opt(&i.to_version))
        .bind(i.state.as_str())
        .bind(pg_opt(&i.outcome))
        .bind(i.in_flight)
        .bind(pg_text(&i.evidence))
        .bind(i.downtime_ms)
        .bind(pg_opt(&i.holder))
        .execute(&mut *tx)
        .await
        .map_err(pq("writing an incident"))?;
        if !events.is_empty() {
            let ids: Vec<i64> = events.iter().map(|(id, _)| *id).collect();
            let at: Vec<i64> = events.iter().map(|(_, e)| e.at_ms).collect();
            let state: Vec<&str> = events.iter().map(|(_, e)| e.state.as_str()).collect();
            let message: Vec<_> = events.iter().map(|(_, e)| pg_text(&e.message)).collect();
            sqlx::query(
                "INSERT INTO incident_events (host, service, incident_id, id, at_ms, state, \
                 message) \
                 SELECT $1, $2, $3, * FROM UNNEST($4::bigint[], $5::bigint[], $6::text[], \
                 $7::text[]) ON CONFLICT (service, host, id) DO UPDATE SET \
                 incident_id = EXCLUDED.incident_id, at_ms = EXCLUDED.at_ms, \
                 state = EXCLUDED.state, message = EXCLUDED.message",
            )
            .bind(&self.host)
            .bind(&self.service)
            .bind(i.id)
            .bind(ids)
            .bind(at)
            .bind(state)
            .bind(message)
            .execute(&mut *tx)
            .await
            .map_err(pq("writing an incident's timeline"))?;
        }
        tx.commit().await.map_err(pq("writing an incident"))?;
        Ok(())
    }

    /// The hosts of this service whose journal has an incident `id`.
    pub async fn hosts_with_incident(&self, id: i64) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT host FROM incidents WHERE service = $1 AND id = $2 ORDER BY host",
        )
        .bind(&self.service)
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(pq("reading incidents"))
    }

    /// Incident `id` of `host` (this service), with its timeline; `None`
    /// when the shared database has no such incident.
    pub async fn incident_of(
        &self,
        host: &str,
        id: i64,
    ) -> Result<Option<(Incident, Vec<IncidentEvent>)>, StoreError> {
        // Named as the journal names them, so one conversion serves both.
        let row: Option<IncidentRow> = sqlx::query_as(&format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE service = $1 AND host = $2 AND id = $3"
        ))
        .bind(&self.service)
        .bind(host)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(pq("reading an incident"))?;
        let Some(row) = row else { return Ok(None) };
        let incident = Incident::try_from(row)?;
        let events = self.events_of(host, id).await?;
        Ok(Some((incident, events)))
    }

    /// The timeline of `host`'s incident `id`, oldest first (none when the
    /// shared database has no such incident, or no timeline of it).
    pub async fn events_of(&self, host: &str, id: i64) -> Result<Vec<IncidentEvent>, StoreError> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT at_ms, state, message FROM incident_events \
             WHERE service = $1 AND host = $2 AND incident_id = $3 ORDER BY at_ms, id",
        )
        .bind(&self.service)
        .bind(host)
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(pq("reading an incident's timeline"))?;
        rows.into_iter()
            .map(|(at_ms, state, message)| {
                Ok(IncidentEvent {
                    at_ms,
                    state: parsed("a timeline event kind", &state)?,
                    message,
                })
            })
            .collect()
    }

    /// `host`'s samples of this service in `[from, until)`, oldest first
    /// (an incident's chart).
    pub async fn samples_of_host_between(
        &self,
        host: &str,
        from_ms: Millis,
        until_ms: Millis,
    ) -> Result<Vec<Sample>, StoreError> {
        Ok(self
            .samples_where(
                Some(host),
                None,
                None,
                from_ms,
                until_ms,
                super::ALL_HOSTS_SAMPLES,
            )
            .await?
            .into_iter()
            .map(|s| s.sample)
            .collect())
    }
}
