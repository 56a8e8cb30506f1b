//! Operations: leases, run keys, dry runs, shards, personal data, metrics, MySQL, and the
//! deployment samples under `samples/`.
//!
//! Every run test starts the real binary (`helpers::run_cmd`) against an in-process
//! simulator and a fresh results database, then reads the database, the simulator's
//! counters and the process's stdout, stderr and exit code. The Kubernetes manifests and
//! the Dockerfile cannot run here (no cluster, no Docker engine): they are parsed and their
//! required fields checked, and the manifests' container arguments are validated by the
//! binary's own parser and settings. The crontab line is executed as cron would (with the
//! paths moved into a temporary folder).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use clap::Parser;
use payple_reconcile::domain::stable_hash;
use payple_reconcile::simulator::{self, Faults, KeyBook, SimKind, derive_key};
use payple_reconcile::store::{RunRecord, RunState, Store};
use serde_json::Value;
use sqlx::Row;

use crate::helpers::{
    self, TestDb, all_checks, assert_exit, count_rows_sql, derived_status, finish, key_hash,
    logged_lookups, only_run, output_of, run_cmd, scalar_i64, sim_with, slow_sim, spawn, stderr_of,
    summary_of,
};

// ---- plumbing -----------------------------------------------------------------------------

/// How often `helpers::wait_for_count` looks at the database.
const POLL: Duration = Duration::from_millis(25);

/// Sends `signal` to a running child.
fn send(child: &tokio::process::Child, signal: libc::c_int) {
    let pid = child.id().expect("the child is still running");
    let pid = libc::pid_t::try_from(pid).expect("pid fits");
    // SAFETY: kill(2) with a pid we spawned and a valid signal number.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
}

/// A row of `run_leases`.
#[derive(Debug)]
struct Lease {
    name: String,
    run_id: i64,
    holder: String,
    expires_at: String,
}

async fn leases(store: &Store) -> Vec<Lease> {
    let rows = sqlx::query("SELECT name, run_id, holder, expires_at FROM run_leases ORDER BY name")
        .fetch_all(store.pool())
        .await
        .expect("read run_leases");
    rows.iter()
        .map(|r| Lease {
            name: r.try_get(0).expect("name"),
            run_id: r.try_get(1).expect("run_id"),
            holder: r.try_get(2).expect("holder"),
            expires_at: r.try_get(3).expect("expires_at"),
        })
        .collect()
}

/// All runs, newest first.
async fn runs(store: &Store) -> Vec<RunRecord> {
    store.latest_runs(None, 100).await.expect("list runs")
}

fn run_id_of(summary: &Value) -> i64 {
    summary["run_id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no run_id in {summary}"))
}

// ---- 1. no overlapping runs ---------------------------------------------------------------

/// A slow run holds the lease: a second `run` exits 3 naming it and sends nothing; after the
/// first ends, a new run starts. A SIGKILLed run's lease stays (about 60 s ahead) and keeps
/// a plain `run` out, but `run --resume ID` takes over at once and finishes the same run.
async fn no_overlapping_runs(db: TestDb) {
    let (_dir, _, csv) = helpers::keys_csv(20, "overlap");
    let csv = csv.to_str().expect("utf-8 path");
    let sim = slow_sim(Duration::from_millis(20), None).await;
    // Migrated before the child starts, so polling never races its migrations.
    let store = db.store().await;
    let slow = ["--csv", csv, "--rate", "5", "--concurrency", "2"];
    let quick = ["--csv", csv, "--rate", "0"];

    let mut first = spawn(run_cmd(&sim, &db.url, &slow));
    helpers::wait_for_rows(&store, 2, Duration::from_secs(15), POLL, &mut first).await;
    let running = only_run(&store).await;
    assert_eq!(running.state, RunState::Running);
    let held = leases(&store).await;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        (held[0].name.as_str(), held[0].run_id),
        ("reconcile", running.id)
    );

    let second = output_of(run_cmd(&sim, &db.url, &quick)).await;
    assert_exit(&second, 3);
    assert!(second.stdout.is_empty(), "a refused run printed a summary");
    let stderr = stderr_of(&second);
    assert!(
        stderr.contains(&format!("run {} ", running.id)),
        "stderr must name the running run {}: {stderr}",
        running.id
    );
    assert_eq!(
        runs(&store).await.len(),
        1,
        "the refused run left a run row"
    );

    let out = finish(first).await;
    assert_exit(&out, 0);
    let summary = summary_of(&out);
    assert_eq!(run_id_of(&summary), running.id);
    assert_eq!(summary["state"], "completed");
    assert_eq!(summary["checked_now"], 20);
    assert_eq!(sim.stats().lookups, 20, "the refused run sent lookups");
    assert!(
        leases(&store).await.is_empty(),
        "the lease outlived its run"
    );

    // Now a new run starts fine.
    let third = output_of(run_cmd(&sim, &db.url, &quick)).await;
    assert_exit(&third, 0);
    let third_id = run_id_of(&summary_of(&third));
    assert!(third_id > running.id);

    // A crashed run: its lease stays until it expires.
    let mut crashed = spawn(run_cmd(&sim, &db.url, &slow));
    let before = scalar_i64(&store, "SELECT COUNT(*) FROM billing_key_checks").await;
    helpers::wait_for_rows(
        &store,
        before + 2,
        Duration::from_secs(15),
        POLL,
        &mut crashed,
    )
    .await;
    let crashed_pid = crashed.id().expect("pid");
    send(&crashed, libc::SIGKILL);
    let out = finish(crashed).await;
    let killed_at = chrono::Utc::now();
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{:?}", out.status);
    let crashed_run = runs(&store).await.remove(0);
    assert!(crashed_run.id > third_id);
    assert_eq!(
        crashed_run.state,
        RunState::Running,
        "a SIGKILL cannot mark the run"
    );
    let held = leases(&store).await;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].run_id, crashed_run.id, "{held:?}");
    assert!(
        held[0].holder.contains(&format!(":{crashed_pid}:")),
        "the holder names the dead process: {held:?}"
    );
    let expires = chrono::DateTime::parse_from_rfc3339(&held[0].expires_at)
        .unwrap_or_else(|e| panic!("expires_at {:?}: {e}", held[0].expires_at));
    let ahead = (expires.with_timezone(&chrono::Utc) - killed_at).as_seconds_f64();
    assert!(
        (40.0..=60.5).contains(&ahead),
        "the crashed run's lease should expire about 60 s after its last heartbeat, \
         expires in {ahead} s ({held:?})"
    );

    let blocked = output_of(run_cmd(&sim, &db.url, &quick)).await;
    assert_exit(&blocked, 3);
    assert!(
        stderr_of(&blocked).contains(&format!("run {} ", crashed_run.id)),
        "{}",
        stderr_of(&blocked)
    );
    assert_eq!(
        runs(&store).await[0].id,
        crashed_run.id,
        "a blocked run left a row"
    );

    // Resuming the crashed run itself is allowed immediately: same run id takes over.
    let had = scalar_i64(&store, &count_rows_sql(crashed_run.id)).await;
    let lookups_before = sim.stats().lookups;
    let id = crashed_run.id.to_string();
    let resumed = output_of(run_cmd(&sim, &db.url, &["--resume", &id, "--rate", "0"])).await;
    assert_exit(&resumed, 0);
    let summary = summary_of(&resumed);
    assert_eq!(
        run_id_of(&summary),
        crashed_run.id,
        "resume continues the same run"
    );
    assert_eq!(summary["state"], "completed");
    assert_eq!(summary["checked_now"].as_i64(), Some(20 - had), "{summary}");
    assert_eq!(sim.stats().lookups - lookups_before, (20 - had) as u64);
    assert_eq!(all_checks(&store, crashed_run.id).await.len(), 20);
    assert!(
        leases(&store).await.is_empty(),
        "the lease outlived the resumed run"
    );
    store.close().await;
    sim.shutdown().await;
}

