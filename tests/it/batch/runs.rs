//! Runs as a whole: the latest view across runs, exit codes, the summary on stdout, and
//! `--resume` with nothing to resume.

use std::collections::BTreeMap;
use std::path::Path;

use payple_reconcile::simulator::{Faults, KeyBook};
use payple_reconcile::store::{RunState, Store};
use serde_json::json;
use sqlx::Row;

use crate::helpers::{
    self, Scenario, Setup, TestDb, assert_exit, derived_status, key_file, output_of, stderr_of,
    summary_of,
};

/// `run --csv CSV --rate 0` (the scenario's flags) against a second simulator answering
/// from `keys` and the scenario's database: asserts the exit code and returns the run id.
async fn csv_run_id(set: &Setup, keys: KeyBook, csv: &Path, code: i32) -> i64 {
    let sim = set.second_sim(keys, Faults::none(), None).await;
    let out = output_of(set.command_with_sim(&sim, &["--csv", csv.to_str().unwrap()])).await;
    assert_exit(&out, code);
    let run_id = summary_of(&out)["run_id"].as_i64().expect("run id");
    sim.shutdown().await;
    run_id
}

/// A completed run's row: its counts `(active, gone, failed, rejected)` and `(keys_total,
/// auth_calls, lookups, exit_code)`.
async fn assert_completed_run(
    store: &Store,
    run_id: i64,
    counts: (i64, i64, i64, i64),
    totals: (Option<i64>, i64, i64, Option<i64>),
) {
    let run = store
        .run(run_id)
        .await
        .expect("read")
        .unwrap_or_else(|| panic!("run {run_id}"));
    assert_eq!(run.state, RunState::Completed);
    assert_eq!(
        (
            run.counts.active,
            run.counts.gone,
            run.counts.failed,
            run.counts.rejected
        ),
        counts
    );
    assert_eq!(
        (run.keys_total, run.auth_calls, run.lookups, run.exit_code),
        totals
    );
}

/// Two runs against simulators that answer differently: `billing_key_latest` gives each
/// key its newest status, keys only in the first run keep theirs, rejected rows are left
/// out, and each run's row has its own counts and exit code.
async fn latest_view_across_two_runs(db: TestDb) {
    let dir = tempfile::tempdir().expect("temp dir");
    let k = helpers::payer_ids(7, "latest");
    let line = |i: usize, kind: &str| json!({"payer_id": k[i], "kind": kind});
    let first = key_file(
        dir.path(),
        "first.jsonl",
        &[
            line(0, "card"),
            line(1, "card"),
            line(2, "transfer"),
            line(3, "gone"),
            line(4, "error"),
            line(5, "card"),
        ],
    );
    let second = key_file(
        dir.path(),
        "second.jsonl",
        &[
            line(0, "gone"),
            line(1, "card"),
            line(4, "transfer"),
            line(6, "transfer"),
        ],
    );
    let mut rows: Vec<(String, Option<String>)> =
        k[..6].iter().map(|id| (id.clone(), None)).collect();
    rows.push((String::new(), Some("EMPTY".to_owned())));
    let csv1 = dir.path().join("first.csv");
    std::fs::write(&csv1, super::rows_csv(&rows)).expect("write csv");
    let csv2 = dir.path().join("second.csv");
    let second_rows = [0, 1, 4, 6].map(|i| (k[i].clone(), None));
    std::fs::write(&csv2, super::rows_csv(&second_rows)).expect("write csv");

    let set = Scenario::new().on(db).args(&["--rate", "0"]).start().await;
    let run1 = csv_run_id(&set, first, &csv1, 2).await;
    let run2 = csv_run_id(&set, second, &csv2, 0).await;
    assert!(run2 > run1);

    let store = &set.store;
    // Seven lookups for six keys: the `error` key's unknown code earns a second look.
    assert_completed_run(store, run1, (4, 1, 1, 1), (Some(6), 1, 7, Some(2))).await;
    assert_completed_run(store, run2, (3, 1, 0, 0), (Some(4), 1, 4, Some(0))).await;
    let latest = store
        .latest_runs(Some(RunState::Completed), 1)
        .await
        .expect("latest");
    assert_eq!(latest[0].id, run2);

    let view =
        sqlx::query("SELECT payer_id, run_id, status FROM billing_key_latest ORDER BY payer_id")
            .fetch_all(store.pool())
            .await
            .expect("read the view");
    let got: BTreeMap<String, (i64, String)> = view
        .iter()
        .map(|r| {
            (
                r.try_get::<String, _>(0).expect("payer_id"),
                (
                    r.try_get::<i64, _>(1).expect("run_id"),
                    r.try_get::<String, _>(2).expect("status"),
                ),
            )
        })
        .collect();
    assert_eq!(got.len(), view.len(), "a key twice in the view");
    let want: BTreeMap<String, (i64, String)> = [
        (0, run2, "gone"),
        (1, run2, "active"),
        (2, run1, "active"),
        (3, run1, "gone"),
        (4, run2, "active"),
        (5, run1, "active"),
        (6, run2, "active"),
    ]
    .into_iter()
    .map(|(i, run, s)| (k[i].clone(), (run, s.to_owned())))
    .collect();
    assert_eq!(got, want);
    set.close().await;
}

