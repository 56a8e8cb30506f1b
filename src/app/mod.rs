//! The command layer: validate the command line once ([`settings::from_cli`]), run the
//! subcommand (one file each), and turn its outcome into the process exit status.
//!
//! # Layout
//! Every subcommand is `async fn(XSettings) -> Result<ExitStatus, AppError>`;
//! [`AppError::exit_status`] (in `error`) is the one place an error becomes an exit code, and a run's
//! own end is decided by [`crate::pipeline::end::conclude`].

mod changes;
mod error;
mod events;
mod lookup;
mod migrate;
mod notify;
mod report;
mod run;
mod simulate;
mod summary;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};

use secrecy::ExposeSecret;
use serde::Serialize;
use tokio::time::Instant;

use crate::cli::Cli;
use crate::domain::mask_payer_id;
use crate::exit::ExitStatus;
use crate::payple::{ClientConfig, PaypleClient};
use crate::report::ReportError;
use crate::report::select::open_store;
use crate::settings::{self, PaypleSettings, PaypleTarget, ProcessEnv, Settings};
use crate::shutdown::{Shutdown, Signal};
use crate::simulator::{self, Partner, SimConfig, SimHandle};
use crate::store::Store;

pub use error::{AppError, PaypleStep, ReportStep, SimulatorRole};
pub use lookup::LookupLine;

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

/// The line a command that ends without its own output prints on stdout.
#[derive(Debug, Serialize)]
pub struct ErrorLine {
    pub error: String,
    pub exit_code: u8,
}

impl ErrorLine {
    pub fn new(status: ExitStatus, error: &dyn std::fmt::Display) -> Self {
        Self {
            error: error.to_string(),
            exit_code: status.code(),
        }
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

/// Prints one JSON line on stdout.
pub fn print_json(value: &impl Serialize) {
    let mut out = std::io::stdout().lock();
    if let Ok(line) = serde_json::to_string(value) {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// The Payple client the settings ask for. For `--simulator` the built-in simulator is
/// started first and the client configuration completed with its URL; keep the handle
/// alive as long as the client is used.
async fn payple_client(
    payple: &PaypleSettings,
) -> Result<(PaypleClient, Option<SimHandle>), AppError> {
    let (config, sim) = match &payple.target {
        PaypleTarget::Origin(_) => (payple.client.clone(), None),
        PaypleTarget::Simulator => {
            let sim = start_simulator(&payple.client).await?;
            let url = sim.url();
            let origin =
                url::Url::parse(&url).map_err(|source| AppError::SimulatorUrl { url, source })?;
            (payple.client.clone().with_origin(origin), Some(sim))
        }
    };
    let client = PaypleClient::new(config).map_err(AppError::building)?;
    Ok((client, sim))
}

/// Starts the in-process simulator for `--simulator` on an ephemeral loopback port,
/// accepting the partner id, custKey and Referer the job is configured with (the test
/// partner's unless the environment names another).
async fn start_simulator(client: &ClientConfig) -> Result<SimHandle, AppError> {
    let partner = Partner {
        cst_id: client.cst_id.expose_secret().to_owned(),
        cust_key: client.cust_key.expose_secret().to_owned(),
        referer: client.referer.clone(),
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let handle = simulator::start(SimConfig::accepting(partner), addr)
        .await
        .map_err(AppError::simulator(SimulatorRole::BuiltIn))?;
    tracing::info!(url = %handle.url(), "built-in Payple simulator started");
    tracing::info!(
        partner = %mask_payer_id(client.cst_id.expose_secret()),
        referer = %client.referer,
        "built-in simulator accepts the configured partner"
    );
    Ok(handle)
}

/// Opens the results database for reading (never creating a SQLite file), runs `work`,
/// and closes it whatever `work` returned.
async fn with_store(
    url: &str,
    work: impl AsyncFnOnce(&Store) -> Result<(), ReportError>,
) -> Result<ExitStatus, AppError> {
    let store = open_store(url).await?;
    let result = work(&store).await;
    store.close().await;
    result?;
    Ok(ExitStatus::Success)
}
