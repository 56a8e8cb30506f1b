//! `changes`: keys whose status (or card, or account) changed between two runs, as a text
//! table, CSV, or the per-key event objects as JSON lines (`--format jsonl`).

use std::path::PathBuf;

use super::error::AppError;
use super::open::with_store;
use crate::exit::ExitStatus;
use crate::report::ReportError;
use crate::report::changes::{ChangeStream, ChangeWriter, PAGE_ROWS};
use crate::report::output::Output;
use crate::report::select::{changes_title, resolve_pair};
use crate::settings::ChangesSettings;
use crate::store::{RunRecord, RunState, Store};

pub(super) async fn changes(settings: ChangesSettings) -> Result<ExitStatus, AppError> {
    with_store(&settings.database.database_url, async |store| {
        let (before, after) = resolve_pair(store, settings.since, settings.run).await?;
        warn_unfinished(&[&before, &after]);
        if settings.jsonl {
            return super::events::write_jsonl(store, settings.output.as_deref(), &before, &after)
                .await;
        }
        write_changes(store, &settings, &before, &after).await
    })
    .await
}

/// Runs that did not complete make keys look missing or new.
fn warn_unfinished(runs: &[&RunRecord]) {
    for run in runs {
        if run.state != RunState::Completed {
            tracing::warn!(
                run_id = run.id,
                state = run.state.as_str(),
                "run is not completed: keys it has not checked show as missing or new"
            );
        }
    }
}

/// Streams the merge of the two runs into the table or the CSV.
async fn write_changes(
    store: &Store,
    settings: &ChangesSettings,
    before: &RunRecord,
    after: &RunRecord,
) -> Result<(), ReportError> {
    let path = settings
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from("-"));
    let mut out = Output::open(&path)?;
    let writer = match &settings.output {
        Some(_) => ChangeWriter::csv(&mut out, settings.excel),
        None => ChangeWriter::table(&mut out, &changes_title(before, after)),
    };
    let mut writer = writer.map_err(ReportError::write(&path))?;
    let mut stream = ChangeStream::new(store, before.id, after.id, PAGE_ROWS);
    while let Some(window) = stream.next_window().await? {
        for change in &window {
            writer.write(change).map_err(ReportError::write(&path))?;
        }
    }
    let (_, counts) = writer.finish().map_err(ReportError::write(&path))?;
    out.commit()?;
    tracing::info!(
        since = before.id,
        run = after.id,
        changes = counts.total(),
        "{}",
        counts.describe()
    );
    Ok(())
}
