//! Why a run stopped early: [`RunError`], the one error type of the batch, which every
//! step of the pipeline returns.

use crate::exit::ExitStatus;
use crate::payple::PaypleError;
use crate::settings::ConfigError;
use crate::source::SourceError;
use crate::store::StoreError;
use crate::store::writer::WriterError;

/// Why a run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Payple(#[from] PaypleError),
    #[error(transparent)]
    Writer(#[from] WriterError),
    #[error("run {0} does not exist")]
    NoSuchRun(i64),
    #[error("--recheck-failed: {0}")]
    NotRecheckable(String),
    #[error("interrupted before the key list was complete")]
    Interrupted,
}

impl RunError {
    /// The exit code this error ends the process with.
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Self::Config(_) | Self::NoSuchRun(_) | Self::NotRecheckable(_) => ExitStatus::Config,
            Self::Source(e) if e.is_bad_input() => ExitStatus::Config,
            Self::Store(StoreError::LeaseHeld { .. }) => ExitStatus::Config,
            Self::Payple(e) if e.is_configuration() => ExitStatus::Config,
            Self::Interrupted => ExitStatus::Interrupted,
            _ => ExitStatus::Internal,
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn store_error() -> StoreError {
        StoreError::Query {
            doing: "writing results",
            source: sqlx::Error::PoolTimedOut,
        }
    }

    #[test]
    fn run_errors_name_their_exit_code() {
        assert_eq!(RunError::NoSuchRun(1).exit_status(), ExitStatus::Config);
        assert_eq!(RunError::Interrupted.exit_status(), ExitStatus::Interrupted);
        assert_eq!(
            RunError::Store(store_error()).exit_status(),
            ExitStatus::Internal
        );
        let held = RunError::Store(StoreError::LeaseHeld {
            name: "reconcile".to_owned(),
            run_id: 1,
            holder: "other".to_owned(),
            expires_at: chrono::DateTime::UNIX_EPOCH,
        });
        assert_eq!(held.exit_status(), ExitStatus::Config);
    }
}
