//! The results store: runs, the keys a run set out to check, one result row per key, and
//! the lease that keeps runs from overlapping, on SQLite, PostgreSQL or MySQL/MariaDB.
//!
//! # Architecture
//! One [`sqlx::AnyPool`] with plain column types (text, integers; times as UTC RFC 3339
//! text, which sorts correctly). SQL is written once with `?` placeholders and rewritten to
//! `$n` for PostgreSQL; only upserts and id retrieval differ per [`Dialect`]. Schemas are
//! embedded migrations, one folder per dialect.

pub mod reports;
pub mod writer;

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Row};

use crate::domain::{KeyStatus, LookupOutcome};

/// Which SQL the database speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    MySql,
}

impl Dialect {
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "sqlite" => Ok(Self::Sqlite),
            "postgres" | "postgresql" => Ok(Self::Postgres),
            "mysql" | "mariadb" => Ok(Self::MySql),
            _ => Err(StoreError::UnsupportedUrl(scheme.to_owned())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
            Self::MySql => "mysql",
        }
    }

    /// Rewrites `?` placeholders to `$1, $2, …` for PostgreSQL.
    fn rewrite(self, sql: &str) -> String {
        if self != Self::Postgres {
            return sql.to_owned();
        }
        let mut out = String::with_capacity(sql.len() + 16);
        let mut n = 0;
        for c in sql.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        out
    }

    /// `INSERT` that leaves an existing row alone.
    fn insert_ignoring(self, table_and_columns: &str, values: &str, key: &str) -> String {
        match self {
            Self::MySql => {
                let first = key.split(',').next().unwrap_or(key).trim();
                format!(
                    "INSERT INTO {table_and_columns} VALUES {values} \
                     ON DUPLICATE KEY UPDATE {first} = {first}"
                )
            }
            _ => format!(
                "INSERT INTO {table_and_columns} VALUES {values} ON CONFLICT ({key}) DO NOTHING"
            ),
        }
    }
}

/// What can go wrong with the results database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL scheme {0:?} (use sqlite://, postgres:// or mysql://)")]
    UnsupportedUrl(String),
    #[error("cannot connect to the {dialect} database: {source}")]
    Connect {
        dialect: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot apply the {dialect} migrations: {source}")]
    Migrate {
        dialect: &'static str,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("database error while {doing}: {source}")]
    Query {
        doing: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("run {0} does not exist")]
    NoSuchRun(i64),
    #[error(
        "another run holds the lease {name:?}: run {run_id} ({holder}), alive until {expires_at}"
    )]
    LeaseHeld {
        name: String,
        run_id: i64,
        holder: String,
        expires_at: String,
    },
}

impl StoreError {
    /// Whether trying again may help: connection trouble, not a wrong query or a
    /// constraint.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Query { source, .. } | Self::Connect { source, .. } => {
                matches!(
                    source,
                    sqlx::Error::Io(_)
                        | sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::WorkerCrashed
                        | sqlx::Error::Protocol(_)
                ) || matches!(source, sqlx::Error::Database(db) if db.code().is_some_and(|c| {
                    // PostgreSQL admin shutdown, connection failure, too many connections;
                // MySQL server gone away.
                    c.starts_with("57P") || c.starts_with("08") || c == "53300"
                    || c == "2006" || c == "2013"
                }))
            }
            _ => false,
        }
    }
}

/// Attaches what was being done to a sqlx error.
fn ctx(doing: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { doing, source }
}

/// The state of a run (and of each shard of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    Completed,
    Interrupted,
    Failed,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Interrupted => "interrupted",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "completed" => Self::Completed,
            "interrupted" => Self::Interrupted,
            "failed" => Self::Failed,
            _ => Self::Running,
        }
    }
}

/// A run as the `reconcile_runs` table holds it.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub id: i64,
    pub run_key: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub source: String,
    pub source_spec: String,
    pub options: String,
    pub state: RunState,
    pub shard_count: u32,
    pub keys_total: Option<i64>,
    pub duplicates: i64,
    pub counts: StatusCounts,
    pub auth_calls: i64,
    pub lookups: i64,
    pub exit_code: Option<i64>,
}

