//! Run identity: `--run-key` names a logical run, `--rerun` starts it again, and
//! `--dry-run` checks everything and writes nothing.

use std::time::Duration;

use payple_reconcile::store::RunState;

use super::{POLL, run_id_of, runs, send};
use crate::helpers::{
    self, Ran, Scenario, all_checks, assert_exit, count_rows_sql, finish, output_of, scalar_i64,
    spawn, summary_of,
};

const NIGHT: [&str; 4] = ["--run-key", "2026-11-27", "--rate", "0"];

/// The night's key again, after its run completed: nothing is sent, a note says why.
async fn completed_key_is_not_run_again(ran: &Ran, first_id: i64) {
    let out = ran.output(&[]).await;
    assert_exit(&out, 0);
    let again = summary_of(&out);
    assert_eq!(run_id_of(&again), first_id);
    assert_eq!(again["state"], "completed");
    assert_eq!(again["checked_now"], 0);
    let note = again["note"]
        .as_str()
        .unwrap_or_else(|| panic!("no note: {again}"));
    assert!(note.contains("already completed"), "{note}");
    assert!(
        note.contains("2026-11-27") && note.contains("--rerun"),
        "{note}"
    );
    assert_eq!(
        (ran.sim.stats().auth_calls, ran.sim.stats().lookups),
        (1, 30),
        "a completed run key sent requests"
    );
}

/// `--rerun`: a new run under the same key, which is not run again either; returns its id.
async fn rerun_makes_a_new_run(ran: &Ran, first_id: i64) -> i64 {
    let out = ran.output(&["--rerun"]).await;
    assert_exit(&out, 0);
    let second = summary_of(&out);
    let second_id = run_id_of(&second);
    assert!(second_id > first_id);
    assert_eq!(second["state"], "completed");
    assert_eq!(second["checked_now"], 30);
    assert_eq!(ran.sim.stats().lookups, 60);
    let store = &ran.store;
    let by_key = store
        .run_by_key("2026-11-27")
        .await
        .expect("read")
        .expect("the key names the new run");
    assert_eq!(by_key.id, second_id);
    let old = store.run(first_id).await.expect("read").expect("old run");
    assert_eq!(old.state, RunState::Completed);
    assert_ne!(old.run_key.as_deref(), Some("2026-11-27"), "{old:?}");
    // And that one is not run again either.
    let out = ran.output(&[]).await;
    assert_exit(&out, 0);
    assert_eq!(run_id_of(&summary_of(&out)), second_id);
    assert_eq!(ran.sim.stats().lookups, 60);
    second_id
}

/// SIGTERM mid-run of the next night's key, then the same key again: the same run
/// continues and checks only what was missing.
async fn interrupted_key_run_continues(ran: &Ran, second_id: i64) {
    let store = &ran.store;
    let lookups_before = ran.sim.stats().lookups;
    let next = ["--run-key", "2026-11-28", "--csv", ran.csv_arg()];
    let mut child =
        spawn(ran.bare_command(&[&next[..], &["--rate", "5", "--concurrency", "2"]].concat()));
    helpers::wait_for_count(
        store,
        &format!("SELECT COUNT(*) FROM billing_key_checks WHERE run_id > {second_id}"),
        5,
        Duration::from_secs(15),
        POLL,
        &mut child,
    )
    .await;
    send(&child, libc::SIGTERM);
    let out = finish(child).await;
    assert_exit(&out, 143);
    let stopped = summary_of(&out);
    let stopped_id = run_id_of(&stopped);
    assert_eq!(stopped["state"], "interrupted");
    let had = scalar_i64(store, &count_rows_sql(stopped_id)).await;
    assert!((5..30).contains(&had), "{had} rows before the signal");

    let out = output_of(ran.bare_command(&[&next[..], &["--rate", "0"]].concat())).await;
    assert_exit(&out, 0);
    let resumed = summary_of(&out);
    assert_eq!(
        run_id_of(&resumed),
        stopped_id,
        "the key's unfinished run continues"
    );
    assert_eq!(resumed["state"], "completed");
    assert_eq!(resumed["checked_now"].as_i64(), Some(30 - had), "{resumed}");
    assert_eq!(
        ran.sim.stats().lookups - lookups_before,
        30,
        "every key of the night looked up exactly once"
    );
    let run = store.run(stopped_id).await.expect("read").expect("run");
    assert_eq!(run.state, RunState::Completed);
    assert_eq!(run.run_key.as_deref(), Some("2026-11-28"));
    assert_eq!(all_checks(store, stopped_id).await.len(), 30);
}

