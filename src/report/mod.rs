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

use std::path::PathBuf;

use crate::domain::KeyStatus;
use crate::exit::ExitStatus;
use crate::store::StoreError;

/// What can go wrong while reporting.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("--run {0:?} is neither a run id nor `latest`")]
    BadRunSelector(String),
    #[error("unknown status {given:?} in --status (use {allowed})", allowed = status_names())]
    UnknownStatus { given: String },
    #[error("run {0} does not exist")]
    NoSuchRun(i64),
    #[error("the results database has no runs yet")]
    NoRuns,
    #[error("{0}")]
    NotEnoughRuns(String),
    #[error("the results database {path} does not exist")]
    NoDatabase { path: PathBuf },
    #[error("cannot open the results database: {0}")]
    Connect(#[source] StoreError),
    #[error("cannot read run {run_id}: {source}")]
    Store {
        run_id: i64,
        #[source]
        source: StoreError,
    },
    #[error("cannot list runs: {0}")]
    Runs(#[source] StoreError),
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("the notification reached {sent} of {total} webhooks")]
    NotDelivered { sent: u32, total: u32 },
    #[error("cannot build the workbook: {source}")]
    Xlsx {
        #[source]
        source: rust_xlsxwriter::XlsxError,
    },
    #[error(
        "an xlsx workbook is binary: not written to a terminal (give --output FILE, or redirect stdout)"
    )]
    BinaryToTerminal,
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ReportError {
    /// The exit code this error ends the command with: 3 for what the user named wrongly
    /// (a run, a status, a database), 1 for I/O and database failures.
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Self::BadRunSelector(_)
            | Self::UnknownStatus { .. }
            | Self::NoSuchRun(_)
            | Self::NoRuns
            | Self::NotEnoughRuns(_)
            | Self::NoDatabase { .. }
            | Self::Connect(_)
            | Self::BinaryToTerminal
            | Self::Unsupported(_) => ExitStatus::Config,
            Self::Store { .. }
            | Self::Runs(_)
            | Self::Write { .. }
            | Self::Xlsx { .. }
            | Self::NotDelivered { .. } => ExitStatus::Internal,
        }
    }

    /// A write error on `path`.
    pub(crate) fn write(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Write {
            path: path.to_owned(),
            source,
        }
    }

    /// A database error while reading `run_id`.
    pub(crate) fn store(run_id: i64) -> impl FnOnce(StoreError) -> Self {
        move |source| Self::Store { run_id, source }
    }
}

fn status_names() -> String {
    KeyStatus::ALL
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses `--status` values (already split at commas; blanks ignored, case-insensitive).
/// An empty list means every status.
pub fn parse_statuses(values: &[String]) -> Result<Vec<KeyStatus>, ReportError> {
    let mut statuses = Vec::new();
    for value in values {
        let name = value.trim();
        if name.is_empty() {
            continue;
        }
        let status = KeyStatus::parse(&name.to_ascii_lowercase()).ok_or_else(|| {
            ReportError::UnknownStatus {
                given: name.to_owned(),
            }
        })?;
        if !statuses.contains(&status) {
            statuses.push(status);
        }
    }
    Ok(statuses)
}

/// Which run a command is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunSelector {
    /// The newest completed run (none completed: exit 3).
    Latest,
    Id(i64),
}

impl RunSelector {
    /// Parses `--run`: a run id or `latest`.
    pub fn parse(value: &str) -> Result<Self, ReportError> {
        let value = value.trim();
        if value.eq_ignore_ascii_case("latest") {
            return Ok(Self::Latest);
        }
        value
            .parse()
            .map(Self::Id)
            .map_err(|_| ReportError::BadRunSelector(value.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_parse_case_insensitively_and_reject_unknown_names() {
        let given = ["Active".to_owned(), " gone ".to_owned(), String::new()];
        assert_eq!(
            parse_statuses(&given).unwrap(),
            vec![KeyStatus::Active, KeyStatus::Gone]
        );
        assert!(parse_statuses(&[]).unwrap().is_empty());
        let err = parse_statuses(&["active".to_owned(), "expired".to_owned()]).unwrap_err();
        assert_eq!(err.exit_status(), ExitStatus::Config);
        let text = err.to_string();
        assert!(text.contains("\"expired\"") && text.contains("active, gone, failed, rejected"));
    }

    #[test]
    fn run_selectors() {
        assert_eq!(RunSelector::parse("latest").unwrap(), RunSelector::Latest);
        assert_eq!(RunSelector::parse(" 12 ").unwrap(), RunSelector::Id(12));
        let err = RunSelector::parse("yesterday").unwrap_err();
        assert_eq!(err.exit_status(), ExitStatus::Config);
    }
}
