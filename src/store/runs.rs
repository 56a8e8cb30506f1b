//! Runs: creating, joining, reading and resuming a run, and the list of keys each shard
//! set out to check (staging, pending pages). A shard's start and end are in `shards`.

use super::connect::Store;
use super::dialect::{Dialect, json_rows};
use super::error::{StoreError, ctx};
use super::records::{NewRun, RUN_COLUMNS, RunRecord, RunState, StagedKey, run_record};
use super::time::time_text;
use chrono::Utc;
use sqlx::Row;

impl Store {
    /// Creates a run in state `running` and returns its id.
    pub async fn create_run(&self, new: &NewRun) -> Result<i64, StoreError> {
        const INSERT: &str = "INSERT INTO reconcile_runs \
            (run_key, started_at, source, source_spec, options, state, shard_count) \
            VALUES (?, ?, ?, ?, ?, 'running', ?)";
        // SQLite and PostgreSQL return the id; MySQL reports it as the last insert id.
        let returning = self.dialect != Dialect::MySql;
        let sql = if returning {
            format!("{INSERT} RETURNING id")
        } else {
            INSERT.to_owned()
        };
        let query = sqlx::query(self.sql(&sql))
            .bind(new.run_key.clone())
            .bind(time_text(Utc::now()))
            .bind(new.source.clone())
            .bind(serde_json::to_string(&new.source_spec).unwrap_or_default())
            .bind(new.options.clone())
            .bind(i64::from(new.shard_count));
        if returning {
            let row = query
                .fetch_one(&self.pool)
                .await
                .map_err(ctx("creating a run"))?;
            row.try_get::<i64, _>(0).map_err(ctx("creating a run"))
        } else {
            let done = query
                .execute(&self.pool)
                .await
                .map_err(ctx("creating a run"))?;
            done.last_insert_id().ok_or_else(|| StoreError::Query {
                doing: "creating a run",
                source: sqlx::Error::Protocol("no id returned for the new run".into()),
            })
        }
    }

