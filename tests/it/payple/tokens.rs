//! Token renewal before the token lapses, and single-flight renewal under concurrency.

use std::time::{Duration, Instant};

use payple_reconcile::domain::mask_payer_id;
use payple_reconcile::payple::ClientConfig;
use payple_reconcile::simulator::{Faults, KeyBook, SimConfig, derive_key};

use super::{
    assert_outcomes, check_all, check_bounded, client, code, config, expected, plain_ids, rate,
    run, stderr,
};
use crate::helpers::{self, json_lines, payer_ids, spawn_sim};

// ---- Token renewal --------------------------------------------------------------------

/// 20 keys at 4 per second with `in_flight` lookups at most: about 5 s under a 2 s token.
async fn renewal_run(in_flight: usize) {
    let sim = spawn_sim(SimConfig {
        token_ttl: Duration::from_secs(2),
        ..SimConfig::default()
    })
    .await;
    let client = client(ClientConfig {
        token_ttl: Duration::from_secs(2),
        rate: rate(4),
        ..config(&sim)
    });
    let ids = plain_ids(20, "renewal");
    let started = Instant::now();
    let outcomes = check_bounded(&client, &ids, in_flight).await;
    let elapsed = started.elapsed();
    let stats = sim.stats();
    assert_eq!(
        stats.expired_token_lookups, 0,
        "lookups sent with a lapsed token: {stats:?}"
    );
    assert_eq!(stats.bad_token_lookups, 0, "{stats:?}");
    assert!(stats.auth_calls >= 2, "token renewed: {stats:?}");
    assert_eq!(stats.auth_calls, client.auth_calls());
    assert_eq!(stats.lookups, 20);
    assert!(elapsed >= Duration::from_millis(4500), "{elapsed:?}");
    assert_outcomes(&KeyBook::derived(), &ids, &outcomes, 1);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_second_token_is_renewed_before_it_lapses() {
    renewal_run(2).await;
}

/// Like the batch (8 lookups in flight): a lookup waiting for the rate limiter must not
/// go out with a token that lapsed while it waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_taken_before_waiting_for_the_rate_limiter_is_not_sent_stale() {
    renewal_run(8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_renews_a_two_second_token() {
    let sim = spawn_sim(SimConfig {
        token_ttl: Duration::from_secs(2),
        ..SimConfig::default()
    })
    .await;
    let ids = payer_ids(20, "renewal-bin");
    let mut cmd = helpers::command(&sim.url());
    cmd.args([
        "lookup",
        "--token-ttl",
        "2",
        "--rate",
        "4",
        "--concurrency",
        "2",
    ])
    .args(["--retry-base-ms", "10"])
    .args(&ids);
    let output = run(cmd).await;
    assert_eq!(code(&output), Some(0), "stderr: {}", stderr(&output));
    let lines = json_lines(&output);
    assert_eq!(lines.len(), ids.len());
    for (id, line) in ids.iter().zip(&lines) {
        assert_eq!(line["payer_id"], mask_payer_id(id));
        assert_eq!(line["attempts"], 1, "{line}");
    }
    let stats = sim.stats();
    assert!(stats.auth_calls >= 2, "{stats:?}");
    assert_eq!(stats.expired_token_lookups, 0, "{stats:?}");
    assert_eq!(stats.bad_token_lookups, 0, "{stats:?}");
    sim.shutdown().await;
}

// ---- Single-flight renewal ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_checks_share_one_auth() {
    let sim = spawn_sim(SimConfig::default()).await;
    let client = client(config(&sim));
    let ids = plain_ids(64, "single-flight");
    let outcomes = check_all(&client, &ids).await;
    assert_outcomes(&KeyBook::derived(), &ids, &outcomes, 1);
    assert_eq!(sim.stats().auth_calls, 1, "{:?}", sim.stats());
    assert_eq!(client.auth_calls(), 1);
    assert_eq!(sim.stats().lookups, 64);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refused_with_spay0001_is_renewed_once_for_sixty_four_checks() {
    // The simulator's tokens last 1 s; the client believes in 30 minutes, so it learns of
    // each expiry only from SPAY0001. Jitter spreads the refusals out, so that some arrive
    // after the token was already renewed: they must not throw the new token away.
    let sim = spawn_sim(SimConfig {
        token_ttl: Duration::from_secs(1),
        faults: Faults {
            jitter: Duration::from_millis(300),
            ..Faults::none()
        },
        ..SimConfig::default()
    })
    .await;
    let client = client(config(&sim));
    let ids = plain_ids(64 * 3, "spay0001-wave");
    let mut expired_before = 0;
    for (wave, chunk) in ids.chunks(64).enumerate() {
        if wave > 0 {
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        let outcomes = check_all(&client, chunk).await;
        for (id, outcome) in chunk.iter().zip(&outcomes) {
            // A key refused with the lapsed token took one more attempt, no more.
            assert!(
                (1..=2).contains(&outcome.attempts),
                "wave {wave}: {outcome:?}"
            );
            let want = expected(&derive_key(id), outcome.attempts);
            assert_eq!(outcome, &want, "wave {wave}, key {}", mask_payer_id(id));
        }
        let stats = sim.stats();
        let wave = wave as u64;
        assert_eq!(stats.auth_calls, wave + 1, "wave {wave}: {stats:?}");
        assert_eq!(client.auth_calls(), wave + 1);
        assert_eq!(stats.bad_token_lookups, 0);
        let retried = outcomes.iter().filter(|o| o.attempts == 2).count() as u64;
        assert_eq!(
            stats.expired_token_lookups - expired_before,
            retried,
            "wave {wave}: every SPAY0001 cost exactly one retry"
        );
        if wave > 0 {
            assert!(retried > 0, "wave {wave} saw the lapsed token");
        }
        expired_before = stats.expired_token_lookups;
    }
    sim.shutdown().await;
}
