//! A budgeted run's priority order: the queue prepared (next charge dates read from
//! the source, the order computed by the database), and the key stream cut where the
//! budget ends.

use std::time::Duration;

use futures::{Stream, StreamExt};

use crate::budget::{Budget, BudgetStop, due_cutoff, normalize_due};
use crate::settings::BatchSettings;
use crate::source::{self, SourceError, SourceSpec};
use crate::store::{Store, retrying};

use super::error::RunError;

/// Reads the due dates (with `--due-column`) and fills the run's priority queue for this
/// shard (once: a resumed run keeps its queue).
pub async fn prepare(
    settings: &BatchSettings,
    store: &Store,
    run_id: i64,
    spec: &SourceSpec,
    source_db: Option<sqlx::AnyPool>,
) -> Result<(), RunError> {
    let now = chrono::Utc::now();
    let cutoff = settings
        .due
        .as_ref()
        .map(|due| due_cutoff(now, due.within, settings.timezone));
    if let Some(due) = &settings.due {
        let pool = source_db.ok_or_else(|| SourceError::Database {
            what: spec.describe(),
            source: sqlx::Error::Configuration("no source database".into()),
        })?;
        let mut unreadable = 0u64;
        let read = source::due::read(spec, &due.column, &pool, |rows| {
            let total = rows.len();
            let dates: Vec<(String, String)> = rows
                .into_iter()
                .filter_map(|(key, raw)| normalize_due(&raw).map(|d| (key, d)))
                .collect();
            unreadable += (total - dates.len()) as u64;
            async move {
                retrying(|| store.stage_due(run_id, &dates)).await?;
                Ok::<_, RunError>(())
            }
        })
        .await?;
        if unreadable > 0 {
            tracing::warn!(
                column = %due.column,
                unreadable,
                "charge dates that are not YYYY-MM-DD were ignored (those keys are not due)"
            );
        }
        tracing::info!(dates = read, cutoff = ?cutoff, "next charge dates read");
    }
    let queued =
        retrying(|| store.build_queue(run_id, settings.shard.index, cutoff.as_deref())).await?;
    tracing::info!(run_id, queued, "keys ordered by priority");
    Ok(())
}

/// Where a budget cuts the key stream: after `max` keys, or at a deadline.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    max: Option<u64>,
    deadline: Option<(tokio::time::Instant, BudgetStop)>,
}

impl Limits {
    /// The limits of `budget`, the deadline counted from now.
    pub fn start(budget: Option<&Budget>) -> Self {
        let now = chrono::Utc::now();
        let deadline = budget.and_then(|b| b.deadline(now)).map(|(at, kind)| {
            let wait = (at - now).to_std().unwrap_or(Duration::ZERO);
            (tokio::time::Instant::now() + wait, kind)
        });
        Self {
            max: budget.and_then(|b| b.max_lookups),
            deadline,
        }
    }

    /// The time limit that has passed, if one has.
    pub fn hit(&self) -> Option<BudgetStop> {
        self.deadline
            .filter(|(at, _)| tokio::time::Instant::now() >= *at)
            .map(|(_, kind)| kind)
    }
}

/// `keys`, ending after the budget's number of keys or at its deadline.
pub fn limit<S: Stream>(keys: S, limits: &Limits) -> impl Stream<Item = S::Item> + use<S> {
    let max = limits
        .max
        .map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
    let deadline = limits.deadline.map(|(at, _)| at);
    keys.take(max).take_until(async move {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => futures::future::pending::<()>().await,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;

    #[tokio::test]
    async fn the_key_count_cuts_the_stream() {
        let limits = Limits::start(Some(&Budget {
            max_lookups: Some(3),
            ..Budget::default()
        }));
        let got: Vec<i32> = limit(stream::iter(0..10), &limits).collect().await;
        assert_eq!(got, [0, 1, 2]);
        assert_eq!(limits.hit(), None);
        let unlimited: Vec<i32> = limit(stream::iter(0..10), &Limits::start(None))
            .collect()
            .await;
        assert_eq!(unlimited.len(), 10);
    }

    #[tokio::test]
    async fn the_deadline_cuts_the_stream() {
        let limits = Limits::start(Some(&Budget {
            time: Some(Duration::from_millis(300)),
            ..Budget::default()
        }));
        let slow = stream::iter(0..100).then(|i| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            i
        });
        let got: Vec<i32> = limit(slow, &limits).collect().await;
        assert!(!got.is_empty() && got.len() < 100, "{got:?}");
        assert_eq!(limits.hit(), Some(BudgetStop::TimeBudget));
    }
}
