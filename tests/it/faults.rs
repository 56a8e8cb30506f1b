//! The fault-tolerance suite: crashes, storms, pushback, expiry, database trouble, bad input,
//! secrets, and fuzzing of the two parsers that read what the outside world sends.
//!
//! Every scenario but the fuzzing runs the real binary as a child process against an
//! in-process simulator and a real results database, then compares the results table with
//! the simulator's ground truth: `derive_key(payer_id).kind` (card or transfer → `active`,
//! gone → `gone`). Where a fault decides what a key may end as, the simulator's request log
//! (one line per request: arrival time, fault, 16-hex hash of the payer id) says what each
//! key went through.
//!
//! Random choices (kill moments) come from a seed printed at the start of the test; set
//! `FAULTS_SEED` to replay one.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use payple_reconcile::domain::{KeyStatus, stable_hash};
use payple_reconcile::simulator::{Faults, KeyBook, Partner, SimConfig};
use payple_reconcile::store::{CheckRecord, RunState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::helpers::{
    self, TestDb, all_checks, assert_exit, assert_ground_truth, csv_run, derived_status, key_hash,
    only_run, output_of, run_cmd, scalar_i64, sim_with, slow_sim, spawn, stderr_of, summary_of,
    wait_output,
};

// ---- plumbing -----------------------------------------------------------------------------

/// How often `wait_for_rows` looks at the results table.
const POLL: Duration = Duration::from_millis(25);

/// The seed of a test's random choices: `FAULTS_SEED`, or the clock.
fn seed(what: &str) -> u64 {
    let seed = std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("{what}: seed {seed} (FAULTS_SEED={seed} replays it)");
    seed
}

/// One line of the simulator's request log.
#[derive(Debug, Clone, Deserialize)]
struct Logged {
    t_ms: u64,
    kind: String,
    http_status: Option<u16>,
    code: Option<String>,
    key: Option<String>,
    fault: String,
    expired_token: bool,
}

/// Every line of a request log, in arrival order (lines are written when answered).
fn read_log(path: &Path) -> Vec<Logged> {
    let text = std::fs::read_to_string(path).expect("request log");
    let mut lines: Vec<Logged> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line {l:?}: {e}")))
        .collect();
    lines.sort_by_key(|l| l.t_ms);
    lines
}

/// The lookups of each key (by hash), in arrival order.
fn lookups_by_key(log: &[Logged]) -> HashMap<String, Vec<Logged>> {
    let mut by_key: HashMap<String, Vec<Logged>> = HashMap::new();
    for line in log.iter().filter(|l| l.kind == "lookup") {
        let key = line.key.clone().expect("a lookup line names its key");
        by_key.entry(key).or_default().push(line.clone());
    }
    by_key
}

/// The reason a key that got only this fault must be recorded with.
fn fault_code(fault: &str) -> &'static str {
    match fault {
        "500" | "fail_first" => "HTTP_500",
        "drop" => "TRANSPORT_ERROR",
        "truncate" | "garbage" => "BAD_REPLY",
        other => panic!("no failure code for fault {other:?}"),
    }
}

// ---- 1. crash and resume, repeated --------------------------------------------------------

const CRASH_KEYS: usize = 600;
const CRASH_KILLS: usize = 10;

/// Ten SIGKILLs at random moments of one run (start-up, staging, auth, lookups, writes),
/// each followed by `run --resume`; the last resume runs to the end. Every key then has
/// exactly one row with its true status, the run completed under one id, and the work
/// redone is bounded by what was in flight or unwritten at each kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sigkills_at_random_moments_then_resume_leave_one_true_row_per_key() {
    let mut rng = StdRng::seed_from_u64(seed("crash and resume"));
    let (_dir, ids, csv) = helpers::keys_csv(CRASH_KEYS, "crash-resume");
    let csv_arg = csv.to_str().expect("utf-8 path").to_owned();
    // 20 ms per lookup: at a kill, lookups are on the wire and rows wait in the writer.
    let sim = slow_sim(Duration::from_millis(20), None).await;
    let db = TestDb::sqlite();
    let store = db.store().await;

    let mut progress = Vec::new();
    for round in 0..CRASH_KILLS {
        // Every round names the CSV: a kill before the run row existed leaves nothing to
        // resume, and `--resume` then starts the run afresh from it.
        let mut args = vec!["--csv", &csv_arg, "--rate", "50", "--concurrency", "8"];
        if round > 0 {
            args.push("--resume");
        }
        let rows_before = scalar_i64(&store, "SELECT COUNT(*) FROM billing_key_checks").await;
        let started = Instant::now();
        let mut child = spawn(run_cmd(&sim, &db.url, &args));
        if round % 2 == 0 {
            // Any moment: start-up, migrations, lease, auth, staging, lookups, writes.
            let moment = Duration::from_millis(rng.random_range(30..=1000));
            tokio::time::sleep(moment).await;
        } else {
            // Mid-run for sure: once this process has written rows, within a writer flush
            // or two of a batch.
            helpers::wait_for_rows(
                &store,
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
                stderr_of(&out)
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
        let rows = scalar_i64(&store, "SELECT COUNT(*) FROM billing_key_checks").await;
        progress.push((moment.as_millis(), rows));
    }
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

    let out = output_of(run_cmd(
        &sim,
        &db.url,
        &[
            "--resume",
            "--csv",
            &csv_arg,
            "--rate",
            "0",
            "--concurrency",
            "16",
        ],
    ))
    .await;
    assert_exit(&out, 0);
    let summary = summary_of(&out);
    assert_eq!(summary["state"], "completed");
    assert_eq!(summary["checked_now"], CRASH_KEYS as i64 - at_last_kill);

    let run = only_run(&store).await;
    assert_eq!(summary["run_id"], run.id, "one run across every resume");
    assert_eq!(run.state, RunState::Completed);
    assert_eq!(run.exit_code, Some(0));
    assert_eq!(run.keys_total, Some(CRASH_KEYS as i64));
    assert_eq!(run.counts.active + run.counts.gone, CRASH_KEYS as i64);
    let checks = assert_ground_truth(&store, run.id, &ids).await;
    assert!(checks.values().all(|c| c.attempts == 1));
    // A kill loses at most the lookups in flight and the writer's open batch (250 ms of
    // rows at 50 per second, 13; 30 leaves room for a slow machine); everything written
    // before a kill is never looked up again.
    let lookups = sim.stats().lookups;
    let redo_bound = (CRASH_KEYS + CRASH_KILLS * (8 + 30)) as u64;
    eprintln!("crash and resume: {lookups} lookups for {CRASH_KEYS} keys");
    assert!(
        lookups >= CRASH_KEYS as u64 && lookups <= redo_bound,
        "{lookups} lookups for {CRASH_KEYS} keys over {CRASH_KILLS} kills"
    );
    store.close().await;
    sim.shutdown().await;
}

/// The state a SIGKILL leaves when it lands between creating the run row and naming the
/// run in the lease (`pipeline::run_leased`: `create_or_join_run`, then `set_lease_run`):
/// the lease still says run 0 and has up to 60 s to live. `run --resume` must continue the
/// run, as after a kill at any other moment, instead of refusing with "run in progress".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_a_kill_between_run_creation_and_lease_naming() {
    let (_dir, ids, csv) = helpers::keys_csv(120, "lease-window");
    let sim = sim_with(KeyBook::derived(), Faults::none(), None).await;
    let db = TestDb::sqlite();
    let store = db.store().await;
    let mut child = spawn(run_cmd(
        &sim,
        &db.url,
        &["--csv", csv.to_str().unwrap(), "--rate", "40"],
    ));
    helpers::wait_for_rows(&store, 10, Duration::from_secs(15), POLL, &mut child).await;
    child.start_kill().expect("SIGKILL");
    let out = wait_output(child, Duration::from_secs(10)).await;
    assert_eq!(out.status.signal(), Some(9));
    // Exactly what the kill leaves when it lands before `set_lease_run`.
    sqlx::query("UPDATE run_leases SET run_id = 0")
        .execute(store.pool())
        .await
        .expect("rewind the lease");

    let out = output_of(run_cmd(&sim, &db.url, &["--resume", "--rate", "0"])).await;
    assert_exit(&out, 0);
    let run = only_run(&store).await;
    assert_eq!(run.state, RunState::Completed);
    assert_ground_truth(&store, run.id, &ids).await;
    store.close().await;
    sim.shutdown().await;
}

