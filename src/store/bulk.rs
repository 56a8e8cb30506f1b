//! The bulk paths of PostgreSQL and MySQL/MariaDB ([`Native`]): staging keys, writing
//! result rows and reading pages of pending keys through the database's own driver.
//!
//! # Why a native pool beside the `Any` one
//! sqlx's `Any` driver has no array types and re-prepares a multi-row `VALUES` list for
//! each chunk of a different size. For the three statements run once per key, the store
//! keeps a second, lazily connected pool of the dialect's own driver:
//! - PostgreSQL binds each column as one array and inserts `SELECT … FROM UNNEST(…)`: one
//!   statement per batch whatever its size, prepared once per connection.
//! - MySQL has no arrays: rows go in multi-row `INSERT`s of a few fixed sizes (powers of
//!   two up to [`MYSQL_ROWS`]), each prepared once per connection and kept.
//!
//! Every other statement stays on the `Any` pool. A refused batch fails whole, as before,
//! so the writer's isolation of a poison row is unchanged.

use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool};
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{AssertSqlSafe, ConnectOptions, Row};

use super::dialect::Dialect;
use super::error::{StoreError, ctx};
use super::packed::{PACKED_FIELDS, PackedRow};
use super::records::{CHECK_COLUMNS, StagedKey};

/// Connections of the native pool: the writer, the staging step and the page reader.
const NATIVE_CONNECTIONS: u32 = 3;

/// Rows of the largest MySQL multi-row insert of result rows: 19 values a row, well
/// under the 65,535 bind parameters of a statement.
pub(super) const MYSQL_ROWS: usize = 1024;

/// Where `attempts` stands among a packed row's fields (stored as an integer).
const ATTEMPTS: usize = 16;

/// A pool of [`NATIVE_CONNECTIONS`], connected on first use.
fn lazy_pool<DB: sqlx::Database>(
    options: <DB::Connection as sqlx::Connection>::Options,
) -> sqlx::Pool<DB> {
    sqlx::pool::PoolOptions::<DB>::new()
        .acquire_timeout(Duration::from_secs(30))
        .max_connections(NATIVE_CONNECTIONS)
        .connect_lazy_with(options)
}

/// A native pool for the dialect's bulk statements.
#[derive(Debug, Clone)]
pub(super) enum Native {
    Postgres(PgPool),
    MySql(MySqlPool),
}

impl Native {
    /// The native pool for a server URL (`None` for SQLite), connected on first use: the
    /// `Any` pool has already checked the server answers.
    pub(super) fn lazy(dialect: Dialect, url: &str) -> Result<Option<Self>, StoreError> {
        let connect_error = |source| StoreError::Connect {
            dialect: dialect.name(),
            source,
        };
        // As on the `Any` pool: a large batch taking a second is expected, not news.
        let (level, slow) = (log::LevelFilter::Debug, Duration::from_secs(1));
        let native = match dialect {
            Dialect::Sqlite => return Ok(None),
            Dialect::Postgres => {
                let options = PgConnectOptions::from_str(url)
                    .map_err(connect_error)?
                    .log_slow_statements(level, slow);
                Self::Postgres(lazy_pool(options))
            }
            Dialect::MySql => {
                let options = MySqlConnectOptions::from_str(url)
                    .map_err(connect_error)?
                    .log_slow_statements(level, slow);
                Self::MySql(lazy_pool(options))
            }
        };
        Ok(Some(native))
    }

    pub(super) async fn close(&self) {
        match self {
            Self::Postgres(pool) => pool.close().await,
            Self::MySql(pool) => pool.close().await,
        }
    }