helpers::per_database!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    no_overlapping_runs:
        Sqlite => no_overlapping_runs_on_sqlite,
        Postgres => no_overlapping_runs_on_postgres,
        MySql => no_overlapping_runs_on_mysql,
);

/// The lease at the store level: a live holder's lease is not taken by another holder of
/// another run; an expired one is.
async fn lease_is_exclusive(db: TestDb) {
    use payple_reconcile::store::StoreError;
    let store = db.store().await;
    let ttl = Duration::from_secs(60);
    store
        .acquire_lease("reconcile", 1, "host-a:1:1", ttl)
        .await
        .expect("a free lease is taken");
    match store.acquire_lease("reconcile", 2, "host-b:2:2", ttl).await {
        Err(StoreError::LeaseHeld { run_id, holder, .. }) => {
            assert_eq!((run_id, holder.as_str()), (1, "host-a:1:1"));
        }
        other => panic!("a live lease was taken by another run's process: {other:?}"),
    }
    let held = leases(&store).await;
    assert_eq!(held.len(), 1);
    assert_eq!((held[0].run_id, held[0].holder.as_str()), (1, "host-a:1:1"));
    // Expired: taken over.
    sqlx::query(sqlx::AssertSqlSafe(
        "UPDATE run_leases SET expires_at = '2000-01-01T00:00:00.000Z'".to_owned(),
    ))
    .execute(store.pool())
    .await
    .expect("expire the lease");
    store
        .acquire_lease("reconcile", 2, "host-b:2:2", ttl)
        .await
        .expect("an expired lease is taken over");
    assert_eq!(leases(&store).await[0].holder, "host-b:2:2");
    store.close().await;
}

helpers::per_database!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    lease_is_exclusive:
        Sqlite => lease_is_exclusive_on_sqlite,
        Postgres => lease_is_exclusive_on_postgres,
        MySql => lease_is_exclusive_on_mysql,
);

/// Cron fires the night's `--run-key` while an operator's start of the same key still runs
/// (or a CronJob creates two Jobs for one schedule with a date key): the second process is
/// a second run while one is running, and must refuse (exit 3) rather than take the live
/// run's lease over and look every pending key up a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_start_of_a_running_run_key_is_refused() {
    let (_dir, _, csv) = helpers::keys_csv(20, "same-key");
    let csv = csv.to_str().expect("utf-8 path");
    let sim = slow_sim(Duration::from_millis(20), None).await;
    let db = TestDb::sqlite();
    let store = db.store().await;
    let key = ["--run-key", "2026-11-27"];

    let mut first = spawn(run_cmd(
        &sim,
        &db.url,
        &[
            &key[..],
            &["--csv", csv, "--rate", "5", "--concurrency", "2"],
        ]
        .concat(),
    ));
    helpers::wait_for_rows(&store, 2, Duration::from_secs(15), POLL, &mut first).await;
    let running = only_run(&store).await;

    let second = output_of(run_cmd(
        &sim,
        &db.url,
        &[&key[..], &["--csv", csv, "--rate", "0"]].concat(),
    ))
    .await;
    let out = finish(first).await;
    assert_exit(&out, 0);
    assert_eq!(
        sim.stats().lookups,
        20,
        "two live processes looked the same run's keys up"
    );
    assert_exit(&second, 3);
    assert!(
        stderr_of(&second).contains(&format!("run {} ", running.id)),
        "{}",
        stderr_of(&second)
    );
    store.close().await;
    sim.shutdown().await;
}

/// A run takes the lease before it authenticates and names its run only afterwards: while
/// Payple's auth is slow (here: a server that never answers), the lease holds run id 0. A
/// second new run must still be refused, not take the lease over because its own run id
/// is 0 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_still_authenticating_holds_the_lease() {
    let (_dir, _, csv) = helpers::keys_csv(10, "auth-window");
    let csv = csv.to_str().expect("utf-8 path");
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_url = format!("http://{}", silent.local_addr().expect("addr"));
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            open.push(conn);
        }
    });
    let sim = sim_with(KeyBook::derived(), Faults::none(), None).await;
    let db = TestDb::sqlite();
    let store = db.store().await;

    let mut cmd = run_cmd(&sim, &db.url, &["--csv", csv, "--rate", "0"]);
    cmd.env("PAYPLE_URL", &silent_url)
        .args(["--request-timeout", "15", "--max-attempts", "1"]);
    let mut first = spawn(cmd);
    helpers::wait_for_count(
        &store,
        "SELECT COUNT(*) FROM run_leases",
        1,
        Duration::from_secs(10),
        POLL,
        &mut first,
    )
    .await;
    let held = leases(&store).await;
    assert_eq!(held[0].run_id, 0, "still authenticating: {held:?}");

    let second = output_of(run_cmd(&sim, &db.url, &["--csv", csv, "--rate", "0"])).await;
    send(&first, libc::SIGKILL);
    let _ = finish(first).await;
    hold.abort();
    assert_eq!(
        sim.stats().lookups,
        0,
        "the second run went ahead while the first held the lease"
    );
    assert_exit(&second, 3);
    store.close().await;
    sim.shutdown().await;
}

// ---- 2. run identity ----------------------------------------------------------------------

