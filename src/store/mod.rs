//! The results store: runs, the keys a run set out to check, one result row per key, and
//! the lease that keeps runs from overlapping, on SQLite, PostgreSQL or MySQL/MariaDB.
//!
//! # Architecture
//! One [`sqlx::AnyPool`] with plain column types (text, integers; times as UTC RFC 3339
//! text, which sorts correctly). SQL is written once with `?` placeholders and rewritten to
//! `$n` for PostgreSQL; only upserts and id retrieval differ per [`Dialect`]. Schemas are
//! embedded migrations, one folder per dialect.
//!
//! This file holds the types, the connection and the shared helpers; the queries live by
//! subject in `runs` (runs, shards, staging), `checks` (result rows), `leases`, `reports`
//! (what the finance reports read), `recheck` (failed keys made pending again), `coverage`
//! (budgeted runs' priority queue, latest results across partial runs, coverage) and
//! `writer` (the single batching writer).

mod checks;
mod coverage;
mod leases;
mod recheck;
pub mod reports;
mod runs;
pub mod writer;

pub use checks::PackedRow;
pub use coverage::{Coverage, LatestRecord};
pub use recheck::{FailedCode, FailedSelection};
pub use runs::Staging;

use std::time::Duration;

use std::str::FromStr;

use sqlx::ConnectOptions;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Row};

use crate::domain::{KeyDetails, KeyStatus, LookupOutcome, PayType};

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
    #[error("the {dialect} results database does not take writes (read-only?): {source}")]
    ReadOnly {
        dialect: &'static str,
        #[source]
        source: sqlx::Error,
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
    /// Lookups already spent on the key in this run before its result row was removed for
    /// a re-check (0 otherwise); its next row's attempts add to them. Not written by
    /// staging.
    pub prior_attempts: u32,
}

impl StagedKey {
    /// A row selected as `seq, payer_id, customer_ref, prior_attempts`.
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self::from_columns(
            r.try_get(0)?,
            r.try_get(1)?,
            r.try_get(2)?,
            r.try_get(3)?,
        ))
    }

    /// The key from its stored columns, however they were read (rows, or SQLite's JSON
    /// page); a `prior_attempts` out of range counts as none.
    pub(crate) fn from_columns(
        seq: i64,
        payer_id: String,
        customer_ref: Option<String>,
        prior_attempts: i64,
    ) -> Self {
        Self {
            seq,
            payer_id,
            customer_ref,
            prior_attempts: u32::try_from(prior_attempts).unwrap_or(0),
        }
    }
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRecord {
    pub run_id: i64,
    pub payer_id: String,
    pub customer_ref: Option<String>,
    pub status: KeyStatus,
    pub details: KeyDetails,
    pub result_code: Option<String>,
    pub result_msg: Option<String>,
    pub attempts: i64,
    pub checked_at: String,
}

