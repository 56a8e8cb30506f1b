//! Progress of a run: a bar with counts per status on a terminal, and a log line every
//! `--progress-interval` everywhere (a Kubernetes pod has no terminal).

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use tracing::Span;
use tracing_indicatif::span_ext::IndicatifSpanExt;
use tracing_indicatif::style::ProgressStyle;

use crate::domain::KeyStatus;
use crate::store::StatusCounts;

/// Counters shared between the lookup loop and the reporter.
#[derive(Debug, Default)]
struct Counters {
    active: AtomicI64,
    gone: AtomicI64,
    failed: AtomicI64,
    rejected: AtomicI64,
}

impl Counters {
    fn slot(&self, status: KeyStatus) -> &AtomicI64 {
        match status {
            KeyStatus::Active => &self.active,
            KeyStatus::Gone => &self.gone,
            KeyStatus::Failed => &self.failed,
            KeyStatus::Rejected => &self.rejected,
        }
    }

    fn snapshot(&self) -> StatusCounts {
        StatusCounts {
            active: self.active.load(Ordering::Relaxed),
            gone: self.gone.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }
}

/// The progress of one run. Dropping it stops the periodic log line.
pub struct Progress {
    counters: Arc<Counters>,
    span: Span,
    /// Whether the bar is drawn (stderr is a terminal).
    bar: bool,
    ticker: tokio::task::JoinHandle<()>,
    follower: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// `total` keys, of which `before` already had rows (a resumed run).
    pub fn start(total: i64, before: StatusCounts, interval: Duration) -> Self {
        let counters = Arc::new(Counters::default());
        for status in KeyStatus::ALL {
            counters
                .slot(status)
                .store(before.get(status), Ordering::Relaxed);
        }
        let span = tracing::info_span!("lookups");
        let bar = std::io::stderr().is_terminal();
        if bar {
            let style = ProgressStyle::with_template(
                "{bar:30} {pos}/{len} keys  {per_sec:1}  ETA {eta}  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            span.pb_set_style(&style);
            span.pb_set_length(u64::try_from(total).unwrap_or(0));
            span.pb_set_position(u64::try_from(before.total()).unwrap_or(0));
            span.pb_start();
        }
        let ticker = tokio::spawn(report_every(
            Arc::clone(&counters),
            total,
            before.total(),
            interval,
        ));
        Self {
            counters,
            span,
            bar,
            ticker,
            follower: None,
        }
    }

    /// Keeps the bar's message current twice a second: `note()` (e.g. "Payple unhealthy:
    /// paused") while it says something, else the counts per status. (Not per key: a
    /// message formatted for each of a million lookups is CPU spent on nothing.)
    pub fn follow(&mut self, note: impl Fn() -> Option<String> + Send + 'static) {
        if !self.bar {
            return;
        }
        let span = self.span.clone();
        let counters = Arc::clone(&self.counters);
        self.follower = Some(tokio::spawn(async move {
            let mut shown = String::new();
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let text = note().unwrap_or_else(|| bar_message(&counters.snapshot()));
                if text != shown {
                    span.pb_set_message(&text);
                    shown = text;
                }
            }
        }));
    }

    pub fn record(&self, status: KeyStatus) {
        self.counters.slot(status).fetch_add(1, Ordering::Relaxed);
        if self.bar {
            self.span.pb_inc(1);
        }
    }

    pub fn counts(&self) -> StatusCounts {
        self.counters.snapshot()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.ticker.abort();
        if let Some(follower) = &self.follower {
            follower.abort();
        }
    }
}

/// The bar's message: the counts per status.
fn bar_message(c: &StatusCounts) -> String {
    format!(
        "active {} gone {} failed {} rejected {}",
        c.active, c.gone, c.failed, c.rejected
    )
}

/// Keys per second since the start (`done_now` of them in `elapsed`), and the time the
/// `left` keys will take at that pace.
fn rate_and_eta(done_now: i64, left: i64, elapsed: Duration) -> (f64, String) {
    let rate = done_now as f64 / elapsed.as_secs_f64().max(0.001);
    let eta = if rate > 0.0 {
        format!("{:.0}s", left.max(0) as f64 / rate)
    } else {
        "unknown".to_owned()
    };
    (rate, eta)
}

async fn report_every(counters: Arc<Counters>, total: i64, before: i64, interval: Duration) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        tick.tick().await;
        let c = counters.snapshot();
        let done = c.total();
        let (rate, eta) = rate_and_eta(done - before, total - done, started.elapsed());
        tracing::info!(
            done,
            total,
            per_second = format!("{rate:.1}"),
            eta,
            active = c.active,
            gone = c.gone,
            failed = c.failed,
            rejected = c.rejected,
            "progress"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_eta_follow_the_pace_since_the_start() {
        let (rate, eta) = rate_and_eta(50, 200, Duration::from_secs(10));
        assert_eq!(rate, 5.0);
        assert_eq!(eta, "40s");
        assert_eq!(rate_and_eta(0, 10, Duration::from_secs(3)).1, "unknown");
        // More done than planned (a count moved on): no negative time.
        assert_eq!(rate_and_eta(10, -3, Duration::from_secs(1)).1, "0s");
        // A zero elapsed time does not divide by zero.
        assert!(rate_and_eta(1, 1, Duration::ZERO).0.is_finite());
    }

    #[test]
    fn the_bar_message_names_every_status() {
        let c = StatusCounts {
            active: 1,
            gone: 2,
            failed: 3,
            rejected: 4,
        };
        assert_eq!(bar_message(&c), "active 1 gone 2 failed 3 rejected 4");
    }

    #[tokio::test]
    async fn counts_start_from_the_rows_a_resumed_run_already_has() {
        let before = StatusCounts {
            active: 2,
            gone: 0,
            failed: 1,
            rejected: 0,
        };
        let progress = Progress::start(10, before, Duration::from_secs(60));
        progress.record(KeyStatus::Active);
        progress.record(KeyStatus::Rejected);
        progress.record(KeyStatus::Failed);
        assert_eq!(
            progress.counts(),
            StatusCounts {
                active: 3,
                gone: 0,
                failed: 2,
                rejected: 1,
            }
        );
    }
}
