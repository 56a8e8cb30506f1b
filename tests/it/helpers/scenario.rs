//! [`Scenario`]: the common set-up of a run test (keys, simulator, database, the binary's
//! `run`) as one expression, and what it leaves to look at.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use payple_reconcile::simulator::{Faults, KeyBook, SimConfig, SimHandle};
use payple_reconcile::store::{CheckRecord, RunRecord, Store};
use serde_json::Value;

use super::db::{TestDb, all_checks, only_run, scalar_i64};
use super::files::{payer_ids, write_csv};
use super::process::{assert_exit, command, output_of, spawn, stderr_of, summary_of};
use super::sim::{seeded, spawn_sim};

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
    /// No keys, a simulator deriving every key without faults (seed 7, [`seeded`]), a
    /// fresh SQLite file, no extra flags.
    pub fn new() -> Self {
        Self {
            input: Input::None,
            sim: seeded(KeyBook::derived(), Faults::none(), None),
            request_log: false,
            db: None,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// `--csv keys.csv` with `n` keys made from `seed` ([`payer_ids`], [`write_csv`]).
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
    async fn prepare(self) -> World {
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
        World {
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

    /// Sets everything up but the store: the database is not opened, so not created (a
    /// SQLite file) nor migrated, for tests whose binary must meet it so. [`World::open`]
    /// opens it later.
    pub async fn start_unopened(self) -> World {
        self.prepare().await
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

/// `payple-reconcile run --database-url URL --retry-base-ms 10 ARGS...` against `sim`.
fn run_command(sim: &SimHandle, url: &str, args: &[&str]) -> Command {
    let mut cmd = command(&sim.url());
    cmd.args(["run", "--database-url", url, "--retry-base-ms", "10"])
        .args(args);
    cmd
}

fn scenario_command(
    sim: &SimHandle,
    url: &str,
    args: &[String],
    env: &[(String, String)],
    extra: &[&str],
) -> Command {
    let mut cmd = run_command(sim, url, extra);
    cmd.args(args);
    for (name, value) in env {
        cmd.env(name, value);
    }
    cmd
}

/// A scenario's folder (keys CSV, request log), simulator and database, without the store:
/// what [`Scenario::start_unopened`] gives, and what a [`Setup`] holds (through `Deref`).
pub struct World {
    pub dir: tempfile::TempDir,
    /// The keys written to the CSV (empty for [`Scenario::csv_file`] and no keys).
    pub ids: Vec<String>,
    pub csv: Option<PathBuf>,
    pub log: Option<PathBuf>,
    pub sim: SimHandle,
    pub db: TestDb,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// A scenario's set-up: its [`World`] (folder, simulator, database; through `Deref`) and
/// the store, opened and migrated.
pub struct Setup {
    /// Public so that a test can move a part out (`set.world.sim.shutdown()`).
    pub world: World,
    pub store: Store,
}

impl std::ops::Deref for Setup {
    type Target = World;
    fn deref(&self) -> &World {
        &self.world
    }
}

impl World {
    /// Opens (and migrates) the store.
    pub async fn open(self) -> Setup {
        let store = self.db.store().await;
        Setup { world: self, store }
    }

    /// The scenario's `run` (its key file and flags) with `extra` flags.
    pub fn command(&self, extra: &[&str]) -> Command {
        scenario_command(&self.sim, &self.db.url, &self.args, &self.env, extra)
    }

    /// The scenario's `run` (its key file, flags and environment) with `extra` flags against
    /// another database `db`: the same keys and simulator on a second, fresh database.
    pub fn command_on(&self, db: &TestDb, extra: &[&str]) -> Command {
        scenario_command(&self.sim, &db.url, &self.args, &self.env, extra)
    }

    /// The scenario's `run` (its key file, flags and environment) with `extra` flags against
    /// a database URL no [`TestDb`] stands for (one that refuses connections, say).
    pub fn command_on_url(&self, url: &str, extra: &[&str]) -> Command {
        scenario_command(&self.sim, url, &self.args, &self.env, extra)
    }

    /// The scenario's `run` (its key file, flags and environment) with `extra` flags against
    /// another simulator `sim` ([`Self::second_sim`]) and the scenario's database.
    pub fn command_with_sim(&self, sim: &SimHandle, extra: &[&str]) -> Command {
        scenario_command(sim, &self.db.url, &self.args, &self.env, extra)
    }

    /// `run --database-url URL --retry-base-ms 10 ARGS...` against another simulator `sim`
    /// ([`Self::second_sim`]) and the scenario's database, without the scenario's key file
    /// and flags.
    pub fn bare_command_with_sim(&self, sim: &SimHandle, args: &[&str]) -> Command {
        run_command(sim, &self.db.url, args)
    }

    /// A second simulator (seed 7, as the scenario's) answering from `keys` with `faults`,
    /// writing its request log to `log` if given: for a night that needs its own key book,
    /// faults or request log against the scenario's database ([`Self::command_with_sim`]).
    pub async fn second_sim(
        &self,
        keys: KeyBook,
        faults: Faults,
        log: Option<PathBuf>,
    ) -> SimHandle {
        spawn_sim(seeded(keys, faults, log)).await
    }

    /// `run --database-url URL --retry-base-ms 10 ARGS...` against the scenario's
    /// simulator and database, without the scenario's key file and flags.
    pub fn bare_command(&self, args: &[&str]) -> Command {
        run_command(&self.sim, &self.db.url, args)
    }

    /// `payple-reconcile ARGS --database-url URL` (any subcommand) against the scenario's
    /// simulator and database, without the scenario's key file, flags and environment.
    pub fn subcommand(&self, args: &[&str]) -> Command {
        let mut cmd = command(&self.sim.url());
        cmd.args(args).args(["--database-url", &self.db.url]);
        cmd
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

    /// Stops the simulator (which flushes its request log); returns the scenario's folder.
    pub async fn close(self) -> Leftover {
        self.sim.shutdown().await;
        Leftover {
            dir: self.dir,
            log: self.log,
        }
    }
}

impl Setup {
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
        self.world.close().await
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
