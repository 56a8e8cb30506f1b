//! The nightly batch: decide which run this is, stage its keys, look them up through a
//! bounded, rate-limited stream, and hand every outcome to the single writer.
//!
//! # Architecture
//! `run` = plan (new, resume, run key) → lease → partner auth → stage (the whole source,
//! before any lookup) → lookups → finish. Lookups page through the run's keys that have no
//! result row yet (so a resumed run only checks what is missing), run [`check_one`] with at
//! most `--concurrency` in flight, and send each row to [`crate::store::writer`]. On the
//! first signal the key stream ends, in-flight lookups get `--shutdown-grace`, and the run
//! is marked `interrupted`.

pub mod lease;
pub mod progress;
pub mod stage;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt, stream};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use crate::domain::RunSummary;
use crate::domain::{KeyStatus, LookupOutcome, PayerId};
use crate::exit::ExitStatus;
use crate::payple::{PaypleClient, PaypleError};
use crate::settings::{BatchSettings, ConfigError, Resume};
use crate::shutdown::Shutdown;
use crate::source::{SourceError, SourceSpec};
use crate::store::retrying;
use crate::store::writer::{self, WriterConfig, WriterError};
use crate::store::{CheckRow, NewRun, RunRecord, RunState, StagedKey, Store, StoreError, now_text};
use progress::Progress;

/// Keys read per page of the run's key list.
const PAGE: i64 = 1000;

/// Why a run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Payple(#[from] PaypleError),
    #[error(transparent)]
    Writer(#[from] WriterError),
    #[error("run {0} does not exist")]
    NoSuchRun(i64),
    #[error("interrupted before the key list was complete")]
    Interrupted,
}

impl RunError {
    /// The exit code this error ends the process with.
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Self::Config(_) | Self::NoSuchRun(_) => ExitStatus::Config,
            Self::Source(e) if e.is_bad_input() => ExitStatus::Config,
            Self::Store(StoreError::LeaseHeld { .. }) => ExitStatus::Config,
            Self::Payple(e) if e.is_configuration() => ExitStatus::Config,
            Self::Interrupted => ExitStatus::Interrupted,
            _ => ExitStatus::Internal,
        }
    }
}

/// The result of `run`: a summary, or an error with the run it left behind.
#[derive(Debug)]
pub struct RunEnd {
    pub exit: ExitStatus,
    pub summary: Option<RunSummary>,
    pub error: Option<RunError>,
}

/// What `--dry-run` found.
#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    pub dry_run: bool,
    pub source: String,
    pub keys: i64,
    pub duplicates: i64,
    pub rejected: i64,
    pub auth_calls: u64,
}

/// Which run this process works on.
enum Plan {
    New,
    Continue(RunRecord),
    Done(RunRecord),
}

async fn plan(store: &Store, settings: &BatchSettings) -> Result<Plan, RunError> {
    match &settings.resume {
        Resume::Run(id) => match store.run(*id).await? {
            None => Err(RunError::NoSuchRun(*id)),
            Some(run) if run.state == RunState::Completed => Ok(Plan::Done(run)),
            Some(run) => Ok(Plan::Continue(run)),
        },
        Resume::Latest => match store.latest_unfinished_run().await? {
            Some(run) => Ok(Plan::Continue(run)),
            None => {
                tracing::info!("nothing to resume: starting a new run");
                Ok(Plan::New)
            }
        },
        Resume::No => {
            let Some(key) = &settings.run_key else {
                return Ok(Plan::New);
            };
            match store.run_by_key(key).await? {
                None => Ok(Plan::New),
                Some(run) if run.state == RunState::Completed && settings.rerun => {
                    store.retire_run_key(run.id).await?;
                    Ok(Plan::New)
                }
                Some(run) if run.state == RunState::Completed => Ok(Plan::Done(run)),
                Some(run) => Ok(Plan::Continue(run)),
            }
        }
    }
}

/// The options that shape a run's results, stored with it.
fn options_json(settings: &BatchSettings, client: &PaypleClient) -> String {
    serde_json::json!({
        "concurrency": settings.concurrency.get(),
        "shards": settings.shard.count.get(),
        "omit_pii": settings.omit_pii,
        "payple": client.describe(),
    })
    .to_string()
}

