//! Storms of faults: HTTP 500s, dropped connections and truncated bodies, with and without
//! retries, compared key by key with the simulator's request log.

use std::collections::BTreeMap;
use std::time::Duration;

use payple_reconcile::domain::KeyStatus;
use payple_reconcile::simulator::{Faults, SimConfig};
use payple_reconcile::store::{CheckRecord, RunState};
use serde_json::Value;

use super::{Logged, fault_code, lookups_by_key, read_log};
use crate::helpers::{Scenario, derived_status, key_hash};

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
    let ran = Scenario::new()
        .keys(STORM_KEYS, name)
        .sim(SimConfig {
            faults: storm(),
            seed: sim_seed,
            ..SimConfig::default()
        })
        .request_log()
        .args(&["--rate", "0", "--concurrency", "16"])
        .args(extra)
        .run()
        .await;
    let code = ran.out.status.code().unwrap_or(-1);
    assert!(code == 0 || code == 2, "exit {code}: {}", ran.stderr());
    let summary = ran.summary();
    let stats = ran.sim.stats();
    let run = ran.run_record().await;
    assert_eq!(run.state, RunState::Completed);
    let checks = ran.checks().await;
    assert_eq!(checks.len(), STORM_KEYS, "one row per key");
    let ids = ran.ids.clone();
    let left = ran.close().await;
    let log = read_log(left.log());
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
