//! The `report`, `changes` and `summary` commands, and what `run` writes when it ends
//! (`--report`, `--metrics-file`): resolve runs, stream rows from the store to the writers.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::changes::{ChangeStream, ChangeWriter, PAGE_ROWS};
use super::csv::{ReportWriter, kst_label};
use super::output::{Output, write_atomic};
use super::{ReportError, RunSelector, metrics, parse_statuses, summary as run_summary};
use crate::app::fail;
use crate::cli::{ChangesArgs, ReportArgs, SummaryArgs};
use crate::domain::KeyStatus;
use crate::exit::ExitStatus;
use crate::pipeline::RunSummary;
use crate::settings::RunSettings;
use crate::store::{Dialect, RunRecord, RunState, Store};

/// `report`: a run's rows as the finance CSV.
pub async fn report(args: ReportArgs) -> ExitStatus {
    let statuses = match parse_statuses(args.status.as_deref().unwrap_or_default()) {
        Ok(s) => s,
        Err(e) => return fail(e.exit_status(), &e),
    };
    let selector = match RunSelector::parse(&args.run) {
        Ok(s) => s,
        Err(e) => return fail(e.exit_status(), &e),
    };
    with_store(&args.database.database_url, async |store| {
        let run = resolve_run(store, selector).await?;
        let rows = write_report(store, run.id, &statuses, &args.output, args.excel).await?;
        tracing::info!(run_id = run.id, rows, output = %args.output.display(), "report written");
        Ok(())
    })
    .await
}

