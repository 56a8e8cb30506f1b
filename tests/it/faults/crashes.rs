//! Crash and resume, repeated: SIGKILLs at random moments, and the two lease states a kill
//! can leave behind.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use payple_reconcile::simulator::Faults;
use payple_reconcile::store::RunState;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{POLL, seed};
use crate::helpers::{
    self, Scenario, Setup, assert_exit, assert_ground_truth, stderr_of, summary_of, wait_output,
};

const CRASH_KEYS: usize = 600;
const CRASH_KILLS: usize = 10;

/// Kills `run` (the first time new, then `--resume`) `CRASH_KILLS` times at random moments;
/// returns the moment of each kill (ms after start) and the rows written after it.
async fn kill_rounds(set: &Setup, rng: &mut StdRng) -> Vec<(u128, i64)> {
    let mut progress = Vec::new();
    for round in 0..CRASH_KILLS {
        // Every round names the CSV. A kill before the run row existed leaves nothing to
        // resume: `--resume` would exit 3 saying so (issue 10), so that round starts the
        // run afresh without it, as an operator would.
        let mut args = vec!["--rate", "50", "--concurrency", "8"];
        let runs = helpers::scalar_i64(&set.store, "SELECT COUNT(*) FROM reconcile_runs").await;
        if round > 0 && runs > 0 {
            args.push("--resume");
        }
        let rows_before = set.rows().await;
        let started = Instant::now();
        let mut child = set.spawn(&args);
        if round % 2 == 0 {
            // Any moment: start-up, migrations, lease, auth, staging, lookups, writes.
            let moment = Duration::from_millis(rng.random_range(30..=1000));
            tokio::time::sleep(moment).await;
        } else {
            // Mid-run for sure: once this process has written rows, within a writer flush
            // or two of a batch.
            helpers::wait_for_rows(
                &set.store,
                rows_before + 1,
                Duration::from_secs(30),
                POLL,
                &mut child,
            )
            .await;
            let moment = Duration::from_millis(rng.random_range(0..=400));
            tokio::time::sleep(moment).await;
        }
        let moment = started.elapsed();
        if let Ok(Some(status)) = child.try_wait() {
            let out = wait_output(child, Duration::from_secs(5)).await;
            panic!(
                "round {round}: the run ended ({status}) before the kill at {moment:?}\nstderr: {}",
                helpers::stderr_of(&out)
            );
        }
        child.start_kill().expect("SIGKILL");
        let out = wait_output(child, Duration::from_secs(10)).await;
        assert_eq!(
            out.status.signal(),
            Some(9),
            "round {round}: {:?}",
            out.status
        );
        progress.push((moment.as_millis(), set.rows().await));
    }
    progress
}

