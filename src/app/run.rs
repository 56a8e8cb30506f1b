//! `run`: the nightly batch, its `--dry-run`, and what it writes at its end (`--report`,
//! `--metrics-file`).

use std::sync::Arc;

use super::{AppError, payple_client, print_json};
use crate::domain::RunSummary;
use crate::exit::ExitStatus;
use crate::payple::PaypleClient;
use crate::pipeline;
use crate::report::export::{write_metrics, write_report};
use crate::report::metrics;
use crate::settings::{BatchSettings, RunSettings};
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

/// `--dry-run`: configuration, source and credentials checked; nothing written.
async fn dry_run(batch: &BatchSettings, client: &PaypleClient) -> Result<ExitStatus, AppError> {
    let source_db = if reads_database(batch) {
        let url = batch
            .source_database_url
            .as_deref()
            .unwrap_or(&batch.database_url);
        Some(Store::connect(url).await?.pool().clone())
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
    let source_db = match (&batch.source_database_url, reads_database(batch)) {
        (_, false) => None,
        (None, true) => Some(store.pool().clone()),
        (Some(url), true) => Some(Store::connect(url).await?.pool().clone()),
    };
    let end = pipeline::run(batch, &store, client, source_db, shutdown).await;
    if let Some(error) = &end.error {
        tracing::error!("{error}");
    }
    let mut exit = end.exit;
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

/// What `run` writes when it ends: the report (`--report`) and the metrics file
/// (`--metrics-file`). Returns what failed.
async fn after_run(batch: &BatchSettings, store: &Store, summary: &RunSummary) -> Vec<AppError> {
    let mut failed = Vec::new();
    if let Some(path) = &batch.report {
        if summary.state != RunState::Completed.as_str() {
            tracing::warn!(
                run_id = summary.run_id,
                state = summary.state,
                "the run did not complete: the report holds only the keys checked so far"
            );
        }
        match write_report(store, summary.run_id, &[], path, batch.excel).await {
            Ok(rows) => {
                tracing::info!(run_id = summary.run_id, rows, output = %path.display(), "report written");
            }
            Err(e) => failed.push(AppError::AfterRun(e)),
        }
    }
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
        match write_metrics(path, summary, ended) {
            Ok(()) => tracing::debug!(output = %path.display(), "metrics written"),
            Err(e) => failed.push(AppError::AfterRun(e)),
        }
    }
    failed
}
