//! The real binary as a child process: SIGKILL then resume, SIGTERM, exit codes.
//!
//! Each test starts `run` with `--rate 50` on 400 keys against an in-process simulator,
//! waits until the results table has rows (the run is well under way), signals the child
//! with the `kill` command, and then reads the database and the simulator's counters.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use payple_reconcile::simulator::{Faults, KeyBook};
use payple_reconcile::store::{RunState, Store};

use crate::helpers::{
    self, Scenario, TestDb, all_checks, assert_exit, assert_ground_truth, finish, key_hash, kill,
    latency, logged_lookups, only_run, output_of, scalar_i64, summary_of,
};

const KEYS: usize = 400;
const RATE: &str = "50";
const CONCURRENCY: u64 = 8;
/// How often `wait_for_rows` looks at the results table.
const POLL: Duration = Duration::from_millis(50);

/// Every input key has exactly one row in the run, with the status its derived answer
/// implies, looked up once.
async fn assert_every_key_once(store: &Store, run_id: i64, ids: &[String]) {
    let checks = assert_ground_truth(store, run_id, ids).await;
    for id in ids {
        assert_eq!(checks[id].attempts, 1, "{id}");
    }
}

/// SIGKILL mid-run, then `run --resume`: only keys without a row are looked up again, every
/// key ends with exactly one row, and the run completes under its first id.
async fn sigkill_then_resume(db: TestDb) {
    // Migrated before the child starts, so polling never races the child's migrations.
    let set = Scenario::new()
        .keys(KEYS, "sigkill")
        .request_log()
        .on(db)
        .start()
        .await;
    let (store, sim) = (&set.store, &set.sim);

    let mut child = set.spawn(&["--rate", RATE, "--concurrency", &CONCURRENCY.to_string()]);
    let pid = child.id().expect("child pid");
    helpers::wait_for_rows(store, 100, Duration::from_secs(15), POLL, &mut child).await;
    kill("KILL", pid);
    let out = finish(child).await;
    assert_eq!(out.status.signal(), Some(9), "{:?}", out.status);
    assert!(out.stdout.is_empty(), "a killed run printed a summary");

    let run = only_run(store).await;
    assert_eq!(run.state, RunState::Running, "a killed run stays `running`");
    let written_at_kill = set.rows().await;
    let sent_at_kill = sim.stats().lookups as i64;
    assert!(
        written_at_kill >= 100 && written_at_kill < KEYS as i64,
        "{written_at_kill} rows at the kill"
    );
    // Looked up but not yet written when killed: those in flight plus the writer's open
    // batch (flushed every 250 ms, about rate/4 rows; 35 leaves room for a slow machine).
    let lost = sent_at_kill - written_at_kill;
    assert!(
        (0..=CONCURRENCY as i64 + 35).contains(&lost),
        "{sent_at_kill} lookups sent, {written_at_kill} rows written at the kill"
    );
    let rows_before: Vec<String> = all_checks(store, run.id).await.into_keys().collect();

    let out = output_of(set.bare_command(&["--resume", "--rate", "0"])).await;
    assert_exit(&out, 0);
    let summary = summary_of(&out);
    assert_eq!(summary["run_id"], run.id, "resume continues the killed run");
    assert_eq!(summary["state"], "completed");
    assert_eq!(summary["checked_now"], KEYS as i64 - written_at_kill);

    let run = store.run(run.id).await.expect("read").expect("the run");
    assert_eq!(run.state, RunState::Completed);
    assert_eq!(run.exit_code, Some(0));
    assert_eq!(run.keys_total, Some(KEYS as i64));
    assert_eq!(
        store.latest_runs(None, 10).await.expect("runs").len(),
        1,
        "no second run"
    );
    assert_every_key_once(store, run.id, &set.ids).await;

    // The resume looked up exactly the keys that had no row: nothing written was redone.
    let total = sim.stats().lookups as i64;
    assert_eq!(
        total,
        sent_at_kill + (KEYS as i64 - written_at_kill),
        "lookups in all"
    );
    assert!(
        total <= KEYS as i64 + CONCURRENCY as i64 + 35,
        "{total} lookups for {KEYS} keys"
    );
    let left = set.close().await;
    let mut per_key: HashMap<String, usize> = HashMap::new();
    for key in logged_lookups(left.log()) {
        *per_key.entry(key).or_default() += 1;
    }
    assert_eq!(per_key.len(), KEYS, "every key looked up");
    for id in &rows_before {
        assert_eq!(
            per_key[&key_hash(id)],
            1,
            "{id} had a row before the kill but was looked up again"
        );
    }
    let twice = per_key.values().filter(|n| **n > 1).count() as i64;
    assert_eq!(
        twice, lost,
        "keys looked up twice are those unwritten at the kill"
    );
    assert!(per_key.values().all(|n| *n <= 2));
}

helpers::per_database!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    sigkill_then_resume:
        Sqlite => sigkill_mid_run_then_resume_checks_every_key_exactly_once_on_sqlite,
        Postgres => sigkill_mid_run_then_resume_checks_every_key_exactly_once_on_postgres,
);

