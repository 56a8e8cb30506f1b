//! `run`: the nightly batch, its `--dry-run`, and what it does at its end (`--report`,
//! `--notify`, `--metrics-file`).

use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::error::AppError;
use super::open::payple_client;
use super::output::print_json;
use super::outputs::check_outputs;
use crate::domain::RunStats;
use crate::exit::ExitStatus;
use crate::notify::{Notice, Notifier};
use crate::payple::PaypleClient;
use crate::pipeline::{self, Ended};
use crate::pushgateway::{self, PushTarget};
use crate::report::ReportError;
use crate::report::deliver::{ReportShape, RunEnding, send_notice, write_run_report};
use crate::report::export::write_metrics;
use crate::report::metrics;
use crate::report::notice;
use crate::settings::{BatchSettings, NotifySettings, PaypleSettings, RunReport, RunSettings};
use crate::shutdown::{Shutdown, cut_at};
use crate::store::{RunRecord, RunState, Store};

pub(super) async fn run(
    settings: RunSettings,
    shutdown: &Shutdown,
) -> Result<ExitStatus, AppError> {
    let RunSettings { mut batch, payple } = settings;
    // A workbook read without --sheet: its first sheet named now, so the run records it.
    let resolved = match check_outputs(&batch) {
        Ok(()) => crate::source::resolve(batch.source.clone())
            .await
            .map_err(AppError::Source),
        Err(e) => Err(AppError::Config(e)),
    };
    let result = match resolved {
        Ok(source) => {
            batch.source = source;
            started(&batch, &payple, shutdown).await
        }
        Err(e) => Err(e),
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
    // A run that could not even open its databases still tells the Pushgateway its exit.
    if let (Err(error), Some(target)) = (&result, &batch.metrics_push)
        && !batch.dry_run
    {
        let text = pushgateway::exit_code_body(error.exit_status().code());
        pushgateway::push_counted(target, text, shutdown, batch.shutdown_grace).await;
    }
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
    let store = match open_store(batch, shutdown).await? {
        Ok(store) => store,
        Err(exit) => return Ok(exit),
    };
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
        if end.ended.is_none() {
            print_json(&super::output::ErrorLine::new(end.exit, error));
        }
    }
    let error = end.error.as_ref().map(ToString::to_string);
    let exit = match end.ended {
        Some(ended) => end_recorded(batch, &store, ended, end.exit, error, shutdown).await,
        None => {
            tell_unrecorded(batch, end.exit, error, shutdown).await;
            end.exit
        }
    };
    store.close().await;
    Ok(exit)
}

/// The results database, or the signal's exit status when a signal came while another
/// process was migrating it (logged, without the error line).
async fn open_store(
    batch: &BatchSettings,
    shutdown: &Shutdown,
) -> Result<Result<Store, ExitStatus>, AppError> {
    match Store::open_until(&batch.database_url, &shutdown.stop).await {
        Ok(store) => Ok(Ok(store)),
        Err(e) => {
            let Some(signal) = shutdown.signal() else {
                return Err(e.into());
            };
            tracing::error!("{e}");
            let doing = "waiting for the results database";
            Ok(Err(AppError::Stopped { signal, doing }.exit_status()))
        }
    }
}

/// A run whose end was not recorded: the notification says it failed and the
/// Pushgateway gets its exit code.
async fn tell_unrecorded(
    batch: &BatchSettings,
    exit: ExitStatus,
    error: Option<String>,
    shutdown: &Shutdown,
) {
    if let Some(n) = &batch.notify {
        let error = error.unwrap_or_else(|| "the run ended without a summary".to_owned());
        let limit = shutdown.end_limit(batch.shutdown_grace, Instant::now());
        notify_failed(n, exit, error, limit).await;
    }
    if let Some(target) = &batch.metrics_push {
        let text = pushgateway::exit_code_body(exit.code());
        pushgateway::push_counted(target, text, shutdown, batch.shutdown_grace).await;
    }
}

/// A run whose end was recorded: its events delivered, its stats logged and printed, then
/// what follows it ([`after_run`]); a failure there turns a success into its exit status.
async fn end_recorded(
    batch: &BatchSettings,
    store: &Store,
    mut ended: Ended,
    exit: ExitStatus,
    error: Option<String>,
    shutdown: &Shutdown,
) -> ExitStatus {
    // Before the stats are printed: they say what was delivered.
    let events = super::events::after_run(batch, store, &ended.stats, shutdown).await;
    ended.stats.events = events.map(|c| c.tally());
    log_stats(&ended.stats);
    print_json(&ended.stats);
    let failed = after_run(batch, store, &ended, error, shutdown).await;
    for failure in &failed {
        tracing::error!("{failure}");
    }
    settled(exit, &failed)
}

