//! The Summary sheet: the run (id, state, times in KST, source, duration, exit code), keys
//! per status, per card company and per bank, a pie chart of the status split and a
//! column chart of active / gone / failed across the last completed runs. The card and
//! bank tables show the [`TOP_NAMES`] names with the most keys and one "other" row.

use rust_xlsxwriter::{Chart, ChartDataLabel, Workbook, Worksheet, XlsxError};

use super::super::error::ReportError;
use super::super::summary::{self as run_summary, Summary};
use super::sheet::{col_num, column_width};
use chrono::{DateTime, Utc};

use super::cells::{Formats, excel_kst};
use crate::domain::KeyStatus;
use crate::report::neutral::neutralise;
use crate::report::table::display_width;
use crate::store::reports::GroupCount;
use crate::store::{RunRecord, Store};

/// Completed runs the trend chart shows.
pub const TREND_RUNS: i64 = 14;

/// Card companies (and banks) the sheet names; the rest share one "other" row, so a
/// source with thousands of unusual names still gives a sheet of a few dozen rows.
pub const TOP_NAMES: usize = 30;

/// The sheet's name (charts refer to it).
const NAME: &str = "Summary";

/// Everything the Summary sheet shows.
pub struct Facts {
    pub summary: Summary,
    pub previous: Option<i64>,
    /// The last completed runs up to this one, oldest first.
    pub trend: Vec<RunRecord>,
}

/// Reads the counts the sheet shows (the database counts; no row is held).
pub async fn load(
    store: &Store,
    run: &RunRecord,
    previous: Option<&RunRecord>,
) -> Result<Facts, ReportError> {
    let summary = run_summary::load(store, run.clone()).await?;
    let trend = store
        .completed_runs_up_to(run.id, TREND_RUNS)
        .await
        .map_err(ReportError::store(run.id))?;
    Ok(Facts {
        summary,
        previous: previous.map(|p| p.id),
        trend,
    })
}

/// Seconds from `started` to `finished`, if the run finished.
pub fn duration_secs(started: DateTime<Utc>, finished: Option<DateTime<Utc>>) -> Option<f64> {
    Some((finished? - started).num_milliseconds() as f64 / 1000.0)
}

/// A cursor over the sheet's rows, remembering the widest text per column.
struct Cursor<'a> {
    sheet: &'a mut Worksheet,
    row: u32,
    widths: [usize; 4],
}

impl Cursor<'_> {
    fn text(&mut self, col: usize, text: &str) -> Result<(), XlsxError> {
        let text = neutralise(text);
        if let Some(w) = self.widths.get_mut(col) {
            *w = (*w).max(display_width(&text));
        }
        self.sheet.write_string(self.row, col_num(col), text)?;
        Ok(())
    }

    fn number(&mut self, col: usize, n: f64) -> Result<(), XlsxError> {
        self.sheet.write_number(self.row, col_num(col), n)?;
        Ok(())
    }

    fn heading(&mut self, text: &str, formats: &Formats) -> Result<(), XlsxError> {
        self.row += 1;
        self.sheet
            .write_string_with_format(self.row, 0, text, &formats.header)?;
        self.row += 1;
        Ok(())
    }
}

/// Writes the Summary sheet (the first sheet of the workbook).
pub fn write(workbook: &mut Workbook, facts: &Facts, formats: &Formats) -> Result<(), XlsxError> {
    let sheet = workbook.add_worksheet();
    sheet.set_name(NAME)?;
    // Printed (or exported to PDF), the tables and both charts fit one landscape page.
    sheet.set_landscape().set_print_fit_to_pages(1, 1);
    let mut c = Cursor {
        sheet,
        row: 0,
        widths: [14, 10, 10, 10],
    };
    c.sheet
        .write_string_with_format(0, 0, "Payple billing keys: run summary", &formats.title)?;
    c.row = 2;
    run_block(&mut c, facts, formats)?;
    c.heading("Keys per status", formats)?;
    let status_rows = status_block(&mut c, &facts.summary)?;
    c.heading("Active card keys per card company", formats)?;
    groups_block(&mut c, &facts.summary.cards, "no active card keys")?;
    c.heading("Active bank-account keys per bank", formats)?;
    groups_block(&mut c, &facts.summary.banks, "no active bank-account keys")?;
    c.heading("Last completed runs", formats)?;
    let trend_rows = trend_block(&mut c, &facts.trend, formats)?;
    for (col, width) in c.widths.iter().enumerate() {
        c.sheet
            .set_column_width(col_num(col), column_width(*width))?;
    }
    c.sheet.set_column_width(1, column_width(20))?;
    insert_charts(c.sheet, status_rows, trend_rows)
}

/// Label/value lines about the run.
fn run_block(c: &mut Cursor<'_>, facts: &Facts, formats: &Formats) -> Result<(), XlsxError> {
    let run = &facts.summary.run;
    let lines: [(&str, String); 6] = [
        ("run id", run.id.to_string()),
        ("run key", run.run_key.clone().unwrap_or_default()),
        ("state", run.state.as_str().to_owned()),
        ("source", run.source.clone()),
        (
            "exit code",
            run.exit_code.map(|c| c.to_string()).unwrap_or_default(),
        ),
        (
            "compared with run",
            facts
                .previous
                .map(|p| p.to_string())
                .unwrap_or_else(|| "none".to_owned()),
        ),
    ];
    for (label, value) in &lines {
        c.text(0, label)?;
        c.text(1, value)?;
        c.row += 1;
    }
    for (label, time) in [
        ("started (KST)", Some(run.started_at)),
        ("finished (KST)", run.finished_at),
    ] {
        c.text(0, label)?;
        if let Some(t) = time.and_then(excel_kst) {
            c.sheet
                .write_datetime_with_format(c.row, 1, &t, &formats.datetime)?;
        }
        c.row += 1;
    }
    c.text(0, "duration (s)")?;
    if let Some(secs) = duration_secs(run.started_at, run.finished_at) {
        c.number(1, secs)?;
    }
    c.row += 1;
    Ok(())
}

