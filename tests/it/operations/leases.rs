//! No overlapping runs: the lease a run holds, what a crash leaves of it, and who may take
//! it over.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use payple_reconcile::simulator::Faults;
use payple_reconcile::store::{RunRecord, RunState};

use super::{POLL, leases, run_id_of, runs, send};
use crate::helpers::{
    self, Scenario, Setup, TestDb, all_checks, assert_exit, count_rows_sql, finish, output_of,
    scalar_i64, spawn, stderr_of, summary_of,
};

/// A simulator answering every lookup after 20 ms.
fn slow() -> Faults {
    Faults {
        latency: Duration::from_millis(20),
        ..Faults::none()
    }
}

const SLOW: [&str; 4] = ["--rate", "5", "--concurrency", "2"];
const QUICK: [&str; 2] = ["--rate", "0"];

// ---- 1. no overlapping runs ---------------------------------------------------------------

/// A slow run holds the lease: a second `run` exits 3 naming it and sends nothing; after
/// the first ends, a new run starts. Returns the id of that new run.
async fn second_run_refused_while_one_runs(set: &Setup) -> i64 {
    let store = &set.store;
    let mut first = set.spawn(&SLOW);
    helpers::wait_for_rows(store, 2, Duration::from_secs(15), POLL, &mut first).await;
    let running = set.run_record().await;
    assert_eq!(running.state, RunState::Running);
    let held = leases(store).await;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        (held[0].name.as_str(), held[0].run_id),
        ("reconcile", running.id)
    );

    let second = set.output(&QUICK).await;
    assert_exit(&second, 3);
    // A refused run prints no summary, only the JSON error line (issue 10).
    let line = summary_of(&second);
    assert_eq!(line["exit_code"], 3, "{line}");
    assert!(
        line.get("run_id").is_none(),
        "a refused run printed a summary: {line}"
    );
    let stderr = stderr_of(&second);
    assert!(
        stderr.contains(&format!("run {} ", running.id)),
        "stderr must name the running run {}: {stderr}",
        running.id
    );
    assert_eq!(runs(store).await.len(), 1, "the refused run left a run row");

    let out = finish(first).await;
    assert_exit(&out, 0);
    let summary = summary_of(&out);
    assert_eq!(run_id_of(&summary), running.id);
    assert_eq!(summary["state"], "completed");
    assert_eq!(summary["checked_now"], 20);
    assert_eq!(set.sim.stats().lookups, 20, "the refused run sent lookups");
    assert!(leases(store).await.is_empty(), "the lease outlived its run");

    // Now a new run starts fine.
    let third = set.output(&QUICK).await;
    assert_exit(&third, 0);
    let third_id = run_id_of(&summary_of(&third));
    assert!(third_id > running.id);
    third_id
}

