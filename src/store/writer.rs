//! The one writer: result rows arrive on a bounded channel and are written in batched
//! transactions, with retries, so the database is never the bottleneck and never loses a
//! row silently.
//!
//! # Poison rows
//! Every text field is cut to its bound ([`FieldBound`]) before it is written. A batch the
//! database still refuses for a reason that is not transient is split in halves, down to
//! single rows: every other row is written, and a row refused on its own is stored as
//! `failed` with the database's reason, so one key can never fail a run night after night.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::connect::Store;
use super::error::StoreError;
use super::packed::PackedRow;
use super::records::CheckRow;
use crate::domain::{FieldBound, LookupOutcome};

/// The result code of a row the database refused on its own.
pub const STORE_REJECTED: &str = "STORE_REJECTED";

/// How the writer batches and retries.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Rows per transaction at most.
    pub batch_rows: usize,
    /// A partial batch is written after this long.
    pub flush_every: Duration,
    /// Attempts per batch before the writer gives up.
    pub attempts: u32,
}

/// Rows per transaction by default: each row lands on a random page of the two key
/// indexes, and a large sorted batch shares those pages (docs/performance.md, "Staging and
/// write batches").
pub const BATCH_ROWS: usize = 16_384;

/// Rows that may wait on the channel; the writer takes them while it writes.
const QUEUE_ROWS: usize = 1_024;

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            batch_rows: BATCH_ROWS,
            // About two seconds of lookups are unsaved at any time; a crash costs those
            // lookups again on `--resume`, never a wrong row. Two, not one: at a
            // million keys a second of lookups (~11,000 rows) stayed under the batch
            // cap, and each batch touched most pages of the two key indexes anyway.
            flush_every: Duration::from_secs(2),
            attempts: 6,
        }
    }
}

/// What the writer did.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriterStats {
    pub rows: u64,
    pub batches: u64,
    pub retries: u64,
    /// Text fields cut to their bound before writing.
    pub cut_fields: u64,
    /// Rows the database refused on their own, stored as `failed` instead.
    pub isolated: u64,
}

/// Why the writer stopped early; the rows of the failed batch have no row in the table
/// and are looked up again by `run --resume`.
#[derive(Debug, thiserror::Error)]
#[error("results could not be written ({lost} rows of the last batch unsaved): {source}")]
pub struct WriterError {
    pub lost: usize,
    pub stats: Box<WriterStats>,
    #[source]
    pub source: StoreError,
}

/// The sending side, and the task that writes.
pub struct Writer {
    pub sender: mpsc::Sender<CheckRow>,
    pub task: JoinHandle<Result<WriterStats, WriterError>>,
}

/// Starts the writer task for `run_id`.
pub fn spawn(store: Store, run_id: i64, config: WriterConfig) -> Writer {
    let (sender, receiver) = mpsc::channel(config.batch_rows.clamp(1, QUEUE_ROWS));
    let task = tokio::spawn(write_loop(store, run_id, config, receiver));
    Writer { sender, task }
}

