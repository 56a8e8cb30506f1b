//! `run`: the nightly batch, its `--dry-run`, and what it does at its end (`--report`,
//! `--notify`, `--metrics-file`).

use std::sync::Arc;

use super::{AppError, payple_client, print_json};
use crate::domain::RunSummary;
use crate::exit::ExitStatus;
use crate::notify::{Notice, Notifier};
use crate::payple::PaypleClient;
use crate::pipeline;
use crate::report::deliver::{ReportShape, RunEnding, notify_run, write_run_report};
use crate::report::export::write_metrics;
use crate::report::metrics;
use crate::report::output::ReportFormat;
use crate::report::xlsx::EXCEL_MAX_ROWS;
use crate::settings::{BatchSettings, NotifySettings, RunSettings};
use crate::shutdown::Shutdown;
use crate::source::SourceSpec;
use crate::store::{RunState, Store};

pub(super) async fn run(settings: RunSettings) -> Result<ExitStatus, AppError> {
    let RunSettings { batch, payple } = settings;
    let (client, sim) = payple_client(&payple).await?;
    let shutdown = Shutdown::listen().map_err(AppError::Signals)?;
    let result = if batch.dry_run {
        dry_run(&batch, &client).await
    } else {
        batch_run(&batch, Arc::new(client), &shutdown).await
    };
    if let Some(sim) = sim {
        sim.shutdown().await;
    }
    result
}

/// Whether the keys come from a database (a table or a query) rather than a CSV.
fn reads_database(batch: &BatchSettings) -> bool {
    !matches!(batch.source, SourceSpec::Csv { .. })
}

/// A read-only connection to the database the keys are read from.
async fn source_pool(batch: &BatchSettings) -> Result<sqlx::AnyPool, AppError> {
    let url = batch
        .source_database_url
        .as_deref()
        .unwrap_or(&batch.database_url);
    crate::source::readonly::connect(url)
        .await
        .map_err(AppError::Source)
}

/// `--dry-run`: configuration, source and credentials checked; nothing written.
async fn dry_run(batch: &BatchSettings, client: &PaypleClient) -> Result<ExitStatus, AppError> {
    let source_db = if reads_database(batch) {
        // Read-only: a dry run opens nothing it could write to.
        Some(source_pool(batch).await?)
    } else {
        None
    };
    let report = pipeline::dry_run(batch, client, source_db).await?;
    tracing::info!(
        keys = report.keys,
        duplicates = report.duplicates,
        rejected = report.rejected,
        "dry run: configuration, source and credentials are fine; nothing written"
    );
    print_json(&report);
    Ok(ExitStatus::Success)
}

/// The batch itself: the pipeline decides how the run ends; a failure to write the report
/// or the metrics afterwards turns a success into exit 1.
async fn batch_run(
    batch: &BatchSettings,
    client: Arc<PaypleClient>,
    shutdown: &Shutdown,
) -> Result<ExitStatus, AppError> {
    let store = match Store::open_until(&batch.database_url, &shutdown.stop).await {
        Ok(store) => store,
        // Stopped while another process was migrating: the signal's exit code.
        Err(e) if shutdown.signal().is_some() => {
            tracing::error!("{e}");
            return Ok(shutdown
                .signal()
                .map_or(ExitStatus::Config, |s| s.exit_status()));
        }
        Err(e) => return Err(e.into()),
    };
    // The source has its own read-only connection, even when it is the results database.
    let source_db = if reads_database(batch) {
        Some(source_pool(batch).await?)
    } else {
        None
    };
    let end = pipeline::run(batch, &store, client, source_db, shutdown).await;
    if let Some(error) = &end.error {
        tracing::error!("{error}");
        if end.summary.is_none() {
            print_json(&super::ErrorLine::new(end.exit, error));
        }
    }
    let mut exit = end.exit;
    if end.summary.is_none()
        && let Some(n) = &batch.notify
    {
        let error = end.error.as_ref().map(ToString::to_string);
        notify_failed(n, exit, error).await;
    }
    if let Some(summary) = &end.summary {
        log_summary(summary);
        print_json(summary);
        for error in after_run(batch, &store, summary).await {
            tracing::error!("{error}");
            if exit == ExitStatus::Success {
                exit = error.exit_status();
            }
        }
    }
    store.close().await;
    Ok(exit)
}

