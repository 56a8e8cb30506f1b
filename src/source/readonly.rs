//! Read-only access to the merchant's database: the key source is read through its own
//! connection that cannot write, whatever SQL `--source-query` holds.
//!
//! # Architecture
//! Two layers. [`check_query`] is a pure look at the SQL: one statement, starting with
//! `SELECT`, `WITH`, `VALUES` or `TABLE`, so the common mistakes get a clear refusal before
//! anything is sent; inside that statement, [`side_effect`] refuses what writes files or
//! state although it reads (`INTO OUTFILE`/`DUMPFILE`/`@var`, `FOR UPDATE` locks, `:=`
//! assignments, functions such as `GET_LOCK`, `LOAD_FILE`, `pg_advisory_lock`,
//! `nextval`). The database enforces the rest: SQLite is opened read-only with
//! `PRAGMA query_only = ON`; PostgreSQL and MySQL/MariaDB sessions are set read-only and
//! every read runs inside `START TRANSACTION READ ONLY`, rolled back at the end. A write that
//! slips past the first layer (e.g. a data-modifying `WITH`) is refused by the second.

use std::str::FromStr;
use std::time::Duration;

use sqlx::AnyPool;
use sqlx::ConnectOptions;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};

use super::error::SourceError;

/// How long connecting to the source database may take before the run stops.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Statements a source query may start with.
const READING: [&str; 4] = ["SELECT", "WITH", "VALUES", "TABLE"];

/// Refuses SQL that is not one reading statement, naming why.
pub fn check_query(sql: &str) -> Result<(), SourceError> {
    let refuse = |reason: String| Err(SourceError::NotReadOnly(reason));
    let statements = split_statements(sql);
    match statements.as_slice() {
        [] => refuse("the query is empty".to_owned()),
        [one] => {
            let first = first_word(one).to_ascii_uppercase();
            if READING.contains(&first.as_str()) {
                match side_effect(one) {
                    Some(found) => refuse(format!("a source query only reads; this one {found}")),
                    None => Ok(()),
                }
            } else {
                refuse(format!(
                    "a source query must be one SELECT (or WITH … SELECT) statement; it \
                     starts with {first:?}, which could change the database"
                ))
            }
        }
        many => refuse(format!(
            "a source query must be one statement; found {} separated by ';'",
            many.len()
        )),
    }
}

/// Words that write, lock or create even inside a SELECT (MariaDB's `SELECT … INTO
/// OUTFILE`, PostgreSQL's `SELECT … INTO table`, `FOR UPDATE`, a data-modifying `WITH`).
const WRITING_WORDS: [(&str, &str); 14] = [
    (
        "INTO",
        "writes its result somewhere (INTO OUTFILE, DUMPFILE, a variable or a table)",
    ),
    (
        "OUTFILE",
        "writes a file on the database server (INTO OUTFILE)",
    ),
    (
        "DUMPFILE",
        "writes a file on the database server (INTO DUMPFILE)",
    ),
    ("UPDATE", "updates or locks rows (UPDATE, FOR UPDATE)"),
    ("SHARE", "locks rows (FOR SHARE, LOCK IN SHARE MODE)"),
    ("LOCK", "locks rows or tables"),
    ("INSERT", "inserts rows"),
    ("DELETE", "deletes rows"),
    ("MERGE", "merges rows"),
    ("TRUNCATE", "truncates a table"),
    ("DROP", "drops something"),
    ("CREATE", "creates something"),
    ("ALTER", "alters something"),
    ("CALL", "calls a procedure"),
];

/// Functions with effects beyond reading: locks, files, sequences, sessions, sleeps.
const EFFECT_FUNCTIONS: [&str; 34] = [
    "GET_LOCK",
    "RELEASE_LOCK",
    "RELEASE_ALL_LOCKS",
    "LOAD_FILE",
    "SLEEP",
    "BENCHMARK",
    "NEXTVAL",
    "SETVAL",
    "LASTVAL",
    "SYS_EXEC",
    "SYS_EVAL",
    "PG_ADVISORY_LOCK",
    "PG_ADVISORY_LOCK_SHARED",
    "PG_ADVISORY_XACT_LOCK",
    "PG_ADVISORY_XACT_LOCK_SHARED",
    "PG_TRY_ADVISORY_LOCK",
    "PG_TRY_ADVISORY_XACT_LOCK",
    "PG_SLEEP",
    "PG_SLEEP_FOR",
    "PG_SLEEP_UNTIL",
    "PG_READ_FILE",
    "PG_READ_BINARY_FILE",
    "PG_LS_DIR",
    "PG_NOTIFY",
    "PG_TERMINATE_BACKEND",
    "PG_CANCEL_BACKEND",
    "PG_RELOAD_CONF",
    "SET_CONFIG",
    "LO_IMPORT",
    "LO_EXPORT",
    "LO_UNLINK",
    "DBLINK",
    "DBLINK_EXEC",
    "LOAD_EXTENSION",
];