    /// Stages sorted keys in one transaction (the first occurrence of a key stays).
    pub(super) async fn stage_keys(
        &self,
        run_id: i64,
        shard_index: u32,
        keys: &[StagedKey],
    ) -> Result<(), StoreError> {
        const DOING: &str = "staging keys";
        match self {
            Self::Postgres(pool) => {
                let seqs: Vec<i64> = keys.iter().map(|k| k.seq).collect();
                let ids: Vec<&str> = keys.iter().map(|k| k.payer_id.as_str()).collect();
                let refs: Vec<Option<&str>> =
                    keys.iter().map(|k| k.customer_ref.as_deref()).collect();
                sqlx::query(
                    "INSERT INTO run_keys (run_id, shard_index, seq, payer_id, customer_ref) \
                     SELECT $1, $2, t.seq, t.payer_id, t.customer_ref \
                     FROM UNNEST($3::bigint[], $4::text[], $5::text[]) \
                     AS t(seq, payer_id, customer_ref) \
                     ON CONFLICT (run_id, payer_id) DO NOTHING",
                )
                .bind(run_id)
                .bind(i64::from(shard_index))
                .bind(seqs)
                .bind(ids)
                .bind(refs)
                .execute(pool)
                .await
                .map_err(ctx(DOING))?;
                Ok(())
            }
            Self::MySql(pool) => {
                let mut tx = pool.begin().await.map_err(ctx(DOING))?;
                for chunk in mysql_chunks(keys, MYSQL_KEY_ROWS) {
                    let sql = mysql_insert(
                        "run_keys (run_id, shard_index, seq, payer_id, customer_ref)",
                        5,
                        chunk.len(),
                    );
                    let mut query = sqlx::query(AssertSqlSafe(sql));
                    for key in chunk {
                        query = query
                            .bind(run_id)
                            .bind(i64::from(shard_index))
                            .bind(key.seq)
                            .bind(key.payer_id.as_str())
                            .bind(key.customer_ref.as_deref());
                    }
                    query.execute(&mut *tx).await.map_err(ctx(DOING))?;
                }
                tx.commit().await.map_err(ctx(DOING))
            }
        }
    }

    /// Writes packed result rows in one transaction; a row already present is kept.
    pub(super) async fn insert_packed(
        &self,
        run_id: i64,
        rows: &[PackedRow],
    ) -> Result<(), StoreError> {
        const DOING: &str = "writing results";
        let rows = rows
            .iter()
            .map(PackedRow::fields)
            .collect::<Result<Vec<_>, _>>()?;
        match self {
            Self::Postgres(pool) => {
                let mut query = sqlx::query(AssertSqlSafe(pg_insert_checks())).bind(run_id);
                for field in 0..PACKED_FIELDS {
                    let column: Vec<Option<&str>> =
                        rows.iter().map(|r| r[field].as_deref()).collect();
                    query = query.bind(column);
                }
                query.execute(pool).await.map_err(ctx(DOING))?;
                Ok(())
            }
            Self::MySql(pool) => {
                let mut tx = pool.begin().await.map_err(ctx(DOING))?;
                for chunk in mysql_chunks(&rows, MYSQL_ROWS) {
                    let sql = mysql_insert(
                        &format!("billing_key_checks ({CHECK_COLUMNS})"),
                        PACKED_FIELDS + 1,
                        chunk.len(),
                    );
                    let mut query = sqlx::query(AssertSqlSafe(sql));
                    for row in chunk {
                        query = query.bind(run_id);
                        for (i, field) in row.iter().enumerate() {
                            query = if i == ATTEMPTS {
                                let attempts = field.as_deref().and_then(|a| a.parse::<i64>().ok());
                                query.bind(attempts)
                            } else {
                                query.bind(field.as_deref())
                            };
                        }
                    }
                    query.execute(&mut *tx).await.map_err(ctx(DOING))?;
                }
                tx.commit().await.map_err(ctx(DOING))
            }
        }
    }

