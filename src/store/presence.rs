//! Whether the SQLite results file is still the one the job opened. A file deleted (or
//! replaced) mid-run keeps taking writes through the open connections, into an inode no
//! path reaches any more: the run would end "completed" with its results gone. The writer
//! compares the path's device and inode with the opened file's after each batch commit
//! (one `lstat`, next to a transaction), so the run fails with the file named instead.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::error::StoreError;

/// The file a SQLite store opened: its path and what it was (device, inode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIdentity {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

/// What happened to the opened file (pure: decided from two `lstat`s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vanished {
    /// Nothing is at the path any more.
    Deleted,
    /// Another file is at the path (moved over it, or deleted and created again).
    Replaced,
    /// The path cannot be looked at (a folder removed or made unreadable).
    Unreachable(String),
}

impl std::fmt::Display for Vanished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Deleted => f.write_str("was deleted"),
            Self::Replaced => f.write_str("was replaced by another file"),
            Self::Unreachable(why) => write!(f, "can no longer be looked at ({why})"),
        }
    }
}

/// Compares the opened file's (device, inode) with what is at its path now.
pub fn judge(opened: (u64, u64), now: std::io::Result<(u64, u64)>) -> Result<(), Vanished> {
    match now {
        Ok(found) if found == opened => Ok(()),
        Ok(_) => Err(Vanished::Replaced),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Vanished::Deleted),
        Err(e) => Err(Vanished::Unreachable(e.to_string())),
    }
}

fn identity_of(path: &Path) -> std::io::Result<(u64, u64)> {
    let meta = std::fs::symlink_metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

impl FileIdentity {
    /// What is at `path` now (the store has just opened it).
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let (dev, ino) = identity_of(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            dev,
            ino,
        })
    }

    /// `Ok` while the path still names the opened file.
    pub fn check(&self) -> Result<(), StoreError> {
        judge((self.dev, self.ino), identity_of(&self.path)).map_err(|what| {
            StoreError::FileVanished {
                path: self.path.display().to_string(),
                what: what.to_string(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_file_passes_anything_else_is_named() {
        let gone = std::io::Error::from(std::io::ErrorKind::NotFound);
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(judge((1, 7), Ok((1, 7))), Ok(()));
        assert_eq!(judge((1, 7), Ok((1, 8))), Err(Vanished::Replaced));
        assert_eq!(judge((1, 7), Ok((2, 7))), Err(Vanished::Replaced));
        assert_eq!(judge((1, 7), Err(gone)), Err(Vanished::Deleted));
        assert!(matches!(
            judge((1, 7), Err(denied)),
            Err(Vanished::Unreachable(_))
        ));
    }

    #[test]
    fn a_deleted_or_replaced_file_is_noticed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("results.db");
        std::fs::write(&path, b"one").expect("write");
        let opened = FileIdentity::of(&path).expect("stat");
        opened.check().expect("still there");
        let held = std::fs::File::open(&path).expect("keep the inode alive");
        std::fs::remove_file(&path).expect("delete");
        let err = opened.check().expect_err("deleted").to_string();
        assert!(
            err.contains("results.db") && err.contains("was deleted"),
            "{err}"
        );
        std::fs::write(&path, b"two").expect("a new file at the path");
        let err = opened.check().expect_err("replaced").to_string();
        assert!(err.contains("replaced by another file"), "{err}");
        drop(held);
    }
}
