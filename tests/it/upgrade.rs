//! Upgrading in place: a results database written by the previous release (commit
//! edd8920; `tests/fixtures/previous-release/make.sh` made it) is migrated by this one with
//! every row, report, diff and summary line intact, and the next night runs on it.

use std::path::{Path, PathBuf};
use std::process::Output;

use payple_reconcile::simulator::SimConfig;
use sqlx::Connection;

use crate::helpers::{DbKind, Scenario, TestDb, assert_exit, command, json_lines, run_bin};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/previous-release")
        .join(name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The binary with `args` against `db_url`, no Payple needed.
fn offline(db_url: &str, args: &[&str]) -> Output {
    let mut cmd = command("http://127.0.0.1:9");
    cmd.args(args).args(["--database-url", db_url]);
    run_bin(&mut cmd)
}

/// What the previous release printed for its two runs, printed again by this one.
fn assert_outputs_intact(db_url: &str, prefix: &str, dir: &Path) {
    let migrated = offline(db_url, &["migrate"]);
    assert_exit(&migrated, 0);
    for run in ["1", "2"] {
        let out = dir.join(format!("report-{run}.csv"));
        let report = offline(
            db_url,
            &["report", "--run", run, "-o", &out.to_string_lossy()],
        );
        assert_exit(&report, 0);
        assert_eq!(
            read(&out),
            read(&fixture(&format!("{prefix}-report-{run}.csv"))),
            "run {run}'s report after the upgrade ({prefix})"
        );
    }
    let out = dir.join("changes.csv");
    let changes = offline(db_url, &["changes", "-o", &out.to_string_lossy()]);
    assert_exit(&changes, 0);
    assert_eq!(read(&out), read(&fixture(&format!("{prefix}-changes.csv"))));
    let summary = offline(db_url, &["summary", "--run", "2"]);
    assert_exit(&summary, 0);
    let now = String::from_utf8_lossy(&summary.stdout).into_owned();
    // A newer summary may say more; every line the previous release printed is still there.
    for line in read(&fixture(&format!("{prefix}-summary.txt"))).lines() {
        assert!(now.contains(line), "summary lost {line:?}:\n{now}");
    }
}

/// The night after the upgrade: a new run on the same database, diffed against the last
/// night the previous release wrote.
async fn next_night_runs(db_url: &str) {
    let sample = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/payer_ids.csv"));
    let head: Vec<&str> = sample.lines().take(31).collect();
    // Unopened: the database is the upgraded fixture at `db_url`, not the scenario's.
    let world = Scenario::new()
        .sim(SimConfig::default())
        .csv_file("keys.csv", head.join("\n") + "\n")
        .start_unopened()
        .await;
    let out = run_bin(&mut world.command_on_url(db_url, &["--rate", "0"]));
    assert_exit(&out, 0);
    let summary = json_lines(&out).pop().expect("summary line");
    assert_eq!(summary["run_id"], 3, "{summary}");
    assert_eq!(
        summary["active"].as_i64().unwrap_or(0) + summary["gone"].as_i64().unwrap_or(0),
        30
    );
    let changes = offline(db_url, &["changes", "--since", "2", "--run", "3"]);
    assert_exit(&changes, 0);
    world.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_database_of_the_previous_release_upgrades_in_place() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("results.db");
    std::fs::copy(fixture("results.db"), &db).expect("fixture copied");
    // The previous release left its file 0644 under umask 022; this release refuses a file
    // others may read (docs/safety.md), so the upgrade starts with `chmod 600`.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
    let url = format!("sqlite://{}", db.display());
    assert_outputs_intact(&url, "sqlite", dir.path());
    next_night_runs(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_database_of_the_previous_release_upgrades_in_place() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    assert_eq!(db.kind, DbKind::Postgres);
    // One connection of its own: the dump empties its session's search_path.
    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    sqlx::raw_sql(sqlx::AssertSqlSafe(read(&fixture("postgres.sql"))))
        .execute(&mut conn)
        .await
        .expect("the previous release's dump loads");
    conn.close().await.expect("close");
    let dir = tempfile::tempdir().expect("temp dir");
    assert_outputs_intact(&db.url, "postgres", dir.path());
    next_night_runs(&db.url).await;
}
