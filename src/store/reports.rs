//! Read-only queries behind the finance reports: key ranges of a run for the run-to-run
//! merge, the completed run before another, and active keys grouped by card or bank.

use sqlx::Row;

use super::{CHECK_COLUMNS, CheckRecord, RUN_COLUMNS, RunRecord, Store, StoreError};
use super::{check_record, ctx, run_record};
use crate::domain::KeyStatus;

/// What active keys are grouped by in a summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    /// Card keys per card company (`card_name`).
    CardName,
    /// Transfer keys per bank (`bank_name`).
    BankName,
}

/// Active keys sharing one card company or bank (`None`: the name was not reported).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupCount {
    pub name: Option<String>,
    pub keys: i64,
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