    /// A page of keys selected by `sql` (`?` placeholders: the run, the shard, the cursor
    /// and the limit; columns `seq, payer_id, customer_ref, prior_attempts`).
    pub(super) async fn key_page(
        &self,
        sql: &str,
        doing: &'static str,
        binds: (i64, u32, i64, i64),
    ) -> Result<Vec<StagedKey>, StoreError> {
        let (run_id, shard_index, after, limit) = binds;
        match self {
            Self::Postgres(pool) => {
                let sql = Dialect::Postgres.rewrite(sql);
                let rows = sqlx::query(AssertSqlSafe(sql))
                    .bind(run_id)
                    .bind(i64::from(shard_index))
                    .bind(after)
                    .bind(limit)
                    .fetch_all(pool)
                    .await
                    .map_err(ctx(doing))?;
                rows.iter()
                    .map(|r| {
                        // `prior_attempts` is an INTEGER: the native driver does not
                        // widen it to i64 by itself.
                        let prior = r
                            .try_get::<i64, _>(3)
                            .or_else(|_| r.try_get::<i32, _>(3).map(i64::from))?;
                        Ok(StagedKey::from_columns(
                            r.try_get(0)?,
                            r.try_get(1)?,
                            r.try_get(2)?,
                            prior,
                        ))
                    })
                    .collect::<Result<_, sqlx::Error>>()
                    .map_err(ctx(doing))
            }
            Self::MySql(pool) => {
                let rows = sqlx::query(AssertSqlSafe(sql.to_owned()))
                    .bind(run_id)
                    .bind(i64::from(shard_index))
                    .bind(after)
                    .bind(limit)
                    .fetch_all(pool)
                    .await
                    .map_err(ctx(doing))?;
                rows.iter()
                    .map(|r| {
                        Ok(StagedKey::from_columns(
                            r.try_get(0)?,
                            r.try_get(1)?,
                            r.try_get(2)?,
                            r.try_get(3)?,
                        ))
                    })
                    .collect::<Result<_, sqlx::Error>>()
                    .map_err(ctx(doing))
            }
        }
    }
}

/// Rows of the largest MySQL multi-row insert of staged keys (5 values a row).
const MYSQL_KEY_ROWS: usize = 4096;

/// PostgreSQL: every result row of a batch in one statement, each column one array.
fn pg_insert_checks() -> String {
    let arrays: Vec<String> = (0..PACKED_FIELDS)
        .map(|i| format!("${}::text[]", i + 2))
        .collect();
    let names: Vec<String> = (0..PACKED_FIELDS).map(|i| format!("c{i}")).collect();
    let select: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            if i == ATTEMPTS {
                format!("t.{n}::integer")
            } else {
                format!("t.{n}")
            }
        })
        .collect();
    format!(
        "INSERT INTO billing_key_checks ({CHECK_COLUMNS}) SELECT $1, {} \
         FROM UNNEST({}) AS t({}) ON CONFLICT (run_id, payer_id) DO NOTHING",
        select.join(", "),
        arrays.join(", "),
        names.join(", ")
    )
}

/// MySQL: `rows` rows of `columns` placeholders, an existing row left alone.
fn mysql_insert(table_and_columns: &str, columns: usize, rows: usize) -> String {
    let one = format!("({})", vec!["?"; columns].join(", "));
    let values = vec![one.as_str(); rows].join(", ");
    Dialect::MySql.insert_ignoring(table_and_columns, &values, "run_id, payer_id")
}

/// `items` cut into chunks of a few fixed sizes, so that each statement is one of at
/// most a dozen, each prepared once per connection: whole chunks of `max`, then the
/// rest by descending powers of two.
fn mysql_chunks<T>(items: &[T], max: usize) -> Vec<&[T]> {
    let mut chunks = Vec::new();
    let mut rest = items;
    while !rest.is_empty() {
        let size = if rest.len() >= max {
            max
        } else {
            1 << rest.len().ilog2()
        };
        let (chunk, tail) = rest.split_at(size);
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mysql_chunks_come_in_fixed_sizes_and_keep_every_item_in_order() {
        let items: Vec<usize> = (0..2_500).collect();
        let chunks = mysql_chunks(&items, 1024);
        let sizes: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [1024, 1024, 256, 128, 64, 4]);
        let back: Vec<usize> = chunks.concat();
        assert_eq!(back, items);
        assert!(mysql_chunks::<u8>(&[], 8).is_empty());
        assert_eq!(mysql_chunks(&[1], 8), [&[1][..]]);
    }

    #[test]
    fn the_postgres_insert_binds_one_array_per_column() {
        let sql = pg_insert_checks();
        assert!(sql.contains("$19::text[]"), "{sql}");
        assert!(!sql.contains("$20"), "{sql}");
        assert!(sql.contains("t.c16::integer"), "{sql}");
    }
}
