//! One function per subcommand: validate settings, wire the parts together, print what
//! the command was asked to print on stdout, and return the exit status.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use crate::cli::{Cli, Command, DatabaseArgs, LookupArgs, PaypleArgs, RunArgs};
use crate::domain::{KeyStatus, LookupOutcome, mask_payer_id};
use crate::exit::ExitStatus;
use crate::payple::{ClientConfig, PaypleClient};
use crate::pipeline;
use crate::settings::{self, ProcessEnv};
use crate::shutdown::Shutdown;
use crate::simulator::{self, SimConfig, SimHandle};
use crate::source::SourceSpec;
use crate::store::Store;

/// Runs the parsed command line.
pub async fn execute(cli: Cli) -> ExitStatus {
    match cli.command {
        Command::Run(args) => run(*args).await,
        Command::Lookup(args) => lookup(args).await,
        Command::Simulate(args) => simulate(args).await,
        Command::Migrate(args) => migrate(args).await,
        Command::Report(args) => crate::report::command::report(args).await,
        Command::Changes(args) => crate::report::command::changes(args).await,
        Command::Summary(args) => crate::report::command::summary(args).await,
    }
}

/// Logs an error and returns `status`.
pub fn fail(status: ExitStatus, error: &dyn std::fmt::Display) -> ExitStatus {
    tracing::error!("{error}");
    status
}

