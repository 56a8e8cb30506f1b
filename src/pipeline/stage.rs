//! Staging: the source is read once, to the end, into the run's key list (duplicates
//! dropped by the database, invalid values written as `rejected` rows), before any
//! lookup. A malformed file therefore stops the run with nothing sent.

use crate::domain::{LookupOutcome, rejected_placeholder};
use crate::settings::Shard;
use crate::shutdown::Shutdown;
use crate::source::{self, Item, SourceError, SourceSpec};
use crate::store::{CheckRow, StagedKey, Staging, Store};

use super::error::RunError;

/// What staging found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Staged {
    /// Distinct keys of this shard.
    pub keys: i64,
    pub duplicates: i64,
    pub rejected: i64,
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
        payer_id: rejected_placeholder(*seq),
        customer_ref: customer_ref.clone(),
        outcome: LookupOutcome::rejected(reason, location.clone()),
        checked_at: chrono::Utc::now(),
    })
}

/// Keys sorted and written together (~5 MiB): sorted, a run's new keys land on the key
/// index page after page instead of one random page each (docs/performance.md, "Staging
/// and write batches").
const SORT_ROWS: usize = 50_000;

/// Writes `keys` in key order and empties it; how many there were.
async fn stage_sorted(
    staging: &mut Staging<'_>,
    keys: &mut Vec<StagedKey>,
) -> Result<i64, RunError> {
    // Among duplicates the first occurrence comes first and is the one kept; a key
    // staged by an earlier run of this loop is older still, and stays.
    keys.sort_unstable_by(|a, b| a.payer_id.cmp(&b.payer_id).then(a.seq.cmp(&b.seq)));
    staging.write(keys).await?;
    let n = keys.len() as i64;
    keys.clear();
    Ok(n)
}

/// One chunk of the source: this shard's keys go to `keys`; returns how many valid keys
/// the chunk held (every shard's) and the rejected rows this shard records.
fn take_chunk(chunk: &[Item], shard: Shard, keys: &mut Vec<StagedKey>) -> (u64, Vec<CheckRow>) {
    let mut valid = 0;
    let mut rejected_rows = Vec::new();
    for item in chunk {
        match item {
            Item::Key {
                seq,
                id,
                customer_ref,
            } => {
                valid += 1;
                if shard.owns(id.stable_hash()) {
                    keys.push(StagedKey {
                        seq: *seq,
                        payer_id: id.expose().to_owned(),
                        customer_ref: customer_ref.clone(),
                        prior_attempts: 0,
                    });
                }
            }
            // Rejected rows have no key to hash: the first shard records them.
            Item::Rejected { .. } if shard.index == 0 => {
                rejected_rows.extend(rejected_row(item));
            }
            Item::Rejected { .. } => {}
        }
    }
    (valid, rejected_rows)
}

