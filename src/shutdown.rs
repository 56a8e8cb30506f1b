//! Shutdown on SIGINT or SIGTERM: the first signal stops dispatching and lets in-flight
//! lookups finish, a second one cuts the grace period short.
//!
//! # Time after a signal
//! The first signal starts the clock: lookups get `--shutdown-grace`, the work at the end of
//! a run (report, metrics, notification) gets what is left of it, but at least
//! [`END_FLOOR`] ([`Shutdown::end_limit`]), and [`Shutdown::backstop`] ends the command
//! at the latest [`BACKSTOP_MARGIN`] after that, whatever it is still waiting for. A second signal ends
//! the end-of-run work at once and the command within [`SECOND_SIGNAL_WINDOW`].

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::exit::ExitStatus;

/// The signal that stopped the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
        })
    }
}

impl Signal {
    pub fn exit_status(self) -> ExitStatus {
        match self {
            Self::Interrupt => ExitStatus::Interrupted,
            Self::Terminate => ExitStatus::Terminated,
        }
    }
}

/// Shared view of the shutdown state. Clones observe the same signals.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Cancelled by the first signal: stop dispatching.
    pub stop: CancellationToken,
    /// Cancelled by a second signal: abandon in-flight work now.
    pub now: CancellationToken,
    signal: Arc<AtomicU8>,
    /// When the first signal came.
    signalled_at: Arc<OnceLock<Instant>>,
}

/// The least time the end of a run (report, metrics, notification) gets after a signal,
/// even when the lookups used the whole grace: enough for one webhook that answers.
pub const END_FLOOR: Duration = Duration::from_secs(2);

/// How long past the end-of-run limit the command may still take before
/// [`Shutdown::backstop`] ends it (closing the databases, printing the summary).
pub const BACKSTOP_MARGIN: Duration = Duration::from_secs(2);

/// How long a command may take after a second signal: recording the run as
/// `interrupted`, nothing else.
pub const SECOND_SIGNAL_WINDOW: Duration = Duration::from_millis(700);

impl Shutdown {
    /// Listens for SIGINT and SIGTERM in a background task.
    pub fn listen() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let shutdown = Self::default();
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let handle = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let signal = tokio::select! {
                    _ = interrupt.recv() => Signal::Interrupt,
                    _ = terminate.recv() => Signal::Terminate,
                };
                handle.trigger(signal);
            }
        });
        Ok(shutdown)
    }

    /// Records a signal: the first stops dispatching, the next abandons in-flight work.
    pub fn trigger(&self, signal: Signal) {
        let code = match signal {
            Signal::Interrupt => 1,
            Signal::Terminate => 2,
        };
        if self
            .signal
            .compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            let _ = self.signalled_at.set(Instant::now());
            tracing::warn!(
                ?signal,
                "stopping: no new lookups; waiting for those in flight"
            );
            self.stop.cancel();
        } else {
            tracing::warn!(?signal, "second signal: abandoning lookups in flight");
            self.now.cancel();
        }
    }

    /// When the first signal came, if one did.
    pub fn signalled_at(&self) -> Option<Instant> {
        self.signalled_at.get().copied()
    }

    /// Resolves when work at the end of a run that began at `began` must stop: never
    /// without a signal; after a signal at the later of the signal plus `grace` and
    /// `began` plus [`END_FLOOR`]; at once on a second signal.
    pub fn end_limit(
        &self,
        grace: Duration,
        began: Instant,
    ) -> impl Future<Output = ()> + Send + 'static {
        let this = self.clone();
        async move {
            this.stop.cancelled().await;
            let at = this.end_at(grace, began);
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = this.now.cancelled() => {}
            }
        }
    }

    /// The end-of-run limit after a signal (see [`Self::end_limit`]).
    fn end_at(&self, grace: Duration, began: Instant) -> Instant {
        let signalled = self.signalled_at().unwrap_or(began);
        end_deadline(signalled, grace, began)
    }

    /// Resolves, with the first signal, when the command must end whatever it is waiting
    /// for (a pipe, a FIFO, a credential file, a webhook, a database): the signal plus
    /// `grace`, [`END_FLOOR`] and [`BACKSTOP_MARGIN`], or [`SECOND_SIGNAL_WINDOW`] after a
    /// second signal. Never resolves without a signal.
    pub async fn backstop(&self, grace: Duration) -> Signal {
        self.stop.cancelled().await;
        let signalled = self.signalled_at().unwrap_or_else(Instant::now);
        let at = signalled + grace + END_FLOOR + BACKSTOP_MARGIN;
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            _ = async {
                self.now.cancelled().await;
                tokio::time::sleep(SECOND_SIGNAL_WINDOW).await;
            } => {}
        }
        self.signal().unwrap_or(Signal::Terminate)
    }

    /// How much of `grace` is left since the first signal (all of it before any signal).
    pub fn grace_left(&self, grace: Duration) -> Duration {
        self.signalled_at()
            .map_or(grace, |at| grace.saturating_sub(at.elapsed()))
    }

    /// The first signal received, if any.
    pub fn signal(&self) -> Option<Signal> {
        match self.signal.load(Ordering::SeqCst) {
            1 => Some(Signal::Interrupt),
            2 => Some(Signal::Terminate),
            _ => None,
        }
    }
}