/// `--run-key` (the scenario runs with [`NIGHT`]): a completed key is not run again (exit 0,
/// a note, no request to Payple);
/// `--rerun` makes a new run under the key; a SIGTERMed key run started again continues the
/// same run id and checks only what was missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_keys_name_a_logical_run() {
    let ran = Scenario::new().keys(30, "run-key").args(&NIGHT).run().await;
    ran.expect_exit(0);
    let first = ran.summary();
    let first_id = run_id_of(&first);
    assert_eq!(first["state"], "completed");
    assert!(first.get("note").is_none(), "{first}");
    assert_eq!(
        (ran.sim.stats().auth_calls, ran.sim.stats().lookups),
        (1, 30)
    );

    completed_key_is_not_run_again(&ran, first_id).await;
    let second_id = rerun_makes_a_new_run(&ran, first_id).await;
    interrupted_key_run_continues(&ran, second_id).await;
    assert_eq!(
        runs(&ran.store).await.len(),
        3,
        "first, rerun, and the resumed night"
    );
    ran.close().await;
}

// ---- 3. dry run ---------------------------------------------------------------------------

/// `--dry-run` on a CSV: one auth call, no lookup, counts on stdout, and no database file.
/// With wrong credentials it exits 3, still writing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_checks_everything_and_writes_nothing() {
    let ids = helpers::payer_ids(12, "dry-run");
    let mut rows = ids.clone();
    rows.push(ids[2].clone());
    rows.push(ids[5].clone());
    rows.push(String::new());
    // Unopened: the dry run must find no database and create none.
    let world = Scenario::new().ids(&rows).start_unopened().await;
    let csv = world.csv_arg();
    let db_path = std::path::PathBuf::from(world.db.url.trim_start_matches("sqlite://"));
    let files_in = |dir: &std::path::Path| -> Vec<_> {
        std::fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect()
    };

    let out = output_of(world.bare_command(&["--dry-run", "--csv", csv])).await;
    assert_exit(&out, 0);
    let report = summary_of(&out);
    assert_eq!(report["dry_run"], true, "{report}");
    assert_eq!(report["keys"], 12, "{report}");
    assert_eq!(report["duplicates"], 2, "{report}");
    assert_eq!(report["rejected"], 1, "{report}");
    assert_eq!(report["auth_calls"], 1, "{report}");
    assert_eq!(report["source"], format!("csv:{csv}"), "{report}");
    let stats = world.sim.stats();
    assert_eq!((stats.auth_calls, stats.lookups), (1, 0), "{stats:?}");
    let db_dir = db_path.parent().expect("the database's folder");
    assert!(
        !db_path.exists(),
        "a dry run created the database: {:?}",
        files_in(db_dir)
    );
    assert_eq!(
        files_in(db_dir),
        Vec::<std::ffi::OsString>::new(),
        "a dry run wrote files"
    );
    assert_eq!(
        files_in(world.dir.path()),
        ["keys.csv"],
        "a dry run wrote files"
    );

    // Wrong credentials: exit 3 after the one auth call, still nothing written.
    let mut cmd = world.bare_command(&["--dry-run", "--csv", csv]);
    cmd.env("PAYPLE_CUST_KEY", "not-the-partner-key");
    let out = output_of(cmd).await;
    assert_exit(&out, 3);
    // A failed dry run prints no report, only the JSON error line (issue 10).
    let line = summary_of(&out);
    assert_eq!(line["exit_code"], 3, "{line}");
    assert!(
        line.get("keys").is_none(),
        "a failed dry run printed a report: {line}"
    );
    assert_eq!(world.sim.stats().lookups, 0);
    assert!(!db_path.exists());
    world.close().await;
}
