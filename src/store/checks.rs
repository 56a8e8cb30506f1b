//! Result rows: writing them in bulk (in their packed form, [`super::packed`]), counting
//! them per status, and reading them back in pages.

use sqlx::Row;

use super::connect::Store;
use super::error::{StoreError, ctx};
use super::packed::{PACKED_FIELDS, PackedRow};
use super::records::{CHECK_COLUMNS, CheckRecord, CheckRow, StatusCounts, check_record};
use crate::domain::KeyStatus;

impl Store {
    /// Writes result rows in one transaction; a row already present is kept as it is.
    pub async fn insert_checks(&self, run_id: i64, rows: &[CheckRow]) -> Result<(), StoreError> {
        let packed: Vec<PackedRow> = rows.iter().map(PackedRow::pack).collect();
        self.insert_packed(run_id, &packed).await
    }

    /// [`Store::insert_checks`] for rows the writer holds packed. Each dialect takes the
    /// rows in one round of statements: SQLite one statement reading a JSON array
    /// (`jsonb_each`), which never needs a statement journal and is parsed once; PostgreSQL
    /// one `UNNEST` of a column array each; MySQL multi-row inserts of fixed sizes kept
    /// prepared (see `bulk`).
    pub async fn insert_packed(&self, run_id: i64, rows: &[PackedRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        match &self.native {
            // Boxed: the native drivers' futures would otherwise nest inside every caller's.
            Some(native) => Box::pin(native.insert_packed(run_id, rows)).await,
            None => self.insert_packed_json(run_id, rows).await,
        }
    }

    /// SQLite: every row in one `INSERT … SELECT … FROM jsonb_each(?)`, in the rows' order.
    async fn insert_packed_json(&self, run_id: i64, rows: &[PackedRow]) -> Result<(), StoreError> {
        let mut json = String::with_capacity(2 + rows.iter().map(|r| r.0.len() + 1).sum::<usize>());
        json.push('[');
        for (i, row) in rows.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            json.push_str(&row.0);
        }
        json.push(']');
        // The `attempts` text is stored as an integer by the column's affinity.
        let fields: Vec<String> = (0..PACKED_FIELDS).map(|i| format!("r.v ->> {i}")).collect();
        // Each row's array is taken out of the batch once (`MATERIALIZED`): read as
        // `j.value ->> i`, SQLite rebuilt the array's text for each of the 18 fields. A
        // 16,384-row batch took 266 ms that way, 94 ms this way (SQLite 3.51, no index).
        // `jsonb_each` hands each row over in SQLite's binary JSON: `json_each` wrote it
        // back out as text, which each row's first `->>` then parsed again (perf, 30,000
        // keys: `jsonTranslateTextToBlob` and `jsonTranslateBlobToText` 1.7% of the job's
        // CPU before, 0.9% after).
        // `WHERE true` tells SQLite's parser that `ON CONFLICT` is the upsert clause.
        let sql = format!(
            "INSERT INTO billing_key_checks ({CHECK_COLUMNS}) \
             WITH r(v) AS MATERIALIZED (SELECT j.value FROM jsonb_each(?) j) \
             SELECT ?, {} FROM r WHERE true ON CONFLICT (run_id, payer_id) DO NOTHING",
            fields.join(", ")
        );
        sqlx::query(self.sql(&sql))
            .bind(json)
            .bind(run_id)
            .execute(&self.pool)
            .await
            .map_err(ctx("writing results"))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::packed::full_row;

    #[tokio::test]
    async fn packed_rows_are_written_and_read_back_on_sqlite() {
        let (_dir, store, run_id) = crate::store::sqlite_with_run().await;
        let row = full_row();
        store
            .insert_packed(run_id, &[PackedRow::pack(&row), PackedRow::pack(&row)])
            .await
            .expect("written; the repeat is ignored");
        let stored = store
            .check(run_id, &row.payer_id)
            .await
            .unwrap()
            .expect("row");
        assert_eq!(stored.customer_ref, row.customer_ref);
        assert_eq!(stored.details, row.outcome.details);
        assert_eq!(stored.result_msg, row.outcome.result_msg);
        assert_eq!(stored.attempts, 3);
        assert_eq!(store.status_counts(run_id).await.unwrap().total(), 1);
    }
}