/// A kill after the lease was taken but before any run existed (during partner auth)
/// leaves a lease naming run 0 and nothing to resume: the next start, plain or `--resume`,
/// is not blocked by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_before_the_run_existed_blocks_nobody() {
    let (_dir, ids, csv) = helpers::keys_csv(30, "lease-no-run");
    let sim = sim_with(KeyBook::derived(), Faults::none(), None).await;
    let db = TestDb::sqlite();
    let store = db.store().await;
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
    .execute(store.pool())
    .await
    .expect("plant the lease");

    let csv_arg = csv.to_str().expect("utf-8 path");
    let out = output_of(run_cmd(
        &sim,
        &db.url,
        &["--resume", "--csv", csv_arg, "--rate", "0"],
    ))
    .await;
    assert_exit(&out, 0);
    let run = only_run(&store).await;
    assert_eq!(run.state, RunState::Completed);
    assert_ground_truth(&store, run.id, &ids).await;
    store.close().await;
    sim.shutdown().await;
}

// ---- 2. storm -----------------------------------------------------------------------------

const STORM_KEYS: usize = 300;

/// 20% HTTP 500, 5% dropped connections, 5% truncated bodies, 5-25 ms latency.
fn storm() -> Faults {
    Faults {
        latency: Duration::from_millis(5),
        jitter: Duration::from_millis(20),
        error_rate: 0.20,
        drop_rate: 0.05,
        truncate_rate: 0.05,
        ..Faults::none()
    }
}

/// Runs the storm with `extra` flags; returns the ids, the rows, the summary, the exit
/// code and the request log.
async fn storm_run(
    name: &str,
    sim_seed: u64,
    extra: &[&str],
) -> (
    Vec<String>,
    BTreeMap<String, CheckRecord>,
    Value,
    i32,
    Vec<Logged>,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("requests.jsonl");
    let ids = helpers::payer_ids(STORM_KEYS, name);
    let csv = helpers::write_csv(dir.path(), "keys.csv", &ids);
    let sim = helpers::spawn_sim(SimConfig {
        faults: storm(),
        request_log: Some(log.clone()),
        seed: sim_seed,
        ..SimConfig::default()
    })
    .await;
    let db = TestDb::sqlite();
    let mut args = vec![
        "--csv",
        csv.to_str().unwrap(),
        "--rate",
        "0",
        "--concurrency",
        "16",
    ];
    args.extend_from_slice(extra);
    let out = output_of(run_cmd(&sim, &db.url, &args)).await;
    let code = out.status.code().unwrap_or(-1);
    assert!(code == 0 || code == 2, "exit {code}: {}", stderr_of(&out));
    let summary = summary_of(&out);
    let stats = sim.stats();
    sim.shutdown().await;
    let store = db.store().await;
    let run = only_run(&store).await;
    assert_eq!(run.state, RunState::Completed);
    let checks = all_checks(&store, run.id).await;
    assert_eq!(checks.len(), STORM_KEYS, "one row per key");
    store.close().await;
    let log = read_log(&log);
    // The storm did blow: every fault kind hit some lookups.
    assert!(
        stats.injected_500 > 0 && stats.dropped > 0 && stats.truncated > 0,
        "{stats:?}"
    );
    (ids, checks, summary, code, log)
}

/// With the default retries (`--max-attempts 4`, and a second pass at the end of the run
/// for keys that exhausted them) every key ends `active` or `gone` as the ground truth
/// says, unless all eight of its attempts were faulted (0.3^8 ≈ 7e-5 per key); such a key
/// is `failed` with the reason of its last fault. The request log and the rows agree on
/// every key: attempts = lookups sent, the last lookup of a resolved key was clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_with_default_retries_misclassifies_nothing() {
    let (ids, checks, summary, code, log) = storm_run("storm-retry", 11, &[]).await;
    let by_key = lookups_by_key(&log);
    let mut failed = Vec::new();
    for id in &ids {
        let row = &checks[id];
        let sent = by_key.get(&key_hash(id)).cloned().unwrap_or_default();
        assert_eq!(
            row.attempts as usize,
            sent.len(),
            "{id}: attempts vs lookups logged: {sent:?}"
        );
        let (last, earlier) = sent.split_last().expect("every key was looked up");
        assert!(
            earlier.iter().all(|l| l.fault != "none"),
            "{id}: retried after a clean answer: {sent:?}"
        );
        if row.status == KeyStatus::Failed {
            assert_eq!(row.attempts, 8, "{id}: both passes used: {row:?}");
            assert_ne!(last.fault, "none", "{id}: {sent:?}");
            assert_eq!(
                row.result_code.as_deref(),
                Some(fault_code(&last.fault)),
                "{id}"
            );
            failed.push(id.clone());
        } else {
            assert_eq!(last.fault, "none", "{id}: {sent:?}");
            assert_eq!(row.status.as_str(), derived_status(id), "{id}: {row:?}");
        }
    }
    eprintln!(
        "storm with retries: {} lookups for {STORM_KEYS} keys, {} keys exhausted their attempts",
        by_key.values().map(Vec::len).sum::<usize>(),
        failed.len()
    );
    // 0.3^8 per key: 0.02 keys of 300 on average, two or more about once in 5,000 runs.
    assert!(failed.len() <= 1, "{} failed: {failed:?}", failed.len());
    assert_eq!(summary["failed"], failed.len());
    assert_eq!(code, if failed.is_empty() { 0 } else { 2 });
}

/// With `--max-attempts 1` every key the simulator faulted is `failed` with its reason
/// (HTTP_500, TRANSPORT_ERROR, BAD_REPLY) and every other key has its true status: one
/// lookup per key, no hidden retry anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_without_retries_fails_exactly_the_faulted_keys_with_their_reason() {
    let (ids, checks, summary, code, log) =
        storm_run("storm-once", 12, &["--max-attempts", "1"]).await;
    let by_key = lookups_by_key(&log);
    let mut faulted: BTreeMap<String, usize> = BTreeMap::new();
    for id in &ids {
        let row = &checks[id];
        let sent = by_key.get(&key_hash(id)).cloned().unwrap_or_default();
        assert_eq!(sent.len(), 1, "{id}: one lookup only: {sent:?}");
        assert_eq!(row.attempts, 1, "{id}");
        let fault = sent[0].fault.as_str();
        if fault == "none" {
            assert_eq!(row.status.as_str(), derived_status(id), "{id}: {row:?}");
        } else {
            assert_eq!(row.status, KeyStatus::Failed, "{id} got {fault}: {row:?}");
            assert_eq!(
                row.result_code.as_deref(),
                Some(fault_code(fault)),
                "{id} got {fault}: {row:?}"
            );
            *faulted.entry(fault.to_owned()).or_default() += 1;
        }
    }
    let total: usize = faulted.values().sum();
    eprintln!("storm without retries: faulted keys {faulted:?}");
    assert!(
        (30..=150).contains(&total),
        "{total} of {STORM_KEYS} faulted"
    );
    assert_eq!(summary["failed"], total);
    assert_eq!(code, 2);
}

// ---- 3. rate pushback ---------------------------------------------------------------------

