//! The `payple-reconcile` binary: parse the command line, set up logging, run the
//! command, exit with its status. Everything else lives in the library.

use clap::Parser;

use payple_reconcile::cli::Cli;
use payple_reconcile::{app, telemetry};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return app::usage_error(&e).into(),
    };
    telemetry::init(cli.log_format, &cli.log_level);
    app::execute(cli).await.into()
}
