//! Shared test plumbing: the simulator on an ephemeral port, a fresh results database per
//! test (a SQLite file, or a new PostgreSQL / MySQL database), and the real binary: run to
//! the end or as a child process, with what it leaves in the database and the request log.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use payple_reconcile::domain::stable_hash;
use payple_reconcile::simulator::{
    self, Faults, KeyBook, SimConfig, SimHandle, SimKind, derive_key,
};
use payple_reconcile::store::{CheckRecord, RunRecord, Store};
use serde_json::Value;
use sqlx::Row;

pub const BIN: &str = env!("CARGO_BIN_EXE_payple-reconcile");

/// Starts a simulator on an ephemeral loopback port.
pub async fn spawn_sim(config: SimConfig) -> SimHandle {
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("loopback address");
    simulator::start(config, addr)
        .await
        .expect("simulator starts")
}

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

/// Writes a CSV with a `payer_id,customer_ref` header.
pub fn write_csv(dir: &Path, name: &str, ids: &[String]) -> PathBuf {
    let path = dir.join(name);
    let mut text = String::from("payer_id,customer_ref\n");
    for (i, id) in ids.iter().enumerate() {
        text.push_str(&format!("{id},CUST-{i:05}\n"));
    }
    std::fs::write(&path, text).expect("write csv");
    path
}

/// `n` distinct, realistic-looking billing keys (32 base64-ish characters).
pub fn payer_ids(n: usize, seed: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            let h = payple_reconcile::domain::stable_hash(format!("{seed}-{i}").as_bytes());
            let h2 = payple_reconcile::domain::stable_hash(format!("{i}-{seed}").as_bytes());
            format!("{h:016x}{h2:016X}")
        })
        .collect()
}

/// A temporary folder holding `keys.csv` with `n` payer ids (see [`payer_ids`]); the folder
/// lives as long as the returned `TempDir`.
pub fn keys_csv(n: usize, seed: &str) -> (tempfile::TempDir, Vec<String>, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = payer_ids(n, seed);
    let csv = write_csv(dir.path(), "keys.csv", &ids);
    (dir, ids, csv)
}

/// The binary, pointed at a simulator with the test partner's credentials, logs quiet.
pub fn command(sim_url: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PAYPLE_URL", sim_url)
        .env("PAYPLE_CST_ID", simulator::TEST_CST_ID)
        .env("PAYPLE_CUST_KEY", simulator::TEST_CUST_KEY)
        .env("PAYPLE_REFERER", simulator::TEST_REFERER)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

/// Runs the binary to the end and returns its output.
pub fn run_bin(cmd: &mut Command) -> Output {
    cmd.output().expect("binary runs")
}

/// stdout's JSON lines.
pub fn json_lines(output: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

// ---- runs of the binary, and what they leave -----------------------------------------------

/// `payple-reconcile run --database-url URL ARGS...` against the simulator, quick retries.
pub fn run_cmd(sim: &SimHandle, db_url: &str, args: &[&str]) -> Command {
    let mut cmd = command(&sim.url());
    cmd.args(["run", "--database-url", db_url, "--retry-base-ms", "10"])
        .args(args);
    cmd
}

/// `run` over a CSV file with `--rate RATE --concurrency CONCURRENCY` (see [`run_cmd`]).
pub fn csv_run(
    sim: &SimHandle,
    db_url: &str,
    csv: &Path,
    rate: &str,
    concurrency: &str,
) -> Command {
    run_cmd(
        sim,
        db_url,
        &[
            "--csv",
            csv.to_str().unwrap(),
            "--rate",
            rate,
            "--concurrency",
            concurrency,
        ],
    )
}

/// Runs a command to the end without blocking the runtime the simulator lives on.
pub async fn output_of(cmd: Command) -> Output {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the binary finishes within 60 s")
        .expect("the binary starts")
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// stdout of `run` is exactly one JSON object on one line: the summary.
pub fn summary_of(out: &Output) -> Value {
    let stdout = String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "stdout must be exactly one JSON summary line: {stdout:?}\nstderr: {}",
        stderr_of(out)
    );
    assert!(stdout.ends_with('\n'), "{stdout:?}");
    let value: Value = serde_json::from_str(lines[0])
        .unwrap_or_else(|e| panic!("summary is not JSON ({e}): {:?}", lines[0]));
    assert!(value.is_object(), "{value}");
    value
}

/// Asserts the exit code, showing stderr when it differs.
pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr_of(out)
    );
}

/// A simulator with these keys and faults (and optionally a request log).
pub async fn sim_with(keys: KeyBook, faults: Faults, log: Option<PathBuf>) -> SimHandle {
    spawn_sim(SimConfig {
        keys,
        faults,
        request_log: log,
        seed: 7,
        ..SimConfig::default()
    })
    .await
}

/// A simulator answering every lookup after `latency`.
pub async fn slow_sim(latency: Duration, log: Option<PathBuf>) -> SimHandle {
    let faults = Faults {
        latency,
        ..Faults::none()
    };
    sim_with(KeyBook::derived(), faults, log).await
}

/// Runs `sql` on the store's pool and returns the first column of the first row.
pub async fn scalar_i64(store: &Store, sql: &str) -> i64 {
    let row = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    row.try_get::<i64, _>(0)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
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

/// The status `derive_key` implies for a key the simulator derives.
pub fn derived_status(payer_id: &str) -> &'static str {
    match derive_key(payer_id).kind {
        SimKind::Card | SimKind::Transfer => "active",
        SimKind::Gone => "gone",
        other => panic!("derive_key gave {other:?}"),
    }
}

/// A JSON Lines key file for the simulator, read back the way the simulator does.
pub fn key_file(dir: &Path, name: &str, lines: &[Value]) -> KeyBook {
    let path = dir.join(name);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text).expect("write key file");
    KeyBook::from_file(&path).expect("valid key file")
}

/// Maximal runs of ASCII letters and digits at least `min` long: the simulator's tokens are
/// 32 (`cst_id`), 40 (`custKey`) and 64 (`AuthKey`) such characters.
pub fn token_shaped(text: &str, min: usize) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|run| run.len() >= min)
        .map(str::to_owned)
        .collect()
}

// ---- the binary as a child process -------------------------------------------------------

/// Starts a command as a child with piped output, killed if the test fails (or the child
/// is dropped).
pub fn spawn(cmd: Command) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd.spawn().expect("the binary starts")
}

/// Waits for a child to end (at most `limit`) and returns its output.
pub async fn wait_output(child: tokio::process::Child, limit: Duration) -> Output {
    tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the child did not end within {limit:?}"))
        .expect("wait for the child")
}

/// Waits for a child to end (at most 30 s) and returns its output.
pub async fn finish(child: tokio::process::Child) -> Output {
    wait_output(child, Duration::from_secs(30)).await
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

/// The simulator request log's key field for a payer id.
pub fn key_hash(id: &str) -> String {
    format!("{:016x}", stable_hash(id.as_bytes()))
}

/// Request-log lines of lookups: the key hash of each, in the order they were written.
pub fn logged_lookups(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("request log {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("log line"))
        .filter(|l| l["kind"] == "lookup")
        .map(|l| l["key"].as_str().unwrap_or_default().to_owned())
        .collect()
}