/// The simulator admits 10 lookups per second and answers 429 with `Retry-After: 1` above
/// that; the job runs at 30 with 32 lookups in flight at most (most of them waiting for the
/// rate limiter). It slows down, finishes with exit 0, every key has its true status,
/// nothing failed, and after each 429 no new lookup reaches the simulator for the
/// `Retry-After` second (less the time a request already on its way needs to land): each
/// pushback costs a 429 or two, not a stream of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_pushback_is_honoured_and_nothing_is_marked_wrong() {
    const KEYS: usize = 60;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("requests.jsonl");
    let ids = helpers::payer_ids(KEYS, "pushback");
    let csv = helpers::write_csv(dir.path(), "keys.csv", &ids);
    let faults = Faults {
        rate_limit: Some(10),
        retry_after: Duration::from_secs(1),
        ..Faults::none()
    };
    let sim = sim_with(KeyBook::derived(), faults, Some(log.clone())).await;
    let db = TestDb::sqlite();
    let started = Instant::now();
    let out = output_of(csv_run(&sim, &db.url, &csv, "30", "32")).await;
    let took = started.elapsed();
    assert_exit(&out, 0);
    let summary = summary_of(&out);
    assert_eq!(summary["failed"], 0);
    let stats = sim.stats();
    sim.shutdown().await;
    assert!(stats.rate_limited > 0, "the limit was never hit: {stats:?}");
    // Six windows of ten: at least five seconds, whatever --rate says.
    assert!(took >= Duration::from_secs(5), "{took:?}");

    let store = db.store().await;
    let run = only_run(&store).await;
    let checks = assert_ground_truth(&store, run.id, &ids).await;
    let log = read_log(&log);
    let by_key = lookups_by_key(&log);
    for id in &ids {
        let sent = &by_key[&key_hash(id)];
        assert_eq!(checks[id].attempts as usize, sent.len(), "{id}: {sent:?}");
        assert_eq!(sent.last().map(|l| l.http_status), Some(Some(200)), "{id}");
    }
    // Honouring Retry-After: a 429 answered at t pauses every lookup until t + 1 s. What
    // arrives after it within GRACE was already on its way; nothing may arrive later in
    // that second.
    const GRACE_MS: u64 = 150;
    let lookups: Vec<&Logged> = log.iter().filter(|l| l.kind == "lookup").collect();
    let mut early = Vec::new();
    for pushed in lookups.iter().filter(|l| l.http_status == Some(429)) {
        for next in &lookups {
            let after = next.t_ms.saturating_sub(pushed.t_ms);
            if next.t_ms > pushed.t_ms && after > GRACE_MS && after < 1000 - 20 {
                early.push((pushed.t_ms, next.t_ms, next.http_status));
            }
        }
    }
    eprintln!(
        "pushback: {} lookups, {} answered 429, {took:?}",
        lookups.len(),
        stats.rate_limited
    );
    assert!(
        early.is_empty(),
        "{} lookups sent during a Retry-After pause; the first (429 at ms, lookup at ms, its \
         status): {:?}",
        early.len(),
        &early[..early.len().min(12)]
    );
    // Six pushbacks of one or two 429s each, not a stream of them.
    assert!(
        stats.rate_limited <= 20,
        "{} answers 429 for {KEYS} keys",
        stats.rate_limited
    );
    store.close().await;
}

// ---- 4. token expiry mid-run --------------------------------------------------------------

/// The simulator's tokens live 1 s; the client keeps its default `--token-ttl` (1800 s) and
/// learns of each expiry from `SPAY0001`. Each expiry leads to exactly one renewal: between
/// two auth calls there is always a lookup refused with an expired token, no token is
/// replaced before it expired, auth calls stay within 2 + run time / TTL, and every key
/// ends with its true status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_mid_run_renews_once_per_expiry() {
    const KEYS: usize = 200;
    const TTL_MS: u64 = 1000;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("requests.jsonl");
    let ids = helpers::payer_ids(KEYS, "expiry");
    let csv = helpers::write_csv(dir.path(), "keys.csv", &ids);
    let sim = helpers::spawn_sim(SimConfig {
        token_ttl: Duration::from_millis(TTL_MS),
        // Several lookups are in flight when a token lapses: they all see SPAY0001.
        faults: Faults {
            latency: Duration::from_millis(40),
            jitter: Duration::from_millis(40),
            ..Faults::none()
        },
        request_log: Some(log.clone()),
        seed: 4,
        ..SimConfig::default()
    })
    .await;
    let db = TestDb::sqlite();
    let started = Instant::now();
    let out = output_of(csv_run(&sim, &db.url, &csv, "40", "8")).await;
    let took = started.elapsed();
    assert_exit(&out, 0);
    let stats = sim.stats();
    sim.shutdown().await;
    let store = db.store().await;
    let run = only_run(&store).await;
    assert_ground_truth(&store, run.id, &ids).await;
    assert_eq!(run.counts.failed, 0);
    store.close().await;

    let run_secs = took.as_secs_f64();
    let bound = 2.0 + run_secs * 1000.0 / TTL_MS as f64;
    eprintln!("token expiry: {stats:?} in {run_secs:.1} s (auth bound {bound:.1})");
    assert!(
        stats.expired_token_lookups > 0,
        "no token expired: {stats:?}"
    );
    assert!(stats.auth_calls >= 3, "{stats:?} in {run_secs:.1} s");
    assert!(
        stats.auth_calls as f64 <= bound,
        "auth storm: {stats:?} in {run_secs:.1} s"
    );
    assert_eq!(stats.bad_token_lookups, 0, "{stats:?}");
    assert_eq!(stats.auth_failures, 0, "{stats:?}");

    let log = read_log(&log);
    let auths: Vec<u64> = log
        .iter()
        .filter(|l| l.kind == "auth")
        .map(|l| l.t_ms)
        .collect();
    assert_eq!(auths.len() as u64, stats.auth_calls);
    for pair in auths.windows(2) {
        let (before, after) = (pair[0], pair[1]);
        let triggers = log
            .iter()
            .filter(|l| l.expired_token && l.t_ms >= before && l.t_ms <= after)
            .count();
        assert!(
            triggers > 0,
            "auth at {after} ms renewed the token of {before} ms with no expired lookup between"
        );
        // Timestamps are whole milliseconds of arrival: allow for rounding.
        assert!(
            after + 2 >= before + TTL_MS,
            "the token of {before} ms was replaced at {after} ms, before it expired"
        );
    }
    assert!(
        log.iter()
            .filter(|l| l.expired_token)
            .all(|l| l.code.as_deref() == Some("SPAY0001"))
    );
    // Every refusal was followed by a successful retry of the same key.
    let by_key = lookups_by_key(&log);
    for (key, sent) in &by_key {
        let last = sent.last().expect("a lookup");
        assert!(
            !last.expired_token,
            "{key} ended on an expired token: {sent:?}"
        );
        assert!(sent.len() <= 2, "{key}: {sent:?}");
    }
}

// ---- 5. database trouble ------------------------------------------------------------------