/// `--run-key`: a completed key is not run again (exit 0, a note, no request to Payple);
/// `--rerun` makes a new run under the key; a SIGTERMed key run started again continues the
/// same run id and checks only what was missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_keys_name_a_logical_run() {
    let (_dir, _, csv) = helpers::keys_csv(30, "run-key");
    let csv = csv.to_str().expect("utf-8 path");
    let sim = sim_with(KeyBook::derived(), Faults::none(), None).await;
    let db = TestDb::sqlite();
    let night = ["--run-key", "2026-11-27", "--csv", csv, "--rate", "0"];

    let out = output_of(run_cmd(&sim, &db.url, &night)).await;
    assert_exit(&out, 0);
    let first = summary_of(&out);
    let first_id = run_id_of(&first);
    assert_eq!(first["state"], "completed");
    assert!(first.get("note").is_none(), "{first}");
    assert_eq!((sim.stats().auth_calls, sim.stats().lookups), (1, 30));

    // The same key again: already completed, nothing sent.
    let out = output_of(run_cmd(&sim, &db.url, &night)).await;
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
        (sim.stats().auth_calls, sim.stats().lookups),
        (1, 30),
        "a completed run key sent requests"
    );

    // --rerun: a new run under the same key.
    let rerun = [&night[..], &["--rerun"]].concat();
    let out = output_of(run_cmd(&sim, &db.url, &rerun)).await;
    assert_exit(&out, 0);
    let second = summary_of(&out);
    let second_id = run_id_of(&second);
    assert!(second_id > first_id);
    assert_eq!(second["state"], "completed");
    assert_eq!(second["checked_now"], 30);
    assert_eq!(sim.stats().lookups, 60);
    let store = db.store().await;
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
    let out = output_of(run_cmd(&sim, &db.url, &night)).await;
    assert_exit(&out, 0);
    assert_eq!(run_id_of(&summary_of(&out)), second_id);
    assert_eq!(sim.stats().lookups, 60);

    // SIGTERM mid-run, then the same key again: the same run continues.
    let lookups_before = sim.stats().lookups;
    let next = ["--run-key", "2026-11-28", "--csv", csv];
    let mut child = spawn(run_cmd(
        &sim,
        &db.url,
        &[&next[..], &["--rate", "20", "--concurrency", "2"]].concat(),
    ));
    helpers::wait_for_count(
        &store,
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
    let had = scalar_i64(&store, &count_rows_sql(stopped_id)).await;
    assert!((5..30).contains(&had), "{had} rows before the signal");

    let out = output_of(run_cmd(
        &sim,
        &db.url,
        &[&next[..], &["--rate", "0"]].concat(),
    ))
    .await;
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
        sim.stats().lookups - lookups_before,
        30,
        "every key of the night looked up exactly once"
    );
    let run = store.run(stopped_id).await.expect("read").expect("run");
    assert_eq!(run.state, RunState::Completed);
    assert_eq!(run.run_key.as_deref(), Some("2026-11-28"));
    assert_eq!(all_checks(&store, stopped_id).await.len(), 30);
    assert_eq!(
        runs(&store).await.len(),
        3,
        "first, rerun, and the resumed night"
    );
    store.close().await;
    sim.shutdown().await;
}

// ---- 3. dry run ---------------------------------------------------------------------------

/// `--dry-run` on a CSV: one auth call, no lookup, counts on stdout, and no database file.
/// With wrong credentials it exits 3, still writing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_checks_everything_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = helpers::payer_ids(12, "dry-run");
    let mut rows = ids.clone();
    rows.push(ids[2].clone());
    rows.push(ids[5].clone());
    rows.push(String::new());
    let csv = helpers::write_csv(dir.path(), "keys.csv", &rows);
    let csv = csv.to_str().expect("utf-8 path");
    let sim = sim_with(KeyBook::derived(), Faults::none(), None).await;
    let db_path = dir.path().join("never.db");
    let db_url = format!("sqlite://{}", db_path.display());

    let out = output_of(run_cmd(&sim, &db_url, &["--dry-run", "--csv", csv])).await;
    assert_exit(&out, 0);
    let report = summary_of(&out);
    assert_eq!(report["dry_run"], true, "{report}");
    assert_eq!(report["keys"], 12, "{report}");
    assert_eq!(report["duplicates"], 2, "{report}");
    assert_eq!(report["rejected"], 1, "{report}");
    assert_eq!(report["auth_calls"], 1, "{report}");
    assert_eq!(report["source"], format!("csv:{csv}"), "{report}");
    let stats = sim.stats();
    assert_eq!((stats.auth_calls, stats.lookups), (1, 0), "{stats:?}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(
        !db_path.exists(),
        "a dry run created the database: {left:?}"
    );
    assert_eq!(left, ["keys.csv"], "a dry run wrote files");

    // Wrong credentials: exit 3 after the one auth call, still nothing written.
    let mut cmd = run_cmd(&sim, &db_url, &["--dry-run", "--csv", csv]);
    cmd.env("PAYPLE_CUST_KEY", "not-the-partner-key");
    let out = output_of(cmd).await;
    assert_exit(&out, 3);
    assert!(out.stdout.is_empty(), "a failed dry run printed a report");
    assert_eq!(sim.stats().lookups, 0);
    assert!(!db_path.exists());
    sim.shutdown().await;
}

// ---- 4. sharding --------------------------------------------------------------------------

fn shard_of(id: &str, count: u64) -> u64 {
    stable_hash(id.as_bytes()) % count
}

