//! `report`: a run's rows as the finance CSV.

use super::{AppError, with_store};
use crate::exit::ExitStatus;
use crate::report::export::write_report;
use crate::report::select::resolve_run;
use crate::settings::ReportSettings;

pub(super) async fn report(settings: ReportSettings) -> Result<ExitStatus, AppError> {
    let ReportSettings {
        database,
        run,
        statuses,
        output,
        excel,
    } = settings;
    with_store(&database.database_url, async |store| {
        let run = resolve_run(store, run).await?;
        let rows = write_report(store, run.id, &statuses, &output, excel).await?;
        tracing::info!(run_id = run.id, rows, output = %output.display(), "report written");
        Ok(())
    })
    .await
}