/// PostgreSQL results database; three times mid-run the test kills every connection the
/// job has (`pg_terminate_backend`). The job retries its writes and completes (exit 0, one
/// row per key), or stops with exit 1 leaving a resumable run that `--resume` completes.
/// Either way no result is silently dropped: every key ends with one row and its true
/// status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_killed_mid_run_lose_no_result() {
    let Some(db) = TestDb::postgres().await else {
        eprintln!("skipping the database-trouble scenario: no PostgreSQL server");
        return;
    };
    const KEYS: usize = 400;
    let (_dir, ids, csv) = helpers::keys_csv(KEYS, "pg-trouble");
    let sim = sim_with(KeyBook::derived(), Faults::none(), None).await;
    let store = db.store().await;
    let name = db.url.rsplit('/').next().expect("database name").to_owned();
    let killer = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .expect("connect the killer");
    let terminate = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    );

    let mut child = spawn(csv_run(&sim, &db.url, &csv, "100", "8"));
    // Once the run is under way, kill every connection of the job every 15 ms for two
    // seconds: idle ones (the pool must notice) and busy ones (a write, a page, a commit
    // must fail and be retried, or stop the run).
    helpers::wait_for_rows(&store, 40, Duration::from_secs(20), POLL, &mut child).await;
    let mut killed = 0;
    let mut rounds = 0;
    let storm_started = Instant::now();
    while storm_started.elapsed() < Duration::from_secs(2) {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        killed += sqlx::query(sqlx::AssertSqlSafe(terminate.clone()))
            .fetch_all(&killer)
            .await
            .expect("terminate backends")
            .len();
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let out = wait_output(child, Duration::from_secs(60)).await;
    let code = out.status.code();
    eprintln!(
        "database trouble: killed {killed} backends in {rounds} rounds; the job exited \
         {code:?}\n{}",
        stderr_of(&out)
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(10)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(killed > 0, "no connection of the job was killed");
    let run = only_run(&store).await;
    match code {
        Some(0) => {
            let summary = summary_of(&out);
            assert_eq!(summary["state"], "completed");
            assert_eq!(run.state, RunState::Completed);
            assert_eq!(
                summary["active"].as_i64().unwrap_or(-1) + summary["gone"].as_i64().unwrap_or(-1),
                KEYS as i64
            );
        }
        Some(1) => {
            assert_ne!(run.state, RunState::Completed, "exit 1 but {run:?}");
            let out = output_of(run_cmd(&sim, &db.url, &["--resume", "--rate", "0"])).await;
            assert_exit(&out, 0);
            assert_eq!(summary_of(&out)["run_id"], run.id);
        }
        other => panic!("exit {other:?}: {}", stderr_of(&out)),
    }
    let run = store.run(run.id).await.expect("read").expect("the run");
    assert_eq!(run.state, RunState::Completed);
    assert_eq!(run.exit_code, Some(0));
    assert_eq!(run.keys_total, Some(KEYS as i64));
    assert_ground_truth(&store, run.id, &ids).await;
    killer.close().await;
    store.close().await;
    sim.shutdown().await;
}

/// PostgreSQL results database that goes away for good mid-run: the test forbids new
/// connections to it (`ALTER DATABASE ... ALLOW_CONNECTIONS false`) and kills the job's.
/// The writer's retries run out, and the job stops with exit 1 (no summary: the end of the
/// run cannot be recorded) leaving the run resumable. Once the database is back, `--resume`
/// completes it: every key one row with its true status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_gone_mid_run_stops_with_exit_1_and_resume_completes() {
    let Some(db) = TestDb::postgres().await else {
        eprintln!("skipping the database-outage scenario: no PostgreSQL server");
        return;
    };
    const KEYS: usize = 300;
    let (_dir, ids, csv) = helpers::keys_csv(KEYS, "pg-outage");
    let sim = sim_with(KeyBook::derived(), Faults::none(), None).await;
    let store = db.store().await;
    let (base, name) = db.url.rsplit_once('/').expect("database name");
    let name = name.to_owned();
    // From the server's own database: a database cannot lock itself out.
    let admin_url = format!("{base}/postgres");
    let killer = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&admin_url)
        .await
        .expect("connect the killer");
    let exec = |sql: String| {
        let killer = killer.clone();
        async move {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(&killer)
                .await
                .expect("admin statement")
                .len()
        }
    };

    let mut child = spawn(csv_run(&sim, &db.url, &csv, "50", "8"));
    helpers::wait_for_rows(&store, 40, Duration::from_secs(20), POLL, &mut child).await;
    exec(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).await;
    let killed = exec(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    ))
    .await;
    let down = Instant::now();
    let out = wait_output(child, Duration::from_secs(90)).await;
    let stopped_after = down.elapsed();
    exec(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).await;
    eprintln!(
        "database outage: killed {killed} backends; the job exited {:?} {stopped_after:?} \
         later\n{}",
        out.status.code(),
        stderr_of(&out)
    );
    assert_exit(&out, 1);
    assert!(out.stdout.is_empty(), "a summary for an unrecorded end");
    let stderr = stderr_of(&out);
    assert!(stderr.contains("resumable"), "{stderr}");

    let run = only_run(&store).await;
    assert_ne!(run.state, RunState::Completed, "{run:?}");
    let written = scalar_i64(&store, "SELECT COUNT(*) FROM billing_key_checks").await;
    assert!(written < KEYS as i64, "{written} rows");
    let out = output_of(run_cmd(&sim, &db.url, &["--resume", "--rate", "0"])).await;
    assert_exit(&out, 0);
    let summary = summary_of(&out);
    assert_eq!(summary["run_id"], run.id);
    assert_eq!(summary["checked_now"], KEYS as i64 - written);
    let run = store.run(run.id).await.expect("read").expect("the run");
    assert_eq!(run.state, RunState::Completed);
    assert_eq!(run.exit_code, Some(0));
    assert_ground_truth(&store, run.id, &ids).await;
    killer.close().await;
    store.close().await;
    sim.shutdown().await;
}

// ---- 6. bad input corpus ------------------------------------------------------------------

/// What a corpus file must give.
enum Expect {
    /// Exit 3 naming the file (and the line), nothing sent, no row.
    Malformed {
        line: Option<u64>,
        says: &'static str,
    },
    /// The run completes with this exit code, these keys looked up once each (their rows
    /// have the true status and this customer_ref), and these rejected rows (code, the
    /// line named in the message, customer_ref).
    Runs {
        exit: i32,
        keys: Vec<(String, Option<String>)>,
        rejected: Vec<(&'static str, u64, Option<String>)>,
        duplicates: i64,
    },
}

/// Runs one corpus file through the binary and checks the documented outcome.
async fn corpus_case(name: &str, bytes: &[u8], expect: Expect) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("write corpus file");
    let sim = sim_with(KeyBook::derived(), Faults::none(), None).await;
    let db = TestDb::sqlite();
    let out = output_of(run_cmd(
        &sim,
        &db.url,
        &["--csv", path.to_str().unwrap(), "--rate", "0"],
    ))
    .await;
    let stderr = stderr_of(&out);
    assert!(
        stderr.len() < 64 * 1024,
        "{name}: {} bytes on stderr (is the input echoed?)",
        stderr.len()
    );
    let store = db.store().await;
    match expect {
        Expect::Malformed { line, says } => {
            assert_exit(&out, 3);
            assert!(
                stderr.contains(&path.display().to_string()),
                "{name}: {stderr}"
            );
            if let Some(line) = line {
                assert!(stderr.contains(&format!("line {line}")), "{name}: {stderr}");
            }
            assert!(stderr.contains(says), "{name}: {stderr}");
            assert_eq!(sim.stats().lookups, 0, "{name}: a lookup was sent");
            assert_eq!(
                scalar_i64(&store, "SELECT COUNT(*) FROM billing_key_checks").await,
                0,
                "{name}"
            );
        }
        Expect::Runs {
            exit,
            keys,
            rejected,
            duplicates,
        } => {
            assert_exit(&out, exit);
            let summary = summary_of(&out);
            assert_eq!(summary["state"], "completed", "{name}");
            assert_eq!(summary["keys"], keys.len(), "{name}: {summary}");
            assert_eq!(summary["duplicates"], duplicates, "{name}: {summary}");
            assert_eq!(summary["rejected"], rejected.len(), "{name}: {summary}");
            assert_eq!(sim.stats().lookups, keys.len() as u64, "{name}: lookups");
            let run = only_run(&store).await;
            let checks = all_checks(&store, run.id).await;
            assert_eq!(checks.len(), keys.len() + rejected.len(), "{name}: rows");
            for (id, customer_ref) in &keys {
                let row = checks
                    .get(id)
                    .unwrap_or_else(|| panic!("{name}: no row for {id:?}"));
                assert_eq!(row.status.as_str(), derived_status(id), "{name}: {row:?}");
                assert_eq!(&row.customer_ref, customer_ref, "{name}: {id}");
            }
            let mut got: Vec<&CheckRecord> = checks
                .values()
                .filter(|c| c.status == KeyStatus::Rejected)
                .collect();
            got.sort_by_key(|c| {
                c.payer_id
                    .trim_start_matches('#')
                    .split(' ')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
            });
            assert_eq!(got.len(), rejected.len(), "{name}: {got:?}");
            for (row, (code, line, customer_ref)) in got.iter().zip(&rejected) {
                assert_eq!(row.result_code.as_deref(), Some(*code), "{name}: {row:?}");
                let msg = row.result_msg.clone().unwrap_or_default();
                let place = format!("{} line {line}", path.display());
                assert!(msg.contains(&place), "{name}: {msg:?} should name {place}");
                assert!(
                    msg.len() < 1000,
                    "{name}: a rejected value is echoed: {} bytes",
                    msg.len()
                );
                assert_eq!(&row.customer_ref, customer_ref, "{name}: {row:?}");
                assert_eq!(row.payer_id, format!("#{line} rejected"), "{name}");
            }
        }
    }
    store.close().await;
    sim.shutdown().await;
}