/// Reads `spec` into the run's key list.
pub async fn stage(
    store: &Store,
    run_id: i64,
    shard: Shard,
    spec: &SourceSpec,
    source_db: Option<sqlx::AnyPool>,
    shutdown: &Shutdown,
    allow_empty: bool,
) -> Result<Staged, RunError> {
    let mut items = source::open(spec, source_db);
    let mut valid_read = 0i64;
    // Valid keys of every shard: an empty shard of a non-empty source is fine.
    let mut source_keys = 0u64;
    let mut rejected = 0i64;
    let mut keys = Vec::with_capacity(SORT_ROWS);
    let mut staging = store.staging(run_id, shard.index);
    // A pipe that stays open or a FIFO with no writer blocks its reader, not this loop.
    while let Some(chunk) = source::next_or_stop(&mut items, &shutdown.stop).await {
        let chunk = chunk.ok_or(RunError::Interrupted)??;
        let (valid, rejected_rows) = take_chunk(&chunk, shard, &mut keys);
        source_keys += valid;
        rejected += rejected_rows.len() as i64;
        staging.write_rejected(&rejected_rows).await?;
        if keys.len() >= SORT_ROWS {
            valid_read += stage_sorted(&mut staging, &mut keys).await?;
        }
    }
    valid_read += stage_sorted(&mut staging, &mut keys).await?;
    if source_keys == 0 && !allow_empty {
        // Not committed: the run stays unstaged and fails; nothing looks like a night.
        return Err(SourceError::NoKeys {
            what: spec.describe(),
        }
        .into());
    }
    staging.commit().await?;
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::domain::{KeyStatus, RejectReason};

    #[test]
    fn a_rejected_item_becomes_a_placeholder_row_without_its_value() {
        let item = Item::Rejected {
            seq: 7,
            reason: RejectReason::Whitespace,
            customer_ref: Some("CUST-7".to_owned()),
            location: "keys.csv line 7".to_owned(),
        };
        let row = rejected_row(&item).expect("a row");
        assert_eq!(row.payer_id, "#7 rejected");
        assert_eq!(row.customer_ref.as_deref(), Some("CUST-7"));
        assert_eq!(row.outcome.status, KeyStatus::Rejected);
        let msg = row.outcome.result_msg.expect("message");
        assert!(msg.contains("keys.csv line 7"), "{msg}");
        let key = Item::from_raw(1, "validKey123", None, || "keys.csv line 1".to_owned());
        assert!(rejected_row(&key).is_none());
    }

    #[tokio::test]
    async fn count_finds_keys_duplicates_and_rejected_rows_of_its_shard() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        write!(
            file,
            "payer_id,customer_ref\nkeyA1,c1\nkeyB2,c2\nkeyA1,c3\nbad key,c4\n,c5\nkeyC3,c6\n"
        )
        .expect("write");
        let spec = SourceSpec::Csv {
            path: file.path().to_owned(),
            format: Default::default(),
        };
        let whole = count(&spec, None, Shard::WHOLE).await.expect("counted");
        assert_eq!(
            whole,
            Staged {
                keys: 3,
                duplicates: 1,
                rejected: 2
            }
        );
        // Every key lands in exactly one shard; rejected rows are counted by each.
        let mut keys = 0;
        for index in 0..3 {
            let shard = Shard::new(index, 3).expect("shard");
            let part = count(&spec, None, shard).await.expect("counted");
            assert_eq!(part.rejected, 2);
            keys += part.keys;
        }
        assert_eq!(keys, 3);
    }

    /// Stages the whole of `spec`, with no signal.
    async fn stage_whole(
        store: &Store,
        run_id: i64,
        spec: &SourceSpec,
    ) -> Result<Staged, RunError> {
        stage(
            store,
            run_id,
            Shard::WHOLE,
            spec,
            None,
            &Shutdown::default(),
            true,
        )
        .await
    }

    /// A CSV file of `before` lines, SORT_ROWS other keys (a whole sorted run), then
    /// `after` lines.
    fn csv_around_a_sorted_run(dir: &std::path::Path, before: &str, after: &str) -> SourceSpec {
        let csv = dir.join("keys.csv");
        let mut file = std::io::BufWriter::new(std::fs::File::create(&csv).expect("csv"));
        writeln!(file, "payer_id,customer_ref").expect("write");
        if !before.is_empty() {
            writeln!(file, "{before}").expect("write");
        }
        for i in 0..SORT_ROWS {
            writeln!(file, "key{i:07},c{i}").expect("write");
        }
        writeln!(file, "{after}").expect("write");
        file.flush().expect("flush");
        SourceSpec::Csv {
            path: csv,
            format: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_duplicate_in_a_later_sorted_run_keeps_the_first_occurrence() {
        let (dir, store, run_id) = crate::store::sqlite_with_run().await;
        // The same key on the first line, again on the next (the same sorted run, where it
        // sorts last), and again after SORT_ROWS other keys (a later run).
        let spec = csv_around_a_sorted_run(
            dir.path(),
            "zzDup,first\nzzDup,second",
            "zzDup,later\nlastKey,end",
        );
        let staged = stage_whole(&store, run_id, &spec).await.expect("staged");
        assert_eq!((staged.keys, staged.duplicates), (SORT_ROWS as i64 + 2, 2));
        let keys = store
            .pending_keys(run_id, 0, 0, SORT_ROWS as i64 + 10, true)
            .await
            .expect("keys");
        let dup: Vec<_> = keys.iter().filter(|k| k.payer_id == "zzDup").collect();
        assert_eq!(dup.len(), 1);
        assert_eq!(dup[0].customer_ref.as_deref(), Some("first"));
        assert_eq!(keys.first().map(|k| k.payer_id.as_str()), Some("zzDup"));
        assert_eq!(keys.last().map(|k| k.payer_id.as_str()), Some("lastKey"));
        store.close().await;
    }

    #[tokio::test]
    async fn a_rejected_row_after_a_written_sorted_run_is_recorded_with_every_key() {
        let (dir, store, run_id) = crate::store::sqlite_with_run().await;
        // A full sorted run is written in a transaction that stays open; the rejected row
        // after it is written on another connection, which must not wait for that lock.
        let spec = csv_around_a_sorted_run(dir.path(), "", "bad key,late\nlastKey,end");
        let staged = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            stage_whole(&store, run_id, &spec),
        )
        .await
        .expect("staging does not wait for its own lock")
        .expect("staged");
        assert_eq!((staged.keys, staged.rejected), (SORT_ROWS as i64 + 1, 1));
        assert_eq!(
            store.count_staged(run_id, 0).await.expect("count"),
            staged.keys
        );
        let counts = store.status_counts(run_id).await.expect("counts");
        assert_eq!(counts.rejected, 1);
        store.close().await;
    }

    #[tokio::test]
    async fn a_staging_dropped_before_its_commit_leaves_no_keys() {
        let (_dir, store, run_id) = crate::store::sqlite_with_run().await;
        let keys: Vec<StagedKey> = (0..3)
            .map(|i| StagedKey {
                seq: i + 1,
                payer_id: format!("key{i}"),
                customer_ref: None,
                prior_attempts: 0,
            })
            .collect();
        let mut staging = store.staging(run_id, 0);
        staging.write(&keys).await.expect("written");
        drop(staging);
        assert_eq!(store.count_staged(run_id, 0).await.expect("count"), 0);
        let mut staging = store.staging(run_id, 0);
        staging.write(&keys).await.expect("written");
        staging.commit().await.expect("committed");
        assert_eq!(store.count_staged(run_id, 0).await.expect("count"), 3);
        store.close().await;
    }
}