/// Group commit: rows are collected while the previous batch is written, and the next
/// write takes everything that arrived meanwhile (up to `batch_rows`). A small database
/// writes small batches often; a large one, whose writes take longer, writes larger
/// batches, which share more index pages, so the writer keeps up at any size.
async fn write_loop(
    store: Store,
    run_id: i64,
    config: WriterConfig,
    mut receiver: mpsc::Receiver<CheckRow>,
) -> Result<WriterStats, WriterError> {
    let mut stats = WriterStats::default();
    let mut batch: Vec<PackedRow> = Vec::new();
    let mut writing: Option<JoinHandle<(WriterStats, Result<(), WriterError>)>> = None;
    let mut due = tokio::time::Instant::now();
    let mut open = true;
    loop {
        let ready = writing.is_none()
            && !batch.is_empty()
            && (!open || batch.len() >= config.batch_rows || tokio::time::Instant::now() >= due);
        if ready {
            let rows = std::mem::take(&mut batch);
            let store = store.clone();
            writing = Some(tokio::spawn(async move {
                let mut delta = WriterStats::default();
                let written = write_sorted(&store, run_id, rows, &config, &mut delta).await;
                (delta, written)
            }));
        }
        if !open && batch.is_empty() && writing.is_none() {
            return Ok(stats);
        }
        tokio::select! {
            done = async { writing.as_mut().expect("guarded").await }, if writing.is_some() => {
                writing = None;
                let (delta, written) = done.expect("the write task does not panic");
                return_freed_memory();
                stats.add(&delta);
                if let Err(mut e) = written {
                    e.lost += batch.len();
                    e.stats = Box::new(stats);
                    return Err(e);
                }
            }
            row = receiver.recv(), if open && batch.len() < config.batch_rows => match row {
                Some(mut row) => {
                    if batch.is_empty() {
                        due = tokio::time::Instant::now() + config.flush_every;
                    }
                    stats.cut_fields += bound_row(&mut row) as u64;
                    batch.push(PackedRow::pack(&row));
                }
                None => open = false,
            },
            () = tokio::time::sleep_until(due), if writing.is_none() && !batch.is_empty() => {}
        }
    }
}

/// Sorts `rows` (bounded when they arrived), then writes them. In key order, a batch
/// touches each page of the key indexes once.
async fn write_sorted(
    store: &Store,
    run_id: i64,
    mut rows: Vec<PackedRow>,
    config: &WriterConfig,
    stats: &mut WriterStats,
) -> Result<(), WriterError> {
    rows.sort_unstable();
    write_isolating(store, run_id, &rows, config, stats).await?;
    // A SQLite file deleted under the run takes these rows into an unreachable inode.
    store.check_file().map_err(|source| WriterError {
        lost: rows.len(),
        stats: Box::new(*stats),
        source,
    })
}

/// Gives the pages a written batch freed back to the system. A batch's buffers (its
/// JSON, SQLite's copy and parse of it, the rows taken out of it) are ~14 MiB of small
/// and large blocks on two threads; glibc returns only the top of a heap by itself, so
/// what a batch freed in the middle stayed resident: peak RSS at 1,000,000 keys was
/// 72-75 MiB with ~43 MiB in use between batches. `malloc_trim` walks the heap once per
/// batch (about a second apart) and releases whole free pages.
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it takes the allocator's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl WriterStats {
    fn add(&mut self, other: &WriterStats) {
        self.rows += other.rows;
        self.batches += other.batches;
        self.retries += other.retries;
        self.cut_fields += other.cut_fields;
        self.isolated += other.isolated;
    }
}

/// Cuts a row's text fields to their bounds; how many were cut.
pub fn bound_row(row: &mut CheckRow) -> usize {
    let cut =
        row.outcome.bound() + usize::from(FieldBound::CustomerRef.apply(&mut row.customer_ref));
    if cut > 0 {
        tracing::debug!(
            key = %crate::domain::mask_payer_id(&row.payer_id),
            fields = cut,
            "over-long values cut to their column's bound"
        );
    }
    cut
}

/// The row stored instead of one the database refused: `failed`, with the reason.
pub fn refused_row(row: &CheckRow, reason: &StoreError) -> CheckRow {
    let mut outcome = LookupOutcome::failed(
        STORE_REJECTED,
        format!("the results database refused this row: {reason}"),
        row.outcome.attempts,
    );
    outcome.bound();
    CheckRow {
        payer_id: row.payer_id.clone(),
        customer_ref: None,
        outcome,
        checked_at: row.checked_at,
    }
}