/// Three shard processes, started together against one PostgreSQL database with one run
/// key, each talking to a simulator of its own: every key is looked up once, by the shard
/// its hash names; the run is `completed` once the last shard is; `--rate 30` over three
/// shards paces each at 10 per second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_cover_every_key_once_on_postgres() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let (dir, ids, csv) = helpers::keys_csv(60, "shards");
    let csv = csv.to_str().expect("utf-8 path");
    let mut sims = Vec::new();
    let mut logs = Vec::new();
    for i in 0..3 {
        let log = dir.path().join(format!("shard-{i}.jsonl"));
        sims.push(sim_with(KeyBook::derived(), Faults::none(), Some(log.clone())).await);
        logs.push(log);
    }
    let cmd = |i: usize| {
        let shard = format!("{i}/3");
        output_of(run_cmd(
            &sims[i],
            &db.url,
            &[
                "--csv",
                csv,
                "--shard",
                &shard,
                "--run-key",
                "2026-11-27",
                "--rate",
                "30",
                "--concurrency",
                "4",
            ],
        ))
    };
    // Launched together, on a database no process has migrated yet.
    let (a, b, c) = tokio::join!(cmd(0), cmd(1), cmd(2));
    let outs = [a, b, c];
    let mut summaries = Vec::new();
    for out in &outs {
        assert_exit(out, 0);
        summaries.push(summary_of(out));
    }
    let run_id = run_id_of(&summaries[0]);
    for s in &summaries {
        assert_eq!(
            run_id_of(s),
            run_id,
            "the shards must share one run: {summaries:?}"
        );
    }
    let completed = summaries
        .iter()
        .filter(|s| s["state"] == "completed")
        .count();
    assert!(
        completed >= 1,
        "the last shard must see the run completed: {summaries:?}"
    );

    let store = db.store().await;
    let run = only_run(&store).await;
    assert_eq!(run.id, run_id);
    assert_eq!(run.state, RunState::Completed, "{run:?}");
    assert_eq!(run.run_key.as_deref(), Some("2026-11-27"));
    assert_eq!(run.shard_count, 3);
    assert_eq!(run.keys_total, Some(60), "{run:?}");
    assert_eq!(run.counts.total(), 60, "{run:?}");
    assert_eq!((run.auth_calls, run.lookups), (3, 60), "{run:?}");
    assert!(run.finished_at.is_some());
    let checks = all_checks(&store, run_id).await;
    assert_eq!(checks.len(), 60, "one row per key");
    for id in &ids {
        let c = checks.get(id).unwrap_or_else(|| panic!("no row for {id}"));
        assert_eq!(c.status.as_str(), derived_status(id), "{id}");
        assert_eq!(c.attempts, 1, "{id}");
    }
    let shards = sqlx::query(
        "SELECT shard_index, state, keys_total FROM run_shards WHERE run_id = $1 \
         ORDER BY shard_index",
    )
    .bind(run_id)
    .fetch_all(store.pool())
    .await
    .expect("read run_shards");
    let shards: Vec<(i64, String, i64)> = shards
        .iter()
        .map(|r| {
            (
                i64::from(r.try_get::<i32, _>(0).expect("index")),
                r.try_get(1).expect("state"),
                r.try_get(2).expect("keys_total"),
            )
        })
        .collect();
    let per_shard: Vec<i64> = (0..3u64)
        .map(|i| ids.iter().filter(|id| shard_of(id, 3) == i).count() as i64)
        .collect();
    assert_eq!(
        shards,
        (0..3)
            .map(|i| (i, "completed".to_owned(), per_shard[i as usize]))
            .collect::<Vec<_>>()
    );

    // Pace: each shard at --rate / 3 = 10 per second (one permit may be ready at start).
    for (i, sim) in sims.iter().enumerate() {
        let mut times = sim.lookup_times();
        times.sort();
        let n = times.len();
        assert_eq!(n as i64, per_shard[i], "shard {i} lookups");
        if n >= 4 {
            let span = times[n - 1] - times[0];
            let floor = Duration::from_millis(85) * (n as u32 - 2);
            assert!(
                span >= floor,
                "shard {i}: {n} lookups in {span:?}: paced at more than 30/3 per second"
            );
            assert!(
                span <= Duration::from_millis(100) * n as u32 + Duration::from_secs(2),
                "shard {i}: {n} lookups took {span:?}"
            );
        }
    }
    // Every key exactly once, each by its own shard.
    let mut seen = Vec::new();
    for (i, sim) in sims.into_iter().enumerate() {
        sim.shutdown().await;
        for hash in logged_lookups(&logs[i]) {
            let owner = ids
                .iter()
                .find(|id| key_hash(id) == hash)
                .unwrap_or_else(|| panic!("shard {i} looked up an unknown key {hash}"));
            assert_eq!(shard_of(owner, 3), i as u64, "shard {i} looked up {owner}");
            seen.push(hash);
        }
    }
    let distinct: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(seen.len(), 60, "lookups in all");
    assert_eq!(distinct.len(), 60, "every key once");
    store.close().await;
}

/// `--shards 3` in a pod with JOB_COMPLETION_INDEX=1 is `--shard 1/3`; a shard needs a run
/// key; `--shards` needs the index; an index must be below the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_from_job_completion_index_and_their_validation() {
    let (_dir, ids, csv) = helpers::keys_csv(30, "job-index");
    let csv = csv.to_str().expect("utf-8 path");
    let sim = sim_with(KeyBook::derived(), Faults::none(), None).await;
    let want: BTreeSet<String> = ids
        .iter()
        .filter(|id| shard_of(id, 3) == 1)
        .cloned()
        .collect();
    assert!(!want.is_empty() && want.len() < 30);

    let mut results = Vec::new();
    for (flags, index) in [
        (&["--shards", "3"][..], Some("1")),
        (&["--shard", "1/3"][..], None),
    ] {
        let db = TestDb::sqlite();
        let mut cmd = run_cmd(
            &sim,
            &db.url,
            &[flags, &["--run-key", "night", "--csv", csv, "--rate", "0"]].concat(),
        );
        if let Some(index) = index {
            cmd.env("JOB_COMPLETION_INDEX", index);
        }
        let out = output_of(cmd).await;
        assert_exit(&out, 0);
        let summary = summary_of(&out);
        assert_eq!(summary["state"], "running", "one shard of three: {summary}");
        assert_eq!(summary["checked_now"].as_u64(), Some(want.len() as u64));
        let store = db.store().await;
        let run = only_run(&store).await;
        assert_eq!(run.shard_count, 3);
        let got: BTreeSet<String> = all_checks(&store, run.id).await.into_keys().collect();
        let shards = scalar_i64(
            &store,
            "SELECT COUNT(*) FROM run_shards WHERE shard_index = 1",
        )
        .await;
        let others = scalar_i64(
            &store,
            "SELECT COUNT(*) FROM run_shards WHERE shard_index <> 1",
        )
        .await;
        assert_eq!((shards, others), (1, 0), "{flags:?}");
        results.push(got);
        store.close().await;
    }
    assert_eq!(results[0], want, "--shards 3 with JOB_COMPLETION_INDEX=1");
    assert_eq!(results[1], want, "--shard 1/3");

    let lookups = sim.stats().lookups;
    let db = TestDb::sqlite();
    let refused: [(&[&str], Option<&str>, &str); 4] = [
        (&["--shard", "1/3"], None, "--run-key"),
        (
            &["--shards", "3", "--run-key", "x"],
            None,
            "JOB_COMPLETION_INDEX",
        ),
        (
            &["--shards", "3", "--run-key", "x"],
            Some("3"),
            "below the count",
        ),
        (
            &["--shard", "3/3", "--run-key", "x"],
            None,
            "below the count",
        ),
    ];
    for (flags, index, says) in refused {
        let mut cmd = run_cmd(&sim, &db.url, &[flags, &["--csv", csv]].concat());
        if let Some(index) = index {
            cmd.env("JOB_COMPLETION_INDEX", index);
        }
        let out = output_of(cmd).await;
        assert_exit(&out, 3);
        assert!(
            stderr_of(&out).contains(says),
            "{flags:?}: {}",
            stderr_of(&out)
        );
    }
    assert_eq!(sim.stats().lookups, lookups, "a refused shard sent lookups");
    sim.shutdown().await;
}

// ---- 5. personal data ---------------------------------------------------------------------