/// Rows of the status table: (first, last) data rows, for the pie chart.
fn status_block(c: &mut Cursor<'_>, s: &Summary) -> Result<(u32, u32), XlsxError> {
    c.text(0, "status")?;
    c.text(1, "keys")?;
    c.row += 1;
    let first = c.row;
    for status in KeyStatus::ALL {
        c.text(0, status.as_str())?;
        c.number(1, s.counts.get(status) as f64)?;
        c.row += 1;
    }
    let last = c.row - 1;
    c.text(0, "total")?;
    c.number(1, s.counts.total() as f64)?;
    c.row += 1;
    Ok((first, last))
}

fn groups_block(c: &mut Cursor<'_>, rows: &[GroupCount], empty: &str) -> Result<(), XlsxError> {
    if rows.is_empty() {
        c.text(0, empty)?;
        c.row += 1;
        return Ok(());
    }
    for (name, keys) in top_names(rows, TOP_NAMES) {
        c.text(0, &name)?;
        c.number(1, keys as f64)?;
        c.row += 1;
    }
    Ok(())
}

/// The first `top` groups (the store gives them by count, most first) by name, then one
/// `other (N names)` row adding up the rest; every key is counted once.
pub fn top_names(rows: &[GroupCount], top: usize) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = rows
        .iter()
        .take(top)
        .map(|g| (g.shown_name().to_owned(), g.keys))
        .collect();
    let rest = rows.get(top..).unwrap_or_default();
    if !rest.is_empty() {
        let keys = rest.iter().map(|g| g.keys).sum();
        out.push((format!("other ({} names)", rest.len()), keys));
    }
    out
}

/// The trend table: run, started (KST), active, gone, failed. Its (first, last) data
/// rows, `None` when empty.
fn trend_block(
    c: &mut Cursor<'_>,
    runs: &[RunRecord],
    formats: &Formats,
) -> Result<Option<(u32, u32)>, XlsxError> {
    for (col, title) in ["run", "started (KST)", "active", "gone", "failed"]
        .iter()
        .enumerate()
    {
        c.text(col, title)?;
    }
    c.row += 1;
    if runs.is_empty() {
        c.text(0, "no completed run yet")?;
        return Ok(None);
    }
    let first = c.row;
    for run in runs {
        c.text(0, &format!("run {}", run.id))?;
        if let Some(t) = excel_kst(run.started_at) {
            c.sheet
                .write_datetime_with_format(c.row, 1, &t, &formats.datetime)?;
        }
        c.number(2, run.counts.active as f64)?;
        c.number(3, run.counts.gone as f64)?;
        c.number(4, run.counts.failed as f64)?;
        c.row += 1;
    }
    Ok(Some((first, c.row - 1)))
}

/// The pie chart of the status split and the column chart of the trend, right of the
/// tables.
fn insert_charts(
    sheet: &mut Worksheet,
    (first, last): (u32, u32),
    trend: Option<(u32, u32)>,
) -> Result<(), XlsxError> {
    let mut pie = Chart::new_pie();
    pie.title().set_name("Keys per status");
    pie.add_series()
        .set_name("keys")
        .set_categories((NAME, first, 0, last, 0))
        .set_values((NAME, first, 1, last, 1))
        .set_data_label(ChartDataLabel::new().show_percentage())
        .set_point_colors(&["#63BE7B", "#F8696B", "#FFC000", "#A6A6A6"]);
    sheet.insert_chart(1, 6, &pie)?;
    if let Some((first, last)) = trend {
        let mut columns = Chart::new_column();
        columns
            .title()
            .set_name("Active, gone and failed keys per run");
        for (col, name, color) in [
            (2, "active", "#63BE7B"),
            (3, "gone", "#F8696B"),
            (4, "failed", "#FFC000"),
        ] {
            columns
                .add_series()
                .set_name(name)
                .set_categories((NAME, first, 0, last, 0))
                .set_values((NAME, first, col, last, col))
                .set_format(
                    rust_xlsxwriter::ChartFormat::new()
                        .set_solid_fill(rust_xlsxwriter::ChartSolidFill::new().set_color(color)),
                );
        }
        sheet.insert_chart(17, 6, &columns)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_from_stored_times() {
        let at = |text| crate::store::time::parse_time(text).expect("a time");
        assert_eq!(
            duration_secs(
                at("2026-11-26T17:00:00.000Z"),
                Some(at("2026-11-26T17:14:40.500Z"))
            ),
            Some(880.5)
        );
        assert_eq!(duration_secs(at("2026-11-26T17:00:00Z"), None), None);
    }

    fn group(name: Option<&str>, keys: i64) -> GroupCount {
        GroupCount {
            name: name.map(str::to_owned),
            keys,
        }
    }

    #[test]
    fn the_top_names_and_one_other_row() {
        let rows = [
            group(Some("신한카드"), 9),
            group(None, 5),
            group(Some("BC카드"), 3),
            group(Some("x"), 2),
            group(Some("y"), 1),
        ];
        assert_eq!(
            top_names(&rows, 2),
            [
                ("신한카드".to_owned(), 9),
                ("(not reported)".to_owned(), 5),
                ("other (3 names)".to_owned(), 6),
            ]
        );
        // No "other" row when every name fits.
        assert_eq!(top_names(&rows, 5).len(), 5);
        assert_eq!(top_names(&rows, 9).len(), 5);
        assert!(top_names(&[], 30).is_empty());
    }
}
