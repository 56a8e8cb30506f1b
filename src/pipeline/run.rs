//! The batch job from plan to end: [`run`] plans the run, takes the shard's lease,
//! authenticates, opens (or continues) the run, stages its keys and drives the lookups;
//! [`dry_run`] checks the configuration, the source and the credentials only.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::context::{HeldLease, RunContext};
use super::end::{Driven, Ended, Outcome, RunEnd, conclude, stats_of};
use super::error::RunError;
use super::plan::{Plan, Target, plan};
use super::progress::Progress;
use super::{lease, priority, recheck, stage};
use crate::exit::ExitStatus;
use crate::payple::PaypleClient;
use crate::settings::{BatchSettings, ConfigError, Shard};
use crate::shutdown::Shutdown;
use crate::source::{SourceError, SourceSpec};
use crate::store::{NewRun, RunRecord, Store};

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
        Ok(Plan::Done(run, note)) => return ctx.already_done(run, note),
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
impl RunContext<'_> {
    /// A run that stopped before it could be recorded.
    fn failed(&self, error: RunError) -> RunEnd {
        let outcome = Outcome::Failed(error);
        let exit = conclude(&outcome, self.shutdown.signal()).provisional;
        RunEnd::new(outcome, exit, None)
    }

    /// The run already completed and there is nothing to re-check: nothing to do.
    fn already_done(&self, record: RunRecord, note: String) -> RunEnd {
        tracing::info!("{note}");
        let elapsed = self.started.elapsed();
        let mut stats = stats_of(&record, 0, elapsed, 0, 0, ExitStatus::Success);
        stats.note = Some(note);
        let ended = Ended { record, stats };
        RunEnd::new(Outcome::Finished, ExitStatus::Success, Some(ended))
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
        if let Some(Ended { stats, .. }) = &mut end.ended {
            stats.note = match (note, stats.note.take()) {
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
        let spec = run
            .source_spec
            .clone()
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
            source_spec: settings.source.clone(),
            options: options_json(settings, &self.client),
            shard_count: settings.shard.count.get(),
        };
        let id = self.store.create_or_join_run(&new).await?;
        tracing::info!(run_id = id, source = %new.source, "starting run");
        Ok((id, settings.source.clone()))
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
            priority::prepare(self.settings, store, run_id, spec, source_db).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_shard_has_its_own_lease() {
        assert_eq!(lease_name(Shard::WHOLE), "reconcile");
        let shard = Shard::new(1, 3).expect("shard");
        assert_eq!(lease_name(shard), "reconcile/shard-1-of-3");
    }
}
