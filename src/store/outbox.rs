//! The event outbox: a run's per-key events written once, in one transaction with the
//! mark that they are written, then each one's delivery attempts, its delivery or expiry.

use sqlx::Row;

use super::connect::Store;
use super::error::{StoreError, ctx};
use super::time::{read_optional_time, read_time, serialize, serialize_optional, time_text};
use chrono::{DateTime, Utc};

/// An event to write to the outbox.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    pub event_id: String,
    pub run_id: i64,
    pub payer_sha256: String,
    pub event_type: String,
    pub payload: String,
}

/// An event as the outbox holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OutboxRow {
    pub event_id: String,
    pub run_id: i64,
    #[serde(skip)]
    pub payer_sha256: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub state: String,
    pub attempts: i64,
    #[serde(serialize_with = "serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "serialize_optional")]
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    #[serde(serialize_with = "serialize_optional")]
    pub done_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub payload: String,
}

/// Events per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutboxCounts {
    pub pending: u64,
    pub delivered: u64,
    pub expired: u64,
}

const COLUMNS: &str = "event_id, run_id, payer_sha256, event_type, state, attempts, created_at, \
                       last_attempt_at, last_error, done_at, payload";

fn outbox_row(row: &sqlx::any::AnyRow) -> Result<OutboxRow, sqlx::Error> {
    let run_id = row.try_get(1)?;
    Ok(OutboxRow {
        event_id: row.try_get(0)?,
        run_id,
        payer_sha256: row.try_get(2)?,
        event_type: row.try_get(3)?,
        state: row.try_get(4)?,
        attempts: row
            .try_get::<i64, _>(5)
            .or_else(|_| row.try_get::<i32, _>(5).map(i64::from))?,
        created_at: read_time(6, "created_at", run_id, &row.try_get::<String, _>(6)?)?,
        last_attempt_at: read_optional_time(7, "last_attempt_at", run_id, row.try_get(7)?)?,
        last_error: row.try_get(8)?,
        done_at: read_optional_time(9, "done_at", run_id, row.try_get(9)?)?,
        payload: row.try_get(10)?,
    })
}

