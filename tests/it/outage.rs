//! When Payple itself misbehaves: outages, code storms, 429 forever, token storms and the
//! code book, each against the real binary, the simulator and a real SQLite file. Each
//! scenario prints one `figures:` line (lookups, auth calls, state, exit code, duration)
//! for the issue note: `cargo test --test it outage -- --nocapture | grep figures:`.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use payple_reconcile::domain::KeyStatus;
use payple_reconcile::simulator::{Episode, Faults, SimHandle, SimStats};
use payple_reconcile::store::{RunState, Store};
use serde_json::{Value, json};

use crate::helpers::{
    Scenario, Setup, TestDb, assert_exit, assert_ground_truth, count_rows_sql, key_file, payer_ids,
    scalar_i64, spawn, stderr_of, summary_of, wait_output,
};

/// The scenario of most tests here: `n` keys from `seed`, a simulator with `faults`,
/// `--rate 100`; started, nothing run.
async fn at_rate_100(n: usize, seed: &str, faults: Faults) -> Setup {
    Scenario::new()
        .keys(n, seed)
        .faults(faults)
        .args(&["--rate", "100"])
        .start()
        .await
}

/// Runs `cmd` as a child (at most 150 s) and returns the output and how long it took.
async fn timed(cmd: Command) -> (Output, Duration) {
    let started = Instant::now();
    let out = wait_output(spawn(cmd), Duration::from_secs(150)).await;
    (out, started.elapsed())
}

/// Runs the scenario's `run` (its key file and flags) with `extra` flags ([`timed`]).
async fn run(set: &Setup, extra: &[&str]) -> (Output, Duration) {
    timed(set.command(extra)).await
}

/// Prints the figures the issue note needs and returns the summary.
fn figures(scenario: &str, out: &Output, took: Duration, sim: &SimHandle) -> Value {
    let summary = summary_of(out);
    let stats = sim.stats();
    eprintln!(
        "figures: {scenario}: exit {:?}, state {}, {} keys checked now, lookups {} \
         (simulator {}), auth calls {} (simulator {}), {:.1} s; simulator {stats:?}",
        out.status.code(),
        summary["state"],
        summary["checked_now"],
        summary["lookups"],
        stats.lookups,
        summary["auth_calls"],
        stats.auth_calls,
        took.as_secs_f64(),
    );
    summary
}

async fn failed_rows(store: &Store, run_id: i64) -> i64 {
    scalar_i64(
        store,
        &format!(
            "SELECT COUNT(*) FROM billing_key_checks WHERE run_id = {run_id} AND status = 'failed'"
        ),
    )
    .await
}

/// A 20 s outage (HTTP 503) in the middle of a 1,000-key run at `--rate 100`: the run
/// pauses, probes, resumes, and ends with exit 0, every key its true status and none
/// failed; the lookups the outage answered are bounded by the probes (tens).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_mid_run_pauses_and_every_key_gets_its_true_status() {
    let faults = Faults {
        outage: Some(Episode::lasting(503, 300, Duration::from_secs(20))),
        ..Faults::none()
    };
    let set = at_rate_100(1000, "outage-mid-run", faults).await;
    let (out, took) = run(&set, &[]).await;
    let summary = figures("outage 20 s, 1000 keys, rate 100", &out, took, &set.sim);
    assert_exit(&out, 0);
    assert_eq!(summary["failed"], 0);
    let stats = set.sim.stats();
    assert!(stats.outage > 0, "the outage happened: {stats:?}");
    assert!(
        stats.outage <= 60,
        "{} lookups answered by the outage: the breaker should have stopped them",
        stats.outage
    );
    let stderr = stderr_of(&out);
    assert!(stderr.contains("Payple looks unavailable"), "{stderr}");
    let run = set.run_record().await;
    assert_eq!(run.state, RunState::Completed);
    assert_ground_truth(&set.store, run.id, &set.ids).await;
    set.close().await;
}

/// One code answering every lookup for a while: what the storm looks like, and the
/// case's own bounds on what the run and the simulator saw.
struct Storm {
    /// The `figures:` line's name for the case.
    scenario: &'static str,
    seed: &'static str,
    keys: usize,
    code: &'static str,
    /// Lookups answered normally before the storm.
    after: u64,
    lasting: Duration,
    /// The case's own assertions on the output, the run's duration and the simulator's
    /// counts (after exit 0 and no key failed).
    check: fn(&Output, Duration, &SimStats),
}