/// One shard's progress through a run (an unsharded run has shard 0 only).
#[derive(Debug, Clone)]
pub struct ShardRecord {
    pub state: RunState,
    pub staged: bool,
    pub keys_total: Option<i64>,
    pub duplicates: i64,
    pub auth_calls: i64,
    pub lookups: i64,
}

/// Who holds a run lease, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub run_id: i64,
    pub holder: String,
    pub heartbeat_at: String,
    pub expires_at: String,
}

/// What a new run is about.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub run_key: Option<String>,
    pub source: String,
    pub source_spec: String,
    pub options: String,
    pub shard_count: u32,
}

/// A key a run set out to check, in input order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedKey {
    pub seq: i64,
    pub payer_id: String,
    pub customer_ref: Option<String>,
}

/// One result row to write.
#[derive(Debug, Clone)]
pub struct CheckRow {
    pub payer_id: String,
    pub customer_ref: Option<String>,
    pub outcome: LookupOutcome,
    pub checked_at: String,
}

/// One result row as stored, for reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckRecord {
    pub run_id: i64,
    pub payer_id: String,
    pub customer_ref: Option<String>,
    pub status: String,
    pub pay_type: Option<String>,
    pub card_code: Option<String>,
    pub card_name: Option<String>,
    pub card_mask: Option<String>,
    pub bank_code: Option<String>,
    pub bank_name: Option<String>,
    pub bank_mask: Option<String>,
    pub bank_account_type: Option<String>,
    pub payer_name: Option<String>,
    pub payer_phone_mask: Option<String>,
    pub is_tax: Option<String>,
    pub result_code: Option<String>,
    pub result_msg: Option<String>,
    pub attempts: i64,
    pub checked_at: String,
}

/// Rows per status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts {
    pub active: i64,
    pub gone: i64,
    pub failed: i64,
    pub rejected: i64,
}

impl StatusCounts {
    pub fn total(&self) -> i64 {
        self.active + self.gone + self.failed + self.rejected
    }

    pub fn get(&self, status: KeyStatus) -> i64 {
        match status {
            KeyStatus::Active => self.active,
            KeyStatus::Gone => self.gone,
            KeyStatus::Failed => self.failed,
            KeyStatus::Rejected => self.rejected,
        }
    }

    pub fn add(&mut self, status: KeyStatus, n: i64) {
        match status {
            KeyStatus::Active => self.active += n,
            KeyStatus::Gone => self.gone += n,
            KeyStatus::Failed => self.failed += n,
            KeyStatus::Rejected => self.rejected += n,
        }
    }
}

/// The current time as stored: UTC, RFC 3339, milliseconds.
pub fn now_text() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

const CHECK_COLUMNS: &str = "run_id, payer_id, customer_ref, status, pay_type, card_code, \
    card_name, card_mask, bank_code, bank_name, bank_mask, bank_account_type, payer_name, \
    payer_phone_mask, is_tax, result_code, result_msg, attempts, checked_at";
const CHECK_COLUMN_COUNT: usize = 19;
const RUN_COLUMNS: &str = "id, run_key, started_at, finished_at, source, source_spec, options, \
    state, shard_count, keys_total, duplicates, active_count, gone_count, failed_count, \
    rejected_count, auth_calls, lookups, exit_code";
/// Rows per multi-row statement: well under SQLite's 32,766 bind parameters.
pub const MAX_ROWS_PER_STATEMENT: usize = 1000;

/// The results database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
}

