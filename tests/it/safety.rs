//! A job that cannot hurt the merchant's data: the key source is read-only, one long
//! field never fails a night, replies are read up to a cap, the files it creates are
//! private, and every exit code means one thing.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use payple_reconcile::domain::KeyStatus;
use payple_reconcile::simulator::Faults;
use payple_reconcile::source::readonly;
use payple_reconcile::store::{NewRun, Store};
use serde_json::{Value, json};
use sqlx::Row;

use crate::helpers::{
    self, DbKind, Scenario, TestDb, assert_exit, exec, key_file, output_of, scalar_i64, stderr_of,
    summary_of,
};

/// The rows of `billing_keys`, in order.
async fn source_rows(pool: &sqlx::AnyPool) -> Vec<(String, String)> {
    let rows = sqlx::query("SELECT payer_id, customer_ref FROM billing_keys ORDER BY payer_id")
        .fetch_all(pool)
        .await
        .expect("billing_keys is still there");
    rows.iter()
        .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1)))
        .collect()
}

/// stdout is one JSON error line with this exit code.
fn assert_error_line(out: &Output, code: i64) -> String {
    let line = summary_of(out);
    assert_eq!(line["exit_code"], code, "{line}");
    line["error"].as_str().expect("an error message").to_owned()
}

// ---- read-only sources --------------------------------------------------------------------

/// Every write through `--source-query` is refused with exit 3, with and without
/// `--dry-run`, and the merchant's table is exactly as it was.
async fn source_query_cannot_write(db: TestDb) {
    let set = Scenario::new().on(db).start().await;
    let (dir, store) = (&set.dir, &set.store);
    let pool = store.pool().clone();
    exec(
        &pool,
        "CREATE TABLE billing_keys (payer_id VARCHAR(255), customer_ref VARCHAR(255))",
    )
    .await;
    let ids = helpers::payer_ids(3, "read-only");
    let values: Vec<String> = ids.iter().map(|id| format!("('{id}', 'C-{id}')")).collect();
    exec(
        &pool,
        &format!("INSERT INTO billing_keys VALUES {}", values.join(", ")),
    )
    .await;
    let before = source_rows(&pool).await;
    let copy = dir.path().join("copy.db");
    let mut writes = vec![
        "DELETE FROM billing_keys RETURNING payer_id, customer_ref".to_owned(),
        "UPDATE billing_keys SET customer_ref = 'x' RETURNING payer_id, customer_ref".to_owned(),
        "DROP TABLE billing_keys".to_owned(),
        "SELECT payer_id, customer_ref FROM billing_keys; DROP TABLE billing_keys".to_owned(),
        format!(
            "ATTACH DATABASE '{}' AS stolen",
            dir.path().join("a.db").display()
        ),
        format!("VACUUM INTO '{}'", copy.display()),
    ];
    // Writes that pass the one-SELECT check and only the read-only session refuses.
    match set.db.kind {
        DbKind::Sqlite => writes.push(
            "WITH x AS (SELECT 1) DELETE FROM billing_keys RETURNING payer_id, customer_ref"
                .to_owned(),
        ),
        DbKind::Postgres => writes.push(
            "WITH d AS (DELETE FROM billing_keys RETURNING payer_id, customer_ref) SELECT * FROM d"
                .to_owned(),
        ),
        DbKind::MySql => {}
    }
    for sql in &writes {
        for dry in [true, false] {
            let mut args = vec!["--source-query", sql.as_str(), "--rate", "0"];
            if dry {
                args.push("--dry-run");
            }
            let out = output_of(set.bare_command(&args)).await;
            assert_exit(&out, 3);
            // One JSON line: the error, or (a write the database refused while the run
            // read its keys) the failed run's summary.
            assert_eq!(summary_of(&out)["exit_code"], 3);
            let stderr = stderr_of(&out);
            assert!(
                stderr.contains("source query") || stderr.contains("read-only"),
                "{sql} (dry run {dry}): {stderr}"
            );
            assert_eq!(source_rows(&pool).await, before, "{sql} (dry run {dry})");
        }
    }
    assert!(!copy.exists(), "VACUUM INTO wrote a copy of the database");
    assert!(
        !dir.path().join("a.db").exists(),
        "ATTACH created a database"
    );
    assert_eq!(set.sim.stats().lookups, 0);
    let completed = scalar_i64(
        store,
        "SELECT COUNT(*) FROM reconcile_runs WHERE state = 'completed'",
    )
    .await;
    assert_eq!(completed, 0, "a refused source completed a run");

    // The read-only connection itself refuses writes, whatever SQL reaches it.
    let source = readonly::connect(&set.db.url)
        .await
        .expect("read-only connection");
    for sql in ["DELETE FROM billing_keys", "DROP TABLE billing_keys"] {
        let e = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&source)
            .await
            .expect_err(sql);
        assert!(readonly::is_write_refused(&e), "{sql}: {e}");
    }
    source.close().await;
    assert_eq!(source_rows(&pool).await, before);

    // A plain SELECT still works, from the results database itself.
    let out = output_of(set.bare_command(&[
        "--source-query",
        "SELECT payer_id, customer_ref FROM billing_keys",
        "--rate",
        "0",
    ]))
    .await;
    assert_exit(&out, 0);
    assert_eq!(summary_of(&out)["keys"], 3);
    set.close().await;
}