/// The bad-input corpus: BOM, CRLF and quoted fields read right; an empty file, a wrong
/// header and invalid UTF-8 stop with exit 3 naming file and line before any lookup; only
/// a header is a completed run of 0 keys; a 10 MB id and NUL bytes are `rejected` rows
/// naming file and line while the run goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_corpus_gives_the_documented_outcomes() {
    let ids = helpers::payer_ids(8, "corpus");
    let id = |i: usize| ids[i].clone();
    let some = |s: &str| Some(s.to_owned());

    // BOM, CRLF, quotes (an id quoted, commas and doubled quotes in references), columns
    // in another order with extra ones, a blank line, and no line end at the end.
    let quoted = format!(
        "\u{feff}name,\"Payer_ID\",customer_ref\r\n\
         \"Kim, M\",\"{}\",\"C-1, main\"\r\n\
         Lee,{},\"say \"\"hi\"\"\"\r\n\
         \r\n\
         Park,  {}  ,\r\n\
         \"Choi\",\"{}\",C-4",
        id(0),
        id(1),
        id(2),
        id(3)
    );
    corpus_case(
        "bom-crlf-quoted.csv",
        quoted.as_bytes(),
        Expect::Runs {
            exit: 0,
            keys: vec![
                (id(0), some("C-1, main")),
                (id(1), some("say \"hi\"")),
                (id(2), None),
                (id(3), some("C-4")),
            ],
            rejected: vec![],
            duplicates: 0,
        },
    )
    .await;

    corpus_case(
        "empty.csv",
        b"",
        Expect::Malformed {
            line: None,
            says: "empty",
        },
    )
    .await;

    corpus_case(
        "header-only.csv",
        b"payer_id,customer_ref\r\n",
        Expect::Runs {
            exit: 0,
            keys: vec![],
            rejected: vec![],
            duplicates: 0,
        },
    )
    .await;

    corpus_case(
        "wrong-header.csv",
        format!("billing_key,customer_ref\n{},C-1\n", id(0)).as_bytes(),
        Expect::Malformed {
            line: Some(1),
            says: "payer_id",
        },
    )
    .await;

    let latin1 = [
        format!("payer_id\n{}\n{}\n", id(0), id(1)).as_bytes(),
        b"caf\xe9-key-1234\n",
        id(2).as_bytes(),
        b"\n",
    ]
    .concat();
    corpus_case(
        "invalid-utf8.csv",
        &latin1,
        Expect::Malformed {
            line: Some(4),
            says: "UTF-8",
        },
    )
    .await;

    corpus_case(
        "invalid-utf8-header.csv",
        &[b"payer_id,r\xe9f\n".as_slice(), id(0).as_bytes(), b"\n"].concat(),
        Expect::Malformed {
            line: Some(1),
            says: "UTF-8",
        },
    )
    .await;

    // A 10 MB id on line 3: rejected (too long), the keys around it are checked.
    let mut huge = format!("payer_id,customer_ref\n{},C-1\n", id(0)).into_bytes();
    huge.extend(std::iter::repeat_n(b'A', 10 * 1024 * 1024));
    huge.extend_from_slice(format!(",C-BIG\n{},C-3\n", id(1)).as_bytes());
    corpus_case(
        "ten-megabyte-line.csv",
        &huge,
        Expect::Runs {
            exit: 2,
            keys: vec![(id(0), some("C-1")), (id(1), some("C-3"))],
            rejected: vec![("REJECTED_TOO_LONG", 3, some("C-BIG"))],
            duplicates: 0,
        },
    )
    .await;

    // NUL bytes inside an id, an id that is only a NUL, and a quoted id spanning two
    // lines: rejected (control characters), never sent.
    let nul = [
        format!("payer_id,customer_ref\n{},C-1\n", id(0)).as_bytes(),
        b"abcd\x00efgh1234,C-NUL\n",
        b"\x00,C-NUL2\n",
        b"\"two\nlines\",C-LF\n",
        format!("{},C-5\n", id(1)).as_bytes(),
    ]
    .concat();
    corpus_case(
        "nul-bytes.csv",
        &nul,
        Expect::Runs {
            exit: 2,
            keys: vec![(id(0), some("C-1")), (id(1), some("C-5"))],
            rejected: vec![
                ("REJECTED_CONTROL_CHAR", 3, some("C-NUL")),
                ("REJECTED_CONTROL_CHAR", 4, some("C-NUL2")),
                ("REJECTED_CONTROL_CHAR", 5, some("C-LF")),
            ],
            duplicates: 0,
        },
    )
    .await;
}

/// 100,000 rows of five keys, interleaved: each key is looked up once, 99,995 duplicates
/// are counted, and each key keeps the reference of its first row (as for a short file,
/// `batch::duplicates_once_and_bad_ids_rejected_unsent`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_duplicates_are_looked_up_once_keeping_the_first_row() {
    let ids = helpers::payer_ids(5, "duplicates");
    let id = |i: usize| ids[i].clone();
    let mut dups = String::from("payer_id,customer_ref\n");
    for i in 0..100_000usize {
        let k = (i * 7 + i / 5) % 5;
        dups.push_str(&format!("{},R-{i}\n", id(k)));
    }
    let first_ref = |k: usize| {
        (0..100_000usize)
            .find(|i| (i * 7 + i / 5) % 5 == k)
            .map(|i| format!("R-{i}"))
    };
    corpus_case(
        "duplicates.csv",
        dups.as_bytes(),
        Expect::Runs {
            exit: 0,
            keys: (0..5).map(|k| (id(k), first_ref(k))).collect(),
            rejected: vec![],
            duplicates: 99_995,
        },
    )
    .await;
}

/// A stray opening quote: on line 4 of a file of 40 keys, `"` opens a quoted field that
/// never closes, so the CSV reader takes the rest of the file as that one field. That is a
/// malformed file: the run must stop with exit 3 naming the file and line 4, with nothing
/// sent. (It goes on with exit 2: the 38 keys after the quote are never looked up, hidden
/// in one `rejected` row, `#3 rejected`, whose message names line 3.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unterminated_quote_stops_the_run_instead_of_swallowing_the_rest() {
    let ids = helpers::payer_ids(40, "stray-quote");
    let mut text = String::from("payer_id,customer_ref\n");
    for (i, id) in ids.iter().enumerate() {
        if i == 2 {
            text.push_str("\"KEY-WITH-STRAY-QUOTE,C-2\n");
        }
        text.push_str(&format!("{id},C-{i}\n"));
    }
    corpus_case(
        "stray-quote.csv",
        text.as_bytes(),
        Expect::Malformed {
            line: Some(4),
            says: "malformed CSV",
        },
    )
    .await;
}

// ---- 7. secrets ---------------------------------------------------------------------------

const SECRET_CUST_KEY: &str = "ck-FAULTS-Zq81-distinctive-custKey-7Xp";

/// Asserts that `bytes` (named `what`) holds no custKey, no token-shaped string and, unless
/// it is the results database, no full payer id.
fn assert_clean(what: &str, bytes: &[u8], ids: &[String], database: bool) {
    let text = String::from_utf8_lossy(bytes);
    assert!(!text.contains(SECRET_CUST_KEY), "{what}: the custKey shows");
    assert!(
        !text.contains(payple_reconcile::simulator::TEST_CUST_KEY),
        "{what}: the test custKey shows"
    );
    // At least 32 long: the payer ids of this test have no such run (they are `pk_` and
    // three groups of 8 hex digits).
    let shaped = helpers::token_shaped(&text, 32);
    assert!(shaped.is_empty(), "{what}: token-shaped strings {shaped:?}");
    if !database {
        for id in ids {
            assert!(!text.contains(id.as_str()), "{what}: full payer id {id}");
        }
    }
}

