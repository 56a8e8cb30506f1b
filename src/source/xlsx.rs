//! The workbook key reader: one sheet of an `.xlsx` file, its first non-empty row the
//! header (the CSV's column names), read cell by cell with calamine's streaming reader on
//! a blocking thread into a bounded channel.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use calamine::{DataRef, Reader, Xlsx, XlsxError};
use tokio::sync::mpsc;

use super::columns::ColumnNames;
use super::error::SourceError;
use super::item::{CHUNK, Item, ItemReceiver};

type Workbook = Xlsx<BufReader<File>>;

/// Reads `sheet` (the first if `None`) of the workbook at `path` in a blocking task.
pub fn spawn(path: PathBuf, sheet: Option<String>, columns: ColumnNames) -> ItemReceiver {
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut chunk = Vec::with_capacity(CHUNK);
        let result = read_items(&path, sheet.as_deref(), &columns, |item| {
            chunk.push(item);
            if chunk.len() >= CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                return tx.blocking_send(Ok(full)).is_ok();
            }
            true
        });
        match result {
            Ok(true) if !chunk.is_empty() => {
                let _ = tx.blocking_send(Ok(chunk));
            }
            Ok(_) => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
            }
        }
    });
    rx
}

fn open(path: &Path) -> Result<Workbook, SourceError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|source| SourceError::Io {
        path: name.clone(),
        source,
    })?;
    Xlsx::new(BufReader::with_capacity(64 * 1024, file)).map_err(|e| workbook_error(&name, &e))
}

fn workbook_error(name: &str, e: &XlsxError) -> SourceError {
    let reason = match e {
        XlsxError::Zip(_) => format!("not an .xlsx workbook ({e})"),
        XlsxError::Password => "the workbook is password-protected".to_owned(),
        _ => format!("cannot read the workbook: {e}"),
    };
    SourceError::Workbook {
        path: name.to_owned(),
        reason,
    }
}

/// The name of the workbook's first sheet.
pub fn first_sheet(path: &Path) -> Result<String, SourceError> {
    open(path)?
        .sheet_names()
        .into_iter()
        .next()
        .ok_or_else(|| SourceError::Workbook {
            path: path.display().to_string(),
            reason: "the workbook has no sheet".to_owned(),
        })
}

/// Reads the rows of `sheet`, calling `emit` for each until it returns `false`; returns
/// whether every row was emitted. Only the current row is held, whatever the sheet's size
/// (the workbook's shared-strings table is held whole, as calamine reads it).
pub fn read_items(
    path: &Path,
    sheet: Option<&str>,
    columns: &ColumnNames,
    mut emit: impl FnMut(Item) -> bool,
) -> Result<bool, SourceError> {
    let name = path.display().to_string();
    let mut workbook = open(path)?;
    let sheet = sheet_named(&workbook.sheet_names(), sheet, &name)?;
    let at = format!("{name} sheet {sheet}");
    let mut cells = workbook
        .worksheet_cells_reader(&sheet)
        .map_err(|e| workbook_error(&at, &e))?;
    let mut rows = Rows {
        at: &at,
        columns,
        header: None,
    };
    // The cells of one row, in column order (the stream is in row order).
    let mut row: Vec<(u32, String)> = Vec::new();
    let mut row_at = 0u32;
    loop {
        let cell = cells.next_cell().map_err(|e| workbook_error(&at, &e))?;
        let next_row = cell.as_ref().map(|c| c.get_position().0);
        if next_row != Some(row_at) && !row.is_empty() {
            if let Some(item) = rows.take(row_at, &row)?
                && !emit(item)
            {
                return Ok(false);
            }
            row.clear();
        }
        let Some(cell) = cell else { break };
        row_at = cell.get_position().0;
        if let Some(text) = cell_text(cell.get_value()) {
            row.push((cell.get_position().1, text));
        }
    }
    if rows.header.is_none() {
        return Err(SourceError::Workbook {
            path: at,
            reason: "the sheet is empty (expected a header row with a `payer_id` column)"
                .to_owned(),
        });
    }
    Ok(true)
}

