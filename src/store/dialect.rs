//! Which SQL the database speaks ([`Dialect`]): placeholders rewritten for PostgreSQL,
//! upserts per dialect, and rows as one JSON array for SQLite's `jsonb_each` inserts.

use super::error::StoreError;

/// Which SQL the database speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    MySql,
}

impl Dialect {
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "sqlite" => Ok(Self::Sqlite),
            "postgres" | "postgresql" => Ok(Self::Postgres),
            "mysql" | "mariadb" => Ok(Self::MySql),
            _ => Err(StoreError::UnsupportedUrl(scheme.to_owned())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
            Self::MySql => "mysql",
        }
    }

    /// Rewrites `?` placeholders to `$1, $2, …` for PostgreSQL.
    pub(super) fn rewrite(self, sql: &str) -> String {
        if self != Self::Postgres {
            return sql.to_owned();
        }
        let mut out = String::with_capacity(sql.len() + 16);
        let mut n = 0;
        for c in sql.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        out
    }

    /// `INSERT` that leaves an existing row alone.
    pub(super) fn insert_ignoring(
        self,
        table_and_columns: &str,
        values: &str,
        key: &str,
    ) -> String {
        match self {
            Self::MySql => {
                let first = key.split(',').next().unwrap_or(key).trim();
                format!(
                    "INSERT INTO {table_and_columns} VALUES {values} \
                     ON DUPLICATE KEY UPDATE {first} = {first}"
                )
            }
            _ => format!(
                "INSERT INTO {table_and_columns} VALUES {values} ON CONFLICT ({key}) DO NOTHING"
            ),
        }
    }
}
/// Rows as one JSON array, for SQLite's `jsonb_each` inserts.
pub(super) fn json_rows<T: serde::Serialize>(
    rows: &[T],
    doing: &'static str,
) -> Result<String, StoreError> {
    serde_json::to_string(rows).map_err(|e| StoreError::Query {
        doing,
        source: sqlx::Error::Encode(Box::new(e)),
    })
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_rewritten_for_postgres_only() {
        assert_eq!(
            Dialect::Postgres.rewrite("a = ? AND b IN (?, ?)"),
            "a = $1 AND b IN ($2, $3)"
        );
        assert_eq!(Dialect::Sqlite.rewrite("a = ?"), "a = ?");
    }

    #[test]
    fn dialects_from_urls() {
        assert_eq!(Dialect::from_url("sqlite://x.db").unwrap(), Dialect::Sqlite);
        assert_eq!(
            Dialect::from_url("postgres://localhost/test").unwrap(),
            Dialect::Postgres
        );
        assert_eq!(Dialect::from_url("mariadb://x").unwrap(), Dialect::MySql);
        assert!(Dialect::from_url("oracle://x").is_err());
    }

    #[test]
    fn upserts_per_dialect() {
        assert!(
            Dialect::MySql
                .insert_ignoring("t (a, b)", "(?, ?)", "a, b")
                .ends_with("ON DUPLICATE KEY UPDATE a = a")
        );
        assert!(
            Dialect::Sqlite
                .insert_ignoring("t (a, b)", "(?, ?)", "a, b")
                .ends_with("ON CONFLICT (a, b) DO NOTHING")
        );
    }
}
