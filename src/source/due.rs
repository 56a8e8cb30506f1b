//! Next charge dates (`--due-column`): the key and the named date column of a table or
//! query source, streamed in chunks, for a budgeted run's priority order.

use futures::TryStreamExt;
use sqlx::{AnyPool, AssertSqlSafe, Row};

use super::error::SourceError;
use super::item::CHUNK;
use super::spec::{SourceSpec, validate_identifier};

/// The SQL that reads keys and their dates: the table's key column and its date column
/// read as text (a `DATE`, `DATETIME` or `TIMESTAMP` column as well as `YYYY-MM-DD` text:
/// the `Any` driver decodes no date types), or the query as given (the date column is
/// then found by name, and must be text). `scheme` is the source URL's (`mysql`, …).
pub fn due_sql(spec: &SourceSpec, column: &str, scheme: &str) -> Result<String, SourceError> {
    let column = validate_identifier(column)?;
    // MySQL/MariaDB cast to CHAR; SQLite and PostgreSQL to TEXT. Kept under its own name.
    let text = if matches!(scheme, "mysql" | "mariadb") {
        "CHAR"
    } else {
        "TEXT"
    };
    match spec {
        SourceSpec::Table {
            table, id_column, ..
        } => Ok(format!(
            "SELECT {}, CAST({column} AS {text}) AS {column} FROM {}",
            validate_identifier(id_column)?,
            validate_identifier(table)?
        )),
        SourceSpec::Query { sql } => Ok(sql.clone()),
        SourceSpec::Csv { .. } | SourceSpec::Xlsx { .. } => {
            Err(SourceError::BadIdentifier("csv".into()))
        }
    }
}

/// Reads `(key, raw date)` pairs and hands them to `sink` a chunk at a time; rows with no
/// key or no date are skipped. The date column must be text (cast it in a query if not).
pub async fn read<F, Fut, E>(
    spec: &SourceSpec,
    column: &str,
    pool: &AnyPool,
    mut sink: F,
) -> Result<u64, E>
where
    F: FnMut(Vec<(String, String)>) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: From<SourceError>,
{
    let what = format!("{} (due dates)", spec.describe());
    let db_error = |source| {
        E::from(SourceError::Database {
            what: what.clone(),
            source,
        })
    };
    let scheme = pool.connect_options().database_url.scheme().to_owned();
    let sql = due_sql(spec, column, &scheme).map_err(E::from)?;
    let mut rows = sqlx::query(AssertSqlSafe(sql)).fetch(pool);
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut read = 0u64;
    while let Some(row) = rows.try_next().await.map_err(db_error)? {
        let key = row.try_get::<Option<String>, _>(0).ok().flatten();
        let due = row.try_get::<Option<String>, _>(column).map_err(db_error)?;
        if let (Some(key), Some(due)) = (key, due) {
            chunk.push((key, due));
            read += 1;
        }
        if chunk.len() >= CHUNK {
            sink(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK))).await?;
        }
    }
    if !chunk.is_empty() {
        sink(chunk).await?;
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_sql_from_validated_identifiers() {
        let table = SourceSpec::Table {
            table: "billing_keys".into(),
            id_column: "payer_id".into(),
            ref_column: Some("customer_ref".into()),
        };
        assert_eq!(
            due_sql(&table, "next_charge", "postgres").unwrap(),
            "SELECT payer_id, CAST(next_charge AS TEXT) AS next_charge FROM billing_keys"
        );
        assert_eq!(
            due_sql(&table, "next_charge", "mysql").unwrap(),
            "SELECT payer_id, CAST(next_charge AS CHAR) AS next_charge FROM billing_keys"
        );
        assert!(due_sql(&table, "x; DROP TABLE y", "sqlite").is_err());
        let query = SourceSpec::Query {
            sql: "SELECT k, due FROM t".into(),
        };
        assert_eq!(
            due_sql(&query, "due", "sqlite").unwrap(),
            "SELECT k, due FROM t"
        );
    }
}
