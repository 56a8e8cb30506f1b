//! What opening the results database trusts: a SQLite file only when it is safe (no
//! symlink, our own, private), and migrations applied by one process at a time.
//!
//! # SQLite files
//! The file and its side files (`-wal`, `-shm`, `-journal`) must not be symbolic links, must
//! belong to the user the job runs as, and must not be readable or writable by group or
//! others; its folder must not be writable by others unless it has the sticky bit (anyone
//! could otherwise swap the file between the check and SQLite's open). A missing file is
//! created exclusively, without following a symlink, mode 0600. There is deliberately no
//! flag to allow a group-shared file: it holds billing keys (payment credentials) and payer
//! details, and whoever can write it can change what the finance reports say; readers get
//! the reports, or a server database with its own grants.
//!
//! # Migrations on MySQL/MariaDB
//! sqlx takes `GET_LOCK(name, -1)`, which MariaDB answers at once with NULL (a negative
//! timeout is not "forever" there), so two first starts ran the migrations together. The
//! lock here is taken on a dedicated connection in one-second steps, bounded by
//! [`MIGRATE_LOCK_WAIT`] and by the stop token.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::AnyPool;
use tokio_util::sync::CancellationToken;

use super::error::StoreError;

/// How long a process waits for another one's migrations before giving up.
pub const MIGRATE_LOCK_WAIT: Duration = Duration::from_secs(120);

/// The side files SQLite keeps beside a database file.
const SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Why a SQLite path is not trusted (pure: decided from what `lstat` says).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsafe {
    Symlink,
    NotAFile,
    Owner { uid: u32, ours: u32 },
    Shared { mode: u32 },
    OpenFolder { mode: u32 },
}

impl std::fmt::Display for Unsafe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Symlink => f.write_str(
                "is a symbolic link; the results database is never opened through one \
                 (give the real path)",
            ),
            Self::NotAFile => f.write_str("is not a regular file"),
            Self::Owner { uid, ours } => write!(
                f,
                "is owned by uid {uid}, not by the user this job runs as (uid {ours}); \
                 someone else could read or change the results"
            ),
            Self::Shared { mode } => write!(
                f,
                "has mode {mode:04o}: group or others may read or write it; make it private \
                 (chmod 600) or let the job create a new one"
            ),
            Self::OpenFolder { mode } => write!(
                f,
                "is in a folder anyone may write to (mode {mode:04o}, no sticky bit): the \
                 file could be swapped under the job; use a private folder"
            ),
        }
    }
}

/// Judges an existing path from its `lstat`: a regular file, ours, private.
pub fn judge_file(meta: &std::fs::Metadata, ours: u32) -> Result<(), Unsafe> {
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Err(Unsafe::Symlink);
    }
    if !kind.is_file() {
        return Err(Unsafe::NotAFile);
    }
    judge_owner_mode(meta.uid(), meta.mode(), ours)
}

