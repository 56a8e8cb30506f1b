//! Token, concurrency and pace: one auth call per token life, `--concurrency` as the bound
//! on lookups in flight, `--rate` as the bound on lookups per second.

use std::time::Duration;

use crate::helpers::{Scenario, latency};

/// A run shorter than the token's life authenticates once, whatever the number of keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_auth_call_for_a_run_shorter_than_the_token_life() {
    let ran = Scenario::new()
        .keys(150, "one-auth")
        .args(&["--rate", "0", "--concurrency", "16"])
        .run()
        .await;
    ran.expect_exit(0);
    let stats = ran.sim.stats();
    assert_eq!(stats.auth_calls, 1, "{stats:?}");
    assert_eq!(stats.lookups, 150);
    assert_eq!(
        (stats.expired_token_lookups, stats.bad_token_lookups),
        (0, 0)
    );
    assert_eq!(ran.summary()["auth_calls"], 1);
    assert_eq!(ran.run_record().await.auth_calls, 1);
    ran.close().await;
}

/// With 20 ms per lookup, concurrency builds up to `--concurrency` and never beyond it,
/// as the simulator counts requests in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_in_flight_lookups_reach_but_never_exceed_concurrency() {
    for n in [1u64, 5] {
        let ran = Scenario::new()
            .keys(60, "concurrency")
            .faults(latency(20))
            .args(&["--rate", "0", "--concurrency", &n.to_string()])
            .run()
            .await;
        ran.expect_exit(0);
        let stats = ran.sim.stats();
        assert_eq!(stats.lookups, 60);
        assert!(
            stats.peak_concurrent_lookups <= n,
            "--concurrency {n}: {stats:?}"
        );
        assert_eq!(
            stats.peak_concurrent_lookups, n,
            "--concurrency {n} never reached: {stats:?}"
        );
        ran.close().await;
    }
}

/// `--rate 20` (burst 1): no sliding one-second window of the simulator's arrival times
/// holds more than 22 lookups (rate + burst, plus one slot for the scheduling jitter
/// between leaving the pacer and arriving at the simulator on a loaded machine; a real
/// burst would put about 40 there), and the run is paced, not bunched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_second_holds_more_than_rate_plus_burst_lookups() {
    let ran = Scenario::new()
        .keys(100, "rate")
        .faults(latency(5))
        .args(&["--rate", "20", "--concurrency", "8"])
        .run()
        .await;
    ran.expect_exit(0);
    let mut times = ran.sim.lookup_times();
    assert_eq!(times.len(), 100);
    times.sort();
    let second = Duration::from_secs(1);
    let mut worst = (0usize, Duration::ZERO);
    for (i, start) in times.iter().enumerate() {
        let n = times[i..]
            .iter()
            .take_while(|t| **t < *start + second)
            .count();
        if n > worst.0 {
            worst = (n, *start);
        }
    }
    assert!(
        worst.0 <= 22,
        "{} lookups in the second from {:?}",
        worst.0,
        worst.1
    );
    let span = times[99] - times[0];
    // 99 gaps of at least 50 ms (minus scheduling jitter).
    assert!(
        span >= Duration::from_millis(4700),
        "100 lookups in {span:?}"
    );
    ran.close().await;
}