/// SIGTERM or SIGINT mid-run: in-flight lookups finish and are written, the run is
/// `interrupted` with exit code 143 / 130, and `--resume` completes it without looking
/// any key up twice.
async fn graceful_stop_then_resume(signal: &str, code: i32) {
    // 300 ms per lookup: eight lookups are on the wire when the signal comes.
    let set = Scenario::new()
        .keys(KEYS, &format!("graceful-{signal}"))
        .faults(latency(300))
        .start()
        .await;
    let (store, sim) = (&set.store, &set.sim);

    let mut child = set.spawn(&["--rate", RATE, "--concurrency", &CONCURRENCY.to_string()]);
    let pid = child.id().expect("child pid");
    helpers::wait_for_rows(store, 50, Duration::from_secs(15), POLL, &mut child).await;
    let signalled = Instant::now();
    kill(signal, pid);
    let out = finish(child).await;
    assert_exit(&out, code);
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "stopping took {:?}",
        signalled.elapsed()
    );
    let summary = summary_of(&out);
    assert_eq!(summary["state"], "interrupted");
    assert_eq!(summary["exit_code"], code);

    let run = only_run(store).await;
    assert_eq!(run.state, RunState::Interrupted);
    assert_eq!(run.exit_code, Some(i64::from(code)));
    assert!(run.finished_at.is_some());
    let written = set.rows().await;
    assert!(
        written > 0 && written < KEYS as i64,
        "{written} rows after {signal}"
    );
    // Everything that was looked up was written: no lookup is lost on a graceful stop.
    let sent = sim.stats().lookups as i64;
    assert_eq!(sent, written, "lookups sent vs rows written after {signal}");
    assert_eq!(run.counts.active + run.counts.gone, written);
    assert_eq!(
        summary["active"].as_i64().unwrap_or(-1) + summary["gone"].as_i64().unwrap_or(-1),
        written
    );

    let out =
        output_of(set.bare_command(&["--resume", "--rate", "0", "--concurrency", "64"])).await;
    assert_exit(&out, 0);
    let summary = summary_of(&out);
    assert_eq!(summary["run_id"], run.id);
    assert_eq!(summary["checked_now"], KEYS as i64 - written);
    let run = store.run(run.id).await.expect("read").expect("the run");
    assert_eq!(run.state, RunState::Completed);
    assert_eq!(run.exit_code, Some(0));
    assert_every_key_once(store, run.id, &set.ids).await;
    assert_eq!(sim.stats().lookups, KEYS as u64, "no key looked up twice");
    set.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_exits_143_interrupted_then_resumes() {
    graceful_stop_then_resume("TERM", 143).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_mid_run_exits_130_interrupted_then_resumes() {
    graceful_stop_then_resume("INT", 130).await;
}

/// After SIGTERM no new lookup is dispatched: keys that were only waiting for the rate
/// limiter (with `--concurrency` far above `--rate`, most of them are) are not sent, and
/// the process exits promptly instead of draining the limiter's queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_nothing_that_was_waiting_for_the_rate_limiter() {
    let set = Scenario::new().keys(200, "limiter-queue").start().await;
    let (store, sim) = (&set.store, &set.sim);

    let mut child = set.spawn(&["--rate", "10", "--concurrency", "64"]);
    let pid = child.id().expect("child pid");
    helpers::wait_for_rows(store, 5, Duration::from_secs(15), POLL, &mut child).await;
    let sent_before = sim.stats().lookups;
    let signalled = Instant::now();
    kill("TERM", pid);
    let out = finish(child).await;
    let took = signalled.elapsed();
    assert_exit(&out, 143);
    let sent_after = sim.stats().lookups - sent_before;
    // With no latency at most one lookup is on the wire at any moment (10 per second).
    assert!(
        sent_after <= 1,
        "{sent_after} lookups were dispatched after SIGTERM (the limiter's queue was drained)"
    );
    assert!(
        took < Duration::from_secs(2),
        "exiting took {took:?} after SIGTERM"
    );
    let written = set.rows().await;
    assert_eq!(
        written as u64,
        sim.stats().lookups,
        "every lookup sent was written"
    );
    assert_eq!(only_run(store).await.state, RunState::Interrupted);
    set.close().await;
}

/// A second signal abandons the lookups still in flight: the process exits at once, the
/// run is `interrupted`, nothing half-done is written, and `--resume` checks those keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_signal_abandons_in_flight_lookups_and_resume_checks_them() {
    let set = Scenario::new()
        .keys(60, "second-signal")
        .faults(latency(1500))
        .args(&["--rate", "0", "--concurrency", "4"])
        .start()
        .await;
    let store = &set.store;

    let mut child = set.spawn(&[]);
    let pid = child.id().expect("child pid");
    helpers::wait_for_rows(store, 4, Duration::from_secs(15), POLL, &mut child).await;
    kill("TERM", pid);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let signalled = Instant::now();
    kill("INT", pid);
    let out = finish(child).await;
    let took = signalled.elapsed();
    // The first signal decides the exit code.
    assert_exit(&out, 143);
    assert!(
        took < Duration::from_millis(1000),
        "exiting took {took:?} after the second signal"
    );
    let run = only_run(store).await;
    assert_eq!(run.state, RunState::Interrupted);
    let written = scalar_i64(store, "SELECT COUNT(*) FROM billing_key_checks").await;
    let sent = set.sim.stats().lookups as i64;
    assert!(
        written >= 4 && written < sent,
        "{written} rows written, {sent} lookups sent"
    );

    // Resume against a fast simulator (the slow one stopped): the abandoned keys are
    // checked, each key once.
    let sim = set
        .second_sim(KeyBook::derived(), Faults::none(), None)
        .await;
    let resume = set.bare_command_with_sim(&sim, &["--resume", "--rate", "0"]);
    set.world.sim.shutdown().await;
    let out = output_of(resume).await;
    assert_exit(&out, 0);
    assert_eq!(summary_of(&out)["run_id"], run.id);
    assert_eq!(sim.stats().lookups as i64, 60 - written);
    assert_every_key_once(&set.store, run.id, &set.world.ids).await;
    set.store.close().await;
    sim.shutdown().await;
}