fn log_summary(summary: &RunSummary) {
    tracing::info!(
        run_id = summary.run_id,
        state = summary.state,
        active = summary.active,
        gone = summary.gone,
        failed = summary.failed,
        rejected = summary.rejected,
        duplicates = summary.duplicates,
        seconds = summary.duration_secs,
        per_second = summary.lookups_per_second,
        auth_calls = summary.auth_calls,
        exit_code = summary.exit_code,
        "run finished"
    );
}

/// What `run` does when it ends: the report (`--report`, CSV or a workbook by its
/// extension), the notification (`--notify`), then the metrics file (`--metrics-file`,
/// counting undelivered notifications). Returns what failed; an undelivered
/// notification is logged and counted, never returned.
async fn after_run(batch: &BatchSettings, store: &Store, summary: &RunSummary) -> Vec<AppError> {
    let mut failed = Vec::new();
    let mut written = None;
    if let Some(path) = &batch.report {
        if summary.state != RunState::Completed.as_str() {
            tracing::warn!(
                run_id = summary.run_id,
                state = summary.state,
                "the run did not complete: the report holds only the keys checked so far"
            );
        }
        let shape = ReportShape {
            format: ReportFormat::from_path(path),
            excel: batch.excel,
            sheet_rows: EXCEL_MAX_ROWS,
        };
        match write_run_report(store, summary.run_id, &[], path, shape).await {
            Ok(rows) => {
                tracing::info!(run_id = summary.run_id, rows, output = %path.display(), "report written");
                written = Some(path.display().to_string());
            }
            Err(e) => failed.push(AppError::AfterRun(e)),
        }
    }
    let notify_failures = match &batch.notify {
        // A run key that had already completed, with nothing to re-check: nothing ran
        // (not even the partner auth every real run starts with), nothing to tell.
        Some(_) if summary.auth_calls == 0 && summary.checked_now == 0 => Some(0),
        Some(n) => Some(notify_after(n, store, summary, written).await),
        None => None,
    };
    if let Some(path) = &batch.metrics_file {
        // The run's own end: an "already completed" answer is about an earlier night.
        let ended = match store.run(summary.run_id).await {
            Ok(run) => run
                .and_then(|r| r.finished_at)
                .and_then(|t| metrics::unix_seconds(&t)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the run's end time; using now");
                None
            }
        };
        match write_metrics(path, summary, ended, notify_failures) {
            Ok(()) => tracing::debug!(output = %path.display(), "metrics written"),
            Err(e) => failed.push(AppError::AfterRun(e)),
        }
    }
    failed
}

/// Sends the notification about a run that ended; returns the webhooks it did not reach
/// (all of them when the message could not be built).
async fn notify_after(
    n: &NotifySettings,
    store: &Store,
    summary: &RunSummary,
    report: Option<String>,
) -> u64 {
    let urls = n.notifier.urls.len() as u64;
    let notifier = match Notifier::new(n.notifier.clone()) {
        Ok(notifier) => notifier,
        Err(e) => {
            tracing::error!("{e}");
            return urls;
        }
    };
    let ending = RunEnding {
        exit_code: Some(i64::from(summary.exit_code)),
        duration_secs: Some(summary.duration_secs),
        report,
    };
    let run = match store.run(summary.run_id).await {
        Ok(Some(run)) => run,
        Ok(None) => return urls,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the run for its notification");
            return urls;
        }
    };
    match notify_run(store, &notifier, n.format, n.on, &run, ending).await {
        Ok(Some(delivery)) => u64::from(delivery.failed),
        Ok(None) => 0,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the notification");
            urls
        }
    }
}

/// Tells the webhooks about a run that could not start or end (no summary).
async fn notify_failed(n: &NotifySettings, exit: ExitStatus, error: Option<String>) {
    let notifier = match Notifier::new(n.notifier.clone()) {
        Ok(notifier) => notifier,
        Err(e) => return tracing::error!("{e}"),
    };
    let error = error.unwrap_or_else(|| "the run ended without a summary".to_owned());
    let notice = Notice::failed(None, i64::from(exit.code()), error);
    notifier.send(&crate::notify::body(n.format, &notice)).await;
}