/// The sheet to read: the one `--sheet` names (it must exist), else the first.
fn sheet_named(names: &[String], sheet: Option<&str>, name: &str) -> Result<String, SourceError> {
    match sheet {
        Some(s) if names.iter().any(|n| n == s) => Ok(s.to_owned()),
        Some(s) => Err(SourceError::Workbook {
            path: name.to_owned(),
            reason: format!(
                "no sheet named {s:?} (sheets: {})",
                names
                    .iter()
                    .map(|n| format!("{n:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
        None => names.first().cloned().ok_or_else(|| SourceError::Workbook {
            path: name.to_owned(),
            reason: "the workbook has no sheet".to_owned(),
        }),
    }
}

/// Turns a sheet's non-empty rows into items: the first is the header.
struct Rows<'a> {
    /// `FILE sheet NAME`.
    at: &'a str,
    columns: &'a ColumnNames,
    /// Where the key and reference columns are, once the header was read.
    header: Option<(u32, Option<u32>)>,
}

impl Rows<'_> {
    /// The item of the row at `index` (from 0) holding `cells` (column, text); `None` for
    /// the header.
    fn take(&mut self, index: u32, cells: &[(u32, String)]) -> Result<Option<Item>, SourceError> {
        let number = u64::from(index) + 1;
        let Some((id_col, ref_col)) = self.header else {
            let width = cells
                .iter()
                .map(|(c, _)| *c as usize + 1)
                .max()
                .unwrap_or(0);
            let mut names = vec![""; width];
            for (c, text) in cells {
                names[*c as usize] = text;
            }
            let found = self
                .columns
                .find(&names)
                .map_err(|source| SourceError::MissingColumn {
                    at: format!("{} row {number}", self.at),
                    source,
                })?;
            self.header = Some((
                u32::try_from(found.id).unwrap_or(u32::MAX),
                found
                    .reference
                    .map(|r| u32::try_from(r).unwrap_or(u32::MAX)),
            ));
            return Ok(None);
        };
        let get = |col: u32| {
            cells
                .iter()
                .find(|(c, _)| *c == col)
                .map(|(_, t)| t.as_str())
        };
        let raw = get(id_col).unwrap_or_default();
        let customer_ref = ref_col
            .and_then(get)
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(|r| r.chars().take(255).collect());
        let seq = i64::from(index) + 1;
        Ok(Some(Item::from_raw(seq, raw, customer_ref, || {
            format!("{} row {number}", self.at)
        })))
    }
}

/// A cell as text, as Excel shows it without number formats: whole numbers without a
/// decimal point, dates as `YYYY-MM-DD` (with ` HH:MM:SS` if they have a time). Empty
/// cells, blank text and formula errors (`#N/A`) are no value: `None`.
pub fn cell_text(value: &DataRef<'_>) -> Option<String> {
    let text = match value {
        DataRef::Empty | DataRef::Error(_) => return None,
        DataRef::String(s) | DataRef::DateTimeIso(s) | DataRef::DurationIso(s) => s.clone(),
        DataRef::SharedString(s) => (*s).to_owned(),
        DataRef::Int(i) => i.to_string(),
        DataRef::Float(f) => number_text(*f),
        DataRef::Bool(b) => if *b { "TRUE" } else { "FALSE" }.to_owned(),
        DataRef::DateTime(dt) if dt.is_datetime() => {
            let (y, mo, d, h, mi, s, _) = dt.to_ymd_hms_milli();
            if (h, mi, s) == (0, 0, 0) {
                format!("{y:04}-{mo:02}-{d:02}")
            } else {
                format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
            }
        }
        DataRef::DateTime(dt) => number_text(dt.as_f64()),
    };
    (!text.trim().is_empty()).then_some(text)
}

/// A number cell's value: whole numbers exactly (up to 2^53), others in the shortest form
/// that reads back as the same number.
fn number_text(f: f64) -> String {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if f.fract() == 0.0 && f.abs() <= EXACT {
        // Within ±2^53 a whole f64 is an exact i64.
        format!("{}", f as i64)
    } else {
        format!("{f}")
    }
}

#[cfg(test)]
mod tests {
    use calamine::{CellErrorType, ExcelDateTime, ExcelDateTimeType};

    use super::*;

    #[test]
    fn cells_read_as_displayed() {
        let date = |v| DataRef::DateTime(ExcelDateTime::new(v, ExcelDateTimeType::DateTime, false));
        let cases: [(DataRef<'_>, Option<&str>); 11] = [
            (DataRef::Float(1234567890123.0), Some("1234567890123")),
            (DataRef::Float(-12.0), Some("-12")),
            (DataRef::Float(0.1), Some("0.1")),
            (DataRef::Int(42), Some("42")),
            (DataRef::SharedString("홍길동상사"), Some("홍길동상사")),
            (DataRef::String("  ".into()), None),
            (DataRef::Bool(true), Some("TRUE")),
            (date(45943.0), Some("2025-10-13")),
            (date(45943.5), Some("2025-10-13 12:00:00")),
            (DataRef::Error(CellErrorType::NA), None),
            (DataRef::Empty, None),
        ];
        for (value, want) in cases {
            assert_eq!(cell_text(&value).as_deref(), want, "{value:?}");
        }
    }
}