/// A SIGKILLed run (after `after_id`): its lease stays, naming the dead process, about
/// 60 s ahead, and keeps a plain `run` out. Returns the crashed run.
async fn crashed_run_keeps_its_lease(set: &Setup, after_id: i64) -> RunRecord {
    let store = &set.store;
    let mut crashed = set.spawn(&SLOW);
    let before = set.rows().await;
    helpers::wait_for_rows(
        store,
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
    let crashed_run = runs(store).await.remove(0);
    assert!(crashed_run.id > after_id);
    assert_eq!(
        crashed_run.state,
        RunState::Running,
        "a SIGKILL cannot mark the run"
    );
    let held = leases(store).await;
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

    let blocked = set.output(&QUICK).await;
    assert_exit(&blocked, 3);
    assert!(
        stderr_of(&blocked).contains(&format!("run {} ", crashed_run.id)),
        "{}",
        stderr_of(&blocked)
    );
    assert_eq!(
        runs(store).await[0].id,
        crashed_run.id,
        "a blocked run left a row"
    );
    crashed_run
}

/// A slow run holds the lease: a second `run` exits 3 naming it and sends nothing; after the
/// first ends, a new run starts. A SIGKILLed run's lease stays (about 60 s ahead) and keeps
/// a plain `run` out, but `run --resume ID` takes over at once and finishes the same run.
async fn no_overlapping_runs(db: TestDb) {
    // Migrated before the child starts, so polling never races its migrations.
    let set = Scenario::new()
        .keys(20, "overlap")
        .faults(slow())
        .on(db)
        .start()
        .await;
    let third_id = second_run_refused_while_one_runs(&set).await;
    let crashed_run = crashed_run_keeps_its_lease(&set, third_id).await;

    // Resuming the crashed run itself is allowed immediately: same run id takes over.
    let store = &set.store;
    let had = scalar_i64(store, &count_rows_sql(crashed_run.id)).await;
    let lookups_before = set.sim.stats().lookups;
    let id = crashed_run.id.to_string();
    let resumed = output_of(set.bare_command(&["--resume", &id, "--rate", "0"])).await;
    assert_exit(&resumed, 0);
    let summary = summary_of(&resumed);
    assert_eq!(
        run_id_of(&summary),
        crashed_run.id,
        "resume continues the same run"
    );
    assert_eq!(summary["state"], "completed");
    assert_eq!(summary["checked_now"].as_i64(), Some(20 - had), "{summary}");
    assert_eq!(set.sim.stats().lookups - lookups_before, (20 - had) as u64);
    assert_eq!(all_checks(store, crashed_run.id).await.len(), 20);
    assert!(
        leases(store).await.is_empty(),
        "the lease outlived the resumed run"
    );
    set.close().await;
}

helpers::per_database!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    no_overlapping_runs:
        Sqlite => no_overlapping_runs_on_sqlite,
        Postgres => no_overlapping_runs_on_postgres,
        MySql => no_overlapping_runs_on_mysql,
);

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
    let set = Scenario::new()
        .keys(20, "same-key")
        .faults(slow())
        .args(&["--run-key", "2026-11-27"])
        .start()
        .await;

    let mut first = set.spawn(&SLOW);
    helpers::wait_for_rows(&set.store, 2, Duration::from_secs(15), POLL, &mut first).await;
    let running = set.run_record().await;

    let second = set.output(&QUICK).await;
    let out = finish(first).await;
    assert_exit(&out, 0);
    assert_eq!(
        set.sim.stats().lookups,
        20,
        "two live processes looked the same run's keys up"
    );
    assert_exit(&second, 3);
    assert!(
        stderr_of(&second).contains(&format!("run {} ", running.id)),
        "{}",
        stderr_of(&second)
    );
    set.close().await;
}

/// A run takes the lease before it authenticates and names its run only afterwards: while
/// Payple's auth is slow (here: a server that never answers), the lease holds run id 0. A
/// second new run must still be refused, not take the lease over because its own run id
/// is 0 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_still_authenticating_holds_the_lease() {
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
    let set = Scenario::new()
        .keys(10, "auth-window")
        .args(&QUICK)
        .start()
        .await;

    let mut cmd = set.command(&[]);
    cmd.env("PAYPLE_URL", &silent_url)
        .args(["--request-timeout", "15", "--max-attempts", "1"]);
    let mut first = spawn(cmd);
    helpers::wait_for_count(
        &set.store,
        "SELECT COUNT(*) FROM run_leases",
        1,
        Duration::from_secs(10),
        POLL,
        &mut first,
    )
    .await;
    let held = leases(&set.store).await;
    assert_eq!(held[0].run_id, 0, "still authenticating: {held:?}");

    let second = set.output(&[]).await;
    send(&first, libc::SIGKILL);
    let _ = finish(first).await;
    hold.abort();
    assert_eq!(
        set.sim.stats().lookups,
        0,
        "the second run went ahead while the first held the lease"
    );
    assert_exit(&second, 3);
    set.close().await;
}