    /// Creates a run, or joins the run another shard just created with the same key.
    pub async fn create_or_join_run(&self, new: &NewRun) -> Result<i64, StoreError> {
        match self.create_run(new).await {
            Ok(id) => Ok(id),
            Err(StoreError::Query {
                source: sqlx::Error::Database(db),
                ..
            }) if db.is_unique_violation() => {
                let key = new.run_key.as_deref().unwrap_or_default();
                match self.run_by_key(key).await? {
                    Some(run) => Ok(run.id),
                    None => Err(StoreError::Query {
                        doing: "joining a run",
                        source: sqlx::Error::Database(db),
                    }),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Frees a completed run's key for `--rerun`: it becomes `KEY~ID`.
    pub async fn retire_run_key(&self, run_id: i64) -> Result<(), StoreError> {
        let run = self
            .run(run_id)
            .await?
            .ok_or(StoreError::NoSuchRun(run_id))?;
        let retired = format!("{}~{run_id}", run.run_key.unwrap_or_default());
        sqlx::query(self.sql("UPDATE reconcile_runs SET run_key = ? WHERE id = ?"))
            .bind(retired)
            .bind(run_id)
            .execute(&self.pool)
            .await
            .map_err(ctx("retiring a run key"))?;
        Ok(())
    }

    pub async fn run(&self, id: i64) -> Result<Option<RunRecord>, StoreError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM reconcile_runs WHERE id = ?");
        let row = sqlx::query(self.sql(&sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(ctx("reading a run"))?;
        row.map(|r| run_record(&r)).transpose()
    }

    pub async fn run_by_key(&self, run_key: &str) -> Result<Option<RunRecord>, StoreError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM reconcile_runs WHERE run_key = ?");
        let row = sqlx::query(self.sql(&sql))
            .bind(run_key.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(ctx("reading a run by key"))?;
        row.map(|r| run_record(&r)).transpose()
    }

    /// The newest run that did not complete (running, interrupted or failed).
    pub async fn latest_unfinished_run(&self) -> Result<Option<RunRecord>, StoreError> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM reconcile_runs WHERE state <> 'completed' \
             ORDER BY id DESC LIMIT 1"
        );
        let row = sqlx::query(self.sql(&sql))
            .fetch_optional(&self.pool)
            .await
            .map_err(ctx("finding the latest unfinished run"))?;
        row.map(|r| run_record(&r)).transpose()
    }

    /// The newest runs in `state`, newest first.
    pub async fn latest_runs(
        &self,
        state: Option<RunState>,
        limit: i64,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let filter = if state.is_some() {
            "WHERE state = ?"
        } else {
            ""
        };
        let sql =
            format!("SELECT {RUN_COLUMNS} FROM reconcile_runs {filter} ORDER BY id DESC LIMIT ?");
        let mut query = sqlx::query(self.sql(&sql));
        if let Some(state) = state {
            query = query.bind(state.as_str());
        }
        let rows = query
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(ctx("listing runs"))?;
        rows.iter().map(run_record).collect()
    }

    /// Marks a run `running` again (resume).
    pub async fn reopen_run(&self, run_id: i64) -> Result<(), StoreError> {
        sqlx::query(self.sql(
            "UPDATE reconcile_runs SET state = 'running', finished_at = NULL, error = NULL \
             WHERE id = ?",
        ))
        .bind(run_id)
        .execute(&self.pool)
        .await
        .map_err(ctx("reopening a run"))?;
        Ok(())
    }

    /// Starts writing a shard's key list (see [`Staging`]).
    pub fn staging(&self, run_id: i64, shard_index: u32) -> Staging<'_> {
        Staging {
            store: self,
            run_id,
            shard_index,
            open: None,
        }
    }

    /// PostgreSQL and MySQL: the keys in bulk statements, in one transaction (see `bulk`).
    async fn stage_keys(
        &self,
        run_id: i64,
        shard_index: u32,
        keys: &[StagedKey],
    ) -> Result<(), StoreError> {
        match &self.native {
            Some(native) => Box::pin(native.stage_keys(run_id, shard_index, keys)).await,
            None => Err(StoreError::Query {
                doing: "staging keys",
                source: sqlx::Error::Configuration("no bulk path for SQLite here".into()),
            }),
        }
    }

    /// Records that the shard's key list is complete. `valid_read` counts the valid keys
    /// the source gave this shard, duplicates included; returns (keys, duplicates).
    pub async fn mark_staged(
        &self,
        run_id: i64,
        shard_index: u32,
        valid_read: i64,
    ) -> Result<(i64, i64), StoreError> {
        let staged = self.count_staged(run_id, shard_index).await?;
        let duplicates = (valid_read - staged).max(0);
        sqlx::query(self.sql(
            "UPDATE run_shards SET staged = 1, keys_total = ?, duplicates = ? \
             WHERE run_id = ? AND shard_index = ?",
        ))
        .bind(staged)
        .bind(duplicates)
        .bind(run_id)
        .bind(i64::from(shard_index))
        .execute(&self.pool)
        .await
        .map_err(ctx("marking keys staged"))?;
        Ok((staged, duplicates))
    }

    pub async fn count_staged(&self, run_id: i64, shard_index: u32) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            self.sql("SELECT COUNT(*) FROM run_keys WHERE run_id = ? AND shard_index = ?"),
        )
        .bind(run_id)
        .bind(i64::from(shard_index))
        .fetch_one(&self.pool)
        .await
        .map_err(ctx("counting staged keys"))
    }

