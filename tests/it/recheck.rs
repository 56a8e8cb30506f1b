//! Re-checking failed keys: `run --recheck-failed`, a completed `--run-key` run again, and
//! `--all-failed`, against the real binary, the simulator and a real database. A night
//! with faults is repaired in the same run: rows in place, attempts added, counts, report
//! and metrics updated.

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::Duration;

use payple_reconcile::domain::KeyStatus;
use payple_reconcile::simulator::{Faults, KeyBook, SimHandle};
use payple_reconcile::store::{CheckRecord, Store};
use serde_json::{Value, json};

use crate::helpers::{
    self, Scenario, Setup, TestDb, all_checks, assert_exit, assert_ground_truth, command, latency,
    output_of, stderr_of, summary_of,
};

/// 30% of lookups answered HTTP 500.
fn faulty() -> Faults {
    Faults {
        error_rate: 0.3,
        ..Faults::none()
    }
}

/// 30% of lookups answered HTTP 500 ([`faulty`]): a second simulator against the
/// scenario's database.
async fn faulty_sim(set: &Setup) -> SimHandle {
    set.second_sim(KeyBook::derived(), faulty(), None).await
}

/// The scenario of a re-check test on `db`: `n` keys from `seed`, `--rate 0
/// --concurrency C`, a healthy simulator (the repairs'); the store open.
async fn keys_on(db: TestDb, n: usize, seed: &str, concurrency: &str) -> Setup {
    Scenario::new()
        .on(db)
        .keys(n, seed)
        .args(&["--rate", "0", "--concurrency", concurrency])
        .start()
        .await
}

/// Runs `cmd`, asserts its exit code, returns its summary.
async fn run_to_end(cmd: Command, code: i32) -> (Output, Value) {
    let out = output_of(cmd).await;
    assert_exit(&out, code);
    let summary = summary_of(&out);
    (out, summary)
}

/// The failed rows of a night with faults (`--max-attempts 1`). Usually one attempt
/// each; a row with 2 was seen once in a full run under load, most likely a run of 500s
/// that opened the circuit breaker (the simulator's faults follow the order lookups
/// arrive in): an attempt that fails while the circuit opens costs no retry budget and is
/// sent again after the pause.
fn failed_once(checks: &BTreeMap<String, CheckRecord>) -> BTreeMap<String, CheckRecord> {
    let failed: BTreeMap<_, _> = checks
        .iter()
        .filter(|(_, r)| r.status == KeyStatus::Failed)
        .map(|(k, r)| (k.clone(), r.clone()))
        .collect();
    assert!(!failed.is_empty(), "30% faults failed no key");
    for row in failed.values() {
        assert_eq!(row.result_code.as_deref(), Some("HTTP_500"), "{row:?}");
        assert!(row.attempts >= 1, "{row:?}");
    }
    failed
}

/// After a repair: every key its true status (one row each), the failed keys looked up
/// once more (one attempt more than before, a later `checked_at`), the others untouched.
async fn assert_repaired(
    store: &Store,
    run_id: i64,
    ids: &[String],
    before: &BTreeMap<String, CheckRecord>,
    failed: &BTreeMap<String, CheckRecord>,
) {
    let after = assert_ground_truth(store, run_id, ids).await;
    for (id, row) in &after {
        match failed.get(id) {
            Some(old) => {
                assert_eq!(row.attempts, old.attempts + 1, "attempts add up: {row:?}");
                assert!(row.checked_at > old.checked_at, "{old:?} -> {row:?}");
                assert_ne!(row.result_code.as_deref(), Some("HTTP_500"), "{row:?}");
            }
            None => assert_eq!(row, &before[id], "a key that did not fail is unchanged"),
        }
    }
}

