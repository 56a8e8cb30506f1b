//! Result rows: writing them in multi-row statements, counting them per status, and
//! reading them back in pages.

use sqlx::Row;

use super::{
    CHECK_COLUMN_COUNT, CHECK_COLUMNS, CheckRecord, CheckRow, Dialect, MAX_ROWS_PER_STATEMENT,
    StatusCounts, Store, StoreError, check_record, ctx, json_rows,
};
use crate::domain::KeyStatus;

impl Store {
    /// Writes result rows in one transaction; a row already present is kept as it is.
    ///
    /// A batch that fits one statement (the writer's 500 rows) runs as that statement
    /// alone, which is atomic by itself: inside `BEGIN … COMMIT` SQLite keeps a statement
    /// journal of every page the statement touches (perf: `subjournalPageIfRequired`, about
    /// 5% of the job's CPU at 100,000 keys), needed only to undo one statement of several.
    ///
    /// On SQLite the whole batch is one statement reading a JSON array (`json_each`), so
    /// it never needs a statement journal and is parsed once: at 400,000 keys the
    /// journal and re-parsing 1,000-row `VALUES` lists were ~10% of the writer's time.
    pub async fn insert_checks(&self, run_id: i64, rows: &[CheckRow]) -> Result<(), StoreError> {
        if self.dialect == Dialect::Sqlite {
            return self.insert_checks_json(run_id, rows).await;
        }
        if rows.len() <= MAX_ROWS_PER_STATEMENT {
            let mut conn = self.pool.acquire().await.map_err(ctx("writing results"))?;
            return self.insert_check_chunk(&mut conn, run_id, rows).await;
        }
        let mut tx = self.pool.begin().await.map_err(ctx("writing results"))?;
        for chunk in rows.chunks(MAX_ROWS_PER_STATEMENT) {
            self.insert_check_chunk(&mut tx, run_id, chunk).await?;
        }
        tx.commit().await.map_err(ctx("writing results"))
    }

    /// SQLite: every row in one `INSERT … SELECT … FROM json_each(?)`, in the rows' order.
    async fn insert_checks_json(&self, run_id: i64, rows: &[CheckRow]) -> Result<(), StoreError> {
        // Each row is an array of texts in `CHECK_COLUMNS` order after `run_id`; the
        // `attempts` text is stored as an integer by the column's affinity.
        let attempts: Vec<String> = rows
            .iter()
            .map(|r| r.outcome.attempts.to_string())
            .collect();
        let arrays: Vec<[Option<&str>; CHECK_COLUMN_COUNT - 1]> = rows
            .iter()
            .zip(&attempts)
            .map(|(row, attempts)| {
                let o = &row.outcome;
                let d = &o.details;
                [
                    Some(row.payer_id.as_str()),
                    row.customer_ref.as_deref(),
                    Some(o.status.as_str()),
                    d.pay_type.map(|p| p.as_str()),
                    d.card_code.as_deref(),
                    d.card_name.as_deref(),
                    d.card_mask.as_deref(),
                    d.bank_code.as_deref(),
                    d.bank_name.as_deref(),
                    d.bank_mask.as_deref(),
                    d.bank_account_type.as_deref(),
                    d.payer_name.as_deref(),
                    d.payer_phone_mask.as_deref(),
                    d.is_tax.as_deref(),
                    o.result_code.as_deref(),
                    o.result_msg.as_deref(),
                    Some(attempts.as_str()),
                    Some(row.checked_at.as_str()),
                ]
            })
            .collect();
        let json = json_rows(&arrays, "writing results")?;
        drop(arrays);
        let fields: Vec<String> = (0..CHECK_COLUMN_COUNT - 1)
            .map(|i| format!("j.value ->> {i}"))
            .collect();
        // `WHERE true` tells SQLite's parser that `ON CONFLICT` is the upsert clause.
        let sql = format!(
            "INSERT INTO billing_key_checks ({CHECK_COLUMNS}) SELECT ?, {} FROM json_each(?) j \
             WHERE true ON CONFLICT (run_id, payer_id) DO NOTHING",
            fields.join(", ")
        );
        sqlx::query(self.sql(&sql))
            .bind(run_id)
            .bind(json)
            .execute(&self.pool)
            .await
            .map_err(ctx("writing results"))?;
        Ok(())
    }

