//! The store's typed records (runs, shards, leases, staged keys, result rows, counts per
//! status), the columns they are read from, and the functions that read them from a row.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::error::{StoreError, ctx};
use super::time::{read_optional_time, read_time};
use crate::domain::{KeyDetails, KeyStatus, LookupOutcome, PayType};
use crate::source::SourceSpec;

pub use crate::domain::RunState;

/// The source a run was started with, as stored: its spec, or why the stored JSON does not
/// read as one (only `--resume` needs it, and refuses then).
pub type StoredSource = Result<SourceSpec, String>;

/// A run as the `reconcile_runs` table holds it.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub id: i64,
    pub run_key: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub source: String,
    pub source_spec: StoredSource,
    pub options: String,
    pub state: RunState,
    pub shard_count: u32,
    pub keys_total: Option<i64>,
    pub duplicates: i64,
    pub counts: StatusCounts,
    pub auth_calls: i64,
    pub lookups: i64,
    pub exit_code: Option<i64>,
}

/// One shard's progress through a run (an unsharded run has shard 0 only).
#[derive(Debug, Clone)]
pub struct ShardRecord {
    pub state: RunState,
    pub staged: bool,
    pub keys_total: Option<i64>,
    pub duplicates: i64,
    pub auth_calls: i64,
    pub lookups: i64,
}

/// How one shard of a run ended, as [`Store::finish_shard`](super::Store::finish_shard)
/// records it.
#[derive(Debug, Clone)]
pub struct ShardEnd {
    pub shard_index: u32,
    pub state: RunState,
    pub auth_calls: u64,
    pub lookups: u64,
    /// Why the shard stopped, if something did.
    pub error: Option<String>,
}

/// Who holds a run lease, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub run_id: i64,
    pub holder: String,
    pub heartbeat_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// What a new run is about.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub run_key: Option<String>,
    pub source: String,
    pub source_spec: SourceSpec,
    pub options: String,
    pub shard_count: u32,
}

/// A key a run set out to check, in input order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedKey {
    pub seq: i64,
    pub payer_id: String,
    pub customer_ref: Option<String>,
    /// Lookups already spent on the key in this run before its result row was removed for
    /// a re-check (0 otherwise); its next row's attempts add to them. Not written by
    /// staging.
    pub prior_attempts: u32,
}

impl StagedKey {
    /// A row selected as `seq, payer_id, customer_ref, prior_attempts`.
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self::from_columns(
            r.try_get(0)?,
            r.try_get(1)?,
            r.try_get(2)?,
            r.try_get(3)?,
        ))
    }

    /// The key from its stored columns, however they were read (rows, or SQLite's JSON
    /// page); a `prior_attempts` out of range counts as none.
    pub(crate) fn from_columns(
        seq: i64,
        payer_id: String,
        customer_ref: Option<String>,
        prior_attempts: i64,
    ) -> Self {
        Self {
            seq,
            payer_id,
            customer_ref,
            prior_attempts: u32::try_from(prior_attempts).unwrap_or(0),
        }
    }
}

/// One result row to write.
#[derive(Debug, Clone)]
pub struct CheckRow {
    pub payer_id: String,
    pub customer_ref: Option<String>,
    pub outcome: LookupOutcome,
    pub checked_at: DateTime<Utc>,
}

/// One result row as stored, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRecord {
    pub run_id: i64,
    pub payer_id: String,
    pub customer_ref: Option<String>,
    pub status: KeyStatus,
    pub details: KeyDetails,
    pub result_code: Option<String>,
    pub result_msg: Option<String>,
    pub attempts: i64,
    pub checked_at: DateTime<Utc>,
}

impl Default for CheckRecord {
    /// An empty `failed` row: a base for building rows field by field.
    fn default() -> Self {
        Self {
            run_id: 0,
            payer_id: String::new(),
            customer_ref: None,
            status: KeyStatus::Failed,
            details: KeyDetails::default(),
            result_code: None,
            result_msg: None,
            attempts: 0,
            checked_at: DateTime::UNIX_EPOCH,
        }
    }
}

/// Rows per status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts {
    pub active: i64,
    pub gone: i64,
    pub failed: i64,
    pub rejected: i64,
}

impl StatusCounts {
    pub fn total(&self) -> i64 {
        self.active + self.gone + self.failed + self.rejected
    }

    pub fn get(&self, status: KeyStatus) -> i64 {
        match status {
            KeyStatus::Active => self.active,
            KeyStatus::Gone => self.gone,
            KeyStatus::Failed => self.failed,
            KeyStatus::Rejected => self.rejected,
        }
    }

    pub fn add(&mut self, status: KeyStatus, n: i64) {
        match status {
            KeyStatus::Active => self.active += n,
            KeyStatus::Gone => self.gone += n,
            KeyStatus::Failed => self.failed += n,
            KeyStatus::Rejected => self.rejected += n,
        }
    }
}

pub(super) const CHECK_COLUMNS: &str = "run_id, payer_id, customer_ref, status, pay_type, card_code, \
    card_name, card_mask, bank_code, bank_name, bank_mask, bank_account_type, payer_name, \
    payer_phone_mask, is_tax, result_code, result_msg, attempts, checked_at";