/// `--omit-pii`: no payer name or phone mask in any row, everything else as usual (and the
/// same keys without the flag do store them, so the check means something).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn omit_pii_stores_no_name_or_phone() {
    let (_dir, ids, csv) = helpers::keys_csv(40, "pii");
    let csv = csv.to_str().expect("utf-8 path");
    let active = |id: &String| matches!(derive_key(id).kind, SimKind::Card | SimKind::Transfer);
    assert!(
        ids.iter()
            .filter(|id| active(id))
            .all(|id| !derive_key(id).payer_name.is_empty()),
        "the simulator must answer names for the check to mean something"
    );
    let sim = sim_with(KeyBook::derived(), Faults::none(), None).await;
    let db = TestDb::sqlite();

    let out = output_of(run_cmd(
        &sim,
        &db.url,
        &["--omit-pii", "--csv", csv, "--rate", "0"],
    ))
    .await;
    assert_exit(&out, 0);
    let omitted = run_id_of(&summary_of(&out));
    let out = output_of(run_cmd(&sim, &db.url, &["--csv", csv, "--rate", "0"])).await;
    assert_exit(&out, 0);
    let kept = run_id_of(&summary_of(&out));

    let store = db.store().await;
    let run = store.run(omitted).await.expect("read").expect("run");
    let options: Value = serde_json::from_str(&run.options).expect("options JSON");
    assert_eq!(options["omit_pii"], true, "{options}");
    let without = all_checks(&store, omitted).await;
    let with = all_checks(&store, kept).await;
    assert_eq!((without.len(), with.len()), (40, 40));
    let mut actives = 0;
    for id in &ids {
        let row = &without[id];
        assert_eq!(row.details.payer_name, None, "{id}");
        assert_eq!(row.details.payer_phone_mask, None, "{id}");
        assert_eq!(row.status.as_str(), derived_status(id));
        assert!(
            row.result_code.is_some() && row.result_msg.is_some(),
            "{row:?}"
        );
        // Everything but the two columns is as without the flag.
        let mut other = with[id].clone();
        if active(id) {
            actives += 1;
            assert!(other.details.payer_name.is_some(), "{other:?}");
            assert!(row.details.pay_type.is_some(), "{row:?}");
            assert!(
                row.details.card_name.is_some() || row.details.bank_name.is_some(),
                "{row:?}"
            );
        }
        other.details.payer_name = None;
        other.details.payer_phone_mask = None;
        other.run_id = row.run_id;
        other.checked_at = row.checked_at.clone();
        assert_eq!(*row, other, "{id}");
    }
    assert!(actives > 20, "{actives} active keys");
    store.close().await;
    sim.shutdown().await;
}

// ---- 6. metrics ---------------------------------------------------------------------------

/// Parses Prometheus text format (0.0.4): `name{labels} value` lines, comments, blanks.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.split_whitespace().collect();
            if matches!(words.first(), Some(&"HELP") | Some(&"TYPE")) {
                assert!(words.len() >= 3, "bad comment line {line:?}");
            }
            if words.first() == Some(&"TYPE") {
                assert!(
                    ["gauge", "counter", "untyped", "summary", "histogram"].contains(&words[2]),
                    "{line:?}"
                );
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels in {line:?}");
        }
        let value: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}"));
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "{series} twice"
        );
    }
    samples
}

/// `--metrics-file` writes a parseable Prometheus file whose numbers agree with the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_file_after_a_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = helpers::payer_ids(25, "metrics");
    let mut rows = ids.clone();
    rows.push(String::new());
    let csv = helpers::write_csv(dir.path(), "keys.csv", &rows);
    let textfile = dir.path().join("textfile");
    std::fs::create_dir(&textfile).expect("mkdir");
    let metrics = textfile.join("payple_reconcile.prom");
    let sim = sim_with(KeyBook::derived(), Faults::none(), None).await;
    let db = TestDb::sqlite();
    let out = output_of(run_cmd(
        &sim,
        &db.url,
        &[
            "--csv",
            csv.to_str().expect("utf-8 path"),
            "--rate",
            "0",
            "--metrics-file",
            metrics.to_str().expect("utf-8 path"),
        ],
    ))
    .await;
    let ended = chrono::Utc::now().timestamp() as f64;
    assert_exit(&out, 2);
    let summary = summary_of(&out);
    let files: Vec<_> = std::fs::read_dir(&textfile)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        files,
        ["payple_reconcile.prom"],
        "only the metrics file, no leftovers"
    );
    let text = std::fs::read_to_string(&metrics).expect("metrics file");
    let m = parse_prometheus(&text);
    for status in ["active", "gone", "failed", "rejected"] {
        let series = format!("payple_reconcile_keys{{status=\"{status}\"}}");
        assert_eq!(
            m.get(&series).copied(),
            summary[status].as_f64(),
            "{series} in\n{text}"
        );
    }
    assert_eq!(m.get("payple_reconcile_auth_calls"), Some(&1.0), "{text}");
    assert_eq!(m.get("payple_reconcile_lookups"), Some(&25.0), "{text}");
    assert_eq!(
        m.get("payple_reconcile_run_exit_code"),
        Some(&2.0),
        "{text}"
    );
    let duration = m["payple_reconcile_run_duration_seconds"];
    assert!(duration > 0.0 && duration < 60.0, "{text}");
    let last = m["payple_reconcile_last_success_timestamp_seconds"];
    assert!(
        (ended - 60.0..=ended + 1.0).contains(&last),
        "{last} vs {ended}"
    );
    assert!(
        text.contains("# TYPE payple_reconcile_keys gauge"),
        "{text}"
    );
    sim.shutdown().await;
}

// ---- 7. MySQL -----------------------------------------------------------------------------