/// A storm of one code (`--rate 100`): the run pauses and completes with exit 0, no key
/// failed and every key its true status.
async fn storm_pauses_then_completes(storm: Storm) {
    let faults = Faults {
        storm: Some(Episode::lasting(
            storm.code.to_owned(),
            storm.after,
            storm.lasting,
        )),
        ..Faults::none()
    };
    let set = at_rate_100(storm.keys, storm.seed, faults).await;
    let (out, took) = run(&set, &[]).await;
    let summary = figures(storm.scenario, &out, took, &set.sim);
    assert_exit(&out, 0);
    assert_eq!(summary["failed"], 0);
    (storm.check)(&out, took, &set.sim.stats());
    let run = set.run_record().await;
    assert_ground_truth(&set.store, run.id, &set.ids).await;
    set.close().await;
}

/// One unknown code (`SYS9999`) for every lookup after the 50th, for 15 s: the run pauses
/// and completes with every key its true status and none failed (the storm's first
/// victims are looked up again at the end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_storm_pauses_the_run_and_no_key_fails() {
    storm_pauses_then_completes(Storm {
        scenario: "SYS9999 storm 15 s, 200 keys",
        seed: "storm-15s",
        keys: 200,
        code: "SYS9999",
        after: 50,
        lasting: Duration::from_secs(15),
        check: |out, _took, stats| {
            assert!(stats.storm > 0 && stats.storm <= 60, "{stats:?}");
            assert!(
                stderr_of(out).contains("SYS9999"),
                "the reason names the code"
            );
        },
    })
    .await;
}

/// Stops on exhausting `--outage-budget 10` with exit 4 and state `interrupted`, with no
/// `failed` row; after the simulator recovers, `--resume` completes every key exactly
/// once with its true status.
async fn budget_spent_then_resumed(scenario: &str, seed: &str, faults: Faults) {
    let set = at_rate_100(200, seed, faults.clone()).await;
    let (out, took) = run(&set, &["--outage-budget", "10"]).await;
    let summary = figures(scenario, &out, took, &set.sim);
    assert_exit(&out, 4);
    assert_eq!(summary["state"], "interrupted");
    assert_eq!(summary["failed"], 0);
    assert!(took < Duration::from_secs(60), "{took:?}");
    let run_before = set.run_record().await;
    assert_eq!(run_before.state, RunState::Interrupted);
    assert_eq!(failed_rows(&set.store, run_before.id).await, 0);
    let written = scalar_i64(&set.store, &count_rows_sql(run_before.id)).await;
    assert!(
        written < set.ids.len() as i64,
        "keys were left pending: {written}"
    );
    let stderr = stderr_of(&out);
    assert!(stderr.contains("outage budget spent"), "{stderr}");
    let note = summary["note"].as_str().expect("a note says what to do");
    assert!(
        note.contains(&format!("--resume {}", run_before.id)),
        "{note}"
    );

    set.sim.set_faults(faults.recovered());
    let (out, took) = run(&set, &["--resume"]).await;
    let summary = figures(&format!("{scenario}, then --resume"), &out, took, &set.sim);
    assert_exit(&out, 0);
    assert_eq!(summary["run_id"], run_before.id);
    assert_eq!(summary["checked_now"], set.ids.len() as i64 - written);
    let run = set.run_record().await;
    assert_eq!(run.state, RunState::Completed);
    assert_ground_truth(&set.store, run.id, &set.ids).await;
    set.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_storm_past_the_outage_budget_exits_4_and_resume_completes() {
    let faults = Faults {
        storm: Some(Episode::forever("SYS9999".to_owned(), 50)),
        ..Faults::none()
    };
    budget_spent_then_resumed("SYS9999 forever, budget 10 s", "storm-forever", faults).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_503_exits_4_and_resume_completes_every_key_once() {
    let faults = Faults {
        outage: Some(Episode::forever(503, 50)),
        ..Faults::none()
    };
    budget_spent_then_resumed("503 forever after 50, budget 10 s", "503-forever", faults).await;
}

/// 429 with `Retry-After: 100000` for every lookup after the 20th: the run does not sleep
/// for a day; it stops at once with exit 4, resumable, nothing failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_longer_than_the_budget_exits_4_at_once() {
    let faults = Faults {
        throttle: Some(Episode::forever(100_000, 20)),
        ..Faults::none()
    };
    let set = at_rate_100(100, "429-forever", faults).await;
    let (out, took) = run(&set, &[]).await;
    let summary = figures("429 Retry-After 100000 after 20", &out, took, &set.sim);
    assert_exit(&out, 4);
    assert_eq!(summary["state"], "interrupted");
    assert_eq!(summary["failed"], 0);
    assert!(took < Duration::from_secs(20), "{took:?}");
    let stats = set.sim.stats();
    assert!(stats.throttled >= 1 && stats.throttled <= 10, "{stats:?}");
    let stderr = stderr_of(&out);
    assert!(stderr.contains("longer than the outage budget"), "{stderr}");
    set.close().await;
}

/// Every lookup answers `SPAY0001` whatever the token: a handful of auth calls (not one
/// per lookup), exit 3 naming the code, and no key `failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_storm_stops_with_exit_3_after_a_handful_of_auth_calls() {
    let faults = Faults {
        always_code: Some("SPAY0001".to_owned()),
        ..Faults::none()
    };
    let set = at_rate_100(50, "token-storm", faults).await;
    let (out, took) = run(&set, &[]).await;
    let stats = set.sim.stats();
    eprintln!(
        "figures: SPAY0001 for every lookup, 50 keys: exit {:?}, lookups {}, auth calls {}, \
         {:.1} s",
        out.status.code(),
        stats.lookups,
        stats.auth_calls,
        took.as_secs_f64()
    );
    assert_exit(&out, 3);
    let stderr = stderr_of(&out);
    assert!(stderr.contains("SPAY0001"), "{stderr}");
    assert!(stats.auth_calls <= 5, "{stats:?}");
    assert!(stats.lookups <= 30, "{stats:?}");
    let run = set.run_record().await;
    eprintln!("figures: token storm run state {}", run.state.as_str());
    assert_eq!(failed_rows(&set.store, run.id).await, 0);
    set.close().await;
}

