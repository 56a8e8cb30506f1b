//! What can go wrong with the results database ([`StoreError`]), which failures are
//! transient, and [`retrying`] an idempotent step after one.

use std::time::Duration;

use crate::sql_errors::is_unreachable;

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
    #[error(
        "migration {version} of the {dialect} results schema is marked unfinished: a process \
         stopped part-way through it, and the schema may be half-changed; restore the database \
         from its backup (docs/safety.md)"
    )]
    MigrationUnfinished { dialect: &'static str, version: i64 },
    #[error("cannot take the migration lock: {0}")]
    MigrationLock(String),
    #[error("the SQLite results file {path} {problem}")]
    UnsafeFile { path: String, problem: String },
    #[error(
        "the SQLite results file {path} {what} while the run was writing to it: the results \
         written since went to a file no path reaches; restore the file and run again with \
         --resume, or start the run again"
    )]
    FileVanished { path: String, what: String },
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
        "another run holds the lease {name:?}: run {run_id} ({holder}), alive until {}",
        super::time::time_text(*.expires_at)
    )]
    LeaseHeld {
        name: String,
        run_id: i64,
        holder: String,
        expires_at: chrono::DateTime<chrono::Utc>,
    },
}

impl StoreError {
    /// Whether trying again may help: connection trouble, not a wrong query or a
    /// constraint.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Query { source, .. } | Self::Connect { source, .. } => {
                is_unreachable(source)
                    || matches!(source, sqlx::Error::Database(db) if db.code().is_some_and(|c| {
                        // PostgreSQL admin shutdown, connection failure, too many connections;
                        // MySQL server gone away; a deadlock or serialization failure, whose
                        // transaction the server rolled back whole (two shards finishing at once).
                        c.starts_with("57P") || c.starts_with("08") || c == "53300"
                        || c == "2006" || c == "2013"
                        || c == "40001" || c == "40P01" || c == "1213"
                    }))
            }
            _ => false,
        }
    }
}

/// Attaches what was being done to a sqlx error.
pub(super) fn ctx(doing: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { doing, source }
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