/// `report --run ID --output -`: the finance CSV's status column per masked key.
async fn report_statuses(db_url: &str, run_id: i64) -> Vec<String> {
    let mut cmd = command("http://127.0.0.1:9");
    cmd.args(["report", "--database-url", db_url, "--output", "-"])
        .args(["--run", &run_id.to_string()]);
    let out = output_of(cmd).await;
    assert_exit(&out, 0);
    let text = String::from_utf8(out.stdout).expect("UTF-8 report");
    text.lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap_or_default().to_owned())
        .collect()
}

/// A night against [`faulty_sim`] with `--max-attempts 1` and `extra` flags, ended with
/// exit 2 (the scenario's keys and flags, its database): its summary, and its result rows
/// before any repair, all and failed.
struct FaultyNight {
    summary: Value,
    run_id: i64,
    before: BTreeMap<String, CheckRecord>,
    failed: BTreeMap<String, CheckRecord>,
}

async fn faulty_night(set: &Setup, extra: &[&str]) -> FaultyNight {
    let faulty = faulty_sim(set).await;
    let mut first = set.command_with_sim(&faulty, &["--max-attempts", "1"]);
    first.args(extra);
    let (_, summary) = run_to_end(first, 2).await;
    let run_id = summary["run_id"].as_i64().expect("run id");
    let before = all_checks(&set.store, run_id).await;
    let failed = failed_once(&before);
    FaultyNight {
        summary,
        run_id,
        before,
        failed,
    }
}

/// Runs `cmd` to exit 0 and asserts its note says `says` and `sim` has still answered
/// `lookups` lookups: nothing was left to do, and nothing was sent.
async fn assert_nothing_sent(cmd: Command, says: &str, sim: &SimHandle, lookups: u64) {
    let (_, summary) = run_to_end(cmd, 0).await;
    assert!(
        summary["note"].as_str().unwrap_or_default().contains(says),
        "{summary}"
    );
    assert_eq!(sim.stats().lookups, lookups, "{says}");
}

async fn recheck_repairs_the_same_run(db: TestDb) {
    let set = keys_on(db, 60, "recheck", "8").await;
    let (store, ids, db_url) = (&set.store, &set.ids, set.db.url.as_str());
    let FaultyNight {
        summary: night,
        run_id,
        before,
        failed,
    } = faulty_night(&set, &[]).await;
    assert_eq!(night["failed"], json!(failed.len()));
    assert_eq!(
        report_statuses(db_url, run_id)
            .await
            .iter()
            .filter(|s| *s == "failed")
            .count(),
        failed.len()
    );

    let healthy = &set.sim;
    let (_, repaired) = run_to_end(set.bare_command(&["--recheck-failed"]), 0).await;
    assert_eq!(repaired["run_id"], json!(run_id), "{repaired}");
    assert_eq!(repaired["state"], "completed");
    assert_eq!(repaired["failed"], 0);
    assert_eq!(repaired["checked_now"], json!(failed.len()));
    assert_eq!(
        healthy.stats().lookups,
        failed.len() as u64,
        "only failed keys"
    );
    let note = repaired["note"].as_str().unwrap_or_default();
    assert!(
        note.contains(&format!("{} failed keys", failed.len())),
        "{note}"
    );

    assert_repaired(store, run_id, ids, &before, &failed).await;
    let run = store.run(run_id).await.unwrap().expect("the run");
    assert_eq!(run.counts.failed, 0);
    assert_eq!(run.counts.active + run.counts.gone, 60);
    assert_eq!(run.exit_code, Some(0));
    assert_eq!(run.keys_total, Some(60));
    let night_lookups = night["lookups"].as_i64().unwrap();
    assert_eq!(run.lookups, night_lookups + failed.len() as i64);
    assert_eq!(
        helpers::scalar_i64(store, "SELECT COUNT(*) FROM reconcile_runs").await,
        1,
        "no new run"
    );
    let statuses = report_statuses(db_url, run_id).await;
    assert_eq!(statuses.len(), 60);
    assert!(
        statuses.iter().all(|s| s == "active" || s == "gone"),
        "{statuses:?}"
    );

    // Nothing left to re-check: a note, exit 0, no lookup.
    let again = set.bare_command(&["--recheck-failed"]);
    assert_nothing_sent(again, "nothing to re-check", healthy, failed.len() as u64).await;
    set.close().await;
}

