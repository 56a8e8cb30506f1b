//! Budgeted runs and coverage: the priority queue a budgeted run checks its keys in, the
//! keys' next charge dates, what a run covered, each key's latest known result (for
//! `changes` across partial runs), and how recently the source's keys were checked.
//!
//! # Architecture
//! The priority order is computed by the database, once per run and shard, into
//! `run_queue` (`INSERT … SELECT … ROW_NUMBER() OVER (ORDER BY …)` over the staged keys
//! joined with `billing_key_latest`), so it scales with the index rather than with memory;
//! lookups then page through the queue by position, as unbudgeted runs page by input order.

use super::connect::Store;
use super::error::{StoreError, ctx};
use super::records::{CHECK_COLUMNS, CheckRecord, StagedKey, check_record};
use super::time::{read_optional_time, time_text};
use chrono::{DateTime, Utc};
use sqlx::Row;

/// How recently the keys of a run's source were checked, as of a moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Distinct keys in the run's source.
    pub source_keys: i64,
    /// Keys with any known result (this run or earlier).
    pub ever_checked: i64,
    pub within_1d: i64,
    pub within_7d: i64,
    pub within_30d: i64,
    /// The stalest key's latest check (UTC RFC 3339), among keys ever checked.
    pub oldest_check: Option<DateTime<Utc>>,
}

impl Store {
    /// Fills the run's priority queue for one shard (unless already filled, as when a
    /// budgeted run is resumed): never checked, then latest result `failed`, then due on or
    /// before `due_cutoff` (soonest first), then least recently checked; input order breaks
    /// ties. Returns the keys queued.
    pub async fn build_queue(
        &self,
        run_id: i64,
        shard_index: u32,
        due_cutoff: Option<&str>,
    ) -> Result<i64, StoreError> {
        let queued: i64 = sqlx::query_scalar(
            self.sql("SELECT COUNT(*) FROM run_queue WHERE run_id = ? AND shard_index = ?"),
        )
        .bind(run_id)
        .bind(i64::from(shard_index))
        .fetch_one(&self.pool)
        .await
        .map_err(ctx("reading the priority queue"))?;
        if queued > 0 {
            return Ok(queued);
        }
        let done = sqlx::query(self.sql(
            "INSERT INTO run_queue (run_id, shard_index, queue_pos, payer_id) \
             SELECT p.run_id, p.shard_index, ROW_NUMBER() OVER (ORDER BY p.grp, \
                    CASE WHEN p.grp = 2 THEN p.due_on ELSE '' END, p.last_check, p.seq), \
                    p.payer_id \
             FROM (SELECT k.run_id, k.shard_index, k.seq, k.payer_id, \
                          CASE WHEN l.payer_id IS NULL THEN 0 \
                               WHEN l.status = 'failed' THEN 1 \
                               WHEN d.due_on IS NOT NULL AND d.due_on <= ? THEN 2 \
                               ELSE 3 END AS grp, \
                          COALESCE(d.due_on, '') AS due_on, \
                          COALESCE(l.checked_at, '') AS last_check \
                   FROM run_keys k \
                   LEFT JOIN billing_key_latest l ON l.payer_id = k.payer_id \
                   LEFT JOIN run_key_due d ON d.run_id = k.run_id AND d.payer_id = k.payer_id \
                   WHERE k.run_id = ? AND k.shard_index = ?) p",
        ))
        .bind(due_cutoff.unwrap_or_default().to_owned())
        .bind(run_id)
        .bind(i64::from(shard_index))
        .execute(&self.pool)
        .await
        .map_err(ctx("ordering the keys by priority"))?;
        Ok(i64::try_from(done.rows_affected()).unwrap_or(i64::MAX))
    }

    /// Queued keys of the shard without a result row yet, after position `after_pos`, in
    /// priority order; [`StagedKey::seq`] carries the queue position.
    pub async fn queued_keys(
        &self,
        run_id: i64,
        shard_index: u32,
        after_pos: i64,
        limit: i64,
    ) -> Result<Vec<StagedKey>, StoreError> {
        let sql = "SELECT q.queue_pos AS seq, k.payer_id, k.customer_ref, k.prior_attempts \
             FROM run_queue q JOIN run_keys k ON k.run_id = q.run_id AND k.payer_id = q.payer_id \
             WHERE q.run_id = ? AND q.shard_index = ? AND q.queue_pos > ? \
             AND NOT EXISTS (SELECT 1 FROM billing_key_checks c \
                             WHERE c.run_id = q.run_id AND c.payer_id = q.payer_id) \
             ORDER BY q.queue_pos LIMIT ?";
        self.key_page(
            sql,
            "reading queued keys",
            run_id,
            shard_index,
            after_pos,
            limit,
        )
        .await
    }

