//! `summary`: counts per status, card company and bank, as text on stdout.

use std::io::Write;
use std::path::Path;

use super::error::AppError;
use super::open::with_store;
use crate::exit::ExitStatus;
use crate::report::output::Output;
use crate::report::select::resolve_run;
use crate::report::{ReportError, summary as run_summary};
use crate::settings::SummarySettings;

pub(super) async fn summary(settings: SummarySettings) -> Result<ExitStatus, AppError> {
    with_store(&settings.database.database_url, async |store| {
        let run = resolve_run(store, settings.run).await?;
        let summary = run_summary::load(store, run).await?;
        let mut out = Output::stdout();
        out.write_all(run_summary::render(&summary).as_bytes())
            .map_err(ReportError::write(Path::new("-")))?;
        out.commit()
    })
    .await
}
