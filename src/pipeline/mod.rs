//! The nightly batch: decide which run this is, stage its keys, look them up through a
//! bounded, rate-limited stream, and hand every outcome to the single writer.
//!
//! # Architecture
//! `run` = plan (new, resume, run key) → lease → partner auth → stage (the whole source,
//! before any lookup) → lookups → finish. Lookups page through the run's keys that have no
//! result row yet (so a resumed run only checks what is missing), run [`check_one`] with at
//! most `--concurrency` in flight, and send each row to [`crate::store::writer`]. On the
//! first signal the key stream ends, in-flight lookups get `--shutdown-grace`, and the run
//! is marked `interrupted`. A re-check (`--recheck-failed`, or a completed run key with
//! transient failures) first makes the chosen failed keys pending again ([`recheck`]), then
//! goes on like a resume.

pub mod budgeted;
pub mod end;
pub mod lease;
pub mod progress;
pub mod recheck;
pub mod stage;

use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt, stream};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::budget::BudgetStop;
pub use crate::domain::RunSummary;
use crate::domain::{KeyStatus, LookupOutcome, PayerId};
use crate::exit::ExitStatus;
use crate::payple::classify::CodeBook;
use crate::payple::{PaypleClient, PaypleError};
use crate::settings::{BatchSettings, ConfigError, Resume, Shard};
use crate::shutdown::Shutdown;
use crate::source::{SourceError, SourceSpec};
use crate::store::retrying;
use crate::store::writer::{self, WriterConfig, WriterError, WriterStats};
use crate::store::{
    CheckRow, FailedSelection, NewRun, RunRecord, RunState, StagedKey, Store, StoreError, now_text,
};
use end::{Outcome, Tally, conclude, summary_of};
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
    #[error("--recheck-failed: {0}")]
    NotRecheckable(String),
    #[error("interrupted before the key list was complete")]
    Interrupted,
}

impl RunError {
    /// The exit code this error ends the process with.
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Self::Config(_) | Self::NoSuchRun(_) | Self::NotRecheckable(_) => ExitStatus::Config,
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
    /// A completed run whose selected failed keys are looked up again.
    Recheck(RunRecord, FailedSelection),
    /// Nothing to do: the note says why.
    Done(RunRecord, String),
}

/// An existing run this process continues, and the failed keys it first makes pending
/// again (a re-check).
struct Target {
    run: RunRecord,
    recheck: Option<FailedSelection>,
}

async fn plan(store: &Store, settings: &BatchSettings, book: &CodeBook) -> Result<Plan, RunError> {
    let scope = if settings.all_failed {
        recheck::Scope::AllFailed
    } else {
        recheck::Scope::Transient
    };
    if let Some(which) = settings.recheck {
        return recheck::plan(store, which, scope, book).await;
    }
    match &settings.resume {
        Resume::Run(id) => match store.run(*id).await? {
            None => Err(RunError::NoSuchRun(*id)),
            Some(run) if run.state == RunState::Completed => Ok(already_completed(run)),
            Some(run) => Ok(Plan::Continue(run)),
        },
        Resume::Latest => match store.latest_unfinished_run().await? {
            Some(run) => Ok(Plan::Continue(run)),
            // Asked to continue, a job that silently starts a full new run instead would
            // hide that the run it meant is gone.
            None => Err(RunError::Config(ConfigError::Invalid {
                flag: "--resume",
                reason: "nothing to resume: no unfinished run in the results database \
                         (run without --resume to start a new one)"
                    .to_owned(),
            })),
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
                // Keys that failed for reasons a new lookup may change are re-checked.
                Some(run) if run.state == RunState::Completed => {
                    match recheck::selection(store, &run, scope, book).await? {
                        Some(selection) => Ok(Plan::Recheck(run, selection)),
                        None => Ok(already_completed(run)),
                    }
                }
                Some(run) => Ok(Plan::Continue(run)),
            }
        }
    }
}