fn swap_case(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_lowercase() {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// One run end to end on MySQL/MariaDB: a row per key with the derived status, and two keys
/// that differ only in letter case are two keys (Payple keys are case-sensitive base64).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_on_mysql_with_keys_differing_only_in_case() {
    let Some(db) = TestDb::mysql().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut ids = helpers::payer_ids(20, "mysql-e2e");
    for i in [0, 1] {
        let twin = swap_case(&ids[i]);
        assert_ne!(twin, ids[i]);
        assert_eq!(twin.to_lowercase(), ids[i].to_lowercase());
        ids.push(twin);
    }
    let csv = helpers::write_csv(dir.path(), "keys.csv", &ids);
    let sim = sim_with(KeyBook::derived(), Faults::none(), None).await;
    let out = output_of(run_cmd(
        &sim,
        &db.url,
        &["--csv", csv.to_str().expect("utf-8 path"), "--rate", "0"],
    ))
    .await;
    assert_exit(&out, 0);
    let summary = summary_of(&out);
    assert_eq!(summary["keys"], 22, "{summary}");
    assert_eq!(summary["duplicates"], 0, "{summary}");
    assert_eq!(sim.stats().lookups, 22);

    let store = db.store().await;
    let run = only_run(&store).await;
    assert_eq!(run.state, RunState::Completed);
    assert_eq!((run.keys_total, run.duplicates), (Some(22), 0));
    let checks = all_checks(&store, run.id).await;
    assert_eq!(checks.len(), 22, "{:?}", checks.keys().collect::<Vec<_>>());
    for (i, id) in ids.iter().enumerate() {
        let row = checks.get(id).unwrap_or_else(|| panic!("no row for {id}"));
        assert_eq!(&row.payer_id, id, "stored byte for byte");
        assert_eq!(row.status.as_str(), derived_status(id), "{id}");
        assert_eq!(
            row.customer_ref.as_deref(),
            Some(format!("CUST-{i:05}").as_str())
        );
    }
    assert_eq!(
        scalar_i64(&store, "SELECT COUNT(*) FROM run_keys").await,
        22
    );
    assert_eq!(
        scalar_i64(&store, "SELECT COUNT(*) FROM billing_key_latest").await,
        22,
        "the latest view keeps both spellings"
    );
    store.close().await;
    sim.shutdown().await;
}

// ---- 8. samples ---------------------------------------------------------------------------

fn sample(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("samples")
        .join(path)
}

fn read_sample(path: &str) -> String {
    std::fs::read_to_string(sample(path)).unwrap_or_else(|e| panic!("samples/{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_yaml_ng::from_str(&read_sample(path))
        .unwrap_or_else(|e| panic!("samples/{path} is not valid YAML: {e}"))
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer}"))
}

fn int_at(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer)
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("no integer at {pointer}"))
}

