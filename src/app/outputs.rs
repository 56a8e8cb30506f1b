//! The files `run` writes at its end (`--report`, `--metrics-file`), checked before any
//! lookup: a folder that is missing, or a path that is a folder, stops the run as a
//! configuration error instead of failing after the night's lookups.

use std::path::Path;

use crate::settings::{BatchSettings, ConfigError};

/// Checks every file `run` will write at its end.
pub(super) fn check_outputs(batch: &BatchSettings) -> Result<(), ConfigError> {
    if let Some(report) = &batch.report {
        writable_place("--report", &report.path)?;
    }
    if let Some(path) = &batch.metrics_file {
        writable_place("--metrics-file", path)?;
    }
    Ok(())
}

/// `path` can be created or replaced: it is not a folder, and its folder exists.
fn writable_place(flag: &'static str, path: &Path) -> Result<(), ConfigError> {
    let refuse = |reason: String| ConfigError::Invalid { flag, reason };
    if path.is_dir() {
        return Err(refuse(format!(
            "{} is a folder, not a file",
            path.display()
        )));
    }
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        return Err(refuse(format!(
            "{}: its folder {} does not exist",
            path.display(),
            folder.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_folder_or_a_folder_is_refused_and_a_new_file_is_not() {
        let dir = tempfile::tempdir().expect("dir");
        let ok = dir.path().join("night.csv");
        assert!(writable_place("--report", &ok).is_ok());
        assert!(writable_place("--report", Path::new("night.csv")).is_ok());
        let missing = dir.path().join("gone").join("night.csv");
        let e = writable_place("--report", &missing).expect_err("missing folder");
        assert!(e.to_string().starts_with("--report: "), "{e}");
        assert!(e.to_string().contains("does not exist"), "{e}");
        let e = writable_place("--metrics-file", dir.path()).expect_err("a folder");
        assert!(e.to_string().contains("is a folder"), "{e}");
    }
}
