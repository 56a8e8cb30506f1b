//! Key sources: where the stored billing keys come from (a CSV file or stdin, an Excel
//! workbook, a database table, or a query), read as a stream of valid keys and rejected
//! rows in input order.
//!
//! `spec` says which source a run reads, `item` what a reader sends, `error` what stops
//! it; this file starts the reader a spec names.

pub mod columns;
pub mod csv_file;
pub mod decode;
pub mod due;
mod error;
mod item;
pub mod readonly;
mod spec;
pub mod table;
pub mod xlsx;

pub use error::SourceError;
pub use item::{CHUNK, Item, ItemReceiver, next_or_stop};
pub use spec::{SourceSpec, validate_identifier};

/// Starts reading `spec` in the background. `source_db` is the database a table or query
/// source reads from.
pub fn open(spec: &SourceSpec, source_db: Option<sqlx::AnyPool>) -> ItemReceiver {
    match spec {
        SourceSpec::Csv { path, format } => csv_file::spawn(path.clone(), format.clone()),
        SourceSpec::Xlsx {
            path,
            sheet,
            columns,
        } => xlsx::spawn(path.clone(), sheet.clone(), columns.clone()),
        SourceSpec::Table { .. } | SourceSpec::Query { .. } => {
            table::spawn(spec.clone(), source_db)
        }
    }
}

/// Names the sheet of a workbook source read without `--sheet` (the first), so the run
/// records which sheet it read; a workbook that cannot be opened stops the run here.
pub async fn resolve(spec: SourceSpec) -> Result<SourceSpec, SourceError> {
    match spec {
        SourceSpec::Xlsx {
            path,
            sheet: None,
            columns,
        } => {
            let sheet = tokio::task::spawn_blocking({
                let path = path.clone();
                move || xlsx::first_sheet(&path)
            })
            .await
            .map_err(|e| SourceError::Workbook {
                path: path.display().to_string(),
                reason: e.to_string(),
            })??;
            Ok(SourceSpec::Xlsx {
                path,
                sheet: Some(sheet),
                columns,
            })
        }
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(validate_identifier("billing_keys").is_ok());
        assert!(validate_identifier("public.billing_keys").is_ok());
        assert!(validate_identifier("_x1").is_ok());
        for bad in ["", "1abc", "a;drop table x", "a.b.c", "a b", "a\"b", "a-b"] {
            assert!(validate_identifier(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spec_round_trips_as_json() {
        let spec = SourceSpec::Table {
            table: "billing_keys".into(),
            id_column: "payer_id".into(),
            ref_column: Some("customer_ref".into()),
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<SourceSpec>(&json).unwrap(), spec);
        assert_eq!(spec.describe(), "table:billing_keys(payer_id,customer_ref)");
    }

    #[test]
    fn a_csv_spec_stored_before_formats_existed_still_reads() {
        let old: SourceSpec =
            serde_json::from_str(r#"{"kind":"csv","path":"keys.csv"}"#).expect("old spec");
        assert_eq!(
            old,
            SourceSpec::Csv {
                path: "keys.csv".into(),
                format: csv_file::CsvFormat::default()
            }
        );
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"{"kind":"csv","path":"keys.csv"}"#
        );
        let xlsx = SourceSpec::Xlsx {
            path: "keys.xlsx".into(),
            sheet: Some("키 목록".into()),
            columns: columns::ColumnNames {
                id: Some("빌링키".into()),
                reference: columns::RefColumn::Named("고객번호".into()),
            },
        };
        let json = serde_json::to_string(&xlsx).unwrap();
        assert_eq!(serde_json::from_str::<SourceSpec>(&json).unwrap(), xlsx);
        assert_eq!(xlsx.describe(), "xlsx:keys.xlsx[키 목록]");
    }
}