helpers::per_database!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    recheck_repairs_the_same_run:
        Sqlite => recheck_failed_on_sqlite,
        Postgres => recheck_failed_on_postgres,
        MySql => recheck_failed_on_mysql,
);

async fn run_key_again_rechecks(db: TestDb) {
    let set = keys_on(db, 40, "run-key-recheck", "8").await;
    let FaultyNight {
        run_id,
        before,
        failed,
        ..
    } = faulty_night(&set, &["--run-key", "2026-11-28"]).await;

    // The cron line, run again the same day: the failed keys are looked up again.
    let healthy = &set.sim;
    let again = set.command(&["--run-key", "2026-11-28"]);
    let (_, repaired) = run_to_end(again, 0).await;
    assert_eq!(repaired["run_id"], json!(run_id), "{repaired}");
    assert_eq!(repaired["failed"], 0);
    assert_eq!(healthy.stats().lookups, failed.len() as u64);
    assert_repaired(&set.store, run_id, &set.ids, &before, &failed).await;

    // Nothing transient left: "already completed", exit 0, nothing sent.
    let third = set.command(&["--run-key", "2026-11-28"]);
    assert_nothing_sent(third, "already completed", healthy, failed.len() as u64).await;
    set.close().await;
}

helpers::per_database!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    run_key_again_rechecks:
        Sqlite => run_key_again_rechecks_on_sqlite,
        Postgres => run_key_again_rechecks_on_postgres,
);

async fn all_failed_takes_definite_failures(db: TestDb) {
    let set = keys_on(db, 20, "all-failed", "4").await;
    let (store, ids) = (&set.store, &set.ids);
    let (mismatch, unknown) = (&ids[3], &ids[7]);
    let book = helpers::key_file(
        set.dir.path(),
        "keys.jsonl",
        &[
            json!({"payer_id": mismatch, "kind": "mismatch"}),
            json!({"payer_id": unknown, "kind": "error", "code": "XPAY0042", "msg": "new"}),
        ],
    );
    let odd = set.second_sim(book, Faults::none(), None).await;
    let (_, night) = run_to_end(set.command_with_sim(&odd, &[]), 2).await;
    let run_id = night["run_id"].as_i64().expect("run id");
    assert_eq!(night["failed"], 2, "{night}");
    let code_of = async |id: &str| {
        let row = store.check(run_id, id).await.unwrap().expect("row");
        (row.status, row.result_code.unwrap_or_default())
    };
    assert_eq!(code_of(mismatch).await.1, "PAYER_ID_MISMATCH");

    // By default only the unknown code is looked up again; the mismatch stays.
    let healthy = &set.sim;
    let (_, first) = run_to_end(set.bare_command(&["--recheck-failed"]), 2).await;
    assert_eq!(first["failed"], 1, "{first}");
    assert_eq!(healthy.stats().lookups, 1);
    assert_eq!(
        code_of(unknown).await.0.as_str(),
        helpers::derived_status(unknown)
    );
    assert_eq!(code_of(mismatch).await.1, "PAYER_ID_MISMATCH");

    // Nothing transient is left: a note, exit 0, no lookup.
    let none = set.bare_command(&["--recheck-failed"]);
    assert_nothing_sent(none, "--all-failed", healthy, 1).await;

    let id = run_id.to_string();
    let args = ["--recheck-failed", id.as_str(), "--all-failed"];
    let (_, all) = run_to_end(set.bare_command(&args), 0).await;
    assert_eq!(all["failed"], 0, "{all}");
    assert_eq!(healthy.stats().lookups, 2);
    assert_ground_truth(store, run_id, ids).await;
    assert_eq!(
        store
            .check(run_id, mismatch)
            .await
            .unwrap()
            .unwrap()
            .attempts,
        2
    );
    set.close().await;
}