/// `run --dry-run`: configuration, source and credentials checked; nothing written.
pub async fn dry_run(
    settings: &BatchSettings,
    client: &PaypleClient,
    source_db: Option<sqlx::AnyPool>,
) -> Result<DryRun, RunError> {
    client.authenticate().await?;
    let counted = stage::count(&settings.source, source_db, settings.shard).await?;
    Ok(DryRun {
        dry_run: true,
        source: settings.source.describe(),
        keys: counted.keys,
        duplicates: counted.duplicates,
        rejected: counted.rejected,
        auth_calls: client.auth_calls(),
    })
}

/// The batch job. Always returns how the process should exit; the run it touched is left
/// in a state `--resume` understands.
pub async fn run(
    settings: &BatchSettings,
    store: &Store,
    client: Arc<PaypleClient>,
    source_db: Option<sqlx::AnyPool>,
    shutdown: &Shutdown,
) -> RunEnd {
    let started = Instant::now();
    let plan = match plan(store, settings).await {
        Ok(plan) => plan,
        Err(e) => return RunEnd::error(e),
    };
    let existing = match plan {
        Plan::Done(run) => {
            let note = format!(
                "run {} (run key {:?}) already completed; use --rerun to run it again",
                run.id,
                run.run_key.as_deref().unwrap_or_default()
            );
            tracing::info!("{note}");
            let mut summary = summary_of(&run, 0, started.elapsed(), 0, 0, ExitStatus::Success);
            summary.note = Some(note);
            return RunEnd {
                exit: ExitStatus::Success,
                summary: Some(summary),
                error: None,
            };
        }
        Plan::Continue(run) => Some(run),
        Plan::New => None,
    };

    let shard = settings.shard;
    let lease_name = if shard.is_whole() {
        "reconcile".to_owned()
    } else {
        format!("reconcile/shard-{}-of-{}", shard.index, shard.count)
    };
    let holder = lease::holder_name();
    if let Err(e) = lease::take(
        store,
        &lease_name,
        &holder,
        existing.as_ref().map(|r| r.id),
        shutdown,
    )
    .await
    {
        return RunEnd::error(e);
    }
    let end = run_leased(
        settings,
        store,
        client,
        source_db,
        shutdown,
        existing,
        started,
        &lease_name,
        &holder,
    )
    .await;
    if let Err(e) = store.release_lease(&lease_name, &holder).await {
        tracing::warn!(error = %e, "could not release the run lease (it expires by itself)");
    }
    end
}

#[allow(clippy::too_many_arguments)]
async fn run_leased(
    settings: &BatchSettings,
    store: &Store,
    client: Arc<PaypleClient>,
    source_db: Option<sqlx::AnyPool>,
    shutdown: &Shutdown,
    existing: Option<RunRecord>,
    started: Instant,
    lease_name: &str,
    holder: &str,
) -> RunEnd {
    // Credentials first: a bad configuration stops here with no run row and no lookup.
    if let Err(e) = client.authenticate().await {
        return RunEnd::error(e.into());
    }
    let shard = settings.shard;
    let (run_id, spec) = match existing {
        Some(run) => {
            let spec: SourceSpec = match serde_json::from_str(&run.source_spec) {
                Ok(spec) => spec,
                Err(e) => {
                    return RunEnd::error(RunError::Config(
                        ConfigError::unreadable_resumed_source(run.id, e),
                    ));
                }
            };
            if let Err(e) = store.reopen_run(run.id).await {
                return RunEnd::error(e.into());
            }
            tracing::info!(run_id = run.id, source = %run.source, "continuing run");
            (run.id, spec)
        }
        None => {
            let new = NewRun {
                run_key: settings.run_key.clone(),
                source: settings.source.describe(),
                source_spec: serde_json::to_string(&settings.source).unwrap_or_default(),
                options: options_json(settings, &client),
                shard_count: shard.count.get(),
            };
            match store.create_or_join_run(&new).await {
                Ok(id) => {
                    tracing::info!(run_id = id, source = %new.source, "starting run");
                    (id, settings.source.clone())
                }
                Err(e) => return RunEnd::error(e.into()),
            }
        }
    };
    if let Err(e) = store.set_lease_run(lease_name, holder, run_id).await {
        return RunEnd::error(e.into());
    }
    let heartbeat = tokio::spawn(heartbeat(
        store.clone(),
        lease_name.to_owned(),
        holder.to_owned(),
    ));
    let outcome = drive(settings, store, &client, source_db, shutdown, run_id, &spec).await;
    heartbeat.abort();

    let (state, exit, error, checked_now) = match outcome {
        Ok(Driven { checked, stopped }) => {
            let state = match shutdown.signal() {
                Some(_) if stopped => RunState::Interrupted,
                _ => RunState::Completed,
            };
            let exit = match shutdown.signal() {
                Some(signal) if stopped => signal.exit_status(),
                _ => ExitStatus::Success,
            };
            (state, exit, None, checked)
        }
        Err((error, checked)) => {
            let exit = match (&error, shutdown.signal()) {
                (RunError::Interrupted, Some(signal)) => signal.exit_status(),
                _ => error.exit_status(),
            };
            let state = if matches!(error, RunError::Interrupted) {
                RunState::Interrupted
            } else {
                RunState::Failed
            };
            (state, exit, Some(error), checked)
        }
    };
    let message = error.as_ref().map(ToString::to_string);
    let finished = retrying(|| {
        store.finish_shard(
            run_id,
            shard.index,
            state,
            client.auth_calls(),
            client.lookups(),
            i32::from(exit.code()),
            message.clone(),
        )
    })
    .await;
    let run = match finished {
        Ok(run) => run,
        Err(e) => {
            tracing::error!(run_id, error = %e, "could not record the end of the run; it stays resumable");
            return RunEnd {
                exit: if exit == ExitStatus::Success {
                    ExitStatus::Internal
                } else {
                    exit
                },
                summary: None,
                error: error.or(Some(e.into())),
            };
        }
    };
    // Failed or rejected keys anywhere in the run (a resume included) make exit code 2.
    let exit = if exit == ExitStatus::Success
        && state == RunState::Completed
        && (run.counts.failed > 0 || run.counts.rejected > 0)
    {
        ExitStatus::KeysFailed
    } else {
        exit
    };
    if exit != ExitStatus::Success
        && error.is_none()
        && let Err(e) = store.set_exit_code(run_id, i32::from(exit.code())).await
    {
        tracing::warn!(error = %e, "could not record the exit code");
    }
    let summary = summary_of(
        &run,
        checked_now,
        started.elapsed(),
        client.auth_calls(),
        client.lookups(),
        exit,
    );
    RunEnd {
        exit,
        summary: Some(summary),
        error,
    }
}

