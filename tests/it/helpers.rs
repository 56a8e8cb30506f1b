//! Shared test plumbing: the simulator on an ephemeral port, a fresh results database per
//! test (a SQLite file, or a new PostgreSQL / MySQL database), and the real binary: run to
//! the end or as a child process, with what it leaves in the database and the request log.
//! [`Scenario`] puts them together: the common set-up of a run test as one expression.

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

// ---- the scenario builder ------------------------------------------------------------------

/// The common set-up of a run test as one expression: a keys CSV, a simulator (key book,
/// faults, request log), a fresh results database, and the binary's `run` over them with
/// extra flags:
///
/// ```ignore
/// let ran = Scenario::new().keys(150, "one-auth").args(&["--rate", "0"]).run().await;
/// ran.expect_exit(0);
/// assert_eq!(ran.summary()["auth_calls"], 1);
/// let run = ran.run_record().await;
/// ran.close().await;
/// ```
///
/// [`Scenario::run`] runs the binary to the end, then opens the store (as a test that reads
/// the database afterwards does); [`Scenario::start`] opens (and migrates) the store first
/// and runs nothing, for tests that start children themselves with [`Setup::spawn`].
pub struct Scenario {
    input: Input,
    sim: SimConfig,
    request_log: bool,
    db: Option<TestDb>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// Where the run's keys come from.
enum Input {
    /// `keys.csv` holding [`payer_ids`]`(n, seed)` (see [`write_csv`]).
    Keys(usize, String),
    /// `keys.csv` holding these ids (see [`write_csv`]).
    Ids(Vec<String>),
    /// A file of this name holding exactly these bytes.
    File(String, Vec<u8>),
    /// No `--csv`: the flags name the source.
    None,
}

impl Default for Scenario {
    fn default() -> Self {
        Self::new()
    }
}

impl Scenario {
    /// No keys, a simulator deriving every key without faults (seed 7, as [`sim_with`]),
    /// a fresh SQLite file, no extra flags.
    pub fn new() -> Self {
        Self {
            input: Input::None,
            sim: SimConfig {
                keys: KeyBook::derived(),
                faults: Faults::none(),
                seed: 7,
                ..SimConfig::default()
            },
            request_log: false,
            db: None,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// `--csv keys.csv` with `n` keys made from `seed` ([`keys_csv`]).
    pub fn keys(mut self, n: usize, seed: &str) -> Self {
        self.input = Input::Keys(n, seed.to_owned());
        self
    }

    /// `--csv keys.csv` with these ids, `CUST-00000`... as references ([`write_csv`]).
    pub fn ids(mut self, ids: &[String]) -> Self {
        self.input = Input::Ids(ids.to_vec());
        self
    }

    /// `--csv NAME`, a file holding exactly `bytes`.
    pub fn csv_file(mut self, name: &str, bytes: impl Into<Vec<u8>>) -> Self {
        self.input = Input::File(name.to_owned(), bytes.into());
        self
    }

    /// The simulator answers from this key book.
    pub fn book(mut self, keys: KeyBook) -> Self {
        self.sim.keys = keys;
        self
    }

    /// The simulator injects these faults.
    pub fn faults(mut self, faults: Faults) -> Self {
        self.sim.faults = faults;
        self
    }

    /// The whole simulator configuration (its `request_log` is set by
    /// [`Self::request_log`]).
    pub fn sim(mut self, config: SimConfig) -> Self {
        self.sim = config;
        self
    }

    /// The simulator writes `requests.jsonl` in the scenario's folder ([`Setup::log`]).
    pub fn request_log(mut self) -> Self {
        self.request_log = true;
        self
    }

    /// This database instead of a fresh SQLite file (a per-database scenario's).
    pub fn on(mut self, db: TestDb) -> Self {
        self.db = Some(db);
        self
    }

    /// Flags after `run --database-url URL --retry-base-ms 10 [--csv PATH]`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// An environment variable for the binary (on top of [`command`]'s).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Writes the keys, starts the simulator, makes the database: everything but the store.
    async fn prepare(self) -> Prepared {
        let dir = tempfile::tempdir().expect("temp dir");
        let (ids, csv) = match self.input {
            Input::Keys(n, seed) => {
                let ids = payer_ids(n, &seed);
                let csv = write_csv(dir.path(), "keys.csv", &ids);
                (ids, Some(csv))
            }
            Input::Ids(ids) => {
                let csv = write_csv(dir.path(), "keys.csv", &ids);
                (ids, Some(csv))
            }
            Input::File(name, bytes) => {
                let path = dir.path().join(name);
                std::fs::write(&path, bytes).expect("write the key file");
                (Vec::new(), Some(path))
            }
            Input::None => (Vec::new(), None),
        };
        let log = self.request_log.then(|| dir.path().join("requests.jsonl"));
        let sim = spawn_sim(SimConfig {
            request_log: log.clone(),
            ..self.sim
        })
        .await;
        let mut args = Vec::new();
        if let Some(csv) = &csv {
            args.push("--csv".to_owned());
            args.push(csv.to_str().expect("utf-8 path").to_owned());
        }
        args.extend(self.args);
        Prepared {
            dir,
            ids,
            csv,
            log,
            sim,
            db: self.db.unwrap_or_else(TestDb::sqlite),
            args,
            env: self.env,
        }
    }

    /// Sets everything up and opens (and migrates) the store; runs nothing.
    pub async fn start(self) -> Setup {
        self.prepare().await.open().await
    }

    /// Sets everything up, runs the binary to the end, then opens the store.
    pub async fn run(self) -> Ran {
        let prepared = self.prepare().await;
        let started = Instant::now();
        let out = output_of(prepared.command(&[])).await;
        let took = started.elapsed();
        Ran {
            out,
            took,
            setup: prepared.open().await,
        }
    }
}

/// A scenario's files, simulator and database, before the store is opened.
struct Prepared {
    dir: tempfile::TempDir,
    ids: Vec<String>,
    csv: Option<PathBuf>,
    log: Option<PathBuf>,
    sim: SimHandle,
    db: TestDb,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Prepared {
    fn command(&self, extra: &[&str]) -> Command {
        scenario_command(&self.sim, &self.db, &self.args, &self.env, extra)
    }

    async fn open(self) -> Setup {
        let store = self.db.store().await;
        Setup {
            dir: self.dir,
            ids: self.ids,
            csv: self.csv,
            log: self.log,
            sim: self.sim,
            db: self.db,
            store,
            args: self.args,
            env: self.env,
        }
    }
}

fn scenario_command(
    sim: &SimHandle,
    db: &TestDb,
    args: &[String],
    env: &[(String, String)],
    extra: &[&str],
) -> Command {
    let mut cmd = run_cmd(sim, &db.url, extra);
    cmd.args(args);
    for (name, value) in env {
        cmd.env(name, value);
    }
    cmd
}

/// A scenario's set-up: its folder (keys CSV, request log), simulator, database and store.
pub struct Setup {
    pub dir: tempfile::TempDir,
    /// The keys written to the CSV (empty for [`Scenario::csv_file`] and no keys).
    pub ids: Vec<String>,
    pub csv: Option<PathBuf>,
    pub log: Option<PathBuf>,
    pub sim: SimHandle,
    pub db: TestDb,
    pub store: Store,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Setup {
    /// The scenario's `run` (its key file and flags) with `extra` flags.
    pub fn command(&self, extra: &[&str]) -> Command {
        scenario_command(&self.sim, &self.db, &self.args, &self.env, extra)
    }

    /// `run --database-url URL --retry-base-ms 10 ARGS...` against the scenario's
    /// simulator and database, without the scenario's key file and flags.
    pub fn bare_command(&self, args: &[&str]) -> Command {
        run_cmd(&self.sim, &self.db.url, args)
    }

    /// Runs [`Self::command`] to the end.
    pub async fn output(&self, extra: &[&str]) -> Output {
        output_of(self.command(extra)).await
    }

    /// Starts [`Self::command`] as a child ([`spawn`]).
    pub fn spawn(&self, extra: &[&str]) -> tokio::process::Child {
        spawn(self.command(extra))
    }

    /// The key file's path as a flag value.
    pub fn csv_arg(&self) -> &str {
        self.csv
            .as_deref()
            .and_then(Path::to_str)
            .expect("a UTF-8 key file path")
    }

    /// The one run the database holds ([`only_run`]).
    pub async fn run_record(&self) -> RunRecord {
        only_run(&self.store).await
    }

    /// Every result row of the database's one run ([`all_checks`]).
    pub async fn checks(&self) -> BTreeMap<String, CheckRecord> {
        all_checks(&self.store, self.run_record().await.id).await
    }

    /// `SELECT COUNT(*) FROM billing_key_checks`.
    pub async fn rows(&self) -> i64 {
        scalar_i64(&self.store, "SELECT COUNT(*) FROM billing_key_checks").await
    }

    /// Closes the store and stops the simulator (which flushes its request log); returns
    /// the scenario's folder, to read the request log afterwards.
    pub async fn close(self) -> Leftover {
        self.store.close().await;
        self.sim.shutdown().await;
        Leftover {
            dir: self.dir,
            log: self.log,
        }
    }
}

/// A closed scenario's folder: the key file and the complete request log.
pub struct Leftover {
    pub dir: tempfile::TempDir,
    pub log: Option<PathBuf>,
}

impl Leftover {
    /// The request log's path ([`Scenario::request_log`]).
    pub fn log(&self) -> &Path {
        self.log.as_deref().expect("the scenario has a request log")
    }
}

/// A scenario run to the end: its output, and the set-up it ran in (through `Deref`).
pub struct Ran {
    pub out: Output,
    /// How long the binary ran.
    pub took: Duration,
    pub setup: Setup,
}

impl std::ops::Deref for Ran {
    type Target = Setup;
    fn deref(&self) -> &Setup {
        &self.setup
    }
}

impl Ran {
    /// Asserts the exit code ([`assert_exit`]).
    pub fn expect_exit(&self, code: i32) -> &Self {
        assert_exit(&self.out, code);
        self
    }

    /// The one JSON summary line on stdout ([`summary_of`]).
    pub fn summary(&self) -> Value {
        summary_of(&self.out)
    }

    pub fn stderr(&self) -> String {
        stderr_of(&self.out)
    }

    /// Closes the store and stops the simulator ([`Setup::close`]).
    pub async fn close(self) -> Leftover {
        self.setup.close().await
    }
}
