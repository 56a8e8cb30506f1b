//! `events deliver` and `events list`, and what `run` does with events at its end: write
//! the completed run's events to the outbox, then deliver what is pending within
//! `--events-budget` and the shutdown grace. Delivery never changes a run's exit code.

use tokio::time::Instant;

use super::error::AppError;
use super::output::print_json;
use crate::domain::RunStats;
use crate::events::{self, DeliveryConfig, DeliveryCounts, EventsError};
use crate::exit::ExitStatus;
use crate::report::ReportError;
use crate::report::output::Output;
use crate::report::select::open_store;
use crate::settings::{BatchSettings, EventsCmdSettings};
use crate::shutdown::{Shutdown, cut_at};
use crate::store::{RunRecord, RunState, Store};

pub(super) async fn events(
    settings: EventsCmdSettings,
    shutdown: &Shutdown,
) -> Result<ExitStatus, AppError> {
    match settings {
        EventsCmdSettings::List { database, pending } => {
            let store = open_store(&database.database_url).await?;
            let rows = store.list_events(pending).await;
            store.close().await;
            for row in rows? {
                print_json(&row);
            }
            Ok(ExitStatus::Success)
        }
        EventsCmdSettings::Deliver {
            database,
            config,
            shutdown_grace,
        } => {
            let store = Store::open_until(&database.database_url, &shutdown.stop).await?;
            let result = deliver(&store, &config, shutdown, shutdown_grace).await;
            store.close().await;
            let counts = result.map_err(|e| AppError::Events(Box::new(e)))?;
            print_json(&counts);
            Ok(match shutdown.signal() {
                Some(signal) => signal.exit_status(),
                None if counts.pending == 0 && !counts.endpoint_disabled => ExitStatus::Success,
                None => ExitStatus::Unavailable,
            })
        }
    }
}

/// Writes any completed run's unwritten events, then delivers until done, the budget is
/// spent, or the shutdown grace ends.
async fn deliver(
    store: &Store,
    config: &DeliveryConfig,
    shutdown: &Shutdown,
    grace: std::time::Duration,
) -> Result<DeliveryCounts, EventsError> {
    events::write_pending_runs(store, true).await?;
    let cut = cut_at(shutdown.end_limit(grace, Instant::now()));
    let counts = events::deliver_pending(store, config, &cut.cut).await;
    log_counts(counts.as_ref().ok());
    counts
}

/// `run`'s events, once its end is known: the run's events (and those of any completed
/// run a stopped process left unwritten) into the outbox, then delivery. `None` without
/// `--events-url`, or when writing failed (logged; the run's exit code stays).
pub(super) async fn after_run(
    batch: &BatchSettings,
    store: &Store,
    stats: &RunStats,
    shutdown: &Shutdown,
) -> Option<DeliveryCounts> {
    if stats.state != RunState::Completed && batch.events.is_none() {
        return None;
    }
    // Without --events-url the runs are only marked: enabling events later sends nothing
    // about the nights before.
    if let Err(e) = events::write_pending_runs(store, batch.events.is_some()).await {
        tracing::error!(error = %e, "events not written to the outbox; the next run writes them");
    }
    let config = batch.events.as_ref()?;
    let cut = cut_at(shutdown.end_limit(batch.shutdown_grace, Instant::now()));
    match events::deliver_pending(store, config, &cut.cut).await {
        Ok(counts) => {
            log_counts(Some(&counts));
            Some(counts)
        }
        Err(e) => {
            tracing::error!(error = %e, "events not delivered; they stay pending");
            None
        }
    }
}

fn log_counts(counts: Option<&DeliveryCounts>) {
    if let Some(c) = counts {
        tracing::info!(
            delivered = c.delivered,
            pending = c.pending,
            expired = c.expired,
            failed_attempts = c.failed_attempts,
            endpoint_disabled = c.endpoint_disabled,
            seconds = c.seconds,
            "events delivery ended"
        );
    }
}

/// `changes --format jsonl`: the event objects of `after` against `before`, one per line,
/// to `output` (stdout without it, or for `-`).
pub(super) async fn write_jsonl(
    store: &Store,
    output: Option<&std::path::Path>,
    before: &RunRecord,
    after: &RunRecord,
) -> Result<(), ReportError> {
    use std::io::Write;
    let path = output.unwrap_or(std::path::Path::new("-"));
    let mut out = Output::open(path)?;
    let mut failed = None;
    let mut count = 0u64;
    let streamed = events::stream_events(store, before, after, |e| {
        if failed.is_none() {
            count += 1;
            failed = writeln!(out, "{}", e.body).err();
        }
    })
    .await;
    match streamed {
        Ok(()) => {}
        Err(EventsError::Read(e)) => return Err(e),
        Err(EventsError::Store(e)) => return Err(ReportError::store(after.id)(e)),
        Err(EventsError::Client(_)) => {}
    }
    if let Some(e) = failed {
        return Err(ReportError::write(path)(e));
    }
    out.flush().map_err(ReportError::write(path))?;
    out.commit()?;
    tracing::info!(
        since = before.id,
        run = after.id,
        events = count,
        "events written"
    );
    Ok(())
}
