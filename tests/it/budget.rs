//! Budgeted runs: `--max-lookups`, `--stop-at` and `--time-budget` end a run normally
//! after the most urgent keys (never checked, failed, due soon, oldest check), `changes`
//! compares latest known results across partial runs, and `summary` shows coverage.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use payple_reconcile::domain::mask_payer_id;
use payple_reconcile::simulator::Faults;
use payple_reconcile::store::Store;
use serde_json::json;

use crate::helpers::{
    self, Scenario, TestDb, assert_exit, derived_status, exec, key_file, key_hash, latency,
    logged_lookups, output_of, scalar_i64, summary_of, wait_output,
};

/// The source table `billing_keys (payer_id, customer_ref, next_charge)` holding `rows`.
async fn source_table(store: &Store, rows: &[(&str, Option<String>)]) {
    exec(store.pool(), "DROP TABLE IF EXISTS billing_keys").await;
    exec(
        store.pool(),
        "CREATE TABLE billing_keys (payer_id VARCHAR(64), customer_ref VARCHAR(64), \
         next_charge VARCHAR(32))",
    )
    .await;
    for (i, (id, due)) in rows.iter().enumerate() {
        let due = due.as_ref().map_or("NULL".to_owned(), |d| format!("'{d}'"));
        exec(
            store.pool(),
            &format!("INSERT INTO billing_keys VALUES ('{id}', 'C-{i:02}', {due})"),
        )
        .await;
    }
}

/// Sets the check time of `id`'s rows in every run (UTC, stored format).
async fn set_checked(store: &Store, id: &str, at: DateTime<Utc>) {
    let at = at.format("%Y-%m-%dT%H:%M:%S%.3fZ");
    exec(
        store.pool(),
        &format!("UPDATE billing_key_checks SET checked_at = '{at}' WHERE payer_id = '{id}'"),
    )
    .await;
}

/// The payer ids with a row in `run_id`.
async fn checked_in(store: &Store, run_id: i64) -> BTreeSet<String> {
    helpers::all_checks(store, run_id)
        .await
        .into_keys()
        .collect()
}

/// `n` keys the simulator derives as active (so only the keys a test marks fail or go).
fn active_ids(n: usize, seed: &str) -> Vec<String> {
    helpers::payer_ids(n * 4, seed)
        .into_iter()
        .filter(|id| derived_status(id) == "active")
        .take(n)
        .collect()
}

fn day(days: i64) -> chrono::Duration {
    chrono::Duration::days(days)
}

/// Never checked, then failed, then due soon, then the oldest check: a budget of 8 of 10
/// keys checks exactly those 8, in that order, and ends `completed`.
async fn budget_follows_priority(db: TestDb) {
    let ids = active_ids(10, "priority");
    let dir = tempfile::tempdir().expect("temp dir");
    let failing = key_file(
        dir.path(),
        "keys.jsonl",
        &[json!({"payer_id": ids[3], "kind": "error"})],
    );
    let set = Scenario::new()
        .on(db)
        .book(failing.clone())
        .args(&["--rate", "0"])
        .start()
        .await;
    let store = &set.store;
    // Night 1, no budget: keys 0-5, all checked (key 3 fails).
    let first: Vec<(&str, Option<String>)> = ids[..6].iter().map(|i| (i.as_str(), None)).collect();
    source_table(store, &first).await;
    let out = set.output(&[]).await;
    assert_exit(&out, 2);
    // Known ages: key 1 oldest, then 4, 0, 2, 5; key 3 failed.
    let now = Utc::now();
    for (i, age) in [(1, 40), (4, 30), (0, 20), (2, 10), (5, 1), (3, 5)] {
        set_checked(store, &ids[i], now - day(age)).await;
    }
    // Night 2: keys 6-9 are new; key 5 is charged tomorrow, key 4 in a month.
    let soon = (now + day(1)).format("%Y-%m-%d").to_string();
    let later = (now + day(30)).format("%Y-%m-%d").to_string();
    let second: Vec<(&str, Option<String>)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let due = match i {
                5 => Some(soon.clone()),
                4 => Some(later.clone()),
                _ => None,
            };
            (id.as_str(), due)
        })
        .collect();
    source_table(store, &second).await;
    let log = dir.path().join("requests.jsonl");
    let sim = set
        .second_sim(failing, Faults::none(), Some(log.clone()))
        .await;
    let args = [
        "--concurrency",
        "1",
        "--max-lookups",
        "8",
        "--due-column",
        "next_charge",
        "--due-within",
        "3d",
    ];
    let out = output_of(set.command_with_sim(&sim, &args)).await;
    assert_exit(&out, 2);
    let summary = summary_of(&out);
    assert_eq!(summary["state"], "completed", "{summary}");
    assert_eq!(summary["budget_stop"], "max_lookups", "{summary}");
    assert_eq!(summary["keys"], 10, "{summary}");
    assert_eq!(summary["keys_checked"], 8, "{summary}");
    let run_id = summary["run_id"].as_i64().expect("run id");
    let want_order = [6, 7, 8, 9, 3, 5, 1, 4];
    let order: Vec<String> = want_order.iter().map(|&i| key_hash(&ids[i])).collect();
    // The failing key is looked up once more at the end (an unknown code): first
    // occurrences give the dispatch order.
    let mut first = Vec::new();
    for key in logged_lookups(&log) {
        if !first.contains(&key) {
            first.push(key);
        }
    }
    assert_eq!(first, order, "lookups in priority order");
    let want: BTreeSet<String> = want_order.iter().map(|&i| ids[i].clone()).collect();
    assert_eq!(checked_in(store, run_id).await, want);
    let recorded = scalar_i64(
        store,
        &format!("SELECT keys_checked FROM reconcile_runs WHERE id = {run_id}"),
    )
    .await;
    assert_eq!(recorded, 8);
    assert_eq!(
        store.budget_stop(run_id).await.expect("budget"),
        Some("max_lookups".to_owned())
    );
}

