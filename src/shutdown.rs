//! Shutdown on SIGINT or SIGTERM: the first signal stops dispatching and lets in-flight
//! lookups finish, a second one cuts the grace period short.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::exit::ExitStatus;

/// The signal that stopped the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
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
    at: Arc<OnceLock<Instant>>,
}

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
            let _ = self.at.set(Instant::now());
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

    /// How much of `grace` is left since the first signal (all of it before any signal).
    pub fn grace_left(&self, grace: Duration) -> Duration {
        self.at
            .get()
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
