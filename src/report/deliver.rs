//! Delivering a run's results to finance: the report in the format asked for (CSV or the
//! workbook), and the notification to the webhooks. The commands (`report`, `run`,
//! `notify`) call these; nothing here reads a flag.

use std::path::Path;

use super::changes::PAGE_ROWS;
use super::error::ReportError;
use super::export::write_report;
use super::notice;
use super::output::ReportFormat;
use super::xlsx::{XlsxOptions, write_workbook_file};
use crate::domain::KeyStatus;
use crate::notify::{self, Delivery, Notice, Notifier, NotifyFormat, NotifyOn};
use crate::store::{RunRecord, Store};

/// What a report looks like.
#[derive(Debug, Clone, Copy)]
pub struct ReportShape {
    pub format: ReportFormat,
    /// CSV: a UTF-8 BOM first.
    pub excel: bool,
    /// xlsx: rows per worksheet, header included.
    pub sheet_rows: u32,
}

/// Writes run `run`'s report to `path` (`statuses` filter the CSV only; the workbook
/// always holds the whole run); returns the key rows written.
pub async fn write_run_report(
    store: &Store,
    run: &RunRecord,
    statuses: &[KeyStatus],
    path: &Path,
    shape: ReportShape,
) -> Result<u64, ReportError> {
    match shape.format {
        ReportFormat::Csv => write_report(store, run.id, statuses, path, shape.excel).await,
        ReportFormat::Xlsx => {
            let options = XlsxOptions {
                sheet_rows: shape.sheet_rows,
                page: PAGE_ROWS,
            };
            let stats = write_workbook_file(store, run, path, options).await?;
            Ok(stats.keys)
        }
    }
}

/// What the process knows better than the run record when a run has just ended.
#[derive(Debug, Clone, Default)]
pub struct RunEnding {
    pub exit_code: Option<i64>,
    pub duration_secs: Option<f64>,
    /// Where the report was written.
    pub report: Option<String>,
    /// Why the run failed, when it did.
    pub error: Option<String>,
    /// Per-key events after the run (`--events-url`).
    pub events: Option<crate::domain::EventTally>,
}

/// Builds run `run`'s notice and, if `on` says it is worth it, posts it. `None` when
/// nothing was sent because nothing was worth it.
pub async fn notify_run(
    store: &Store,
    notifier: &Notifier,
    format: NotifyFormat,
    on: NotifyOn,
    run: &RunRecord,
    ending: RunEnding,
) -> Result<Option<Delivery>, ReportError> {
    let notice = notice::load(store, run, ending.report.clone()).await?;
    Ok(send_notice(notifier, format, on, notice, ending).await)
}

/// Posts a notice already loaded ([`notice::load`]) if `on` says it is worth it, with the
/// run's ending; `None` when nothing was worth sending.
pub async fn send_notice(
    notifier: &Notifier,
    format: NotifyFormat,
    on: NotifyOn,
    mut notice: Notice,
    ending: RunEnding,
) -> Option<Delivery> {
    if let Some(code) = ending.exit_code {
        notice.exit_code = Some(code);
    }
    if let Some(secs) = ending.duration_secs {
        notice.duration_secs = Some(secs);
    }
    notice.events = ending.events.or(notice.events);
    if let Some(error) = ending.error {
        // A failed run is told by its error; what it left behind is no change.
        notice.error = Some(error);
        notice.changes = None;
        notice.newly_gone.clear();
    }
    if !notify::should_send(on, &notice) {
        tracing::info!(run_id = notice.run_id, "nothing worth a notification");
        return None;
    }
    Some(notifier.send(&notify::body(format, &notice)).await)
}