helpers::per_database!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    source_query_cannot_write:
        Sqlite => source_query_writes_are_refused_on_sqlite,
        Postgres => source_query_writes_are_refused_on_postgres,
        MySql => source_query_writes_are_refused_on_mysql,
);

/// A dry run on a SQLite source that does not exist creates nothing (it used to create
/// the database file through a read-write connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_opens_nothing_it_could_write_to() {
    // Unopened: the scenario's SQLite database does not exist.
    let world = Scenario::new().start_unopened().await;
    let path = std::path::PathBuf::from(world.db.url.trim_start_matches("sqlite://"));
    let out = output_of(world.bare_command(&["--dry-run", "--rate", "0"])).await;
    assert_exit(&out, 3);
    assert_error_line(&out, 3);
    assert!(!path.exists(), "a dry run created {}", path.display());
    world.close().await;
}

// ---- poison rows --------------------------------------------------------------------------

/// A 300-character payer name (and card name, and message) is cut to its column with a
/// marker, and every row of the run is written: the run completes, exit 0.
async fn long_fields_never_fail_a_batch(db: TestDb) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = helpers::payer_ids(40, "long-fields");
    let long = "가나다라마".repeat(60);
    let lines: Vec<Value> = ids[..3]
        .iter()
        .map(|id| {
            json!({"payer_id": id, "kind": "card", "payer_name": long, "card_name": long,
                   "msg": long.repeat(10), "numeric_codes": false, "bom": false})
        })
        .collect();
    let book = key_file(dir.path(), "keys.jsonl", &lines);
    let ran = Scenario::new()
        .on(db)
        .book(book)
        .ids(&ids[..3])
        .args(&["--rate", "0", "--concurrency", "8"])
        .run()
        .await;
    ran.expect_exit(0);
    let summary = ran.summary();
    assert_eq!(summary["state"], "completed");
    let store = &ran.store;
    let run_id = summary["run_id"].as_i64().expect("run id");
    let checks = helpers::all_checks(store, run_id).await;
    assert_eq!(checks.len(), 3);
    for check in checks.values() {
        assert_eq!(check.status, KeyStatus::Active);
        let name = check.details.payer_name.as_deref().expect("a name");
        assert_eq!(name.chars().count(), 100, "{name}");
        assert!(name.ends_with("…[cut]"), "{name}");
        assert_eq!(
            check.result_msg.as_deref().map(|m| m.chars().count()),
            Some(500)
        );
    }
    ran.close().await;
}

helpers::per_database!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    long_fields_never_fail_a_batch:
        Sqlite => a_300_character_name_is_cut_on_sqlite,
        Postgres => a_300_character_name_is_cut_on_postgres,
        MySql => a_300_character_name_is_cut_on_mysql,
);

/// A value PostgreSQL refuses whatever its length (a NUL character) fails its own key
/// only: the batch is split down to that row, every other row is written, and the key is
/// stored as failed with the database's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_database_refuses_fails_only_its_key_on_postgres() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = helpers::payer_ids(30, "poison-row");
    let lines = vec![
        json!({"payer_id": ids[7], "kind": "card", "payer_name": "홍\u{0}길동",
                            "numeric_codes": false, "bom": false}),
    ];
    let book = key_file(dir.path(), "keys.jsonl", &lines);
    let ran = Scenario::new()
        .on(db)
        .book(book)
        .ids(&ids)
        .args(&["--rate", "0", "--concurrency", "8"])
        .run()
        .await;
    let summary = ran.summary();
    assert_eq!(summary["state"], "completed", "{}", ran.stderr());
    let store = &ran.store;
    let checks = helpers::all_checks(store, summary["run_id"].as_i64().expect("id")).await;
    assert_eq!(checks.len(), 30, "every key has its row");
    let poisoned = &checks[&ids[7]];
    assert_eq!(poisoned.status, KeyStatus::Failed);
    assert_eq!(poisoned.result_code.as_deref(), Some("STORE_REJECTED"));
    let msg = poisoned.result_msg.as_deref().unwrap_or_default();
    assert!(msg.contains("0x00"), "{msg}");
    // And the next night does not fail the same way: the key is simply failed again.
    let out = ran.output(&[]).await;
    assert_eq!(summary_of(&out)["state"], "completed");
    ran.close().await;
}

