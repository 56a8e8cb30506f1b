//! Which source a run reads ([`SourceSpec`], stored with the run as JSON), and the check
//! of the table and column names a table source is given.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::SourceError;
use super::{columns, csv_file};

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