/// The answer for a completed run with nothing left to do.
fn already_completed(run: RunRecord) -> Plan {
    let note = format!(
        "run {} (run key {:?}) already completed; use --rerun to run it again",
        run.id,
        run.run_key.as_deref().unwrap_or_default()
    );
    Plan::Done(run, note)
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
    let ctx = RunContext {
        settings,
        store,
        client,
        shutdown,
        started: Instant::now(),
    };
    let existing = match plan(store, settings, ctx.client.codes()).await {
        Ok(Plan::Done(run, note)) => return ctx.already_done(&run, note),
        Ok(Plan::Continue(run)) => Some(Target { run, recheck: None }),
        Ok(Plan::Recheck(run, selection)) => Some(Target {
            run,
            recheck: Some(selection),
        }),
        Ok(Plan::New) => None,
        Err(e) => return ctx.failed(e),
    };
    let lease = HeldLease {
        name: lease_name(settings.shard),
        holder: lease::holder_name(),
    };
    let resumed = existing.as_ref().map(|t| t.run.id);
    if let Err(e) = lease::take(store, &lease.name, &lease.holder, resumed, shutdown).await {
        return ctx.failed(e);
    }
    let end = ctx.leased(source_db, existing, &lease).await;
    if let Err(e) = store.release_lease(&lease.name, &lease.holder).await {
        tracing::warn!(error = %e, "could not release the run lease (it expires by itself)");
    }
    end
}

/// The lease of a shard's batch: one process at a time.
fn lease_name(shard: Shard) -> String {
    if shard.is_whole() {
        "reconcile".to_owned()
    } else {
        format!("reconcile/shard-{}-of-{}", shard.index, shard.count)
    }
}

/// The lease this process holds, by name and holder.
struct HeldLease {
    name: String,
    holder: String,
}

/// What one run needs from start to end.
struct RunContext<'a> {
    settings: &'a BatchSettings,
    store: &'a Store,
    client: Arc<PaypleClient>,
    shutdown: &'a Shutdown,
    started: Instant,
}

/// How the work on a run ended, and the keys this process checked.
struct Driven {
    checked: u64,
    outcome: Outcome,
    /// A budget ended the lookups with keys left unchecked.
    budget_stop: Option<BudgetStop>,
}

impl RunEnd {
    fn new(outcome: Outcome, exit: ExitStatus, summary: Option<RunSummary>) -> Self {
        Self {
            exit,
            summary,
            error: outcome.into_error(),
        }
    }
}

