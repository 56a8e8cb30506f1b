//! The results database handle ([`Store`]): connecting (with the per-dialect pool and
//! SQLite tuning), migrating, and checking that the database takes writes.

use std::str::FromStr;
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, AssertSqlSafe};

use super::dialect::Dialect;
use super::error::StoreError;

/// The results database.
#[derive(Debug, Clone)]
pub struct Store {
    pub(super) pool: AnyPool,
    pub(super) dialect: Dialect,
    /// PostgreSQL and MySQL: the native pool of the bulk statements (`None` on SQLite).
    pub(super) native: Option<super::bulk::Native>,
    /// The SQLite file opened (`None` for a server or an in-memory database).
    file: Option<std::sync::Arc<super::presence::FileIdentity>>,
}

impl Store {
    /// Connects (creating a SQLite file if missing), applies the migrations, and checks
    /// that the database takes writes: a read-only one is a configuration error found
    /// before any lookup, not a failure at the first result.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_until(url, &tokio_util::sync::CancellationToken::new()).await
    }

    /// [`Self::open`], giving up waiting for another process's migrations when `stop` is
    /// cancelled.
    pub async fn open_until(
        url: &str,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Result<Self, StoreError> {
        let store = Self::connect(url).await?;
        if store.dialect == Dialect::MySql {
            super::open::with_mysql_migration_lock(&store.pool, stop, || store.migrate()).await?;
        } else {
            store.migrate_serialised().await?;
        }
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
            options = options.after_connect(|conn, _meta| Box::pin(tune_sqlite(conn)));
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
            super::open::prepare_sqlite_file(&url)?;
        }
        // A server that refuses connections is reported within seconds: sqlx would keep
        // trying for the whole acquire timeout.
        let pool = tokio::time::timeout(
            CONNECT_TIMEOUT,
            options.connect_with(connect_options.clone()),
        )
        .await;
        match pool {
            Ok(Ok(pool)) => {
                let file = match dialect {
                    Dialect::Sqlite => super::open::opened_file(&url)?.map(std::sync::Arc::new),
                    _ => None,
                };
                let native = super::bulk::Native::lazy(dialect, &url)?;
                Ok(Self {
                    pool,
                    dialect,
                    native,
                    file,
                })
            }
            Ok(Err(sqlx::Error::PoolTimedOut)) | Err(_) => {
                Err(connect_error(why_no_connection(&connect_options).await))
            }
            Ok(Err(e)) => Err(connect_error(e)),
        }
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// `Ok` while the SQLite file opened is still at its path (always for a server).
    pub fn check_file(&self) -> Result<(), StoreError> {
        self.file
            .as_deref()
            .map_or(Ok(()), super::presence::FileIdentity::check)
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
            .map_err(|source| super::open::migrate_error(self.dialect.name(), source))
    }

    pub async fn close(&self) {
        if let Some(native) = &self.native {
            native.close().await;
        }
        self.pool.close().await;
    }

    pub(super) fn sql(&self, sql: &str) -> AssertSqlSafe<String> {
        AssertSqlSafe(self.dialect.rewrite(sql))
    }
}

/// Tries at applying migrations that raced another process.
pub(super) const MIGRATE_ATTEMPTS: u32 = 5;

/// How long connecting to a database may take before the command gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How much WAL a SQLite file gathers before it is checkpointed.
pub(super) const WAL_CHECKPOINT_BYTES: i64 = 16 * 1024 * 1024;

/// SQLite's per-connection tuning: 32 KiB pages on a new file, WAL, a 6 MiB page cache and
/// a 16 MiB heap limit, a checkpoint every 16 MiB of WAL. Why these values: the measured
/// runs in docs/performance.md.
async fn tune_sqlite(conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
    use sqlx::Executor;
    // The page size must precede the first write; a file with pages keeps its size.
    conn.execute("PRAGMA page_size = 32768").await?;
    conn.execute("PRAGMA journal_mode = WAL").await?;
    conn.execute("PRAGMA busy_timeout = 30000").await?;
    conn.execute("PRAGMA synchronous = NORMAL").await?;
    conn.execute("PRAGMA cache_size = -6144").await?;
    conn.execute("PRAGMA soft_heap_limit = 16777216").await?;
    // The checkpoint interval is counted in pages of the file's own size.
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
}

/// Why connecting timed out: one direct attempt, whose error names the cause (connection
/// refused, unknown host, authentication) where the pool only says it timed out.
pub(super) async fn why_no_connection(options: &AnyConnectOptions) -> sqlx::Error {
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

/// For unit tests: a new SQLite file in a temporary folder, migrated, with one run.
#[cfg(test)]
pub(crate) async fn sqlite_with_run() -> (tempfile::TempDir, Store, i64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("r.db").display());
    let store = Store::open(&url).await.expect("open");
    let run_id = store
        .create_or_join_run(&super::records::NewRun {
            run_key: None,
            source: "test".to_owned(),
            source_spec: crate::source::SourceSpec::Query {
                sql: "SELECT 1".to_owned(),
            },
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
        // Made by another program under the umask: private before the job will use it.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.path().join("old.db"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");

        let store = Store::open(&url).await.expect("open");
        assert_eq!(pragma(&store, "page_size").await, 4096);
        assert_eq!(pragma(&store, "wal_autocheckpoint").await, 4096);
    }
}
