//! `run`: the nightly batch, its `--dry-run`, and what it does at its end (`--report`,
//! `--notify`, `--metrics-file`).

use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{AppError, payple_client, print_json};
use crate::domain::RunSummary;
use crate::exit::ExitStatus;
use crate::notify::{Notice, Notifier};
use crate::payple::PaypleClient;
use crate::pipeline;
use crate::report::ReportError;
use crate::report::deliver::{ReportShape, RunEnding, notify_run, write_run_report};
use crate::report::export::write_metrics;
use crate::report::metrics;
use crate::report::output::ReportFormat;
use crate::report::xlsx::EXCEL_MAX_ROWS;
use crate::settings::{BatchSettings, NotifySettings, PaypleSettings, RunSettings};
use crate::shutdown::Shutdown;
use crate::store::{RunState, Store};

pub(super) async fn run(
    settings: RunSettings,
    shutdown: &Shutdown,
) -> Result<ExitStatus, AppError> {
    let RunSettings { mut batch, payple } = settings;
    // A workbook read without --sheet: its first sheet named now, so the run records it.
    let result = match crate::source::resolve(batch.source.clone()).await {
        Ok(source) => {
            batch.source = source;
            started(&batch, &payple, shutdown).await
        }
        Err(e) => Err(AppError::Source(e)),
    };
    if let Err(error) = &result
        && !batch.dry_run
        && let Some(n) = &batch.notify
    {
        // The run could not start: its databases, the simulator or the client. Told with
        // the error, as every other way a run ends.
        let limit = shutdown.end_limit(batch.shutdown_grace, Instant::now());
        notify_failed(n, error.exit_status(), error.to_string(), limit).await;
    }
    result
}

async fn started(
    batch: &BatchSettings,
    payple: &PaypleSettings,
    shutdown: &Shutdown,
) -> Result<ExitStatus, AppError> {
    let (client, sim) = payple_client(payple).await?;
    let result = if batch.dry_run {
        dry_run(batch, &client).await
    } else {
        batch_run(batch, Arc::new(client), shutdown).await
    };
    if let Some(sim) = sim {
        sim.shutdown().await;
    }
    result
}

