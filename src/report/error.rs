//! What can go wrong while reporting ([`ReportError`]), and the exit code each failure
//! ends a report command with.

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
