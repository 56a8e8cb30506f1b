//! `summary`, validated.

use super::database::DatabaseSettings;
use crate::report::RunSelector;

/// `summary`, validated.
#[derive(Debug, Clone)]
pub struct SummarySettings {
    pub database: DatabaseSettings,
    pub run: RunSelector,
}
