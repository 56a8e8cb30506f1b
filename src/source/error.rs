//! What makes a source unreadable ([`SourceError`]), and which failures are the input's
//! fault rather than the database's.

use super::{columns, decode};
use crate::sql_errors::is_unreachable;

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
