//! Issue 26, trust no path, no write, no race: the SQLite results file only when safe, no
//! source query that writes through a SELECT, MariaDB first starts side by side, DATE due
//! columns, and an empty source that stops the run.

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Output};

use payple_reconcile::store::RunState;

use crate::helpers::{
    self, Scenario, Setup, TestDb, assert_exit, exec, output_of, per_database, stderr_of,
};

/// `run --csv KEYS --database-url URL` against the scenario's simulator.
fn run_on(set: &Setup, url: &str, extra: &[&str]) -> Command {
    let mut cmd = helpers::command(&set.sim.url());
    cmd.args([
        "run",
        "--database-url",
        url,
        "--csv",
        set.csv_arg(),
        "--rate",
        "0",
    ])
    .args(extra);
    cmd
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// Exit 3, the path and the problem named, nothing looked up.
fn assert_refused(out: &Output, set: &Setup, path: &Path, problem: &str) {
    assert_exit(out, 3);
    let err = stderr_of(out);
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains(problem), "{err}");
    assert_eq!(set.sim.stats().lookups, 0, "nothing looked up");
}

// ---- the SQLite results file --------------------------------------------------------------

/// A symlink planted at the results path (pointing where its planter can read) is not
/// followed: exit 3, and nothing is created at its target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_at_the_sqlite_path_is_refused() {
    let set = Scenario::new().keys(3, "symlink").start().await;
    let theirs = tempfile::tempdir().expect("their folder");
    let target = theirs.path().join("target.db");
    let link = set.dir.path().join("shared.db");
    symlink(&target, &link).expect("plant the link");
    let out = output_of(run_on(&set, &sqlite_url(&link), &[])).await;
    assert_refused(&out, &set, &link, "symbolic link");
    assert!(!target.exists(), "nothing created through the link");
}

/// A symlink planted at the `-wal` side file is refused too: SQLite would write the
/// journal of every result through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_at_the_wal_file_is_refused() {
    let set = Scenario::new().keys(3, "wal").start().await;
    let theirs = tempfile::tempdir().expect("their folder");
    let target = theirs.path().join("stolen-wal");
    let db = set.dir.path().join("wal.db");
    let wal = set.dir.path().join("wal.db-wal");
    symlink(&target, &wal).expect("plant the link");
    let out = output_of(run_on(&set, &sqlite_url(&db), &[])).await;
    assert_refused(&out, &set, &wal, "symbolic link");
    assert!(!target.exists(), "nothing written through the link");
}

/// A pre-created database anyone may read and write (0666) is refused, naming the mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_world_writable_sqlite_file_is_refused() {
    let set = Scenario::new().keys(3, "0666").start().await;
    let db = set.dir.path().join("open.db");
    std::fs::write(&db, b"").expect("create");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let out = output_of(run_on(&set, &sqlite_url(&db), &[])).await;
    assert_refused(&out, &set, &db, "mode 0666");
    // Made private, the same file is used.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = output_of(run_on(&set, &sqlite_url(&db), &[])).await;
    assert_exit(&out, 0);
}

/// A database owned by another user is refused even when its mode is private (root could
/// open it anyway; the tests run as root in CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_file_of_another_user_is_refused() {
    let set = Scenario::new().keys(3, "owner").start().await;
    let db = set.dir.path().join("theirs.db");
    std::fs::write(&db, b"").expect("create");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    if std::os::unix::fs::chown(&db, Some(65534), Some(65534)).is_err() {
        eprintln!("skipping: chown needs root (CI runs the tests as root)");
        return;
    }
    let out = output_of(run_on(&set, &sqlite_url(&db), &[])).await;
    assert_refused(&out, &set, &db, "owned by uid 65534");
}

