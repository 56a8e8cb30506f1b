//! Validated settings: the raw flags and environment turned, once, into typed values
//! (`Duration`s, non-zero counts, secret credentials, an enum for the key source). A bad
//! configuration stops here, before any lookup is sent.
//!
//! # Layout
//! One file per subcommand's settings ([`run`], [`lookup`], [`report`], [`changes`],
//! [`summary`], [`notify`], [`simulate`]), the Payple flags `run` and `lookup` share
//! ([`payple`]), the results database ([`database`]), what settings read besides the flags
//! ([`env`]), the per-key events ([`events`]) and [`ConfigError`] ([`error`]). This file only turns the command line into
//! [`Settings`].

pub mod changes;
pub mod database;
pub mod env;
pub mod error;
pub mod events;
pub mod lookup;
pub mod notify;
pub mod payple;
pub mod report;
pub mod run;
pub mod simulate;
pub mod summary;
#[cfg(test)]
mod tests;

pub use changes::ChangesSettings;
pub use database::DatabaseSettings;
pub use env::{Env, ProcessEnv, read_small_file};
pub use error::ConfigError;
pub use events::EventsCmdSettings;
pub use lookup::LookupSettings;
pub use notify::{NotifyCmdSettings, NotifySettings, notify_settings};
pub use payple::{
    MAX_CODES_FILE, MAX_CUST_KEY_FILE, PaypleSettings, PaypleTarget, SIMULATOR_PLACEHOLDER,
    parse_origin, payple_settings,
};
pub use report::{ReportSettings, RunReport};
pub use run::{
    BatchSettings, RecheckRun, Resume, RunSettings, Shard, batch_settings, run_settings,
};
pub use simulate::SimulateSettings;
pub use summary::SummarySettings;

use crate::cli::{Cli, Command};
use crate::report::RunSelector;
use changes::changes_settings;
use database::database_settings;
use lookup::lookup_settings;
use notify::notify_cmd_settings;
use report::report_settings;
use simulate::simulate_settings;

/// One validated configuration per subcommand: what [`from_cli`] turns the command line
/// into. Nothing past it sees a clap type.
#[derive(Debug)]
pub enum Settings {
    Run(Box<RunSettings>),
    Lookup(Box<LookupSettings>),
    Simulate(Box<SimulateSettings>),
    Migrate(DatabaseSettings),
    Report(ReportSettings),
    Changes(ChangesSettings),
    Summary(SummarySettings),
    Notify(NotifyCmdSettings),
    Events(EventsCmdSettings),
}

/// Validates the command line (and the environment `env` stands for) into [`Settings`].
pub fn from_cli(cli: Cli, env: &dyn Env) -> Result<Settings, ConfigError> {
    Ok(match cli.command {
        Command::Run(args) => Settings::Run(Box::new(run_settings(&args, env)?)),
        Command::Lookup(args) => Settings::Lookup(Box::new(lookup_settings(args, env)?)),
        Command::Simulate(args) => Settings::Simulate(Box::new(simulate_settings(&args)?)),
        Command::Migrate(args) => Settings::Migrate(database_settings(args)),
        Command::Report(args) => Settings::Report(report_settings(args)?),
        Command::Changes(args) => Settings::Changes(changes_settings(args)),
        Command::Summary(args) => Settings::Summary(SummarySettings {
            database: database_settings(args.database),
            run: args.run.map_or(RunSelector::Latest, RunSelector::Id),
        }),
        Command::Notify(args) => Settings::Notify(notify_cmd_settings(args)?),
        Command::Events(cmd) => Settings::Events(events::events_cmd_settings(cmd, env)?),
    })
}
