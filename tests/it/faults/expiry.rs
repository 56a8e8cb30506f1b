//! Token expiry mid-run: each expiry leads to exactly one renewal.

use std::time::Duration;

use payple_reconcile::simulator::{Faults, SimConfig};

use super::{lookups_by_key, read_log};
use crate::helpers::{Scenario, assert_ground_truth};

/// The simulator's tokens live 1 s; the client keeps its default `--token-ttl` (1800 s) and
/// learns of each expiry from `SPAY0001`. Each expiry leads to exactly one renewal: between
/// two auth calls there is always a lookup refused with an expired token, no token is
/// replaced before it expired, auth calls stay within 2 + run time / TTL, and every key
/// ends with its true status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_mid_run_renews_once_per_expiry() {
    const KEYS: usize = 200;
    const TTL_MS: u64 = 1000;
    let ran = Scenario::new()
        .keys(KEYS, "expiry")
        .sim(SimConfig {
            token_ttl: Duration::from_millis(TTL_MS),
            // Several lookups are in flight when a token lapses: they all see SPAY0001.
            faults: Faults {
                latency: Duration::from_millis(40),
                jitter: Duration::from_millis(40),
                ..Faults::none()
            },
            seed: 4,
            ..SimConfig::default()
        })
        .request_log()
        .args(&["--rate", "40", "--concurrency", "8"])
        .run()
        .await;
    let took = ran.took;
    ran.expect_exit(0);
    let stats = ran.sim.stats();
    let run = ran.run_record().await;
    assert_ground_truth(&ran.store, run.id, &ran.ids).await;
    assert_eq!(run.counts.failed, 0);
    let left = ran.close().await;

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

    let log = read_log(left.log());
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
