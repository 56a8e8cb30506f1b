//! Read-only queries behind the finance reports: key ranges of a run for the run-to-run
//! merge, the completed run before another, active keys grouped by card or bank, the
//! keys finance must act on (gone, failed) by customer reference, and the run trend.

use sqlx::Row;

use super::connect::Store;
use super::error::{StoreError, ctx};
use super::records::{
    CHECK_COLUMNS, CheckRecord, RUN_COLUMNS, RunRecord, check_record, run_record,
};
use crate::domain::KeyStatus;

/// What active keys are grouped by in a summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    /// Card keys per card company (`card_name`).
    CardName,
    /// Transfer keys per bank (`bank_name`).
    BankName,
}

/// Which keys of the Action list a query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionGroup {
    /// Gone now, and not gone in the previous completed run (or there is none).
    NewlyGone,
    /// Failed now, or gone now and already gone in the previous completed run.
    Rest,
}

/// Where a page of the Action list starts: after this (customer reference, payer id), in
/// the database's order. The start is `("", "")`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActionCursor {
    pub customer_ref: String,
    pub payer_id: String,
}

/// Active keys sharing one card company or bank (`None`: the name was not reported).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupCount {
    pub name: Option<String>,
    pub keys: i64,
}

impl GroupCount {
    /// The name as reports show it: `(not reported)` when Payple gave none or only spaces.
    pub fn shown_name(&self) -> &str {
        self.name
            .as_deref()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or("(not reported)")
    }
}

impl Store {
    /// A run's result rows with `after < payer_id <= up_to` (no upper bound when `None`),
    /// ordered by payer id in the database's own collation, optionally only some
    /// statuses, at most `limit`.
    pub async fn checks_range(
        &self,
        run_id: i64,
        after: &str,
        up_to: Option<&str>,
        statuses: &[KeyStatus],
        limit: i64,
    ) -> Result<Vec<CheckRecord>, StoreError> {
        let upper = if up_to.is_some() {
            " AND payer_id <= ?"
        } else {
            ""
        };
        let filter = if statuses.is_empty() {
            String::new()
        } else {
            format!(" AND status IN ({})", vec!["?"; statuses.len()].join(", "))
        };
        let sql = format!(
            "SELECT {CHECK_COLUMNS} FROM billing_key_checks \
             WHERE run_id = ? AND payer_id > ?{upper}{filter} ORDER BY payer_id LIMIT ?"
        );
        let mut query = sqlx::query(self.sql(&sql))
            .bind(run_id)
            .bind(after.to_owned());
        if let Some(up_to) = up_to {
            query = query.bind(up_to.to_owned());
        }
        for status in statuses {
            query = query.bind(status.as_str());
        }
        let rows = query
            .bind(limit)
            .fetch_all(self.pool())
            .await
            .map_err(ctx("reading results"))?;
        rows.iter()
            .map(check_record)
            .collect::<Result<_, _>>()
            .map_err(ctx("reading results"))
    }

    /// A page of the keys finance must act on in `run_id`: one [`ActionGroup`] (compared
    /// with `previous`, the previous completed run, if any), ordered by customer reference
    /// (absent: empty) then payer id in the database's own collation, after `cursor`.
    pub async fn action_page(
        &self,
        run_id: i64,
        previous: Option<i64>,
        group: ActionGroup,
        cursor: &ActionCursor,
        limit: i64,
    ) -> Result<Vec<CheckRecord>, StoreError> {
        let was_gone = "EXISTS (SELECT 1 FROM billing_key_checks p \
             WHERE p.run_id = ? AND p.payer_id = c.payer_id AND p.status = 'gone')";
        let which = match group {
            ActionGroup::NewlyGone => format!("c.status = 'gone' AND NOT {was_gone}"),
            ActionGroup::Rest => {
                format!("(c.status = 'failed' OR (c.status = 'gone' AND {was_gone}))")
            }
        };
        let columns: Vec<String> = CHECK_COLUMNS
            .split(',')
            .map(|c| format!("c.{}", c.trim()))
            .collect();
        let sql = format!(
            "SELECT {} FROM billing_key_checks c WHERE c.run_id = ? AND {which} \
             AND (COALESCE(c.customer_ref, '') > ? \
                  OR (COALESCE(c.customer_ref, '') = ? AND c.payer_id > ?)) \
             ORDER BY COALESCE(c.customer_ref, ''), c.payer_id LIMIT ?",
            columns.join(", ")
        );
        // No previous run: compare with a run id that cannot exist.
        let previous = previous.unwrap_or(-1);
        let rows = sqlx::query(self.sql(&sql))
            .bind(run_id)
            .bind(previous)
            .bind(cursor.customer_ref.clone())
            .bind(cursor.customer_ref.clone())
            .bind(cursor.payer_id.clone())
            .bind(limit)
            .fetch_all(self.pool())
            .await
            .map_err(ctx("reading the keys to act on"))?;
        rows.iter()
            .map(check_record)
            .collect::<Result<_, _>>()
            .map_err(ctx("reading the keys to act on"))
    }

    /// The newest `limit` completed runs up to and including `run_id`, oldest first.
    pub async fn completed_runs_up_to(
        &self,
        run_id: i64,
        limit: i64,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM reconcile_runs WHERE state = 'completed' AND id <= ? \
             ORDER BY id DESC LIMIT ?"
        );
        let rows = sqlx::query(self.sql(&sql))
            .bind(run_id)
            .bind(limit)
            .fetch_all(self.pool())
            .await
            .map_err(ctx("listing completed runs"))?;
        let mut runs = rows.iter().map(run_record).collect::<Result<Vec<_>, _>>()?;
        runs.reverse();
        Ok(runs)
    }

    /// The newest completed run older than `run_id`.
    pub async fn completed_run_before(&self, run_id: i64) -> Result<Option<RunRecord>, StoreError> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM reconcile_runs WHERE state = 'completed' AND id < ? \
             ORDER BY id DESC LIMIT 1"
        );
        let row = sqlx::query(self.sql(&sql))
            .bind(run_id)
            .fetch_optional(self.pool())
            .await
            .map_err(ctx("finding the previous completed run"))?;
        row.map(|r| run_record(&r)).transpose()
    }

    /// A run's active keys per card company or per bank, most keys first.
    pub async fn active_counts_by(
        &self,
        run_id: i64,
        grouping: Grouping,
    ) -> Result<Vec<GroupCount>, StoreError> {
        let sql = match grouping {
            Grouping::CardName => {
                "SELECT card_name, COUNT(*) FROM billing_key_checks \
                 WHERE run_id = ? AND status = 'active' AND pay_type = 'card' \
                 GROUP BY card_name ORDER BY 2 DESC, 1"
            }
            Grouping::BankName => {
                "SELECT bank_name, COUNT(*) FROM billing_key_checks \
                 WHERE run_id = ? AND status = 'active' AND pay_type = 'transfer' \
                 GROUP BY bank_name ORDER BY 2 DESC, 1"
            }
        };
        let rows = sqlx::query(self.sql(sql))
            .bind(run_id)
            .fetch_all(self.pool())
            .await
            .map_err(ctx("counting active keys"))?;
        rows.iter()
            .map(|row| {
                Ok(GroupCount {
                    name: row.try_get(0)?,
                    keys: row.try_get(1)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(ctx("counting active keys"))
    }
}