/// Whether the keys come from a database (a table or a query) rather than a file.
fn reads_database(batch: &BatchSettings) -> bool {
    !batch.source.is_file()
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
    let store = Store::open(&batch.database_url).await?;
    // The source has its own read-only connection, even when it is the results database.
    let source_db = if reads_database(batch) {
        match source_pool(batch).await {
            Ok(pool) => Some(pool),
            Err(e) => {
                store.close().await;
                return Err(e);
            }
        }
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
    let error = end.error.as_ref().map(ToString::to_string);
    if end.summary.is_none()
        && let Some(n) = &batch.notify
    {
        let error = error
            .clone()
            .unwrap_or_else(|| "the run ended without a summary".to_owned());
        let limit = shutdown.end_limit(batch.shutdown_grace, Instant::now());
        notify_failed(n, exit, error, limit).await;
    }
    if let Some(summary) = &end.summary {
        log_summary(summary);
        print_json(summary);
        for failure in after_run(batch, &store, summary, error, shutdown).await {
            tracing::error!("{failure}");
            if exit == ExitStatus::Success {
                exit = failure.exit_status();
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
/// extension), the metrics file (`--metrics-file`), then the notification (`--notify`),
/// and the metrics file again with the notifications not delivered. After a signal all
/// of it gets what is left of the grace ([`Shutdown::end_limit`]). Returns what failed;
/// an undelivered notification is logged and counted, never returned.
async fn after_run(
    batch: &BatchSettings,
    store: &Store,
    summary: &RunSummary,
    error: Option<String>,
    shutdown: &Shutdown,
) -> Vec<AppError> {
    let cutter = cut_at(shutdown.end_limit(batch.shutdown_grace, Instant::now()));
    let cut = &cutter.cut;
    let mut failed = Vec::new();
    let mut written = None;
    if let Some(path) = &batch.report {
        tokio::select! {
            biased;
            () = cut.cancelled() => tracing::error!(
                output = %path.display(),
                "report not written: the shutdown grace is over"
            ),
            report = run_report(store, summary, path, batch.excel) => match report {
                Ok(()) => written = Some(path.display().to_string()),
                Err(e) => failed.push(AppError::AfterRun(e)),
            },
        }
    }
    // Before any notification: a webhook that hangs must not cost the metrics.
    if let Some(path) = &batch.metrics_file
        && let Err(e) = metrics_file(store, summary, path, None).await
    {
        failed.push(AppError::AfterRun(e));
    }
    let notify_failures = match &batch.notify {
        // A run key that had already completed, with nothing to re-check: nothing ran
        // (not even the partner auth every real run starts with), nothing to tell.
        Some(_) if summary.auth_calls == 0 && summary.checked_now == 0 => Some(0),
        Some(n) => {
            let urls = n.notifier.urls.len() as u64;
            tokio::select! {
                biased;
                failures = notify_after(n, store, summary, written, error, cut) => Some(failures),
                () = cut.cancelled() => {
                    tracing::error!("notification not sent: the shutdown grace is over");
                    Some(urls)
                }
            }
        }
        None => None,
    };
    if let Some(path) = &batch.metrics_file
        && batch.notify.is_some()
        && let Err(e) = metrics_file(store, summary, path, notify_failures).await
    {
        failed.push(AppError::AfterRun(e));
    }
    failed
}

/// Writes the run's report to `path`.
async fn run_report(
    store: &Store,
    summary: &RunSummary,
    path: &std::path::Path,
    excel: bool,
) -> Result<(), ReportError> {
    if summary.state != RunState::Completed.as_str() {
        tracing::warn!(
            run_id = summary.run_id,
            state = summary.state,
            "the run did not complete: the report holds only the keys checked so far"
        );
    }
    let shape = ReportShape {
        format: ReportFormat::from_path(path),
        excel,
        sheet_rows: EXCEL_MAX_ROWS,
    };
    let rows = write_run_report(store, summary.run_id, &[], path, shape).await?;
    tracing::info!(run_id = summary.run_id, rows, output = %path.display(), "report written");
    Ok(())
}

/// Writes the metrics file (`notify_failures`: the webhooks not reached, once known).
async fn metrics_file(
    store: &Store,
    summary: &RunSummary,
    path: &std::path::Path,
    notify_failures: Option<u64>,
) -> Result<(), ReportError> {
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
    write_metrics(path, summary, ended, notify_failures)?;
    tracing::debug!(output = %path.display(), "metrics written");
    Ok(())
}

/// Sends the notification about a run that ended; returns the webhooks it did not reach
/// (all of them when the message could not be built). `cut` abandons the sending.
async fn notify_after(
    n: &NotifySettings,
    store: &Store,
    summary: &RunSummary,
    report: Option<String>,
    error: Option<String>,
    cut: &CancellationToken,
) -> u64 {
    let urls = n.notifier.urls.len() as u64;
    let notifier = match Notifier::new(n.notifier.clone()) {
        Ok(notifier) => notifier.cut_by(cut.clone()),
        Err(e) => {
            tracing::error!("{e}");
            return urls;
        }
    };
    let ending = RunEnding {
        exit_code: Some(i64::from(summary.exit_code)),
        duration_secs: Some(summary.duration_secs),
        report,
        error,
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

/// Tells the webhooks about a run that could not start or end (no summary), with the
/// error; sending stops when `limit` resolves.
pub(super) async fn notify_failed(
    n: &NotifySettings,
    exit: ExitStatus,
    error: String,
    limit: impl Future<Output = ()> + Send + 'static,
) {
    let notifier = match Notifier::new(n.notifier.clone()) {
        Ok(notifier) => notifier,
        Err(e) => return tracing::error!("{e}"),
    };
    let cutter = cut_at(limit);
    let notifier = notifier.cut_by(cutter.cut.clone());
    let notice = Notice::failed(None, i64::from(exit.code()), error);
    notifier.send(&crate::notify::body(n.format, &notice)).await;
}

/// A token cancelled when `limit` resolves (the task stops with the value).
struct Cutter {
    cut: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Cutter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn cut_at(limit: impl Future<Output = ()> + Send + 'static) -> Cutter {
    let cut = CancellationToken::new();
    let task = tokio::spawn({
        let cut = cut.clone();
        async move {
            limit.await;
            cut.cancel();
        }
    });
    Cutter { cut, task }
}