    /// Keys of the shard without a result row yet, after `after_seq`, in input order.
    ///
    /// `fresh`: none of the shard's keys had a result row when its lookups started, so
    /// every key after the cursor still has none (rows are written only for keys already
    /// handed out) and the per-key probe of the results index is skipped: at a million
    /// random keys that probe is a B-tree page read from disk per key.
    pub async fn pending_keys(
        &self,
        run_id: i64,
        shard_index: u32,
        after_seq: i64,
        limit: i64,
        fresh: bool,
    ) -> Result<Vec<StagedKey>, StoreError> {
        let sql = if fresh {
            "SELECT k.seq, k.payer_id, k.customer_ref, k.prior_attempts FROM run_keys k \
             WHERE k.run_id = ? AND k.shard_index = ? AND k.seq > ? \
             ORDER BY k.seq LIMIT ?"
        } else {
            "SELECT k.seq, k.payer_id, k.customer_ref, k.prior_attempts FROM run_keys k \
             WHERE k.run_id = ? AND k.shard_index = ? AND k.seq > ? \
             AND NOT EXISTS (SELECT 1 FROM billing_key_checks c \
                             WHERE c.run_id = k.run_id AND c.payer_id = k.payer_id) \
             ORDER BY k.seq LIMIT ?"
        };
        self.key_page(
            sql,
            "reading pending keys",
            run_id,
            shard_index,
            after_seq,
            limit,
        )
        .await
    }

    /// A page of keys selected by `sql` (columns `seq, payer_id, customer_ref,
    /// prior_attempts`; binds the run, the shard, the cursor and the limit).
    ///
    /// On SQLite the page comes back as one JSON array (one value, not a thousand rows of
    /// four): sqlx copied each row's values and converted them for its `Any` driver, ~2 µs
    /// per key on the job's one async thread (perf of a 30,000-key run:
    /// `SqliteRow::current`, `sqlite3_value_dup`, the `Any` mapping and the row drops,
    /// 6–9% of the samples). PostgreSQL and MySQL read it through their native pool.
    pub(super) async fn key_page(
        &self,
        sql: &str,
        doing: &'static str,
        run_id: i64,
        shard_index: u32,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StagedKey>, StoreError> {
        if let Some(native) = &self.native {
            return Box::pin(native.key_page(sql, doing, (run_id, shard_index, after, limit)))
                .await;
        }
        let page = if self.dialect == Dialect::Sqlite {
            format!(
                "SELECT json_group_array(json_array(p.seq, p.payer_id, p.customer_ref, \
                 p.prior_attempts)) FROM ({sql}) p"
            )
        } else {
            sql.to_owned()
        };
        let query = sqlx::query(self.sql(&page))
            .bind(run_id)
            .bind(i64::from(shard_index))
            .bind(after)
            .bind(limit);
        if self.dialect == Dialect::Sqlite {
            let row = query.fetch_one(&self.pool).await.map_err(ctx(doing))?;
            let text: String = row.try_get(0).map_err(ctx(doing))?;
            return parse_key_page(&text).map_err(|why| StoreError::Query {
                doing,
                source: sqlx::Error::Decode(why.into()),
            });
        }
        let rows = query.fetch_all(&self.pool).await.map_err(ctx(doing))?;
        rows.iter()
            .map(StagedKey::from_row)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(ctx(doing))
    }

    /// Whether any key of the shard has a result row in the run.
    pub async fn has_results(&self, run_id: i64, shard_index: u32) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar(self.sql(
            "SELECT COUNT(*) FROM (SELECT 1 FROM billing_key_checks c \
             JOIN run_keys k ON k.run_id = c.run_id AND k.payer_id = c.payer_id \
             WHERE c.run_id = ? AND k.shard_index = ? LIMIT 1) x",
        ))
        .bind(run_id)
        .bind(i64::from(shard_index))
        .fetch_one(&self.pool)
        .await
        .map_err(ctx("looking for result rows"))?;
        Ok(n > 0)
    }