/// A run at `--log-format json` with `RUST_LOG=trace`, `--report` and `--metrics-file`, a
/// distinctive custKey, through retries (a 500 for every key's first attempt, random 500s,
/// drops and truncations), token renewals (1 s tokens), an unknown error code and a
/// mismatching echo: stdout, stderr and every file written hold neither the custKey, nor
/// any token-shaped string, nor any full payer id (the results database holds the ids by
/// design, but no secret either).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_any_output_or_file_through_retries_and_renewals() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).expect("out dir");
    let ids: Vec<String> = (0..30u64)
        .map(|i| {
            let h = stable_hash(format!("secret-{i}").as_bytes());
            format!(
                "pk_{:08x}_{:08x}_{:08x}",
                h >> 32,
                h & 0xffff_ffff,
                i * 7919
            )
        })
        .collect();
    let book_path = dir.path().join("keys.jsonl");
    let lines = [
        json!({"payer_id": ids[0], "kind": "error", "code": "ZZZZ9999", "msg": "unknown"}),
        json!({"payer_id": ids[1], "kind": "mismatch"}),
        json!({"payer_id": ids[2], "kind": "gone"}),
    ];
    std::fs::write(
        &book_path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .expect("key file");
    let sim = helpers::spawn_sim(SimConfig {
        partners: vec![Partner {
            cst_id: "shop_faults".to_owned(),
            cust_key: SECRET_CUST_KEY.to_owned(),
            referer: "https://shop.example.com".to_owned(),
        }],
        token_ttl: Duration::from_secs(1),
        keys: KeyBook::from_file(&book_path).expect("key file"),
        faults: Faults {
            fail_first: 1,
            error_rate: 0.1,
            drop_rate: 0.05,
            truncate_rate: 0.05,
            ..Faults::none()
        },
        seed: 77,
        ..SimConfig::default()
    })
    .await;
    let csv = helpers::write_csv(dir.path(), "keys.csv", &ids);
    let db_path = out_dir.join("results.db");
    let db_url = format!("sqlite://{}", db_path.display());
    let report = out_dir.join("report.csv");
    let metrics = out_dir.join("metrics.prom");
    let mut cmd = helpers::command(&sim.url());
    cmd.env("PAYPLE_CST_ID", "shop_faults")
        .env("PAYPLE_CUST_KEY", SECRET_CUST_KEY)
        .env("PAYPLE_REFERER", "https://shop.example.com")
        .env("RUST_LOG", "trace")
        .args(["--log-format", "json", "run", "--database-url", &db_url])
        .args([
            "--retry-base-ms",
            "10",
            "--rate",
            "10",
            "--concurrency",
            "4",
        ])
        .args(["--csv", csv.to_str().unwrap()])
        .args(["--report", report.to_str().unwrap()])
        .args(["--metrics-file", metrics.to_str().unwrap()]);
    let out = output_of(cmd).await;
    assert_exit(&out, 2);
    let stats = sim.stats();
    sim.shutdown().await;
    eprintln!(
        "secrets: {stats:?}; stderr {} bytes, files {:?}",
        out.stderr.len(),
        std::fs::read_dir(&out_dir)
            .expect("out dir")
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect::<Vec<_>>()
    );
    // The paths that could leak did run.
    assert!(stats.auth_calls >= 3, "tokens were renewed: {stats:?}");
    assert!(stats.expired_token_lookups >= 1, "{stats:?}");
    assert!(stats.injected_500 >= ids.len() as u64, "{stats:?}");
    assert!(out.stderr.len() > 10_000, "trace logs were written");
    let stderr = stderr_of(&out);
    for line in stderr.lines() {
        serde_json::from_str::<Value>(line)
            .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line:?}"));
    }
    summary_of(&out);

    assert_clean("stdout", &out.stdout, &ids, false);
    assert_clean("stderr", &out.stderr, &ids, false);
    let mut files = 0;
    for entry in std::fs::read_dir(&out_dir).expect("out dir") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read output file");
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert_clean(&name, &bytes, &ids, name.starts_with("results.db"));
        files += 1;
    }
    assert!(files >= 3, "report, metrics and database were written");
    let report_text = std::fs::read_to_string(&report).expect("report");
    assert_eq!(report_text.lines().count(), ids.len() + 1, "{report_text}");
}

// ---- 8. fuzzing ---------------------------------------------------------------------------

mod fuzz {
    //! Properties of the two parsers that read what the outside world sends: Payple's reply
    //! bodies (`wire::Fields::parse`, then `classify::classify_lookup`) and the CSV key
    //! reader (`csv_file::read_items`). No input makes them panic; a reply is only ever
    //! `active` when it says success + `0000` about the key asked; every key the reader
    //! yields is a valid `PayerId`, with lines that only go up.

    use std::time::Instant;

    use payple_reconcile::domain::PayerId;
    use payple_reconcile::payple::classify::{CodeBook, Verdict, classify_lookup};
    use payple_reconcile::payple::wire::Fields;
    use payple_reconcile::source::Item;
    use payple_reconcile::source::csv_file::read_items;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    use serde_json::{Map, Value, json};

