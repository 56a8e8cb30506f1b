//! Retries: first-N failures, HTTP 429 with `Retry-After`, broken replies.

use std::time::{Duration, Instant};

use payple_reconcile::domain::{KeyDetails, KeyStatus, mask_payer_id};
use payple_reconcile::payple::ClientConfig;
use payple_reconcile::simulator::{Faults, KeyBook, SimConfig, derive_key};
use serde_json::Value;

use super::{MAX_ATTEMPTS, assert_outcomes, check_all, client, config, expected, plain_ids};
use crate::helpers::{payer_ids, spawn_sim};

// ---- First-N failures -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_failures_of_each_key_are_recovered_by_retries() {
    let sim = spawn_sim(SimConfig {
        faults: Faults {
            fail_first: 2,
            ..Faults::none()
        },
        ..SimConfig::default()
    })
    .await;
    let client = client(ClientConfig {
        max_attempts: 4,
        ..config(&sim)
    });
    let ids = plain_ids(20, "fail-first");
    let outcomes = check_all(&client, &ids).await;
    assert_outcomes(&KeyBook::derived(), &ids, &outcomes, 3);
    let stats = sim.stats();
    assert_eq!(stats.injected_500, 40, "{stats:?}");
    assert_eq!(stats.lookups, 60, "{stats:?}");
    assert_eq!(stats.auth_calls, 1, "a 500 is not a token problem");
    sim.shutdown().await;
}

// ---- 429 with Retry-After -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_429_pauses_every_lookup_for_retry_after() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("requests.jsonl");
    let sim = spawn_sim(SimConfig {
        faults: Faults {
            rate_limit: Some(5),
            retry_after: Duration::from_secs(1),
            ..Faults::none()
        },
        request_log: Some(log_path.clone()),
        ..SimConfig::default()
    })
    .await;
    // One attempt per key: a 429 is about our pace, not the key, and spends none of it.
    let client = client(ClientConfig {
        max_attempts: 1,
        ..config(&sim)
    });
    let ids = plain_ids(20, "rate-limited");
    let started = Instant::now();
    let outcomes = check_all(&client, &ids).await;
    let elapsed = started.elapsed();
    for (id, outcome) in ids.iter().zip(&outcomes) {
        let want = expected(&derive_key(id), outcome.attempts);
        assert_eq!(outcome, &want, "key {}", mask_payer_id(id));
    }
    let stats = sim.stats();
    assert!(stats.rate_limited > 0, "{stats:?}");
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    assert!(outcomes.iter().any(|o| o.attempts > 1), "{outcomes:?}");
    let attempts: u64 = outcomes.iter().map(|o| u64::from(o.attempts)).sum();
    assert_eq!(attempts, stats.lookups, "every attempt is one lookup");
    assert_eq!(stats.lookups, ids.len() as u64 + stats.rate_limited);

    // After the first 429 nothing arrives for about the Retry-After second, except what
    // was already on its way.
    let mut times = sim.lookup_times();
    times.sort();
    let widest = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .expect("several lookups");
    assert!(widest >= Duration::from_millis(900), "{times:?}");
    sim.shutdown().await;
    let log = std::fs::read_to_string(&log_path).expect("request log");
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .filter(|l: &Value| l["kind"] == "lookup")
        .collect();
    let at = |l: &Value| l["t_ms"].as_u64().expect("t_ms");
    let refused: Vec<u64> = lines
        .iter()
        .filter(|l| l["http_status"] == 429)
        .map(at)
        .collect();
    assert!(!refused.is_empty());
    for t in &refused {
        let early: Vec<u64> = lines
            .iter()
            .map(at)
            .filter(|u| *u > t + 250 && *u < t + 900)
            .collect();
        assert!(
            early.is_empty(),
            "lookups at {early:?} ms, during the pause after the 429 at {t} ms"
        );
    }
}

// ---- Broken replies -------------------------------------------------------------------

/// Every lookup broken the same way: retried `MAX_ATTEMPTS` times, then failed with `code`.
async fn always_broken(faults: Faults, code: &str) {
    let sim = spawn_sim(SimConfig {
        faults,
        seed: 7,
        ..SimConfig::default()
    })
    .await;
    let client = client(config(&sim));
    let ids = payer_ids(5, code);
    let outcomes = check_all(&client, &ids).await;
    for (id, outcome) in ids.iter().zip(&outcomes) {
        assert_eq!(outcome.status, KeyStatus::Failed, "{outcome:?}");
        assert_eq!(outcome.result_code.as_deref(), Some(code), "{outcome:?}");
        assert_eq!(outcome.attempts, MAX_ATTEMPTS, "{outcome:?}");
        assert_eq!(outcome.details, KeyDetails::default());
        let msg = outcome.result_msg.as_deref().unwrap_or_default();
        assert!(!msg.is_empty(), "the last reason is kept");
        assert!(!msg.contains(id.as_str()), "{msg}");
    }
    let stats = sim.stats();
    assert_eq!(stats.lookups, 5 * u64::from(MAX_ATTEMPTS), "{stats:?}");
    assert_eq!(stats.auth_calls, 1, "{stats:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_bodies_are_retried_then_failed_as_bad_reply() {
    always_broken(
        Faults {
            truncate_rate: 1.0,
            ..Faults::none()
        },
        "BAD_REPLY",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_garbage_is_retried_then_failed_as_bad_reply() {
    always_broken(
        Faults {
            garbage_rate: 1.0,
            ..Faults::none()
        },
        "BAD_REPLY",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_are_retried_then_failed_as_transport_errors() {
    always_broken(
        Faults {
            drop_rate: 1.0,
            ..Faults::none()
        },
        "TRANSPORT_ERROR",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_500s_are_retried_then_failed() {
    always_broken(
        Faults {
            error_rate: 1.0,
            ..Faults::none()
        },
        "HTTP_500",
    )
    .await;
}