impl Default for CheckRecord {
    /// An empty `failed` row: a base for building rows field by field.
    fn default() -> Self {
        Self {
            run_id: 0,
            payer_id: String::new(),
            customer_ref: None,
            status: KeyStatus::Failed,
            details: KeyDetails::default(),
            result_code: None,
            result_msg: None,
            attempts: 0,
            checked_at: String::new(),
        }
    }
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
    // `%Y-%m-%dT%H:%M:%S%.3fZ`, without parsing a format string for every result row.
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
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
    /// Connects (creating a SQLite file if missing), applies the migrations, and checks
    /// that the database takes writes: a read-only one is a configuration error found
    /// before any lookup, not a failure at the first result.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let store = Self::connect(url).await?;
        store.migrate_serialised().await?;
        store.check_writable().await?;
        Ok(store)
    }

    /// Applies the migrations. Two processes starting on a new SQLite file at once race
    /// (SQLite has no migration lock): each migration is one transaction, so the loser's
    /// fails whole, and trying again finds it applied.
    async fn migrate_serialised(&self) -> Result<(), StoreError> {
        let mut attempt = 1;
        loop {
            match self.migrate().await {
                Err(e) if self.dialect == Dialect::Sqlite && attempt < MIGRATE_ATTEMPTS => {
                    tracing::debug!(attempt, error = %e, "migrations raced another process; again");
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// A write that changes nothing: refused by a read-only file, connection or server.
    async fn check_writable(&self) -> Result<(), StoreError> {
        sqlx::query("UPDATE run_leases SET name = name WHERE 1 = 0")
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(|source| StoreError::ReadOnly {
                dialect: self.dialect.name(),
                source,
            })
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
                    // A new file gets 32 KiB pages; a file that already has pages keeps
                    // its size (SQLite ignores the pragma then). At a million random keys
                    // each result batch touches most pages of the key indexes: with 4 KiB
                    // pages that was ~17,000 pages a batch, each read, written to the WAL
                    // and checkpointed by its own system calls: 28,700-30,300 lookups/s
                    // with 17-19 s of system CPU; with 32 KiB pages, 33,500-35,700 with
                    // 13-14 s (README, Performance). Set first: it must precede the first
                    // write.
                    conn.execute("PRAGMA page_size = 32768").await?;
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA busy_timeout = 30000").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    // Memory stays bounded however many keys a run holds: 6 MiB of page
                    // cache per connection (measured at 1,000,000 keys: 16 MiB gave an
                    // 82 MiB peak RSS, the pool's connections each filling theirs; 8 MiB
                    // with 32 KiB pages up to 63 MiB), and a 16 MiB process-wide soft
                    // limit. Bounded, not minimal: with 1 MiB (and a 3 MiB limit) a
                    // 500-row batch, which dirties ~1,000 index pages, spilled to the WAL
                    // mid-transaction and re-read its B-tree pages through the kernel,
                    // ~20 pread/pwrite calls per lookup (perf: pagerStress, subjournal
                    // writes, readDbPage).
                    conn.execute("PRAGMA cache_size = -6144").await?;
                    conn.execute("PRAGMA soft_heap_limit = 16777216").await?;
                    // Checkpoint every 16 MiB of WAL (on disk) rather than 4 MiB: an index
                    // page written by several batches in between is copied to the
                    // database once. In pages of the file's own size.
                    let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
                        .fetch_one(&mut *conn)
                        .await?;
                    let pages = WAL_CHECKPOINT_BYTES / page_size.max(512);
                    // A number computed here, not input: nothing to escape.
                    let checkpoint = format!("PRAGMA wal_autocheckpoint = {pages}");
                    sqlx::query(AssertSqlSafe(checkpoint))
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            });
        }
        let connect_error = |source| StoreError::Connect {
            dialect: dialect.name(),
            source,
        };
        // A million-row count takes seconds and is expected: sqlx's "slow statement"
        // warnings would only be noise on a healthy night, so they go to debug.
        let connect_options = AnyConnectOptions::from_str(&url)
            .map_err(connect_error)?
            .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1));
        if dialect == Dialect::Sqlite {
            create_private_sqlite_file(&url).map_err(connect_error)?;
        }
        // A server that refuses connections is reported within seconds: sqlx would keep
        // trying for the whole acquire timeout.
        let pool = tokio::time::timeout(
            CONNECT_TIMEOUT,
            options.connect_with(connect_options.clone()),
        )
        .await;
        match pool {
            Ok(Ok(pool)) => Ok(Self { pool, dialect }),
            Ok(Err(sqlx::Error::PoolTimedOut)) | Err(_) => {
                Err(connect_error(why_no_connection(&connect_options).await))
            }
            Ok(Err(e)) => Err(connect_error(e)),
        }
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
            Dialect::Sqlite => sqlx_macros::migrate!("./migrations/sqlite"),
            Dialect::Postgres => sqlx_macros::migrate!("./migrations/postgres"),
            Dialect::MySql => sqlx_macros::migrate!("./migrations/mysql"),
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
}

/// Tries at applying migrations that raced another process.
const MIGRATE_ATTEMPTS: u32 = 5;

/// How long connecting to a database may take before the command gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How much WAL a SQLite file gathers before it is checkpointed.
const WAL_CHECKPOINT_BYTES: i64 = 16 * 1024 * 1024;

/// Why connecting timed out: one direct attempt, whose error names the cause (connection
/// refused, unknown host, authentication) where the pool only says it timed out.
async fn why_no_connection(options: &AnyConnectOptions) -> sqlx::Error {
    use sqlx::Connection;
    let attempt = sqlx::AnyConnection::connect_with(options);
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Err(e)) => e,
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            sqlx::Error::PoolTimedOut
        }
        Err(_) => sqlx::Error::Configuration(
            format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()).into(),
        ),
    }
}