/// How the process ends after what followed the run: a failure there (the report, the
/// metrics file) turns a success into the first failure's exit status; any other status
/// stands.
fn settled(exit: ExitStatus, failed: &[AppError]) -> ExitStatus {
    match failed.first() {
        Some(failure) if exit == ExitStatus::Success => failure.exit_status(),
        _ => exit,
    }
}

/// The stats as the process will end ([`settled`]) and the error to tell, the failures
/// after the run included: the metrics and the notification then agree with the exit code
/// and say what failed.
fn as_ending(
    stats: &RunStats,
    error: Option<String>,
    failed: &[AppError],
) -> (RunStats, Option<String>) {
    let mut stats = stats.clone();
    if stats.exit_code == ExitStatus::Success.code() {
        stats.exit_code = settled(ExitStatus::Success, failed).code();
    }
    let told = error
        .into_iter()
        .chain(failed.iter().map(ToString::to_string))
        .collect::<Vec<_>>();
    (stats, (!told.is_empty()).then(|| told.join("; ")))
}

fn log_stats(stats: &RunStats) {
    tracing::info!(
        run_id = stats.run_id,
        state = stats.state.as_str(),
        active = stats.active,
        gone = stats.gone,
        failed = stats.failed,
        rejected = stats.rejected,
        duplicates = stats.duplicates,
        seconds = stats.duration_secs,
        per_second = stats.lookups_per_second,
        auth_calls = stats.auth_calls,
        exit_code = stats.exit_code,
        "run finished"
    );
}

/// What `run` does when it ends: the report (`--report`, CSV or a workbook by its
/// extension), the metrics file (`--metrics-file`), the notification (`--notify`), the
/// push (`--metrics-push`; before the notification when a signal came), and the metrics
/// file again with the notifications not delivered and the pushes that failed. After a
/// signal all of it gets what is left of the grace ([`Shutdown::end_limit`]). Returns
/// what failed; an undelivered notification or a failed push is logged and counted,
/// never returned.
async fn after_run(
    batch: &BatchSettings,
    store: &Store,
    ended: &Ended,
    error: Option<String>,
    shutdown: &Shutdown,
) -> Vec<AppError> {
    let record = &ended.record;
    let cutter = cut_at(shutdown.end_limit(batch.shutdown_grace, Instant::now()));
    let cut = &cutter.cut;
    let mut failed = Vec::new();
    let written = match &batch.report {
        Some(report) => report_within(store, record, report, cut)
            .await
            .unwrap_or_else(|e| {
                failed.push(AppError::after_run(e));
                None
            }),
        None => None,
    };
    let (stats, error) = &as_ending(&ended.stats, error, &failed);
    let notice = notice_within(batch, store, ended, written.clone(), cut).await;
    let mut extras = metrics::Extras::default();
    // The run's own end, in Unix seconds: an "already completed" answer is about an
    // earlier night. `None` (metrics then say now) when it has none.
    let ended = record.finished_at.map(metrics::unix_seconds);
    if batch.metrics_file.is_some() || batch.metrics_push.is_some() {
        extras.newly_gone = newly_gone_of(store, record, notice.as_ref()).await;
    }
    // Before any notification: a webhook that hangs must not cost the metrics.
    if let Some(path) = &batch.metrics_file
        && let Err(e) = write_metrics(path, stats, ended, &extras)
    {
        failed.push(AppError::after_run(e));
    }
    // After a signal the push goes first too: the message may not get its turn.
    let push_first = shutdown.signal().is_some();
    if push_first && let Some(target) = &batch.metrics_push {
        extras.push_failures =
            Some(push_metrics(target, stats, ended, &extras, batch, shutdown, cut).await);
    }
    extras.notify_failures = match &batch.notify {
        Some(_) if !ran_now(stats) => Some(0),
        Some(n) => Some(notify_after(n, stats, notice, written, error.clone(), cut).await),
        None => None,
    };
    if !push_first && let Some(target) = &batch.metrics_push {
        extras.push_failures =
            Some(push_metrics(target, stats, ended, &extras, batch, shutdown, cut).await);
    }
    if let Some(path) = &batch.metrics_file
        && (batch.notify.is_some() || batch.metrics_push.is_some())
        && let Err(e) = write_metrics(path, stats, ended, &extras)
    {
        failed.push(AppError::after_run(e));
    }
    failed
}

/// Whether this process ran the run: a run key that had already completed, with nothing
/// to re-check, ran nothing (not even the partner auth every real run starts with) and
/// has nothing to tell.
fn ran_now(stats: &RunStats) -> bool {
    stats.auth_calls > 0 || stats.checked_now > 0
}

/// The run's notice for `--notify`, built once (the metrics reuse its count of newly
/// gone keys); `None` without `--notify`, when nothing ran now or when `cut` comes first.
async fn notice_within(
    batch: &BatchSettings,
    store: &Store,
    Ended { record, stats }: &Ended,
    written: Option<String>,
    cut: &CancellationToken,
) -> Option<Notice> {
    if batch.notify.is_none() || !ran_now(stats) {
        return None;
    }
    tokio::select! {
        biased;
        () = cut.cancelled() => None,
        notice = load_notice(store, record, written) => notice,
    }
}