/// A bank-maintenance code (`CPAY9998`) answering every lookup for 5 s pauses the run like
/// an outage: it completes with no key failed, and the maintenance answers are bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maintenance_code_pauses_like_an_outage() {
    storm_pauses_then_completes(Storm {
        scenario: "CPAY9998 for 5 s, 150 keys",
        seed: "maintenance",
        keys: 150,
        code: "CPAY9998",
        after: 30,
        lasting: Duration::from_secs(5),
        check: |_out, took, stats| {
            assert!(took >= Duration::from_secs(5), "{took:?}");
            assert!(stats.storm <= 40, "{stats:?}");
        },
    })
    .await;
}

/// Gone codes from API.md's table make a key `gone`; a `--codes` file maps a new code to
/// gone; a file configuring `0000` stops the run before any lookup, naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_codes_from_the_table_and_a_codes_file() {
    const GONE: [&str; 8] = [
        "SPAY0005", "RPAY0005", "SPCD0012", "SPCD0001", "SPCD0011", "CPAY0002", "CPAY0003",
        "CPAY0004",
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = payer_ids(GONE.len() + 1, "gone-codes");
    let mut lines: Vec<Value> = GONE
        .iter()
        .zip(&ids)
        .map(|(code, id)| json!({"payer_id": id, "kind": "error", "code": code, "msg": "m"}))
        .collect();
    let custom = &ids[GONE.len()];
    lines.push(json!({"payer_id": custom, "kind": "error", "code": "XPAY0042", "msg": "m"}));
    let book = key_file(dir.path(), "keys.jsonl", &lines);
    let codes = dir.path().join("codes.toml");
    std::fs::write(&codes, "[codes]\nXPAY0042 = \"gone\"\n").expect("codes file");
    let codes_arg = codes.to_str().expect("UTF-8");
    let set = Scenario::new()
        .ids(&ids)
        .book(book)
        .args(&["--codes", codes_arg])
        .start()
        .await;
    let (out, took) = run(&set, &[]).await;
    figures("gone codes + --codes file", &out, took, &set.sim);
    assert_exit(&out, 0);
    let checks = set.checks().await;
    for (id, code) in ids.iter().zip(GONE.iter().chain(["XPAY0042"].iter())) {
        let row = &checks[id];
        assert_eq!(row.status, KeyStatus::Gone, "{code}: {row:?}");
        assert_eq!(row.result_code.as_deref(), Some(*code));
    }

    // The same keys, flags and simulator against a fresh database.
    std::fs::write(&codes, "[codes]\n\"0000\" = \"gone\"\n").expect("codes file");
    let lookups = set.sim.stats().lookups;
    let fresh = TestDb::sqlite();
    let (out, _) = timed(set.command_on(&fresh, &[])).await;
    assert_exit(&out, 3);
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("--codes") && stderr.contains("codes.toml"),
        "{stderr}"
    );
    assert_eq!(set.sim.stats().lookups, lookups, "no lookup sent");
    set.close().await;
}
