//! Staging: the source is read once, to the end, into the run's key list (duplicates
//! dropped by the database, invalid values written as `rejected` rows), before any
//! lookup. A malformed file therefore stops the run with nothing sent.

use crate::domain::LookupOutcome;
use crate::settings::Shard;
use crate::shutdown::Shutdown;
use crate::source::{self, Item, SourceError, SourceSpec};
use crate::store::{CheckRow, StagedKey, Store, now_text, retrying};

use super::RunError;

/// What staging found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Staged {
    /// Distinct keys of this shard.
    pub keys: i64,
    pub duplicates: i64,
    pub rejected: i64,
}

/// The placeholder key of a rejected input row: its position, never its value. The space
/// makes it something no valid key can be, so it never hides a real key.
pub fn rejected_key(seq: i64) -> String {
    format!("#{seq} rejected")
}

/// The result row of a rejected input row.
pub fn rejected_row(item: &Item) -> Option<CheckRow> {
    let Item::Rejected {
        seq,
        reason,
        customer_ref,
        location,
    } = item
    else {
        return None;
    };
    Some(CheckRow {
        payer_id: rejected_key(*seq),
        customer_ref: customer_ref.clone(),
        outcome: LookupOutcome::rejected(reason, location.clone()),
        checked_at: now_text(),
    })
}

/// Reads `spec` into the run's key list.
pub async fn stage(
    store: &Store,
    run_id: i64,
    shard: Shard,
    spec: &SourceSpec,
    source_db: Option<sqlx::AnyPool>,
    shutdown: &Shutdown,
) -> Result<Staged, RunError> {
    let mut items = source::open(spec, source_db);
    let mut valid_read = 0i64;
    let mut rejected = 0i64;
    while let Some(chunk) = items.recv().await {
        if shutdown.stop.is_cancelled() {
            return Err(RunError::Interrupted);
        }
        let chunk = chunk?;
        let mut keys = Vec::with_capacity(chunk.len());
        let mut rejected_rows = Vec::new();
        for item in &chunk {
            match item {
                Item::Key {
                    seq,
                    id,
                    customer_ref,
                } if shard.owns(id.stable_hash()) => keys.push(StagedKey {
                    seq: *seq,
                    payer_id: id.expose().to_owned(),
                    customer_ref: customer_ref.clone(),
                }),
                Item::Key { .. } => {}
                // Rejected rows have no key to hash: the first shard records them.
                Item::Rejected { .. } if shard.index == 0 => {
                    rejected_rows.extend(rejected_row(item));
                }
                Item::Rejected { .. } => {}
            }
        }
        valid_read += keys.len() as i64;
        // In key order for the index; among duplicates the first occurrence comes first
        // and is the one kept.
        keys.sort_unstable_by(|a, b| a.payer_id.cmp(&b.payer_id).then(a.seq.cmp(&b.seq)));
        rejected += rejected_rows.len() as i64;
        retrying(|| store.stage_keys(run_id, shard.index, &keys)).await?;
        if !rejected_rows.is_empty() {
            retrying(|| store.insert_checks(run_id, &rejected_rows)).await?;
        }
    }
    let (keys, duplicates) = store.mark_staged(run_id, shard.index, valid_read).await?;
    Ok(Staged {
        keys,
        duplicates,
        rejected,
    })
}

/// Reads `spec` without writing anything (`--dry-run`): counts keys, duplicates (by a
/// 64-bit hash) and rejected rows.
pub async fn count(
    spec: &SourceSpec,
    source_db: Option<sqlx::AnyPool>,
    shard: Shard,
) -> Result<Staged, SourceError> {
    let mut items = source::open(spec, source_db);
    let mut seen = std::collections::HashSet::new();
    let mut staged = Staged::default();
    while let Some(chunk) = items.recv().await {
        for item in chunk? {
            match item {
                Item::Key { id, .. } if shard.owns(id.stable_hash()) => {
                    if seen.insert(id.stable_hash()) {
                        staged.keys += 1;
                    } else {
                        staged.duplicates += 1;
                    }
                }
                Item::Key { .. } => {}
                Item::Rejected { .. } => staged.rejected += 1,
            }
        }
    }
    Ok(staged)
}
