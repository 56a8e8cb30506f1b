//! `migrate`: create or upgrade the results schema.

use super::error::AppError;
use crate::exit::ExitStatus;
use crate::settings::DatabaseSettings;
use crate::store::Store;

pub(super) async fn migrate(settings: DatabaseSettings) -> Result<ExitStatus, AppError> {
    let store = Store::open(&settings.database_url).await?;
    tracing::info!(database = store.dialect().name(), "schema is up to date");
    store.close().await;
    Ok(ExitStatus::Success)
}