helpers::per_database!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    budget_follows_priority:
        Sqlite => budget_checks_exactly_n_keys_in_priority_order_on_sqlite,
        Postgres => budget_checks_exactly_n_keys_in_priority_order_on_postgres,
        MySql => budget_checks_exactly_n_keys_in_priority_order_on_mysql,
);

/// A budget of a third of the keys checks every key within three runs, and the fourth
/// run goes back to the keys checked longest ago.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_per_run_checks_every_key_within_three_runs() {
    let set = Scenario::new()
        .keys(30, "thirds")
        .args(&["--rate", "0", "--max-lookups", "10"])
        .start()
        .await;
    let (store, ids) = (&set.store, &set.ids);
    let mut runs = Vec::new();
    for night in 1..=4 {
        let out = set.output(&[]).await;
        assert_exit(&out, 0);
        let summary = summary_of(&out);
        assert_eq!(summary["state"], "completed", "night {night}: {summary}");
        assert_eq!(summary["keys_checked"], 10, "night {night}: {summary}");
        runs.push(summary["run_id"].as_i64().expect("run id"));
    }
    let mut seen = BTreeSet::new();
    for run in &runs[..3] {
        let keys = checked_in(store, *run).await;
        assert_eq!(keys.len(), 10);
        assert!(seen.is_disjoint(&keys), "a key checked twice in three runs");
        seen.extend(keys);
    }
    assert_eq!(
        seen,
        ids.iter().cloned().collect(),
        "every key within 3 runs"
    );
    assert_eq!(
        checked_in(store, runs[3]).await,
        checked_in(store, runs[0]).await,
        "the fourth run re-checks the first run's keys, the oldest"
    );
}

/// `--stop-at` the next minute (KST): the run stops dispatching then, finishes what is in
/// flight and ends `completed` with exit 0, keys left for the next night.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_at_a_minute_ahead_ends_the_run_normally() {
    let set = Scenario::new()
        .keys(2000, "stop-at")
        .faults(latency(200))
        .args(&["--rate", "0", "--concurrency", "2"])
        .start()
        .await;
    let kst = chrono::FixedOffset::east_opt(9 * 3600).expect("offset");
    // The next minute boundary at least 5 s away.
    let now = Utc::now();
    let minute = now.timestamp() - now.timestamp().rem_euclid(60);
    let mut stop = DateTime::from_timestamp(minute + 60, 0).expect("a time");
    if stop - now < chrono::Duration::seconds(5) {
        stop += chrono::Duration::seconds(60);
    }
    let stop_at = stop.with_timezone(&kst).format("%H:%M").to_string();
    let child = set.spawn(&["--stop-at", &stop_at]);
    let out = wait_output(child, Duration::from_secs(100)).await;
    let ended = Utc::now();
    assert_exit(&out, 0);
    let summary = summary_of(&out);
    assert_eq!(summary["state"], "completed", "{summary}");
    assert_eq!(summary["budget_stop"], "stop_at", "{summary}");
    let checked = summary["keys_checked"].as_i64().expect("keys_checked");
    assert!(checked > 0 && checked < 2000, "{summary}");
    assert!(ended >= stop, "ended {ended} before the stop time {stop}");
    assert!(
        ended - stop < chrono::Duration::seconds(15),
        "ended {ended}, long after the stop time {stop}"
    );
    let run_id = summary["run_id"].as_i64().expect("run id");
    assert_eq!(checked_in(&set.store, run_id).await.len() as i64, checked);
}

