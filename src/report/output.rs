//! Where a report goes: stdout (`-`), or a file that appears only once complete (written
//! to a temporary file in the same folder, synced, then renamed over the target).
//!
//! The temporary file has a random name and is created exclusively (`O_EXCL`,
//! `O_NOFOLLOW`), readable by the owner only (0600): a symlink planted in a shared folder
//! is never followed, and billing data is never readable by others, whatever the umask.

use std::fs::File;
use std::io::{self, BufWriter, Stdout, Write};
use std::path::{Path, PathBuf};

use super::error::ReportError;

/// The file format of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    Csv,
    Xlsx,
}

impl ReportFormat {
    /// The format a path's extension names: `.xlsx` (any case) is a workbook, anything
    /// else (stdout included) CSV.
    pub fn from_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("xlsx") => Self::Xlsx,
            _ => Self::Csv,
        }
    }
}

/// Buffer size of report output.
const BUFFER: usize = 256 * 1024;

/// An open report destination. Dropped without [`Output::commit`], a file target is
/// left untouched and the temporary file is removed.
pub struct Output {
    /// The path errors name (`-` for stdout).
    path: PathBuf,
    sink: Sink,
    /// The temporary file while it is not yet renamed over `path`.
    temp: Option<PathBuf>,
}

enum Sink {
    /// Not locked, so that an `Output` can be sent to the thread that writes a workbook.
    Stdout(BufWriter<Stdout>),
    File(BufWriter<File>),
}

impl Output {
    /// Opens `path`; `-` is stdout. An existing target that is not a regular file (a pipe,
    /// `/dev/stdout`) is written in place.
    pub fn open(path: &Path) -> Result<Self, ReportError> {
        if path.as_os_str() == "-" {
            return Ok(Self::stdout());
        }
        let special = std::fs::metadata(path).is_ok_and(|m| !m.is_file());
        if special {
            let file = File::create(path).map_err(ReportError::write(path))?;
            return Ok(Self {
                path: path.to_owned(),
                sink: Sink::File(BufWriter::with_capacity(BUFFER, file)),
                temp: None,
            });
        }
        let (temp, file) = create_temp(path).map_err(ReportError::write(path))?;
        Ok(Self {
            path: path.to_owned(),
            sink: Sink::File(BufWriter::with_capacity(BUFFER, file)),
            temp: Some(temp),
        })
    }

    /// Standard output.
    pub fn stdout() -> Self {
        Self {
            path: PathBuf::from("-"),
            sink: Sink::Stdout(BufWriter::with_capacity(BUFFER, io::stdout())),
            temp: None,
        }
    }

    /// The path errors name (`-` for stdout).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes, and for a file target syncs the temporary file and renames it over the
    /// target.
    pub fn commit(mut self) -> Result<(), ReportError> {
        let path = self.path.clone();
        let fail = ReportError::write(&path);
        match &mut self.sink {
            Sink::Stdout(out) => out.flush().map_err(fail),
            Sink::File(out) => {
                out.flush().map_err(ReportError::write(&path))?;
                out.get_ref()
                    .sync_all()
                    .map_err(ReportError::write(&path))?;
                if let Some(temp) = self.temp.take()
                    && let Err(e) = std::fs::rename(&temp, &path)
                {
                    let _ = std::fs::remove_file(&temp);
                    return Err(fail(e));
                }
                Ok(())
            }
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.sink {
            Sink::Stdout(out) => out.write(buf),
            Sink::File(out) => out.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match &mut self.sink {
            Sink::Stdout(out) => out.write_all(buf),
            Sink::File(out) => out.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.sink {
            Sink::Stdout(out) => out.flush(),
            Sink::File(out) => out.flush(),
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = std::fs::remove_file(temp);
        }
    }
}

/// Creates the temporary file for `path` under a fresh random name (a few tries, should a
/// name be taken).
fn create_temp(path: &Path) -> io::Result<(PathBuf, File)> {
    let mut last = None;
    for _ in 0..8 {
        let temp = temp_path(path, rand::random());
        match crate::private_file::create(&temp) {
            Ok(file) => return Ok((temp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temporary name")))
}

/// `dir/.name.RANDOM.tmp` next to `path` (so the rename stays on one file system; the
/// name does not end in `.prom`, so node_exporter ignores it).
fn temp_path(path: &Path, random: u64) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report".to_owned());
    let temp = format!(".{name}.{random:016x}.tmp");
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(temp),
        _ => PathBuf::from(temp),
    }
}

/// Writes `bytes` to `path` atomically (temporary file, sync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let mut out = Output::open(path)?;
    out.write_all(bytes).map_err(ReportError::write(path))?;
    out.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_appear_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.prom");
        std::fs::write(&path, "old").unwrap();
        let mut out = Output::open(&path).unwrap();
        out.write_all(b"new").unwrap();
        out.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        drop(out);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp removed"
        );

        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_missing_folder_is_a_write_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/report.csv");
        let err = Output::open(&path).err().unwrap();
        assert!(err.to_string().contains("no/such/report.csv"), "{err}");
        assert_eq!(err.exit_status(), crate::exit::ExitStatus::Internal);
    }

    #[test]
    fn formats_from_extensions() {
        assert_eq!(
            ReportFormat::from_path(Path::new("/r/night.xlsx")),
            ReportFormat::Xlsx
        );
        assert_eq!(
            ReportFormat::from_path(Path::new("NIGHT.XLSX")),
            ReportFormat::Xlsx
        );
        assert_eq!(
            ReportFormat::from_path(Path::new("night.csv")),
            ReportFormat::Csv
        );
        assert_eq!(ReportFormat::from_path(Path::new("-")), ReportFormat::Csv);
        assert_eq!(
            ReportFormat::from_path(Path::new("xlsx")),
            ReportFormat::Csv
        );
    }

    #[test]
    fn temp_files_sit_next_to_the_target() {
        assert_eq!(
            temp_path(Path::new("/var/lib/node/m.prom"), 1).parent(),
            Some(Path::new("/var/lib/node"))
        );
        let bare = temp_path(Path::new("r.csv"), 0xab);
        assert_eq!(bare, Path::new(".r.csv.00000000000000ab.tmp"));
    }

    /// A symlink planted at the names a temporary file used to take (and at the target)
    /// is never followed: the file it points at stays as it was, and the report is 0600.
    #[test]
    fn planted_symlinks_are_never_followed() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let path = dir.path().join("night.csv");
        let pid = std::process::id();
        for name in [
            format!(".night.csv.tmp-{pid}"),
            format!(".night.csv.tmp-{}", pid + 1),
            ".night.csv.tmp".to_owned(),
            "night.csv.tmp".to_owned(),
        ] {
            symlink(&victim, dir.path().join(name)).unwrap();
        }
        write_atomic(&path, b"payer_id\n").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "payer_id\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
        // A symlink at the target itself is replaced, not written through.
        let target = dir.path().join("m.prom");
        symlink(&victim, &target).unwrap();
        write_atomic(&target, b"x 1\n").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(
            !std::fs::symlink_metadata(&target)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
}