/// Prints one JSON line on stdout.
pub fn print_json(value: &impl Serialize) {
    let mut out = std::io::stdout().lock();
    if let Ok(line) = serde_json::to_string(value) {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Starts the in-process simulator for `--simulator`.
async fn start_simulator(args: &PaypleArgs) -> Result<Option<SimHandle>, ExitStatus> {
    if !args.simulator {
        return Ok(None);
    }
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    match simulator::start(SimConfig::default(), addr).await {
        Ok(handle) => {
            tracing::info!(url = %handle.url(), "built-in Payple simulator started");
            Ok(Some(handle))
        }
        Err(e) => Err(fail(ExitStatus::Internal, &e)),
    }
}

/// The client configuration from flags and the environment.
fn client_config(args: &PaypleArgs, sim: Option<&SimHandle>) -> Result<ClientConfig, ExitStatus> {
    let url = sim.map(SimHandle::url);
    settings::payple_config(args, &ProcessEnv, url.as_deref())
        .map_err(|e| fail(ExitStatus::Config, &e))
}

async fn run(args: RunArgs) -> ExitStatus {
    let settings = match settings::run_settings(&args, &ProcessEnv) {
        Ok(s) => s,
        Err(e) => return fail(ExitStatus::Config, &e),
    };
    let sim = match start_simulator(&args.payple).await {
        Ok(sim) => sim,
        Err(status) => return status,
    };
    let mut config = match client_config(&args.payple, sim.as_ref()) {
        Ok(c) => c,
        Err(status) => return status,
    };
    if let Some(rate) = &mut config.rate {
        rate.share = settings.shard.count;
    }
    let client = match PaypleClient::new(config) {
        Ok(c) => Arc::new(c),
        Err(e) => return fail(ExitStatus::Config, &e),
    };
    let shutdown = match Shutdown::listen() {
        Ok(s) => s,
        Err(e) => return fail(ExitStatus::Internal, &e),
    };
    let reads_db = !matches!(settings.source, SourceSpec::Csv { .. });

    if settings.dry_run {
        let source_db = if reads_db {
            let url = settings
                .source_database_url
                .as_deref()
                .unwrap_or(&settings.database_url);
            match Store::connect(url).await {
                Ok(db) => Some(db.pool().clone()),
                Err(e) => return fail(ExitStatus::Config, &e),
            }
        } else {
            None
        };
        return match pipeline::dry_run(&settings, &client, source_db).await {
            Ok(report) => {
                tracing::info!(
                    keys = report.keys,
                    duplicates = report.duplicates,
                    rejected = report.rejected,
                    "dry run: configuration, source and credentials are fine; nothing written"
                );
                print_json(&report);
                ExitStatus::Success
            }
            Err(e) => fail(e.exit_status(), &e),
        };
    }

    let store = match Store::open(&settings.database_url).await {
        Ok(store) => store,
        Err(e) => return fail(ExitStatus::Config, &e),
    };
    let source_db = match (&settings.source_database_url, reads_db) {
        (_, false) => None,
        (None, true) => Some(store.pool().clone()),
        (Some(url), true) => match Store::connect(url).await {
            Ok(db) => Some(db.pool().clone()),
            Err(e) => return fail(ExitStatus::Config, &e),
        },
    };
    let end = pipeline::run(&settings, &store, Arc::clone(&client), source_db, &shutdown).await;
    if let Some(error) = &end.error {
        tracing::error!("{error}");
    }
    let mut exit = end.exit;
    if let Some(summary) = &end.summary {
        tracing::info!(
            run_id = summary.run_id,
            state = summary.state,
            active = summary.active,
            gone = summary.gone,
            failed = summary.failed,
            rejected = summary.rejected,
            duplicates = summary.duplicates,
            seconds = summary.duration_secs,
            per_second = summary.lookups_per_second,
            auth_calls = summary.auth_calls,
            exit_code = summary.exit_code,
            "run finished"
        );
        print_json(summary);
        if let Err(status) = crate::report::command::after_run(&settings, &store, summary).await {
            exit = if exit == ExitStatus::Success {
                status
            } else {
                exit
            };
        }
    }
    store.close().await;
    if let Some(sim) = sim {
        sim.shutdown().await;
    }
    exit
}

/// One line of `lookup` output.
#[derive(Debug, Serialize)]
pub struct LookupLine {
    pub payer_id: String,
    pub status: KeyStatus,
    pub pay_type: Option<&'static str>,
    pub card_code: Option<String>,
    pub card_name: Option<String>,
    pub card_mask: Option<String>,
    pub bank_code: Option<String>,
    pub bank_name: Option<String>,
    pub bank_mask: Option<String>,
    pub bank_account_type: Option<String>,
    pub result_code: Option<String>,
    pub result_msg: Option<String>,
    pub attempts: u32,
}

impl LookupLine {
    pub fn new(raw: &str, outcome: LookupOutcome) -> Self {
        let d = outcome.details;
        Self {
            payer_id: mask_payer_id(raw.trim()),
            status: outcome.status,
            pay_type: d.pay_type.map(|p| p.as_str()),
            card_code: d.card_code,
            card_name: d.card_name,
            card_mask: d.card_mask,
            bank_code: d.bank_code,
            bank_name: d.bank_name,
            bank_mask: d.bank_mask,
            bank_account_type: d.bank_account_type,
            result_code: outcome.result_code,
            result_msg: outcome.result_msg,
            attempts: outcome.attempts,
        }
    }
}

async fn lookup(args: LookupArgs) -> ExitStatus {
    let sim = match start_simulator(&args.payple).await {
        Ok(sim) => sim,
        Err(status) => return status,
    };
    let config = match client_config(&args.payple, sim.as_ref()) {
        Ok(c) => c,
        Err(status) => return status,
    };
    let client = match PaypleClient::new(config) {
        Ok(c) => Arc::new(c),
        Err(e) => return fail(ExitStatus::Config, &e),
    };
    if let Err(e) = client.authenticate().await {
        let status = if e.is_configuration() {
            ExitStatus::Config
        } else {
            ExitStatus::Internal
        };
        return fail(status, &e);
    }
    let mut exit = ExitStatus::Success;
    let never = tokio_util::sync::CancellationToken::new();
    let mut lines = futures::stream::iter(args.payer_ids)
        .map(|raw| {
            let client = Arc::clone(&client);
            let never = never.clone();
            async move {
                let outcome = pipeline::check_one(&client, &raw, &never).await;
                (raw, outcome)
            }
        })
        .buffered(args.concurrency.clamp(1, 64));
    while let Some((raw, outcome)) = lines.next().await {
        match outcome {
            Ok(None) => {}
            Ok(Some(outcome)) => {
                if matches!(outcome.status, KeyStatus::Failed | KeyStatus::Rejected) {
                    exit = ExitStatus::KeysFailed;
                }
                print_json(&LookupLine::new(&raw, outcome));
            }
            Err(e) => return fail(e.exit_status(), &e),
        }
    }
    if let Some(sim) = sim {
        sim.shutdown().await;
    }
    exit
}

async fn simulate(args: simulator::SimulateArgs) -> ExitStatus {
    let shutdown = match Shutdown::listen() {
        Ok(s) => s,
        Err(e) => return fail(ExitStatus::Internal, &e),
    };
    match simulator::serve(args, shutdown.stop.clone().cancelled_owned()).await {
        Ok(()) => ExitStatus::Success,
        Err(e) => fail(ExitStatus::Config, &e),
    }
}

async fn migrate(args: DatabaseArgs) -> ExitStatus {
    match Store::open(&args.database_url).await {
        Ok(store) => {
            tracing::info!(database = store.dialect().name(), "schema is up to date");
            store.close().await;
            ExitStatus::Success
        }
        Err(e) => fail(ExitStatus::Config, &e),
    }
}
