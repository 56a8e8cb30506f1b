//! Which run this process works on: a new one, one it continues, a completed one whose
//! failed keys it re-checks, or none (already done), decided from the settings and the
//! runs already stored.

use super::error::RunError;
use super::recheck::{self, Scope};
use crate::payple::codebook::CodeBook;
use crate::settings::{BatchSettings, ConfigError, RecheckRun, Resume};
use crate::store::{FailedSelection, RunRecord, RunState, Store};

/// Which run this process works on.
pub(super) enum Plan {
    New,
    Continue(RunRecord),
    /// A completed run whose selected failed keys are looked up again.
    Recheck(RunRecord, FailedSelection),
    /// Nothing to do: the note says why.
    Done(RunRecord, String),
}

/// An existing run this process continues, and the failed keys it first makes pending
/// again (a re-check).
pub(super) struct Target {
    pub(super) run: RunRecord,
    pub(super) recheck: Option<FailedSelection>,
}

pub(super) async fn plan(
    store: &Store,
    settings: &BatchSettings,
    book: &CodeBook,
) -> Result<Plan, RunError> {
    let scope = if settings.all_failed {
        recheck::Scope::AllFailed
    } else {
        recheck::Scope::Transient
    };
    if let Some(which) = settings.recheck {
        return recheck_failed(store, which, scope, book).await;
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

/// `--recheck-failed`: the run must exist, be completed and unsharded. With nothing to
/// re-check the answer is a note (exit 0): the night needs no repair this command can make.
async fn recheck_failed(
    store: &Store,
    which: RecheckRun,
    scope: Scope,
    book: &CodeBook,
) -> Result<Plan, RunError> {
    let run = match which {
        RecheckRun::Run(id) => store.run(id).await?.ok_or(RunError::NoSuchRun(id))?,
        RecheckRun::Latest => store
            .latest_runs(Some(RunState::Completed), 1)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| RunError::NotRecheckable("no run has completed yet".to_owned()))?,
    };
    let id = run.id;
    match run.state {
        RunState::Completed => {}
        RunState::Running => {
            return Err(RunError::NotRecheckable(format!(
                "run {id} is still running (if its process died, continue it with --resume {id})"
            )));
        }
        state => {
            return Err(RunError::NotRecheckable(format!(
                "run {id} is {}: continue it with --resume {id} first",
                state.as_str()
            )));
        }
    }
    if run.shard_count > 1 {
        return Err(RunError::NotRecheckable(format!(
            "run {id} ran in {} shards: run its --run-key again in every shard to re-check it",
            run.shard_count
        )));
    }
    if let Some(selection) = recheck::selection(store, &run, scope, book).await? {
        return Ok(Plan::Recheck(run, selection));
    }
    let note = match (run.counts.failed, scope) {
        (0, _) => format!("run {id} has no failed keys: nothing to re-check"),
        (n, Scope::Transient) => format!(
            "run {id}: none of its {n} failed keys failed for a reason a new lookup may \
             change; --all-failed re-checks them anyway"
        ),
        (n, Scope::AllFailed) => {
            format!("run {id}: its {n} failed keys are not keys it set out to check")
        }
    };
    Ok(Plan::Done(run, note))
}
