//! The lookup pace: governor's GCRA (burst 1) decides when the next lookup may start, and
//! a pacer thread waits for that moment precisely and hands out one permit per cell.
//!
//! # Why a thread
//! With burst 1, every microsecond a waiter wakes late is lost for good, and async timers
//! wake late (a loaded runtime, millisecond timer wheels): at 1,000 lookups per second that
//! cost 14% of the configured rate. The thread sleeps to just before the cell is due and
//! spins the rest, so the schedule holds; lookups queue for permits in order (a fair
//! mutex), which governor's own waiters do not.

use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{Mutex, mpsc};

/// How long before a cell is due the thread stops sleeping and spins.
const SPIN: Duration = Duration::from_micros(200);

/// Hands out lookup permits at the quota's pace.
///
/// Each permit carries the moment its cell was taken. A permit nobody wanted for longer
/// than one interval (the lookups were paused by a 429, or idle) is thrown away: otherwise
/// the waiting permit, the one the thread holds and a fresh cell would leave together
/// after the pause, a burst of three where the quota allows one.
#[derive(Debug)]
pub struct Pacer {
    permits: Mutex<mpsc::Receiver<Instant>>,
    interval: Duration,
}

impl Pacer {
    /// Starts the pacer thread; it ends when the pacer is dropped.
    pub fn start(quota: Quota) -> std::io::Result<Self> {
        // One permit may wait ready: a lookup arriving just after a cell uses it at once.
        let (tx, rx) = mpsc::channel(1);
        let interval = quota.replenish_interval();
        let limiter = Arc::new(RateLimiter::direct(quota));
        std::thread::Builder::new()
            .name("payple-pacer".into())
            .spawn(move || pace(&limiter, &tx))?;
        Ok(Self {
            permits: Mutex::new(rx),
            interval,
        })
    }

    /// Waits for the next permit taken less than one interval ago.
    pub async fn ready(&self) {
        let mut permits = self.permits.lock().await;
        // `None` only if the thread died; then pacing is gone and lookups go on unpaced
        // rather than hanging.
        while let Some(taken) = permits.recv().await {
            if taken.elapsed() <= self.interval {
                return;
            }
        }
    }
}

fn pace(limiter: &DefaultDirectRateLimiter, tx: &mpsc::Sender<Instant>) {
    let clock = DefaultClock::default();
    loop {
        match limiter.check() {
            Ok(()) => {
                if tx.blocking_send(Instant::now()).is_err() {
                    return;
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(clock.now());
                let due = Instant::now() + wait;
                if wait > SPIN {
                    std::thread::sleep(wait - SPIN);
                }
                while Instant::now() < due {
                    std::hint::spin_loop();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    #[tokio::test]
    async fn permits_come_evenly_at_the_quota() {
        let quota = Quota::per_second(NonZeroU32::new(200).unwrap()).allow_burst(NonZeroU32::MIN);
        let pacer = Pacer::start(quota).unwrap();
        let started = Instant::now();
        for _ in 0..101 {
            pacer.ready().await;
        }
        let elapsed = started.elapsed();
        // 100 intervals of 5 ms after the first permit (which is immediate).
        assert!(elapsed >= Duration::from_millis(495), "{elapsed:?}");
    }

    #[tokio::test]
    async fn after_a_pause_the_burst_is_still_one() {
        let quota = Quota::per_second(NonZeroU32::new(20).unwrap()).allow_burst(NonZeroU32::MIN);
        let pacer = Pacer::start(quota).unwrap();
        pacer.ready().await;
        // A 429 pause: nobody asks for a permit for six intervals.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        for _ in 0..3 {
            pacer.ready().await;
        }
        let elapsed = started.elapsed();
        // The first at once, then one interval (50 ms) before each of the next two.
        assert!(elapsed >= Duration::from_millis(95), "{elapsed:?}");
    }
}