helpers::per_database!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    latest_view_across_two_runs:
        Sqlite => latest_view_across_runs_on_sqlite,
        Postgres => latest_view_across_runs_on_postgres,
        MySql => latest_view_across_runs_on_mysql,
);

/// Exit code 0 when every key is active or gone; 2 as soon as one key failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_zero_only_when_every_key_resolved() {
    let ids = helpers::payer_ids(40, "exit-codes");
    assert!(ids.iter().any(|id| derived_status(id) == "gone"));
    let ran = Scenario::new().ids(&ids).args(&["--rate", "0"]).run().await;
    ran.expect_exit(0);
    let summary = ran.summary();
    assert_eq!(summary["exit_code"], 0);
    assert_eq!(summary["failed"], 0);

    // The same keys, one answering an unknown error code.
    let book = key_file(
        ran.dir.path(),
        "keys.jsonl",
        &[json!({"payer_id": ids[7], "kind": "error"})],
    );
    let sim = ran.second_sim(book, Faults::none(), None).await;
    let out = output_of(ran.command_with_sim(&sim, &[])).await;
    assert_exit(&out, 2);
    let summary = summary_of(&out);
    assert_eq!(
        (summary["failed"].as_i64(), summary["exit_code"].as_i64()),
        (Some(1), Some(2))
    );
    let runs = ran.store.latest_runs(None, 5).await.expect("runs");
    let codes: Vec<Option<i64>> = runs.iter().map(|r| r.exit_code).collect();
    assert_eq!(codes, [Some(2), Some(0)]);
    sim.shutdown().await;
    ran.close().await;
}

// ---- stdout -------------------------------------------------------------------------------

/// stdout of `run` is one JSON line, and it agrees with the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_is_exactly_one_json_summary_line() {
    let ids = helpers::payer_ids(25, "stdout");
    let mut with_dup = ids.clone();
    with_dup.push(ids[3].clone());
    with_dup.push(String::new());
    let ran = Scenario::new()
        .ids(&with_dup)
        .args(&["--rate", "0"])
        .run()
        .await;
    ran.expect_exit(2);
    let s = ran.summary();
    let run = ran.run_record().await;
    let gone = ids.iter().filter(|id| derived_status(id) == "gone").count() as i64;
    assert_eq!(s["run_id"], run.id);
    assert_eq!(s["state"], "completed");
    assert_eq!(s["source"], format!("csv:{}", ran.csv_arg()));
    assert_eq!(s["keys"], 25);
    assert_eq!(s["duplicates"], 1);
    assert_eq!(
        (s["active"].as_i64(), s["gone"].as_i64()),
        (Some(25 - gone), Some(gone))
    );
    assert_eq!(
        (s["failed"].as_i64(), s["rejected"].as_i64()),
        (Some(0), Some(1))
    );
    assert_eq!(s["checked_now"], 25);
    assert_eq!(s["lookups"], 25);
    assert_eq!(s["auth_calls"], 1);
    assert_eq!(s["exit_code"], 2);
    assert!(s["duration_secs"].as_f64().is_some_and(|d| d > 0.0), "{s}");
    assert!(
        s["lookups_per_second"].as_f64().is_some_and(|r| r > 0.0),
        "{s}"
    );
    assert_eq!(
        (run.counts.active, run.counts.gone, run.counts.rejected),
        (25 - gone, gone, 1)
    );
    ran.close().await;
}

// ---- resume with nothing to resume --------------------------------------------------------

/// `--resume` with nothing to resume exits 3 saying so, and checks nothing; after a
/// completed run too (issue 10: it used to start a new full run silently, and this test
/// was `resume_with_nothing_to_resume_starts_a_new_run`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_nothing_to_resume_exits_3() {
    let ran = Scenario::new()
        .keys(20, "nothing-to-resume")
        .args(&["--resume", "--rate", "0"])
        .env("RUST_LOG", "info")
        .run()
        .await;
    // An empty database, then one whose only run completed: nothing to resume either time.
    let completed = output_of(ran.bare_command(&["--csv", ran.csv_arg(), "--rate", "0"])).await;
    assert_exit(&completed, 0);
    let again = ran.output(&[]).await;
    for (round, out) in [&ran.out, &again].into_iter().enumerate() {
        assert_exit(out, 3);
        assert!(
            stderr_of(out).contains("nothing to resume"),
            "round {round}: {}",
            stderr_of(out)
        );
        let line = summary_of(out);
        assert_eq!(line["exit_code"], 3, "{line}");
        let error = line["error"].as_str().unwrap_or_default();
        assert!(error.contains("nothing to resume"), "{line}");
    }
    assert_eq!(ran.run_record().await.state, RunState::Completed);
    assert_eq!(
        ran.sim.stats().lookups,
        20,
        "a completed run is not resumed"
    );
    ran.close().await;
}
