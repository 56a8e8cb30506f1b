//! Results databases for one test (a SQLite file, or a fresh PostgreSQL / MySQL database),
//! one test per database kind, and what a run leaves in the database.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use payple_reconcile::store::{CheckRecord, RunRecord, Store};
use sqlx::Row;

use super::sim::derived_status;

/// A results database that exists only for one test.
pub struct TestDb {
    pub url: String,
    pub kind: DbKind,
    /// Keeps a SQLite file's folder alive.
    _dir: Option<tempfile::TempDir>,
    admin: Option<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
    MySql,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        chrono::Utc::now().timestamp_micros() % 1_000_000
    )
}

impl TestDb {
    /// A SQLite file in a fresh temporary folder.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("results.db").display());
        Self {
            url,
            kind: DbKind::Sqlite,
            _dir: Some(dir),
            admin: None,
        }
    }

    /// A fresh database on the PostgreSQL server at 127.0.0.1:5432, or `None` (with the
    /// reason printed) when there is none and `REQUIRE_POSTGRES` is not `1`.
    pub async fn postgres() -> Option<Self> {
        let base = std::env::var("TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
        Self::server(DbKind::Postgres, &base, "postgres", "REQUIRE_POSTGRES").await
    }

    /// A fresh database on the MySQL/MariaDB server at 127.0.0.1:3306, or `None` like
    /// [`Self::postgres`] (`REQUIRE_MYSQL`).
    pub async fn mysql() -> Option<Self> {
        let base = std::env::var("TEST_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned());
        Self::server(DbKind::MySql, &base, "mysql", "REQUIRE_MYSQL").await
    }

    async fn server(kind: DbKind, base: &str, admin_db: &str, require: &str) -> Option<Self> {
        use sqlx::Executor;
        sqlx::any::install_default_drivers();
        let admin_url = format!("{base}/{admin_db}");
        let name = unique_name("pr_test");
        let created = async {
            let pool = sqlx::AnyPool::connect(&admin_url).await?;
            pool.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .await?;
            pool.close().await;
            Ok::<_, sqlx::Error>(())
        }
        .await;
        match created {
            Ok(()) => Some(Self {
                url: format!("{base}/{name}"),
                kind,
                _dir: None,
                admin: Some((admin_url, name)),
            }),
            Err(e) if std::env::var(require).as_deref() == Ok("1") => {
                panic!("{require}=1 but {kind:?} at {base} is not usable: {e}")
            }
            Err(e) => {
                eprintln!(
                    "skipping: no {kind:?} server at {base} ({e}); set {require}=1 to fail instead"
                );
                None
            }
        }
    }

    /// Opens (and migrates) the store.
    pub async fn store(&self) -> Store {
        Store::open(&self.url).await.expect("store opens")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.admin.take() else {
            return;
        };
        // Best effort, on a thread of its own: Drop cannot await.
        let kind = self.kind;
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                use sqlx::Executor;
                if let Ok(pool) = sqlx::AnyPool::connect(&admin_url).await {
                    let force = if kind == DbKind::Postgres {
                        " WITH (FORCE)"
                    } else {
                        ""
                    };
                    let _ = pool
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name}{force}"
                        )))
                        .await;
                    pool.close().await;
                }
            });
        })
        .join();
    }
}

/// Runs a per-database scenario on a fresh database of `kind`: SQLite always; PostgreSQL
/// and MySQL only when there is a server (otherwise [`TestDb::postgres`] /
/// [`TestDb::mysql`] print why the scenario is skipped, and this returns).
pub async fn on_database<F: Future<Output = ()>>(kind: DbKind, scenario: impl FnOnce(TestDb) -> F) {
    let db = match kind {
        DbKind::Sqlite => Some(TestDb::sqlite()),
        DbKind::Postgres => TestDb::postgres().await,
        DbKind::MySql => TestDb::mysql().await,
    };
    if let Some(db) = db {
        scenario(db).await;
    }
}