/// What in one reading statement would write a file or change state, if anything: a word
/// of [`WRITING_WORDS`], a function of [`EFFECT_FUNCTIONS`], a `:=` assignment, or
/// `NEXT VALUE FOR`. Quoted text and quoted identifiers are not looked at.
pub fn side_effect(statement: &str) -> Option<String> {
    let Tokens {
        words,
        calls,
        assigns,
    } = tokens(statement);
    if assigns {
        return Some("assigns a variable (:=)".to_owned());
    }
    for (found, why) in WRITING_WORDS {
        if words.iter().any(|w| w == found) {
            return Some(format!("{why}: found {found}"));
        }
    }
    for call in &calls {
        if EFFECT_FUNCTIONS.contains(&call.as_str()) {
            return Some(format!(
                "calls {call}(), which has effects beyond reading (a lock, a file, a sequence, \
                 a session or a sleep)"
            ));
        }
    }
    if words
        .windows(3)
        .any(|w| w[0] == "NEXT" && w[1] == "VALUE" && w[2] == "FOR")
    {
        return Some("advances a sequence (NEXT VALUE FOR)".to_owned());
    }
    None
}

/// A statement read as words: what [`side_effect`] judges.
struct Tokens {
    /// Its words in upper case, in order; each quoted text or identifier is an empty word.
    words: Vec<String>,
    /// The names it calls (`f(` or `f (`), in upper case.
    calls: Vec<String>,
    /// Whether it has a `:=` outside quotes (reading stops there).
    assigns: bool,
}

/// The words and calls of `statement`, quoted text skipped.
fn tokens(statement: &str) -> Tokens {
    let mut t = Tokens {
        words: Vec::new(),
        calls: Vec::new(),
        assigns: false,
    };
    let mut chars = statement.chars().peekable();
    let mut word = String::new();
    let end_word = |word: &mut String, words: &mut Vec<String>| {
        if !word.is_empty() {
            words.push(std::mem::take(word).to_ascii_uppercase());
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' | '`' => {
                end_word(&mut word, &mut t.words);
                skip_quoted(&mut chars, c);
                t.words.push(String::new());
            }
            ':' if chars.peek() == Some(&'=') => {
                t.assigns = true;
                return t;
            }
            c if c.is_alphanumeric() || c == '_' || c == '$' => word.push(c),
            '(' => {
                if !word.is_empty() {
                    t.calls.push(word.to_ascii_uppercase());
                }
                end_word(&mut word, &mut t.words);
            }
            c if c.is_whitespace() => {
                end_word(&mut word, &mut t.words);
                // `f (x)` calls f too.
                let mut look = chars.clone();
                while look.peek().is_some_and(|n| n.is_whitespace()) {
                    look.next();
                }
                if look.peek() == Some(&'(')
                    && let Some(last) = t.words.last()
                    && !last.is_empty()
                {
                    t.calls.push(last.clone());
                }
            }
            _ => end_word(&mut word, &mut t.words),
        }
    }
    end_word(&mut word, &mut t.words);
    t
}

/// Skips to the end of text quoted with `quote` (backslash escapes inside `'...'`).
fn skip_quoted(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, quote: char) {
    let mut escaped = false;
    for q in chars.by_ref() {
        if q == '\\' && quote == '\'' {
            escaped = !escaped;
            continue;
        }
        if q == quote && !escaped {
            break;
        }
        escaped = false;
    }
}

/// The statements of `sql` (text between `;` outside quotes and comments), empty ones
/// dropped, comments removed.
fn split_statements(sql: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' | '`' => {
                current.push(c);
                for q in chars.by_ref() {
                    current.push(q);
                    if q == c {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        break;
                    }
                }
                current.push(' ');
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                for n in chars.by_ref() {
                    if prev == '*' && n == '/' {
                        break;
                    }
                    prev = n;
                }
                current.push(' ');
            }
            ';' => statements.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    statements.push(current);
    statements
        .into_iter()
        .filter(|s| !s.trim().is_empty())
        .collect()
}

fn first_word(statement: &str) -> &str {
    let s = statement.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
    let end = s
        .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .unwrap_or(s.len());
    &s[..end]
}

/// A SQLite URL opened read-only: `mode=ro` whatever mode the URL asked for.
pub fn sqlite_read_only_url(url: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut params: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("mode="))
        .collect();
    params.push("mode=ro");
    format!("{base}?{}", params.join("&"))
}

