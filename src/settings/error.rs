//! A configuration that cannot run ([`ConfigError`], exit code 3), and the helper that
//! names the flag at fault.

use std::path::PathBuf;

use crate::report::ReportError;
use crate::simulator::SimError;

/// A configuration that cannot run: exit code 3.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set (see --help for the credentials the job needs)")]
    MissingEnv(&'static str),
    #[error("--payple-url {value:?}: {reason}")]
    BadOrigin { value: String, reason: String },
    #[error("cannot read --cust-key-file {path}: {source}")]
    CustKeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
    #[error(transparent)]
    Report(#[from] ReportError),
    /// `simulate`: its faults or its key file are refused.
    #[error(transparent)]
    Simulator(#[from] SimError),
}

impl ConfigError {
    /// `--resume` names a run whose stored source cannot be read back.
    pub fn unreadable_resumed_source(run_id: i64, reason: impl std::fmt::Display) -> Self {
        invalid(
            "--resume",
            format!("run {run_id} has an unreadable source: {reason}"),
        )
    }
}

pub(super) fn invalid(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        reason: reason.into(),
    }
}
