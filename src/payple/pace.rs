//! The lookup pace: a pacer thread hands out one permit per cell of the quota (burst 1),
//! on a fixed schedule, and lookups queue for permits in order.
//!
//! # Why a thread, and why a schedule
//! With burst 1, every microsecond a waiter wakes late is lost for good if the next cell is
//! counted from the late wake-up (governor's `until_ready`, a GCRA, does that), and async
//! timers wake late (a loaded runtime, millisecond timer wheels): at 1,000 lookups per
//! second that cost 14% of the configured rate. An earlier version slept to 200 µs before
//! each cell and spun the rest, which held the rate but burnt about a fifth of a core at
//! 1,000/s. Now the thread keeps a schedule instead: cell `k` is due at `start + k ×
//! interval`, it sleeps until then (late by the kernel's timer slack, some tens of µs),
//! and a late cell does not push the next one back, so the long-run rate holds without
//! spinning. When nobody wants a permit (the send blocks), the schedule restarts from the
//! moment one is taken: idle time never becomes a burst.

use std::time::{Duration, Instant};

use governor::Quota;
use tokio::sync::{Mutex, mpsc};

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
        std::thread::Builder::new()
            .name("payple-pacer".into())
            .spawn(move || pace(interval, &tx))?;
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

/// When the cell after one due at `due` and handed out at `sent` is due: one interval
/// later on the schedule, unless the schedule is more than an interval behind (nobody
/// wanted permits, or the thread was starved); then one interval after `sent`.
fn next_due(due: Instant, sent: Instant, interval: Duration) -> Instant {
    let next = due + interval;
    if next + interval < sent {
        sent + interval
    } else {
        next
    }
}

fn pace(interval: Duration, tx: &mpsc::Sender<Instant>) {
    let mut due = Instant::now();
    loop {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if tx.blocking_send(Instant::now()).is_err() {
            return;
        }
        due = next_due(due, Instant::now(), interval);
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

    #[test]
    fn late_cells_keep_the_schedule_and_idle_time_is_no_burst() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        // Handed out 0.3 ms late: the next cell stays on the schedule.
        assert_eq!(next_due(t, t + ms(1) / 3, ms(1)), t + ms(1));
        // Up to a whole interval behind: still caught up.
        assert_eq!(next_due(t, t + ms(2), ms(1)), t + ms(1));
        // Nobody took permits for a second: restart one interval after the hand-out.
        assert_eq!(next_due(t, t + ms(1000), ms(1)), t + ms(1001));
    }
}