/// Declares one test per database for a scenario `async fn(TestDb)`, each under the test
/// attribute given and running the scenario through [`on_database`]:
///
/// ```ignore
/// helpers::per_database!(
///     #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
///     scenario: Sqlite => scenario_on_sqlite, Postgres => scenario_on_postgres,
/// );
/// ```
macro_rules! per_database {
    (#[$test:meta] $scenario:ident: $($kind:ident => $name:ident),+ $(,)?) => {
        $(
            #[$test]
            async fn $name() {
                $crate::helpers::on_database($crate::helpers::DbKind::$kind, $scenario).await;
            }
        )+
    };
}
pub(crate) use per_database;

/// Runs `sql` on the store's pool and returns the first column of the first row.
pub async fn scalar_i64(store: &Store, sql: &str) -> i64 {
    let row = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    row.try_get::<i64, _>(0)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Runs `sql` (DDL or DML with no result) on a pool, panicking with the statement on error.
pub async fn exec(pool: &sqlx::AnyPool, sql: &str) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Every result row of a run, by payer id.
pub async fn all_checks(store: &Store, run_id: i64) -> BTreeMap<String, CheckRecord> {
    let rows = store
        .checks_page(run_id, "", &[], 1_000_000)
        .await
        .expect("read results");
    let n = rows.len();
    let map: BTreeMap<_, _> = rows.into_iter().map(|r| (r.payer_id.clone(), r)).collect();
    assert_eq!(map.len(), n, "a payer id has two rows in run {run_id}");
    map
}

/// The one run the database holds (tests that start one run per database).
pub async fn only_run(store: &Store) -> RunRecord {
    let runs = store.latest_runs(None, 10).await.expect("list runs");
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs.into_iter().next().expect("one run")
}

/// `SELECT COUNT(*)` of one run's result rows.
pub fn count_rows_sql(run_id: i64) -> String {
    format!("SELECT COUNT(*) FROM billing_key_checks WHERE run_id = {run_id}")
}

/// Polls every `poll` until `sql` (a COUNT) reaches `at_least`; panics if the child ends
/// first or after `limit`.
pub async fn wait_for_count(
    store: &Store,
    sql: &str,
    at_least: i64,
    limit: Duration,
    poll: Duration,
    child: &mut tokio::process::Child,
) {
    let start = Instant::now();
    loop {
        let n = scalar_i64(store, sql).await;
        if n >= at_least {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the run ended ({status}) before `{sql}` reached {at_least} (had {n})");
        }
        assert!(start.elapsed() < limit, "`{sql}` only {n} after {limit:?}");
        tokio::time::sleep(poll).await;
    }
}

/// Polls every `poll` until the results table holds at least `rows` rows; panics if the
/// child ends first or after `limit`.
pub async fn wait_for_rows(
    store: &Store,
    rows: i64,
    limit: Duration,
    poll: Duration,
    child: &mut tokio::process::Child,
) {
    let sql = "SELECT COUNT(*) FROM billing_key_checks";
    wait_for_count(store, sql, rows, limit, poll, child).await;
}

/// Every key has exactly one row in the run, and it is the status the simulator's ground
/// truth (`derive_key`) gives; nothing else is in the run.
pub async fn assert_ground_truth(
    store: &Store,
    run_id: i64,
    ids: &[String],
) -> BTreeMap<String, CheckRecord> {
    let checks = all_checks(store, run_id).await;
    let rows = scalar_i64(store, &count_rows_sql(run_id)).await;
    assert_eq!(rows, ids.len() as i64, "rows in run {run_id}");
    assert_eq!(checks.len(), ids.len(), "one row per key");
    for id in ids {
        let row = checks
            .get(id)
            .unwrap_or_else(|| panic!("no row for {id} in run {run_id}"));
        assert_eq!(row.status.as_str(), derived_status(id), "{id}: {row:?}");
    }
    checks
}
