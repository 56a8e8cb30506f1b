//! The finance workbook (`.xlsx`): *Summary* (the run, counts, two charts), *Action* (gone
//! and failed keys, newly gone first), *Keys* (every row) and *Changes* (against the
//! previous completed run).
//!
//! # Architecture
//! Rows stream from the store a page at a time, as the CSV export does, into worksheets in
//! constant-memory mode: each row goes to a temporary file as it is written, so memory
//! stays flat however many keys a run has. That mode needs rows in order, sheet by sheet,
//! so the sheets are written one after another (Summary first, from counts the database
//! computes). A table longer than a worksheet continues on the next (`Keys (2)`, …); the
//! rows per worksheet are a parameter so that tests can use a small one. Every text cell
//! is a string (never a formula), neutralised like the CSV's.
//!
//! `cells` holds the shared formats and the Excel times, `sheet` the paging of a sheet,
//! `summary_sheet` the Summary sheet; this file writes the others.

mod cells;
mod sheet;
mod summary_sheet;

use std::io::{IsTerminal, Write};
use std::path::Path;

use rust_xlsxwriter::{Workbook, XlsxError};

use super::changes::{CHANGES_HEADER, ChangeStream, PAGE_ROWS};
use super::csv::{REPORT_HEADER, report_row};
use super::error::ReportError;
use super::output::Output;
use crate::domain::mask_payer_id;
use crate::store::reports::{ActionCursor, ActionGroup};
use crate::store::{CheckRecord, RunRecord, Store};
use cells::{Formats, excel_utc};

pub use cells::{DATETIME_FORMAT, excel_kst};
pub use sheet::{EXCEL_MAX_ROWS, part_name};
pub use summary_sheet::duration_secs;

/// The worksheets, in order.
pub const SHEETS: [&str; 4] = ["Summary", "Action", "Keys", "Changes"];

/// The columns of the Action sheet.
pub const ACTION_HEADER: [&str; 7] = [
    "action",
    "customer_ref",
    "payer_id_masked",
    "status",
    "result_code",
    "result_msg",
    "checked_at_kst",
];

/// Workbook options.
#[derive(Debug, Clone, Copy)]
pub struct XlsxOptions {
    /// Rows per worksheet, header included (Excel's limit unless a test wants fewer).
    pub sheet_rows: u32,
    /// Rows read from the store per query.
    pub page: i64,
}