/// Writes `batch`; a part refused for a non-transient reason is halved until the refused
/// rows stand alone, and each of those is stored as a `failed` row instead.
async fn write_isolating(
    store: &Store,
    run_id: i64,
    batch: &[PackedRow],
    config: &WriterConfig,
    stats: &mut WriterStats,
) -> Result<(), WriterError> {
    let mut pending: Vec<&[PackedRow]> = vec![batch];
    while let Some(part) = pending.pop() {
        let error = match write_batch(store, run_id, part, config, stats).await {
            Ok(()) => continue,
            Err(e) if e.source.is_transient() => return Err(e),
            Err(e) => e,
        };
        if part.len() > 1 {
            tracing::warn!(rows = part.len(), error = %error.source, "a batch was refused; isolating the row at fault");
            let (left, right) = part.split_at(part.len() / 2);
            pending.push(right);
            pending.push(left);
            continue;
        }
        let row = part[0].unpack().map_err(|source| WriterError {
            lost: 1,
            stats: Box::new(*stats),
            source,
        })?;
        let refused = PackedRow::pack(&refused_row(&row, &error.source));
        tracing::error!(
            key = %crate::domain::mask_payer_id(&row.payer_id),
            error = %error.source,
            "the results database refused a row; it is stored as failed"
        );
        write_batch(store, run_id, std::slice::from_ref(&refused), config, stats).await?;
        stats.isolated += 1;
    }
    Ok(())
}

async fn write_batch(
    store: &Store,
    run_id: i64,
    batch: &[PackedRow],
    config: &WriterConfig,
    stats: &mut WriterStats,
) -> Result<(), WriterError> {
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        let started = std::time::Instant::now();
        match store.insert_packed(run_id, batch).await {
            Ok(()) => {
                tracing::debug!(
                    rows = batch.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "results written"
                );
                stats.rows += batch.len() as u64;
                stats.batches += 1;
                return Ok(());
            }
            Err(source) if attempt >= config.attempts || !source.is_transient() => {
                if source.is_transient() {
                    tracing::error!(rows = batch.len(), error = %source, "giving up writing results");
                }
                return Err(WriterError {
                    lost: batch.len(),
                    stats: Box::new(*stats),
                    source,
                });
            }
            Err(error) => {
                tracing::warn!(attempt, rows = batch.len(), %error, ?delay, "writing results failed; retrying");
                stats.retries += 1;
                attempt += 1;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite_with_run;

    fn row(i: usize) -> CheckRow {
        CheckRow {
            payer_id: format!("key-{i:06}"),
            customer_ref: None,
            outcome: LookupOutcome::failed("X", "test", 1),
            checked_at: chrono::Utc::now(),
        }
    }

    #[tokio::test]
    async fn rows_sent_while_a_batch_is_written_are_all_written_in_larger_batches() {
        let (_dir, store, run_id) = sqlite_with_run().await;
        let config = WriterConfig {
            batch_rows: 300,
            flush_every: Duration::from_millis(1),
            attempts: 1,
        };
        let writer = spawn(store.clone(), run_id, config);
        for i in 0..2_000 {
            writer.sender.send(row(i)).await.expect("writer alive");
        }
        drop(writer.sender);
        let stats = writer.task.await.expect("joined").expect("written");
        assert_eq!(stats.rows, 2_000);
        // A batch never exceeds its bound, so at least 2,000 / 300 batches were written.
        assert!(stats.batches >= 7, "{stats:?}");
        assert_eq!(
            store.status_counts(run_id).await.expect("counts").total(),
            2_000
        );
    }

    #[tokio::test]
    async fn a_partial_batch_is_written_after_the_flush_interval_with_the_channel_open() {
        let (_dir, store, run_id) = sqlite_with_run().await;
        let config = WriterConfig {
            batch_rows: 1_000,
            flush_every: Duration::from_millis(50),
            attempts: 1,
        };
        let writer = spawn(store.clone(), run_id, config);
        for i in 0..10 {
            writer.sender.send(row(i)).await.expect("writer alive");
        }
        let mut written = 0;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            written = store.status_counts(run_id).await.expect("counts").total();
            if written == 10 {
                break;
            }
        }
        assert_eq!(written, 10, "the rows are saved while the run goes on");
        drop(writer.sender);
        let stats = writer.task.await.expect("joined").expect("written");
        assert_eq!((stats.rows, stats.batches), (10, 1));
    }
}
