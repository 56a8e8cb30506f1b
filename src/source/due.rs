//! Next charge dates (`--due-column`): the key and the named date column of a table or
//! query source, streamed in chunks, for a budgeted run's priority order.

use futures::TryStreamExt;
use sqlx::{AnyPool, AssertSqlSafe, Row};

use super::{CHUNK, SourceError, SourceSpec, validate_identifier};

/// The SQL that reads keys and their dates: the table's key and date columns, or the
/// query as given (the date column is then found by name).
pub fn due_sql(spec: &SourceSpec, column: &str) -> Result<String, SourceError> {
    let column = validate_identifier(column)?;
    match spec {
        SourceSpec::Table {
            table, id_column, ..
        } => Ok(format!(
            "SELECT {}, {column} FROM {}",
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
    let sql = due_sql(spec, column).map_err(E::from)?;
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
            due_sql(&table, "next_charge").unwrap(),
            "SELECT payer_id, next_charge FROM billing_keys"
        );
        assert!(due_sql(&table, "x; DROP TABLE y").is_err());
        let query = SourceSpec::Query {
            sql: "SELECT k, due FROM t".into(),
        };
        assert_eq!(due_sql(&query, "due").unwrap(), "SELECT k, due FROM t");
    }
}