impl Default for XlsxOptions {
    fn default() -> Self {
        Self {
            sheet_rows: EXCEL_MAX_ROWS,
            page: PAGE_ROWS,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkbookStats {
    pub keys: u64,
    pub action: u64,
    pub changes: u64,
}

/// Writes run `run`'s workbook into `out` (a file; the zip is streamed), reading the store
/// page by page. `previous` is the completed run the Action and Changes sheets compare
/// with, if any.
pub async fn write_workbook<W: Write + Send>(
    store: &Store,
    run: &RunRecord,
    previous: Option<&RunRecord>,
    out: W,
    options: XlsxOptions,
) -> Result<WorkbookStats, ReportError> {
    let xlsx = |source| ReportError::Xlsx { source };
    let formats = Formats::new();
    let mut workbook = Workbook::new();
    let facts = summary_sheet::load(store, run, previous).await?;
    summary_sheet::write(&mut workbook, &facts, &formats).map_err(xlsx)?;
    let action = write_action(&mut workbook, store, run.id, previous, &formats, options).await?;
    let keys = write_keys(&mut workbook, store, run.id, &formats, options).await?;
    let changes = write_changes(&mut workbook, store, run.id, previous, &formats, options).await?;
    workbook.save_to_writer(out).map_err(xlsx)?;
    Ok(WorkbookStats {
        keys,
        action,
        changes,
    })
}

/// Writes run `run`'s workbook to `path`, compared with the completed run before it. A
/// file appears only once complete; `-` is stdout, refused when it is a terminal.
pub async fn write_workbook_file(
    store: &Store,
    run: &RunRecord,
    path: &Path,
    options: XlsxOptions,
) -> Result<WorkbookStats, ReportError> {
    if path.as_os_str() == "-" && std::io::stdout().is_terminal() {
        return Err(ReportError::BinaryToTerminal);
    }
    let previous = store
        .completed_run_before(run.id)
        .await
        .map_err(ReportError::store(run.id))?;
    let mut out = Output::open(path)?;
    let stats = write_workbook(store, run, previous.as_ref(), &mut out, options).await?;
    out.commit()?;
    Ok(stats)
}

/// The Keys sheet(s): every row of the run, in payer-id order.
async fn write_keys(
    workbook: &mut Workbook,
    store: &Store,
    run_id: i64,
    formats: &Formats,
    options: XlsxOptions,
) -> Result<u64, ReportError> {
    let xlsx = |source| ReportError::Xlsx { source };
    let page = options.page.max(1);
    let mut seq = sheet::SheetSeq::start(
        workbook,
        "Keys",
        &REPORT_HEADER,
        options.sheet_rows,
        &formats.header,
    )
    .map_err(xlsx)?;
    write_pages(
        page,
        String::new(),
        async |cursor: &String| {
            store
                .checks_page(run_id, cursor, &[], page)
                .await
                .map_err(ReportError::store(run_id))
        },
        |last: &CheckRecord| last.payer_id.clone(),
        |record| key_row(&mut seq, workbook, record, formats),
    )
    .await?;
    seq.finish(workbook).map_err(xlsx)
}

/// The page loop every sheet shares: fetches pages of `page` rows (each after the
/// cursor the previous page's last row gives, starting at `cursor`) and writes every row,
/// until a page comes back short.
async fn write_pages<R, C>(
    page: i64,
    mut cursor: C,
    mut fetch: impl AsyncFnMut(&C) -> Result<Vec<R>, ReportError>,
    after: impl Fn(&R) -> C,
    mut write: impl FnMut(&R) -> Result<(), XlsxError>,
) -> Result<(), ReportError> {
    loop {
        let rows = fetch(&cursor).await?;
        for row in &rows {
            write(row).map_err(|source| ReportError::Xlsx { source })?;
        }
        match rows.last() {
            Some(last) if full(&rows, page) => cursor = after(last),
            _ => return Ok(()),
        }
    }
}

fn full<T>(rows: &[T], page: i64) -> bool {
    i64::try_from(rows.len()).unwrap_or(i64::MAX) >= page
}

/// One Keys row: the CSV's cells, the status coloured, the times as date-times.
fn key_row(
    seq: &mut sheet::SheetSeq,
    workbook: &mut Workbook,
    record: &CheckRecord,
    formats: &Formats,
) -> Result<(), XlsxError> {
    let row = report_row(record);
    let cells = row.cells();
    let mut out = seq.next_row(workbook)?;
    let times = cells.len() - 2;
    for (col, cell) in cells.iter().enumerate().take(times) {
        let format = if col == 2 { formats.status(cell) } else { None };
        out.text(col, cell, format)?;
    }
    match excel_kst(record.checked_at) {
        Some(t) => out.datetime(times, &t, &formats.datetime)?,
        None => out.text(times, &row.checked_at_kst, None)?,
    }
    match excel_utc(record.checked_at) {
        Some(t) => out.datetime(times + 1, &t, &formats.datetime)?,
        None => out.text(times + 1, &row.checked_at_utc, None)?,
    }
    Ok(())
}

/// The Action sheet(s): newly gone keys first, then the other gone and failed keys, each
/// group by customer reference.
async fn write_action(
    workbook: &mut Workbook,
    store: &Store,
    run_id: i64,
    previous: Option<&RunRecord>,
    formats: &Formats,
    options: XlsxOptions,
) -> Result<u64, ReportError> {
    let xlsx = |source| ReportError::Xlsx { source };
    let page = options.page.max(1);
    let mut seq = sheet::SheetSeq::start(
        workbook,
        "Action",
        &ACTION_HEADER,
        options.sheet_rows,
        &formats.header,
    )
    .map_err(xlsx)?;
    let previous = previous.map(|p| p.id);
    for group in [ActionGroup::NewlyGone, ActionGroup::Rest] {
        write_pages(
            page,
            ActionCursor::default(),
            async |cursor: &ActionCursor| {
                store
                    .action_page(run_id, previous, group, cursor, page)
                    .await
                    .map_err(ReportError::store(run_id))
            },
            |last| ActionCursor {
                customer_ref: last.customer_ref.clone().unwrap_or_default(),
                payer_id: last.payer_id.clone(),
            },
            |record| action_row(&mut seq, workbook, record, group, formats),
        )
        .await?;
    }
    seq.finish(workbook).map_err(xlsx)
}

/// What the Action sheet's first column says.
pub fn action_label(group: ActionGroup, status: &str) -> &'static str {
    match (group, status) {
        (ActionGroup::NewlyGone, _) => "newly gone",
        (_, "gone") => "gone",
        _ => "failed",
    }
}

fn action_row(
    seq: &mut sheet::SheetSeq,
    workbook: &mut Workbook,
    record: &CheckRecord,
    group: ActionGroup,
    formats: &Formats,
) -> Result<(), XlsxError> {
    let row = report_row(record);
    let mut out = seq.next_row(workbook)?;
    out.text(0, action_label(group, &row.status), None)?;
    out.text(1, &row.customer_ref, None)?;
    out.text(2, &mask_payer_id(&record.payer_id), None)?;
    out.text(3, &row.status, formats.status(&row.status))?;
    out.text(4, &row.result_code, None)?;
    out.text(5, &row.result_msg, None)?;
    if let Some(t) = excel_kst(record.checked_at) {
        out.datetime(6, &t, &formats.datetime)?;
    }
    Ok(())
}

/// The Changes sheet(s): the changes against `previous`, as `changes` computes them (an
/// empty sheet when there is no previous completed run).
async fn write_changes(
    workbook: &mut Workbook,
    store: &Store,
    run_id: i64,
    previous: Option<&RunRecord>,
    formats: &Formats,
    options: XlsxOptions,
) -> Result<u64, ReportError> {
    let xlsx = |source| ReportError::Xlsx { source };
    let mut seq = sheet::SheetSeq::start(
        workbook,
        "Changes",
        &CHANGES_HEADER,
        options.sheet_rows,
        &formats.header,
    )
    .map_err(xlsx)?;
    if let Some(previous) = previous {
        let mut stream = ChangeStream::new(store, previous.id, run_id, options.page);
        while let Some(window) = stream.next_window().await? {
            for change in &window {
                let mut out = seq.next_row(workbook).map_err(xlsx)?;
                for (col, cell) in change.cells().iter().enumerate() {
                    let format = if col == 4 { formats.status(cell) } else { None };
                    out.text(col, cell, format).map_err(xlsx)?;
                }
            }
        }
    }
    seq.finish(workbook).map_err(xlsx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_labels() {
        assert_eq!(action_label(ActionGroup::NewlyGone, "gone"), "newly gone");
        assert_eq!(action_label(ActionGroup::Rest, "gone"), "gone");
        assert_eq!(action_label(ActionGroup::Rest, "failed"), "failed");
    }
}