impl RunEnd {
    fn error(error: RunError) -> Self {
        Self {
            exit: error.exit_status(),
            summary: None,
            error: Some(error),
        }
    }
}

fn summary_of(
    run: &RunRecord,
    checked_now: u64,
    elapsed: Duration,
    auth_calls: u64,
    lookups: u64,
    exit: ExitStatus,
) -> RunSummary {
    let secs = elapsed.as_secs_f64();
    RunSummary {
        run_id: run.id,
        state: run.state.as_str(),
        source: run.source.clone(),
        keys: run.keys_total,
        duplicates: run.duplicates,
        active: run.counts.active,
        gone: run.counts.gone,
        failed: run.counts.failed,
        rejected: run.counts.rejected,
        checked_now,
        duration_secs: (secs * 1000.0).round() / 1000.0,
        lookups_per_second: ((checked_now as f64 / secs.max(0.001)) * 10.0).round() / 10.0,
        auth_calls,
        lookups,
        exit_code: exit.code(),
        note: None,
    }
}

async fn heartbeat(store: Store, name: String, holder: String) {
    let mut tick = tokio::time::interval(lease::HEARTBEAT);
    tick.tick().await;
    loop {
        tick.tick().await;
        match store.renew_lease(&name, &holder, lease::TTL).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!("the run lease was taken over by another process"),
            Err(e) => tracing::warn!(error = %e, "could not renew the run lease"),
        }
    }
}

/// How the lookup phase ended.
struct Driven {
    checked: u64,
    /// The key stream was cut short by a signal.
    stopped: bool,
}

