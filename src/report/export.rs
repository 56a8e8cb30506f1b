//! Streaming a run's rows from the store into the finance CSV, and writing the metrics
//! file: the I/O around the pure formatters, for the commands to call.

use std::io::Write;
use std::path::Path;

use super::changes::PAGE_ROWS;
use super::csv::ReportWriter;
use super::error::ReportError;
use super::metrics;
use super::output::{Output, write_atomic};
use crate::domain::{KeyStatus, RunStats};
use crate::store::Store;

/// Streams run `run_id`'s rows (only `statuses`, or all) as the finance CSV to `path`
/// (`-`: stdout), a page at a time; returns the rows written.
pub async fn write_report(
    store: &Store,
    run_id: i64,
    statuses: &[KeyStatus],
    path: &Path,
    excel: bool,
) -> Result<u64, ReportError> {
    let mut out = Output::open(path)?;
    let rows = export_run(store, run_id, statuses, &mut out, excel, PAGE_ROWS)
        .await
        .map_err(|e| match e {
            ReportError::Write { source, .. } => ReportError::Write {
                path: path.to_owned(),
                source,
            },
            other => other,
        })?;
    out.commit()?;
    Ok(rows)
}

/// Streams run `run_id`'s rows as the finance CSV into `out`, `page` rows per query
/// (keyset pagination on the payer id); returns the rows written. Write errors name `-`.
pub async fn export_run<W: Write>(
    store: &Store,
    run_id: i64,
    statuses: &[KeyStatus],
    out: W,
    excel: bool,
    page: i64,
) -> Result<u64, ReportError> {
    let unnamed = Path::new("-");
    let mut writer = ReportWriter::new(out, excel).map_err(ReportError::write(unnamed))?;
    let mut cursor = String::new();
    loop {
        let rows = store
            .checks_page(run_id, &cursor, statuses, page.max(1))
            .await
            .map_err(ReportError::store(run_id))?;
        for row in &rows {
            writer.write(row).map_err(ReportError::write(unnamed))?;
        }
        match rows.last() {
            Some(last) if i64::try_from(rows.len()).unwrap_or(i64::MAX) >= page.max(1) => {
                cursor.clone_from(&last.payer_id);
            }
            _ => break,
        }
    }
    let rows = writer.rows();
    writer.finish().map_err(ReportError::write(unnamed))?;
    Ok(rows)
}

/// Writes the metrics file for `stats` atomically, keeping the previous last-success time
/// when this run did not succeed. `ended`: when the run ended (Unix seconds; an "already
/// completed" answer is about a night that ended earlier), now if unknown.
/// `extras`: what the run's end adds (undelivered notifications, newly gone keys, failed
/// pushes).
pub fn write_metrics(
    path: &Path,
    stats: &RunStats,
    ended: Option<f64>,
    extras: &metrics::Extras,
) -> Result<(), ReportError> {
    let previous = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the previous metrics file");
            None
        }
    };
    let ended = ended.unwrap_or_else(|| chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    let mut m = metrics::from_stats(stats, ended, previous.as_deref());
    extras.apply(&mut m);
    write_atomic(path, metrics::render(&m).as_bytes())
}