/// `changes`: keys whose status (or card, or account) changed between two runs.
pub async fn changes(args: ChangesArgs) -> ExitStatus {
    with_store(&args.database.database_url, async |store| {
        let (before, after) = resolve_pair(store, args.since, args.run).await?;
        for run in [&before, &after] {
            if run.state != RunState::Completed {
                tracing::warn!(
                    run_id = run.id,
                    state = run.state.as_str(),
                    "run is not completed: keys it has not checked show as missing or new"
                );
            }
        }
        let path = args.output.clone().unwrap_or_else(|| PathBuf::from("-"));
        let mut out = Output::open(&path)?;
        let writer = match &args.output {
            Some(_) => ChangeWriter::csv(&mut out, args.excel),
            None => ChangeWriter::table(&mut out, &changes_title(&before, &after)),
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
    })
    .await
}

/// `summary`: counts per status, card company and bank, as text on stdout.
pub async fn summary(args: SummaryArgs) -> ExitStatus {
    let selector = args.run.map_or(RunSelector::Latest, RunSelector::Id);
    with_store(&args.database.database_url, async |store| {
        let run = resolve_run(store, selector).await?;
        let summary = run_summary::load(store, run).await?;
        let mut out = Output::stdout();
        out.write_all(run_summary::render(&summary).as_bytes())
            .map_err(ReportError::write(Path::new("-")))?;
        out.commit()
    })
    .await
}

/// What `run` writes when it ends: the report (`--report`) and the metrics file
/// (`--metrics-file`). A failure is logged and makes the run exit 1.
pub async fn after_run(
    settings: &RunSettings,
    store: &Store,
    summary: &RunSummary,
) -> Result<(), ExitStatus> {
    let mut result = Ok(());
    if let Some(path) = &settings.report {
        if summary.state != RunState::Completed.as_str() {
            tracing::warn!(
                run_id = summary.run_id,
                state = summary.state,
                "the run did not complete: the report holds only the keys checked so far"
            );
        }
        match write_report(store, summary.run_id, &[], path, settings.excel).await {
            Ok(rows) => {
                tracing::info!(run_id = summary.run_id, rows, output = %path.display(), "report written");
            }
            Err(e) => result = Err(fail(ExitStatus::Internal, &e)),
        }
    }
    if let Some(path) = &settings.metrics_file {
        match write_metrics(path, summary) {
            Ok(()) => tracing::debug!(output = %path.display(), "metrics written"),
            Err(e) => result = Err(fail(ExitStatus::Internal, &e)),
        }
    }
    result
}

/// Streams run `run_id`'s rows (only `statuses`, or all) as the finance CSV to `path`
/// (`-`: stdout), a page at a time; returns the rows written.
pub async fn write_report(
    store: &Store,
    run_id: i64,
    statuses: &[KeyStatus],
    path: &Path,
    excel: bool,
) -> Result<u64, ReportError> {
    let mut out = Output::open(path)?;
    let rows = export_run(store, run_id, statuses, &mut out, excel, PAGE_ROWS)
        .await
        .map_err(|e| match e {
            ReportError::Write { source, .. } => ReportError::Write {
                path: path.to_owned(),
                source,
            },
            other => other,
        })?;
    out.commit()?;
    Ok(rows)
}

/// Streams run `run_id`'s rows as the finance CSV into `out`, `page` rows per query
/// (keyset pagination on the payer id); returns the rows written. Write errors name `-`.
pub async fn export_run<W: Write>(
    store: &Store,
    run_id: i64,
    statuses: &[KeyStatus],
    out: W,
    excel: bool,
    page: i64,
) -> Result<u64, ReportError> {
    let unnamed = Path::new("-");
    let mut writer = ReportWriter::new(out, excel).map_err(ReportError::write(unnamed))?;
    let mut cursor = String::new();
    loop {
        let rows = store
            .checks_page(run_id, &cursor, statuses, page.max(1))
            .await
            .map_err(ReportError::store(run_id))?;
        for row in &rows {
            writer.write(row).map_err(ReportError::write(unnamed))?;
        }
        match rows.last() {
            Some(last) if i64::try_from(rows.len()).unwrap_or(i64::MAX) >= page.max(1) => {
                cursor.clone_from(&last.payer_id);
            }
            _ => break,
        }
    }
    let rows = writer.rows();
    writer.finish().map_err(ReportError::write(unnamed))?;
    Ok(rows)
}

/// Writes the metrics file atomically, keeping the previous last-success time when this
/// run did not succeed.
fn write_metrics(path: &Path, summary: &RunSummary) -> Result<(), ReportError> {
    let previous = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the previous metrics file");
            None
        }
    };
    let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    let m = metrics::from_summary(summary, now, previous.as_deref());
    write_atomic(path, metrics::render(&m).as_bytes())
}

/// Opens the results database, runs `work`, closes it, and maps the outcome to an exit
/// status (errors logged).
async fn with_store(
    url: &str,
    work: impl AsyncFnOnce(&Store) -> Result<(), ReportError>,
) -> ExitStatus {
    let store = match open_store(url).await {
        Ok(store) => store,
        Err(e) => return fail(e.exit_status(), &e),
    };
    let result = work(&store).await;
    store.close().await;
    match result {
        Ok(()) => ExitStatus::Success,
        Err(e) => fail(e.exit_status(), &e),
    }
}

/// Connects without migrating (report users may only read) and without creating a
/// SQLite file that is not there.
async fn open_store(url: &str) -> Result<Store, ReportError> {
    if Dialect::from_url(url).ok() == Some(Dialect::Sqlite)
        && let Some(path) = sqlite_file(url)
        && !path.exists()
    {
        return Err(ReportError::NoDatabase { path });
    }
    Store::connect(url).await.map_err(ReportError::Connect)
}

/// The file of a `sqlite://PATH?…` URL (`None` for in-memory databases).
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" || query.contains("mode=memory") {
        return None;
    }
    Some(PathBuf::from(path))
}

