//! `report`: a run's rows as the finance CSV, or the run as the finance workbook.

use super::error::AppError;
use super::open::with_store;
use crate::exit::ExitStatus;
use crate::report::deliver::write_run_report;
use crate::report::select::resolve_run;
use crate::settings::ReportSettings;

pub(super) async fn report(settings: ReportSettings) -> Result<ExitStatus, AppError> {
    let ReportSettings {
        database,
        run,
        statuses,
        output,
        shape,
    } = settings;
    with_store(&database.database_url, async |store| {
        let run = resolve_run(store, run).await?;
        let rows = write_run_report(store, &run, &statuses, &output, shape).await?;
        tracing::info!(run_id = run.id, rows, output = %output.display(), "report written");
        Ok(())
    })
    .await
}