// ---- bounded replies ----------------------------------------------------------------------

/// Runs `cmd` to the end and returns its output with its own peak resident memory (KiB;
/// see `peak_rss_kib` for why not `wait4`'s figure).
fn output_with_peak_rss(mut cmd: Command) -> (Output, i64) {
    use std::io::Read;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let peak = crate::peak_rss::peak_rss_kib(child.id());
    let status = child.wait().expect("the binary ends");
    let output = Output {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    };
    assert!(peak > 0, "no memory figure was read for the job");
    (output, peak)
}

/// Three lookups answered with 100 MB each: the job's peak memory stays under 64 MiB and
/// each key ends `failed` with `TOO_LARGE`, not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_reply_keeps_memory_bounded_and_fails_the_key() {
    let faults = Faults {
        huge_reply: Some(100 * 1024 * 1024),
        ..Faults::none()
    };
    // Unopened: the binary meets a fresh database; the store opens after it ran.
    let world = Scenario::new()
        .faults(faults)
        .ids(&helpers::payer_ids(3, "huge-reply"))
        .args(&["--rate", "0", "--concurrency", "3"])
        .start_unopened()
        .await;
    let cmd = world.command(&[]);
    let (out, peak_kib) = tokio::task::spawn_blocking(move || output_with_peak_rss(cmd))
        .await
        .expect("child finished");
    eprintln!("peak RSS of the job with 3 x 100 MB replies: {peak_kib} KiB");
    assert_exit(&out, 2);
    assert!(peak_kib < 64 * 1024, "peak RSS {peak_kib} KiB");
    let summary = summary_of(&out);
    assert_eq!(summary["failed"], 3);
    let set = world.open().await;
    let store = &set.store;
    let checks = helpers::all_checks(store, summary["run_id"].as_i64().expect("id")).await;
    for check in checks.values() {
        assert_eq!(check.result_code.as_deref(), Some("TOO_LARGE"), "{check:?}");
        assert_eq!(check.attempts, 1, "a too-large reply is not retried");
    }
    set.close().await;
}

// ---- private files ------------------------------------------------------------------------

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The results database (with its -wal and -shm), the report and the metrics file are
/// created 0600 under the usual umask 022.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_files_are_readable_by_the_owner_only() {
    // Unopened: the binary creates the results database.
    let world = Scenario::new()
        .keys(5, "private-files")
        .start_unopened()
        .await;
    let db = std::path::PathBuf::from(world.db.url.trim_start_matches("sqlite://"));
    let report = world.dir.path().join("night.csv");
    let metrics = world.dir.path().join("job.prom");
    let cmd = world.command(&[
        "--rate",
        "0",
        "--report",
        report.to_str().unwrap(),
        "--metrics-file",
        metrics.to_str().unwrap(),
    ]);
    let mut cmd = tokio::process::Command::from(cmd);
    // SAFETY: umask is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    let out = cmd.output().await.expect("the binary runs");
    assert_exit(&out, 0);
    for path in [&db, &report, &metrics] {
        assert_eq!(mode_of(path), 0o600, "{}", path.display());
    }
    // The WAL files exist while a connection is open.
    let set = world.open().await;
    for suffix in ["-wal", "-shm"] {
        let path = std::path::PathBuf::from(format!("{}{suffix}", db.display()));
        if path.exists() {
            assert_eq!(mode_of(&path), 0o600, "{}", path.display());
        }
    }
    set.close().await;
}

// ---- exit codes ---------------------------------------------------------------------------

/// Usage errors exit 3 (2 means "some keys failed"), with a JSON error line; help and
/// version exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_3_and_help_exits_0() {
    // Unopened: no subcommand here touches a database.
    let world = Scenario::new().start_unopened().await;
    for args in [
        &["run", "--concurrency", "many"][..],
        &["run", "--no-such-flag"],
        &["no-such-command"],
    ] {
        let mut cmd = helpers::command(&world.sim.url());
        cmd.args(args);
        let out = output_of(cmd).await;
        assert_exit(&out, 3);
        assert_error_line(&out, 3);
    }
    for args in [&["--help"][..], &["run", "--help"], &["--version"]] {
        let mut cmd = helpers::command(&world.sim.url());
        cmd.args(args);
        let out = output_of(cmd).await;
        assert_exit(&out, 0);
    }
    world.close().await;
}