/// Creates a missing SQLite database file readable by its owner only (0600), before SQLite
/// creates it with the umask's mode; SQLite gives its `-wal` and `-shm` files the mode of
/// the database file. An existing file and a read-only URL are left alone.
fn create_private_sqlite_file(url: &str) -> Result<(), sqlx::Error> {
    if url.contains(":memory:") || url.contains("mode=ro") || url.contains("mode=memory") {
        return Ok(());
    }
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?;
    let path = options.get_filename();
    if path.as_os_str().is_empty() || path.exists() {
        return Ok(());
    }
    match crate::private_file::create(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(sqlx::Error::Io(e)),
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
    let status: String = row.try_get(3)?;
    let status = KeyStatus::parse(&status).ok_or_else(|| unknown_value(3, "status", &status))?;
    let pay_type: Option<String> = row.try_get(4)?;
    let pay_type = match pay_type.as_deref() {
        None => None,
        Some(name) => Some(PayType::parse(name).ok_or_else(|| unknown_value(4, "pay_type", name))?),
    };
    Ok(CheckRecord {
        run_id: row.try_get(0)?,
        payer_id: row.try_get(1)?,
        customer_ref: row.try_get(2)?,
        status,
        details: KeyDetails {
            pay_type,
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
        },
        result_code: row.try_get(15)?,
        result_msg: row.try_get(16)?,
        attempts: row.try_get(17)?,
        checked_at: row.try_get(18)?,
    })
}

/// A stored value this version does not know.
fn unknown_value(index: usize, column: &str, value: &str) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: format!("{index} ({column})"),
        source: format!("unknown {column} {value:?}").into(),
    }
}

/// Rows as one JSON array, for SQLite's `jsonb_each` inserts.
fn json_rows<T: serde::Serialize>(rows: &[T], doing: &'static str) -> Result<String, StoreError> {
    serde_json::to_string(rows).map_err(|e| StoreError::Query {
        doing,
        source: sqlx::Error::Encode(Box::new(e)),
    })
}

/// For unit tests: a new SQLite file in a temporary folder, migrated, with one run.
#[cfg(test)]
pub(crate) async fn sqlite_with_run() -> (tempfile::TempDir, Store, i64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("r.db").display());
    let store = Store::open(&url).await.expect("open");
    let run_id = store
        .create_or_join_run(&NewRun {
            run_key: None,
            source: "test".to_owned(),
            source_spec: "{}".to_owned(),
            options: "{}".to_owned(),
            shard_count: 1,
        })
        .await
        .expect("run");
    (dir, store, run_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pragma(store: &Store, name: &str) -> i64 {
        sqlx::query_scalar(AssertSqlSafe(format!("PRAGMA {name}")))
            .fetch_one(store.pool())
            .await
            .expect("pragma")
    }

    #[tokio::test]
    async fn a_new_sqlite_file_gets_32_kib_pages_checkpointed_every_16_mib() {
        let (_dir, store, _run) = sqlite_with_run().await;
        assert_eq!(pragma(&store, "page_size").await, 32 * 1024);
        assert_eq!(pragma(&store, "wal_autocheckpoint").await, 512);
    }

    #[tokio::test]
    async fn a_sqlite_file_with_4_kib_pages_keeps_them_and_checkpoints_every_16_mib() {
        use sqlx::{Connection, Executor};
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("old.db").display());
        let mut old = sqlx::AnyConnection::connect(&url).await.expect("connect");
        old.execute("PRAGMA page_size = 4096")
            .await
            .expect("page size");
        old.execute("CREATE TABLE kept (x INTEGER)")
            .await
            .expect("table");
        old.close().await.expect("close");

        let store = Store::open(&url).await.expect("open");
        assert_eq!(pragma(&store, "page_size").await, 4096);
        assert_eq!(pragma(&store, "wal_autocheckpoint").await, 4096);
    }

    #[test]
    fn times_are_stored_as_utc_rfc_3339_with_milliseconds() {
        let text = now_text();
        let parsed = chrono::NaiveDateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S%.3fZ")
            .expect("the stored format");
        assert_eq!(parsed.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(), text);
        assert_eq!(text.len(), "2026-11-28T09:00:00.123Z".len(), "{text}");
    }

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

    #[tokio::test]
    async fn unknown_statuses_are_not_read() {
        let (_dir, store, run_id) = sqlite_with_run().await;
        let rejected = CheckRow {
            payer_id: crate::domain::rejected_placeholder(3),
            customer_ref: None,
            outcome: LookupOutcome::rejected(
                &crate::domain::RejectReason::Empty,
                "line 3".to_owned(),
            ),
            checked_at: now_text(),
        };
        store
            .insert_checks(run_id, &[rejected])
            .await
            .expect("insert");
        let rows = store.checks_page(run_id, "", &[], 10).await.expect("read");
        assert_eq!(rows[0].status, KeyStatus::Rejected);
        assert_eq!(rows[0].payer_id, "#3 rejected");
        assert!(crate::domain::is_rejected_placeholder(
            rows[0].status,
            &rows[0].payer_id
        ));

        sqlx::query("UPDATE billing_key_checks SET status = 'paused'")
            .execute(store.pool())
            .await
            .expect("update");
        let err = store
            .checks_page(run_id, "", &[], 10)
            .await
            .expect_err("an unknown status is refused");
        assert!(err.to_string().contains("paused"), "{err}");
        store.close().await;
    }
}