/// A new database is created 0600 with a umask that would give 0666, and its side files
/// follow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_sqlite_file_is_private_whatever_the_umask() {
    let set = Scenario::new().keys(5, "umask").start().await;
    let db = set.dir.path().join("new.db");
    let inner = run_on(&set, &sqlite_url(&db), &[]);
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("umask 000; exec \"$@\"")
        .arg("sh")
        .arg(inner.get_program())
        .args(inner.get_args())
        .envs(inner.get_envs().filter_map(|(k, v)| Some((k, v?))));
    let out = output_of(cmd).await;
    assert_exit(&out, 0);
    for entry in std::fs::read_dir(set.dir.path()).expect("list") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("new.db") {
            let mode = std::fs::symlink_metadata(&path).expect("stat").mode() & 0o777;
            assert_eq!(mode, 0o600, "{} is {mode:o}", path.display());
        }
    }
}

// ---- MariaDB: nothing written through a SELECT ------------------------------------------

/// `SELECT … INTO OUTFILE` and friends are refused with exit 3 before any lookup, on a
/// dry run as well; the server writes no file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_select_into_outfile_is_refused_on_a_dry_run() {
    let Some(db) = TestDb::mysql().await else {
        return;
    };
    let set = Scenario::new().on(db).start().await;
    exec(
        set.store.pool(),
        "CREATE TABLE billing_keys (payer_id VARCHAR(64))",
    )
    .await;
    exec(
        set.store.pool(),
        "INSERT INTO billing_keys VALUES ('k1'), ('k2')",
    )
    .await;
    let file = format!("/tmp/payple-outfile-{}.txt", std::process::id());
    let queries = [
        format!("SELECT payer_id FROM billing_keys INTO OUTFILE '{file}'"),
        format!("SELECT payer_id FROM billing_keys LIMIT 1 INTO DUMPFILE '{file}'"),
        "SELECT payer_id FROM billing_keys LIMIT 1 INTO @stolen".to_owned(),
        "SELECT payer_id FROM billing_keys FOR UPDATE".to_owned(),
        "SELECT @n := payer_id FROM billing_keys".to_owned(),
        "SELECT payer_id FROM billing_keys WHERE GET_LOCK('held', 0) = 1".to_owned(),
    ];
    for sql in &queries {
        let out = output_of(set.bare_command(&["--source-query", sql, "--dry-run"])).await;
        assert_exit(&out, 3);
        let err = stderr_of(&out);
        assert!(
            err.contains("--source-query") && err.contains("only reads"),
            "{sql}: {err}"
        );
    }
    assert!(!Path::new(&file).exists(), "the server wrote {file}");
    assert_eq!(set.sim.stats().lookups, 0);
}

// ---- MariaDB: first starts side by side -------------------------------------------------

/// Two `migrate`s on an empty MariaDB database at once both succeed, five times over,
/// and no message sends anyone to `_sqlx_migrations`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_concurrent_first_migrations_both_succeed() {
    for pair in 0..5 {
        let Some(db) = TestDb::mysql().await else {
            return;
        };
        let migrate = || {
            let mut cmd = helpers::command("http://127.0.0.1:9");
            cmd.args(["migrate", "--database-url", &db.url]);
            output_of(cmd)
        };
        let (a, b) = tokio::join!(migrate(), migrate());
        for out in [&a, &b] {
            let err = stderr_of(out);
            assert!(!err.contains("_sqlx_migrations"), "pair {pair}: {err}");
            assert_exit(out, 0);
        }
    }
}

/// Two shards starting together on an empty MariaDB database both finish, twice over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_concurrent_first_shard_runs_both_succeed() {
    for pair in 0..2 {
        let Some(db) = TestDb::mysql().await else {
            return;
        };
        // Unopened: the shards meet an empty database. The command is built by hand, as
        // before: without the scenario's `--retry-base-ms 10`.
        let world = Scenario::new()
            .on(db)
            .keys(20, &format!("race-{pair}"))
            .start_unopened()
            .await;
        let shard = |s: &'static str| {
            let mut cmd = helpers::command(&world.sim.url());
            cmd.args(["run", "--database-url", &world.db.url, "--rate", "0"])
                .args(["--csv", world.csv_arg(), "--shard", s])
                .args(["--run-key", "race"]);
            output_of(cmd)
        };
        let (a, b) = tokio::join!(shard("0/2"), shard("1/2"));
        for out in [&a, &b] {
            let err = stderr_of(out);
            assert!(!err.contains("_sqlx_migrations"), "pair {pair}: {err}");
            assert!(
                matches!(out.status.code(), Some(0 | 2)),
                "pair {pair}: {:?} {err}",
                out.status
            );
        }
        world.close().await;
    }
}

