//! Verdicts as stored: the matrix's judgements, kept for `status`,
//! reports and the bake check. Stored states become `matrix::State`.

use serde::Serialize;
use sqlx::Row;

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
        sqlx::query(
            "INSERT INTO verdicts (at_ms, rule, severity, color, state, n, value, threshold, window_ms, baseline, detail) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
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
        .execute(&mut *tx)
        .await
        .map_err(q(DOING))?;
        tx.commit().await.map_err(q(DOING))?;
        w.done().await;
        Ok(())
    }

    /// The latest stored verdict of every (rule, color).
    pub async fn latest_verdicts(&self) -> Result<Vec<StoredVerdict>, StoreError> {
        let rows = sqlx::query(
            "SELECT v.at_ms, v.rule, v.severity, v.color, v.state, v.n, v.value, v.threshold, v.window_ms, \
             v.baseline, v.detail FROM verdicts v \
             JOIN (SELECT MAX(id) AS id FROM verdicts GROUP BY rule, color) last ON last.id = v.id \
             ORDER BY v.rule, v.color",
        )
        .fetch_all(self.db()?)
        .await
        .map_err(q("reading verdicts"))?;
        rows.into_iter().map(verdict_from_row).collect()
    }

    /// Stored verdicts in `[from, until)`, oldest first.
    pub async fn verdicts_between(
        &self,
        from_ms: Millis,
        until_ms: Millis,
    ) -> Result<Vec<StoredVerdict>, StoreError> {
        let rows = sqlx::query(
            "SELECT at_ms, rule, severity, color, state, n, value, threshold, window_ms, baseline, detail \
             FROM verdicts WHERE at_ms >= ? AND at_ms < ? ORDER BY id",
        )
        .bind(from_ms)
        .bind(until_ms)
        .fetch_all(self.db()?)
        .await
        .map_err(q("reading verdicts"))?;
        rows.into_iter().map(verdict_from_row).collect()
    }
}

fn verdict_from_row(r: sqlx::sqlite::SqliteRow) -> Result<StoredVerdict, StoreError> {
    let state: String = r.get("state");
    let state = [State::Fired, State::Clear, State::Inconclusive]
        .into_iter()
        .find(|s| s.as_str() == state)
        .ok_or_else(|| StoreError::Unrecognised {
            what: "a verdict state",
            why: format!("unknown verdict state {state:?}"),
        })?;
    Ok(StoredVerdict {
        at_ms: r.get("at_ms"),
        rule: r.get("rule"),
        severity: r
            .get::<String, _>("severity")
            .parse()
            .unwrap_or(Severity::Low),
        color: r.get::<String, _>("color").parse().unwrap_or(Color::Blue),
        state,
        n: r.get("n"),
        value: r.get("value"),
        threshold: r.get("threshold"),
        window_ms: r.get("window_ms"),
        baseline: r.get("baseline"),
        detail: r.get("detail"),
    })
}