/// Stages (if needed) and looks up every pending key.
async fn drive(
    settings: &BatchSettings,
    store: &Store,
    client: &Arc<PaypleClient>,
    source_db: Option<sqlx::AnyPool>,
    shutdown: &Shutdown,
    run_id: i64,
    spec: &SourceSpec,
) -> Result<Driven, (RunError, u64)> {
    let shard = settings.shard;
    let record = store
        .start_shard(run_id, shard.index)
        .await
        .map_err(|e| (e.into(), 0))?;
    if !record.staged {
        if spec.is_stdin()
            && record.keys_total.is_none()
            && store.count_staged(run_id, shard.index).await.unwrap_or(0) > 0
        {
            return Err((SourceError::StdinNotResumable(run_id).into(), 0));
        }
        let staged = stage::stage(store, run_id, shard, spec, source_db, shutdown)
            .await
            .map_err(|e| (e, 0))?;
        tracing::info!(
            run_id,
            keys = staged.keys,
            duplicates = staged.duplicates,
            rejected = staged.rejected,
            "key list complete"
        );
    }
    let pending = store
        .count_pending(run_id, shard.index)
        .await
        .map_err(|e| (e.into(), 0))?;
    let before = store
        .status_counts(run_id)
        .await
        .map_err(|e| (e.into(), 0))?;
    let progress = Progress::start(before.total() + pending, before, settings.progress_interval);

    let writer = writer::spawn(
        store.clone(),
        run_id,
        WriterConfig {
            batch_rows: settings.write_batch,
            ..WriterConfig::default()
        },
    );
    let looked = lookups(
        settings,
        store,
        client,
        shutdown,
        run_id,
        writer.sender,
        &progress,
    )
    .await;
    let written = match writer.task.await {
        Ok(result) => result,
        Err(join) => {
            return Err((
                StoreError::Query {
                    doing: "writing results",
                    source: sqlx::Error::Protocol(format!("writer task failed: {join}")),
                }
                .into(),
                looked.checked,
            ));
        }
    };
    let checked = looked.checked;
    match (looked.error, written) {
        (Some(error), _) => Err((error, checked)),
        (None, Err(e)) => Err((e.into(), checked)),
        (None, Ok(stats)) => {
            tracing::debug!(
                rows = stats.rows,
                batches = stats.batches,
                retries = stats.retries,
                "results written"
            );
            Ok(Driven {
                checked,
                stopped: looked.stopped,
            })
        }
    }
}

/// What the lookup loop did.
struct Looked {
    checked: u64,
    stopped: bool,
    error: Option<RunError>,
}

/// The bounded stream: pending keys → `check_one` (at most `concurrency` in flight) →
/// the writer. Keys whose lookups failed transiently (retries exhausted on 5xx, dropped
/// connections, broken replies) get no row yet: after the last key they are looked up
/// once more, with a fresh retry budget, and only then written.
async fn lookups(
    settings: &BatchSettings,
    store: &Store,
    client: &Arc<PaypleClient>,
    shutdown: &Shutdown,
    run_id: i64,
    sender: tokio::sync::mpsc::Sender<CheckRow>,
    progress: &Progress,
) -> Looked {
    let mut out = Sink {
        sender,
        progress,
        omit_pii: settings.omit_pii,
        looked: Looked {
            checked: 0,
            stopped: false,
            error: None,
        },
    };
    let concurrency = settings.concurrency.get();
    let keys = pending_keys(store.clone(), run_id, settings.shard.index)
        .map(|key| key.map(|k| (k, 0)))
        .take_until(shutdown.stop.clone().cancelled_owned());
    let drain = async {
        // With --max-attempts 1 nothing is retried, not even at the end.
        let mut deferred = (client.max_attempts() > 1).then(Vec::new);
        let first = look_up(keys, client, &shutdown.stop, concurrency);
        if !out.drain(first, client, deferred.as_mut()).await {
            return;
        }
        let deferred = deferred.unwrap_or_default();
        if deferred.is_empty() || shutdown.stop.is_cancelled() {
            return;
        }
        tracing::info!(
            keys = deferred.len(),
            "looking up once more the keys whose lookups failed transiently"
        );
        let again = stream::iter(deferred.into_iter().map(Ok))
            .take_until(shutdown.stop.clone().cancelled_owned());
        out.drain(
            look_up(again, client, &shutdown.stop, concurrency),
            client,
            None,
        )
        .await;
    };
    let grace = async {
        shutdown.stop.cancelled().await;
        tokio::select! {
            _ = tokio::time::sleep(settings.shutdown_grace) => {}
            _ = shutdown.now.cancelled() => {}
        }
    };
    tokio::select! {
        _ = drain => {}
        _ = grace => {
            tracing::warn!("shutdown grace expired: lookups still in flight are abandoned (resume checks them)");
        }
    }
    let mut looked = out.looked;
    looked.stopped = shutdown.stop.is_cancelled();
    looked
}

/// Keys waiting for the second pass: at most this many are held (about 100 bytes each);
/// past it, transient failures are written as they come.
const MAX_DEFERRED: usize = 10_000;

/// A key, and the lookups already spent on it.
type Attempted = (StagedKey, u32);