/// After a partial run, `changes` compares each key's latest known result: keys not
/// checked that night are neither missing nor new; real changes still show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_after_a_partial_run_report_only_real_changes() {
    let set = Scenario::new().args(&["--rate", "0"]).start().await;
    let store = &set.store;
    let ids = active_ids(21, "partial-changes");
    let dir = tempfile::tempdir().expect("temp dir");
    let night1 = helpers::write_csv(dir.path(), "night1.csv", &ids[..20]);
    let csv1 = night1.to_str().expect("path");
    assert_exit(&set.output(&["--csv", csv1]).await, 0);
    // Key 0 goes away at Payple and was checked longest ago; key 19 leaves the source and
    // key 20 joins it.
    set_checked(store, &ids[0], Utc::now() - day(3)).await;
    let gone = key_file(
        dir.path(),
        "gone.jsonl",
        &[json!({"payer_id": ids[0], "kind": "gone"})],
    );
    let sim2 = set.second_sim(gone, Faults::none(), None).await;
    let mut tonight: Vec<String> = ids[..19].to_vec();
    tonight.push(ids[20].clone());
    let night2 = helpers::write_csv(dir.path(), "night2.csv", &tonight);
    let args = [
        "--csv",
        night2.to_str().expect("path"),
        "--max-lookups",
        "2",
    ];
    let out = output_of(set.command_with_sim(&sim2, &args)).await;
    assert_exit(&out, 0);
    assert_eq!(summary_of(&out)["keys_checked"], 2);
    let mut cmd = helpers::command(&sim2.url());
    cmd.args(["changes", "--database-url", &set.db.url, "--output", "-"]);
    let out = output_of(cmd).await;
    assert_exit(&out, 0);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows: Vec<&str> = text.lines().skip(1).collect();
    let kinds: BTreeSet<(String, String)> = rows
        .iter()
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            (cells[0].to_owned(), cells[2].to_owned())
        })
        .collect();
    let masked = |i: usize| mask_payer_id(&ids[i]);
    let want: BTreeSet<(String, String)> = [
        ("newly_gone".to_owned(), masked(0)),
        ("missing_key".to_owned(), masked(19)),
        ("new_key".to_owned(), masked(20)),
    ]
    .into_iter()
    .collect();
    assert_eq!(kinds, want, "{text}");
}

/// `summary` coverage against a hand-computed case: 14 source keys, checked within 1, 7
/// and 30 days as of the run's end, one never checked, and the oldest check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_shows_coverage_of_the_source() {
    let set = Scenario::new().args(&["--rate", "0"]).start().await;
    let store = &set.store;
    let ids = active_ids(14, "coverage");
    let dir = tempfile::tempdir().expect("temp dir");
    let night1 = helpers::write_csv(dir.path(), "night1.csv", &ids[..10]);
    assert_exit(
        &set.output(&["--csv", night1.to_str().expect("path")]).await,
        0,
    );
    let t0 = Utc::now();
    let ages = [(0, 40), (1, 20), (2, 20), (3, 5), (4, 5), (5, 5)];
    for (i, days) in ages {
        set_checked(store, &ids[i], t0 - day(days)).await;
    }
    for id in &ids[6..10] {
        set_checked(store, id, t0 - chrono::Duration::hours(12)).await;
    }
    // Night 2: four new keys, a budget of three: keys 10-12 checked, 13 never.
    let night2 = helpers::write_csv(dir.path(), "night2.csv", &ids);
    let args = [
        "--csv",
        night2.to_str().expect("path"),
        "--max-lookups",
        "3",
    ];
    assert_exit(&set.output(&args).await, 0);
    let out = output_of(set.subcommand(&["summary"])).await;
    assert_exit(&out, 0);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("coverage of the source's 14 keys as of "),
        "{text}"
    );
    let row = |label: &str| -> Vec<String> {
        let line = text
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no {label:?} line in\n{text}"));
        line[label.len()..]
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    // 1 day: keys 6-9 (12 h ago) and 10-12 (tonight); 7 days: + 3-5; 30 days: + 1, 2.
    assert_eq!(row("1 day"), ["7", "50.0%"]);
    assert_eq!(row("7 days"), ["10", "71.4%"]);
    assert_eq!(row("30 days"), ["12", "85.7%"]);
    assert_eq!(row("never"), ["1", "7.1%"]);
    let oldest = (t0 - day(40) + chrono::Duration::hours(9)).format("%Y-%m-%d %H:%M:%S KST");
    assert!(
        text.contains(&format!("oldest check: {oldest}\n")),
        "{text}"
    );
}