    /// Cases per property; `FUZZ_CASES` raises it for a longer session.
    fn cases(default: u32) -> u32 {
        std::env::var("FUZZ_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    }

    /// Runs one property and prints how many cases ran and how long it took.
    fn check<S: Strategy>(
        name: &str,
        cases: u32,
        strategy: S,
        test: impl Fn(S::Value) -> Result<(), TestCaseError>,
    ) where
        S::Value: std::fmt::Debug,
    {
        let config = Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        let started = Instant::now();
        let result = runner.run(&strategy, test);
        let took = started.elapsed();
        eprintln!("fuzz {name}: {cases} cases in {took:.2?}");
        if let Err(e) = result {
            panic!("fuzz {name}: {e}");
        }
    }

    const ASKED: &str = "NS9qNTgzU2xRNHR2RmFBWWFBTWk5UT09";

    fn asked() -> PayerId {
        PayerId::parse(ASKED).expect("valid key")
    }

    /// What a verdict may be, given the reply: never `Active` without success, `0000`, the
    /// asked key echoed and a known pay type; never `Gone` without a gone code.
    fn check_verdict(fields: &Fields, verdict: &Verdict) -> Result<(), TestCaseError> {
        let book = CodeBook::default();
        match verdict {
            Verdict::Active { details, code, .. } => {
                prop_assert_eq!(
                    fields.get("PCD_PAY_RST").map(|s| s.to_ascii_lowercase()),
                    Some("success".to_owned())
                );
                prop_assert_eq!(code.as_str(), "0000");
                let echoed = fields.get("PCD_PAYER_ID");
                prop_assert_eq!(echoed.as_deref(), Some(ASKED));
                prop_assert!(details.pay_type.is_some());
            }
            Verdict::Gone { code, .. } => prop_assert!(book.gone.contains(code), "{code}"),
            Verdict::Reauth { code, .. } => prop_assert!(book.reauth.contains(code)),
            Verdict::Config { code, .. } => prop_assert!(book.config.contains(code)),
            Verdict::Transient { code, .. } => prop_assert!(book.transient.contains(code)),
            Verdict::Failed { .. } => {}
        }
        Ok(())
    }

    /// Parses a body and, if it is an object, classifies it and checks the verdict.
    fn parse_and_classify(body: &[u8]) -> Result<(), TestCaseError> {
        if let Ok(fields) = Fields::parse(body) {
            for name in ["PCD_PAY_RST", "PCD_PAY_CODE", "PCD_PAY_MSG", "PCD_PAYER_ID"] {
                let _ = fields.get(name);
            }
            let verdict = classify_lookup(&fields, &asked(), &CodeBook::default());
            check_verdict(&fields, &verdict)?;
        }
        Ok(())
    }

    /// Replies the simulator (and Payple) give: card, transfer with numeric codes and a
    /// BOM, gone, expired token, an auth error inside prose.
    fn valid_replies() -> Vec<Vec<u8>> {
        let card = json!({
            "PCD_PAY_RST": "success", "PCD_PAY_CODE": "0000", "PCD_PAY_MSG": "회원조회 성공",
            "PCD_PAY_WORK": "PUSERINFO", "PCD_PAY_TYPE": "card", "PCD_PAY_BANKACCTYPE": "개인",
            "PCD_PAYER_ID": ASKED, "PCD_PAYER_NAME": "홍길동", "PCD_PAYER_HP": "010-****-5678",
            "PCD_PAY_CARD": "0200", "PCD_PAY_CARDNAME": "BC카드",
            "PCD_PAY_CARDNUM": "1111-****-****-2222", "PCD_PAY_BANK": "", "PCD_PAY_ISTAX": "Y",
        });
        let transfer = json!({
            "PCD_PAY_RST": "success", "PCD_PAY_CODE": 0, "PCD_PAY_TYPE": "transfer",
            "PCD_PAYER_ID": ASKED, "PCD_PAY_BANK": 81, "PCD_PAY_BANKNAME": "KEB하나은행",
            "PCD_PAY_BANKNUM": "123-********-021", "PCD_PAYER_META": {"grade": 1, "tags": []},
        });
        let gone = json!({
            "PCD_PAY_RST": "error", "PCD_PAY_CODE": "SPAY0005",
            "PCD_PAY_MSG": "등록된 결제키가 없습니다.", "PCD_PAYER_ID": ASKED,
        });
        let expired = json!({
            "PCD_PAY_RST": "error", "PCD_PAY_CODE": "SPAY0001",
            "PCD_PAY_MSG": "가맹점 인증 시간이 만료되었습니다.",
        });
        let prose =
            json!({"PCD_PAY_RST": "error", "PCD_PAY_MSG": "[AUTH0004] CONNECT SERVER ERROR"});
        let mut with_bom = b"\xEF\xBB\xBF".to_vec();
        with_bom.extend(serde_json::to_vec(&transfer).unwrap());
        vec![
            serde_json::to_vec(&card).unwrap(),
            serde_json::to_vec_pretty(&card).unwrap(),
            with_bom,
            serde_json::to_vec(&gone).unwrap(),
            serde_json::to_vec(&expired).unwrap(),
            serde_json::to_vec(&prose).unwrap(),
        ]
    }

    /// One edit of a byte string.
    #[derive(Debug, Clone)]
    enum Edit {
        Flip(usize, u8),
        Insert(usize, Vec<u8>),
        Delete(usize, usize),
        Truncate(usize),
        Duplicate(usize, usize),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        let interesting = prop::sample::select(vec![
            b"\"".to_vec(),
            b"\\".to_vec(),
            b"\\u".to_vec(),
            b"\\ud800".to_vec(),
            b"{".to_vec(),
            b"}".to_vec(),
            b"[".to_vec(),
            b",".to_vec(),
            b":".to_vec(),
            b"\x00".to_vec(),
            b"\xff".to_vec(),
            b"\xEF\xBB\xBF".to_vec(),
            b"1e999999".to_vec(),
            b"-0".to_vec(),
            b"null".to_vec(),
            b"\"PCD_PAYER_ID\":\"x\",".to_vec(),
            b"\"PCD_PAY_CODE\":\"0000\",".to_vec(),
            "한".as_bytes().to_vec(),
        ]);
        prop_oneof![
            (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Flip(at, b)),
            (
                any::<usize>(),
                prop_oneof![interesting, prop::collection::vec(any::<u8>(), 1..8)]
            )
                .prop_map(|(at, bytes)| Edit::Insert(at, bytes)),
            (any::<usize>(), 1..16usize).prop_map(|(at, n)| Edit::Delete(at, n)),
            any::<usize>().prop_map(Edit::Truncate),
            (any::<usize>(), 1..64usize).prop_map(|(at, n)| Edit::Duplicate(at, n)),
        ]
    }

    fn apply(body: &mut Vec<u8>, edit: &Edit) {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
        match edit {
            Edit::Flip(i, b) if !body.is_empty() => {
                let i = i % body.len();
                body[i] = *b;
            }
            Edit::Flip(..) => {}
            Edit::Insert(i, bytes) => {
                let i = at(*i, body.len());
                body.splice(i..i, bytes.iter().copied());
            }
            Edit::Delete(i, n) => {
                let i = at(*i, body.len());
                let end = (i + n).min(body.len());
                body.drain(i..end);
            }
            Edit::Truncate(i) => {
                let i = at(*i, body.len());
                body.truncate(i);
            }
            Edit::Duplicate(i, n) => {
                let i = at(*i, body.len());
                let end = (i + n).min(body.len());
                let copy = body[i..end].to_vec();
                body.splice(end..end, copy);
            }
        }
    }

    /// A JSON value of the kinds replies hold, and a few they should not.
    fn any_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::from)),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                prop::collection::btree_map("[A-Z_]{1,6}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A value for a field: something that field plausibly holds, or anything.
    fn field_value(plausible: &'static [&'static str]) -> impl Strategy<Value = Option<Value>> {
        let texts: Vec<Value> = plausible.iter().map(|s| Value::from(*s)).collect();
        prop_oneof![
            3 => prop::sample::select(texts).prop_map(Some),
            1 => any_value().prop_map(Some),
            1 => Just(None),
        ]
    }

    /// A reply object built field by field from plausible and hostile values.
    fn reply_object() -> impl Strategy<Value = Value> {
        (
            field_value(&["success", "SUCCESS", " success ", "error", "", "fail"]),
            field_value(&[
                "0000", " 0000", "0", "SPAY0005", "SPCD0001", "SPAY0001", "ARSA0001", "AUTH0004",
                "AUTH0005", "ZZZZ9999", "", "00000",
            ]),
            field_value(&[
                "회원조회 성공",
                "[SPAY0005] gone",
                "AUTH0003 : 파트너 정보가 없습니다.",
                "XSPAY00051",
                "",
            ]),
            field_value(&[
                ASKED,
                " NS9qNTgzU2xRNHR2RmFBWWFBTWk5UT09 ",
                "someone-else",
                "",
            ]),
            field_value(&["card", "transfer", "CARD", "Transfer", "phone", ""]),
            field_value(&["0200", "200", "", "abc", "-1", "081"]),
            prop::collection::btree_map("PCD_[A-Z_]{1,10}", any_value(), 0..3),
        )
            .prop_map(|(rst, code, msg, payer, pay_type, card, extra)| {
                let mut map: Map<String, Value> = extra.into_iter().collect();
                let named = [
                    ("PCD_PAY_RST", rst),
                    ("PCD_PAY_CODE", code),
                    ("PCD_PAY_MSG", msg),
                    ("PCD_PAYER_ID", payer),
                    ("PCD_PAY_TYPE", pay_type),
                    ("PCD_PAY_CARD", card.clone()),
                    ("PCD_PAY_BANK", card),
                ];
                for (name, value) in named {
                    if let Some(value) = value {
                        map.insert(name.to_owned(), value);
                    }
                }
                Value::Object(map)
            })
    }