/// Writes the run's report unless `cut` comes first (logged); where it was written, if it
/// was.
async fn report_within(
    store: &Store,
    record: &RunRecord,
    RunReport { path, shape }: &RunReport,
    cut: &CancellationToken,
) -> Result<Option<String>, ReportError> {
    tokio::select! {
        biased;
        () = cut.cancelled() => {
            tracing::error!(
                output = %path.display(),
                "report not written: the shutdown grace is over"
            );
            Ok(None)
        }
        report = run_report(store, record, path, *shape) => {
            report.map(|()| Some(path.display().to_string()))
        }
    }
}

/// Writes the run's report to `path`.
async fn run_report(
    store: &Store,
    record: &RunRecord,
    path: &std::path::Path,
    shape: ReportShape,
) -> Result<(), ReportError> {
    if record.state != RunState::Completed {
        tracing::warn!(
            run_id = record.id,
            state = record.state.as_str(),
            "the run did not complete: the report holds only the keys checked so far"
        );
    }
    let rows = write_run_report(store, record, &[], path, shape).await?;
    tracing::info!(run_id = record.id, rows, output = %path.display(), "report written");
    Ok(())
}

/// Keys gone since the previous completed run, for a run that completed, from its
/// `notice` when one was built; `None` when there is nothing to compare (or it cannot be
/// read, which is logged).
async fn newly_gone_of(store: &Store, record: &RunRecord, notice: Option<&Notice>) -> Option<u64> {
    if record.state != RunState::Completed {
        return None;
    }
    if let Some(n) = notice {
        return n.changes.as_ref().map(|c| c.newly_gone);
    }
    match notice::load(store, record, None).await {
        Ok(notice) => notice.changes.map(|c| c.newly_gone),
        Err(e) => {
            tracing::warn!(error = %e, "cannot count the newly gone keys for the metrics");
            None
        }
    }
}

/// Pushes the run's metrics (`--metrics-push`); the last success time only when this
/// invocation ran and succeeded (an "already completed" answer ran nothing). Returns the
/// failed pushes; `cut` abandons the push (counted as failed).
async fn push_metrics(
    target: &PushTarget,
    stats: &RunStats,
    ended: Option<f64>,
    extras: &metrics::Extras,
    batch: &BatchSettings,
    shutdown: &Shutdown,
    cut: &CancellationToken,
) -> u64 {
    let ended = ended.unwrap_or_else(|| chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    let mut m = metrics::from_stats(stats, ended, None);
    extras.apply(&mut m);
    let text = pushgateway::body(&m, ran_now(stats) && metrics::succeeded(stats));
    tokio::select! {
        biased;
        () = cut.cancelled() => {
            tracing::error!("metrics not pushed: the shutdown grace is over");
            1
        }
        failures = pushgateway::push_counted(target, text, shutdown, batch.shutdown_grace) => failures,
    }
}

/// The notice about run `record` (with where its report went); `None` when it cannot be
/// built, which is logged.
async fn load_notice(store: &Store, record: &RunRecord, report: Option<String>) -> Option<Notice> {
    match notice::load(store, record, report).await {
        Ok(notice) => Some(notice),
        Err(e) => {
            tracing::error!(error = %e, "cannot build the notification");
            None
        }
    }
}

/// Sends the notification about a run that ended; returns the webhooks it did not reach
/// (all of them when the message could not be built). `cut` abandons the sending.
async fn notify_after(
    n: &NotifySettings,
    stats: &RunStats,
    notice: Option<Notice>,
    report: Option<String>,
    error: Option<String>,
    cut: &CancellationToken,
) -> u64 {
    let urls = n.notifier.urls.len() as u64;
    let Some(notice) = notice else {
        return urls;
    };
    let notifier = match Notifier::new(n.notifier.clone()) {
        Ok(notifier) => notifier.cut_by(cut.clone()),
        Err(e) => {
            tracing::error!("{e}");
            return urls;
        }
    };
    let ending = RunEnding {
        exit_code: Some(i64::from(stats.exit_code)),
        duration_secs: Some(stats.duration_secs),
        report,
        error,
        events: stats.events,
    };
    // The notifier itself stops at the cut, naming each webhook it did not reach.
    tokio::select! {
        biased;
        delivery = send_notice(&notifier, n.format, n.on, notice, ending) => {
            delivery.map_or(0, |d| u64::from(d.failed))
        }
        () = cut.cancelled() => {
            tracing::error!("notification not sent: the shutdown grace is over");
            urls
        }
    }
}

/// Tells the webhooks about a run that could not start or end (no stats line), with the
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
