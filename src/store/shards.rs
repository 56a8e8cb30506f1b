//! A shard's start and end: its row created (or set running again), and its end recorded
//! with the whole run recounted, its state, totals and exit code written once.

use chrono::Utc;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::connect::Store;
use super::dialect::Dialect;
use super::error::{StoreError, ctx};
use super::records::{RunRecord, RunState, ShardEnd, ShardRecord, StatusCounts, to_i64};
use super::time::time_text;

impl Store {
    /// Recounts a run's rows and records how one shard ended, with the exit code that
    /// `exit_code` settles from the run's recounted rows (stored once); the run is
    /// `completed` once every shard is. Returns the run's record.
    pub async fn finish_shard(
        &self,
        run_id: i64,
        end: &ShardEnd,
        exit_code: &(dyn Fn(&StatusCounts) -> i32 + Sync),
    ) -> Result<RunRecord, StoreError> {
        let now = time_text(Utc::now());
        // One transaction, with the run row locked before the shards are read: shards that
        // finish at the same moment are serialized, and the last one sees every other.
        let mut tx = self.pool.begin().await.map_err(ctx("finishing a shard"))?;
        self.mark_shard_ended(&mut tx, run_id, end, &now).await?;
        let (shard_count, shards) = self.locked_shards(&mut tx, run_id).await?;
        let totals = ShardTotals::sum(&shards).map_err(ctx("reading shards"))?;
        let counts = self.count_statuses(&mut *tx, run_id).await?;
        let state = totals.run_state(shard_count, end.state);
        let tally = RunTally {
            state,
            finished_at: (state != RunState::Running).then_some(now),
            keys: totals.keys.filter(|_| shards.len() as i64 == shard_count),
            exit_code: exit_code(&counts),
            totals,
            counts,
        };
        self.write_run_end(&mut tx, run_id, &tally, end.error.clone())
            .await?;
        tx.commit().await.map_err(ctx("finishing a run"))?;
        self.run(run_id).await?.ok_or(StoreError::NoSuchRun(run_id))
    }

    /// Records the shard's state, end time and calls.
    async fn mark_shard_ended(
        &self,
        conn: &mut sqlx::AnyConnection,
        run_id: i64,
        end: &ShardEnd,
        now: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(self.sql(
            "UPDATE run_shards SET state = ?, finished_at = ?, auth_calls = auth_calls + ?, \
             lookups = lookups + ? WHERE run_id = ? AND shard_index = ?",
        ))
        .bind(end.state.as_str())
        .bind(now.to_owned())
        .bind(to_i64(end.auth_calls))
        .bind(to_i64(end.lookups))
        .bind(run_id)
        .bind(i64::from(end.shard_index))
        .execute(conn)
        .await
        .map_err(ctx("finishing a shard"))?;
        Ok(())
    }