    /// Records next charge dates (`YYYY-MM-DD`) of a run's keys; a key seen twice keeps
    /// its first date.
    pub async fn stage_due(
        &self,
        run_id: i64,
        rows: &[(String, String)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(ctx("staging due dates"))?;
        for chunk in rows.chunks(super::records::MAX_ROWS_PER_STATEMENT) {
            let values = vec!["(?, ?, ?)"; chunk.len()].join(", ");
            let sql = self.dialect.insert_ignoring(
                "run_key_due (run_id, payer_id, due_on)",
                &values,
                "run_id, payer_id",
            );
            let mut query = sqlx::query(self.sql(&sql)).persistent(false);
            for (payer_id, due_on) in chunk {
                query = query
                    .bind(run_id)
                    .bind(payer_id.clone())
                    .bind(due_on.clone());
            }
            query
                .execute(&mut *tx)
                .await
                .map_err(ctx("staging due dates"))?;
        }
        tx.commit().await.map_err(ctx("staging due dates"))
    }

    /// Records what a finished run covered: keys checked in it (all shards), and which
    /// budget stopped it (`None`: it reached its last key).
    pub async fn record_coverage(
        &self,
        run_id: i64,
        budget_stop: Option<&str>,
    ) -> Result<i64, StoreError> {
        let checked: i64 = sqlx::query_scalar(self.sql(
            "SELECT COUNT(*) FROM billing_key_checks WHERE run_id = ? AND status <> 'rejected'",
        ))
        .bind(run_id)
        .fetch_one(&self.pool)
        .await
        .map_err(ctx("counting checked keys"))?;
        sqlx::query(self.sql(
            "UPDATE reconcile_runs SET keys_checked = ?, \
             budget_stop = COALESCE(?, budget_stop) WHERE id = ?",
        ))
        .bind(checked)
        .bind(budget_stop.map(str::to_owned))
        .bind(run_id)
        .execute(&self.pool)
        .await
        .map_err(ctx("recording coverage"))?;
        Ok(checked)
    }

    /// Which budget stopped a run, if one did.
    pub async fn budget_stop(&self, run_id: i64) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar(self.sql("SELECT budget_stop FROM reconcile_runs WHERE id = ?"))
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await
            .map(Option::flatten)
            .map_err(ctx("reading a run's budget"))
    }

    /// How recently the keys of `run_id`'s source had been checked as of `as_of`, counting
    /// results of that run and earlier ones.
    pub async fn coverage(
        &self,
        run_id: i64,
        as_of: DateTime<Utc>,
    ) -> Result<Coverage, StoreError> {
        let since = |days: i64| time_text(as_of - chrono::Duration::days(days));
        let row = sqlx::query(self.sql(
            "SELECT COUNT(*), COUNT(l.last_check), \
                    COUNT(CASE WHEN l.last_check >= ? THEN 1 END), \
                    COUNT(CASE WHEN l.last_check >= ? THEN 1 END), \
                    COUNT(CASE WHEN l.last_check >= ? THEN 1 END), \
                    MIN(l.last_check) \
             FROM run_keys k LEFT JOIN \
                  (SELECT payer_id, MAX(checked_at) AS last_check FROM billing_key_checks \
                   WHERE run_id <= ? AND status <> 'rejected' GROUP BY payer_id) l \
               ON l.payer_id = k.payer_id \
             WHERE k.run_id = ?",
        ))
        .bind(since(1))
        .bind(since(7))
        .bind(since(30))
        .bind(run_id)
        .bind(run_id)
        .fetch_one(&self.pool)
        .await
        .map_err(ctx("measuring coverage"))?;
        let read = || -> Result<Coverage, sqlx::Error> {
            Ok(Coverage {
                source_keys: row.try_get(0)?,
                ever_checked: row.try_get(1)?,
                within_1d: row.try_get(2)?,
                within_7d: row.try_get(3)?,
                within_30d: row.try_get(4)?,
                oldest_check: read_optional_time(5, "last_check", run_id, row.try_get(5)?)?,
            })
        };
        read().map_err(ctx("measuring coverage"))
    }

    /// Each key of `run_id`'s source with `after < payer_id <= up_to`, ordered by payer
    /// id, with its latest result as of that run (this run's row, or the newest earlier
    /// one), `None` for a key never checked.
    pub async fn latest_range(
        &self,
        run_id: i64,
        after: &str,
        up_to: Option<&str>,
        limit: i64,
    ) -> Result<Vec<LatestRecord>, StoreError> {
        let upper = if up_to.is_some() {
            " AND k.payer_id <= ?"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {}, k.payer_id, k.customer_ref FROM run_keys k \
             LEFT JOIN billing_key_checks c ON c.payer_id = k.payer_id AND c.run_id = \
                (SELECT MAX(c2.run_id) FROM billing_key_checks c2 \
                 WHERE c2.payer_id = k.payer_id AND c2.run_id <= k.run_id \
                 AND c2.status <> 'rejected') \
             WHERE k.run_id = ? AND k.payer_id > ?{upper} ORDER BY k.payer_id LIMIT ?",
            latest_columns().join(", ")
        );
        let mut query = sqlx::query(self.sql(&sql))
            .bind(run_id)
            .bind(after.to_owned());
        if let Some(up_to) = up_to {
            query = query.bind(up_to.to_owned());
        }
        let rows = query
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(ctx("reading latest results"))?;
        rows.iter()
            .map(|row| {
                let at = super::records::CHECK_COLUMN_COUNT;
                let status: Option<String> = row.try_get(3)?;
                Ok(LatestRecord {
                    payer_id: row.try_get(at)?,
                    customer_ref: row.try_get(at + 1)?,
                    latest: status.map(|_| check_record(row)).transpose()?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(ctx("reading latest results"))
    }
}

/// A key of a run's source and its latest known result as of that run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatestRecord {
    pub payer_id: String,
    pub customer_ref: Option<String>,
    /// `None`: never checked (as of that run).
    pub latest: Option<CheckRecord>,
}

/// The result columns of the latest row for [`Store::latest_range`] (all NULL when the
/// key has none).
fn latest_columns() -> Vec<String> {
    CHECK_COLUMNS
        .split(',')
        .map(|c| format!("c.{}", c.trim()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_columns_follow_the_check_columns() {
        let cols = latest_columns();
        assert_eq!(cols.len(), super::super::records::CHECK_COLUMN_COUNT);
        assert_eq!(cols[1], "c.payer_id");
        assert_eq!(cols[3], "c.status");
        assert_eq!(cols[18], "c.checked_at");
    }
}