pub(super) const CHECK_COLUMN_COUNT: usize = 19;
pub(super) const RUN_COLUMNS: &str = "id, run_key, started_at, finished_at, source, source_spec, options, \
    state, shard_count, keys_total, duplicates, active_count, gone_count, failed_count, \
    rejected_count, auth_calls, lookups, exit_code";
/// Rows per multi-row statement: well under SQLite's 32,766 bind parameters.
pub const MAX_ROWS_PER_STATEMENT: usize = 1000;

pub(super) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn run_record(row: &AnyRow) -> Result<RunRecord, StoreError> {
    let read = || -> Result<RunRecord, sqlx::Error> {
        let id = row.try_get(0)?;
        Ok(RunRecord {
            id,
            run_key: row.try_get(1)?,
            started_at: read_time(2, "started_at", id, &row.try_get::<String, _>(2)?)?,
            finished_at: read_optional_time(3, "finished_at", id, row.try_get(3)?)?,
            source: row.try_get(4)?,
            source_spec: serde_json::from_str(&row.try_get::<String, _>(5)?)
                .map_err(|e| e.to_string()),
            options: row.try_get(6)?,
            state: RunState::parse(&row.try_get::<String, _>(7)?),
            shard_count: u32::try_from(row.try_get::<i64, _>(8)?).unwrap_or(1),
            keys_total: row.try_get(9)?,
            duplicates: row.try_get(10)?,
            counts: StatusCounts {
                active: row.try_get(11)?,
                gone: row.try_get(12)?,
                failed: row.try_get(13)?,
                rejected: row.try_get(14)?,
            },
            auth_calls: row.try_get(15)?,
            lookups: row.try_get(16)?,
            exit_code: row.try_get(17)?,
        })
    };
    read().map_err(ctx("reading a run"))
}

pub(super) fn check_record(row: &AnyRow) -> Result<CheckRecord, sqlx::Error> {
    let status: String = row.try_get(3)?;
    let status = KeyStatus::parse(&status).ok_or_else(|| unknown_value(3, "status", &status))?;
    let pay_type: Option<String> = row.try_get(4)?;
    let pay_type = match pay_type.as_deref() {
        None => None,
        Some(name) => Some(PayType::parse(name).ok_or_else(|| unknown_value(4, "pay_type", name))?),
    };
    let run_id = row.try_get(0)?;
    Ok(CheckRecord {
        run_id,
        payer_id: row.try_get(1)?,
        customer_ref: row.try_get(2)?,
        status,
        details: KeyDetails {
            pay_type,
            card_code: row.try_get(5)?,
            card_name: row.try_get(6)?,
            card_mask: row.try_get(7)?,
            bank_code: row.try_get(8)?,
            bank_name: row.try_get(9)?,
            bank_mask: row.try_get(10)?,
            bank_account_type: row.try_get(11)?,
            payer_name: row.try_get(12)?,
            payer_phone_mask: row.try_get(13)?,
            is_tax: row.try_get(14)?,
        },
        result_code: row.try_get(15)?,
        result_msg: row.try_get(16)?,
        attempts: row.try_get(17)?,
        checked_at: read_time(18, "checked_at", run_id, &row.try_get::<String, _>(18)?)?,
    })
}

/// A stored value this version does not know.
pub(super) fn unknown_value(index: usize, column: &str, value: &str) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: format!("{index} ({column})"),
        source: format!("unknown {column} {value:?}").into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite_with_run;

    #[tokio::test]
    async fn unknown_statuses_are_not_read() {
        let (_dir, store, run_id) = sqlite_with_run().await;
        let rejected = CheckRow {
            payer_id: crate::domain::rejected_placeholder(3),
            customer_ref: None,
            outcome: LookupOutcome::rejected(
                &crate::domain::RejectReason::Empty,
                "line 3".to_owned(),
            ),
            checked_at: Utc::now(),
        };
        store
            .insert_checks(run_id, &[rejected])
            .await
            .expect("insert");
        let rows = store.checks_page(run_id, "", &[], 10).await.expect("read");
        assert_eq!(rows[0].status, KeyStatus::Rejected);
        assert_eq!(rows[0].payer_id, "#3 rejected");
        assert!(crate::domain::is_rejected_placeholder(
            rows[0].status,
            &rows[0].payer_id
        ));

        sqlx::query("UPDATE billing_key_checks SET status = 'paused'")
            .execute(store.pool())
            .await
            .expect("update");
        let err = store
            .checks_page(run_id, "", &[], 10)
            .await
            .expect_err("an unknown status is refused");
        assert!(err.to_string().contains("paused"), "{err}");
        store.close().await;
    }

    #[tokio::test]
    async fn a_bad_stored_time_is_an_error_naming_the_run_and_column() {
        let (_dir, store, run_id) = sqlite_with_run().await;
        sqlx::query("UPDATE reconcile_runs SET finished_at = 'yesterday'")
            .execute(store.pool())
            .await
            .expect("update");
        let err = store.run(run_id).await.expect_err("not a time");
        let text = format!("{err}: {:?}", std::error::Error::source(&err));
        assert!(text.contains(&format!("run {run_id}")), "{text}");
        assert!(
            text.contains("finished_at") && text.contains("yesterday"),
            "{text}"
        );
        store.close().await;
    }
}
