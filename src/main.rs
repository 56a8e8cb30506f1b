//! The `payple-reconcile` binary: parse the command line, set up logging, run the
//! command, exit with its status. Everything else lives in the library.

use clap::Parser;

use payple_reconcile::cli::Cli;
use payple_reconcile::{app, telemetry};

fn main() -> std::process::ExitCode {
    bound_the_heap();
    // One thread runs every task. The work is waiting on sockets and SQLite (whose
    // connections have their own threads): a lookup needs ~70 µs of CPU, and with a
    // multi-threaded runtime each one crossed threads several times (the key stream on
    // `block_on`'s thread, the connection tasks on workers). perf at 100,000 keys put 38%
    // of the job's CPU in the kernel, mostly waking threads (`finish_task_switch`, futex).
    // Measured at 10,000 keys against the simulator: 113-124 µs of CPU per lookup on the
    // multi-threaded runtime, 72-80 µs on this one; at 100,000 keys 6,191 against
    // 12,174-16,286 lookups/s.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the async runtime starts");
    runtime.block_on(run())
}

async fn run() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return app::usage_error(&e).into(),
    };
    telemetry::init(cli.log_format, &cli.log_level);
    app::execute(cli).await.into()
}

/// Keeps glibc's heap bounded. Result rows are built on the runtime's thread and freed
/// after SQLite's worker threads have written them; by default glibc gives each thread
/// that allocates its own arena (up to eight per core), never reuses one arena's free
/// memory in another, and raises its mmap threshold after large frees, so a writer's
/// batch buffers end up on the heap for good. Measured peak RSS (`/usr/bin/time`, a
/// 200,000-key run against the simulator): 76 MiB by default, 64 MiB with two arenas,
/// 54 MiB with two arenas and a fixed 256 KiB mmap threshold (one arena: 53 MiB, but
/// 15% slower at a million keys). No fast bins either: each lookup's future is a few
/// KiB, and every allocation that size made glibc merge the fast bins first
/// (`malloc_consolidate`, with `_int_malloc` 10% of the job's CPU at 100,000 keys);
/// without them the job used 7% less CPU at the same peak RSS (small blocks still come
/// from glibc's per-thread cache). Set before any other thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn bound_the_heap() {
    // SAFETY: mallopt only changes allocator tuning; it runs before any other thread
    // exists, and both parameters take any positive value.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_MXFAST, 0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn bound_the_heap() {}
