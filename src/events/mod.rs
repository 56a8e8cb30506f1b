//! Signed per-key events for the merchant's application: `billing_key.gone` and the other
//! changes `changes` computes, kept in an outbox in the results database and delivered as
//! Standard Webhooks after the run.
//!
//! # Architecture
//! [`payload`] builds an event from a key's latest known result before and after a run (a
//! pure function over [`crate::report::changes::classify_latest`]); [`write_run`] streams the
//! two runs through it and writes the events with the run's "written" mark in one
//! transaction (`store::outbox`), once per completed run; [`sign`] is the HMAC; [`deliver`]
//! sends what is pending, in order per key, bounded in concurrency and time.

pub mod deliver;
mod error;
pub mod payload;
pub mod sign;

use crate::report::changes::{ChangeStream, PAGE_ROWS, pair_up};
use crate::store::time::time_text;
use crate::store::{OutboxEvent, RunRecord, RunState, Store, StoreError};

pub use deliver::{DeliveryConfig, DeliveryCounts, Endpoint, deliver_pending};
pub use error::EventsError;
pub use payload::Event;
pub use sign::Signer;

/// The completed run before `run` (the one its changes are measured against), if any.
pub async fn previous_completed(
    store: &Store,
    run: &RunRecord,
) -> Result<Option<RunRecord>, StoreError> {
    // Runs are listed newest first; a handful covers any night's neighbours.
    let mut limit = 16;
    loop {
        let runs = store.latest_runs(Some(RunState::Completed), limit).await?;
        if let Some(prev) = runs.iter().find(|r| r.id < run.id) {
            return Ok(Some(prev.clone()));
        }
        if (runs.len() as i64) < limit {
            return Ok(None);
        }
        limit *= 4;
    }
}

/// The events of run `after` against run `before`, each key's in payer-id order, handed
/// to `each` one window at a time (memory stays flat).
pub async fn stream_events(
    store: &Store,
    before: &RunRecord,
    after: &RunRecord,
    mut each: impl FnMut(Event),
) -> Result<(), EventsError> {
    let timestamp = time_text(after.finished_at.unwrap_or(after.started_at));
    let mut stream = ChangeStream::new(store, before.id, after.id, PAGE_ROWS);
    while let Some((earlier, later)) = stream.next_rows().await? {
        pair_up(earlier, later, |x, y| {
            if let Some(e) = payload::event_of(after.id, &timestamp, x, y) {
                each(e);
            }
        });
    }
    Ok(())
}

/// Writes the events of every completed run whose events are not written yet (this
/// night's, and any a stopped process left), each run in one transaction with its mark.
/// With `with_events` false the runs are only marked (events were not asked for).
/// Returns the events written.
pub async fn write_pending_runs(store: &Store, with_events: bool) -> Result<u64, EventsError> {
    let mut written = 0;
    for run_id in store.runs_without_events().await? {
        let Some(run) = store.run(run_id).await? else {
            continue;
        };
        written += write_run(store, &run, with_events).await?;
    }
    Ok(written)
}

/// Writes one completed run's events (none for a first run) with its mark.
pub async fn write_run(
    store: &Store,
    run: &RunRecord,
    with_events: bool,
) -> Result<u64, EventsError> {
    let mut events = Vec::new();
    if with_events && let Some(before) = previous_completed(store, run).await? {
        stream_events(store, &before, run, |e| {
            events.push(OutboxEvent {
                event_id: e.id,
                run_id: e.run_id,
                payer_sha256: e.payer_sha256,
                event_type: e.event_type.to_owned(),
                payload: e.body,
            });
        })
        .await?;
    }
    let n = events.len() as u64;
    if store.write_events(run.id, &events).await? {
        tracing::info!(run_id = run.id, events = n, "events written to the outbox");
        Ok(n)
    } else {
        Ok(0)
    }
}
