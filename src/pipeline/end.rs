//! How a run ends: the pure decision of its final state and exit status
//! ([`conclude`]), the stats printed on stdout ([`stats_of`]), and recording the end
//! of a shard ([`RunEnd`], what `run` returns).

use std::time::Duration;

use super::context::RunContext;
use super::error::RunError;
use crate::budget::BudgetStop;
use crate::domain::RunStats;
use crate::exit::ExitStatus;
use crate::shutdown::Signal;
use crate::store::{RunRecord, RunState, ShardEnd, StatusCounts, StoreError, retrying};

/// How the work on a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every pending key was looked up and written.
    Finished,
    /// The key stream was cut short (by a signal).
    Stopped,
    /// Payple stayed unavailable past the outage budget: the key stream was cut short and
    /// the pending keys wait for a resume.
    Unavailable,
    /// An error stopped the run (or kept it from starting).
    Failed(RunError),
}

impl Outcome {
    /// The error that stopped the run, if one did.
    pub fn error(&self) -> Option<&RunError> {
        match self {
            Self::Failed(e) => Some(e),
            Self::Finished | Self::Stopped | Self::Unavailable => None,
        }
    }

    pub fn into_error(self) -> Option<RunError> {
        match self {
            Self::Failed(e) => Some(e),
            Self::Finished | Self::Stopped | Self::Unavailable => None,
        }
    }
}

/// What is known of the run's recorded results when the exit status is settled.
#[derive(Debug, Clone, Copy)]
pub enum Tally<'a> {
    /// Recording the end of the run failed: it stays resumable.
    Unrecorded,
    /// Recorded: the whole run's counts (all shards, a resume included).
    Recorded(&'a StatusCounts),
}

/// How a run ends, decided once by [`conclude`]: the state to record, and the exit
/// status before the run's recorded counts are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conclusion {
    pub state: RunState,
    /// The exit status before the run's recorded counts; [`Conclusion::exit`] settles it.
    pub provisional: ExitStatus,
}

impl Conclusion {
    /// The process's exit status once the end is recorded (or could not be): 2 when a
    /// completed run has failed or rejected keys anywhere (a resume included), 1 when a
    /// success could not be recorded; otherwise the provisional status.
    pub fn exit(self, tally: Tally<'_>) -> ExitStatus {
        let exit = self.provisional;
        match tally {
            Tally::Unrecorded if exit == ExitStatus::Success => ExitStatus::Internal,
            Tally::Recorded(counts)
                if exit == ExitStatus::Success && self.state == RunState::Completed =>
            {
                ExitStatus::of_keys(counts.failed > 0 || counts.rejected > 0)
            }
            _ => exit,
        }
    }
}

/// The state a run ends in and its exit status before the counts: a signal's code when
/// it was stopped, 4 (`interrupted`) when Payple stayed unavailable past the outage
/// budget, the error's when it failed, 0 otherwise ([`Conclusion::exit`] settles it
/// against the recorded counts). The one place this is decided.
pub fn conclude(outcome: &Outcome, signal: Option<Signal>) -> Conclusion {
    let (state, provisional) = match (outcome, signal) {
        (
            Outcome::Stopped | Outcome::Unavailable | Outcome::Failed(RunError::Interrupted),
            Some(signal),
        ) => (RunState::Interrupted, signal.exit_status()),
        (Outcome::Unavailable, None) => (RunState::Interrupted, ExitStatus::Unavailable),
        (Outcome::Finished | Outcome::Stopped, _) => (RunState::Completed, ExitStatus::Success),
        (Outcome::Failed(e @ RunError::Interrupted), None) => {
            (RunState::Interrupted, e.exit_status())
        }
        (Outcome::Failed(e), _) => (RunState::Failed, e.exit_status()),
    };
    Conclusion { state, provisional }
}

/// What a run did, from its record and this process's counters.
pub fn stats_of(
    run: &RunRecord,
    checked_now: u64,
    elapsed: Duration,
    auth_calls: u64,
    lookups: u64,
    exit: ExitStatus,
) -> RunStats {
    let secs = elapsed.as_secs_f64();
    RunStats {
        run_id: run.id,
        state: run.state,
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
        keys_checked: run.counts.active + run.counts.gone + run.counts.failed,
        budget_stop: None,
        note: None,
        events: None,
    }
}

/// The result of `run`: how the process exits, the run as it ended (when its end was
/// recorded, or it had already completed), and the error that stopped it.
#[derive(Debug)]
pub struct RunEnd {
    pub exit: ExitStatus,
    pub ended: Option<Ended>,
    pub error: Option<RunError>,
}