    /// How many keys of the shard still lack a result row.
    pub async fn count_pending(&self, run_id: i64, shard_index: u32) -> Result<i64, StoreError> {
        sqlx::query_scalar(self.sql(
            "SELECT COUNT(*) FROM run_keys k WHERE k.run_id = ? AND k.shard_index = ? \
             AND NOT EXISTS (SELECT 1 FROM billing_key_checks c \
                             WHERE c.run_id = k.run_id AND c.payer_id = k.payer_id)",
        ))
        .bind(run_id)
        .bind(i64::from(shard_index))
        .fetch_one(&self.pool)
        .await
        .map_err(ctx("counting pending keys"))
    }
}

/// How many keys a SQLite staging transaction holds before it commits. Each commit
/// writes the index pages its sorted runs touched to the WAL, and the checkpoint after
/// it copies them to the database and waits for the disk (`fsync`). At 1,000,000 random
/// keys, where each sorted run touches most of the key index, a commit per 50,000-key
/// run made staging take ~11.7 s; a commit per four runs, ~9.2 s (three runs of each,
/// staging alone). A transaction holds the write lock for ~2 s at most; the lease
/// heartbeat waits for it (`busy_timeout`).
const STAGE_TX_ROWS: usize = 200_000;

/// A shard's key list being written, a sorted run at a time (`INSERT … ON CONFLICT DO
/// NOTHING`: the first occurrence of a key stays, and writing again is harmless).
///
/// PostgreSQL and MySQL: each run in its own transaction, retried after a dropped
/// connection. SQLite: several runs in one transaction on one connection (see
/// [`STAGE_TX_ROWS`]), not retried: the runs before it are no longer in memory, so an
/// error ends staging and a resumed run stages again. Dropped before
/// [`Staging::commit`] (staging interrupted or failed), the open transaction is rolled
/// back.
pub struct Staging<'s> {
    store: &'s Store,
    run_id: i64,
    shard_index: u32,
    /// SQLite: the open transaction and the keys written in it.
    open: Option<(sqlx::Transaction<'static, sqlx::Any>, usize)>,
}

impl Staging<'_> {
    /// Writes keys sorted by payer id (the order their index is kept in).
    pub async fn write(&mut self, keys: &[StagedKey]) -> Result<(), StoreError> {
        let store = self.store;
        if keys.is_empty() {
            return Ok(());
        }
        if store.dialect != Dialect::Sqlite {
            return super::error::retrying(|| {
                store.stage_keys(self.run_id, self.shard_index, keys)
            })
            .await;
        }
        let (tx, written) = match &mut self.open {
            Some(open) => open,
            None => {
                let tx = store.pool.begin().await.map_err(ctx("staging keys"))?;
                self.open.insert((tx, 0))
            }
        };
        let rows: Vec<(i64, &str, Option<&str>)> = keys
            .iter()
            .map(|k| (k.seq, k.payer_id.as_str(), k.customer_ref.as_deref()))
            .collect();
        let json = json_rows(&rows, "staging keys")?;
        drop(rows);
        // One `INSERT … SELECT … FROM jsonb_each(?)`, parsed once, each row handed over
        // as binary JSON rather than written out as text again (see `insert_checks`).
        // `WHERE true` tells SQLite's parser that `ON CONFLICT` is the upsert clause.
        sqlx::query(
            "INSERT INTO run_keys (run_id, shard_index, seq, payer_id, customer_ref) \
             SELECT ?, ?, j.value ->> 0, j.value ->> 1, j.value ->> 2 FROM jsonb_each(?) j \
             WHERE true ON CONFLICT (run_id, payer_id) DO NOTHING",
        )
        .bind(self.run_id)
        .bind(i64::from(self.shard_index))
        .bind(json)
        .execute(&mut **tx)
        .await
        .map_err(ctx("staging keys"))?;
        *written += keys.len();
        if *written >= STAGE_TX_ROWS {
            self.commit().await?;
        }
        Ok(())
    }

    /// Writes the result rows of rejected input rows. They go through the pool, on
    /// another connection, so the open transaction commits first: that connection would
    /// otherwise wait for this one's write lock.
    pub async fn write_rejected(
        &mut self,
        rows: &[super::records::CheckRow],
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        self.commit().await?;
        let store = self.store;
        super::error::retrying(|| store.insert_checks(self.run_id, rows)).await
    }

    /// Commits what is written so far (at the end of staging).
    pub async fn commit(&mut self) -> Result<(), StoreError> {
        if let Some((tx, _)) = self.open.take() {
            tx.commit().await.map_err(ctx("staging keys"))?;
        }
        Ok(())
    }
}

