//! The one writer: result rows arrive on a bounded channel and are written in batched
//! transactions, with retries, so the database is never the bottleneck and never loses a
//! row silently.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{CheckRow, Store, StoreError};

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

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            batch_rows: 500,
            flush_every: Duration::from_millis(250),
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
}

/// Why the writer stopped early; the rows of the failed batch have no row in the table
/// and are looked up again by `run --resume`.
#[derive(Debug, thiserror::Error)]
#[error("results could not be written ({lost} rows of the last batch unsaved): {source}")]
pub struct WriterError {
    pub lost: usize,
    pub stats: WriterStats,
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
    let (sender, receiver) = mpsc::channel(config.batch_rows * 2);
    let task = tokio::spawn(write_loop(store, run_id, config, receiver));
    Writer { sender, task }
}

async fn write_loop(
    store: Store,
    run_id: i64,
    config: WriterConfig,
    mut receiver: mpsc::Receiver<CheckRow>,
) -> Result<WriterStats, WriterError> {
    let mut stats = WriterStats::default();
    let mut batch = Vec::with_capacity(config.batch_rows);
    loop {
        let open = fill(&mut receiver, &mut batch, &config).await;
        if !batch.is_empty() {
            // In key order, the batch touches the primary-key index page by page.
            batch.sort_unstable_by(|a, b| a.payer_id.cmp(&b.payer_id));
            write_batch(&store, run_id, &batch, &config, &mut stats).await?;
            batch.clear();
        }
        if !open {
            return Ok(stats);
        }
    }
}

/// Collects rows until the batch is full, the flush interval passes after its first row,
/// or the channel closes (returns `false` then).
async fn fill(
    receiver: &mut mpsc::Receiver<CheckRow>,
    batch: &mut Vec<CheckRow>,
    config: &WriterConfig,
) -> bool {
    let Some(first) = receiver.recv().await else {
        return false;
    };
    batch.push(first);
    let deadline = tokio::time::Instant::now() + config.flush_every;
    while batch.len() < config.batch_rows {
        match tokio::time::timeout_at(deadline, receiver.recv()).await {
            Ok(Some(row)) => batch.push(row),
            Ok(None) => return false,
            Err(_) => break,
        }
    }
    true
}

async fn write_batch(
    store: &Store,
    run_id: i64,
    batch: &[CheckRow],
    config: &WriterConfig,
    stats: &mut WriterStats,
) -> Result<(), WriterError> {
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match store.insert_checks(run_id, batch).await {
            Ok(()) => {
                stats.rows += batch.len() as u64;
                stats.batches += 1;
                return Ok(());
            }
            Err(source) if attempt >= config.attempts || !source.is_transient() => {
                tracing::error!(rows = batch.len(), error = %source, "giving up writing results");
                return Err(WriterError {
                    lost: batch.len(),
                    stats: *stats,
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
