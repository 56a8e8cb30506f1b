//! The database key reader: a validated table and columns, or a query, streamed row by
//! row from the source database.

use futures::TryStreamExt;
use sqlx::{AnyPool, AssertSqlSafe, Executor, Row};
use tokio::sync::mpsc;

use super::error::SourceError;
use super::item::{CHUNK, Item, ItemReceiver};
use super::readonly::{check_query, is_write_refused};
use super::spec::{SourceSpec, validate_identifier};

/// Streams the rows of `spec` from `pool` in a task.
pub fn spawn(spec: SourceSpec, pool: Option<AnyPool>) -> ItemReceiver {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let result = match pool {
            Some(pool) => read(&spec, &pool, &tx).await,
            None => Err(SourceError::Database {
                what: spec.describe(),
                source: sqlx::Error::Configuration("no source database".into()),
            }),
        };
        if let Err(e) = result {
            let _ = tx.send(Err(e)).await;
        }
    });
    rx
}

/// The SQL a table or query source runs.
pub fn select_sql(spec: &SourceSpec) -> Result<String, SourceError> {
    match spec {
        SourceSpec::Table {
            table,
            id_column,
            ref_column,
        } => {
            let table = validate_identifier(table)?;
            let id = validate_identifier(id_column)?;
            Ok(match ref_column {
                Some(r) => format!("SELECT {id}, {} FROM {table}", validate_identifier(r)?),
                None => format!("SELECT {id} FROM {table}"),
            })
        }
        SourceSpec::Query { sql } => {
            check_query(sql)?;
            Ok(sql.clone())
        }
        SourceSpec::Csv { .. } | SourceSpec::Xlsx { .. } => {
            Err(SourceError::BadIdentifier("csv".into()))
        }
    }
}

/// Turns a database error into the source error it means.
fn source_error(what: &str, source: sqlx::Error) -> SourceError {
    if is_write_refused(&source) {
        SourceError::WriteRefused {
            what: what.to_owned(),
            reason: source.to_string(),
        }
    } else {
        SourceError::Database {
            what: what.to_owned(),
            source,
        }
    }
}

/// Reads the rows on one connection, inside a read-only transaction where the database
/// has them (PostgreSQL, MySQL); the transaction is rolled back at the end.
async fn read(
    spec: &SourceSpec,
    pool: &AnyPool,
    tx: &mpsc::Sender<Result<Vec<Item>, SourceError>>,
) -> Result<(), SourceError> {
    let what = spec.describe();
    let sql = select_sql(spec)?;
    let mut conn = pool.acquire().await.map_err(|e| source_error(&what, e))?;
    let transaction = conn.backend_name() != "SQLite";
    if transaction {
        conn.execute("START TRANSACTION READ ONLY")
            .await
            .map_err(|e| source_error(&what, e))?;
    }
    let result = stream_rows(&what, &sql, &mut conn, tx).await;
    if transaction {
        // Nothing was written; the rollback only ends the transaction.
        let _ = conn.execute("ROLLBACK").await;
    }
    result
}

async fn stream_rows(
    what: &str,
    sql: &str,
    conn: &mut sqlx::AnyConnection,
    tx: &mpsc::Sender<Result<Vec<Item>, SourceError>>,
) -> Result<(), SourceError> {
    let what = what.to_owned();
    let db_error = |source| source_error(&what, source);
    let mut rows = sqlx::query(AssertSqlSafe(sql.to_owned())).fetch(&mut *conn);
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut seq = 0i64;
    while let Some(row) = rows.try_next().await.map_err(db_error)? {
        seq += 1;
        let raw = text_value(&row, 0).map_err(|_| SourceError::BadValue {
            what: what.clone(),
            row: seq,
        })?;
        let customer_ref = if row.len() > 1 {
            text_value(&row, 1)
                .ok()
                .flatten()
                .filter(|r| !r.trim().is_empty())
        } else {
            None
        };
        let item = Item::from_raw(
            seq,
            raw.as_deref().unwrap_or_default(),
            customer_ref,
            || format!("{what} row {seq}"),
        );
        chunk.push(item);
        if chunk.len() >= CHUNK {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
            if tx.send(Ok(full)).await.is_err() {
                return Ok(());
            }
        }
    }
    if !chunk.is_empty() {
        let _ = tx.send(Ok(chunk)).await;
    }
    Ok(())
}

/// A column as text: text as it is, integers written out, NULL as `None`.
fn text_value(row: &sqlx::any::AnyRow, at: usize) -> Result<Option<String>, sqlx::Error> {
    match row.try_get::<Option<String>, _>(at) {
        Ok(v) => Ok(v),
        Err(_) => row
            .try_get::<Option<i64>, _>(at)
            .map(|v| v.map(|n| n.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_sql_is_built_from_validated_identifiers() {
        let spec = SourceSpec::Table {
            table: "billing_keys".into(),
            id_column: "payer_id".into(),
            ref_column: Some("customer_ref".into()),
        };
        assert_eq!(
            select_sql(&spec).unwrap(),
            "SELECT payer_id, customer_ref FROM billing_keys"
        );
        let bad = SourceSpec::Table {
            table: "x; DROP TABLE y".into(),
            id_column: "payer_id".into(),
            ref_column: None,
        };
        assert!(select_sql(&bad).is_err());
    }
}
