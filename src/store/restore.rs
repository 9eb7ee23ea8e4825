//! A journal started anew takes this host's history back from the shared
//! database (SPEC section 7): a host whose disk was lost or rebuilt knows
//! again what it deployed (the active version, where to roll back to), its
//! incidents, holds and drills, and its new rows are numbered after the
//! old ones, so the mirror never writes a new row over an old one of the
//! same id. Samples are not taken back: the matrix's windows start afresh,
//! as after any start.

use std::time::Duration;

use super::shared::{History, Shared};
use super::{BUSY_TIMEOUT, Store, StoreError, q};

/// What was taken back, by table.
#[derive(Debug, Default, PartialEq)]
pub struct Restored {
    pub deployments: usize,
    pub incidents: usize,
    pub events: usize,
    pub pauses: usize,
    pub verdicts: usize,
    pub drills: usize,
}

impl std::fmt::Display for Restored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} deployments, {} incidents ({} timeline events), {} pauses, {} verdicts, {} drills",
            self.deployments, self.incidents, self.events, self.pauses, self.verdicts, self.drills
        )
    }
}

impl Store {
    /// When this journal holds nothing yet (no deployment, incident, pause,
    /// verdict or drill), write into it what `db` holds of this host and
    /// service, each row with its id, in one transaction, and nothing into
    /// the mirror (those rows are there already). `None` when the journal
    /// is not new or the shared database has nothing of this host. The
    /// shared database gets `within` to answer (its schema is migrated
    /// first); a daemon starting while it is away starts with the new
    /// journal, and says so.
    pub async fn restore_from(
        &self,
        db: &Shared,
        within: Duration,
    ) -> Result<Option<Restored>, StoreError> {
        if !self.journal_is_new().await? {
            return Ok(None);
        }
        let history = tokio::time::timeout(within, async {
            db.migrate().await?;
            db.own_history().await
        })
        .await
        .map_err(|_| StoreError::Shared {
            doing: "reading this host's history",
            why: format!("no answer within {}", humantime::format_duration(within)),
        })??;
        if history.is_empty() {
            return Ok(None);
        }
        self.write_history(&history).await.map(Some)
    }

    async fn journal_is_new(&self) -> Result<bool, StoreError> {
        sqlx::query_scalar(
            "SELECT NOT EXISTS (SELECT 1 FROM deployments) AND NOT EXISTS (SELECT 1 FROM incidents) \
             AND NOT EXISTS (SELECT 1 FROM pauses) AND NOT EXISTS (SELECT 1 FROM verdicts) \
             AND NOT EXISTS (SELECT 1 FROM drills)",
        )
        .fetch_one(self.db()?)
        .await
        .map_err(q("reading whether the journal is new"))
    }

    async fn write_history(&self, h: &History) -> Result<Restored, StoreError> {
        const DOING: &str = "taking this host's history back";
        let mut w = self.writing(DOING, BUSY_TIMEOUT).await?;
        let mut tx = w.begin(DOING).await?;
        for d in &h.deployments {
            // Counted as reported: the post-deploy report of a deployment
            // from before the journal was lost is not sent again.
            sqlx::query(
                "INSERT INTO deployments (id, color, version, at_ms, source, quarantined, reported_ms) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(d.id)
            .bind(d.color.as_str())
            .bind(&d.version)
            .bind(d.at_ms)
            .bind(&d.source)
            .bind(d.quarantined)
            .bind(d.at_ms)
            .execute(&mut *tx)
            .await
            .map_err(q(DOING))?;
        }
        for d in &h.drills {
            sqlx::query(
                "INSERT INTO drills (id, started_ms, deadline_ms, ended_ms, inject, expect, notify) \
                 VALUES (?, ?, ?, ?, '[]', ?, ?)",
            )
            .bind(d.id)
            .bind(d.started_ms)
            .bind(d.deadline_ms)
            .bind(d.ended_ms)
            .bind(&d.expect)
            .bind(d.notify)
            .execute(&mut *tx)
            .await
            .map_err(q(DOING))?;
        }
        for i in &h.incidents {
            sqlx::query(
                "INSERT INTO incidents (id, opened_ms, closed_ms, trigger_kind, severity, rule, reason, \
                 evidence, from_color, to_color, from_version, to_version, state, outcome, downtime_ms, \
                 in_flight, holder) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(i.id)
            .bind(i.opened_ms)
            .bind(i.closed_ms)
            .bind(i.trigger_kind.as_str())
            .bind(i.severity.as_str())
            .bind(&i.rule)
            .bind(&i.reason)
            .bind(&i.evidence)
            .bind(i.from_color.map(|c| c.as_str()))
            .bind(i.to_color.map(|c| c.as_str()))
            .bind(&i.from_version)
            .bind(&i.to_version)
            .bind(i.state.as_str())
            .bind(&i.outcome)
            .bind(i.downtime_ms)
            .bind(i.in_flight.then_some(1_i64))
            .bind(&i.holder)
            .execute(&mut *tx)
            .await
            .map_err(q(DOING))?;
        }
        for (id, incident, e) in &h.events {
            sqlx::query(
                "INSERT INTO incident_events (id, incident_id, at_ms, state, message) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(id)
            .bind(incident)
            .bind(e.at_ms)
            .bind(e.state.as_str())
            .bind(&e.message)
            .execute(&mut *tx)
            .await
            .map_err(q(DOING))?;
        }
        for (p, resumed) in &h.pauses {
            sqlx::query(
                "INSERT INTO pauses (id, at_ms, until_ms, reason, resumed_ms) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(p.id)
            .bind(p.at_ms)
            .bind(p.until_ms)
            .bind(&p.reason)
            .bind(resumed)
            .execute(&mut *tx)
            .await
            .map_err(q(DOING))?;
        }
        for (id, v) in &h.verdicts {
            super::verdicts::insert_verdict_row(&mut tx, Some(*id), v)
                .await
                .map_err(q(DOING))?;
        }
        tx.commit().await.map_err(q(DOING))?;
        w.done().await;
        self.remember_guards().await;
        Ok(Restored {
            deployments: h.deployments.len(),
            incidents: h.incidents.len(),
            events: h.events.len(),
            pauses: h.pauses.len(),
            verdicts: h.verdicts.len(),
            drills: h.drills.len(),
        })
    }
}
