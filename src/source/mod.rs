//! Key sources: where the stored billing keys come from (a CSV file or stdin, an Excel
//! workbook, a database table, or a query), read as a stream of valid keys and rejected
//! rows in input order.

pub mod columns;
pub mod csv_file;
pub mod decode;
pub mod due;
pub mod readonly;
pub mod table;
pub mod xlsx;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::domain::{PayerId, RejectReason};
use crate::sql_errors::is_unreachable;

/// Items per message on the channel from a reader to the pipeline.
pub const CHUNK: usize = 1000;

/// Where the keys come from; stored with the run (as JSON) so `--resume` can read the
/// same source again if the crash came before the key list was complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceSpec {
    /// A CSV file with a `payer_id` column (and optionally `customer_ref`); `-` is stdin.
    Csv {
        path: PathBuf,
        /// Encoding, delimiter and column names; absent in runs stored before they existed.
        #[serde(default, skip_serializing_if = "csv_file::CsvFormat::is_default")]
        format: csv_file::CsvFormat,
    },
    /// A sheet of an `.xlsx` workbook, read as the CSV's columns.
    Xlsx {
        path: PathBuf,
        /// `None`: the first sheet (named by [`resolve`] before a run is created).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sheet: Option<String>,
        #[serde(default, skip_serializing_if = "columns::ColumnNames::is_default")]
        columns: columns::ColumnNames,
    },
    /// A table and its columns, identifiers validated.
    Table {
        table: String,
        id_column: String,
        ref_column: Option<String>,
    },
    /// Any query whose first column is the key and whose second (optional) the reference.
    Query { sql: String },
}

impl SourceSpec {
    /// A one-line description for logs and the runs table.
    pub fn describe(&self) -> String {
        match self {
            Self::Csv { path, .. } if is_stdin(path) => "csv:stdin".to_owned(),
            Self::Csv { path, .. } => format!("csv:{}", path.display()),
            Self::Xlsx {
                path,
                sheet: Some(sheet),
                ..
            } => format!("xlsx:{}[{sheet}]", path.display()),
            Self::Xlsx { path, .. } => format!("xlsx:{}", path.display()),
            Self::Table {
                table,
                id_column,
                ref_column,
            } => match ref_column {
                Some(r) => format!("table:{table}({id_column},{r})"),
                None => format!("table:{table}({id_column})"),
            },
            Self::Query { .. } => "query".to_owned(),
        }
    }

    pub fn is_stdin(&self) -> bool {
        matches!(self, Self::Csv { path, .. } if is_stdin(path))
    }

    /// Whether the keys come from a file (CSV or workbook) rather than a database.
    pub fn is_file(&self) -> bool {
        matches!(self, Self::Csv { .. } | Self::Xlsx { .. })
    }
}

fn is_stdin(path: &std::path::Path) -> bool {
    path.as_os_str() == "-"
}

/// One input row: a key to check, or a value that will not be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Key {
        /// Position in the input (CSV line, or row number).
        seq: i64,
        id: PayerId,
        customer_ref: Option<String>,
    },
    Rejected {
        seq: i64,
        reason: RejectReason,
        customer_ref: Option<String>,
        /// Where it was: `file line N` or `row N`.
        location: String,
    },
}

impl Item {
    /// Validates a raw id read at `seq`; a reference longer than its column is cut.
    pub fn from_raw(
        seq: i64,
        raw: &str,
        mut customer_ref: Option<String>,
        location: impl FnOnce() -> String,
    ) -> Self {
        crate::domain::FieldBound::CustomerRef.apply(&mut customer_ref);
        match PayerId::parse(raw) {
            Ok(id) => Self::Key {
                seq,
                id,
                customer_ref,
            },
            Err(reason) => Self::Rejected {
                seq,
                reason,
                customer_ref,
                location: location(),
            },
        }
    }
}

/// A source that cannot be read: the run stops before any lookup.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: the file is empty (expected a header line with a `payer_id` column)")]
    Empty { path: String },
    /// `at`: `FILE line N`, or `FILE sheet NAME row N`.
    #[error("{at}: {source}")]
    MissingColumn {
        at: String,
        source: columns::MissingColumn,
    },
    #[error("{path} line {line}: not valid UTF-8")]
    NotUtf8 { path: String, line: u64 },
    #[error("{path} {source}")]
    Encoding {
        path: String,
        source: decode::DecodeError,
    },
    #[error("{path}: {reason}")]
    Workbook { path: String, reason: String },
    #[error("{path} line {line}: malformed CSV: {reason}")]
    Malformed {
        path: String,
        line: u64,
        reason: String,
    },
    #[error("invalid SQL identifier {0:?} (letters, digits and _ only, optionally schema.name)")]
    BadIdentifier(String),
    #[error("source {what}: {source}")]
    Database {
        what: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("source {what}: row {row}: the key column is neither text nor an integer")]
    BadValue { what: String, row: i64 },
    #[error("the source query is refused: {0}")]
    NotReadOnly(String),
    #[error(
        "source {what} holds no valid billing key: stopping rather than reporting an empty \
         night (pass --allow-empty-source if that is expected)"
    )]
    NoKeys { what: String },
    #[error("source {what}: the database refused a write: the key source is read-only ({reason})")]
    WriteRefused { what: String, reason: String },
    #[error(
        "run {0} read its keys from stdin and stopped before reading them all; stdin cannot be \
         read again: start a new run"
    )]
    StdinNotResumable(i64),
}

impl SourceError {
    /// Whether the input or its configuration is wrong (exit code 3: a malformed file, a
    /// query that would write, a missing table or column) rather than the database being
    /// unreachable.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::Database { source, .. } => !is_unreachable(source),
            _ => true,
        }
    }
}

/// A reader's output: chunks of items in order, or the error that ended it.
pub type ItemReceiver = mpsc::Receiver<Result<Vec<Item>, SourceError>>;

/// The next chunk from a reader, or `Some(None)` as soon as `stop` is cancelled: a reader
/// blocked on a pipe that stays open, a FIFO with no writer or a slow database is left
/// behind (its thread ends with the process). `None` when the reader is done.
pub async fn next_or_stop(
    items: &mut ItemReceiver,
    stop: &tokio_util::sync::CancellationToken,
) -> Option<Option<Result<Vec<Item>, SourceError>>> {
    if stop.is_cancelled() {
        return Some(None);
    }
    tokio::select! {
        biased;
        () = stop.cancelled() => Some(None),
        chunk = items.recv() => chunk.map(Some),
    }
}

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

/// Checks a table or column name: `name` or `schema.name`, letters, digits, `_`.
pub fn validate_identifier(name: &str) -> Result<&str, SourceError> {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 63
            && p.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() <= 2 && parts.iter().all(|p| part_ok(p)) {
        Ok(name)
    } else {
        Err(SourceError::BadIdentifier(name.to_owned()))
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