/// Configuration problems found before the first lookup exit 3 with a JSON error line,
/// and no lookup is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_problems_exit_3_before_any_lookup() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Unopened: each problem is met before any database is made.
    let world = Scenario::new()
        .keys(5, "config-exit")
        .start_unopened()
        .await;

    // `0000` is the success code: it cannot mean "gone".
    let out = output_of(world.command(&["--gone-codes", "0000"])).await;
    assert_exit(&out, 3);
    assert!(assert_error_line(&out, 3).contains("--gone-codes"));

    // A key file that never ends fails fast.
    let started = Instant::now();
    let out = output_of(world.command(&["--cust-key-file", "/dev/zero"])).await;
    assert_exit(&out, 3);
    assert!(started.elapsed() < Duration::from_secs(10));

    // A source table that does not exist.
    let out = output_of(world.bare_command(&["--source-table", "no_such_table"])).await;
    assert_exit(&out, 3);
    // Found while staging: the run's summary says failed, exit 3.
    assert_eq!(summary_of(&out)["exit_code"], 3);
    assert!(
        stderr_of(&out).contains("no_such_table"),
        "{}",
        stderr_of(&out)
    );

    // A results database that refuses writes (opened read-only after its migrations).
    let path = dir.path().join("ro.db");
    let store = Store::open(&format!("sqlite://{}", path.display()))
        .await
        .expect("store");
    store.close().await;
    let ro = format!("sqlite://{}?mode=ro", path.display());
    let out = output_of(world.command_on_url(&ro, &["--rate", "0"])).await;
    assert_exit(&out, 3);
    assert_error_line(&out, 3);

    // A PostgreSQL server that refuses connections is reported within seconds.
    let started = Instant::now();
    let out = output_of(world.command_on_url("postgres://postgres@127.0.0.1:1/nothing", &[])).await;
    let took = started.elapsed();
    assert_exit(&out, 3);
    let error = assert_error_line(&out, 3);
    assert!(error.contains("refused"), "the cause is named: {error}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert_eq!(world.sim.stats().lookups, 0);
    world.close().await;
}

/// `report` and `changes` never take a run in progress as `latest`: exit 3 and no file;
/// the run named by its id is still exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_run_is_never_latest() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = TestDb::sqlite();
    let store = db.store().await;
    let run_id = store
        .create_or_join_run(&NewRun {
            run_key: None,
            source: "csv:keys.csv".into(),
            source_spec: payple_reconcile::source::SourceSpec::Csv {
                path: "keys.csv".into(),
                format: Default::default(),
            },
            options: "{}".into(),
            shard_count: 1,
        })
        .await
        .expect("a running run");
    store.close().await;
    let report = dir.path().join("latest.csv");
    let mut cmd = helpers::command("http://127.0.0.1:9");
    cmd.args([
        "report",
        "--database-url",
        &db.url,
        "--run",
        "latest",
        "--output",
    ])
    .arg(&report);
    let out = output_of(cmd).await;
    assert_exit(&out, 3);
    assert!(assert_error_line(&out, 3).contains("completed"));
    assert!(!report.exists());
    let mut cmd = helpers::command("http://127.0.0.1:9");
    cmd.args(["changes", "--database-url", &db.url]);
    assert_exit(&output_of(cmd).await, 3);
    let mut cmd = helpers::command("http://127.0.0.1:9");
    cmd.args([
        "report",
        "--database-url",
        &db.url,
        "--run",
        &run_id.to_string(),
        "--output",
    ])
    .arg(&report);
    assert_exit(&output_of(cmd).await, 0);
    assert!(report.exists());
}

// ---- the migration race -------------------------------------------------------------------

/// Two processes starting on a new SQLite file at once both succeed, ten times over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_starts_both_migrate() {
    for round in 0..10 {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("new.db").display());
        let start = || {
            let mut cmd = helpers::command("http://127.0.0.1:9");
            cmd.args(["migrate", "--database-url", &url]);
            helpers::spawn(cmd)
        };
        let (a, b) = (start(), start());
        let (a, b) = tokio::join!(
            helpers::wait_output(a, Duration::from_secs(60)),
            helpers::wait_output(b, Duration::from_secs(60))
        );
        for out in [&a, &b] {
            assert!(
                out.status.success(),
                "round {round}: {:?}\n{}",
                out.status,
                stderr_of(out)
            );
        }
    }
}
