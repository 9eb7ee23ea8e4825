//! Deployments: what was deployed on which color and when, quarantines,
//! and the post-deploy report's claim.

use std::time::Duration;

use serde::Serialize;
use sqlx::FromRow;

use super::shared::ship::Item;
use super::{BUSY_TIMEOUT, Store, StoreError, q};
use crate::model::{Color, Millis};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Deployment {
    pub id: i64,
    pub color: Color,
    pub version: String,
    pub at_ms: Millis,
    pub source: String,
    pub quarantined: bool,
}

impl From<&Deployment> for crate::matrix::Cutover {
    /// A deployment as baseline selection sees it.
    fn from(d: &Deployment) -> Self {
        crate::matrix::Cutover {
            id: d.id,
            color: d.color,
            at_ms: d.at_ms,
        }
    }
}

/// A deployment's row as both backends return it.
#[derive(FromRow)]
pub(super) struct DeploymentRow {
    id: i64,
    color: String,
    version: String,
    at_ms: i64,
    source: String,
    quarantined: bool,
}

impl DeploymentRow {
    pub(super) fn into_deployment(self) -> Deployment {
        Deployment {
            id: self.id,
            // The CHECK constraint in the schema admits only the two colors.
            color: self.color.parse().unwrap_or(Color::Blue),
            version: self.version,
            at_ms: self.at_ms,
            source: self.source,
            quarantined: self.quarantined,
        }
    }
}

impl Store {
    // --- deployments -----------------------------------------------------

    pub async fn record_deployment(
        &self,
        color: Color,
        version: &str,
        source: &str,
        at_ms: Millis,
    ) -> Result<Deployment, StoreError> {
        self.record_deployment_with(color, version, source, at_ms, BUSY_TIMEOUT)
            .await
    }