impl RunContext<'_> {
    /// A run that stopped before it could be recorded.
    fn failed(&self, error: RunError) -> RunEnd {
        let outcome = Outcome::Failed(error);
        let (_, exit) = conclude(&outcome, self.shutdown.signal(), Tally::Pending);
        RunEnd::new(outcome, exit, None)
    }

    /// The run already completed and there is nothing to re-check: nothing to do.
    fn already_done(&self, run: &RunRecord, note: String) -> RunEnd {
        tracing::info!("{note}");
        let elapsed = self.started.elapsed();
        let mut summary = summary_of(run, 0, elapsed, 0, 0, ExitStatus::Success);
        summary.note = Some(note);
        RunEnd::new(Outcome::Finished, ExitStatus::Success, Some(summary))
    }

    /// Under the lease: credentials, the run row, the lookups, the end of the run.
    async fn leased(
        &self,
        source_db: Option<sqlx::AnyPool>,
        existing: Option<Target>,
        lease: &HeldLease,
    ) -> RunEnd {
        // Credentials first: a bad configuration stops here with no run row and no lookup.
        if let Err(e) = self.client.authenticate().await {
            return self.failed(e.into());
        }
        let (run_id, spec, note) = match self.open_run(existing, lease).await {
            Ok(opened) => opened,
            Err(e) => return self.failed(e),
        };
        let heartbeat = tokio::spawn(heartbeat(
            self.store.clone(),
            lease.name.clone(),
            lease.holder.clone(),
        ));
        let driven = self.drive(source_db, run_id, &spec).await;
        heartbeat.abort();
        let mut end = self.finish(run_id, driven).await;
        // What a re-check reopened comes first; a note of how the run ended stays.
        if let Some(summary) = &mut end.summary {
            summary.note = match (note, summary.note.take()) {
                (Some(reopened), Some(ended)) => Some(format!("{reopened}; {ended}")),
                (reopened, ended) => reopened.or(ended),
            };
        }
        end
    }

    /// Continues `existing` (a re-check: its chosen failed keys made pending again first)
    /// or creates (or joins) the run, and ties the lease to it. The note says what a
    /// re-check reopened.
    async fn open_run(
        &self,
        existing: Option<Target>,
        lease: &HeldLease,
    ) -> Result<(i64, SourceSpec, Option<String>), RunError> {
        let mut note = None;
        let (run_id, spec) = match existing {
            Some(Target { run, recheck }) => {
                if let Some(selection) = recheck {
                    note = recheck::reopen(self.store, run.id, &selection).await?;
                }
                self.reopen(run).await?
            }
            None => self.create().await?,
        };
        self.store
            .set_lease_run(&lease.name, &lease.holder, run_id)
            .await?;
        Ok((run_id, spec, note))
    }

    /// An unfinished run, with the source it was started with.
    async fn reopen(&self, run: RunRecord) -> Result<(i64, SourceSpec), RunError> {
        let spec: SourceSpec = serde_json::from_str(&run.source_spec)
            .map_err(|e| ConfigError::unreadable_resumed_source(run.id, e))?;
        self.store.reopen_run(run.id).await?;
        tracing::info!(run_id = run.id, source = %run.source, "continuing run");
        Ok((run.id, spec))
    }

    /// A new run (or the one another shard of the same run key created).
    async fn create(&self) -> Result<(i64, SourceSpec), RunError> {
        let settings = self.settings;
        let new = NewRun {
            run_key: settings.run_key.clone(),
            source: settings.source.describe(),
            source_spec: serde_json::to_string(&settings.source).unwrap_or_default(),
            options: options_json(settings, &self.client),
            shard_count: settings.shard.count.get(),
        };
        let id = self.store.create_or_join_run(&new).await?;
        tracing::info!(run_id = id, source = %new.source, "starting run");
        Ok((id, settings.source.clone()))
    }

    /// Records how the shard ended and builds the summary; [`conclude`] decides the state
    /// and the exit status.
    async fn finish(&self, run_id: i64, driven: Driven) -> RunEnd {
        let Driven {
            checked,
            outcome,
            budget_stop,
        } = driven;
        let budget_stop = budget_stop.filter(|_| matches!(outcome, Outcome::Finished));
        let signal = self.shutdown.signal();
        let (state, exit) = conclude(&outcome, signal, Tally::Pending);
        let unavailable = matches!(outcome, Outcome::Unavailable).then(|| {
            format!(
                "Payple was unavailable for the whole outage budget ({} s paused); the pending \
                 keys are looked up by --resume {run_id} or the same --run-key",
                self.client.outage_paused().as_secs()
            )
        });
        let message = outcome
            .error()
            .map(ToString::to_string)
            .or_else(|| unavailable.clone());
        let (shard, client) = (self.settings.shard, &self.client);
        let finished = retrying(|| {
            self.store.finish_shard(
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
                let (_, exit) = conclude(&outcome, signal, Tally::Unrecorded);
                let outcome = match outcome {
                    Outcome::Failed(error) => Outcome::Failed(error),
                    _ => Outcome::Failed(e.into()),
                };
                return RunEnd::new(outcome, exit, None);
            }
        };
        if let Err(e) = self
            .store
            .record_coverage(run_id, budget_stop.map(BudgetStop::as_str))
            .await
        {
            tracing::warn!(error = %e, "could not record the run's coverage");
        }
        // Failed or rejected keys anywhere in the run (a resume included) make exit code 2.
        let (_, final_exit) = conclude(&outcome, signal, Tally::Recorded(&run.counts));
        if final_exit != exit
            && let Err(e) = self
                .store
                .set_exit_code(run_id, i32::from(final_exit.code()))
                .await
        {
            tracing::warn!(error = %e, "could not record the exit code");
        }
        let elapsed = self.started.elapsed();
        let mut summary = summary_of(
            &run,
            checked,
            elapsed,
            client.auth_calls(),
            client.lookups(),
            final_exit,
        );
        summary.budget_stop = budget_stop.map(BudgetStop::as_str);
        if let Some(note) = unavailable {
            tracing::warn!("{note}");
            summary.note = Some(note);
        }
        RunEnd::new(outcome, final_exit, Some(summary))
    }

    /// Stages (if needed) and looks up every pending key.
    async fn drive(
        &self,
        source_db: Option<sqlx::AnyPool>,
        run_id: i64,
        spec: &SourceSpec,
    ) -> Driven {
        match self.prepare(source_db, run_id, spec).await {
            Ok(progress) => self.look_up_pending(run_id, &progress).await,
            Err(e) => Driven {
                checked: 0,
                outcome: Outcome::Failed(e),
                budget_stop: None,
            },
        }
    }

    /// Starts the shard, stages its keys unless that is done, and starts the progress.
    async fn prepare(
        &self,
        source_db: Option<sqlx::AnyPool>,
        run_id: i64,
        spec: &SourceSpec,
    ) -> Result<Progress, RunError> {
        let (store, shard) = (self.store, self.settings.shard);
        let record = store.start_shard(run_id, shard.index).await?;
        if !record.staged {
            if spec.is_stdin()
                && record.keys_total.is_none()
                && store.count_staged(run_id, shard.index).await.unwrap_or(0) > 0
            {
                return Err(SourceError::StdinNotResumable(run_id).into());
            }
            let staged = stage::stage(
                store,
                run_id,
                shard,
                spec,
                source_db.clone(),
                self.shutdown,
                self.settings.allow_empty_source,
            )
            .await?;
            tracing::info!(
                run_id,
                keys = staged.keys,
                duplicates = staged.duplicates,
                rejected = staged.rejected,
                "key list complete"
            );
        }
        if let Some(budget) = &self.settings.budget {
            budgeted::prepare(self.settings, store, run_id, spec, source_db).await?;
            tracing::info!(run_id, ?budget, "budgeted run: most urgent keys first");
        }
        let mut pending = store.count_pending(run_id, shard.index).await?;
        if let Some(max) = self.settings.budget.and_then(|b| b.max_lookups) {
            pending = pending.min(i64::try_from(max).unwrap_or(i64::MAX));
        }
        let before = store.status_counts(run_id).await?;
        let interval = self.settings.progress_interval;
        let mut progress = Progress::start(before.total() + pending, before, interval);
        let client = Arc::clone(&self.client);
        progress.follow(move || client.health_note());
        Ok(progress)
    }

    /// The lookups into the single writer; the outcome waits for the writer to finish.
    async fn look_up_pending(&self, run_id: i64, progress: &Progress) -> Driven {
        let config = WriterConfig {
            batch_rows: self.settings.write_batch,
            ..WriterConfig::default()
        };
        let writer = writer::spawn(self.store.clone(), run_id, config);
        let looked = self.lookups(run_id, writer.sender, progress).await;
        let written = writer.task.await;
        let deadline_hit = looked.deadline_hit;
        let checked = looked.checked;
        let outcome = lookup_outcome(looked, written);
        let budget_stop = match (&self.settings.budget, &outcome) {
            (Some(_), Outcome::Finished) => {
                let shard = self.settings.shard.index;
                match self.store.count_pending(run_id, shard).await {
                    Ok(left) if left > 0 => Some(deadline_hit.unwrap_or(BudgetStop::MaxLookups)),
                    Ok(_) => None,
                    Err(e) => {
                        return Driven {
                            checked,
                            outcome: Outcome::Failed(e.into()),
                            budget_stop: None,
                        };
                    }
                }
            }
            _ => None,
        };
        Driven {
            checked,
            outcome,
            budget_stop,
        }
    }
}