/// A run whose end is recorded: its final record (the settled exit code included), which
/// the report, the notification and the metrics take instead of reading it again, and
/// the stats printed on stdout.
#[derive(Debug)]
pub struct Ended {
    pub record: RunRecord,
    pub stats: RunStats,
}

/// How the work on a run ended, and the keys this process checked.
pub(super) struct Driven {
    pub(super) checked: u64,
    pub(super) outcome: Outcome,
    /// A budget ended the lookups with keys left unchecked.
    pub(super) budget_stop: Option<BudgetStop>,
}

impl RunEnd {
    pub(super) fn new(outcome: Outcome, exit: ExitStatus, ended: Option<Ended>) -> Self {
        Self {
            exit,
            ended,
            error: outcome.into_error(),
        }
    }
}

impl RunContext<'_> {
    /// Records how the shard ended and builds the stats; [`conclude`] decides the state
    /// and the exit status, settled against the whole run's recorded counts.
    pub(super) async fn finish(&self, run_id: i64, driven: Driven) -> RunEnd {
        let Driven {
            checked,
            outcome,
            budget_stop,
        } = driven;
        let budget_stop = budget_stop.filter(|_| matches!(outcome, Outcome::Finished));
        let decided = conclude(&outcome, self.shutdown.signal());
        let unavailable =
            matches!(outcome, Outcome::Unavailable).then(|| self.unavailable_note(run_id));
        let message = outcome
            .error()
            .map(ToString::to_string)
            .or_else(|| unavailable.clone());
        let mut record = match self.record_end(run_id, decided, message).await {
            Ok(record) => record,
            Err(e) => {
                tracing::error!(run_id, error = %e, "could not record the end of the run; it stays resumable");
                let exit = decided.exit(Tally::Unrecorded);
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
        // Failed or rejected keys anywhere in the run (a resume included) make exit code 2;
        // `record_end` stored the same code, settled from the counts it recounted.
        let exit = decided.exit(Tally::Recorded(&record.counts));
        record.exit_code = Some(i64::from(exit.code()));
        let client = &self.client;
        let elapsed = self.started.elapsed();
        let mut stats = stats_of(
            &record,
            checked,
            elapsed,
            client.auth_calls(),
            client.lookups(),
            exit,
        );
        stats.budget_stop = budget_stop.map(BudgetStop::as_str);
        if let Some(note) = unavailable {
            tracing::warn!("{note}");
            stats.note = Some(note);
        }
        RunEnd::new(outcome, exit, Some(Ended { record, stats }))
    }

    /// Why the run was left interrupted when Payple stayed unavailable.
    fn unavailable_note(&self, run_id: i64) -> String {
        format!(
            "Payple was unavailable for the whole outage budget ({} s paused); the pending \
             keys are looked up by --resume {run_id} or the same --run-key",
            self.client.outage_paused().as_secs()
        )
    }

    /// Records the end of this shard (retried): the decided state, and the exit code
    /// settled against the run's recounted rows; returns the whole run's record.
    async fn record_end(
        &self,
        run_id: i64,
        decided: Conclusion,
        message: Option<String>,
    ) -> Result<RunRecord, StoreError> {
        let end = ShardEnd {
            shard_index: self.settings.shard.index,
            state: decided.state,
            auth_calls: self.client.auth_calls(),
            lookups: self.client.lookups(),
            error: message,
        };
        let exit_code =
            |counts: &StatusCounts| i32::from(decided.exit(Tally::Recorded(counts)).code());
        retrying(|| self.store.finish_shard(run_id, &end, &exit_code)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLEAN: StatusCounts = StatusCounts {
        active: 3,
        gone: 1,
        failed: 0,
        rejected: 0,
    };

    /// The state and the exit status: provisional without a tally, settled with one.
    fn ended(
        outcome: &Outcome,
        signal: Option<Signal>,
        tally: Option<Tally<'_>>,
    ) -> (RunState, ExitStatus) {
        let decided = conclude(outcome, signal);
        (
            decided.state,
            tally.map_or(decided.provisional, |t| decided.exit(t)),
        )
    }

    fn failed_error() -> RunError {
        RunError::NoSuchRun(7)
    }

    #[test]
    fn a_finished_run_completes_and_its_failed_keys_make_exit_2() {
        let done = Outcome::Finished;
        assert_eq!(
            ended(&done, None, None),
            (RunState::Completed, ExitStatus::Success)
        );
        assert_eq!(
            ended(&done, None, Some(Tally::Recorded(&CLEAN))),
            (RunState::Completed, ExitStatus::Success)
        );
        for counts in [
            StatusCounts { failed: 1, ..CLEAN },
            StatusCounts {
                rejected: 2,
                ..CLEAN
            },
        ] {
            assert_eq!(
                ended(&done, None, Some(Tally::Recorded(&counts))),
                (RunState::Completed, ExitStatus::KeysFailed)
            );
        }
        // A signal after the last key does not make it interrupted.
        assert_eq!(
            ended(&done, Some(Signal::Terminate), None),
            (RunState::Completed, ExitStatus::Success)
        );
    }

    #[test]
    fn a_stopped_run_is_interrupted_with_the_signals_code_whatever_its_keys() {
        let failing = StatusCounts { failed: 5, ..CLEAN };
        for (signal, exit) in [
            (Signal::Interrupt, ExitStatus::Interrupted),
            (Signal::Terminate, ExitStatus::Terminated),
        ] {
            for outcome in [Outcome::Stopped, Outcome::Failed(RunError::Interrupted)] {
                assert_eq!(
                    ended(&outcome, Some(signal), Some(Tally::Recorded(&failing))),
                    (RunState::Interrupted, exit),
                    "{outcome:?}"
                );
            }
        }
    }

    #[test]
    fn an_outage_past_the_budget_is_interrupted_with_exit_4_and_a_signal_wins() {
        let failing = StatusCounts { failed: 5, ..CLEAN };
        for tally in [None, Some(Tally::Recorded(&failing))] {
            assert_eq!(
                ended(&Outcome::Unavailable, None, tally),
                (RunState::Interrupted, ExitStatus::Unavailable)
            );
        }
        assert_eq!(
            ended(&Outcome::Unavailable, Some(Signal::Terminate), None),
            (RunState::Interrupted, ExitStatus::Terminated)
        );
    }

    #[test]
    fn a_failed_run_exits_with_its_errors_code() {
        let config = Outcome::Failed(failed_error());
        assert_eq!(
            ended(
                &config,
                None,
                Some(Tally::Recorded(&StatusCounts { failed: 1, ..CLEAN }))
            ),
            (RunState::Failed, ExitStatus::Config)
        );
        let store = Outcome::Failed(RunError::Store(StoreError::Query {
            doing: "writing results",
            source: sqlx::Error::PoolTimedOut,
        }));
        assert_eq!(
            ended(&store, Some(Signal::Interrupt), None),
            (RunState::Failed, ExitStatus::Internal)
        );
    }

    #[test]
    fn an_unrecorded_end_turns_success_into_exit_1_and_keeps_other_codes() {
        assert_eq!(
            ended(&Outcome::Finished, None, Some(Tally::Unrecorded)).1,
            ExitStatus::Internal
        );
        assert_eq!(
            ended(
                &Outcome::Stopped,
                Some(Signal::Terminate),
                Some(Tally::Unrecorded)
            )
            .1,
            ExitStatus::Terminated
        );
        assert_eq!(
            ended(
                &Outcome::Failed(failed_error()),
                None,
                Some(Tally::Unrecorded)
            )
            .1,
            ExitStatus::Config
        );
    }

    #[test]
    fn summaries_round_their_figures() {
        let run = RunRecord {
            id: 4,
            run_key: None,
            started_at: chrono::DateTime::UNIX_EPOCH,
            finished_at: None,
            source: "csv keys.csv".to_owned(),
            source_spec: Err(String::new()),
            options: String::new(),
            state: RunState::Completed,
            shard_count: 1,
            keys_total: Some(4),
            duplicates: 1,
            counts: CLEAN,
            auth_calls: 1,
            lookups: 4,
            exit_code: None,
        };
        let s = stats_of(
            &run,
            3,
            Duration::from_millis(1_234_567),
            1,
            4,
            ExitStatus::KeysFailed,
        );
        assert_eq!(
            (s.run_id, s.state, s.active, s.gone),
            (4, RunState::Completed, 3, 1)
        );
        assert_eq!(s.duration_secs, 1234.567);
        assert_eq!(s.lookups_per_second, 0.0);
        assert_eq!(s.exit_code, 2);
        let fast = stats_of(&run, 1000, Duration::ZERO, 1, 1000, ExitStatus::Success);
        assert_eq!(fast.lookups_per_second, 1_000_000.0);
    }
}
