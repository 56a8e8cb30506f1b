//! The `report`, `changes` and `summary` commands, and what `run` writes when it ends.

use crate::cli::{ChangesArgs, ReportArgs, SummaryArgs};
use crate::exit::ExitStatus;
use crate::pipeline::RunSummary;
use crate::settings::RunSettings;
use crate::store::Store;

pub async fn report(_args: ReportArgs) -> ExitStatus {
    ExitStatus::Internal
}

pub async fn changes(_args: ChangesArgs) -> ExitStatus {
    ExitStatus::Internal
}

pub async fn summary(_args: SummaryArgs) -> ExitStatus {
    ExitStatus::Internal
}

pub async fn after_run(
    _settings: &RunSettings,
    _store: &Store,
    _summary: &RunSummary,
) -> Result<(), ExitStatus> {
    Ok(())
}
