//! `report`, validated: the run, the statuses, the output and its format.

use std::path::{Path, PathBuf};

use super::database::{DatabaseSettings, database_settings};
use super::error::{ConfigError, invalid};
use crate::cli::{ReportArgs, ReportFormatArg};
use crate::domain::KeyStatus;
use crate::report::deliver::ReportShape;
use crate::report::output::ReportFormat;
use crate::report::xlsx::EXCEL_MAX_ROWS;
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
    /// `--format` (or the one `--output`'s extension names), `--excel`, `--sheet-rows`.
    pub shape: ReportShape,
}

pub(super) fn report_settings(args: ReportArgs) -> Result<ReportSettings, ConfigError> {
    let format = report_format(args.format, &args.output);
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
        shape: ReportShape {
            format,
            excel: args.excel,
            sheet_rows: args.sheet_rows,
        },
    })
}

/// The format a report is written in: `--format` when given, else the one the output's
/// extension names (`.xlsx` a workbook, anything else CSV). The one place `report` and
/// `run --report` choose it.
fn report_format(flag: Option<ReportFormatArg>, output: &Path) -> ReportFormat {
    match flag {
        Some(ReportFormatArg::Csv) => ReportFormat::Csv,
        Some(ReportFormatArg::Xlsx) => ReportFormat::Xlsx,
        None => ReportFormat::from_path(output),
    }
}

/// `run --report`: where the report of the run goes, and how it looks.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub path: PathBuf,
    pub shape: ReportShape,
}

/// `run --report PATH [--excel]`: the format by the path's extension, whole worksheets.
pub(super) fn run_report(path: Option<&Path>, excel: bool) -> Option<RunReport> {
    let path = path?;
    Some(RunReport {
        path: path.to_owned(),
        shape: ReportShape {
            format: report_format(None, path),
            excel,
            sheet_rows: EXCEL_MAX_ROWS,
        },
    })
}