/// Keys from a JSON page of `[seq, payer_id, customer_ref, prior_attempts]` arrays, in
/// `seq` order (an aggregate's order is not promised, so it is restored here).
fn parse_key_page(text: &str) -> Result<Vec<StagedKey>, serde_json::Error> {
    let entries: Vec<(i64, String, Option<String>, i64)> = serde_json::from_str(text)?;
    let mut keys: Vec<StagedKey> = entries
        .into_iter()
        .map(|(seq, payer_id, customer_ref, prior)| {
            StagedKey::from_columns(seq, payer_id, customer_ref, prior)
        })
        .collect();
    keys.sort_unstable_by_key(|k| k.seq);
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seq: i64, payer_id: &str, customer_ref: Option<&str>, prior: u32) -> StagedKey {
        StagedKey {
            seq,
            payer_id: payer_id.to_owned(),
            customer_ref: customer_ref.map(str::to_owned),
            prior_attempts: prior,
        }
    }

    #[tokio::test]
    async fn a_sqlite_page_of_pending_keys_keeps_every_text_and_the_input_order() {
        let (_dir, store, run_id) = crate::store::sqlite_with_run().await;
        let keys = [
            key(
                1,
                "zzzzLAST0123456789abcdef01234567",
                Some("CUST \"7\", 고객"),
                0,
            ),
            key(2, "aaaaFIRST123456789abcdef01234567", None, 2),
            key(
                3,
                "mmmm+/==3456789abcdef0123456789a",
                Some("a\\b\nc\t\u{1F600}"),
                0,
            ),
        ];
        let mut sorted = keys.to_vec();
        sorted.sort_by(|a, b| a.payer_id.cmp(&b.payer_id));
        let mut staging = store.staging(run_id, 0);
        staging.write(&sorted).await.expect("staged");
        staging.commit().await.expect("committed");
        let sql = store.sql("UPDATE run_keys SET prior_attempts = 2 WHERE seq = 2");
        sqlx::query(sql).execute(store.pool()).await.expect("prior");

        let page = |after, limit, fresh| store.pending_keys(run_id, 0, after, limit, fresh);
        assert_eq!(page(0, 10, true).await.expect("page"), keys);
        assert_eq!(page(1, 1, true).await.expect("page"), keys[1..2]);
        assert_eq!(page(3, 10, true).await.expect("page"), []);

        // A key with a result row is not pending when the run had results before.
        let sql = store.sql(
            "INSERT INTO billing_key_checks (run_id, payer_id, status, attempts, checked_at) \
             VALUES (?, ?, 'gone', 1, '2026-11-28T09:00:00.000Z')",
        );
        sqlx::query(sql)
            .bind(run_id)
            .bind(keys[0].payer_id.clone())
            .execute(store.pool())
            .await
            .expect("result row");
        assert_eq!(page(0, 10, false).await.expect("page"), keys[1..]);
    }

    #[test]
    fn a_json_page_is_put_back_in_seq_order() {
        let page = r#"[[5,"b",null,0],[2,"a","x",1]]"#;
        let keys = parse_key_page(page).expect("parses");
        assert_eq!(keys, [key(2, "a", Some("x"), 1), key(5, "b", None, 0)]);
        assert!(parse_key_page(r#"[[1,"a"]]"#).is_err());
    }
}