/// Ours, and nothing for group or others.
pub fn judge_owner_mode(uid: u32, mode: u32, ours: u32) -> Result<(), Unsafe> {
    if uid != ours {
        return Err(Unsafe::Owner { uid, ours });
    }
    if mode & 0o077 != 0 {
        return Err(Unsafe::Shared {
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// A folder others may write to is safe only with the sticky bit (like `/tmp`).
pub fn judge_folder(mode: u32) -> Result<(), Unsafe> {
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(Unsafe::OpenFolder {
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// What the store opened at a SQLite URL's path (`None` in memory), to notice later that
/// it was deleted or replaced ([`super::presence`]).
pub(super) fn opened_file(url: &str) -> Result<Option<super::presence::FileIdentity>, StoreError> {
    let connect = |source| StoreError::Connect {
        dialect: "sqlite",
        source,
    };
    let Some(path) = sqlite_path(url).map_err(connect)? else {
        return Ok(None);
    };
    super::presence::FileIdentity::of(&path)
        .map(Some)
        .map_err(|e| connect(sqlx::Error::Io(e)))
}

/// The file of a SQLite URL, or `None` for an in-memory database.
fn sqlite_path(url: &str) -> Result<Option<PathBuf>, sqlx::Error> {
    if url.contains(":memory:") || url.contains("mode=memory") {
        return Ok(None);
    }
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?;
    let path = options.get_filename();
    if path.as_os_str().is_empty() {
        return Ok(None);
    }
    Ok(Some(path.to_path_buf()))
}

fn unsafe_file(path: &Path, problem: Unsafe) -> StoreError {
    StoreError::UnsafeFile {
        path: path.display().to_string(),
        problem: problem.to_string(),
    }
}

/// Checks (and creates, when missing and the URL may write) the SQLite file of `url`
/// before SQLite opens it; see the module documentation.
pub(super) fn prepare_sqlite_file(url: &str) -> Result<(), StoreError> {
    let io = |source: std::io::Error| StoreError::Connect {
        dialect: "sqlite",
        source: sqlx::Error::Io(source),
    };
    let Some(path) = sqlite_path(url).map_err(|source| StoreError::Connect {
        dialect: "sqlite",
        source,
    })?
    else {
        return Ok(());
    };
    // SAFETY: geteuid(2) cannot fail and has no preconditions.
    let ours = unsafe { libc::geteuid() };
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if let Ok(meta) = std::fs::metadata(&folder) {
        judge_folder(meta.mode()).map_err(|p| unsafe_file(&path, p))?;
    }
    match std::fs::symlink_metadata(&path) {
        Ok(meta) => judge_file(&meta, ours).map_err(|p| unsafe_file(&path, p))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !url.contains("mode=ro") {
                match crate::private_file::create(&path) {
                    Ok(_) => {}
                    // Another process created it just now: judge what is there.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        let meta = std::fs::symlink_metadata(&path).map_err(io)?;
                        judge_file(&meta, ours).map_err(|p| unsafe_file(&path, p))?;
                    }
                    Err(e) => return Err(io(e)),
                }
            }
        }
        Err(e) => return Err(io(e)),
    }
    for suffix in SIDE_FILES {
        let mut side = path.clone().into_os_string();
        side.push(suffix);
        let side = PathBuf::from(side);
        if let Ok(meta) = std::fs::symlink_metadata(&side) {
            judge_file(&meta, ours).map_err(|p| unsafe_file(&side, p))?;
        }
    }
    Ok(())
}

/// The message for a migration the migrations table marks unfinished, without sqlx's
/// advice to edit that table by hand.
pub(super) fn migrate_error(
    dialect: &'static str,
    source: sqlx::migrate::MigrateError,
) -> StoreError {
    use sqlx::migrate::MigrateError;
    match source {
        MigrateError::Dirty(version) => StoreError::MigrationUnfinished { dialect, version },
        source => StoreError::Migrate { dialect, source },
    }
}

/// Holds MariaDB/MySQL's migration lock while `migrate` runs: `GET_LOCK` on a dedicated
/// connection, tried in one-second steps until [`MIGRATE_LOCK_WAIT`] or `stop`.
pub(super) async fn with_mysql_migration_lock<F, Fut>(
    pool: &AnyPool,
    stop: &CancellationToken,
    migrate: F,
) -> Result<(), StoreError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    let query = |doing| move |source| StoreError::Query { doing, source };
    let mut conn = pool
        .acquire()
        .await
        .map_err(query("taking the migration lock"))?;
    let started = tokio::time::Instant::now();
    loop {
        let got: Option<i64> = sqlx::query_scalar(
            "SELECT GET_LOCK(LEFT(CONCAT('payple_reconcile.migrate.', DATABASE()), 64), 1)",
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(query("taking the migration lock"))?;
        if got == Some(1) {
            break;
        }
        if stop.is_cancelled() {
            return Err(StoreError::MigrationLock(
                "stopped by a signal while another process was migrating".to_owned(),
            ));
        }
        if started.elapsed() >= MIGRATE_LOCK_WAIT {
            return Err(StoreError::MigrationLock(format!(
                "another process held the migration lock for {} s",
                MIGRATE_LOCK_WAIT.as_secs()
            )));
        }
        tracing::info!("another process is migrating the results database; waiting");
    }
    let result = migrate().await;
    let released = sqlx::query(
        "SELECT RELEASE_LOCK(LEFT(CONCAT('payple_reconcile.migrate.', DATABASE()), 64))",
    )
    .execute(&mut *conn)
    .await;
    if released.is_err() {
        // Closing the session releases the lock too.
        conn.detach();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_private_files_pass() {
        assert_eq!(judge_owner_mode(1000, 0o100600, 1000), Ok(()));
        assert_eq!(judge_owner_mode(1000, 0o100400, 1000), Ok(()));
        assert_eq!(
            judge_owner_mode(65534, 0o100600, 1000),
            Err(Unsafe::Owner {
                uid: 65534,
                ours: 1000
            })
        );
        assert_eq!(
            judge_owner_mode(0, 0o100666, 0),
            Err(Unsafe::Shared { mode: 0o666 })
        );
        assert!(judge_owner_mode(0, 0o100640, 0).is_err(), "group may read");
        assert!(judge_owner_mode(0, 0o100604, 0).is_err(), "others may read");
    }

    #[test]
    fn folders_others_write_need_the_sticky_bit() {
        assert!(judge_folder(0o40700).is_ok());
        assert!(
            judge_folder(0o42775).is_ok(),
            "a group folder (fsGroup) is fine"
        );
        assert!(judge_folder(0o41777).is_ok(), "like /tmp");
        assert!(judge_folder(0o40777).is_err());
    }

    #[test]
    fn a_symlink_is_judged_by_itself_not_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.db");
        let link = dir.path().join("results.db");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let meta = std::fs::symlink_metadata(&link).unwrap();
        assert_eq!(judge_file(&meta, meta.uid()), Err(Unsafe::Symlink));
        let url = format!("sqlite://{}", link.display());
        let e = prepare_sqlite_file(&url).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(!target.exists(), "nothing created through the link");
    }

    #[test]
    fn messages_never_say_to_edit_the_migrations_table() {
        let e = migrate_error("mysql", sqlx::migrate::MigrateError::Dirty(20261127000001));
        let text = e.to_string();
        assert!(!text.contains("_sqlx_migrations"), "{text}");
        assert!(text.contains("20261127000001"), "{text}");
    }
}