/// The end-of-run limit: the signal plus the grace, but at least [`END_FLOOR`] after the
/// end-of-run work began.
pub fn end_deadline(signalled: Instant, grace: Duration, began: Instant) -> Instant {
    (signalled + grace).max(began + END_FLOOR)
}

/// A token cancelled when `limit` resolves (an [`Shutdown::end_limit`], say): what the
/// end-of-run work watches. Dropping it stops the waiting task.
pub struct Cutter {
    pub cut: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Cutter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// [`Cutter`] for `limit`.
pub fn cut_at(limit: impl Future<Output = ()> + Send + 'static) -> Cutter {
    let cut = CancellationToken::new();
    let task = tokio::spawn({
        let cut = cut.clone();
        async move {
            limit.await;
            cut.cancel();
        }
    });
    Cutter { cut, task }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_run_gets_the_grace_left_but_at_least_the_floor() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        // Signalled at t0, end-of-run work begins 3 s later: 7 s are left.
        assert_eq!(
            end_deadline(t0, grace, t0 + Duration::from_secs(3)),
            t0 + grace
        );
        // Lookups used the whole grace: the floor.
        let late = t0 + Duration::from_secs(12);
        assert_eq!(end_deadline(t0, grace, late), late + END_FLOOR);
    }

    #[tokio::test]
    async fn the_backstop_waits_for_a_signal_then_the_grace() {
        let shutdown = Shutdown::default();
        let backstop = shutdown.backstop(Duration::ZERO);
        tokio::pin!(backstop);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut backstop)
                .await
                .is_err(),
            "no signal, no backstop"
        );
        let signalled = Instant::now();
        shutdown.trigger(Signal::Terminate);
        assert_eq!(backstop.await, Signal::Terminate);
        let took = signalled.elapsed();
        assert!(
            took >= END_FLOOR + BACKSTOP_MARGIN && took < END_FLOOR + BACKSTOP_MARGIN * 3,
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_second_signal_ends_the_end_of_run_work_at_once() {
        let shutdown = Shutdown::default();
        let limit = shutdown.end_limit(Duration::from_secs(30), Instant::now());
        shutdown.trigger(Signal::Interrupt);
        let second = Instant::now();
        shutdown.trigger(Signal::Terminate);
        tokio::time::timeout(Duration::from_secs(5), limit)
            .await
            .expect("the limit resolves on the second signal");
        assert!(second.elapsed() < Duration::from_secs(5));
        assert_eq!(
            shutdown.signal(),
            Some(Signal::Interrupt),
            "the first decides"
        );
    }
}
