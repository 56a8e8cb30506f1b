//! Reports for finance: a run's rows as CSV, the changes between two runs, a summary,
//! and Prometheus metrics at the end of a run.
//!
//! # Layout
//! Rows are formatted by pure functions and written by generic writers over `impl Write`
//! (tests point them at a `Vec<u8>`); [`export`] streams a run from the store into them and
//! [`select`] resolves which runs a report is about. The subcommands calling them live in the app layer.
//! - [`csv`]: the finance CSV (masking, KST/UTC times, formula escaping) and its writer.
//! - [`changes`]: classifying one key between two runs, and the flat-memory merge.
//! - [`summary`]: counts per status, card company and bank, as a text table.
//! - [`metrics`]: Prometheus text format, written atomically.
//! - [`table`]: plain-text tables that line up Korean text on a terminal.
//! - [`output`]: `-` for stdout or a file that appears only once complete.
//! - [`xlsx`]: the finance workbook (Summary, Action, Keys, Changes sheets, charts).
//! - [`deliver`]: the report in the format asked for, and the run notification.
//! - [`notice`]: what a run notification says, read from the store.
//! - [`neutral`]: cell text made harmless for spreadsheets (controls, bidi, formulas).
//! - `error`: [`ReportError`] and the exit code of each failure.

pub mod changes;
pub mod csv;
pub mod deliver;
pub mod export;
pub mod metrics;
pub mod neutral;
pub mod notice;
pub mod output;
pub mod select;
pub mod summary;
pub mod table;
pub mod xlsx;

mod error;

pub use error::ReportError;
pub use select::{RunSelector, parse_statuses};