    /// One multi-row `INSERT` of at most [`MAX_ROWS_PER_STATEMENT`] rows.
    async fn insert_check_chunk(
        &self,
        conn: &mut sqlx::AnyConnection,
        run_id: i64,
        chunk: &[CheckRow],
    ) -> Result<(), StoreError> {
        {
            let one = format!("({})", vec!["?"; CHECK_COLUMN_COUNT].join(", "));
            let values = vec![one.as_str(); chunk.len()].join(", ");
            let sql = self.dialect.insert_ignoring(
                &format!("billing_key_checks ({CHECK_COLUMNS})"),
                &values,
                "run_id, payer_id",
            );
            let mut query = sqlx::query(self.sql(&sql)).persistent(false);
            for row in chunk {
                let o = &row.outcome;
                let d = &o.details;
                query = query
                    .bind(run_id)
                    .bind(row.payer_id.clone())
                    .bind(row.customer_ref.clone())
                    .bind(o.status.as_str())
                    .bind(d.pay_type.map(|p| p.as_str()))
                    .bind(d.card_code.clone())
                    .bind(d.card_name.clone())
                    .bind(d.card_mask.clone())
                    .bind(d.bank_code.clone())
                    .bind(d.bank_name.clone())
                    .bind(d.bank_mask.clone())
                    .bind(d.bank_account_type.clone())
                    .bind(d.payer_name.clone())
                    .bind(d.payer_phone_mask.clone())
                    .bind(d.is_tax.clone())
                    .bind(o.result_code.clone())
                    .bind(o.result_msg.clone())
                    .bind(i64::from(o.attempts))
                    .bind(row.checked_at.clone());
            }
            query
                .execute(&mut *conn)
                .await
                .map_err(ctx("writing results"))?;
        }
        Ok(())
    }

    /// Result rows per status of a run.
    pub async fn status_counts(&self, run_id: i64) -> Result<StatusCounts, StoreError> {
        self.count_statuses(&self.pool, run_id).await
    }

    pub(super) async fn count_statuses<'e>(
        &self,
        executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
        run_id: i64,
    ) -> Result<StatusCounts, StoreError> {
        let rows = sqlx::query(self.sql(
            "SELECT status, COUNT(*) FROM billing_key_checks WHERE run_id = ? GROUP BY status",
        ))
        .bind(run_id)
        .fetch_all(executor)
        .await
        .map_err(ctx("counting results"))?;
        let mut counts = StatusCounts::default();
        for row in rows {
            let status: String = row.try_get(0).map_err(ctx("counting results"))?;
            let n: i64 = row.try_get(1).map_err(ctx("counting results"))?;
            if let Some(status) = KeyStatus::parse(&status) {
                counts.add(status, n);
            }
        }
        Ok(counts)
    }

    /// A page of a run's result rows ordered by payer id, after `after_payer_id`,
    /// optionally only some statuses.
    pub async fn checks_page(
        &self,
        run_id: i64,
        after_payer_id: &str,
        statuses: &[KeyStatus],
        limit: i64,
    ) -> Result<Vec<CheckRecord>, StoreError> {
        self.checks_range(run_id, after_payer_id, None, statuses, limit)
            .await
    }

    /// One key's result row in a run.
    pub async fn check(
        &self,
        run_id: i64,
        payer_id: &str,
    ) -> Result<Option<CheckRecord>, StoreError> {
        let sql = format!(
            "SELECT {CHECK_COLUMNS} FROM billing_key_checks WHERE run_id = ? AND payer_id = ?"
        );
        let row = sqlx::query(self.sql(&sql))
            .bind(run_id)
            .bind(payer_id.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(ctx("reading a result"))?;
        row.as_ref()
            .map(check_record)
            .transpose()
            .map_err(ctx("reading a result"))
    }
}
