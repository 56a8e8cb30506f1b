//! The lookup phase of a run: the run's pending keys, page by page, through [`check_one`]
//! with at most `--concurrency` in flight, into the single writer; keys that failed
//! transiently are held and looked up once more at the end.

use std::sync::Arc;

use futures::{Stream, StreamExt, stream};
use tokio_util::sync::CancellationToken;

use super::context::RunContext;
use super::end::{Driven, Outcome};
use super::error::RunError;
use super::priority;
use super::progress::Progress;
use crate::budget::BudgetStop;
use crate::domain::{KeyStatus, LookupOutcome, PayerId};
use crate::payple::PaypleClient;
use crate::shutdown::Shutdown;
use crate::store::retrying;
use crate::store::writer::{self, WriterConfig, WriterError, WriterStats};
use crate::store::{CheckRow, StagedKey, Store, StoreError};

/// Keys read per page of the run's key list.
const PAGE: i64 = 1000;
impl RunContext<'_> {
    /// The lookups into the single writer; the outcome waits for the writer to finish.
    pub(super) async fn look_up_pending(&self, run_id: i64, progress: &Progress) -> Driven {
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
        let mut out = Sink::new(sender, progress, settings.omit_pii);
        let concurrency = settings.concurrency.get();
        let limits = priority::Limits::start(settings.budget.as_ref());
        let queued = settings.budget.is_some();
        let keys = priority::limit(
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
            self.look_up_again(&mut out, deferred.unwrap_or_default(), &limits)
                .await;
        };
        tokio::select! {
            _ = drain => {}
            _ = grace_spent(shutdown, settings.shutdown_grace) => {
                tracing::warn!("shutdown grace expired: lookups still in flight are abandoned (resume checks them)");
            }
        }
        let mut looked = out.looked;
        looked.stopped = shutdown.stop.is_cancelled();
        looked.unavailable = client.is_unavailable();
        looked.deadline_hit = limits.hit();
        looked
    }

    /// The second pass: the keys the first one held back, looked up once more. After a
    /// signal, a spent outage budget or a spent time budget they get no row: a resume
    /// looks them up again.
    async fn look_up_again(
        &self,
        out: &mut Sink<'_>,
        deferred: Vec<Attempted>,
        limits: &priority::Limits,
    ) {
        let (client, shutdown) = (&self.client, self.shutdown);
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
        let again = stream::iter(deferred.into_iter().map(Ok)).take_until(halted(shutdown, client));
        let concurrency = self.settings.concurrency.get();
        out.drain(
            look_up(again, client, &shutdown.stop, concurrency),
            client,
            None,
        )
        .await;
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
/// Resolves when in-flight lookups get no more time: `grace` after the first signal, or
/// at a second one.
async fn grace_spent(shutdown: &Shutdown, grace: std::time::Duration) {
    shutdown.stop.cancelled().await;
    tokio::select! {
        _ = tokio::time::sleep(grace) => {}
        _ = shutdown.now.cancelled() => {}
    }
}

struct Sink<'a> {
    sender: tokio::sync::mpsc::Sender<CheckRow>,
    progress: &'a Progress,
    omit_pii: bool,
    looked: Looked,
}

impl<'a> Sink<'a> {
    fn new(
        sender: tokio::sync::mpsc::Sender<CheckRow>,
        progress: &'a Progress,
        omit_pii: bool,
    ) -> Self {
        Self {
            sender,
            progress,
            omit_pii,
            looked: Looked {
                checked: 0,
                stopped: false,
                unavailable: false,
                deadline_hit: None,
                error: None,
            },
        }
    }

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
                checked_at: chrono::Utc::now(),
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
/// budgeted run, in the priority order of its queue). The next page is read while the
/// keys of this one are looked up ([`read_ahead`]).
fn pending_keys(
    store: Store,
    run_id: i64,
    shard_index: u32,
    queued: bool,
) -> impl Stream<Item = Result<StagedKey, RunError>> {
    read_ahead(key_pages(store, run_id, shard_index, queued)).flatten()
}

/// The pages of [`pending_keys`], each read when the one before it is done with.
fn key_pages(
    store: Store,
    run_id: i64,
    shard_index: u32,
    queued: bool,
) -> impl Stream<Item = stream::Iter<std::vec::IntoIter<Result<StagedKey, RunError>>>> {
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
}

/// Reads `pages` one page ahead of the consumer, in a task of its own: a page comes from
/// the database while the keys of the one before are looked up, so dispatching does not
/// stop for each page. The task ends with the stream, or when the stream is dropped.
fn read_ahead<T: Send + 'static>(
    pages: impl Stream<Item = T> + Send + 'static,
) -> impl Stream<Item = T> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let task = tokio::spawn(async move {
        let mut pages = std::pin::pin!(pages);
        while let Some(page) = pages.next().await {
            if tx.send(page).await.is_err() {
                break;
            }
        }
    });
    // Aborted when the stream is dropped: a page reader outlives no run.
    let reader = tokio_util::task::AbortOnDropHandle::new(task);
    stream::unfold((rx, reader), |(mut rx, reader)| async move {
        rx.recv().await.map(|page| (page, (rx, reader)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