/// Connects to the source database with one read-only session.
pub async fn connect(url: &str) -> Result<AnyPool, SourceError> {
    sqlx::any::install_default_drivers();
    let what = "database".to_owned();
    let db_error = |source| SourceError::Database {
        what: what.clone(),
        source,
    };
    let scheme = url.split(':').next().unwrap_or_default();
    let sqlite = scheme == "sqlite";
    let url = if sqlite {
        sqlite_read_only_url(url)
    } else {
        url.to_owned()
    };
    let options = AnyConnectOptions::from_str(&url)
        .map_err(db_error)?
        .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1));
    AnyPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(CONNECT_TIMEOUT)
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                use sqlx::Executor;
                match conn.backend_name() {
                    "SQLite" => {
                        conn.execute("PRAGMA query_only = ON").await?;
                        conn.execute("PRAGMA busy_timeout = 30000").await?;
                    }
                    "PostgreSQL" => {
                        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                            .await?;
                    }
                    _ => {
                        conn.execute("SET SESSION TRANSACTION READ ONLY").await?;
                    }
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .map_err(|source| SourceError::Database {
            what: "database (read-only connection)".to_owned(),
            source,
        })
}

/// Whether a database error says a write was refused by the read-only session.
pub fn is_write_refused(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = error else {
        return false;
    };
    let code = db.code().unwrap_or_default();
    let msg = db.message().to_ascii_lowercase();
    // PostgreSQL read_only_sql_transaction; MySQL/MariaDB "cannot execute statement in a
    // READ ONLY transaction"; SQLite SQLITE_READONLY (8) and its extended codes.
    code == "25006"
        || code == "1792"
        || code == "8"
        || code.parse::<u32>().is_ok_and(|c| c & 0xff == 8)
        || msg.contains("readonly database")
        || msg.contains("read only transaction")
        || msg.contains("read-only transaction")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_select_passes() {
        for sql in [
            "SELECT payer_id FROM billing_keys",
            "  select a, b from t where c = 'x;y' ;  ",
            "WITH k AS (SELECT 1) SELECT * FROM k",
            "(SELECT 1)",
            "-- keys\nSELECT 1 /* ; DROP TABLE x */",
            "SELECT 'a -- not a comment; DROP' FROM t",
            "SELECT payer_id FROM billing_keys WHERE note <> 'INTO OUTFILE' AND x = 'a\\'b'",
            "SELECT `update`, \"into\" FROM t WHERE deleted_at IS NULL",
            "SELECT REPLACE(payer_id, ' ', '') FROM t WHERE a = ':='",
            "SELECT payer_id, customer_ref FROM billing_keys WHERE lock_state = 0",
        ] {
            assert!(check_query(sql).is_ok(), "{sql}");
        }
    }

    #[test]
    fn writes_and_several_statements_are_refused() {
        for sql in [
            "DELETE FROM billing_keys RETURNING payer_id, customer_ref",
            "UPDATE billing_keys SET payer_id = 'x' RETURNING payer_id",
            "DROP TABLE billing_keys",
            "SELECT 1; DROP TABLE billing_keys",
            "SELECT 1;DROP TABLE billing_keys;",
            "ATTACH DATABASE '/tmp/x.db' AS x",
            "VACUUM INTO '/tmp/copy.db'",
            "PRAGMA query_only = OFF",
            "INSERT INTO t SELECT 1",
            "/* hi */ delete from t",
            "SELECT payer_id FROM billing_keys INTO OUTFILE '/tmp/keys.txt'",
            "SELECT payer_id FROM billing_keys INTO DUMPFILE '/tmp/k'",
            "select payer_id into @k from billing_keys limit 1",
            "SELECT payer_id INTO new_table FROM billing_keys",
            "SELECT payer_id FROM billing_keys FOR UPDATE",
            "SELECT payer_id FROM billing_keys LOCK IN SHARE MODE",
            "SELECT payer_id FROM billing_keys FOR SHARE",
            "SELECT @n := @n + 1, payer_id FROM billing_keys",
            "SELECT payer_id, GET_LOCK('x', 10) FROM billing_keys",
            "SELECT LOAD_FILE('/etc/passwd')",
            "SELECT payer_id FROM billing_keys WHERE pg_advisory_lock (1) IS NULL",
            "SELECT nextval('s'), payer_id FROM billing_keys",
            "SELECT NEXT VALUE FOR s",
            "SELECT payer_id, SLEEP(5) FROM billing_keys",
            "WITH d AS (DELETE FROM t RETURNING payer_id) SELECT payer_id FROM d",
            "",
            " ; ",
        ] {
            let e = check_query(sql).expect_err(sql);
            assert!(matches!(e, SourceError::NotReadOnly(_)), "{sql}: {e}");
        }
        let e = check_query("SELECT 1; DROP TABLE x").unwrap_err();
        assert!(e.to_string().contains("one statement"), "{e}");
    }

    #[test]
    fn sqlite_urls_become_read_only() {
        assert_eq!(
            sqlite_read_only_url("sqlite://a.db"),
            "sqlite://a.db?mode=ro"
        );
        assert_eq!(
            sqlite_read_only_url("sqlite://a.db?mode=rwc&cache=shared"),
            "sqlite://a.db?cache=shared&mode=ro"
        );
    }
}