/// The rules of a podFailurePolicy: FailJob on exit code 3 and Ignore on DisruptionTarget.
fn assert_pod_failure_policy(policy: &Value, container: &str) {
    let rules = policy["rules"].as_array().expect("podFailurePolicy.rules");
    let fails_on_3 = rules.iter().any(|r| {
        r["action"] == "FailJob"
            && r["onExitCodes"]["operator"] == "In"
            && r["onExitCodes"]["values"]
                .as_array()
                .is_some_and(|v| v.contains(&Value::from(3)))
            && r["onExitCodes"]["containerName"]
                .as_str()
                .is_none_or(|c| c == container)
    });
    assert!(fails_on_3, "no FailJob rule on exit code 3: {policy}");
    let ignores_disruption = rules.iter().any(|r| {
        r["action"] == "Ignore"
            && r["onPodConditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "DisruptionTarget"))
    });
    assert!(
        ignores_disruption,
        "no Ignore rule on DisruptionTarget: {policy}"
    );
    for r in rules {
        let action = r["action"].as_str().expect("action");
        assert!(
            ["FailJob", "FailIndex", "Ignore", "Count"].contains(&action),
            "{r}"
        );
        assert!(
            r.get("onExitCodes").is_some() != r.get("onPodConditions").is_some(),
            "a rule has exactly one of onExitCodes and onPodConditions: {r}"
        );
    }
}

/// What a manifest's pod template says about credentials, checked against the Secret.
fn assert_pod_credentials(pod: &Value, secret: &Value, args: &[String]) {
    let secret_name = str_at(secret, "/metadata/name");
    let secret_keys: BTreeSet<&str> = secret["stringData"]
        .as_object()
        .expect("stringData")
        .keys()
        .map(String::as_str)
        .collect();
    let container = &pod["containers"][0];
    let env = container["env"].as_array().expect("env");
    let var = |name: &str| env.iter().find(|e| e["name"] == name);
    for name in [
        "PAYPLE_CST_ID",
        "PAYPLE_CUST_KEY",
        "DATABASE_URL",
        "SOURCE_DATABASE_URL",
    ] {
        if let Some(e) = var(name) {
            assert!(e.get("value").is_none(), "{name} must not be inline: {e}");
        }
    }
    for name in ["PAYPLE_CST_ID", "DATABASE_URL"] {
        let e = var(name).unwrap_or_else(|| panic!("no {name}"));
        let r = &e["valueFrom"]["secretKeyRef"];
        assert_eq!(r["name"], secret_name, "{name}");
        let key = r["key"].as_str().expect("secretKeyRef.key");
        assert!(
            secret_keys.contains(key),
            "{name}: key {key} not in the Secret"
        );
    }
    let run_key = var("PAYPLE_RUN_KEY").expect("PAYPLE_RUN_KEY (--run-key)");
    assert_eq!(
        run_key["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.labels['batch.kubernetes.io/job-name']"
    );
    // custKey: from the Secret, as an env var or as a mounted file for --cust-key-file.
    match var("PAYPLE_CUST_KEY") {
        Some(e) => assert_eq!(e["valueFrom"]["secretKeyRef"]["name"], secret_name),
        None => {
            let i = args
                .iter()
                .position(|a| a == "--cust-key-file")
                .expect("PAYPLE_CUST_KEY or --cust-key-file");
            let file = Path::new(&args[i + 1]);
            let mount = container["volumeMounts"]
                .as_array()
                .expect("volumeMounts")
                .iter()
                .find(|m| file.starts_with(m["mountPath"].as_str().unwrap_or("//")))
                .unwrap_or_else(|| panic!("{} is on no volume", file.display()));
            assert_eq!(mount["readOnly"], true);
            let volume = pod["volumes"]
                .as_array()
                .expect("volumes")
                .iter()
                .find(|v| v["name"] == mount["name"])
                .expect("the mounted volume");
            assert_eq!(volume["secret"]["secretName"], secret_name, "{volume}");
            let inside = file
                .strip_prefix(mount["mountPath"].as_str().expect("mountPath"))
                .expect("under the mount");
            let item = volume["secret"]["items"]
                .as_array()
                .expect("items")
                .iter()
                .find(|it| it["path"] == inside.to_str().expect("utf-8"))
                .unwrap_or_else(|| panic!("no Secret item for {}", inside.display()));
            let key = item["key"].as_str().expect("key");
            assert!(secret_keys.contains(key), "key {key} not in the Secret");
        }
    }
    for e in env {
        if let Some(r) = e["valueFrom"].get("secretKeyRef") {
            let key = r["key"].as_str().expect("key");
            assert_eq!(r["name"], secret_name, "{e}");
            assert!(
                secret_keys.contains(key),
                "{e}: key {key} not in the Secret"
            );
        }
    }
    assert_eq!(
        pod["restartPolicy"], "Never",
        "podFailurePolicy needs Never"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
}

/// Parses the container's arguments with the binary's own parser (plus the run key the
/// manifest supplies through PAYPLE_RUN_KEY) and validates them into run settings.
fn run_settings_of(
    args: &[String],
    job_completion_index: Option<u32>,
) -> payple_reconcile::settings::BatchSettings {
    let mut argv = vec!["payple-reconcile".to_owned()];
    argv.extend(args.iter().cloned());
    argv.extend([
        "--run-key".to_owned(),
        "payple-reconcile-29405190".to_owned(),
    ]);
    let cli = payple_reconcile::cli::Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("the manifest's args do not parse: {e}\n{argv:?}"));
    let payple_reconcile::cli::Command::Run(run) = cli.command else {
        panic!("not a `run`: {argv:?}");
    };
    let env = move |name: &str| match name {
        "JOB_COMPLETION_INDEX" => job_completion_index.map(|i| i.to_string()),
        _ => None,
    };
    payple_reconcile::settings::batch_settings(&run, &env)
        .unwrap_or_else(|e| panic!("the manifest's args are refused: {e}\n{argv:?}"))
}

fn container_args(pod: &Value) -> Vec<String> {
    let container = &pod["containers"][0];
    assert!(
        container.get("command").is_none(),
        "the image's ENTRYPOINT is the binary; args only"
    );
    container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("args are strings").to_owned())
        .collect()
}

#[test]
fn kubernetes_samples_parse_and_have_the_required_fields() {
    let secret = yaml("k8s/secret.example.yaml");
    assert_eq!(secret["apiVersion"], "v1");
    assert_eq!(secret["kind"], "Secret");
    assert!(
        secret.get("data").is_none(),
        "placeholders go in stringData"
    );
    for (key, value) in secret["stringData"].as_object().expect("stringData") {
        let value = value.as_str().expect("string");
        assert!(
            value.contains("REPLACE_ME"),
            "{key} is not a placeholder: {value}"
        );
    }

    // The CronJob.
    let cron = yaml("k8s/cronjob.yaml");
    assert_eq!(cron["apiVersion"], "batch/v1");
    assert_eq!(cron["kind"], "CronJob");
    assert_eq!(str_at(&cron, "/spec/concurrencyPolicy"), "Forbid");
    assert_eq!(
        str_at(&cron, "/spec/schedule").split_whitespace().count(),
        5
    );
    assert!(int_at(&cron, "/spec/startingDeadlineSeconds") > 0);
    let job = cron
        .pointer("/spec/jobTemplate/spec")
        .expect("jobTemplate.spec");
    assert!(int_at(job, "/activeDeadlineSeconds") > 0);
    assert_pod_failure_policy(&job["podFailurePolicy"], "reconcile");
    let pod = job.pointer("/template/spec").expect("pod spec");
    assert_eq!(pod["containers"][0]["name"], "reconcile");
    let args = container_args(pod);
    assert_pod_credentials(pod, &secret, &args);
    let settings = run_settings_of(&args, None);
    assert!(settings.shard.is_whole());
    assert!(
        int_at(pod, "/terminationGracePeriodSeconds") > settings.shutdown_grace.as_secs() as i64,
        "the kubelet's SIGKILL must come after --shutdown-grace"
    );
    assert!(args.contains(&"live".to_owned()), "{args:?}");

    // The Indexed Job.
    let indexed = yaml("k8s/indexed-job.yaml");
    assert_eq!(indexed["apiVersion"], "batch/v1");
    assert_eq!(indexed["kind"], "Job");
    let spec = &indexed["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    let completions = int_at(spec, "/completions");
    assert!(completions > 1);
    assert!((1..=completions).contains(&int_at(spec, "/parallelism")));
    assert!(int_at(spec, "/backoffLimitPerIndex") >= 1);
    assert!(int_at(spec, "/activeDeadlineSeconds") > 0);
    assert_pod_failure_policy(&spec["podFailurePolicy"], "reconcile");
    let pod = spec.pointer("/template/spec").expect("pod spec");
    let args = container_args(pod);
    let i = args
        .iter()
        .position(|a| a == "--shards")
        .expect("the Indexed Job passes --shards");
    assert_eq!(
        args[i + 1],
        completions.to_string(),
        "--shards = completions"
    );
    assert_pod_credentials(pod, &secret, &args);
    for index in 0..completions as u32 {
        let settings = run_settings_of(&args, Some(index));
        assert_eq!(
            (settings.shard.index, i64::from(settings.shard.count.get())),
            (index, completions)
        );
    }
    assert!(
        int_at(pod, "/terminationGracePeriodSeconds")
            > run_settings_of(&args, Some(0)).shutdown_grace.as_secs() as i64
    );
}

#[test]
fn dockerfile_is_multi_stage_and_runs_unprivileged() {
    let text = read_sample("Dockerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(froms.len(), 2, "{froms:?}");
    assert!(
        froms[0].starts_with("FROM rust:1.95-slim") && froms[0].ends_with(" AS builder"),
        "{}",
        froms[0]
    );
    assert_eq!(froms[1], "FROM debian:bookworm-slim");
    // The builder's Debian matches the runtime's, or the binary may need a newer glibc.
    assert!(froms[0].contains("bookworm"), "{}", froms[0]);
    assert!(text.contains("cargo build --release --locked"));
    assert!(text.contains("ca-certificates"));
    assert!(text.contains("COPY --from=builder"));
    let user = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "runs as {user}"
    );
    let entrypoint = lines
        .iter()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("an ENTRYPOINT");
    let entrypoint: Vec<String> = serde_json::from_str(entrypoint).expect("exec form");
    assert_eq!(entrypoint, ["/usr/local/bin/payple-reconcile"]);
    let ignore = read_sample("Dockerfile.dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
}

/// The crontab's job line.
struct CronLine {
    schedule: Vec<String>,
    user: String,
    command: String,
}

fn cron_line(text: &str) -> CronLine {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| {
            // Environment lines: NAME=value.
            let first = l.split_whitespace().next().unwrap_or_default();
            !first.contains('=')
        })
        .collect();
    assert_eq!(lines.len(), 1, "one job line: {lines:?}");
    let line = lines[0];
    let mut rest = line;
    let mut fields = Vec::new();
    for _ in 0..6 {
        let rest_trimmed = rest.trim_start();
        let end = rest_trimmed
            .find(char::is_whitespace)
            .expect("six fields before the command");
        fields.push(rest_trimmed[..end].to_owned());
        rest = &rest_trimmed[end..];
    }
    let user = fields.pop().expect("user");
    CronLine {
        schedule: fields,
        user,
        command: rest.trim().to_owned(),
    }
}

/// The crontab line: a schedule, the environment from a root-owned file, the date as the
/// run key, the report and metrics paths; then the line itself is run the way cron runs
/// it (`%` unescaped, `/bin/sh -c`), with its paths moved into a temporary folder, against
/// the simulator; the second start of the day exits 0, already completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crontab_sample_runs_as_cron_would() {
    let text = read_sample("crontab");
    let env_lines: Vec<&str> = text
        .lines()
        // NAME=value lines (no spaces): the environment cron gives the command.
        .filter(|l| !l.starts_with('#') && l.contains('=') && !l.contains(' '))
        .collect();
    assert!(env_lines.contains(&"SHELL=/bin/sh"), "{env_lines:?}");
    assert!(
        env_lines.iter().any(|l| l.starts_with("PATH=")),
        "{env_lines:?}"
    );
    let line = cron_line(&text);
    assert_eq!(line.schedule.len(), 5);
    for field in &line.schedule {
        assert!(
            field
                .chars()
                .all(|c| c.is_ascii_digit() || "*/,-".contains(c)),
            "schedule field {field:?}"
        );
    }
    assert_eq!(
        line.user, "payple",
        "a system crontab line runs as an unprivileged user"
    );
    let cmd = &line.command;
    for (i, c) in cmd.char_indices() {
        if c == '%' {
            assert!(
                cmd[..i].ends_with('\\'),
                "unescaped % at {i}: cron makes it a newline"
            );
        }
    }
    for needed in [
        ". /etc/payple-reconcile/env",
        "payple-reconcile",
        " run ",
        "--run-key",
        "--report",
        "/var/lib/payple-reconcile/reports/",
        "--metrics-file",
        "date +\\%F",
    ] {
        assert!(
            cmd.contains(needed),
            "the cron line lacks {needed:?}: {cmd}"
        );
    }
    for secret in [
        "PAYPLE_CUST_KEY",
        "PAYPLE_CST_ID",
        "DATABASE_URL",
        "postgres://",
    ] {
        assert!(!cmd.contains(secret), "{secret} inline in the cron line");
    }

    // The environment file it sources: placeholders for every secret.
    let example = read_sample("payple-reconcile.env.example");
    let vars: BTreeMap<&str, &str> = example
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('='))
        .filter_map(|l| l.split_once('='))
        .collect();
    for name in [
        "PAYPLE_CST_ID",
        "PAYPLE_CUST_KEY",
        "PAYPLE_REFERER",
        "PAYPLE_URL",
        "DATABASE_URL",
        "SOURCE_DATABASE_URL",
    ] {
        assert!(vars.contains_key(name), "the env example lacks {name}");
    }
    for name in [
        "PAYPLE_CST_ID",
        "PAYPLE_CUST_KEY",
        "DATABASE_URL",
        "SOURCE_DATABASE_URL",
    ] {
        assert!(
            vars[name].contains("REPLACE_ME"),
            "{name} is not a placeholder"
        );
    }

    // Run it: the example env file with test values, the keys in a SQLite billing_keys table.
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    for sub in ["reports", "log", "textfile"] {
        std::fs::create_dir_all(root.join(sub)).expect("mkdir");
    }
    let ids = helpers::payer_ids(15, "crontab");
    let source_url = format!("sqlite://{}?mode=rwc", root.join("billing.db").display());
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&source_url)
        .await
        .expect("source db");
    sqlx::query("CREATE TABLE billing_keys (payer_id TEXT, customer_ref TEXT)")
        .execute(&pool)
        .await
        .expect("create billing_keys");
    for (i, id) in ids.iter().enumerate() {
        sqlx::query("INSERT INTO billing_keys VALUES (?, ?)")
            .bind(id.clone())
            .bind(format!("C-{i}"))
            .execute(&pool)
            .await
            .expect("insert");
    }
    pool.close().await;
    let sim = sim_with(KeyBook::derived(), Faults::none(), None).await;
    let results_url = format!("sqlite://{}", root.join("results.db").display());
    let test_values = BTreeMap::from([
        ("PAYPLE_CST_ID", simulator::TEST_CST_ID.to_owned()),
        ("PAYPLE_CUST_KEY", simulator::TEST_CUST_KEY.to_owned()),
        ("PAYPLE_REFERER", simulator::TEST_REFERER.to_owned()),
        ("PAYPLE_URL", sim.url()),
        ("DATABASE_URL", format!("'{results_url}'")),
        ("SOURCE_DATABASE_URL", format!("'{source_url}'")),
    ]);
    let env_file: String = example
        .lines()
        .map(|l| match l.split_once('=') {
            Some((name, _)) if test_values.contains_key(name) => {
                format!("{name}={}\n", test_values[name])
            }
            _ => format!("{l}\n"),
        })
        .collect();
    let env_path = root.join("env");
    std::fs::write(&env_path, env_file).expect("write env");

    let moves = [
        ("/etc/payple-reconcile/env", env_path.clone()),
        (
            "/usr/local/bin/payple-reconcile",
            PathBuf::from(helpers::BIN),
        ),
        ("/var/lib/payple-reconcile/reports", root.join("reports")),
        (
            "/var/lib/node_exporter/textfile_collector",
            root.join("textfile"),
        ),
        ("/var/log/payple-reconcile", root.join("log")),
    ];
    // What cron does with the line: `\%` becomes `%`; the rest goes to $SHELL -c.
    let mut script = cmd.replace("\\%", "%");
    for (from, to) in &moves {
        assert!(script.contains(from), "the cron line no longer uses {from}");
        script = script.replace(from, to.to_str().expect("utf-8 path"));
    }
    let cron = |script: &str| {
        let mut c = std::process::Command::new("/bin/sh");
        c.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .args(["-c", script])
            .stdin(Stdio::null());
        c
    };
    let out = output_of(cron(&script)).await;
    assert_exit(&out, 0);
    let summary = summary_of(&out);
    assert_eq!(summary["state"], "completed", "{summary}");
    assert_eq!(summary["checked_now"], 15, "{summary}");
    assert_eq!(sim.stats().lookups, 15);

    let reports: Vec<String> = std::fs::read_dir(root.join("reports"))
        .expect("list")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let day = reports[0].strip_suffix(".csv").expect("a .csv report");
    assert!(
        chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").is_ok(),
        "{day}"
    );
    let report = std::fs::read(root.join("reports").join(&reports[0])).expect("report");
    assert!(report.starts_with(b"\xEF\xBB\xBF"), "--excel: a UTF-8 BOM");
    assert!(
        String::from_utf8_lossy(&report).lines().count() > 15,
        "a header and a line per key"
    );
    let log = std::fs::read_to_string(root.join("log").join(format!("{day}.log"))).expect("log");
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
    }
    assert!(root.join("textfile").join("payple_reconcile.prom").exists());
    let store = Store::open(&results_url).await.expect("results");
    let run = only_run(&store).await;
    assert_eq!(run.run_key.as_deref(), Some(day), "the run key is the date");
    store.close().await;

    // Started again the same day (by hand, or a second cron daemon): already completed.
    let out = output_of(cron(&script)).await;
    assert_exit(&out, 0);
    let again = summary_of(&out);
    assert!(
        again["note"]
            .as_str()
            .is_some_and(|n| n.contains("already completed")),
        "{again}"
    );
    assert_eq!(sim.stats().lookups, 15, "the second start sent lookups");
    sim.shutdown().await;
}