/// How the lookup phase ended, from the loop's and the writer's results.
fn lookup_outcome(
    looked: Looked,
    written: Result<Result<WriterStats, WriterError>, tokio::task::JoinError>,
) -> Outcome {
    let written = match written {
        Ok(result) => result.map_err(RunError::from),
        Err(join) => Err(RunError::Store(StoreError::Query {
            doing: "writing results",
            source: sqlx::Error::Protocol(format!("writer task failed: {join}")),
        })),
    };
    match (looked.error, written) {
        (Some(error), _) => Outcome::Failed(error),
        (None, Err(e)) => Outcome::Failed(e),
        (None, Ok(stats)) => {
            tracing::debug!(
                rows = stats.rows,
                batches = stats.batches,
                retries = stats.retries,
                "results written"
            );
            if stats.cut_fields > 0 || stats.isolated > 0 {
                tracing::warn!(
                    cut_fields = stats.cut_fields,
                    refused_rows = stats.isolated,
                    "some values were cut to their column's bound, or rows stored as failed"
                );
            }
            if looked.stopped {
                Outcome::Stopped
            } else if looked.unavailable {
                Outcome::Unavailable
            } else {
                Outcome::Finished
            }
        }
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

/// What the lookup loop did.
struct Looked {
    checked: u64,
    stopped: bool,
    /// The outage budget ran out: the key stream was cut short.
    unavailable: bool,
    /// The time budget or stop-at time that ended dispatching, if one did.
    deadline_hit: Option<BudgetStop>,
    error: Option<RunError>,
}

impl RunContext<'_> {
    /// The bounded stream: pending keys → `check_one` (at most `concurrency` in flight) →
    /// the writer. Keys whose lookups failed transiently (retries exhausted on 5xx, dropped
    /// connections, broken replies) get no row yet: after the last key they are looked up
    /// once more, with a fresh retry budget, and only then written.
    async fn lookups(
        &self,
        run_id: i64,
        sender: tokio::sync::mpsc::Sender<CheckRow>,
        progress: &Progress,
    ) -> Looked {
        let (settings, store, client, shutdown) =
            (self.settings, self.store, &self.client, self.shutdown);
        let mut out = Sink {
            sender,
            progress,
            omit_pii: settings.omit_pii,
            looked: Looked {
                checked: 0,
                stopped: false,
                unavailable: false,
                deadline_hit: None,
                error: None,
            },
        };
        let concurrency = settings.concurrency.get();
        let limits = budgeted::Limits::start(settings.budget.as_ref());
        let queued = settings.budget.is_some();
        let keys = budgeted::limit(
            pending_keys(store.clone(), run_id, settings.shard.index, queued),
            &limits,
        )
        .map(|key| {
            key.map(|k| {
                let before = k.prior_attempts;
                (k, before)
            })
        })
        .take_until(halted(shutdown, client));
        let drain = async {
            // With --max-attempts 1 nothing is retried, not even at the end.
            let mut deferred = (client.max_attempts() > 1).then(Vec::new);
            let first = look_up(keys, client, &shutdown.stop, concurrency);
            if !out.drain(first, client, deferred.as_mut()).await {
                return;
            }
            let deferred = deferred.unwrap_or_default();
            // After a signal or a spent outage budget, held keys get no row: a resume
            // looks them up again.
            if deferred.is_empty()
                || shutdown.stop.is_cancelled()
                || client.is_unavailable()
                || limits.hit().is_some()
            {
                return;
            }
            tracing::info!(
                keys = deferred.len(),
                "looking up once more the keys whose lookups failed transiently or with an \
                 unknown code"
            );
            let again =
                stream::iter(deferred.into_iter().map(Ok)).take_until(halted(shutdown, client));
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
        looked.unavailable = client.is_unavailable();
        looked.deadline_hit = limits.hit();
        looked
    }
}

/// Resolves on the first signal, or when the outage budget is spent.
fn halted(shutdown: &Shutdown, client: &PaypleClient) -> impl Future<Output = ()> + 'static {
    let (stop, unavailable) = (shutdown.stop.clone(), client.unavailable().clone());
    async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = unavailable.cancelled() => {}
        }
    }
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
    // Masked only when a line is written: the debug line is usually off.
    let masked = || crate::domain::mask_payer_id(&key.payer_id);
    match outcome.status {
        KeyStatus::Failed => tracing::warn!(
            key = %masked(),
            code = outcome.result_code.as_deref().unwrap_or_default(),
            msg = outcome.result_msg.as_deref().unwrap_or_default(),
            attempts = outcome.attempts,
            "lookup failed"
        ),
        status => tracing::debug!(key = %masked(), %status, attempts = outcome.attempts, "checked"),
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

/// The run's keys without a result row, page by page, in input order (or, for a
/// budgeted run, in the priority order of its queue).
fn pending_keys(
    store: Store,
    run_id: i64,
    shard_index: u32,
    queued: bool,
) -> impl Stream<Item = Result<StagedKey, RunError>> {
    // The cursor, and whether the shard had no result rows when paging began (decided at
    // the first page).
    stream::unfold((Some(0i64), None), move |(cursor, fresh)| {
        let store = store.clone();
        async move {
            let after = cursor?;
            let fresh = match fresh {
                Some(fresh) => Ok(fresh),
                None => retrying(|| store.has_results(run_id, shard_index))
                    .await
                    .map(|has| !has),
            };
            let page = match fresh {
                Ok(fresh) => retrying(|| async {
                    if queued {
                        store.queued_keys(run_id, shard_index, after, PAGE).await
                    } else {
                        store
                            .pending_keys(run_id, shard_index, after, PAGE, fresh)
                            .await
                    }
                })
                .await
                .map(|keys| (keys, fresh)),
                Err(e) => Err(e),
            };
            match page {
                Ok((keys, _)) if keys.is_empty() => None,
                Ok((keys, fresh)) => {
                    let next = keys.last().map(|k| k.seq);
                    Some((
                        stream::iter(keys.into_iter().map(Ok).collect::<Vec<_>>()),
                        (next, Some(fresh)),
                    ))
                }
                Err(e) => Some((stream::iter(vec![Err(e.into())]), (None, None))),
            }
        }
    })
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_shard_has_its_own_lease() {
        assert_eq!(lease_name(Shard::WHOLE), "reconcile");
        let shard = Shard::new(1, 3).expect("shard");
        assert_eq!(lease_name(shard), "reconcile/shard-1-of-3");
    }

    fn looked(stopped: bool, error: Option<RunError>) -> Looked {
        Looked {
            checked: 4,
            stopped,
            unavailable: false,
            deadline_hit: None,
            error,
        }
    }

    fn stats() -> WriterStats {
        WriterStats {
            rows: 4,
            batches: 1,
            retries: 0,
            ..WriterStats::default()
        }
    }

    fn store_error() -> StoreError {
        StoreError::Query {
            doing: "writing results",
            source: sqlx::Error::PoolTimedOut,
        }
    }

    #[test]
    fn the_lookup_phase_finishes_stops_or_fails() {
        assert!(matches!(
            lookup_outcome(looked(false, None), Ok(Ok(stats()))),
            Outcome::Finished
        ));
        assert!(matches!(
            lookup_outcome(looked(true, None), Ok(Ok(stats()))),
            Outcome::Stopped
        ));
        let unavailable = Looked {
            unavailable: true,
            ..looked(false, None)
        };
        assert!(matches!(
            lookup_outcome(unavailable, Ok(Ok(stats()))),
            Outcome::Unavailable
        ));
        // The loop's own error wins over the writer's.
        let both = lookup_outcome(
            looked(false, Some(RunError::NoSuchRun(3))),
            Ok(Err(WriterError {
                lost: 2,
                stats: Box::new(stats()),
                source: store_error(),
            })),
        );
        assert!(matches!(both, Outcome::Failed(RunError::NoSuchRun(3))));
        let writer = lookup_outcome(
            looked(true, None),
            Ok(Err(WriterError {
                lost: 2,
                stats: Box::new(stats()),
                source: store_error(),
            })),
        );
        assert!(matches!(writer, Outcome::Failed(RunError::Writer(_))));
    }

    #[tokio::test]
    async fn a_writer_task_that_died_fails_the_run_as_a_store_error() {
        let task = tokio::spawn(async { panic!("writer bug") });
        let joined: Result<Result<WriterStats, WriterError>, _> = task.await;
        let outcome = lookup_outcome(looked(false, None), joined);
        let Outcome::Failed(error) = outcome else {
            panic!("not failed: {outcome:?}");
        };
        assert!(matches!(error, RunError::Store(_)));
        assert!(error.to_string().contains("writer task failed"), "{error}");
    }

    #[test]
    fn run_errors_name_their_exit_code() {
        assert_eq!(RunError::NoSuchRun(1).exit_status(), ExitStatus::Config);
        assert_eq!(RunError::Interrupted.exit_status(), ExitStatus::Interrupted);
        assert_eq!(
            RunError::Store(store_error()).exit_status(),
            ExitStatus::Internal
        );
        let held = RunError::Store(StoreError::LeaseHeld {
            name: "reconcile".to_owned(),
            run_id: 1,
            holder: "other".to_owned(),
            expires_at: String::new(),
        });
        assert_eq!(held.exit_status(), ExitStatus::Config);
    }
}