    /// The run's shard count and its shards' `state, keys_total, duplicates, auth_calls,
    /// lookups` rows, locked (outside SQLite, whose one writer serializes them anyway).
    async fn locked_shards(
        &self,
        conn: &mut sqlx::AnyConnection,
        run_id: i64,
    ) -> Result<(i64, Vec<AnyRow>), StoreError> {
        let lock = if self.dialect == Dialect::Sqlite {
            ""
        } else {
            " FOR UPDATE"
        };
        let shard_count: i64 = sqlx::query_scalar(self.sql(&format!(
            "SELECT shard_count FROM reconcile_runs WHERE id = ?{lock}"
        )))
        .bind(run_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(ctx("finishing a run"))?
        .ok_or(StoreError::NoSuchRun(run_id))?;
        let shards = sqlx::query(self.sql(&format!(
            "SELECT state, keys_total, duplicates, auth_calls, lookups FROM run_shards \
             WHERE run_id = ?{lock}"
        )))
        .bind(run_id)
        .fetch_all(conn)
        .await
        .map_err(ctx("reading shards"))?;
        Ok((shard_count, shards))
    }

    /// Writes the run's recounted state, totals and exit code.
    async fn write_run_end(
        &self,
        conn: &mut sqlx::AnyConnection,
        run_id: i64,
        tally: &RunTally,
        error: Option<String>,
    ) -> Result<(), StoreError> {
        let (totals, counts) = (&tally.totals, &tally.counts);
        sqlx::query(self.sql(
            "UPDATE reconcile_runs SET state = ?, finished_at = ?, keys_total = ?, \
             duplicates = ?, active_count = ?, gone_count = ?, failed_count = ?, \
             rejected_count = ?, auth_calls = ?, lookups = ?, exit_code = ?, error = ? \
             WHERE id = ?",
        ))
        .bind(tally.state.as_str())
        .bind(tally.finished_at.clone())
        .bind(tally.keys)
        .bind(totals.duplicates)
        .bind(counts.active)
        .bind(counts.gone)
        .bind(counts.failed)
        .bind(counts.rejected)
        .bind(totals.auth_calls)
        .bind(totals.lookups)
        .bind(i64::from(tally.exit_code))
        .bind(error)
        .bind(run_id)
        .execute(conn)
        .await
        .map_err(ctx("finishing a run"))?;
        Ok(())
    }

    /// The shard's row, created in state `running` if missing, and set running again.
    pub async fn start_shard(
        &self,
        run_id: i64,
        shard_index: u32,
    ) -> Result<ShardRecord, StoreError> {
        let insert = self.dialect.insert_ignoring(
            "run_shards (run_id, shard_index, state, started_at)",
            "(?, ?, 'running', ?)",
            "run_id, shard_index",
        );
        sqlx::query(self.sql(&insert))
            .bind(run_id)
            .bind(i64::from(shard_index))
            .bind(time_text(Utc::now()))
            .execute(&self.pool)
            .await
            .map_err(ctx("starting a shard"))?;
        sqlx::query(self.sql(
            "UPDATE run_shards SET state = 'running', finished_at = NULL \
             WHERE run_id = ? AND shard_index = ?",
        ))
        .bind(run_id)
        .bind(i64::from(shard_index))
        .execute(&self.pool)
        .await
        .map_err(ctx("starting a shard"))?;
        let row = sqlx::query(self.sql(
            "SELECT state, staged, keys_total, duplicates, auth_calls, lookups \
             FROM run_shards WHERE run_id = ? AND shard_index = ?",
        ))
        .bind(run_id)
        .bind(i64::from(shard_index))
        .fetch_one(&self.pool)
        .await
        .map_err(ctx("reading a shard"))?;
        let read = |e| StoreError::Query {
            doing: "reading a shard",
            source: e,
        };
        Ok(ShardRecord {
            state: RunState::parse(&row.try_get::<String, _>(0).map_err(read)?),
            staged: row.try_get::<i64, _>(1).map_err(read)? != 0,
            keys_total: row.try_get(2).map_err(read)?,
            duplicates: row.try_get(3).map_err(read)?,
            auth_calls: row.try_get(4).map_err(read)?,
            lookups: row.try_get(5).map_err(read)?,
        })
    }
}

/// What the end of a shard writes to its run's row.
struct RunTally {
    state: RunState,
    finished_at: Option<String>,
    /// `None` while a shard has not finished staging.
    keys: Option<i64>,
    exit_code: i32,
    totals: ShardTotals,
    counts: StatusCounts,
}

/// The shards of a run added up.
struct ShardTotals {
    completed: i64,
    /// `None` while a shard has not finished staging.
    keys: Option<i64>,
    duplicates: i64,
    auth_calls: i64,
    lookups: i64,
}

impl ShardTotals {
    /// Adds up `state, keys_total, duplicates, auth_calls, lookups` rows.
    fn sum(rows: &[AnyRow]) -> Result<Self, sqlx::Error> {
        let mut t = Self {
            completed: 0,
            keys: Some(0),
            duplicates: 0,
            auth_calls: 0,
            lookups: 0,
        };
        for row in rows {
            let shard_state: String = row.try_get(0)?;
            t.completed += i64::from(RunState::parse(&shard_state) == RunState::Completed);
            let total: Option<i64> = row.try_get(1)?;
            t.keys = t.keys.zip(total).map(|(a, b)| a + b);
            t.duplicates += row.try_get::<i64, _>(2)?;
            t.auth_calls += row.try_get::<i64, _>(3)?;
            t.lookups += row.try_get::<i64, _>(4)?;
        }
        Ok(t)
    }

    /// The run's state once a shard ended in `shard_state`: completed when every shard
    /// is, still running while a completed shard waits for the others.
    fn run_state(&self, shard_count: i64, shard_state: RunState) -> RunState {
        if self.completed == shard_count {
            RunState::Completed
        } else if shard_state == RunState::Completed {
            RunState::Running
        } else {
            shard_state
        }
    }
}
