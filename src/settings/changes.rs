//! `changes`, validated.

use std::path::PathBuf;

use super::database::{DatabaseSettings, database_settings};
use crate::cli::ChangesArgs;

/// `changes`, validated.
#[derive(Debug, Clone)]
pub struct ChangesSettings {
    pub database: DatabaseSettings,
    pub since: Option<i64>,
    pub run: Option<i64>,
    /// CSV here (`-` for stdout); `None` for a text table on stdout.
    pub output: Option<PathBuf>,
    pub excel: bool,
    /// `--format jsonl`: the event objects, one per line.
    pub jsonl: bool,
}

pub(super) fn changes_settings(args: ChangesArgs) -> ChangesSettings {
    ChangesSettings {
        database: database_settings(args.database),
        since: args.since,
        run: args.run,
        output: args.output,
        excel: args.excel,
        jsonl: args.format == Some(crate::cli::ChangesFormatArg::Jsonl),
    }
}
