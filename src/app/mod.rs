//! The command layer: validate the command line once ([`settings::from_cli`]), run the
//! subcommand (one file each), and turn its outcome into the process exit status.
//!
//! # Layout
//! Every subcommand is `async fn(XSettings) -> Result<ExitStatus, AppError>`;
//! [`AppError::exit_status`] (in `error`) is the one place an error becomes an exit code, and a run's
//! own end is decided by [`crate::pipeline::end::conclude`]. What subcommands open first
//! (the Payple client, the results database) is in `open`; what they print, in `output`.

mod changes;
mod error;
mod events;
mod lookup;
mod migrate;
mod notify;
mod open;
mod output;
mod outputs;
mod report;
mod run;
mod simulate;
mod summary;

use tokio::time::Instant;

use crate::cli::Cli;
use crate::exit::ExitStatus;
use crate::settings::{self, ProcessEnv, Settings};
use crate::shutdown::{Shutdown, Signal};

pub use error::{AppError, PaypleStep, ReportStep, SimulatorRole};
pub use lookup::LookupLine;
pub use output::{ErrorLine, print_json};

/// Runs the parsed command line: validates it, runs the subcommand, logs an error, and
/// returns the exit status. Signals are listened for from the start: a signal while the
/// configuration is read (a `--cust-key-file` FIFO with no writer) ends the command at
/// once, and [`Shutdown::backstop`] bounds every command after a signal.
pub async fn execute(cli: Cli) -> ExitStatus {
    let result = match Shutdown::listen() {
        Ok(shutdown) => validated(cli, &shutdown).await,
        Err(e) => Err(AppError::Signals(e)),
    };
    result.unwrap_or_else(|error| {
        tracing::error!("{error}");
        let status = error.exit_status();
        print_json(&ErrorLine::new(status, &error));
        status
    })
}

/// Validates the command line on a blocking thread (it may read files), then runs it.
async fn validated(cli: Cli, shutdown: &Shutdown) -> Result<ExitStatus, AppError> {
    let told = failure_webhooks(&cli);
    let parsing = tokio::task::spawn_blocking(move || settings::from_cli(cli, &ProcessEnv));
    let parsed = tokio::select! {
        parsed = parsing => parsed.map_err(|e| AppError::Validation(e.to_string()))?,
        () = shutdown.stop.cancelled() => {
            let signal = shutdown.signal().unwrap_or(Signal::Terminate);
            return Err(AppError::Stopped { signal, doing: "reading the configuration" });
        }
    };
    let settings = match parsed {
        Ok(settings) => settings,
        Err(e) => {
            if let Some(n) = told {
                let error = AppError::Config(e);
                let limit = shutdown.end_limit(std::time::Duration::ZERO, Instant::now());
                run::notify_failed(&n, error.exit_status(), error.to_string(), limit).await;
                return Err(error);
            }
            return Err(e.into());
        }
    };
    let grace = match &settings {
        Settings::Run(s) => Some(s.batch.shutdown_grace),
        Settings::Simulate(_) => Some(std::time::Duration::ZERO),
        // The other commands write nothing a signal could leave half-done: they end at once.
        _ => None,
    };
    let stopped = async {
        let signal = match grace {
            Some(grace) => shutdown.backstop(grace).await,
            None => {
                shutdown.stop.cancelled().await;
                shutdown.signal().unwrap_or(Signal::Terminate)
            }
        };
        AppError::Stopped {
            signal,
            doing: "waiting after the signal",
        }
    };
    tokio::select! {
        result = dispatch(settings, shutdown) => result,
        stopped = stopped => Err(stopped),
    }
}

/// The webhooks a `run` whose configuration is refused tells, when `--notify` (or
/// `PAYPLE_NOTIFY_URL`) itself is valid; none for a dry run or another command.
fn failure_webhooks(cli: &Cli) -> Option<settings::NotifySettings> {
    match &cli.command {
        crate::cli::Command::Run(args) if !args.dry_run => {
            settings::notify_settings(&args.notify, args.notify_on).ok()?
        }
        _ => None,
    }
}

/// A command line clap refused: help and version print and exit 0; a usage error prints
/// clap's message on stderr, the JSON error line on stdout, and exits 3 (a configuration
/// error; 2 means "some keys failed").
pub fn usage_error(e: &clap::Error) -> ExitStatus {
    use clap::error::ErrorKind;
    let _ = e.print();
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        return ExitStatus::Success;
    }
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("invalid command line");
    print_json(&ErrorLine::new(ExitStatus::Config, &first));
    ExitStatus::Config
}

async fn dispatch(settings: Settings, shutdown: &Shutdown) -> Result<ExitStatus, AppError> {
    match settings {
        Settings::Run(s) => run::run(*s, shutdown).await,
        Settings::Lookup(s) => lookup::lookup(*s).await,
        Settings::Simulate(s) => simulate::simulate(*s, shutdown).await,
        Settings::Migrate(s) => migrate::migrate(s).await,
        Settings::Report(s) => report::report(s).await,
        Settings::Changes(s) => changes::changes(s).await,
        Settings::Summary(s) => summary::summary(s).await,
        Settings::Notify(s) => notify::notify(s).await,
        Settings::Events(s) => events::events(s, shutdown).await,
    }
}
