//! Verdicts as stored: the matrix's judgements, kept for `status`,
//! reports and the bake check. Stored states become `matrix::State`.

use serde::Serialize;

use super::shared::ship::Item;
use super::{BUSY_TIMEOUT, Store, StoreError, q};
use crate::matrix::State;
use crate::model::{Color, Millis, Severity};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoredVerdict {
    pub at_ms: Millis,
    pub rule: String,
    pub severity: Severity,
    pub color: Color,
    pub state: State,
    pub n: i64,
    pub value: Option<f64>,
    pub threshold: f64,
    pub window_ms: i64,
    pub baseline: Option<f64>,
    pub detail: String,
}

impl Store {
    // --- verdicts --------------------------------------------------------

    pub async fn insert_verdict(&self, v: &StoredVerdict) -> Result<(), StoreError> {
        const DOING: &str = "recording a verdict";
        let mut w = self.writing(DOING, BUSY_TIMEOUT).await?;
        let mut tx = w.begin(DOING).await?;
        let id = insert_verdict_row(&mut tx, None, v)
            .await
            .map_err(q(DOING))?;
        tx.commit().await.map_err(q(DOING))?;
        w.done().await;
        self.mirror_item(Item::Verdict(id, Box::new(v.clone())));
        Ok(())
    }

    /// The latest stored verdict of every (rule, color).
    pub async fn latest_verdicts(&self) -> Result<Vec<StoredVerdict>, StoreError> {
        if let Some(db) = self.reads_shared() {
            return db.own_latest_verdicts().await;
        }
        let rows: Vec<VerdictRow> = sqlx::query_as(
            "SELECT v.at_ms, v.rule, v.severity, v.color, v.state, v.n, v.value, v.threshold, v.window_ms, \
             v.baseline, v.detail FROM verdicts v \
             JOIN (SELECT MAX(id) AS id FROM verdicts GROUP BY rule, color) last ON last.id = v.id \
             ORDER BY v.rule, v.color",
        )
        .fetch_all(self.db()?)
        .await
        .map_err(q("reading verdicts"))?;
        rows.into_iter().map(StoredVerdict::try_from).collect()
    }

    /// Stored verdicts in `[from, until)`, oldest first.
    pub async fn verdicts_between(
        &self,
        from_ms: Millis,
        until_ms: Millis,
    ) -> Result<Vec<StoredVerdict>, StoreError> {
        if let Some(db) = self.reads_shared() {
            return db.own_verdicts_between(from_ms, until_ms).await;
        }
        let rows: Vec<VerdictRow> = sqlx::query_as(&format!(
            "SELECT {VERDICT_COLUMNS} FROM verdicts WHERE at_ms >= ? AND at_ms < ? ORDER BY id"
        ))
        .bind(from_ms)
        .bind(until_ms)
        .fetch_all(self.db()?)
        .await
        .map_err(q("reading verdicts"))?;
        rows.into_iter().map(StoredVerdict::try_from).collect()
    }
}

/// Insert one verdict in the journal's transaction, with `id` (a verdict
/// taken back from the shared database: `restore.rs`) or a new one;
/// returns its id.
pub(super) async fn insert_verdict_row(
    tx: &mut sqlx::SqliteConnection,
    id: Option<i64>,
    v: &StoredVerdict,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO verdicts (id, at_ms, rule, severity, color, state, n, value, threshold, window_ms, baseline, detail) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(id)
    .bind(v.at_ms)
    .bind(&v.rule)
    .bind(v.severity.as_str())
    .bind(v.color.as_str())
    .bind(v.state.as_str())
    .bind(v.n)
    .bind(v.value)
    .bind(v.threshold)
    .bind(v.window_ms)
    .bind(v.baseline)
    .bind(&v.detail)
    .fetch_one(tx)
    .await
}

/// A verdict's row as both backends return it.
#[derive(sqlx::FromRow)]
pub(super) struct VerdictRow {
    at_ms: i64,
    rule: String,
    severity: String,
    color: String,
    state: String,
    n: i64,
    value: Option<f64>,
    threshold: f64,
    window_ms: i64,
    baseline: Option<f64>,
    detail: String,
}

/// The columns of [`VerdictRow`], in both backends' words.
pub(super) const VERDICT_COLUMNS: &str =
    "at_ms, rule, severity, color, state, n, value, threshold, window_ms, baseline, detail";

impl TryFrom<VerdictRow> for StoredVerdict {
    type Error = StoreError;
    fn try_from(r: VerdictRow) -> Result<StoredVerdict, StoreError> {
        let state = [State::Fired, State::Clear, State::Inconclusive]
            .into_iter()
            .find(|s| s.as_str() == r.state)
            .ok_or_else(|| StoreError::Unrecognised {
                what: "a verdict state",
                why: format!("unknown verdict state {:?}", r.state),
            })?;
        Ok(StoredVerdict {
            at_ms: r.at_ms,
            rule: r.rule,
            severity: r.severity.parse().unwrap_or(Severity::Low),
            color: r.color.parse().unwrap_or(Color::Blue),
            state,
            n: r.n,
            value: r.value,
            threshold: r.threshold,
            window_ms: r.window_ms,
            baseline: r.baseline,
            detail: r.detail,
        })
    }
}
