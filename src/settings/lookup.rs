//! `lookup`, validated.

use super::env::Env;
use super::error::ConfigError;
use super::payple::{PaypleSettings, payple_settings};
use crate::cli::LookupArgs;

/// `lookup`, validated.
#[derive(Debug, Clone)]
pub struct LookupSettings {
    pub payer_ids: Vec<String>,
    pub payple: PaypleSettings,
    /// Lookups in flight at most (1 to 64).
    pub concurrency: usize,
}

pub(super) fn lookup_settings(
    args: LookupArgs,
    env: &dyn Env,
) -> Result<LookupSettings, ConfigError> {
    Ok(LookupSettings {
        payple: payple_settings(&args.payple, env)?,
        concurrency: args.concurrency.clamp(1, 64),
        payer_ids: args.payer_ids,
    })
}