impl Store {
    /// Completed runs whose events are not written yet, oldest first (a run that ended
    /// while the process writing them stopped; upgraded databases mark their past runs).
    pub async fn runs_without_events(&self) -> Result<Vec<i64>, StoreError> {
        sqlx::query_scalar(
            "SELECT r.id FROM reconcile_runs r WHERE r.state = 'completed' AND NOT EXISTS \
             (SELECT 1 FROM event_runs e WHERE e.run_id = r.id) ORDER BY r.id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(ctx("finding runs without events"))
    }

    /// Writes a run's events and the mark that they are written, in one transaction;
    /// `false` (nothing written) when another process wrote them first.
    pub async fn write_events(
        &self,
        run_id: i64,
        events: &[OutboxEvent],
    ) -> Result<bool, StoreError> {
        if self.events_written(run_id).await? {
            return Ok(false);
        }
        match self.insert_events(run_id, events).await {
            Ok(()) => Ok(true),
            // Another process marked the run first: its transaction wrote the events.
            Err(_) if self.events_written(run_id).await? => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether run `run_id`'s events are written.
    pub async fn events_written(&self, run_id: i64) -> Result<bool, StoreError> {
        let n: i64 =
            sqlx::query_scalar(self.sql("SELECT COUNT(*) FROM event_runs WHERE run_id = ?"))
                .bind(run_id)
                .fetch_one(&self.pool)
                .await
                .map_err(ctx("reading whether a run's events are written"))?;
        Ok(n > 0)
    }

    async fn insert_events(&self, run_id: i64, events: &[OutboxEvent]) -> Result<(), StoreError> {
        let now = time_text(Utc::now());
        let mut tx = self.pool.begin().await.map_err(ctx("writing events"))?;
        sqlx::query(
            self.sql("INSERT INTO event_runs (run_id, events, written_at) VALUES (?, ?, ?)"),
        )
        .bind(run_id)
        .bind(i64::try_from(events.len()).unwrap_or(i64::MAX))
        .bind(now.clone())
        .execute(&mut *tx)
        .await
        .map_err(ctx("marking a run's events written"))?;
        let insert = self.dialect.insert_ignoring(
            "event_outbox (event_id, run_id, payer_sha256, event_type, created_at, payload, \
             state, attempts)",
            "(?, ?, ?, ?, ?, ?, 'pending', 0)",
            "event_id",
        );
        for e in events {
            sqlx::query(self.sql(&insert))
                .bind(e.event_id.clone())
                .bind(e.run_id)
                .bind(e.payer_sha256.clone())
                .bind(e.event_type.clone())
                .bind(now.clone())
                .bind(e.payload.clone())
                .execute(&mut *tx)
                .await
                .map_err(ctx("writing events"))?;
        }
        tx.commit().await.map_err(ctx("writing events"))
    }

    /// Pending events, oldest run first and, within a run, by key: at most `limit`.
    pub async fn pending_events(&self, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM event_outbox WHERE state = 'pending' \
             ORDER BY run_id, payer_sha256, event_id LIMIT ?"
        );
        let rows = sqlx::query(self.sql(&sql))
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(ctx("reading pending events"))?;
        rows.iter()
            .map(outbox_row)
            .collect::<Result<_, _>>()
            .map_err(ctx("reading pending events"))
    }

    /// Every event (or only the pending ones), in the order they are delivered.
    pub async fn list_events(&self, pending_only: bool) -> Result<Vec<OutboxRow>, StoreError> {
        let filter = if pending_only {
            "WHERE state = 'pending' "
        } else {
            ""
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM event_outbox {filter}ORDER BY run_id, payer_sha256, event_id"
        );
        let rows = sqlx::query(self.sql(&sql))
            .fetch_all(&self.pool)
            .await
            .map_err(ctx("listing events"))?;
        rows.iter()
            .map(outbox_row)
            .collect::<Result<_, _>>()
            .map_err(ctx("listing events"))
    }

    /// Records one delivery attempt of a pending event: delivered, or the error (cut to
    /// 255 characters) and the event left pending.
    pub async fn record_attempt(
        &self,
        event_id: &str,
        delivered: bool,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = time_text(Utc::now());
        let error = error.map(|e| e.chars().take(255).collect::<String>());
        let sql = if delivered {
            "UPDATE event_outbox SET state = 'delivered', attempts = attempts + 1, \
             last_attempt_at = ?, last_error = ?, done_at = ? WHERE event_id = ? \
             AND state = 'pending'"
        } else {
            "UPDATE event_outbox SET attempts = attempts + 1, last_attempt_at = ?, \
             last_error = ?, done_at = ? WHERE event_id = ? AND state = 'pending'"
        };
        sqlx::query(self.sql(sql))
            .bind(now.clone())
            .bind(error)
            .bind(delivered.then_some(now))
            .bind(event_id.to_owned())
            .execute(&self.pool)
            .await
            .map_err(ctx("recording a delivery attempt"))?;
        Ok(())
    }

    /// Marks pending events written before `cutoff` `expired`; returns how many.
    pub async fn expire_events(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let done = sqlx::query(self.sql(
            "UPDATE event_outbox SET state = 'expired', done_at = ? \
             WHERE state = 'pending' AND created_at < ?",
        ))
        .bind(time_text(Utc::now()))
        .bind(time_text(cutoff))
        .execute(&self.pool)
        .await
        .map_err(ctx("expiring events"))?;
        Ok(done.rows_affected())
    }

    /// Events per state in the whole outbox.
    pub async fn event_counts(&self) -> Result<OutboxCounts, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) FROM event_outbox GROUP BY state")
            .fetch_all(&self.pool)
            .await
            .map_err(ctx("counting events"))?;
        let mut counts = OutboxCounts::default();
        for row in rows {
            let state: String = row.try_get(0).map_err(ctx("counting events"))?;
            let n: i64 = row.try_get(1).map_err(ctx("counting events"))?;
            let n = u64::try_from(n).unwrap_or_default();
            match state.as_str() {
                "pending" => counts.pending = n,
                "delivered" => counts.delivered = n,
                "expired" => counts.expired = n,
                _ => {}
            }
        }
        Ok(counts)
    }
}
