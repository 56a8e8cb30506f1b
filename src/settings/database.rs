//! The results database a command works on.

use crate::cli::DatabaseArgs;

/// The results database a command works on.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub database_url: String,
}

pub(super) fn database_settings(args: DatabaseArgs) -> DatabaseSettings {
    DatabaseSettings {
        database_url: args.database_url,
    }
}