helpers::per_database!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    all_failed_takes_definite_failures:
        Sqlite => all_failed_on_sqlite,
        Postgres => all_failed_on_postgres,
);

/// `payple_reconcile_last_success_timestamp_seconds` in a metrics file.
fn last_success(path: &std::path::Path) -> f64 {
    let text = std::fs::read_to_string(path).expect("metrics file");
    payple_reconcile::report::metrics::previous_last_success(&text).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_night_with_failed_keys_is_not_a_success() {
    let set = keys_on(TestDb::sqlite(), 30, "metrics-recheck", "8").await;
    let metrics = set.dir.path().join("payple.prom");
    let metrics_arg = metrics.to_str().unwrap();
    let clean = set.command(&["--metrics-file", metrics_arg]);
    run_to_end(clean, 0).await;
    let first = last_success(&metrics);
    assert!(first > 0.0);

    let faulty = faulty_sim(&set).await;
    let mut night = set.command_with_sim(&faulty, &[]);
    night.args(["--max-attempts", "1", "--metrics-file", metrics_arg]);
    night.args(["--run-key", "night-2"]);
    let (_, summary) = run_to_end(night, 2).await;
    assert!(summary["failed"].as_i64().unwrap() > 0);
    assert_eq!(last_success(&metrics), first, "a night with failed keys");

    // The repair (the run key again) completes the night with no failed key: now it is.
    let again = set.command(&["--run-key", "night-2", "--metrics-file", metrics_arg]);
    let (_, repaired) = run_to_end(again, 0).await;
    assert_eq!(repaired["failed"], 0);
    let repaired_at = last_success(&metrics);
    let run = set
        .store
        .run(repaired["run_id"].as_i64().unwrap())
        .await
        .unwrap()
        .unwrap();
    let finished = run
        .finished_at
        .map(payple_reconcile::report::metrics::unix_seconds);
    assert_eq!(Some(repaired_at), finished, "the repaired night's end");
    assert!(repaired_at > first);
    set.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_exit_3_with_nothing_sent() {
    // Unopened: the first refusals come before the database exists.
    let world = Scenario::new()
        .keys(5, "recheck-refusals")
        .args(&["--rate", "0", "--concurrency", "2"])
        .start_unopened()
        .await;
    let refused = async |args: &[&str], says: &str| {
        let out = output_of(world.bare_command(args)).await;
        assert_exit(&out, 3);
        let err = stderr_of(&out);
        assert!(err.contains(says), "{args:?}: {err}");
        // Nothing but the JSON error line (issue 10).
        let line = summary_of(&out);
        assert_eq!(line["exit_code"], 3, "{args:?}: {line}");
        assert!(line.get("run_id").is_none(), "{args:?}: {line}");
    };
    refused(&["--recheck-failed"], "no run has completed yet").await;
    refused(&["--recheck-failed", "7"], "run 7 does not exist").await;
    refused(&["--recheck-failed", "x"], "not a run id").await;
    let csv_arg = world.csv_arg();
    refused(&["--recheck-failed", "--csv", csv_arg], "--csv").await;
    refused(
        &["--recheck-failed", "--source-table", "t"],
        "--source-table",
    )
    .await;
    refused(
        &["--recheck-failed", "--source-query", "SELECT 1"],
        "--source-query",
    )
    .await;
    refused(&["--recheck-failed", "--run-key", "k"], "--run-key").await;
    refused(&["--recheck-failed", "--resume"], "--resume").await;
    refused(&["--all-failed", "--csv", csv_arg], "--all-failed").await;
    assert_eq!(world.sim.stats().lookups + world.sim.stats().auth_calls, 0);

    run_to_end(world.command(&[]), 0).await;
    let store = world.db.store().await;
    for (state, says) in [("running", "still running"), ("interrupted", "--resume 1")] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE reconcile_runs SET state = '{state}'"
        )))
        .execute(store.pool())
        .await
        .unwrap();
        refused(&["--recheck-failed", "1"], says).await;
    }
    assert_eq!(world.sim.stats().lookups, 5);
    store.close().await;
    world.close().await;
}