// ---- --due-column of a date type ------------------------------------------------------------

/// `--due-column` reads DATE and DATETIME/TIMESTAMP columns: the run finishes and no date
/// is ignored as unreadable.
async fn due_dates_of_date_types(db: TestDb) {
    let ids: Vec<String> = helpers::payer_ids(30, "due-types")
        .into_iter()
        .filter(|id| matches!(helpers::derived_status(id), "active" | "gone"))
        .take(4)
        .collect();
    let datetime = if db.kind == helpers::DbKind::MySql {
        "DATETIME"
    } else {
        "TIMESTAMP"
    };
    let set = Scenario::new().on(db).start().await;
    exec(
        set.store.pool(),
        &format!(
            "CREATE TABLE billing_keys (payer_id VARCHAR(64), customer_ref VARCHAR(64), \
             next_day DATE, next_at {datetime})"
        ),
    )
    .await;
    let soon = (chrono::Utc::now() + chrono::Duration::days(1)).format("%Y-%m-%d");
    for (i, id) in ids.iter().enumerate() {
        exec(
            set.store.pool(),
            &format!(
                "INSERT INTO billing_keys VALUES ('{id}', 'C-{i}', '{soon}', '{soon} 09:30:00')"
            ),
        )
        .await;
    }
    for column in ["next_day", "next_at"] {
        let args = ["--rate", "0", "--max-lookups", "4", "--due-column", column];
        let out = output_of(set.bare_command(&args)).await;
        let err = stderr_of(&out);
        assert_exit(&out, 0);
        assert!(!err.contains("ignored"), "{column}: {err}");
    }
}

per_database!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    due_dates_of_date_types:
        Sqlite => a_date_due_column_is_read_on_sqlite,
        Postgres => a_date_due_column_is_read_on_postgres,
        MySql => a_date_due_column_is_read_on_mariadb,
);

// ---- an empty source ------------------------------------------------------------------------

/// A header-only CSV stops with exit 3 naming the flag, completes no run, and `changes`
/// then reports no key as missing; with `--allow-empty-source` it finishes with 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_source_stops_the_run_unless_allowed() {
    let set = Scenario::new().keys(4, "empty-source").start().await;
    let night1 = set.output(&["--rate", "0"]).await;
    assert!(matches!(night1.status.code(), Some(0 | 2)), "{night1:?}");
    let empty = set.dir.path().join("empty.csv");
    std::fs::write(&empty, "payer_id,customer_ref\n").expect("write");
    let empty = empty.to_str().expect("utf-8");
    let out = output_of(set.bare_command(&["--csv", empty, "--rate", "0"])).await;
    assert_exit(&out, 3);
    let err = stderr_of(&out);
    assert!(
        err.contains("no valid billing key") && err.contains("--allow-empty-source"),
        "{err}"
    );
    let completed = set
        .store
        .latest_runs(Some(RunState::Completed), 10)
        .await
        .expect("runs");
    assert_eq!(completed.len(), 1, "the empty night is not a completed run");
    let mut changes = helpers::command(&set.sim.url());
    changes.args(["changes", "--database-url", &set.db.url, "--output", "-"]);
    let report = output_of(changes).await;
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(!text.contains("missing_key"), "{text}");

    let allowed = ["--csv", empty, "--rate", "0", "--allow-empty-source"];
    let out = output_of(set.bare_command(&allowed)).await;
    assert_exit(&out, 0);
}