impl Store {
    /// Connects (creating a SQLite file if missing) and applies the migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let store = Self::connect(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects without migrating.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::from_url(url)?;
        let mut url = url.to_owned();
        let mut options = AnyPoolOptions::new()
            .acquire_timeout(Duration::from_secs(30))
            // SQLite has one writer anyway: the writer, a page reader and the heartbeat.
            .max_connections(if dialect == Dialect::Sqlite { 3 } else { 8 });
        if dialect == Dialect::Sqlite {
            if !url.contains("mode=") && !url.contains(":memory:") {
                url.push(if url.contains('?') { '&' } else { '?' });
                url.push_str("mode=rwc");
            }
            options = options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    use sqlx::Executor;
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA busy_timeout = 30000").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    // Memory stays flat however many keys a run holds: 1 MiB of page
                    // cache per connection, and SQLite as a whole recycles its memory
                    // above 3 MiB (measured: peak RSS grew 1.37x from 10,000 to
                    // 1,000,000 keys without the limit).
                    conn.execute("PRAGMA cache_size = -1024").await?;
                    conn.execute("PRAGMA soft_heap_limit = 3145728").await?;
                    Ok(())
                })
            });
        }
        let pool = options
            .connect(&url)
            .await
            .map_err(|source| StoreError::Connect {
                dialect: dialect.name(),
                source,
            })?;
        Ok(Self { pool, dialect })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Applies the embedded migrations of this dialect.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = match self.dialect {
            Dialect::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            Dialect::Postgres => sqlx::migrate!("./migrations/postgres"),
            Dialect::MySql => sqlx::migrate!("./migrations/mysql"),
        };
        migrator
            .run(&self.pool)
            .await
            .map_err(|source| StoreError::Migrate {
                dialect: self.dialect.name(),
                source,
            })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn sql(&self, sql: &str) -> AssertSqlSafe<String> {
        AssertSqlSafe(self.dialect.rewrite(sql))
    }

    // ---- runs -------------------------------------------------------------------------

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
            .bind(now_text())
            .bind(new.source.clone())
            .bind(new.source_spec.clone())
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

    pub async fn set_exit_code(&self, run_id: i64, code: i32) -> Result<(), StoreError> {
        sqlx::query(self.sql("UPDATE reconcile_runs SET exit_code = ? WHERE id = ?"))
            .bind(i64::from(code))
            .bind(run_id)
            .execute(&self.pool)
            .await
            .map_err(ctx("recording the exit code"))?;
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

    /// Recounts a run's rows and records the outcome of one shard; the run is `completed`
    /// once every shard is.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish_shard(
        &self,
        run_id: i64,
        shard_index: u32,
        state: RunState,
        auth_calls: u64,
        lookups: u64,
        exit_code: i32,
        error: Option<String>,
    ) -> Result<RunRecord, StoreError> {
        let now = now_text();
        // One transaction, with the run row locked before the shards are read: shards that
        // finish at the same moment are serialized, and the last one sees every other.
        let lock = if self.dialect == Dialect::Sqlite {
            ""
        } else {
            " FOR UPDATE"
        };
        let mut tx = self.pool.begin().await.map_err(ctx("finishing a shard"))?;
        sqlx::query(self.sql(
            "UPDATE run_shards SET state = ?, finished_at = ?, auth_calls = auth_calls + ?, \
             lookups = lookups + ? WHERE run_id = ? AND shard_index = ?",
        ))
        .bind(state.as_str())
        .bind(now.clone())
        .bind(to_i64(auth_calls))
        .bind(to_i64(lookups))
        .bind(run_id)
        .bind(i64::from(shard_index))
        .execute(&mut *tx)
        .await
        .map_err(ctx("finishing a shard"))?;
        let shard_count: i64 = sqlx::query_scalar(self.sql(&format!(
            "SELECT shard_count FROM reconcile_runs WHERE id = ?{lock}"
        )))
        .bind(run_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(ctx("finishing a run"))?
        .ok_or(StoreError::NoSuchRun(run_id))?;
        let shards = sqlx::query(self.sql(&format!(
            "SELECT state, keys_total, duplicates, auth_calls, lookups FROM run_shards \
             WHERE run_id = ?{lock}"
        )))
        .bind(run_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(ctx("reading shards"))?;
        let mut completed = 0i64;
        let (mut keys, mut dups, mut auths, mut looks) = (Some(0i64), 0i64, 0i64, 0i64);
        for row in &shards {
            let shard_state: String = row.try_get(0).map_err(ctx("reading shards"))?;
            completed += i64::from(RunState::parse(&shard_state) == RunState::Completed);
            let total: Option<i64> = row.try_get(1).map_err(ctx("reading shards"))?;
            keys = keys.zip(total).map(|(a, b)| a + b);
            dups += row.try_get::<i64, _>(2).map_err(ctx("reading shards"))?;
            auths += row.try_get::<i64, _>(3).map_err(ctx("reading shards"))?;
            looks += row.try_get::<i64, _>(4).map_err(ctx("reading shards"))?;
        }
        let counts = self.count_statuses(&mut *tx, run_id).await?;
        let run_state = if completed == shard_count {
            RunState::Completed
        } else if state == RunState::Completed {
            RunState::Running
        } else {
            state
        };
        sqlx::query(self.sql(
            "UPDATE reconcile_runs SET state = ?, finished_at = ?, keys_total = ?, \
             duplicates = ?, active_count = ?, gone_count = ?, failed_count = ?, \
             rejected_count = ?, auth_calls = ?, lookups = ?, exit_code = ?, error = ? \
             WHERE id = ?",
        ))
        .bind(run_state.as_str())
        .bind((run_state != RunState::Running).then_some(now))
        .bind(keys.filter(|_| shards.len() as i64 == shard_count))
        .bind(dups)
        .bind(counts.active)
        .bind(counts.gone)
        .bind(counts.failed)
        .bind(counts.rejected)
        .bind(auths)
        .bind(looks)
        .bind(i64::from(exit_code))
        .bind(error)
        .bind(run_id)
        .execute(&mut *tx)
        .await
        .map_err(ctx("finishing a run"))?;
        tx.commit().await.map_err(ctx("finishing a run"))?;
        self.run(run_id).await?.ok_or(StoreError::NoSuchRun(run_id))
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

    // ---- shards and staging -----------------------------------------------------------

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
            .bind(now_text())
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

    /// Adds keys to a run's list; keys already on it are left alone (duplicates, and
    /// re-staging after a crash).
    pub async fn stage_keys(
        &self,
        run_id: i64,
        shard_index: u32,
        keys: &[StagedKey],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(ctx("staging keys"))?;
        for chunk in keys.chunks(MAX_ROWS_PER_STATEMENT) {
            let values = vec!["(?, ?, ?, ?, ?)"; chunk.len()].join(", ");
            let sql = self.dialect.insert_ignoring(
                "run_keys (run_id, shard_index, seq, payer_id, customer_ref)",
                &values,
                "run_id, payer_id",
            );
            // Not cached: every batch size is a different statement, and a cache of
            // large multi-row statements grows with the run.
            let mut query = sqlx::query(self.sql(&sql)).persistent(false);
            for key in chunk {
                query = query
                    .bind(run_id)
                    .bind(i64::from(shard_index))
                    .bind(key.seq)
                    .bind(key.payer_id.clone())
                    .bind(key.customer_ref.clone());
            }
            query.execute(&mut *tx).await.map_err(ctx("staging keys"))?;
        }
        tx.commit().await.map_err(ctx("staging keys"))
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
    pub async fn pending_keys(
        &self,
        run_id: i64,
        shard_index: u32,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<StagedKey>, StoreError> {
        let rows = sqlx::query(self.sql(
            "SELECT k.seq, k.payer_id, k.customer_ref FROM run_keys k \
             WHERE k.run_id = ? AND k.shard_index = ? AND k.seq > ? \
             AND NOT EXISTS (SELECT 1 FROM billing_key_checks c \
                             WHERE c.run_id = k.run_id AND c.payer_id = k.payer_id) \
             ORDER BY k.seq LIMIT ?",
        ))
        .bind(run_id)
        .bind(i64::from(shard_index))
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(ctx("reading pending keys"))?;
        rows.iter()
            .map(|r| {
                Ok(StagedKey {
                    seq: r.try_get(0)?,
                    payer_id: r.try_get(1)?,
                    customer_ref: r.try_get(2)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(ctx("reading pending keys"))
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

    // ---- results ----------------------------------------------------------------------

    /// Writes result rows in one transaction; a row already present is kept as it is.
    pub async fn insert_checks(&self, run_id: i64, rows: &[CheckRow]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(ctx("writing results"))?;
        for chunk in rows.chunks(MAX_ROWS_PER_STATEMENT) {
            let one = format!("({})", vec!["?"; CHECK_COLUMN_COUNT].join(", "));
            let values = vec![one.as_str(); chunk.len()].join(", ");
            let sql = self.dialect.insert_ignoring(
                &format!("billing_key_checks ({CHECK_COLUMNS})"),
                &values,
                "run_id, payer_id",
            );
            let mut query = sqlx::query(self.sql(&sql)).persistent(false);
            for row in chunk {
                let o = &row.outcome;
                let d = &o.details;
                query = query
                    .bind(run_id)
                    .bind(row.payer_id.clone())
                    .bind(row.customer_ref.clone())
                    .bind(o.status.as_str())
                    .bind(d.pay_type.map(|p| p.as_str()))
                    .bind(d.card_code.clone())
                    .bind(d.card_name.clone())
                    .bind(d.card_mask.clone())
                    .bind(d.bank_code.clone())
                    .bind(d.bank_name.clone())
                    .bind(d.bank_mask.clone())
                    .bind(d.bank_account_type.clone())
                    .bind(d.payer_name.clone())
                    .bind(d.payer_phone_mask.clone())
                    .bind(d.is_tax.clone())
                    .bind(o.result_code.clone())
                    .bind(o.result_msg.clone())
                    .bind(i64::from(o.attempts))
                    .bind(row.checked_at.clone());
            }
            query
                .execute(&mut *tx)
                .await
                .map_err(ctx("writing results"))?;
        }
        tx.commit().await.map_err(ctx("writing results"))
    }

    /// Result rows per status of a run.
    pub async fn status_counts(&self, run_id: i64) -> Result<StatusCounts, StoreError> {
        self.count_statuses(&self.pool, run_id).await
    }

    async fn count_statuses<'e>(
        &self,
        executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
        run_id: i64,
    ) -> Result<StatusCounts, StoreError> {
        let rows = sqlx::query(self.sql(
            "SELECT status, COUNT(*) FROM billing_key_checks WHERE run_id = ? GROUP BY status",
        ))
        .bind(run_id)
        .fetch_all(executor)
        .await
        .map_err(ctx("counting results"))?;
        let mut counts = StatusCounts::default();
        for row in rows {
            let status: String = row.try_get(0).map_err(ctx("counting results"))?;
            let n: i64 = row.try_get(1).map_err(ctx("counting results"))?;
            if let Some(status) = KeyStatus::parse(&status) {
                counts.add(status, n);
            }
        }
        Ok(counts)
    }

    /// A page of a run's result rows ordered by payer id, after `after_payer_id`,
    /// optionally only some statuses.
    pub async fn checks_page(
        &self,
        run_id: i64,
        after_payer_id: &str,
        statuses: &[KeyStatus],
        limit: i64,
    ) -> Result<Vec<CheckRecord>, StoreError> {
        self.checks_range(run_id, after_payer_id, None, statuses, limit)
            .await
    }

    /// One key's result row in a run.
    pub async fn check(
        &self,
        run_id: i64,
        payer_id: &str,
    ) -> Result<Option<CheckRecord>, StoreError> {
        let sql = format!(
            "SELECT {CHECK_COLUMNS} FROM billing_key_checks WHERE run_id = ? AND payer_id = ?"
        );
        let row = sqlx::query(self.sql(&sql))
            .bind(run_id)
            .bind(payer_id.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(ctx("reading a result"))?;
        row.as_ref()
            .map(check_record)
            .transpose()
            .map_err(ctx("reading a result"))
    }

    // ---- leases -----------------------------------------------------------------------

    /// Takes the named lease for `ttl`, unless a live holder has it.
    pub async fn acquire_lease(
        &self,
        name: &str,
        run_id: i64,
        holder: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = chrono::Utc::now();
        let now_s = fmt_time(now);
        let expires = fmt_time(now + chrono::Duration::from_std(ttl).unwrap_or_default());
        let insert = self.dialect.insert_ignoring(
            "run_leases (name, run_id, holder, heartbeat_at, expires_at)",
            "(?, ?, ?, ?, ?)",
            "name",
        );
        // Whether the insert took the lease cannot be read from rows_affected: MySQL's
        // ON DUPLICATE KEY UPDATE reports 1 for an untouched row (CLIENT_FOUND_ROWS).
        sqlx::query(self.sql(&insert))
            .bind(name.to_owned())
            .bind(run_id)
            .bind(holder.to_owned())
            .bind(now_s.clone())
            .bind(expires.clone())
            .execute(&self.pool)
            .await
            .map_err(ctx("taking the run lease"))?;
        // Take over an expired lease.
        sqlx::query(self.sql(
            "UPDATE run_leases SET run_id = ?, holder = ?, heartbeat_at = ?, expires_at = ? \
             WHERE name = ? AND expires_at < ?",
        ))
        .bind(run_id)
        .bind(holder.to_owned())
        .bind(now_s.clone())
        .bind(expires)
        .bind(name.to_owned())
        .bind(now_s)
        .execute(&self.pool)
        .await
        .map_err(ctx("taking the run lease"))?;
        let row = sqlx::query(
            self.sql("SELECT run_id, holder, expires_at FROM run_leases WHERE name = ?"),
        )
        .bind(name.to_owned())
        .fetch_one(&self.pool)
        .await
        .map_err(ctx("reading the run lease"))?;
        let read = ctx("reading the run lease");
        let current: String = row.try_get(1).map_err(ctx("reading the run lease"))?;
        if current == holder {
            return Ok(());
        }
        Err(StoreError::LeaseHeld {
            name: name.to_owned(),
            run_id: row.try_get(0).map_err(read)?,
            holder: row.try_get(1).map_err(ctx("reading the run lease"))?,
            expires_at: row.try_get(2).map_err(ctx("reading the run lease"))?,
        })
    }

    /// The lease row `name`, if any.
    pub async fn lease(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        let row =
            sqlx::query(self.sql(
                "SELECT run_id, holder, heartbeat_at, expires_at FROM run_leases WHERE name = ?",
            ))
            .bind(name.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(ctx("reading the run lease"))?;
        row.map(|r| {
            Ok(Lease {
                run_id: r.try_get(0)?,
                holder: r.try_get(1)?,
                heartbeat_at: r.try_get(2)?,
                expires_at: r.try_get(3)?,
            })
        })
        .transpose()
        .map_err(ctx("reading the run lease"))
    }

    /// Takes the lease from `previous`, a holder known to be dead; false if it changed.
    pub async fn take_over_lease(
        &self,
        name: &str,
        previous: &str,
        run_id: i64,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = chrono::Utc::now();
        let expires = fmt_time(now + chrono::Duration::from_std(ttl).unwrap_or_default());
        let n = sqlx::query(self.sql(
            "UPDATE run_leases SET run_id = ?, holder = ?, heartbeat_at = ?, expires_at = ? \
             WHERE name = ? AND holder = ?",
        ))
        .bind(run_id)
        .bind(holder.to_owned())
        .bind(fmt_time(now))
        .bind(expires)
        .bind(name.to_owned())
        .bind(previous.to_owned())
        .execute(&self.pool)
        .await
        .map_err(ctx("taking the run lease over"))?
        .rows_affected();
        Ok(n > 0)
    }

    /// Names the run a lease protects, once it has an id.
    pub async fn set_lease_run(
        &self,
        name: &str,
        holder: &str,
        run_id: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(self.sql("UPDATE run_leases SET run_id = ? WHERE name = ? AND holder = ?"))
            .bind(run_id)
            .bind(name.to_owned())
            .bind(holder.to_owned())
            .execute(&self.pool)
            .await
            .map_err(ctx("recording the lease's run"))?;
        Ok(())
    }

    /// Extends the lease while the run is alive.
    pub async fn renew_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = chrono::Utc::now();
        let expires = fmt_time(now + chrono::Duration::from_std(ttl).unwrap_or_default());
        let n = sqlx::query(self.sql(
            "UPDATE run_leases SET heartbeat_at = ?, expires_at = ? WHERE name = ? AND holder = ?",
        ))
        .bind(fmt_time(now))
        .bind(expires)
        .bind(name.to_owned())
        .bind(holder.to_owned())
        .execute(&self.pool)
        .await
        .map_err(ctx("renewing the run lease"))?
        .rows_affected();
        Ok(n > 0)
    }

    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query(self.sql("DELETE FROM run_leases WHERE name = ? AND holder = ?"))
            .bind(name.to_owned())
            .bind(holder.to_owned())
            .execute(&self.pool)
            .await
            .map_err(ctx("releasing the run lease"))?;
        Ok(())
    }
}

/// Runs an idempotent database step again after a failure (a dropped connection, a
/// restarted server), up to six attempts over about ten seconds.
pub async fn retrying<T, F, Fut>(mut step: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match step().await {
            Ok(value) => return Ok(value),
            Err(e) if attempt >= 6 || !e.is_transient() => return Err(e),
            Err(e) => {
                tracing::warn!(attempt, error = %e, ?delay, "database step failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
        }
    }
}

fn fmt_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn run_record(row: &AnyRow) -> Result<RunRecord, StoreError> {
    let read = || -> Result<RunRecord, sqlx::Error> {
        Ok(RunRecord {
            id: row.try_get(0)?,
            run_key: row.try_get(1)?,
            started_at: row.try_get(2)?,
            finished_at: row.try_get(3)?,
            source: row.try_get(4)?,
            source_spec: row.try_get(5)?,
            options: row.try_get(6)?,
            state: RunState::parse(&row.try_get::<String, _>(7)?),
            shard_count: u32::try_from(row.try_get::<i64, _>(8)?).unwrap_or(1),
            keys_total: row.try_get(9)?,
            duplicates: row.try_get(10)?,
            counts: StatusCounts {
                active: row.try_get(11)?,
                gone: row.try_get(12)?,
                failed: row.try_get(13)?,
                rejected: row.try_get(14)?,
            },
            auth_calls: row.try_get(15)?,
            lookups: row.try_get(16)?,
            exit_code: row.try_get(17)?,
        })
    };
    read().map_err(ctx("reading a run"))
}

fn check_record(row: &AnyRow) -> Result<CheckRecord, sqlx::Error> {
    Ok(CheckRecord {
        run_id: row.try_get(0)?,
        payer_id: row.try_get(1)?,
        customer_ref: row.try_get(2)?,
        status: row.try_get(3)?,
        pay_type: row.try_get(4)?,
        card_code: row.try_get(5)?,
        card_name: row.try_get(6)?,
        card_mask: row.try_get(7)?,
        bank_code: row.try_get(8)?,
        bank_name: row.try_get(9)?,
        bank_mask: row.try_get(10)?,
        bank_account_type: row.try_get(11)?,
        payer_name: row.try_get(12)?,
        payer_phone_mask: row.try_get(13)?,
        is_tax: row.try_get(14)?,
        result_code: row.try_get(15)?,
        result_msg: row.try_get(16)?,
        attempts: row.try_get(17)?,
        checked_at: row.try_get(18)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_rewritten_for_postgres_only() {
        assert_eq!(
            Dialect::Postgres.rewrite("a = ? AND b IN (?, ?)"),
            "a = $1 AND b IN ($2, $3)"
        );
        assert_eq!(Dialect::Sqlite.rewrite("a = ?"), "a = ?");
    }

    #[test]
    fn dialects_from_urls() {
        assert_eq!(Dialect::from_url("sqlite://x.db").unwrap(), Dialect::Sqlite);
        assert_eq!(
            Dialect::from_url("postgres://localhost/test").unwrap(),
            Dialect::Postgres
        );
        assert_eq!(Dialect::from_url("mariadb://x").unwrap(), Dialect::MySql);
        assert!(Dialect::from_url("oracle://x").is_err());
    }

    #[test]
    fn upserts_per_dialect() {
        assert!(
            Dialect::MySql
                .insert_ignoring("t (a, b)", "(?, ?)", "a, b")
                .ends_with("ON DUPLICATE KEY UPDATE a = a")
        );
        assert!(
            Dialect::Sqlite
                .insert_ignoring("t (a, b)", "(?, ?)", "a, b")
                .ends_with("ON CONFLICT (a, b) DO NOTHING")
        );
    }
}
