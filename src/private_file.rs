//! Files only their owner can read: every file this job creates (reports, metrics, the
//! SQLite results database) is created exclusively, never through a symlink, mode 0600.

use std::fs::File;
use std::io;
use std::path::Path;

/// Mode of every file this job creates: the owner's only, whatever the umask.
pub const FILE_MODE: u32 = 0o600;

/// Creates a new file exclusively (`O_EXCL`), never through a symlink (`O_NOFOLLOW`),
/// mode 0600. An existing file or symlink at `path` is an `AlreadyExists` error.
pub fn create(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    #[test]
    fn created_0600_and_never_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        super::create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
        assert!(super::create(&path).is_err(), "exclusive");
        let link = dir.path().join("link");
        symlink(dir.path().join("nowhere"), &link).unwrap();
        assert!(
            super::create(&link).is_err(),
            "a dangling symlink is not followed"
        );
        assert!(!dir.path().join("nowhere").exists());
    }
}
