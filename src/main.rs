//! The `payple-reconcile` binary: set up the heap, parse the command line, set up logging,
//! run the command, exit with its status. Everything else lives in the library.

mod heap;

use clap::Parser;

use payple_reconcile::cli::Cli;
use payple_reconcile::{app, telemetry};

fn main() -> std::process::ExitCode {
    heap::set_up();
    // One thread runs every task: the job waits on sockets and SQLite (whose connections
    // have threads of their own), and crossing threads cost more than a lookup
    // (docs/performance.md, "Runtime").
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the async runtime starts");
    let status = runtime.block_on(run());
    // A reader still blocked on a pipe, a FIFO or a credential file when a signal ended
    // the command never returns: exit without waiting for it.
    runtime.shutdown_background();
    status
}

async fn run() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return app::usage_error(&e).into(),
    };
    telemetry::init(cli.log_format, &cli.log_level);
    app::execute(cli).await.into()
}