/// Ten SIGKILLs at random moments of one run (start-up, staging, auth, lookups, writes),
/// each followed by `run --resume`; the last resume runs to the end. Every key then has
/// exactly one row with its true status, the run completed under one id, and the work
/// redone is bounded by what was in flight or unwritten at each kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sigkills_at_random_moments_then_resume_leave_one_true_row_per_key() {
    let mut rng = StdRng::seed_from_u64(seed("crash and resume"));
    // 20 ms per lookup: at a kill, lookups are on the wire and rows wait in the writer.
    let set = Scenario::new()
        .keys(CRASH_KEYS, "crash-resume")
        .faults(Faults {
            latency: Duration::from_millis(20),
            ..Faults::none()
        })
        .start()
        .await;
    let progress = kill_rounds(&set, &mut rng).await;
    eprintln!("kill moments (ms after start) and rows after each kill: {progress:?}");
    assert!(
        progress.windows(2).all(|w| w[0].1 <= w[1].1),
        "a row written before a kill was lost: {progress:?}"
    );
    let at_last_kill = progress.last().map_or(0, |p| p.1);
    assert!(
        at_last_kill < CRASH_KEYS as i64,
        "the run was finished before the last kill"
    );

    let out = set
        .output(&["--resume", "--rate", "0", "--concurrency", "16"])
        .await;
    assert_exit(&out, 0);
    let summary = summary_of(&out);
    assert_eq!(summary["state"], "completed");
    assert_eq!(summary["checked_now"], CRASH_KEYS as i64 - at_last_kill);

    let run = set.run_record().await;
    assert_eq!(summary["run_id"], run.id, "one run across every resume");
    assert_eq!(run.state, RunState::Completed);
    assert_eq!(run.exit_code, Some(0));
    assert_eq!(run.keys_total, Some(CRASH_KEYS as i64));
    assert_eq!(run.counts.active + run.counts.gone, CRASH_KEYS as i64);
    let checks = assert_ground_truth(&set.store, run.id, &set.ids).await;
    assert!(checks.values().all(|c| c.attempts == 1));
    // A kill loses at most the lookups in flight and the writer's open batch (250 ms of
    // rows at 50 per second, 13; 30 leaves room for a slow machine); everything written
    // before a kill is never looked up again.
    let lookups = set.sim.stats().lookups;
    let redo_bound = (CRASH_KEYS + CRASH_KILLS * (8 + 30)) as u64;
    eprintln!("crash and resume: {lookups} lookups for {CRASH_KEYS} keys");
    assert!(
        lookups >= CRASH_KEYS as u64 && lookups <= redo_bound,
        "{lookups} lookups for {CRASH_KEYS} keys over {CRASH_KILLS} kills"
    );
    set.close().await;
}

/// The state a SIGKILL leaves when it lands between creating the run row and naming the
/// run in the lease (`pipeline::run_leased`: `create_or_join_run`, then `set_lease_run`):
/// the lease still says run 0 and has up to 60 s to live. `run --resume` must continue the
/// run, as after a kill at any other moment, instead of refusing with "run in progress".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_a_kill_between_run_creation_and_lease_naming() {
    let set = Scenario::new().keys(120, "lease-window").start().await;
    let mut child = set.spawn(&["--rate", "20"]);
    helpers::wait_for_rows(&set.store, 10, Duration::from_secs(15), POLL, &mut child).await;
    child.start_kill().expect("SIGKILL");
    let out = wait_output(child, Duration::from_secs(10)).await;
    assert_eq!(out.status.signal(), Some(9));
    // Exactly what the kill leaves when it lands before `set_lease_run`.
    sqlx::query("UPDATE run_leases SET run_id = 0")
        .execute(set.store.pool())
        .await
        .expect("rewind the lease");

    let out = helpers::output_of(set.bare_command(&["--resume", "--rate", "0"])).await;
    assert_exit(&out, 0);
    let run = set.run_record().await;
    assert_eq!(run.state, RunState::Completed);
    assert_ground_truth(&set.store, run.id, &set.ids).await;
    set.close().await;
}

/// A kill after the lease was taken but before any run existed (during partner auth)
/// leaves a lease naming run 0 and nothing to resume: the next start, plain or `--resume`,
/// is not blocked by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_before_the_run_existed_blocks_nobody() {
    let set = Scenario::new().keys(30, "lease-no-run").start().await;
    // Exactly what such a kill leaves: this machine's holder, a process that is gone.
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    let far_future = "2999-01-01T00:00:00.000Z";
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO run_leases (name, run_id, holder, heartbeat_at, expires_at) \
         VALUES ('reconcile', 0, '{host}:{}:1', '{far_future}', '{far_future}')",
        u32::MAX - 7
    )))
    .execute(set.store.pool())
    .await
    .expect("plant the lease");

    // `--resume` finds nothing to resume (exit 3 since issue 10), and says that, not that
    // a lease is held; a plain start is not blocked.
    let out = set.output(&["--resume", "--rate", "0"]).await;
    assert_exit(&out, 3);
    assert!(
        stderr_of(&out).contains("nothing to resume"),
        "{}",
        stderr_of(&out)
    );
    let out = set.output(&["--rate", "0"]).await;
    assert_exit(&out, 0);
    let run = set.run_record().await;
    assert_eq!(run.state, RunState::Completed);
    assert_ground_truth(&set.store, run.id, &set.ids).await;
    set.close().await;
}
