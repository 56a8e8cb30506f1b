//! What a run notification says, read from the store: the run's counts, and its changes
//! against the previous completed run (counted in one flat-memory pass of the run-to-run
//! merge, keeping the first newly gone keys).

use super::changes::{ChangeKind, ChangeStream, PAGE_ROWS};
use super::error::ReportError;
use super::xlsx::duration_secs;
use crate::notify::{ChangeCounts, GoneKey, KeyCounts, NEWLY_GONE_SHOWN, Notice};
use crate::store::{RunRecord, RunState, Store};

/// The notice about `run` (its counts as the run record holds them), compared with the
/// completed run before it when `run` completed (a failed or interrupted run did not read
/// every key: its missing rows are no change); `report` is where the report was written,
/// if anywhere.
pub async fn load(
    store: &Store,
    run: &RunRecord,
    report: Option<String>,
) -> Result<Notice, ReportError> {
    let previous = if run.state == RunState::Completed {
        store
            .completed_run_before(run.id)
            .await
            .map_err(ReportError::store(run.id))?
    } else {
        None
    };
    let (changes, newly_gone) = match &previous {
        Some(previous) => {
            let (counts, gone) = count_changes(store, previous.id, run.id).await?;
            (Some(counts), gone)
        }
        None => (None, Vec::new()),
    };
    Ok(Notice {
        run_id: Some(run.id),
        run_key: run.run_key.clone(),
        state: run.state,
        exit_code: run.exit_code,
        keys: KeyCounts {
            active: run.counts.active,
            gone: run.counts.gone,
            failed: run.counts.failed,
            rejected: run.counts.rejected,
        },
        duration_secs: duration_secs(run.started_at, run.finished_at),
        changes,
        newly_gone,
        report,
        error: None,
        events: None,
    })
}

/// The changes from `before` to `after`, per kind, and the first newly gone keys.
async fn count_changes(
    store: &Store,
    before: i64,
    after: i64,
) -> Result<(ChangeCounts, Vec<GoneKey>), ReportError> {
    let mut counts = ChangeCounts {
        since_run: before,
        ..ChangeCounts::default()
    };
    let mut gone = Vec::new();
    let mut stream = ChangeStream::new(store, before, after, PAGE_ROWS);
    while let Some(window) = stream.next_window().await? {
        for change in window {
            let slot = match change.kind {
                ChangeKind::NewlyGone => &mut counts.newly_gone,
                ChangeKind::NewlyFailing => &mut counts.newly_failing,
                ChangeKind::Recovered => &mut counts.recovered,
                ChangeKind::CardChanged => &mut counts.card_changed,
                ChangeKind::AccountChanged => &mut counts.account_changed,
                ChangeKind::NewKey => &mut counts.new_keys,
                ChangeKind::MissingKey => &mut counts.missing_keys,
            };
            *slot += 1;
            if change.kind == ChangeKind::NewlyGone && gone.len() < NEWLY_GONE_SHOWN {
                gone.push(GoneKey {
                    customer_ref: change.customer_ref,
                    payer_id_masked: change.payer_id_masked,
                });
            }
        }
    }
    Ok((counts, gone))
}
