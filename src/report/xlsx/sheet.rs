//! A table that spans as many worksheets as it needs: `Keys`, `Keys (2)`, … each with
//! the header row, frozen, under an autofilter, its columns sized to the text written
//! (East Asian wide characters count twice), in constant-memory mode (rows in order).

use rust_xlsxwriter::{ExcelDateTime, Format, Workbook, Worksheet, XlsxError};

use super::super::neutral::neutralise;
use super::super::table::display_width;

/// Excel's rows per worksheet.
pub const EXCEL_MAX_ROWS: u32 = 1_048_576;

/// Column widths, in characters, that the sheets keep within.
const MIN_WIDTH: usize = 6;
const MAX_WIDTH: usize = 60;
/// The width of a date-time column (`2026-11-27 02:05:03`).
pub const DATETIME_WIDTH: usize = 20;

/// The width, in Excel characters, that fits text `width` cells wide: a little padding,
/// within [`MIN_WIDTH`]..=[`MAX_WIDTH`].
pub fn column_width(width: usize) -> f64 {
    (width + 2).clamp(MIN_WIDTH, MAX_WIDTH) as f64
}

/// The name of part `part` (1-based) of a table: `Keys`, `Keys (2)`, …
pub fn part_name(base: &str, part: u32) -> String {
    if part <= 1 {
        base.to_owned()
    } else {
        format!("{base} ({part})")
    }
}

/// One table written across worksheets.
pub struct SheetSeq {
    base: &'static str,
    header: &'static [&'static str],
    /// Rows per worksheet, header included.
    max_rows: u32,
    header_format: Format,
    /// The workbook index of the worksheet being written.
    index: usize,
    /// The next row of that worksheet.
    row: u32,
    part: u32,
    widths: Vec<usize>,
    rows: u64,
}

impl SheetSeq {
    /// Starts the table's first worksheet. `max_rows` (header included) is at least 2
    /// and at most Excel's limit.
    pub fn start(
        workbook: &mut Workbook,
        base: &'static str,
        header: &'static [&'static str],
        max_rows: u32,
        header_format: &Format,
    ) -> Result<Self, XlsxError> {
        let mut seq = Self {
            base,
            header,
            max_rows: max_rows.clamp(2, EXCEL_MAX_ROWS),
            header_format: header_format.clone(),
            index: 0,
            row: 0,
            part: 0,
            widths: Vec::new(),
            rows: 0,
        };
        seq.new_part(workbook)?;
        Ok(seq)
    }

    fn new_part(&mut self, workbook: &mut Workbook) -> Result<(), XlsxError> {
        self.part += 1;
        let sheet = workbook.add_worksheet_with_constant_memory()?;
        sheet.set_name(part_name(self.base, self.part))?;
        for (col, title) in self.header.iter().enumerate() {
            sheet.write_string_with_format(0, col_num(col), *title, &self.header_format)?;
        }
        self.index = workbook.worksheets().len() - 1;
        self.row = 1;
        self.widths = self.header.iter().map(|h| display_width(h)).collect();
        Ok(())
    }

    /// Freezes the header, puts the autofilter over the rows and sizes the columns.
    fn close_part(&mut self, workbook: &mut Workbook) -> Result<(), XlsxError> {
        let sheet = workbook.worksheet_from_index(self.index)?;
        sheet.set_freeze_panes(1, 0)?;
        let last_col = col_num(self.header.len().saturating_sub(1));
        sheet.autofilter(0, 0, self.row.saturating_sub(1), last_col)?;
        for (col, width) in self.widths.iter().enumerate() {
            sheet.set_column_width(col_num(col), column_width(*width))?;
        }
        Ok(())
    }

    /// The worksheet and row the next row goes to (a new worksheet when this one is full).
    pub fn next_row<'w>(&mut self, workbook: &'w mut Workbook) -> Result<Row<'w, '_>, XlsxError> {
        if self.row >= self.max_rows {
            self.close_part(workbook)?;
            self.new_part(workbook)?;
        }
        let row = self.row;
        self.row += 1;
        self.rows += 1;
        Ok(Row {
            sheet: workbook.worksheet_from_index(self.index)?,
            row,
            widths: &mut self.widths,
        })
    }

    /// Ends the table; returns its data rows (all parts).
    pub fn finish(mut self, workbook: &mut Workbook) -> Result<u64, XlsxError> {
        self.close_part(workbook)?;
        Ok(self.rows)
    }
}

/// One row being written: cells go in column order.
pub struct Row<'w, 's> {
    sheet: &'w mut Worksheet,
    row: u32,
    widths: &'s mut Vec<usize>,
}

impl Row<'_, '_> {
    fn widen(&mut self, col: usize, width: usize) {
        if let Some(w) = self.widths.get_mut(col) {
            *w = (*w).max(width);
        }
    }

    /// A text cell, neutralised, optionally formatted. Empty text leaves the cell blank.
    pub fn text(
        &mut self,
        col: usize,
        text: &str,
        format: Option<&Format>,
    ) -> Result<(), XlsxError> {
        if text.is_empty() {
            return Ok(());
        }
        let text = neutralise(text);
        self.widen(col, display_width(&text));
        match format {
            Some(f) => self
                .sheet
                .write_string_with_format(self.row, col_num(col), text, f)?,
            None => self.sheet.write_string(self.row, col_num(col), text)?,
        };
        Ok(())
    }

    /// A date-time cell in `format`.
    pub fn datetime(
        &mut self,
        col: usize,
        value: &ExcelDateTime,
        format: &Format,
    ) -> Result<(), XlsxError> {
        self.widen(col, DATETIME_WIDTH - 2);
        self.sheet
            .write_datetime_with_format(self.row, col_num(col), value, format)?;
        Ok(())
    }
}

/// A column index as Excel's column number (tables here have a handful of columns).
pub fn col_num(col: usize) -> u16 {
    u16::try_from(col).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_widths() {
        assert_eq!(part_name("Keys", 1), "Keys");
        assert_eq!(part_name("Keys", 2), "Keys (2)");
        assert_eq!(column_width(0), 6.0);
        // 홍길동상사 is five wide characters: ten cells.
        assert_eq!(column_width(display_width("홍길동상사")), 12.0);
        assert_eq!(column_width(500), 60.0);
    }
}
