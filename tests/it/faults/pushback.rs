//! Rate pushback: HTTP 429 with `Retry-After` pauses every lookup, and nothing is marked
//! wrong for it.

use std::time::Duration;

use payple_reconcile::simulator::Faults;

use super::{Logged, lookups_by_key, read_log};
use crate::helpers::{Scenario, assert_ground_truth, key_hash};

/// The simulator admits 10 lookups per second and answers 429 with `Retry-After: 1` above
/// that; the job runs at 30 with 32 lookups in flight at most (most of them waiting for the
/// rate limiter). It slows down, finishes with exit 0, every key has its true status,
/// nothing failed, and after each 429 no new lookup reaches the simulator for the
/// `Retry-After` second (less the time a request already on its way needs to land): each
/// pushback costs a 429 or two, not a stream of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_pushback_is_honoured_and_nothing_is_marked_wrong() {
    const KEYS: usize = 60;
    let faults = Faults {
        rate_limit: Some(10),
        retry_after: Duration::from_secs(1),
        ..Faults::none()
    };
    let ran = Scenario::new()
        .keys(KEYS, "pushback")
        .faults(faults)
        .request_log()
        .args(&["--rate", "30", "--concurrency", "32"])
        .run()
        .await;
    let took = ran.took;
    ran.expect_exit(0);
    let summary = ran.summary();
    assert_eq!(summary["failed"], 0);
    let stats = ran.sim.stats();
    assert!(stats.rate_limited > 0, "the limit was never hit: {stats:?}");
    // Six windows of ten: at least five seconds, whatever --rate says.
    assert!(took >= Duration::from_secs(5), "{took:?}");

    let run = ran.run_record().await;
    let ids = ran.ids.clone();
    let checks = assert_ground_truth(&ran.store, run.id, &ids).await;
    let left = ran.close().await;
    let log = read_log(left.log());
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
}
