//! Result rows: their one packed form, writing them in bulk, counting them per status,
//! and reading them back in pages.

use sqlx::Row;

use super::connect::Store;
use super::error::{StoreError, ctx};
use super::records::{
    CHECK_COLUMN_COUNT, CHECK_COLUMNS, CheckRecord, CheckRow, StatusCounts, check_record,
};
use crate::domain::{KeyDetails, KeyStatus, LookupOutcome, PayType};

/// The columns a packed row holds: all but `run_id`.
pub(super) const PACKED_FIELDS: usize = CHECK_COLUMN_COUNT - 1;

/// A result row as the writer holds it: the JSON array of its columns after `run_id`,
/// in `CHECK_COLUMNS` order (`attempts` as text), the form SQLite's `jsonb_each` insert
/// reads. About 230 bytes in one allocation, against ~770 for a [`CheckRow`] and its
/// eleven strings: the batch being written and the one being collected (16,384 rows
/// each) hold ~7 MiB instead of ~25. Ordered by its text, which begins with the payer id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PackedRow(Box<str>);

/// A row's columns after `run_id`, in `CHECK_COLUMNS` order, as texts (`attempts` is the
/// caller's text of it): the one list of a result row's fields, which every database's
/// insert reads from the packed form.
fn column_texts<'a>(row: &'a CheckRow, attempts: &'a str) -> [Option<&'a str>; PACKED_FIELDS] {
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
        Some(attempts),
        Some(row.checked_at.as_str()),
    ]
}

impl PackedRow {
    pub fn pack(row: &CheckRow) -> PackedRow {
        let attempts = row.outcome.attempts.to_string();
        let text = serde_json::to_string(&column_texts(row, &attempts))
            .expect("an array of strings serialises");
        PackedRow(text.into_boxed_str())
    }

    /// The row's columns after `run_id`, in `CHECK_COLUMNS` order (`attempts` as text):
    /// what every database's insert binds.
    pub(super) fn fields(&self) -> Result<[Option<String>; PACKED_FIELDS], StoreError> {
        let fields: Vec<Option<String>> =
            serde_json::from_str(&self.0).map_err(|e| damaged(e.to_string()))?;
        <[Option<String>; PACKED_FIELDS]>::try_from(fields)
            .map_err(|_| damaged("wrong number of fields".to_owned()))
    }

    /// The row back, to report a row the database refused.
    pub fn unpack(&self) -> Result<CheckRow, StoreError> {
        let [
            payer_id,
            customer_ref,
            status,
            pay_type,
            card_code,
            card_name,
            card_mask,
            bank_code,
            bank_name,
            bank_mask,
            bank_account_type,
            payer_name,
            payer_phone_mask,
            is_tax,
            result_code,
            result_msg,
            attempts,
            checked_at,
        ] = self.fields()?;
        let status = status.as_deref().and_then(KeyStatus::parse);
        let attempts = attempts.as_deref().and_then(|a| a.parse().ok());
        let pay_type = pay_type.as_deref().map(PayType::parse);
        let (Some(payer_id), Some(status), Some(attempts), Some(checked_at)) =
            (payer_id, status, attempts, checked_at)
        else {
            return Err(damaged("a required field is missing".to_owned()));
        };
        if pay_type == Some(None) {
            return Err(damaged("unknown pay type".to_owned()));
        }
        Ok(CheckRow {
            payer_id,
            customer_ref,
            outcome: LookupOutcome {
                status,
                details: KeyDetails {
                    pay_type: pay_type.flatten(),
                    card_code,
                    card_name,
                    card_mask,
                    bank_code,
                    bank_name,
                    bank_mask,
                    bank_account_type,
                    payer_name,
                    payer_phone_mask,
                    is_tax,
                },
                result_code,
                result_msg,
                attempts,
            },
            checked_at,
        })
    }
}

/// A packed row that does not read back.
fn damaged(why: String) -> StoreError {
    StoreError::Query {
        doing: "unpacking a result row",
        source: sqlx::Error::Decode(why.into()),
    }
}

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

    fn full_row() -> CheckRow {
        CheckRow {
            payer_id: "abcDEF0123456789abcDEF0123456789".to_owned(),
            customer_ref: Some("CUST \"7\", 고객".to_owned()),
            outcome: LookupOutcome {
                status: KeyStatus::Active,
                details: KeyDetails {
                    pay_type: Some(PayType::Card),
                    card_code: Some("41".to_owned()),
                    card_name: Some("BC카드".to_owned()),
                    card_mask: Some("1111-****-****-2222".to_owned()),
                    bank_code: None,
                    bank_name: None,
                    bank_mask: None,
                    bank_account_type: None,
                    payer_name: Some("홍*동".to_owned()),
                    payer_phone_mask: Some("010-****-1234".to_owned()),
                    is_tax: Some("Y".to_owned()),
                },
                result_code: Some("0000".to_owned()),
                result_msg: Some("line\nbreak \\ and \u{1F600}".to_owned()),
                attempts: 3,
            },
            checked_at: "2026-11-28T09:00:00.123Z".to_owned(),
        }
    }

    #[test]
    fn a_packed_row_unpacks_to_the_same_row() {
        let row = full_row();
        let back = PackedRow::pack(&row).unpack().expect("unpacks");
        assert_eq!(back.payer_id, row.payer_id);
        assert_eq!(back.customer_ref, row.customer_ref);
        assert_eq!(back.outcome, row.outcome);
        assert_eq!(back.checked_at, row.checked_at);
    }

    #[test]
    fn packed_rows_sort_by_payer_id() {
        let with_id = |id: &str| {
            let mut row = full_row();
            row.payer_id = id.to_owned();
            PackedRow::pack(&row)
        };
        let mut rows = [with_id("b"), with_id("ab"), with_id("a+"), with_id("a")];
        rows.sort_unstable();
        let ids: Vec<String> = rows.iter().map(|r| r.unpack().unwrap().payer_id).collect();
        assert_eq!(ids, ["a", "a+", "ab", "b"]);
    }

    #[test]
    fn a_damaged_packed_row_is_an_error_not_a_panic() {
        for text in ["", "[]", "[\"k\"]", "{\"a\":1}"] {
            assert!(PackedRow(text.into()).unpack().is_err(), "{text}");
        }
        let mut fields: Vec<Option<String>> = vec![Some("x".to_owned()); PACKED_FIELDS];
        fields[2] = Some("maybe".to_owned());
        let text = serde_json::to_string(&fields).unwrap();
        assert!(PackedRow(text.into()).unpack().is_err(), "unknown status");
    }

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