    #[test]
    fn reply_parser_never_panics_on_arbitrary_bytes() {
        check(
            "reply parser, arbitrary bytes",
            cases(5000),
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..256),
                // Mostly JSON punctuation and field names: gets past the first byte.
                prop::collection::vec(
                    prop::sample::select(
                        b"{}[]\":,0123456789.eE+-\\u tnrfalsPCD_AY \xEF\xBB\xBF\xff".to_vec()
                    ),
                    0..256
                ),
            ],
            |body| parse_and_classify(&body),
        );
    }

    #[test]
    fn reply_parser_never_panics_on_mutated_valid_replies() {
        let replies = valid_replies();
        check(
            "reply parser, mutated valid replies",
            cases(5000),
            (0..replies.len(), prop::collection::vec(edit(), 1..6)),
            |(which, edits)| {
                let mut body = replies[which].clone();
                for e in &edits {
                    apply(&mut body, e);
                }
                parse_and_classify(&body)
            },
        );
    }

    #[test]
    fn classifier_marks_active_only_success_about_the_asked_key() {
        check(
            "classifier, structured replies",
            cases(5000),
            (reply_object(), any::<bool>()),
            |(reply, bom)| {
                let mut body = if bom {
                    b"\xEF\xBB\xBF".to_vec()
                } else {
                    Vec::new()
                };
                body.extend(serde_json::to_vec(&reply).expect("encodes"));
                let fields = Fields::parse(&body)
                    .map_err(|e| TestCaseError::fail(format!("an object did not parse: {e}")))?;
                let verdict = classify_lookup(&fields, &asked(), &CodeBook::default());
                check_verdict(&fields, &verdict)
            },
        );
    }

    /// Reads `input` to the end; every key must be a valid `PayerId` (parsing it again
    /// gives itself) and lines only go up.
    fn read_and_check(input: &[u8]) -> Result<usize, TestCaseError> {
        let mut items = Vec::new();
        let _ = read_items(input, "fuzz.csv", |item| {
            items.push(item);
            true
        });
        let mut last_seq = 0;
        for item in &items {
            let seq = match item {
                Item::Key { seq, id, .. } => {
                    let again = PayerId::parse(id.expose());
                    prop_assert_eq!(again.as_ref().map(PayerId::expose), Ok(id.expose()));
                    *seq
                }
                Item::Rejected { seq, location, .. } => {
                    prop_assert!(location.starts_with("fuzz.csv line "), "{location}");
                    *seq
                }
            };
            {
                prop_assert!(
                    seq > last_seq,
                    "line {seq} after line {last_seq} in {:?}: {items:?}",
                    String::from_utf8_lossy(input)
                );
            }
            last_seq = seq;
        }
        Ok(items.len())
    }

    #[test]
    fn csv_reader_never_panics_on_arbitrary_bytes() {
        check(
            "csv reader, arbitrary bytes",
            cases(5000),
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..512),
                // A valid header, then arbitrary bytes.
                prop::collection::vec(any::<u8>(), 0..512).prop_map(|tail| {
                    let mut v = b"payer_id,customer_ref\n".to_vec();
                    v.extend(tail);
                    v
                }),
            ],
            |input| read_and_check(&input).map(drop),
        );
    }

    /// CSV-shaped text: a header with the key column somewhere, then rows of fields drawn
    /// from what breaks readers (quotes, separators, CR, LF, NUL, BOM, spaces, tabs,
    /// non-ASCII, long runs).
    fn csv_text() -> impl Strategy<Value = Vec<u8>> {
        let header = prop::sample::select(vec![
            "payer_id",
            "payer_id,customer_ref",
            "\u{feff}payer_id,customer_ref",
            "name,\"Payer_ID \",customer_ref,extra",
            "customer_ref,payer_id",
            "\"payer_id\"",
            "payer_id,payer_id",
            "id,ref",
            "",
        ]);
        let piece = prop::sample::select(vec![
            "a",
            "Z9",
            "\"",
            "\"\"",
            ",",
            "\r",
            "\n",
            "\r\n",
            "\0",
            " ",
            "\t",
            "\u{feff}",
            "한글",
            "\u{85}",
            "\u{2028}",
            "=1+1",
            "NS9qNTgzU2xRNHR2RmFBWWFBTWk5UT09",
        ]);
        let field = prop_oneof![
            8 => prop::collection::vec(piece, 0..6).prop_map(|p| p.concat()),
            1 => (1..300usize).prop_map(|n| "k".repeat(n)),
        ];
        let row = prop::collection::vec(field, 0..4);
        let line_end = prop::sample::select(vec!["\n", "\r\n", "\r"]);
        (
            header,
            prop::collection::vec((row, line_end.clone()), 0..12),
            line_end,
        )
            .prop_map(|(header, rows, end)| {
                let mut text = format!("{header}{end}");
                for (fields, end) in rows {
                    text.push_str(&fields.join(","));
                    text.push_str(end);
                }
                text.into_bytes()
            })
    }

    #[test]
    fn csv_reader_yields_only_valid_keys_from_csv_shaped_text() {
        check(
            "csv reader, CSV-shaped text",
            cases(5000),
            csv_text(),
            |input| read_and_check(&input).map(drop),
        );
    }

    /// One row of a well-formed file: an id (valid or not) and a reference, each written
    /// plain or quoted.
    #[derive(Debug, Clone)]
    struct Row {
        id: String,
        reference: String,
        quote_id: bool,
        quote_ref: bool,
        crlf: bool,
        blank_after: bool,
    }

    fn rows() -> impl Strategy<Value = Vec<Row>> {
        let id = prop_oneof![
            6 => "[A-Za-z0-9+/=_-]{1,48}",
            1 => " {0,2}[A-Za-z0-9]{1,10} {0,2}",
            1 => "[A-Za-z0-9]{0,4}[ \t\u{0}][A-Za-z0-9]{1,4}",
            1 => Just(String::new()),
            1 => "[A-Za-z0-9]{129,140}",
            1 => "[가-힣]{1,6}",
        ];
        let reference = prop_oneof![Just(String::new()), "[A-Za-z0-9 ,\"-]{0,12}",];
        prop::collection::vec(
            (
                id,
                reference,
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                prop::bool::weighted(0.1),
            )
                .prop_map(|(id, reference, quote_id, quote_ref, crlf, blank_after)| {
                    Row {
                        id,
                        reference,
                        quote_id,
                        quote_ref,
                        crlf,
                        blank_after,
                    }
                }),
            0..20,
        )
    }

    fn csv_field(value: &str, quote: bool) -> String {
        if quote || value.contains([',', '"']) || value.starts_with(' ') || value.ends_with(' ') {
            format!("\"{}\"", value.replace('"', "\"\""))
        } else {
            value.to_owned()
        }
    }

    /// What the reader must give for one row at `line`: `(line, Ok(id) | Err(()), ref)`.
    type Expected = (i64, Result<String, ()>, Option<String>);

    #[test]
    fn csv_reader_reads_back_what_a_csv_writer_wrote() {
        check(
            "csv reader, round trip of well-formed files",
            cases(3000),
            (rows(), any::<bool>(), any::<bool>()),
            |(rows, bom, last_newline)| {
                let mut text = String::from(if bom { "\u{feff}" } else { "" });
                text.push_str("payer_id,customer_ref\n");
                let mut line = 2i64;
                let mut expected: Vec<Expected> = Vec::new();
                for (i, row) in rows.iter().enumerate() {
                    text.push_str(&csv_field(&row.id, row.quote_id));
                    text.push(',');
                    text.push_str(&csv_field(&row.reference, row.quote_ref));
                    let last = i + 1 == rows.len();
                    if !last || last_newline {
                        text.push_str(if row.crlf { "\r\n" } else { "\n" });
                    }
                    let id = PayerId::parse(&row.id)
                        .map(|p| p.expose().to_owned())
                        .map_err(drop);
                    let reference = Some(row.reference.trim().to_owned()).filter(|r| !r.is_empty());
                    expected.push((line, id, reference));
                    line += 1;
                    if row.blank_after && !last {
                        text.push_str(if row.crlf { "\r\n" } else { "\n" });
                        line += 1;
                    }
                }
                let mut got: Vec<Expected> = Vec::new();
                let done = read_items(text.as_bytes(), "fuzz.csv", |item| {
                    got.push(match item {
                        Item::Key {
                            seq,
                            id,
                            customer_ref,
                        } => (seq, Ok(id.expose().to_owned()), customer_ref),
                        Item::Rejected {
                            seq, customer_ref, ..
                        } => (seq, Err(()), customer_ref),
                    });
                    true
                });
                prop_assert!(matches!(done, Ok(true)), "{done:?} for {text:?}");
                prop_assert_eq!(got, expected, "{:?}", text);
                Ok(())
            },
        );
    }
}
