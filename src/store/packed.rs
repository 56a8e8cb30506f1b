//! A result row's one written form: the JSON array of its columns after `run_id`, which
//! every database's insert reads (SQLite's `jsonb_each`, PostgreSQL's arrays, MySQL's rows).

use super::error::StoreError;
use super::records::{CHECK_COLUMN_COUNT, CheckRow};
use super::time::{parse_time, time_text};
use crate::domain::{KeyDetails, KeyStatus, LookupOutcome, PayType};

/// The columns a packed row holds: all but `run_id`.
pub(super) const PACKED_FIELDS: usize = CHECK_COLUMN_COUNT - 1;

/// A result row as the writer holds it: the JSON array of its columns after `run_id`,
/// in `CHECK_COLUMNS` order (`attempts` as text), the form SQLite's `jsonb_each` insert
/// reads. About 230 bytes in one allocation, against ~770 for a [`CheckRow`] and its
/// eleven strings: the batch being written and the one being collected (16,384 rows
/// each) hold ~7 MiB instead of ~25. Ordered by its text, which begins with the payer id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PackedRow(pub(super) Box<str>);

/// A row's columns after `run_id`, in `CHECK_COLUMNS` order, as texts (`attempts` and
/// `checked_at` are the caller's texts of them): the one list of a result row's fields,
/// which every database's insert reads from the packed form.
fn column_texts<'a>(
    row: &'a CheckRow,
    attempts: &'a str,
    checked_at: &'a str,
) -> [Option<&'a str>; PACKED_FIELDS] {
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
        Some(checked_at),
    ]
}

impl PackedRow {
    pub fn pack(row: &CheckRow) -> PackedRow {
        let attempts = row.outcome.attempts.to_string();
        let checked_at = time_text(row.checked_at);
        let text = serde_json::to_string(&column_texts(row, &attempts, &checked_at))
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
        let checked_at = checked_at.as_deref().and_then(parse_time);
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

/// A result row with every field set (Hangul, quotes, escapes): the store's tests' fixture.
#[cfg(test)]
pub(super) fn full_row() -> CheckRow {
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
        checked_at: parse_time("2026-11-28T09:00:00.123Z").expect("a time"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
