//! `report`, validated: the run, the statuses, the output and its format.

use std::path::PathBuf;

use super::database::{DatabaseSettings, database_settings};
use super::error::{ConfigError, invalid};
use crate::cli::{ReportArgs, ReportFormatArg};
use crate::domain::KeyStatus;
use crate::report::output::ReportFormat;
use crate::report::{RunSelector, parse_statuses};

/// `report`, validated.
#[derive(Debug, Clone)]
pub struct ReportSettings {
    pub database: DatabaseSettings,
    pub run: RunSelector,
    /// Only these statuses; empty for all.
    pub statuses: Vec<KeyStatus>,
    /// `-` for stdout.
    pub output: PathBuf,
    pub excel: bool,
    /// `--format`, or the one `--output`'s extension names.
    pub format: ReportFormat,
    /// xlsx: rows per worksheet, header included.
    pub sheet_rows: u32,
}

pub(super) fn report_settings(args: ReportArgs) -> Result<ReportSettings, ConfigError> {
    let format = match args.format {
        Some(ReportFormatArg::Csv) => ReportFormat::Csv,
        Some(ReportFormatArg::Xlsx) => ReportFormat::Xlsx,
        None => ReportFormat::from_path(&args.output),
    };
    let statuses = parse_statuses(args.status.as_deref().unwrap_or_default())?;
    if format == ReportFormat::Xlsx && !statuses.is_empty() {
        return Err(invalid(
            "--status",
            "filters CSV reports only; the workbook's Action sheet lists the gone and failed keys",
        ));
    }
    if args.sheet_rows < 2 {
        return Err(invalid("--sheet-rows", "must be at least 2"));
    }
    Ok(ReportSettings {
        statuses,
        run: RunSelector::parse(&args.run)?,
        database: database_settings(args.database),
        output: args.output,
        excel: args.excel,
        format,
        sheet_rows: args.sheet_rows,
    })
}