/// Keys → lookups, at most `concurrency` in flight; attempts spent earlier are added.
fn look_up<'a>(
    keys: impl Stream<Item = Result<Attempted, RunError>> + 'a,
    client: &'a Arc<PaypleClient>,
    stop: &'a CancellationToken,
    concurrency: usize,
) -> impl Stream<Item = Result<(Attempted, Option<LookupOutcome>), RunError>> + 'a {
    keys.map(move |key| {
        let client = Arc::clone(client);
        let stop = stop.clone();
        async move {
            let (key, before) = key?;
            let outcome = check_one(&client, &key.payer_id, &stop).await?;
            let outcome = outcome.map(|mut o| {
                o.attempts += before;
                o
            });
            Ok::<_, RunError>(((key, before), outcome))
        }
    })
    .buffer_unordered(concurrency)
}

/// Where outcomes go: the writer, the progress, the tally.
struct Sink<'a> {
    sender: tokio::sync::mpsc::Sender<CheckRow>,
    progress: &'a Progress,
    omit_pii: bool,
    looked: Looked,
}

impl Sink<'_> {
    /// Writes every outcome of `results`, or keeps transient failures in `deferred` while
    /// there is room. `false` when the run must stop (an error, or the writer is gone).
    async fn drain(
        &mut self,
        results: impl Stream<Item = Result<(Attempted, Option<LookupOutcome>), RunError>>,
        client: &PaypleClient,
        mut deferred: Option<&mut Vec<Attempted>>,
    ) -> bool {
        let mut results = std::pin::pin!(results);
        while let Some(result) = results.next().await {
            let (key, mut outcome) = match result {
                Ok(((key, _), Some(outcome))) => (key, outcome),
                // Stopped before it was sent: no row, so a resume checks it.
                Ok((_, None)) => continue,
                Err(e) => {
                    self.looked.error = Some(e);
                    return false;
                }
            };
            if let Some(later) = deferred.as_deref_mut()
                && later.len() < MAX_DEFERRED
                && client.failed_transiently(&outcome)
            {
                later.push((key, outcome.attempts));
                continue;
            }
            if self.omit_pii {
                outcome.details = outcome.details.without_pii();
            }
            let status = outcome.status;
            log_outcome(&key, &outcome);
            let row = CheckRow {
                payer_id: key.payer_id,
                customer_ref: key.customer_ref,
                outcome,
                checked_at: now_text(),
            };
            if self.sender.send(row).await.is_err() {
                // The writer stopped: its error says why.
                return false;
            }
            self.looked.checked += 1;
            self.progress.record(status);
        }
        true
    }
}

fn log_outcome(key: &StagedKey, outcome: &LookupOutcome) {
    let masked = crate::domain::mask_payer_id(&key.payer_id);
    match outcome.status {
        KeyStatus::Failed => tracing::warn!(
            key = %masked,
            code = outcome.result_code.as_deref().unwrap_or_default(),
            msg = outcome.result_msg.as_deref().unwrap_or_default(),
            attempts = outcome.attempts,
            "lookup failed"
        ),
        status => tracing::debug!(key = %masked, %status, attempts = outcome.attempts, "checked"),
    }
}

/// One key: validated again (a table row may have changed), then looked up. `None` when
/// `stop` fired before its request went out: it gets no row, and a resume checks it.
pub async fn check_one(
    client: &PaypleClient,
    raw: &str,
    stop: &CancellationToken,
) -> Result<Option<LookupOutcome>, RunError> {
    match PayerId::parse(raw) {
        Ok(id) => Ok(client.check_until(&id, stop).await?),
        Err(reason) => Ok(Some(LookupOutcome::rejected(
            &reason,
            "stored key".to_owned(),
        ))),
    }
}

/// The run's keys without a result row, page by page, in input order.
fn pending_keys(
    store: Store,
    run_id: i64,
    shard_index: u32,
) -> impl Stream<Item = Result<StagedKey, RunError>> {
    stream::unfold(Some(0i64), move |cursor| {
        let store = store.clone();
        async move {
            let after = cursor?;
            let page = retrying(|| store.pending_keys(run_id, shard_index, after, PAGE)).await;
            match page {
                Ok(keys) if keys.is_empty() => None,
                Ok(keys) => {
                    let next = keys.last().map(|k| k.seq);
                    Some((
                        stream::iter(keys.into_iter().map(Ok).collect::<Vec<_>>()),
                        next,
                    ))
                }
                Err(e) => Some((stream::iter(vec![Err(e.into())]), None)),
            }
        }
    })
    .flatten()
}