/// The run `selector` names.
async fn resolve_run(store: &Store, selector: RunSelector) -> Result<RunRecord, ReportError> {
    match selector {
        RunSelector::Id(id) => store
            .run(id)
            .await
            .map_err(ReportError::store(id))?
            .ok_or(ReportError::NoSuchRun(id)),
        RunSelector::Latest => {
            let completed = store
                .latest_runs(Some(RunState::Completed), 1)
                .await
                .map_err(ReportError::Runs)?;
            if let Some(run) = completed.into_iter().next() {
                return Ok(run);
            }
            let newest = store
                .latest_runs(None, 1)
                .await
                .map_err(ReportError::Runs)?
                .into_iter()
                .next()
                .ok_or(ReportError::NoRuns)?;
            tracing::warn!(
                run_id = newest.id,
                state = newest.state.as_str(),
                "no run has completed yet; using the newest run"
            );
            Ok(newest)
        }
    }
}

/// The (earlier, later) runs `changes` compares.
async fn resolve_pair(
    store: &Store,
    since: Option<i64>,
    run: Option<i64>,
) -> Result<(RunRecord, RunRecord), ReportError> {
    let (before, after) = match (since, run) {
        (None, None) => {
            let mut runs = store
                .latest_runs(Some(RunState::Completed), 2)
                .await
                .map_err(ReportError::Runs)?;
            if runs.len() < 2 {
                return Err(ReportError::NotEnoughRuns(format!(
                    "changes compares two completed runs, and {} completed so far \
                     (name them with --since and --run)",
                    runs.len()
                )));
            }
            let after = runs.remove(0);
            (runs.remove(0), after)
        }
        (None, Some(id)) => {
            let after = resolve_run(store, RunSelector::Id(id)).await?;
            let before = store
                .completed_run_before(id)
                .await
                .map_err(ReportError::store(id))?
                .ok_or_else(|| {
                    ReportError::NotEnoughRuns(format!(
                        "no completed run before run {id} to compare with (give --since)"
                    ))
                })?;
            (before, after)
        }
        (Some(since), run) => {
            let before = resolve_run(store, RunSelector::Id(since)).await?;
            let after = match run {
                Some(id) => resolve_run(store, RunSelector::Id(id)).await?,
                None => store
                    .latest_runs(Some(RunState::Completed), 1)
                    .await
                    .map_err(ReportError::Runs)?
                    .into_iter()
                    .next()
                    .ok_or_else(|| {
                        ReportError::NotEnoughRuns(
                            "no completed run to compare with (give --run)".to_owned(),
                        )
                    })?,
            };
            (before, after)
        }
    };
    if before.id == after.id {
        return Err(ReportError::NotEnoughRuns(format!(
            "both sides of the comparison are run {} (give --since and --run)",
            before.id
        )));
    }
    Ok((before, after))
}

/// The line above the changes table.
fn changes_title(before: &RunRecord, after: &RunRecord) -> String {
    let describe = |r: &RunRecord| {
        format!(
            "run {} ({}, started {})",
            r.id,
            r.state.as_str(),
            kst_label(&r.started_at)
        )
    };
    format!("Changes from {} to {}", describe(before), describe(after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_files_from_urls() {
        assert_eq!(
            sqlite_file("sqlite:///tmp/x.db?mode=rwc"),
            Some(PathBuf::from("/tmp/x.db"))
        );
        assert_eq!(
            sqlite_file("sqlite://payple-reconcile.db"),
            Some(PathBuf::from("payple-reconcile.db"))
        );
        assert_eq!(
            sqlite_file("sqlite:data.db"),
            Some(PathBuf::from("data.db"))
        );
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("sqlite://x.db?mode=memory"), None);
        assert_eq!(sqlite_file("postgres://h/db"), None);
    }

    #[tokio::test]
    async fn a_missing_sqlite_file_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.db");
        let url = format!("sqlite://{}", path.display());
        let err = open_store(&url).await.err().unwrap();
        assert_eq!(err.exit_status(), ExitStatus::Config);
        assert!(err.to_string().contains("none.db"), "{err}");
        assert!(!path.exists());
    }
}