/// A re-check killed mid-way (SIGKILL: no cleanup) leaves a run `--resume` finishes: the
/// keys it had not rewritten are still pending, and every re-checked key ends with its
/// attempts added up, whichever process looked it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recheck_killed_mid_way_is_finished_by_resume() {
    let set = keys_on(TestDb::sqlite(), 80, "recheck-kill", "8").await;
    let store = &set.store;
    let FaultyNight {
        run_id,
        before,
        failed,
        ..
    } = faulty_night(&set, &[]).await;
    assert!(failed.len() >= 8, "{} failed", failed.len());

    let slow = set.second_sim(KeyBook::derived(), latency(400), None).await;
    let cmd = set.bare_command_with_sim(&slow, &["--recheck-failed", "--concurrency", "1"]);
    let mut child = helpers::spawn(cmd);
    let rechecked =
        format!("SELECT COUNT(*) FROM billing_key_checks WHERE run_id = {run_id} AND attempts = 2");
    let (limit, poll) = (Duration::from_secs(30), Duration::from_millis(20));
    helpers::wait_for_count(store, &rechecked, 3, limit, poll, &mut child).await;
    let pid = child.id().expect("child pid");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let out = helpers::finish(child).await;
    assert!(out.stdout.is_empty(), "a killed re-check printed a summary");
    let run = store.run(run_id).await.unwrap().expect("run");
    assert_eq!(
        run.state.as_str(),
        "running",
        "a killed re-check stays running"
    );
    let rows = helpers::scalar_i64(store, &helpers::count_rows_sql(run_id)).await;
    assert!(
        rows < 80,
        "{rows} rows: some re-checked keys are still pending"
    );

    let (_, resumed) = run_to_end(set.bare_command(&["--resume"]), 0).await;
    assert_eq!(resumed["run_id"], json!(run_id), "{resumed}");
    assert_eq!(resumed["failed"], 0);
    assert_eq!(resumed["checked_now"], json!(80 - rows));
    assert_repaired(store, run_id, &set.ids, &before, &failed).await;
    set.close().await;
}

/// Shards of one run key, one after the other: the first shard started again reopens the
/// failed keys of both; each re-checks its own, and the run completes with the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_run_key_rechecks_every_shard() {
    let set = keys_on(TestDb::sqlite(), 60, "recheck-shards", "4").await;
    let faulty = faulty_sim(&set).await;
    let healthy = &set.sim;
    let shard_run = |sim: &SimHandle, shard: &str, extra: &[&str]| {
        let mut cmd = set.command_with_sim(sim, &[]);
        cmd.args(["--shard", shard, "--run-key", "sharded-night"])
            .args(extra);
        cmd
    };
    let once = ["--max-attempts", "1"];
    run_to_end(shard_run(&faulty, "0/2", &once), 2).await;
    let (_, night) = run_to_end(shard_run(&faulty, "1/2", &once), 2).await;
    let run_id = night["run_id"].as_i64().expect("run id");
    assert_eq!(night["state"], "completed");
    let before = all_checks(&set.store, run_id).await;
    let failed = failed_once(&before);

    let (_, first) = run_to_end(shard_run(healthy, "0/2", &[]), 0).await;
    assert_eq!(first["run_id"], json!(run_id));
    assert_eq!(first["state"], "running", "shard 1 still has keys: {first}");
    let (_, last) = run_to_end(shard_run(healthy, "1/2", &[]), 0).await;
    assert_eq!(last["state"], "completed", "{last}");
    assert_eq!(last["failed"], 0);
    assert_eq!(healthy.stats().lookups, failed.len() as u64);
    assert_repaired(&set.store, run_id, &set.ids, &before, &failed).await;
    set.close().await;
}