    pub(super) async fn record_deployment_with(
        &self,
        color: Color,
        version: &str,
        source: &str,
        at_ms: Millis,
        busy: Duration,
    ) -> Result<Deployment, StoreError> {
        const DOING: &str = "recording a deployment";
        let mut w = self.writing(DOING, busy).await?;
        let mut tx = w.begin(DOING).await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO deployments (color, version, at_ms, source) VALUES (?, ?, ?, ?) RETURNING id",
        )
        .bind(color.as_str())
        .bind(version)
        .bind(at_ms)
        .bind(source)
        .fetch_one(&mut *tx)
        .await
        .map_err(q(DOING))?;
        tx.commit().await.map_err(q(DOING))?;
        w.done().await;
        self.mirror_item(Item::Deployment(id));
        Ok(Deployment {
            id,
            color,
            version: version.to_owned(),
            at_ms,
            source: source.to_owned(),
            quarantined: false,
        })
    }

    /// The most recent deployment: the active color when there is no
    /// `[active] file`.
    pub async fn latest_deployment(&self) -> Result<Option<Deployment>, StoreError> {
        match self.latest_deployment_read().await {
            Err(StoreError::Unwritable(why)) => match &self.last().deployments {
                Some(all) => Ok(all.last().cloned()),
                None => Err(StoreError::Unwritable(why)),
            },
            r => r,
        }
    }

    async fn latest_deployment_read(&self) -> Result<Option<Deployment>, StoreError> {
        if let Some(db) = self.reads_shared() {
            return Ok(db.own_deployments(None, None, Some(1)).await?.pop());
        }
        let row: Option<DeploymentRow> = sqlx::query_as(
            "SELECT id, color, version, at_ms, source, quarantined FROM deployments ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(self.db()?)
        .await
        .map_err(q("reading the latest deployment"))?;
        Ok(row.map(DeploymentRow::into_deployment))
    }

    /// The latest deployment of `color` before deployment `before_id`.
    pub async fn previous_deployment_of(
        &self,
        color: Color,
        before_id: i64,
    ) -> Result<Option<Deployment>, StoreError> {
        match self.previous_deployment_read(color, before_id).await {
            Err(StoreError::Unwritable(why)) => match &self.last().deployments {
                Some(all) => Ok(all
                    .iter()
                    .rev()
                    .find(|d| d.color == color && d.id < before_id)
                    .cloned()),
                None => Err(StoreError::Unwritable(why)),
            },
            r => r,
        }
    }

    async fn previous_deployment_read(
        &self,
        color: Color,
        before_id: i64,
    ) -> Result<Option<Deployment>, StoreError> {
        if let Some(db) = self.reads_shared() {
            return Ok(db
                .own_deployments(Some(color), Some(before_id), Some(1))
                .await?
                .pop());
        }
        let row: Option<DeploymentRow> = sqlx::query_as(
            "SELECT id, color, version, at_ms, source, quarantined FROM deployments \
             WHERE color = ? AND id < ? ORDER BY id DESC LIMIT 1",
        )
        .bind(color.as_str())
        .bind(before_id)
        .fetch_optional(self.db()?)
        .await
        .map_err(q("reading the previous deployment"))?;
        Ok(row.map(DeploymentRow::into_deployment))
    }

    pub async fn deployments(&self) -> Result<Vec<Deployment>, StoreError> {
        let read = self.deployments_read().await;
        self.remembered(read, |l| &mut l.deployments)
    }

    async fn deployments_read(&self) -> Result<Vec<Deployment>, StoreError> {
        if let Some(db) = self.reads_shared() {
            return db.own_deployments(None, None, None).await;
        }
        let rows: Vec<DeploymentRow> = sqlx::query_as(
            "SELECT id, color, version, at_ms, source, quarantined FROM deployments ORDER BY id",
        )
        .fetch_all(self.db()?)
        .await
        .map_err(q("listing deployments"))?;
        Ok(rows
            .into_iter()
            .map(DeploymentRow::into_deployment)
            .collect())
    }

    /// Claim the post-deploy report of a deployment: true for exactly one
    /// caller, the one that should send it.
    pub async fn claim_report(&self, deployment: i64, at_ms: Millis) -> Result<bool, StoreError> {
        self.fence("claiming a post-deploy report")?;
        let done = sqlx::query(
            "UPDATE deployments SET reported_ms = ? WHERE id = ? AND reported_ms IS NULL",
        )
        .bind(at_ms)
        .bind(deployment)
        .execute(self.db()?)
        .await
        .map_err(q("claiming a post-deploy report"))?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn report_sent(&self, deployment: i64) -> Result<bool, StoreError> {
        let at: Option<Option<i64>> =
            sqlx::query_scalar("SELECT reported_ms FROM deployments WHERE id = ?")
                .bind(deployment)
                .fetch_optional(self.db()?)
                .await
                .map_err(q("reading a post-deploy report mark"))?;
        Ok(at.flatten().is_some())
    }

    /// Never restore deployment `id` automatically again, nor any earlier
    /// deployment of the same known version. A later `deploy` (a new row)
    /// starts clean.
    pub async fn quarantine_deployment(&self, id: i64, version: &str) -> Result<(), StoreError> {
        self.quarantine_deployment_with(id, version, BUSY_TIMEOUT)
            .await
    }

    pub(super) async fn quarantine_deployment_with(
        &self,
        id: i64,
        version: &str,
        busy: Duration,
    ) -> Result<(), StoreError> {
        const DOING: &str = "quarantining a deployment";
        let mut w = self.writing(DOING, busy).await?;
        let mut tx = w.begin(DOING).await?;
        sqlx::query(
            "UPDATE deployments SET quarantined = 1 WHERE id = ? \
             OR (id < ? AND version = ? AND version NOT IN ('', 'unknown'))",
        )
        .bind(id)
        .bind(id)
        .bind(version)
        .execute(&mut *tx)
        .await
        .map_err(q(DOING))?;
        tx.commit().await.map_err(q(DOING))?;
        w.done().await;
        self.mirror_item(Item::Quarantine {
            version: version.to_owned(),
            at_ms: crate::model::now_ms(),
        });
        self.mirror_item(Item::DeploymentsOf(Some(version.to_owned())));
        Ok(())
    }

    /// Whether `version` is quarantined in this host's journal (some
    /// deployment of it was rolled back and not lifted since).
    pub async fn version_quarantined(&self, version: &str) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM deployments WHERE version = ? AND quarantined = 1",
        )
        .bind(version)
        .fetch_one(self.db()?)
        .await
        .map_err(q("reading a version's quarantine"))?;
        Ok(n > 0)
    }

    /// Lift the local quarantine of `version` (every deployment of it may
    /// be restored again), recorded with who, when and why. Returns how
    /// many deployments were quarantined (0: nothing to lift, nothing
    /// recorded).
    pub async fn lift_quarantine(
        &self,
        version: &str,
        by: &str,
        reason: &str,
        at_ms: Millis,
    ) -> Result<u64, StoreError> {
        const DOING: &str = "lifting a quarantine";
        let mut w = self.writing(DOING, BUSY_TIMEOUT).await?;
        let mut tx = w.begin(DOING).await?;
        let lifted = sqlx::query(
            "UPDATE deployments SET quarantined = 0 WHERE version = ? AND quarantined = 1",
        )
        .bind(version)
        .execute(&mut *tx)
        .await
        .map_err(q(DOING))?
        .rows_affected();
        if lifted > 0 {
            sqlx::query(
                "INSERT INTO quarantine_lifts (version, at_ms, lifted_by, reason, deployments) \
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(version)
            .bind(at_ms)
            .bind(by)
            .bind(reason)
            .bind(i64::try_from(lifted).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await
            .map_err(q(DOING))?;
        }
        tx.commit().await.map_err(q(DOING))?;
        w.done().await;
        if lifted > 0 {
            self.mirror_item(Item::DeploymentsOf(Some(version.to_owned())));
        }
        Ok(lifted)
    }

    /// The most recent deployment of one color.
    pub async fn latest_deployment_of(
        &self,
        color: Color,
    ) -> Result<Option<Deployment>, StoreError> {
        self.previous_deployment_of(color, i64::MAX).await
    }
}
